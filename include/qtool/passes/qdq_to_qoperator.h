// qdq_to_qoperator: rewrites QuantizeLinear/DequantizeLinear node groups into the integer
// "QOperator" ops that ONNX Runtime's QDQ transformer fuses them into.
//
// A QDQ model says "dequantize, run the float op, quantize"; ONNX Runtime does not run it that way.
// Its graph optimizer replaces each group DQ(x) [DQ(w) DQ(b)] -> op -> Q with one integer kernel
// (QLinearConv, QLinearMatMul, com.microsoft QLinearAdd / QLinearConcat /
// QLinearGlobalAveragePool) and drops DQ -> op -> Q around data-movement ops (Reshape, Flatten,
// Transpose, MaxPool, ...) whose Q and DQ share scale and zero point. The integer kernels round
// once, at the end, where the QDQ form rounds after every float multiply-add, so the two differ
// in rounding ties, and on a deep CNN those differences grow into different top-1 answers.
//
// This pass makes the same rewrite, so that qtool's executor (whose QLinear kernels follow
// ONNX Runtime's arithmetic step for step) runs a QDQ model the way ONNX Runtime does, and so
// that `qtool quantize --format qoperator` can write the QOperator form directly. Only groups
// ONNX Runtime fuses are rewritten: 8-bit activations and weights, per-tensor activation scales,
// constant weights (per-tensor or per output channel), int32 bias, the op's output read by
// nothing but its QuantizeLinear. Everything else stays as it was.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "qtool/passes/pass.h"

namespace qtool::passes {

/// A fused integer tensor and the float tensor of the QDQ graph it stands for:
/// float_name ≈ (value - zero_point) · scale.
struct QOperatorAlias {
  std::string value;       ///< integer tensor in the rewritten graph (the former QuantizeLinear output)
  std::string float_name;  ///< the float tensor that QuantizeLinear quantized
  std::string node;        ///< name of the float op the group was built around (Conv, Add, ...)
  std::string op_type;     ///< its op type
  float scale = 1.0f;
  int32_t zero_point = 0;
};

/// What fuse_qdq_to_qoperator did.
struct QOperatorReport {
  size_t rewrites = 0;                   ///< node groups rewritten
  std::map<std::string, int64_t> fused;  ///< by resulting op ("QLinearConv", ..., "dropped Q/DQ")
  std::vector<QOperatorAlias> aliases;   ///< one per rewritten group of the main graph
};

/// Rewrites every fusable QDQ group of the model's graphs (subgraphs included) in place; adds
/// the com.microsoft opset import when it emits a com.microsoft op. Dead DequantizeLinear nodes
/// and their initializers are removed.
QOperatorReport fuse_qdq_to_qoperator(ir::Model& model);

/// Pass form for the registry: fuse_qdq_to_qoperator(model).rewrites.
size_t qdq_to_qoperator(ir::Model& model, const PassOptions& options);

}  // namespace qtool::passes
