// Test helper for the gradient functions: builds a one-node model whose float inputs are
// initializers, takes the loss L = Σ_k Σ_i r_k[i]·y_k[i] over the node's outputs (r_k fixed
// pseudo-random), and compares Autodiff's dL/d(input) with central finite differences of L
// computed by re-running the forward pass (the executor's own kernels).
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "nn_test_util.h"
#include "qtool/runtime/autodiff.h"

namespace qtool::testing {

struct GradCheck {
  NodeRun node;                 ///< op, inputs (all become initializers), attrs, outputs, opset
  std::vector<int> wrt{};       ///< inputs to differentiate (float); empty = every float input
  float eps = 1e-2f;            ///< finite-difference step (relative to max(1, |x|))
  float rtol = 2e-2f, atol = 2e-3f;
  /// Outputs that carry the loss (empty = all). Lets a test skip e.g. an index output.
  std::vector<int> loss_outputs{};
};

namespace detail {
struct OneNode {
  ir::Model model;
  std::vector<ir::Value*> inits;  // per input (nullptr when omitted)
  ir::Node* node = nullptr;
};

inline void build_one_node(const NodeRun& r, OneNode& m) {
  m.model.set_opset("", r.opset);
  if (!r.domain.empty()) m.model.set_opset(r.domain, 1);
  ir::Graph& g = *m.model.graph;
  for (size_t i = 0; i < r.inputs.size(); ++i)
    m.inits.push_back(r.inputs[i].defined() ? g.add_initializer("in" + std::to_string(i), r.inputs[i]) : nullptr);
  std::vector<std::string> outs;
  for (int j = 0; j < r.outputs; ++j) outs.push_back("out" + std::to_string(j));
  m.node = g.add_node(r.op, m.inits, outs, "node0", r.domain);
  for (const AttrSpec& a : r.attrs) m.node->set_attr(a.make());
  for (ir::Value* v : m.node->outputs()) g.add_output(v);
}

/// A tape over the one-node model `m` of `r`, differentiating with respect to its inputs `wrt`
/// (r.threads: the pool the forward kernels and gradient functions run on).
inline std::unique_ptr<runtime::Autodiff> one_node_tape(const NodeRun& r, const OneNode& m, const std::vector<int>& wrt) {
  std::vector<const ir::Value*> wv;
  for (int i : wrt) wv.push_back(m.inits.at(i));
  runtime::AutodiffOptions options;
  options.threads = r.threads;
  return std::make_unique<runtime::Autodiff>(m.model, wv, std::vector<const ir::Value*>{}, options);
}
}  // namespace detail

/// Runs the check; reports every mismatching element through gtest (first 10 per input).
inline void check_gradients(const GradCheck& c) {
  detail::OneNode m;
  detail::build_one_node(c.node, m);
  std::vector<int> wrt = c.wrt;
  if (wrt.empty())
    for (size_t i = 0; i < c.node.inputs.size(); ++i)
      if (c.node.inputs[i].defined() && c.node.inputs[i].dtype() == DataType::kFloat) wrt.push_back(static_cast<int>(i));
  auto tape = detail::one_node_tape(c.node, m, wrt);
  runtime::Autodiff& ad = *tape;
  std::vector<Tensor> ys = ad.forward({});
  std::vector<char> in_loss(ys.size(), c.loss_outputs.empty() ? 1 : 0);
  for (int k : c.loss_outputs) in_loss.at(k) = 1;
  std::vector<Tensor> r(ys.size());
  for (size_t k = 0; k < ys.size(); ++k)
    if (in_loss[k] && ys[k].dtype() == DataType::kFloat)
      r[k] = Tensor::from_vector<float>(ys[k].shape(), rnd(ys[k].numel(), 101 + static_cast<uint32_t>(k)));
  auto loss = [&](const std::vector<Tensor>& y) {
    double l = 0;
    for (size_t k = 0; k < y.size(); ++k) {
      if (!r[k].defined()) continue;
      const float* a = y[k].data<float>();
      const float* b = r[k].data<float>();
      for (int64_t i = 0; i < y[k].numel(); ++i) l += static_cast<double>(a[i]) * b[i];
    }
    return l;
  };
  const std::vector<Tensor> grads = ad.backward(r);
  ASSERT_EQ(grads.size(), wrt.size());
  for (size_t w = 0; w < wrt.size(); ++w) {
    const Tensor base = c.node.inputs[wrt[w]];
    ASSERT_EQ(grads[w].shape(), base.shape()) << "gradient shape of input " << wrt[w];
    const float* got = grads[w].data<float>();
    int bad = 0;
    for (int64_t i = 0; i < base.numel(); ++i) {
      Tensor plus = base.clone(), minus = base.clone();
      const float x = base.data<float>()[i];
      const float h = c.eps * std::max(1.0f, std::fabs(x));
      plus.mutable_data<float>()[i] = x + h;
      minus.mutable_data<float>()[i] = x - h;
      ad.set_value(m.inits[wrt[w]], plus);
      const double lp = loss(ad.forward({}));
      ad.set_value(m.inits[wrt[w]], minus);
      const double lm = loss(ad.forward({}));
      ad.set_value(m.inits[wrt[w]], base);
      const double num = (lp - lm) / (2.0 * h);
      const double tol = c.atol + c.rtol * std::fabs(num);
      if (std::fabs(num - got[i]) > tol && bad++ < 10)
        ADD_FAILURE() << c.node.op << ": d/d(input " << wrt[w] << ")[" << i << "] autodiff " << got[i]
                      << " vs finite difference " << num << " (x = " << x << ")";
    }
  }
}

}  // namespace qtool::testing
