// fold_constants: evaluates every node whose inputs are all constant and stores its outputs as
// initializers.
//
// Given:   y = Op(c1, ..., ck) with every ci an initializer (or the output of a node folded
//          before it), Op deterministic (no Random*, Multinomial, Bernoulli), without subgraphs,
//          not QuantizeLinear/DequantizeLinear (those are the quantized model's own encoding),
//          and no output of it a graph output;  also Constant nodes, and Shape(x) when x has a
//          fully known static shape.
// Execute: run Op once with qtool's executor (runtime::Executor on a one-node model), replace y
//          by an initializer of the same name holding the result.
// Result:  the node is gone; consumers read the initializer. Outputs with more than
//          PassOptions::fold_max_elements elements that are also larger than the node's inputs
//          (ConstantOfShape / Expand / Tile expansions) are left as nodes: folding them would only
//          bloat the file. PassOptions::fold_only, when set, limits folding to the nodes it accepts.
//          Recurses into subgraphs (values of an enclosing graph are not
//          treated as constant there).
#pragma once

#include "qtool/passes/pass.h"

namespace qtool::passes {

/// Returns the number of nodes folded.
size_t fold_constants(ir::Model& model, const PassOptions& options = {});

}  // namespace qtool::passes
