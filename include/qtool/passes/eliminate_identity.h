// eliminate_identity: removes Identity nodes, inference-mode Dropout nodes and no-op Casts.
//
// Given:   y = Identity(x)          or  y[, mask] = Dropout(x[, ratio, training_mode]) with the
//          mask output unused and training_mode absent or a constant false, or y = Cast(x, to=T)
//          where x is known to be of type T already (declared, an initializer, or the output of a
//          QuantizeLinear with a T zero point)
// Execute: every consumer of y reads x instead.
// Result:  the node is dead and removed.
// Precondition: y is not a graph output (then the node stays, since the output name is part of
// the model's interface). Recurses into subgraphs.
#pragma once

#include "qtool/passes/pass.h"

namespace qtool::passes {

/// Returns the number of nodes removed.
size_t eliminate_identity(ir::Model& model, const PassOptions& options = {});

}  // namespace qtool::passes
