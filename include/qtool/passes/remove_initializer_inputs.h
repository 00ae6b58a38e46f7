// remove_initializer_inputs: stops listing initializers as graph inputs.
//
// Given:   an initializer W that is also a graph input (IR version 3 models such as mnist-8 and
//          SqueezeNet 1.1 list every weight as an input, which makes it overridable at run time,
//          so runtimes and passes must not treat it as constant).
// Execute: W stays an initializer of the same name but is no longer a graph input.
// Result:  W is a true constant; the model's ir_version is raised to at least 4 (the first
//          that allows initializers which are not inputs). Main graph only (subgraph inputs are
//          bound by their node, never overridable by the caller).
#pragma once

#include "qtool/passes/pass.h"

namespace qtool::passes {

/// Returns the number of graph inputs removed.
size_t remove_initializer_inputs(ir::Model& model, const PassOptions& options = {});

}  // namespace qtool::passes
