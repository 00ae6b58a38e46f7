// The op table of the QDQ emitter (private to src/quant): how each op type is quantized.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "qtool/ir/graph.h"

namespace qtool::quant {

/// How a node's output gets its quantization parameters.
enum class OutputMode {
  kNone,         ///< output stays float
  kOwn,          ///< own range -> own scale (QLinearConv, QLinearAdd, ...)
  kSameAsInput,  ///< shares input 0's scale and zero point (MaxPool, Reshape, ...: runs on 8-bit data)
  kShared,       ///< one scale for every input and the output (Concat)
};

struct OpRule {
  std::string_view op_type;
  /// Inputs quantized as activations (empty + all_inputs = every input).
  std::vector<int> act_inputs;
  bool all_inputs = false;
  /// Input holding the weight when it is a constant (then int8 per channel), else an activation.
  int weight_input = -1;
  /// Input holding the bias (int32 with scale s_x * s_w) when it is a constant.
  int bias_input = -1;
  OutputMode output = OutputMode::kOwn;
  /// Float constants among the activation inputs are quantized like activations (per tensor, the
  /// activation type): QLinearAdd/QLinearMul take both operands in the same type.
  bool constants_as_activations = false;
  /// The weight's output-channel axis (per-channel scales), or -1 for per tensor.
  int64_t (*weight_axis)(const ir::Node& node, const Tensor& w) = nullptr;
};

/// The rule for `op_type` (default domain), or nullptr.
const OpRule* find_op_rule(std::string_view op_type);

}  // namespace qtool::quant
