// upgrade_opset: converts a model's ai.onnx nodes from its imported opset to a newer one.
//
// Why: quantized models need opset 13 or newer (per-channel DequantizeLinear takes `axis` only
// from opset 13 on; ONNX Runtime refuses the model otherwise), 21 for 16-bit Q/DQ, while real
// models come at opsets 7 (SqueezeNet 1.1), 8 (mnist-8), 11 (MobileNetV2).
//
// Given:   a model importing ai.onnx at version v < PassOptions::target_opset (= t).
// Execute: for every node (subgraphs included), each rewrite whose version lies in (v, t] runs
//          in version order; every other op is assumed to keep its semantics (ONNX's rule for a
//          new operator version is that only the listed changes break old models):
//   - consumed_inputs (< 6), is_test (< 7), legacy `broadcast`/`axis` of binary ops (< 7: the
//     constant operand is reshaped so that numpy broadcasting aligns it at `axis`)
//   - Concat (< 4): missing axis := 1.    Reshape (< 5): `shape` attribute -> int64 input.
//   - BatchNormalization: spatial (< 9) must be 1 and is dropped.
//   - Dropout: `ratio` attribute -> input (12).      Upsample (7/9) -> Resize(X, "", scales) with
//     coordinate_transformation_mode = asymmetric and nearest_mode = floor (Upsample's formula
//     x_in = x_out / scale).   Resize-10 -> Resize-11 inputs (X, "", scales), asymmetric.
//   - Slice (10), TopK (10): attributes -> inputs.   Clip (11): min/max attributes -> inputs.
//     Pad (11): pads/value attributes -> inputs.     Scatter (11) -> ScatterElements.
//   - Squeeze, Unsqueeze, ReduceSum, Split (13), other Reduce* (18): axes/split -> inputs.
//   - Softmax, LogSoftmax, Hardmax (13): before 13 they flatten to 2-D at `axis` (default 1) and
//     normalise over the whole flattened tail; from 13 over `axis` only (default -1). Where the
//     two agree (axis is the last dimension, or every later dimension is 1) only `axis` is set;
//     otherwise the node becomes Flatten(axis) -> op(axis=1) -> Reshape(Shape(x)).
// An IR 3 model raised to IR 4 or later stops listing its initializers as graph inputs
// (remove_initializer_inputs): in IR 3 they are constants; listed as inputs from IR 4 on they would
// become overridable defaults, which runtimes must not fold or pre-pack.
// Result:  the model imports ai.onnx at t and its ir_version is at least the one that opset
//          requires. Throws kUnsupported naming the node for versions it cannot carry (Scan < 9,
//          Cast with a string `to`, Upsample-1, BatchNormalization with spatial = 0).
#pragma once

#include "qtool/passes/pass.h"

namespace qtool::passes {

/// Returns the number of nodes rewritten (0 if the model is already at or above the target).
size_t upgrade_opset(ir::Model& model, const PassOptions& options = {});

/// The smallest ir_version a model importing ai.onnx `opset` must declare.
int64_t min_ir_version_for_opset(int64_t opset);

}  // namespace qtool::passes
