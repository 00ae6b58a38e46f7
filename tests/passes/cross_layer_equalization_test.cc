// cross_layer_equalization: outputs unchanged, per-channel ranges equalized, non-homogeneous
// activations refused.
#include "qtool/passes/cross_layer_equalization.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "qtool/runtime/executor.h"

namespace qtool::passes {
namespace {

Tensor random_tensor(const Shape& shape, std::mt19937& rng, float lo, float hi) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(shape_numel(shape));
  for (float& x : v) x = d(rng);
  return Tensor::from_vector<float>(shape, v);
}

// Random weight [co, ci, k, k] whose output channel c is scaled by 4^(c - co/2): channel ranges
// spanning orders of magnitude, as BatchNormalization folding leaves them in MobileNets.
Tensor skewed_weight(const Shape& shape, std::mt19937& rng) {
  Tensor w = random_tensor(shape, rng, -1, 1);
  const int64_t per = w.numel() / shape[0];
  for (int64_t c = 0; c < shape[0]; ++c)
    for (int64_t k = 0; k < per; ++k)
      w.mutable_data<float>()[c * per + k] *= static_cast<float>(std::pow(4.0, static_cast<double>(c) - shape[0] / 2));
  return w;
}

ir::Node* conv(ir::Graph& g, ir::Value* x, const std::string& name, Tensor w, std::mt19937& rng, int64_t group = 1,
               int64_t pad = 0) {
  const int64_t co = w.dim(0);
  ir::Value* wv = g.add_initializer(name + "_W", std::move(w));
  ir::Value* bv = g.add_initializer(name + "_B", random_tensor({co}, rng, -0.5f, 0.5f));
  ir::Node* n = g.add_node("Conv", {x, wv, bv}, {name + "_y"}, name);
  if (group != 1) n->set_attr(ir::Attribute::make_int("group", group));
  if (pad) n->set_attr(ir::Attribute::make_ints("pads", {pad, pad, pad, pad}));
  return n;
}

ir::Node* relu(ir::Graph& g, ir::Value* x, const std::string& name) { return g.add_node("Relu", {x}, {name}, name); }

ir::Model empty_model() {
  ir::Model m;
  m.set_opset("", 13);
  ir::TypeInfo t;
  t.elem_type = DataType::kFloat;
  m.graph->add_input("x", t);
  return m;
}

// max|W[c, ...]| per output channel.
std::vector<double> row_ranges(const Tensor& w) {
  std::vector<double> r(w.dim(0), 0.0);
  const int64_t per = w.numel() / w.dim(0);
  for (int64_t c = 0; c < w.dim(0); ++c)
    for (int64_t k = 0; k < per; ++k) r[c] = std::max(r[c], std::fabs(static_cast<double>(w.data<float>()[c * per + k])));
  return r;
}

// max|W[:, i, ...]| per input channel of a group-1 conv.
std::vector<double> column_ranges(const Tensor& w) {
  const int64_t co = w.dim(0), ci = w.dim(1), k = w.numel() / (co * ci);
  std::vector<double> r(ci, 0.0);
  for (int64_t o = 0; o < co; ++o)
    for (int64_t i = 0; i < ci; ++i)
      for (int64_t t = 0; t < k; ++t)
        r[i] = std::max(r[i], std::fabs(static_cast<double>(w.data<float>()[(o * ci + i) * k + t])));
  return r;
}

const Tensor& weight(const ir::Model& m, const std::string& node) {
  for (const auto& n : m.graph->nodes())
    if (n->name() == node) return *n->input(1)->initializer();
  throw std::runtime_error("no node " + node);
}

double max_abs_diff(const Tensor& a, const Tensor& b) {
  double d = 0;
  for (int64_t i = 0; i < a.numel(); ++i) d = std::max(d, std::fabs(a.get_as_double(i) - b.get_as_double(i)));
  return d;
}

void expect_same_outputs(const ir::Model& before, const ir::Model& after, const Tensor& x) {
  const std::vector<Tensor> a = runtime::Executor(before).run({{"x", x}});
  const std::vector<Tensor> b = runtime::Executor(after).run({{"x", x}});
  ASSERT_EQ(a.size(), b.size());
  for (size_t o = 0; o < a.size(); ++o) {
    ASSERT_EQ(a[o].numel(), b[o].numel());
    double peak = 0;
    for (int64_t i = 0; i < a[o].numel(); ++i) peak = std::max(peak, std::fabs(a[o].get_as_double(i)));
    for (int64_t i = 0; i < a[o].numel(); ++i)
      ASSERT_NEAR(a[o].get_as_double(i), b[o].get_as_double(i), 1e-5 * std::max(1.0, peak))
          << "output " << o << " index " << i;
  }
}

TEST(CrossLayerEqualization, ConvReluConvKeepsOutputsAndEqualizesRanges) {
  std::mt19937 rng(11);
  ir::Model m = empty_model();
  ir::Graph& g = *m.graph;
  ir::Node* c1 = conv(g, g.find_value("x"), "c1", skewed_weight({6, 4, 3, 3}, rng), rng, 1, 1);
  ir::Node* r1 = relu(g, c1->output(0), "r1");
  ir::Node* c2 = conv(g, r1->output(0), "c2", random_tensor({5, 6, 3, 3}, rng, -1, 1), rng);
  g.add_output(c2->output(0));
  const ir::Model before = m.clone();
  const std::vector<double> r1_before = row_ranges(weight(m, "c1"));
  ASSERT_GT(r1_before[5] / r1_before[0], 100.0);  // the premise: very unequal channels

  const CleResult res = equalize_cross_layer(m);
  EXPECT_EQ(res.pairs, 1u);
  EXPECT_EQ(res.depthwise_pairs, 0u);
  EXPECT_GE(res.iterations, 1);
  const std::vector<double> a = row_ranges(weight(m, "c1"));
  const std::vector<double> b = column_ranges(weight(m, "c2"));
  const std::vector<double> b_before = column_ranges(weight(before, "c2"));
  for (int i = 0; i < 6; ++i) {
    EXPECT_NEAR(a[i], b[i], 1e-5 * a[i]) << "channel " << i;
    // Equal at the geometric mean of the two original ranges.
    EXPECT_NEAR(a[i], std::sqrt(r1_before[i] * b_before[i]), 1e-5 * a[i]) << "channel " << i;
  }
  std::mt19937 rx(3);
  expect_same_outputs(before, m, random_tensor({1, 4, 7, 7}, rx, -2, 2));
  // Registered as a pass, and a second run has nothing left to move (scales all 1).
  EXPECT_EQ(find_pass("cross_layer_equalization").name, "cross_layer_equalization");
  const Tensor w_eq = weight(m, "c1").clone();
  EXPECT_EQ(equalize_cross_layer(m).iterations, 1);
  EXPECT_LT(max_abs_diff(w_eq, weight(m, "c1")), 1e-6 * a[5]);
}

TEST(CrossLayerEqualization, DepthwiseChainEqualizesAllThreeLayers) {
  // pointwise c1 [4,3,1,1] -> Relu -> depthwise dw [4,1,3,3] (group 4) -> Relu -> pointwise c3 [2,4,1,1].
  // dw is Conv2 of (c1, dw) and Conv1 of (dw, c3); its row i is both its input and its output
  // channel i, so at convergence max|c1[i]| = max|dw[i]| = max|c3[:, i]| = (product)^(1/3).
  std::mt19937 rng(5);
  ir::Model m = empty_model();
  ir::Graph& g = *m.graph;
  ir::Node* c1 = conv(g, g.find_value("x"), "c1", skewed_weight({4, 3, 1, 1}, rng), rng);
  ir::Node* r1 = relu(g, c1->output(0), "r1");
  ir::Node* dw = conv(g, r1->output(0), "dw", skewed_weight({4, 1, 3, 3}, rng), rng, 4, 1);
  ir::Node* r2 = relu(g, dw->output(0), "r2");
  ir::Node* c3 = conv(g, r2->output(0), "c3", random_tensor({2, 4, 1, 1}, rng, -1, 1), rng);
  g.add_output(c3->output(0));
  const ir::Model before = m.clone();
  const CleResult res = equalize_cross_layer(m);
  EXPECT_EQ(res.pairs, 2u);
  EXPECT_EQ(res.depthwise_pairs, 2u);
  EXPECT_GT(res.iterations, 2);  // chained pairs need several rounds
  const auto a0 = row_ranges(weight(before, "c1")), b0 = row_ranges(weight(before, "dw")),
             c0 = column_ranges(weight(before, "c3"));
  const auto a = row_ranges(weight(m, "c1")), b = row_ranges(weight(m, "dw")), c = column_ranges(weight(m, "c3"));
  for (int i = 0; i < 4; ++i) {
    const double target = std::cbrt(a0[i] * b0[i] * c0[i]);
    EXPECT_NEAR(a[i], target, 1e-3 * target) << "channel " << i;
    EXPECT_NEAR(b[i], target, 1e-3 * target) << "channel " << i;
    EXPECT_NEAR(c[i], target, 1e-3 * target) << "channel " << i;
  }
  std::mt19937 rx(9);
  expect_same_outputs(before, m, random_tensor({1, 3, 6, 6}, rx, -2, 2));
}

TEST(CrossLayerEqualization, SeveralConsumersAndGroupedConv) {
  // c1 [8,2,3,3] -> Relu -> MaxPool -> {ca: group 2 [4,4,3,3], cb: [3,8,1,1]}: channel i's range on
  // the consumer side is the larger of the two consumers' ranges for input i.
  std::mt19937 rng(21);
  ir::Model m = empty_model();
  ir::Graph& g = *m.graph;
  ir::Node* c1 = conv(g, g.find_value("x"), "c1", skewed_weight({8, 2, 3, 3}, rng), rng, 1, 1);
  ir::Node* r1 = relu(g, c1->output(0), "r1");
  ir::Node* mp = g.add_node("MaxPool", {r1->output(0)}, {"mp"}, "mp");
  mp->set_attr(ir::Attribute::make_ints("kernel_shape", {2, 2}));
  ir::Node* ca = conv(g, mp->output(0), "ca", random_tensor({4, 4, 3, 3}, rng, -1, 1), rng, 2, 1);
  ir::Node* cb = conv(g, mp->output(0), "cb", random_tensor({3, 8, 1, 1}, rng, -1, 1), rng);
  g.add_output(ca->output(0));
  g.add_output(cb->output(0));
  const ir::Model before = m.clone();
  EXPECT_EQ(equalize_cross_layer(m).pairs, 1u);
  const auto a = row_ranges(weight(m, "c1"));
  const Tensor& wa = weight(m, "ca");  // input i of ca: group i / 4, column i % 4, rows of that group
  const auto cbr = column_ranges(weight(m, "cb"));
  for (int i = 0; i < 8; ++i) {
    double ra = 0;
    for (int64_t o = (i / 4) * 2; o < (i / 4) * 2 + 2; ++o)
      for (int t = 0; t < 9; ++t) ra = std::max(ra, std::fabs(static_cast<double>(wa.data<float>()[(o * 4 + i % 4) * 9 + t])));
    EXPECT_NEAR(a[i], std::max(ra, cbr[i]), 1e-5 * a[i]) << "channel " << i;
  }
  std::mt19937 rx(4);
  expect_same_outputs(before, m, random_tensor({1, 2, 8, 8}, rx, -2, 2));
}

TEST(CrossLayerEqualization, RefusesNonHomogeneousActivations) {
  for (const std::string act : {"Relu6", "Sigmoid", "GraphOutput"}) {
    std::mt19937 rng(8);
    ir::Model m = empty_model();
    ir::Graph& g = *m.graph;
    ir::Node* c1 = conv(g, g.find_value("x"), "c1", skewed_weight({4, 3, 1, 1}, rng), rng);
    ir::Value* h = c1->output(0);
    if (act == "Relu6") {
      h = g.add_node("Clip", {h, g.add_initializer("lo", Tensor::scalar<float>(0.0f)),
                              g.add_initializer("hi", Tensor::scalar<float>(6.0f))}, {"clip"}, "clip")->output(0);
    } else if (act == "Sigmoid") {
      h = g.add_node("Sigmoid", {h}, {"sig"}, "sig")->output(0);
    } else {
      g.add_output(h);  // the scaled tensor itself is visible: not exact
    }
    ir::Node* c2 = conv(g, h, "c2", random_tensor({2, 4, 1, 1}, rng, -1, 1), rng);
    g.add_output(c2->output(0));
    const Tensor w1 = weight(m, "c1");
    const CleResult res = equalize_cross_layer(m);
    EXPECT_EQ(res.pairs, 0u) << act;
    EXPECT_EQ(res.skipped_relu6, act == "Relu6" ? 1u : 0u) << act;
    EXPECT_EQ(max_abs_diff(w1, weight(m, "c1")), 0.0) << act;  // untouched
  }
  // With replace_relu6 the Clip(0, 6) becomes a Relu (same output name) and the pair is equalized.
  std::mt19937 rng(8);
  ir::Model m = empty_model();
  ir::Graph& g = *m.graph;
  ir::Node* c1 = conv(g, g.find_value("x"), "c1", skewed_weight({4, 3, 1, 1}, rng), rng);
  ir::Value* h = g.add_node("Clip", {c1->output(0), g.add_initializer("lo", Tensor::scalar<float>(0.0f)),
                                     g.add_initializer("hi", Tensor::scalar<float>(6.0f))}, {"clip"}, "clip")->output(0);
  g.add_output(conv(g, h, "c2", random_tensor({2, 4, 1, 1}, rng, -1, 1), rng)->output(0));
  CleOptions o;
  o.replace_relu6 = true;
  const CleResult res = equalize_cross_layer(m, o);
  EXPECT_EQ(res.pairs, 1u);
  EXPECT_EQ(res.relu6_replaced, 1u);
  const ir::Value* clip = m.graph->find_value("clip");
  ASSERT_NE(clip, nullptr);
  EXPECT_EQ(clip->producer()->op_type(), "Relu");
  EXPECT_EQ(clip->producer()->inputs().size(), 1u);
  EXPECT_EQ(m.graph->find_value("hi"), nullptr);  // the bound constants are gone
}

}  // namespace
}  // namespace qtool::passes
