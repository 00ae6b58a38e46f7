#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "qtool/quant/qdq.h"
#include "qtool/runtime/executor.h"
#include "test_util.h"

namespace qtool::quant {
namespace {

TEST(QdqParams, AsymmetricUint8) {
  const QParams p = compute_qparams({-1.0f, 3.0f}, DataType::kUint8, false);
  EXPECT_FLOAT_EQ(p.scale, 4.0f / 255.0f);
  EXPECT_EQ(p.zero_point, 64);  // round(0 - (-1) / (4/255)) = round(63.75)
  // Ranges that exclude 0 are widened to contain it: [2, 5] -> [0, 5].
  const QParams q = compute_qparams({2.0f, 5.0f}, DataType::kUint8, false);
  EXPECT_FLOAT_EQ(q.scale, 5.0f / 255.0f);
  EXPECT_EQ(q.zero_point, 0);
}

TEST(QdqParams, SymmetricAndDegenerate) {
  const QParams p = compute_qparams({-1.0f, 3.0f}, DataType::kInt8, true);
  EXPECT_FLOAT_EQ(p.scale, 3.0f / 127.5f);
  EXPECT_EQ(p.zero_point, 0);
  const QParams u16 = compute_qparams({0.0f, 65535.0f}, DataType::kUint16, false);
  EXPECT_FLOAT_EQ(u16.scale, 1.0f);
  const QParams z = compute_qparams({0.0f, 0.0f}, DataType::kUint8, false);
  EXPECT_FLOAT_EQ(z.scale, 1.0f);
  EXPECT_EQ(z.zero_point, 0);
  EXPECT_EQ(quantize_value(2.5f, {1.0f, 0}, DataType::kUint8), 2);  // half to even
  EXPECT_EQ(quantize_value(-3.0f, {1.0f, 0}, DataType::kUint8), 0);  // saturates
}

TEST(QdqParams, FourBitWeightsFindAGridExactlyAndClipHeavyTails) {
  // Channel 0 on a grid of 0.1 whose largest level is 5 (as GPTQ leaves a channel), channel 1 on a
  // grid of 0.25 reaching -8: both reproduced exactly.
  Tensor w(DataType::kFloat, {2, 6});
  const float on_grid[12] = {0.1f, -0.3f, 0.5f, 0.0f, -0.2f, 0.4f, 0.25f, -2.0f, 1.75f, 0.5f, -0.75f, 1.0f};
  std::copy(on_grid, on_grid + 12, w.mutable_data<float>());
  const QuantizedWeight q = quantize_weight4(w, 0);
  ASSERT_EQ(q.scales.size(), 2u);
  EXPECT_NEAR(q.scales[0], 0.1f, 1e-7);
  EXPECT_NEAR(q.scales[1], 0.25f, 1e-7);
  for (int64_t i = 0; i < 12; ++i) {
    const int v = q.values.data<int8_t>()[i];
    EXPECT_GE(v, -8);
    EXPECT_LE(v, 7);
    EXPECT_NEAR(v * q.scales[i / 6], on_grid[i], 1e-6) << i;
  }
  // One outlier among small weights: a clipped scale beats max|w| / 7 on the squared error.
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 0.1f);
  Tensor h(DataType::kFloat, {1, 256});
  for (int64_t i = 0; i < 256; ++i) h.mutable_data<float>()[i] = nd(rng);
  h.mutable_data<float>()[7] = 0.9f;
  const QuantizedWeight c = quantize_weight4(h, 0);
  auto err = [&](float s) {
    double e = 0;
    for (int64_t i = 0; i < 256; ++i) {
      const float x = h.data<float>()[i];
      const float l = std::clamp(std::nearbyint(x / s), -8.0f, 7.0f);
      e += (x - l * s) * (x - l * s);
    }
    return e;
  };
  EXPECT_LT(err(c.scales[0]), 0.95 * err(0.9f / 7.0f));
  EXPECT_LT(c.scales[0], 0.9f / 7.0f);
}

TEST(QdqParams, WeightPerChannelAndBias) {
  const Tensor w = Tensor::from_vector<float>({2, 3}, {1.27f, -0.5f, 0.2f, 0.5f, -0.25f, 0.0f});
  const QuantizedWeight q = quantize_weight(w, true, 0);
  ASSERT_EQ(q.scales.size(), 2u);
  EXPECT_FLOAT_EQ(q.scales[0], 0.01f);
  EXPECT_FLOAT_EQ(q.scales[1], 0.5f / 127.0f);
  EXPECT_EQ(q.values.data<int8_t>()[0], 127);
  EXPECT_EQ(q.values.data<int8_t>()[1], -50);
  EXPECT_EQ(q.values.data<int8_t>()[3], 127);
  EXPECT_EQ(q.values.data<int8_t>()[4], -64);  // -0.25 / (0.5/127) = -63.5 -> -64 (half to even)
  const QuantizedWeight t = quantize_weight(w, true, 1);  // along columns (Gemm without transB)
  ASSERT_EQ(t.scales.size(), 3u);
  EXPECT_FLOAT_EQ(t.scales[2], 0.2f / 127.0f);
  const Tensor b = quantize_bias(Tensor::from_vector<float>({2}, {1.0f, -0.3f}), 0.1f, {0.02f, 0.01f});
  EXPECT_EQ(b.data<int32_t>()[0], 500);
  EXPECT_EQ(b.data<int32_t>()[1], -300);
}

TEST(QdqParams, GivenScalesReproduceTheLevelsOfAWeightAlreadyOnTheirGrid) {
  // Channel 0 on the grid 0.01 with largest level 100 (GPTQ's output can stop short of 127):
  // max|W| / 127 would round it again onto 1/127 and move every value; the given scale keeps them.
  const Tensor w = Tensor::from_vector<float>({2, 3}, {1.00f, -0.37f, 0.05f, 0.5f, -0.25f, 0.0f});
  const std::vector<float> scales = {0.01f, 0.5f / 127.0f};
  const QuantizedWeight q = quantize_weight(w, true, 0, DataType::kInt8, false, &scales);
  EXPECT_EQ(q.scales, scales);
  EXPECT_EQ(q.values.data<int8_t>()[0], 100);
  EXPECT_EQ(q.values.data<int8_t>()[1], -37);
  EXPECT_EQ(q.values.data<int8_t>()[2], 5);
  EXPECT_EQ(q.values.data<int8_t>()[3], 127);
  const QuantizedWeight plain = quantize_weight(w, true, 0);
  EXPECT_EQ(plain.values.data<int8_t>()[1], -47);  // -0.37 / (1/127) = -46.99: off the 0.01 grid
  const std::vector<float> wrong = {0.01f};
  EXPECT_THROW(quantize_weight(w, true, 0, DataType::kInt8, false, &wrong), Error);
}

TEST(QdqParams, Uint8WeightsAreTheSameLevelsPlus128) {
  const Tensor w = Tensor::from_vector<float>({2, 3}, {1.27f, -0.5f, 0.2f, 0.5f, -0.25f, 0.0f});
  const QuantizedWeight s = quantize_weight(w, true, 0, DataType::kInt8);
  const QuantizedWeight u = quantize_weight(w, true, 0, DataType::kUint8);
  EXPECT_EQ(s.zero_point, 0);
  EXPECT_EQ(u.zero_point, 128);
  EXPECT_EQ(u.values.dtype(), DataType::kUint8);
  EXPECT_EQ(u.scales, s.scales);
  for (int64_t i = 0; i < 6; ++i) EXPECT_EQ(u.values.data<uint8_t>()[i], s.values.data<int8_t>()[i] + 128);
  EXPECT_EQ(u.values.data<uint8_t>()[0], 255);  // 127 + 128
  EXPECT_EQ(u.values.data<uint8_t>()[4], 64);   // -64 + 128
  // 7-bit levels keep their range in uint8 too: [-64, 63] + 128.
  const QuantizedWeight r = quantize_weight(w, true, 0, DataType::kUint8, true);
  EXPECT_EQ(r.values.data<uint8_t>()[0], 63 + 128);
}

class MinMax : public runtime::Observer {
 public:
  void on_value(const ir::Value& v, const Tensor& t) override {
    if (t.dtype() != DataType::kFloat) return;
    Range& r = ranges[&v];
    for (int64_t i = 0; i < t.numel(); ++i) {
      r.min = std::min(r.min, t.data<float>()[i]);
      r.max = std::max(r.max, t.data<float>()[i]);
    }
  }
  RangeMap ranges;
};

Tensor random_tensor(const Shape& shape, std::mt19937& rng, float lo, float hi) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(shape_numel(shape));
  for (float& x : v) x = d(rng);
  return Tensor::from_vector<float>(shape, v);
}

// x -> Conv1 -> Relu -> MaxPool -> {Conv2 -> Relu, identity} -> Concat -> GlobalAveragePool ->
// Flatten -> Gemm(transB) -> y
struct Net {
  ir::Model model;
  Tensor input;
  RangeMap ranges;
};

Net make_net() {
  Net n;
  std::mt19937 rng(5);
  ir::Model& m = n.model;
  m.set_opset("", 13);
  ir::Graph& g = *m.graph;
  ir::TypeInfo t;
  t.elem_type = DataType::kFloat;
  ir::Value* x = g.add_input("x", t);
  auto conv = [&](ir::Value* in, int cin, int cout, const std::string& name) {
    ir::Node* c = g.add_node("Conv", {in, g.add_initializer(name + ".W", random_tensor({cout, cin, 3, 3}, rng, -0.5f, 0.5f)),
                                      g.add_initializer(name + ".b", random_tensor({cout}, rng, -0.2f, 0.2f))},
                             {name + ".out"}, name);
    c->set_attr(ir::Attribute::make_ints("pads", {1, 1, 1, 1}));
    c->output(0)->type().elem_type = DataType::kFloat;
    ir::Node* r = g.add_node("Relu", {c->output(0)}, {name + ".relu"}, name + "_relu");
    r->output(0)->type().elem_type = DataType::kFloat;
    return r->output(0);
  };
  ir::Value* a = conv(x, 2, 4, "conv1");
  ir::Node* mp = g.add_node("MaxPool", {a}, {"pool"}, "pool");
  mp->set_attr(ir::Attribute::make_ints("kernel_shape", {2, 2}));
  mp->set_attr(ir::Attribute::make_ints("strides", {2, 2}));
  ir::Value* b = conv(mp->output(0), 4, 4, "conv2");
  ir::Node* cat = g.add_node("Concat", {b, mp->output(0)}, {"cat"}, "cat");
  cat->set_attr(ir::Attribute::make_int("axis", 1));
  ir::Node* gap = g.add_node("GlobalAveragePool", {cat->output(0)}, {"gap"}, "gap");
  ir::Node* fl = g.add_node("Flatten", {gap->output(0)}, {"flat"}, "flat");
  ir::Node* gemm = g.add_node("Gemm", {fl->output(0), g.add_initializer("fc.W", random_tensor({3, 8}, rng, -1, 1)),
                                       g.add_initializer("fc.b", random_tensor({3}, rng, -1, 1))},
                              {"y"}, "fc");
  gemm->set_attr(ir::Attribute::make_int("transB", 1));
  g.add_output(gemm->output(0));
  for (ir::Value* v : {mp->output(0), cat->output(0), gap->output(0), fl->output(0)}) v->type().elem_type = DataType::kFloat;
  n.input = random_tensor({1, 2, 8, 8}, rng, -2, 2);
  MinMax obs;
  runtime::Executor ex(m);
  obs.on_value(*x, n.input);
  ex.run({{"x", n.input}}, &obs);
  n.ranges = obs.ranges;
  return n;
}

const ir::Node* producer_of(const ir::Graph& g, const std::string& value) {
  const ir::Value* v = g.find_value(value);
  return v ? v->producer() : nullptr;
}

float dq_scale(const ir::Value* dq_out) {
  return dq_out->producer()->input(1)->initializer()->data<float>()[0];
}

int dq_zero_point_u8(const ir::Value* dq_out) {
  return dq_out->producer()->input(2)->initializer()->data<uint8_t>()[0];
}

TEST(QdqEmit, PlacementForOrtFusion) {
  Net n = make_net();
  const Tensor ref = runtime::Executor(n.model).run({{"x", n.input}})[0];
  QdqOptions o;
  const QdqSummary s = emit_qdq(n.model, n.ranges, o);
  const ir::Graph& g = *n.model.graph;
  EXPECT_EQ(s.folded_activations, 2u);  // both Relus are redundant under uint8 with zero point 0
  for (const auto& node : g.nodes()) EXPECT_NE(node->op_type(), "Relu");
  // Conv1 -> Q directly (no DQ/Q between the conv and where the Relu was).
  const ir::Value* c1 = g.find_value("conv1.out");
  ASSERT_EQ(c1->uses().size(), 1u);
  EXPECT_EQ(c1->uses()[0].node->op_type(), "QuantizeLinear");
  // Its zero point is 0 and its range is the Relu's.
  EXPECT_EQ(c1->uses()[0].node->input(2)->initializer()->data<uint8_t>()[0], 0);
  // Weight per channel on axis 0; bias int32 with scale s_x * s_w. conv1 reads x in [-2, 2]
  // (uint8 with zero point near 128), whose u8s8 GEMM could saturate on AVX2 without VNNI: its
  // weight is stored as uint8 with zero point 128 (exact u8u8 kernels). conv2 reads a Relu output
  // (zero point 0): int8.
  const ir::Node* conv1 = producer_of(g, "conv1.out");
  const ir::Node* wdq = conv1->input(1)->producer();
  ASSERT_EQ(wdq->op_type(), "DequantizeLinear");
  EXPECT_EQ(wdq->attr_int("axis", -1), 0);
  EXPECT_NE(dq_zero_point_u8(conv1->input(0)), 0);
  EXPECT_EQ(wdq->input(0)->initializer()->dtype(), DataType::kUint8);
  ASSERT_EQ(wdq->inputs().size(), 3u);
  for (int64_t c = 0; c < 4; ++c) EXPECT_EQ(wdq->input(2)->initializer()->data<uint8_t>()[c], 128);
  const ir::Node* conv2 = producer_of(g, "conv2.out");
  const ir::Node* w2dq = conv2->input(1)->producer();
  EXPECT_EQ(dq_zero_point_u8(conv2->input(0)), 0);
  EXPECT_EQ(w2dq->input(0)->initializer()->dtype(), DataType::kInt8);
  EXPECT_EQ(w2dq->inputs().size(), 2u);  // zero point 0 omitted
  const ir::Node* bdq = conv1->input(2)->producer();
  ASSERT_EQ(bdq->op_type(), "DequantizeLinear");
  EXPECT_EQ(bdq->input(0)->initializer()->dtype(), DataType::kInt32);
  const float sx = dq_scale(conv1->input(0));
  const Tensor* ws = wdq->input(1)->initializer();
  const Tensor* bs = bdq->input(1)->initializer();
  for (int64_t c = 0; c < 4; ++c) EXPECT_FLOAT_EQ(bs->data<float>()[c], sx * ws->data<float>()[c]);
  // MaxPool: output Q shares the input's scale and zero point.
  const ir::Node* mp = producer_of(g, "pool");
  const ir::Node* mp_q = g.find_value("pool")->uses()[0].node;
  ASSERT_EQ(mp_q->op_type(), "QuantizeLinear");
  EXPECT_FLOAT_EQ(mp_q->input(1)->initializer()->data<float>()[0], dq_scale(mp->input(0)));
  // Concat: both inputs and the output share one scale.
  const ir::Node* cat = producer_of(g, "cat");
  const float s0 = dq_scale(cat->input(0)), s1 = dq_scale(cat->input(1));
  EXPECT_FLOAT_EQ(s0, s1);
  EXPECT_FLOAT_EQ(g.find_value("cat")->uses()[0].node->input(1)->initializer()->data<float>()[0], s0);
  // Gemm: weight per output channel on axis 0 (transB = 1); the graph output stays float, same name.
  const ir::Node* fc = producer_of(g, "y");
  EXPECT_EQ(fc->op_type(), "Gemm");
  EXPECT_EQ(fc->input(1)->producer()->attr_int("axis", -1), 0);
  EXPECT_EQ(g.outputs()[0]->name(), "y");
  EXPECT_GE(n.model.opset(""), 13);
  // Quantized output close to float: within a few steps of the Gemm input scale times |W| rows.
  const Tensor got = runtime::Executor(n.model).run({{"x", n.input}})[0];
  EXPECT_LE(testing::max_abs_error(got, ref), 0.05) << "quantized vs float";
  EXPECT_GT(testing::max_abs_error(got, ref), 0.0);  // it really is quantized
}

TEST(QdqEmit, Int8ActivationsKeepRelu) {
  Net n = make_net();
  QdqOptions o;
  o.activation_type = DataType::kInt8;
  o.activation_symmetric = true;
  const QdqSummary s = emit_qdq(n.model, n.ranges, o);
  EXPECT_EQ(s.folded_activations, 0u);  // symmetric int8: Q does not clamp at 0, the Relu stays
  int relus = 0;
  for (const auto& node : n.model.graph->nodes()) relus += node->op_type() == "Relu";
  EXPECT_EQ(relus, 2);
  // int8 activations run s8s8 kernels (exact): every weight stays int8.
  for (const char* out : {"conv1.out", "conv2.out"})
    EXPECT_EQ(producer_of(*n.model.graph, out)->input(1)->producer()->input(0)->initializer()->dtype(), DataType::kInt8);
}

TEST(QdqEmit, SaturationSafeOffKeepsInt8Weights) {
  Net n = make_net(), m = make_net();  // the same seeded net twice
  QdqOptions safe, plain;
  plain.saturation_safe = false;
  emit_qdq(n.model, n.ranges, safe);
  emit_qdq(m.model, m.ranges, plain);
  const ir::Node* w_safe = producer_of(*n.model.graph, "conv1.out")->input(1)->producer();
  const ir::Node* w_plain = producer_of(*m.model.graph, "conv1.out")->input(1)->producer();
  EXPECT_EQ(w_safe->input(0)->initializer()->dtype(), DataType::kUint8);
  EXPECT_EQ(w_plain->input(0)->initializer()->dtype(), DataType::kInt8);
  // Both store the same levels: the two models compute the same values.
  const Tensor a = runtime::Executor(n.model).run({{"x", n.input}})[0];
  const Tensor b = runtime::Executor(m.model).run({{"x", m.input}})[0];
  ASSERT_EQ(a.numel(), b.numel());
  for (int64_t i = 0; i < a.numel(); ++i) EXPECT_FLOAT_EQ(a.data<float>()[i], b.data<float>()[i]);
  EXPECT_GT(a.numel(), 0);
}

TEST(QdqEmit, ExclusionsAndPerTensor) {
  Net n = make_net();
  QdqOptions o;
  o.exclude_nodes = {"fc"};
  o.per_channel = false;
  emit_qdq(n.model, n.ranges, o);
  const ir::Graph& g = *n.model.graph;
  const ir::Node* fc = producer_of(g, "y");
  EXPECT_TRUE(fc->input(1)->is_initializer());  // float weight kept
  EXPECT_EQ(fc->input(1)->initializer()->dtype(), DataType::kFloat);
  const ir::Node* wdq = producer_of(g, "conv1.out")->input(1)->producer();
  EXPECT_FALSE(wdq->has_attr("axis"));
  EXPECT_EQ(wdq->input(1)->initializer()->numel(), 1);
}

TEST(QdqEmit, Activation16Bit) {
  Net n = make_net();
  QdqOptions o;
  o.activation_type = DataType::kUint16;
  emit_qdq(n.model, n.ranges, o);
  EXPECT_EQ(n.model.opset(""), 21);
  const ir::Node* q = n.model.graph->find_value("conv1.out")->uses()[0].node;
  EXPECT_EQ(q->input(2)->initializer()->dtype(), DataType::kUint16);
}

}  // namespace
}  // namespace qtool::quant
