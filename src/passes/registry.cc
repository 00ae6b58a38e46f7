// The one list of graph passes.
#include <fmt/format.h>

#include "qtool/passes/cross_layer_equalization.h"
#include "qtool/passes/eliminate_identity.h"
#include "qtool/passes/fold_batchnorm.h"
#include "qtool/passes/fold_constants.h"
#include "qtool/passes/pass.h"
#include "qtool/passes/qdq_to_qoperator.h"
#include "qtool/passes/remove_initializer_inputs.h"
#include "qtool/passes/upgrade_opset.h"

namespace qtool::passes {

const std::vector<PassInfo>& registered_passes() {
  static const std::vector<PassInfo> kPasses = {
      {"remove_initializer_inputs", "stop listing initializers as graph inputs (IR 3 models)",
       &remove_initializer_inputs},
      {"upgrade_opset", "convert ai.onnx ops to a newer opset (per-op IR rewrites)", &upgrade_opset},
      {"eliminate_identity", "remove Identity, inference-mode Dropout and Casts to the type the input has", &eliminate_identity},
      {"fold_constants", "evaluate nodes whose inputs are all constant into initializers", &fold_constants},
      {"fold_batchnorm", "fold BatchNormalization into the preceding Conv or Gemm", &fold_batchnorm},
      {"cross_layer_equalization", "equalize per-channel weight ranges of Conv -> (Relu) -> Conv pairs (DFQ)",
       &cross_layer_equalization},
      {"qdq_to_qoperator", "fuse QDQ groups into ONNX Runtime's integer QOperator ops (QLinearConv, QLinearAdd, ...)",
       &qdq_to_qoperator},
  };
  return kPasses;
}

const PassInfo& find_pass(std::string_view name) {
  for (const PassInfo& p : registered_passes())
    if (p.name == name) return p;
  std::string known;
  for (const PassInfo& p : registered_passes()) known += (known.empty() ? "" : ", ") + std::string(p.name);
  fail(ErrorCode::kConfig, "unknown pass '{}' (known: {})", name, known);
}

size_t run_passes(ir::Model& model, const std::vector<std::string>& names, const PassOptions& options) {
  size_t total = 0;
  for (const std::string& name : names) {
    const PassInfo& p = find_pass(name);
    total += with_context(fmt::format("in pass '{}'", name), [&] { return p.run(model, options); });
  }
  return total;
}

std::vector<std::string> default_quantize_pipeline() {
  return {"remove_initializer_inputs", "upgrade_opset", "eliminate_identity", "fold_constants", "fold_batchnorm", "eliminate_identity"};
}

size_t for_each_graph(ir::Graph& g, const std::function<size_t(ir::Graph&)>& fn) {
  size_t total = fn(g);
  std::vector<ir::Graph*> subs;
  for (const auto& n : g.nodes())
    for (ir::Graph* sg : n->subgraphs()) subs.push_back(sg);
  for (ir::Graph* sg : subs) total += for_each_graph(*sg, fn);
  return total;
}

}  // namespace qtool::passes
