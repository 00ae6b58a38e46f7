// Test fixture shared by the compare tests: a weight-only QDQ copy of a model built by hand,
// independently of qtool's quantizers, so that compare's metrics are checked against a known error.
#pragma once

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "qtool/ir/graph.h"
#include "qtool/onnx_io/onnx_io.h"

namespace qtool::testing {

/// Replaces each Conv/Gemm weight W of the model at `path` by DequantizeLinear(int8 Q, scale) with a
/// per-tensor scale of max|W| / levels[node] (127 by default): a QDQ weight-only model whose
/// activations keep their FP32 names.
inline ir::Model make_weight_qdq(const std::string& path, const std::map<std::string, float>& levels) {
  ir::Model m = onnx_io::load_model(path);
  ir::Graph& g = *m.graph;
  std::vector<ir::Node*> targets;
  for (const auto& n : g.nodes())
    if (n->op_type() == "Conv" || n->op_type() == "Gemm") targets.push_back(n.get());
  for (ir::Node* n : targets) {
    ir::Value* wv = n->input(1);
    const Tensor w = wv->initializer()->to_float();
    float amax = 0;
    for (int64_t i = 0; i < w.numel(); ++i) amax = std::max(amax, std::fabs(w.data<float>()[i]));
    const float lv = levels.count(n->name()) ? levels.at(n->name()) : 127.f;
    const float scale = amax / lv;
    std::vector<int8_t> q(static_cast<size_t>(w.numel()));
    for (int64_t i = 0; i < w.numel(); ++i)
      q[static_cast<size_t>(i)] =
          static_cast<int8_t>(std::clamp(std::nearbyint(w.data<float>()[i] / scale), -127.f, 127.f));
    ir::Value* qv = g.add_initializer(wv->name() + "_quantized", Tensor::from_vector<int8_t>(w.shape(), q));
    ir::Value* sv = g.add_initializer(wv->name() + "_scale", Tensor::scalar<float>(scale));
    ir::Node* dq = g.insert_node_before(n, "DequantizeLinear", {qv, sv}, {wv->name() + "_dq"}, n->name() + "_dq");
    n->set_input(1, dq->output(0));
    g.remove_initializer(wv);
  }
  return m;
}

}  // namespace qtool::testing
