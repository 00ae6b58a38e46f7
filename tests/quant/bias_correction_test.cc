// correct_biases: a Conv whose quantized weights have a known mean error gets exactly that error
// removed from its bias (int32 bias, float bias, no bias).
#include "qtool/quant/bias_correction.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "qtool/quant/qdq.h"
#include "qtool/runtime/executor.h"
#include "test_util.h"

namespace qtool::quant {
namespace {

using VectorSource = testing::MemorySource;

// x [1,2,4,4]: channel 0 uniform in [0.5, 1.5] (mean 1), channel 1 in [1.5, 2.5] (mean 2).
std::vector<data::Sample> make_samples(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-0.5f, 0.5f);
  std::vector<data::Sample> out;
  for (size_t s = 0; s < n; ++s) {
    std::vector<float> v(32);
    for (int i = 0; i < 32; ++i) v[i] = (i < 16 ? 1.0f : 2.0f) + u(rng);
    out.push_back({{"x", Tensor::from_vector<float>({1, 2, 4, 4}, v)}});
  }
  return out;
}

// x -> Conv(W [3,2,1,1][, b]) -> y (a graph output: float, read from quantized inputs). Per-channel int8 scales are max|W_c| / 127 = 0.01, so
// the small weights round to 0 and leave a known mean error on each channel:
//   c0: w = (1.27, 0.004)   -> error -0.004 · E[x1] = -0.008
//   c1: w = (0.004, -1.27)  -> error -0.004 · E[x0] = -0.004
//   c2: w = (1.27, -0.0045) -> error +0.0045 · E[x1] = +0.009
// (input quantization adds an unbiased error of at most half a step, 2.5/255/2).
ir::Model biased_model(bool with_bias) {
  ir::Model m;
  m.set_opset("", 13);
  ir::Graph& g = *m.graph;
  ir::TypeInfo t;
  t.elem_type = DataType::kFloat;
  ir::Value* x = g.add_input("x", t);
  ir::Value* w = g.add_initializer("W", Tensor::from_vector<float>({3, 2, 1, 1}, {1.27f, 0.004f, 0.004f, -1.27f, 1.27f, -0.0045f}));
  w->type().elem_type = DataType::kFloat;
  std::vector<ir::Value*> in = {x, w};
  if (with_bias) {
    in.push_back(g.add_initializer("B", Tensor::from_vector<float>({3}, {0.1f, 0.2f, 0.3f})));
    in.back()->type().elem_type = DataType::kFloat;
  }
  ir::Node* c = g.add_node("Conv", in, {"y"}, "conv");
  c->output(0)->type().elem_type = DataType::kFloat;
  g.add_output(c->output(0));
  return m;
}

ir::Model quantize(const ir::Model& fp32, bool quantize_bias, float x_max = 2.5f) {
  ir::Model q = fp32.clone();
  RangeMap ranges;
  ranges[q.graph->find_value("x")] = Range{0.0f, x_max};
  QdqOptions o;
  o.quantize_bias = quantize_bias;
  emit_qdq(q, ranges, o);
  return q;
}

// Per-channel mean of (quantized - float) over the samples.
std::vector<double> mean_error(const ir::Model& fp32, const ir::Model& q, const std::vector<data::Sample>& samples) {
  runtime::Executor ef(fp32), eq(q);
  std::vector<double> e(3, 0.0);
  for (const auto& s : samples) {
    const Tensor a = ef.run(s)[0], b = eq.run(s)[0];
    for (int64_t c = 0; c < 3; ++c)
      for (int64_t k = 0; k < 16; ++k) e[c] += b.get_as_double(c * 16 + k) - a.get_as_double(c * 16 + k);
  }
  for (double& v : e) v /= 16.0 * static_cast<double>(samples.size());
  return e;
}

TEST(BiasCorrection, RemovesKnownMeanErrorFromInt32FloatAndMissingBias) {
  const std::vector<double> expected = {-0.008, -0.004, 0.009};
  struct Case {
    bool bias, quantize_bias;
  };
  for (const Case k : {Case{true, true}, Case{true, false}, Case{false, true}}) {
    SCOPED_TRACE(::testing::Message() << "bias " << k.bias << " int32 " << k.quantize_bias);
    const ir::Model fp32 = biased_model(k.bias);
    ir::Model q = quantize(fp32, k.quantize_bias);
    const std::vector<data::Sample> calib = make_samples(64, 1), fresh = make_samples(64, 2);
    const std::vector<double> before = mean_error(fp32, q, fresh);
    for (int c = 0; c < 3; ++c) EXPECT_NEAR(before[c], expected[c], 1e-3) << "channel " << c;  // the premise

    VectorSource src(calib);
    const BiasCorrectionResult r = correct_biases(fp32, q, src);
    EXPECT_EQ(r.samples, 64u);
    ASSERT_EQ(r.layers.size(), 1u);
    EXPECT_EQ(r.layers[0].node, "conv");
    EXPECT_EQ(r.layers[0].bias_added, !k.bias);
    ASSERT_EQ(r.layers[0].mean_error.size(), 3u);
    for (int c = 0; c < 3; ++c) EXPECT_NEAR(r.layers[0].mean_error[c], expected[c], 1e-3) << "channel " << c;

    // On the samples it averaged over, the mean error is gone up to the int32 bias step
    // (s_x · s_w ≈ 1e-4); on samples it did not see, it is down to sampling noise (< 15%).
    const std::vector<double> on_calib = mean_error(fp32, q, calib), after = mean_error(fp32, q, fresh);
    for (int c = 0; c < 3; ++c) {
      EXPECT_LT(std::fabs(on_calib[c]), 6e-5) << "channel " << c;
      EXPECT_LT(std::fabs(after[c]), 0.15 * std::fabs(before[c])) << "channel " << c << " before " << before[c];
    }
    // The bias stays in the form ONNX Runtime fuses: an int32 DequantizeLinear when it was one (or
    // when it was added), a float constant otherwise.
    const ir::Node* conv = nullptr;
    for (const auto& n : q.graph->nodes())
      if (n->op_type() == "Conv") conv = n.get();
    ASSERT_NE(conv, nullptr);
    ASSERT_NE(conv->input(2), nullptr);
    if (k.quantize_bias) {
      ASSERT_NE(conv->input(2)->producer(), nullptr);
      EXPECT_EQ(conv->input(2)->producer()->op_type(), "DequantizeLinear");
      EXPECT_EQ(conv->input(2)->producer()->input(0)->initializer()->dtype(), DataType::kInt32);
    } else {
      ASSERT_NE(conv->input(2)->initializer(), nullptr);
      EXPECT_NEAR(conv->input(2)->initializer()->get_as_double(0), 0.1 - r.layers[0].mean_error[0], 1e-6);
    }
  }
}

TEST(BiasCorrection, CacheReusesAnUnchangedLayerAndMeasuresAChangedOne) {
  const ir::Model fp32 = biased_model(true);
  VectorSource src(make_samples(16, 1));
  const auto cache = make_bias_correction_cache();
  BiasCorrectionOptions o;
  o.cache = cache.get();
  ir::Model first = quantize(fp32, true);
  const BiasCorrectionResult a = correct_biases(fp32, first, src, o);
  ASSERT_EQ(a.layers.size(), 1u);
  EXPECT_EQ(a.reused, 0u);
  // The same emission again: its layer is taken from the cache, with the very same correction.
  ir::Model again = quantize(fp32, true);
  const BiasCorrectionResult b = correct_biases(fp32, again, src, o);
  ASSERT_EQ(b.layers.size(), 1u);
  EXPECT_EQ(b.reused, 1u);
  EXPECT_EQ(b.layers[0].mean_error, a.layers[0].mean_error);
  auto bias_levels = [](const ir::Model& m) {
    for (const auto& n : m.graph->nodes())
      if (n->op_type() == "Conv") return n->input(2)->producer()->input(0)->initializer()->clone();
    return Tensor();
  };
  const Tensor la = bias_levels(first), lb = bias_levels(again);
  ASSERT_EQ(la.numel(), 3);
  for (int64_t c = 0; c < 3; ++c) EXPECT_EQ(la.get_as_double(c), lb.get_as_double(c));
  // Another input range changes the layer's probe: measured again, with another error.
  ir::Model wider = quantize(fp32, true, 4.0f);
  const BiasCorrectionResult c = correct_biases(fp32, wider, src, o);
  ASSERT_EQ(c.layers.size(), 1u);
  EXPECT_EQ(c.reused, 0u);
  EXPECT_NE(c.layers[0].mean_error, a.layers[0].mean_error);
  // Fewer samples: a different measurement, so not reused either.
  VectorSource fewer(make_samples(8, 1));
  ir::Model third = quantize(fp32, true);
  EXPECT_EQ(correct_biases(fp32, third, fewer, o).reused, 0u);
}

TEST(BiasCorrection, ThreadsGiveTheSameCorrectionsBitForBit) {
  // Samples run side by side on the workers, and each sample's terms are added in sample order:
  // the corrections (and so the model's bytes) do not depend on the thread count.
  const ir::Model fp32 = biased_model(true);
  VectorSource src(make_samples(37, 5));
  std::vector<std::vector<double>> errors;
  std::vector<double> output_scale;
  for (int threads : {1, 2, 3}) {
    ir::Model q = quantize(fp32, true);
    BiasCorrectionOptions o;
    o.threads = threads;
    o.max_samples = 37;
    const BiasCorrectionResult r = correct_biases(fp32, q, src, o);
    ASSERT_EQ(r.layers.size(), 1u);
    EXPECT_EQ(r.samples, 37u);
    errors.push_back(r.layers[0].mean_error);
    output_scale.push_back(r.layers[0].mean_abs_output);
  }
  EXPECT_EQ(errors[0], errors[1]);
  EXPECT_EQ(errors[0], errors[2]);
  EXPECT_EQ(output_scale[0], output_scale[1]);
  EXPECT_EQ(output_scale[0], output_scale[2]);
}

TEST(BiasCorrection, UnmatchedLayersAreSkippedNotBroken) {
  // A quantized model whose Conv output was renamed has no FP32 twin: nothing changes.
  const ir::Model fp32 = biased_model(true);
  ir::Model q = quantize(fp32, true);
  ir::Model other = biased_model(true);
  for (const auto& n : other.graph->nodes())
    if (n->op_type() == "Conv") n->set_op_type("ConvTranspose");  // same output name, other op
  VectorSource src(make_samples(4, 1));
  const BiasCorrectionResult r = correct_biases(other, q, src);
  EXPECT_TRUE(r.layers.empty());
  ASSERT_EQ(r.skipped.size(), 1u);
  EXPECT_NE(r.skipped[0].find("conv: no FP32 layer"), std::string::npos) << r.skipped[0];
  // An input model that is already QDQ: its Conv weight is a DequantizeLinear output, not a float
  // constant, so there is no float layer to correct towards.
  ir::Model q2 = q.clone();
  const BiasCorrectionResult r2 = correct_biases(q, q2, src);
  EXPECT_TRUE(r2.layers.empty());
  ASSERT_EQ(r2.skipped.size(), 1u);
  EXPECT_NE(r2.skipped[0].find("already quantized"), std::string::npos) << r2.skipped[0];
}

TEST(BiasCorrection, GemmWithTransposedWeight) {
  // x [8,2] -> Gemm(W [3,2], transB = 1, C [3]) -> y [8,3]: the same weights and expected errors as
  // the Conv case, output channels on axis 1.
  ir::Model m;
  m.set_opset("", 13);
  ir::Graph& g = *m.graph;
  ir::TypeInfo t;
  t.elem_type = DataType::kFloat;
  ir::Value* x = g.add_input("x", t);
  ir::Value* w = g.add_initializer("W", Tensor::from_vector<float>({3, 2}, {1.27f, 0.004f, 0.004f, -1.27f, 1.27f, -0.0045f}));
  w->type().elem_type = DataType::kFloat;
  ir::Value* c = g.add_initializer("C", Tensor::from_vector<float>({3}, {0.1f, 0.2f, 0.3f}));
  c->type().elem_type = DataType::kFloat;
  ir::Node* n = g.add_node("Gemm", {x, w, c}, {"y"}, "gemm");
  n->set_attr(ir::Attribute::make_int("transB", 1));
  n->output(0)->type().elem_type = DataType::kFloat;
  g.add_output(n->output(0));
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-0.5f, 0.5f);
  std::vector<data::Sample> samples;
  for (int s = 0; s < 64; ++s) {
    std::vector<float> v(16);
    for (int i = 0; i < 16; ++i) v[i] = (i % 2 == 0 ? 1.0f : 2.0f) + u(rng);
    samples.push_back({{"x", Tensor::from_vector<float>({8, 2}, v)}});
  }
  ir::Model q = quantize(m, true);
  VectorSource src(samples);
  const BiasCorrectionResult r = correct_biases(m, q, src);
  ASSERT_EQ(r.layers.size(), 1u) << (r.skipped.empty() ? "" : r.skipped[0]);
  const std::vector<double> expected = {-0.008, -0.004, 0.009};
  for (int k = 0; k < 3; ++k) EXPECT_NEAR(r.layers[0].mean_error[k], expected[k], 1e-3) << "channel " << k;
  // After the correction the mean error on the same samples is below the int32 bias step.
  runtime::Executor ef(m), eq(q);
  std::vector<double> e(3, 0.0);
  for (const auto& s : samples) {
    const Tensor a = ef.run(s)[0], b = eq.run(s)[0];
    for (int64_t i = 0; i < 24; ++i) e[i % 3] += b.get_as_double(i) - a.get_as_double(i);
  }
  for (int k = 0; k < 3; ++k) EXPECT_LT(std::fabs(e[k] / (8.0 * 64)), 6e-5) << "channel " << k;
}

}  // namespace
}  // namespace qtool::quant
