// The one table of ops the QDQ emitter quantizes, modelled on ONNX Runtime's QDQRegistry
// (onnxruntime/python/tools/quantization/registry.py) and the QDQ selectors of its graph
// optimizer, which decide what gets fused into integer kernels.
#include "qdq_ops.h"

#include "qtool/quant/qdq.h"

namespace qtool::quant {
namespace {

int64_t conv_axis(const ir::Node&, const Tensor&) { return 0; }
int64_t conv_transpose_axis(const ir::Node& n, const Tensor&) {
  // W is [C_in, C_out/group, k...]: per output channel only when group == 1.
  return n.attr_int("group", 1) == 1 ? 1 : -1;
}
int64_t gemm_axis(const ir::Node& n, const Tensor&) { return n.attr_int("transB", 0) ? 0 : 1; }
int64_t matmul_axis(const ir::Node&, const Tensor& w) { return w.rank() == 2 ? 1 : -1; }

const std::vector<OpRule>& rules() {
  using M = OutputMode;
  static const std::vector<OpRule> kRules = {
      {"Conv", {0}, false, 1, 2, M::kOwn, false, &conv_axis},
      {"ConvTranspose", {0}, false, 1, 2, M::kOwn, false, &conv_transpose_axis},
      {"Gemm", {0}, false, 1, 2, M::kOwn, false, &gemm_axis},
      {"MatMul", {0}, false, 1, -1, M::kOwn, false, &matmul_axis},
      {"Add", {}, true, -1, -1, M::kOwn, true, nullptr},
      {"Mul", {}, true, -1, -1, M::kOwn, true, nullptr},
      {"AveragePool", {0}, false, -1, -1, M::kOwn, false, nullptr},
      {"GlobalAveragePool", {0}, false, -1, -1, M::kOwn, false, nullptr},
      {"Sigmoid", {0}, false, -1, -1, M::kOwn, false, nullptr},
      {"LeakyRelu", {0}, false, -1, -1, M::kOwn, false, nullptr},
      {"Relu", {0}, false, -1, -1, M::kOwn, false, nullptr},
      {"Clip", {0}, false, -1, -1, M::kOwn, false, nullptr},
      {"Concat", {}, true, -1, -1, M::kShared, false, nullptr},
      {"MaxPool", {0}, false, -1, -1, M::kSameAsInput, false, nullptr},
      {"Reshape", {0}, false, -1, -1, M::kSameAsInput, false, nullptr},
      {"Transpose", {0}, false, -1, -1, M::kSameAsInput, false, nullptr},
      {"Squeeze", {0}, false, -1, -1, M::kSameAsInput, false, nullptr},
      {"Unsqueeze", {0}, false, -1, -1, M::kSameAsInput, false, nullptr},
      {"Flatten", {0}, false, -1, -1, M::kSameAsInput, false, nullptr},
      {"Resize", {0}, false, -1, -1, M::kSameAsInput, false, nullptr},
      {"Slice", {0}, false, -1, -1, M::kSameAsInput, false, nullptr},
      {"Gather", {0}, false, -1, -1, M::kSameAsInput, false, nullptr},
      {"Split", {0}, false, -1, -1, M::kSameAsInput, false, nullptr},
      {"DepthToSpace", {0}, false, -1, -1, M::kSameAsInput, false, nullptr},
      {"SpaceToDepth", {0}, false, -1, -1, M::kSameAsInput, false, nullptr},
      {"Expand", {0}, false, -1, -1, M::kSameAsInput, false, nullptr},
      {"Tile", {0}, false, -1, -1, M::kSameAsInput, false, nullptr},
  };
  return kRules;
}

}  // namespace

const OpRule* find_op_rule(std::string_view op_type) {
  for (const OpRule& r : rules())
    if (r.op_type == op_type) return &r;
  return nullptr;
}

bool is_quantizable_op(const std::string& op_type) { return find_op_rule(op_type) != nullptr; }

}  // namespace qtool::quant
