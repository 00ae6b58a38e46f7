// RTN clipping search, optimal ternary, binary, GPTQ and AWQ on synthetic matrices. Each test
// compares against the simpler method the algorithm claims to beat.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <set>

#include "qtool/core/dtype.h"
#include "qtool/quant/awq.h"
#include "qtool/quant/gptq.h"
#include "qtool/quant/weight_algorithms.h"
#include "qtool/quant/weight_quant.h"
#include "qtool/core/error.h"
#include "qtool/runtime/executor.h"
#include "graph_builders.h"
#include "test_util.h"

namespace qtool::quant {
namespace {

std::vector<float> gaussian(int64_t n, uint32_t seed, float sigma = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, sigma);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

/// Student-t(3) entries: heavy tails, where clipping the range pays off.
std::vector<float> heavy_tailed(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::student_t_distribution<float> d(3.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

QuantSpec spec(int bits, int64_t block, bool symmetric = true, WeightScheme scheme = WeightScheme::kInt) {
  QuantSpec s;
  s.scheme = scheme;
  s.bits = bits;
  s.block_size = block;
  s.symmetric = symmetric;
  s.is_signed = symmetric;
  return s;
}

TEST(WeightRtn, LevelsStayInRangeAndDequantizeWithinHalfStep) {
  const int64_t rows = 8, cols = 172;  // the stories260K FFN width: a short last block
  const auto w = gaussian(rows * cols, 3);
  for (bool sym : {true, false}) {
    QuantSpec s = spec(4, 32, sym);
    s.clip_steps = 0;
    const QuantizedMatrix q = quantize_rtn(w, rows, cols, s);
    ASSERT_EQ(q.k_blocks(), 6);
    const auto d = q.dequantize();
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        const BlockGrid& g = q.grid(r, c);
        const int32_t l = q.levels[r * cols + c];
        ASSERT_GE(l, g.lo);
        ASSERT_LE(l, g.hi);
        // Without clipping every weight is inside the grid's range: error at most half a step
        // (plus the rounding of the zero point for asymmetric grids).
        EXPECT_LE(std::fabs(d[r * cols + c] - w[r * cols + c]), (sym ? 0.5f : 1.0f) * g.scale + 1e-6f)
            << "r " << r << " c " << c << " scale " << g.scale << " zp " << g.zero_point;
      }
  }
}

TEST(WeightRtn, Float16ScalesAreExactHalvesAndCostAlmostNothing) {
  const int64_t rows = 16, cols = 172;
  const auto w = gaussian(rows * cols, 11, 0.05f);
  for (WeightScheme scheme : {WeightScheme::kInt, WeightScheme::kTernary, WeightScheme::kBinary}) {
    for (bool sym : {true, false}) {
      if (scheme != WeightScheme::kInt && !sym) continue;
      QuantSpec s = spec(scheme == WeightScheme::kInt ? 4 : 2, 32, sym, scheme);
      const QuantizedMatrix q32 = quantize_rtn(w, rows, cols, s);
      s.fp16_scale = true;
      const QuantizedMatrix q16 = quantize_rtn(w, rows, cols, s);
      ASSERT_TRUE(scales_fit_fp16(q16));
      for (const BlockGrid& g : q16.grids) {
        EXPECT_EQ(half_to_float(float_to_half(g.scale)), g.scale);  // stored exactly as float16
        EXPECT_EQ(s.stored_scale(g.scale), g.scale);
      }
      // The float16 rounding of the scale (relative step 2^-11) barely changes the weight error.
      const double e32 = squared_error(w, q32.dequantize()), e16 = squared_error(w, q16.dequantize());
      EXPECT_LT(e16, e32 * 1.02) << "scheme " << static_cast<int>(scheme) << " sym " << sym;
      EXPECT_GT(e16, e32 * 0.98);
    }
  }
  // Scales below float16's normal range are detected (the rewrite then keeps float32 scales).
  QuantSpec s = spec(4, 32);
  s.fp16_scale = true;
  const auto tiny = gaussian(rows * cols, 12, 1e-6f);
  EXPECT_FALSE(scales_fit_fp16(quantize_rtn(tiny, rows, cols, s)));
  EXPECT_TRUE(scales_fit_fp16(quantize_rtn(std::vector<float>(rows * cols, 0.0f), rows, cols, s)));  // unit scales
}

TEST(WeightRtn, ClippingSearchReducesMseOnHeavyTails) {
  const int64_t rows = 32, cols = 256;
  const auto w = heavy_tailed(rows * cols, 7);
  for (int bits : {4, 2}) {
    for (int64_t block : {int64_t{0}, int64_t{32}}) {
      QuantSpec plain = spec(bits, block);
      plain.clip_steps = 0;
      const QuantSpec clipped = spec(bits, block);
      const double e0 = squared_error(w, quantize_rtn(w, rows, cols, plain).dequantize());
      const double e1 = squared_error(w, quantize_rtn(w, rows, cols, clipped).dequantize());
      // Per channel the tails dominate the range; in blocks of 32 fewer blocks hold an outlier.
      EXPECT_LT(e1, (block == 0 ? 0.7 : 0.97) * e0) << "bits " << bits << " block " << block << ": " << e1 << " vs " << e0;
    }
  }
}

TEST(WeightTernary, OptimalBeatsTwnRuleAndIsExactOptimumOnSmallBlock) {
  const int64_t rows = 16, cols = 128;
  for (uint32_t seed : {1u, 2u}) {
    const auto w = seed == 1 ? gaussian(rows * cols, seed) : heavy_tailed(rows * cols, seed);
    const auto opt = quantize_rtn(w, rows, cols, spec(2, 64, true, WeightScheme::kTernary)).dequantize();
    const auto twn = quantize_ternary_twn(w, rows, cols, 64).dequantize();
    const double eo = squared_error(w, opt), et = squared_error(w, twn);
    EXPECT_LT(eo, et) << "seed " << seed;
    for (float v : opt) EXPECT_LE(std::fabs(v), 1e3f);
  }
  // Brute force over all supports of a 6-element block: the search finds the optimum.
  const std::vector<float> x = {0.9f, -0.1f, 0.5f, -1.4f, 0.05f, 0.6f};
  double best = 1e30;
  for (int mask = 1; mask < 64; ++mask) {
    double sa = 0;
    int cnt = 0;
    for (int i = 0; i < 6; ++i)
      if (mask >> i & 1) sa += std::fabs(x[i]), ++cnt;
    const double a = sa / cnt;
    double e = 0;
    for (int i = 0; i < 6; ++i) {
      const double q = (mask >> i & 1) ? (x[i] > 0 ? a : -a) : 0.0;
      e += (x[i] - q) * (x[i] - q);
    }
    best = std::min(best, e);
  }
  const auto q = quantize_rtn(x, 1, 6, spec(2, 0, true, WeightScheme::kTernary)).dequantize();
  EXPECT_NEAR(squared_error(x, q), best, 1e-6);
}

TEST(WeightBinary, AlphaIsMeanAbsAndSignsKept) {
  const std::vector<float> x = {0.5f, -1.5f, 2.0f, -0.0f};
  const auto q = quantize_rtn(x, 1, 4, spec(2, 0, true, WeightScheme::kBinary));
  EXPECT_FLOAT_EQ(q.grids[0].scale, 1.0f);
  EXPECT_EQ(q.levels, (std::vector<int32_t>{1, -1, 1, 1}));
}

/// X with strongly correlated channels (x = z·M, M mixes a few latent factors), rows = samples.
std::vector<float> correlated_inputs(int64_t n, int64_t cols, uint32_t seed) {
  const int64_t latent = 8;
  const auto z = gaussian(n * latent, seed);
  const auto m = gaussian(latent * cols, seed + 1);
  const auto noise = gaussian(n * cols, seed + 2, 0.05f);
  std::vector<float> x(n * cols);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < cols; ++c) {
      double s = noise[i * cols + c];
      for (int64_t l = 0; l < latent; ++l) s += z[i * latent + l] * m[l * cols + c];
      x[i * cols + c] = static_cast<float>(s);
    }
  return x;
}

TEST(WeightGptq, LowerOutputErrorThanRtnOnCorrelatedInputs) {
  const int64_t rows = 48, cols = 96, n = 512;
  const auto w = gaussian(rows * cols, 11);
  const auto x = correlated_inputs(n, cols, 12);
  HessianAccumulator acc(cols);
  acc.add(std::span<const float>(x).subspan(0, 200 * cols), 200);  // streamed in two parts
  acc.add(std::span<const float>(x).subspan(200 * cols), n - 200);
  EXPECT_EQ(acc.samples(), n);
  const auto h = acc.hessian();
  for (int bits : {4, 2}) {
    for (bool act_order : {false, true}) {
      const QuantSpec s = spec(bits, 32);
      GptqOptions o;
      o.act_order = act_order;
      o.block_columns = 64;
      const auto rtn = quantize_rtn(w, rows, cols, s).dequantize();
      const auto gq = quantize_gptq(w, rows, cols, h, s, o);
      const auto g = gq.dequantize();
      const double er = output_error(w, rtn, rows, cols, x, n), eg = output_error(w, g, rows, cols, x, n);
      EXPECT_LT(eg, 0.7 * er) << "bits " << bits << " act_order " << act_order;
      for (size_t i = 0; i < gq.levels.size(); ++i) {
        ASSERT_GE(gq.levels[i], -(1 << (bits - 1)));
        ASSERT_LE(gq.levels[i], (1 << (bits - 1)) - 1);
      }
    }
  }
}

TEST(WeightGptq, HessianMatchesDirectSum) {
  const int64_t cols = 5, n = 7;
  const auto x = gaussian(n * cols, 5);
  HessianAccumulator acc(cols);
  acc.add(x, n);
  const auto h = acc.hessian();
  for (int64_t i = 0; i < cols; ++i)
    for (int64_t j = 0; j < cols; ++j) {
      double s = 0;
      for (int64_t k = 0; k < n; ++k) s += static_cast<double>(x[k * cols + i]) * x[k * cols + j];
      EXPECT_NEAR(h[i * cols + j], s / n, 1e-6 * (1.0 + std::fabs(s / n)));  // one call's rows summed in float
    }
  EXPECT_NEAR(acc.channel_energy()[2], h[2 * cols + 2], 1e-6);
}

TEST(WeightAwq, LowerOutputErrorThanRtnWithLargeChannels) {
  const int64_t rows = 64, cols = 128, n = 256;
  const auto w = gaussian(rows * cols, 21, 0.1f);
  auto x = gaussian(n * cols, 22);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c : {3, 40, 77, 100}) x[i * cols + c] *= 30.0f;  // a few large-magnitude channels
  std::vector<float> mean_abs(cols, 0.0f);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < cols; ++c) mean_abs[c] += std::fabs(x[i * cols + c]) / n;
  const QuantSpec s = spec(4, 32);
  const AwqMatrix m{w, rows};
  const AwqResult res = awq_search(std::span<const AwqMatrix>(&m, 1), cols, x, n, mean_abs, s);
  const double rtn = output_error(w, quantize_rtn(w, rows, cols, s).dequantize(), rows, cols, x, n);
  EXPECT_NEAR(res.rtn_error, rtn, 1e-6 * rtn);
  EXPECT_GT(res.alpha, 0.0);
  EXPECT_LT(res.error, 0.8 * rtn);
  // Folding check: Q(W·diag(s))·diag(1/s) is what the rewritten graph computes.
  auto ws = w;
  scale_columns(ws, rows, cols, res.scales);
  auto d = quantize_rtn(ws, rows, cols, s).dequantize();
  std::vector<float> inv(cols);
  for (int64_t c = 0; c < cols; ++c) inv[c] = 1.0f / res.scales[c];
  scale_columns(d, rows, cols, inv);
  EXPECT_NEAR(output_error(w, d, rows, cols, x, n), res.error, 1e-4 * res.error);
}

TEST(WeightAwq, HessianSearchEqualsRowSearchAndOutputClipHelps) {
  const int64_t rows = 64, cols = 128, n = 256;
  const auto w = gaussian(rows * cols, 41, 0.1f);
  auto x = correlated_inputs(n, cols, 42);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c : {3, 40, 77, 100}) x[i * cols + c] *= 10.0f;
  std::vector<float> mean_abs(cols, 0.0f);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < cols; ++c) mean_abs[c] += std::fabs(x[i * cols + c]) / n;
  HessianAccumulator acc(cols);
  acc.add(x, n);
  std::vector<double> h = acc.hessian();
  for (auto& v : h) v *= n;  // Σ x xᵀ: errors then equal the row sums exactly
  // tr(ΔW H ΔWᵀ) is ‖ΔW X‖² over the rows.
  const auto rtn = quantize_rtn(w, rows, cols, spec(4, 32)).dequantize();
  const double e_rows = output_error(w, rtn, rows, cols, x, n);
  EXPECT_NEAR(hessian_error(w, rtn, rows, cols, h), e_rows, 1e-6 * e_rows);
  const AwqMatrix m{w, rows};
  AwqOptions plain;
  plain.output_clip = false;
  const AwqResult by_rows = awq_search(std::span<const AwqMatrix>(&m, 1), cols, x, n, mean_abs, spec(4, 32), plain);
  const AwqResult by_h = awq_search_hessian(std::span<const AwqMatrix>(&m, 1), cols, h, mean_abs, spec(4, 32), plain);
  EXPECT_EQ(by_h.alpha, by_rows.alpha);
  EXPECT_NEAR(by_h.error, by_rows.error, 1e-6 * by_rows.error);
  EXPECT_NEAR(by_h.rtn_error, e_rows, 1e-6 * e_rows);  // α = 0 is plain RTN
  EXPECT_LE(by_h.error, by_h.rtn_error);
  // Clipping chosen by the output error: never worse than by the weight error on the same scales.
  const AwqResult clip = awq_search_hessian(std::span<const AwqMatrix>(&m, 1), cols, h, mean_abs, spec(4, 32));
  EXPECT_LT(clip.error, by_h.error);
  EXPECT_LT(clip.rtn_error, by_h.rtn_error);
  // Duo scaling (x^α / w^(1-α)): α = 0 is still plain RTN, and the search never ends above it.
  AwqOptions duo;
  duo.duo_scaling = true;
  const AwqResult d = awq_search_hessian(std::span<const AwqMatrix>(&m, 1), cols, h, mean_abs, spec(4, 32), duo);
  EXPECT_NEAR(d.rtn_error, clip.rtn_error, 1e-9 * clip.rtn_error);
  EXPECT_LE(d.error, d.rtn_error);
  EXPECT_NE(d.scales, clip.scales);
  // scale_hessian is the Hessian of x·diag(1/s).
  const auto hs = scale_hessian(h, clip.scales);
  const double want = h[5 * cols + 9] / (static_cast<double>(clip.scales[5]) * clip.scales[9]);
  EXPECT_NEAR(hs[5 * cols + 9], want, 1e-12 * std::fabs(want));
}

TEST(WeightRtn, OutputClipLowersOutputErrorOnCorrelatedInputs) {
  const int64_t rows = 48, cols = 96, n = 512;
  const auto w = gaussian(rows * cols, 51);
  const auto x = correlated_inputs(n, cols, 52);
  HessianAccumulator acc(cols);
  acc.add(x, n);
  const auto h = acc.hessian();
  for (bool sym : {true, false}) {
    const QuantSpec s = spec(4, 32, sym);
    const QuantizedMatrix plain = quantize_rtn(w, rows, cols, s);
    const QuantizedMatrix oc = quantize_rtn_hessian(w, rows, cols, s, h);
    const double ep = output_error(w, plain.dequantize(), rows, cols, x, n);
    const double eo = output_error(w, oc.dequantize(), rows, cols, x, n);
    EXPECT_LT(eo, 0.95 * ep) << "sym " << sym;
    // Per block the chosen grid is the best of the candidates for dᵀ H_b d.
    const auto hb = diagonal_block(h, cols, 32, 64);
    EXPECT_EQ(hb.size(), 32u * 32u);
    EXPECT_EQ(hb[1 * 32 + 2], h[33 * cols + 34]);
  }
}

TEST(WeightGptq, RefitScalesNeverRaisesOutputErrorAndKeepsLevels) {
  const int64_t rows = 32, cols = 172, n = 512;  // K = 172: a short last block
  const auto w = gaussian(rows * cols, 61, 0.1f);
  const auto x = correlated_inputs(n, cols, 62);
  HessianAccumulator acc(cols);
  acc.add(x, n);
  const auto h = acc.hessian();
  for (bool sym : {true, false}) {
    QuantSpec s = spec(4, 32, sym);
    s.fp16_scale = true;
    QuantizedMatrix q = quantize_gptq(w, rows, cols, h, s);
    const auto levels = q.levels;
    const auto grids = q.grids;
    const double before = hessian_error(w, q.dequantize(), rows, cols, h);
    const double after = refine_scales(q, w, h, true);
    EXPECT_NEAR(after, hessian_error(w, q.dequantize(), rows, cols, h), 1e-9 * before);
    EXPECT_LE(after, before);
    EXPECT_LT(after, 0.999 * before) << "sym " << sym;  // a least-squares refit finds something here
    EXPECT_EQ(q.levels, levels);
    int changed = 0;
    for (size_t i = 0; i < q.grids.size(); ++i) {
      EXPECT_EQ(q.grids[i].zero_point, grids[i].zero_point);
      EXPECT_GT(q.grids[i].scale, 0.0f);
      EXPECT_EQ(half_to_float(float_to_half(q.grids[i].scale)), q.grids[i].scale);
      changed += q.grids[i].scale != grids[i].scale;
    }
    EXPECT_GT(changed, 0);
  }
}

TEST(WeightGptq, CoordinateDescentLowersTheLayerObjective) {
  const int64_t rows = 32, cols = 96, n = 512;
  const auto w = gaussian(rows * cols, 71);
  const auto x = correlated_inputs(n, cols, 72);
  HessianAccumulator acc(cols);
  acc.add(x, n);
  const auto h = acc.hessian();
  for (int bits : {4, 2}) {
    const QuantSpec s = spec(bits, 32);
    GptqOptions o;
    const QuantizedMatrix plain = quantize_gptq(w, rows, cols, h, s, o);
    o.cd_passes = 2;
    const QuantizedMatrix cd = quantize_gptq(w, rows, cols, h, s, o);
    const double ep = hessian_error(w, plain.dequantize(), rows, cols, h);
    const double ec = hessian_error(w, cd.dequantize(), rows, cols, h);
    EXPECT_LT(ec, ep) << "bits " << bits;
    EXPECT_NE(cd.levels, plain.levels);
    for (size_t i = 0; i < cd.levels.size(); ++i) {
      ASSERT_GE(cd.levels[i], -(1 << (bits - 1)));
      ASSERT_LE(cd.levels[i], (1 << (bits - 1)) - 1);
    }
    for (size_t i = 0; i < cd.grids.size(); ++i) EXPECT_EQ(cd.grids[i].scale, plain.grids[i].scale);
  }
}

TEST(WeightOutliers, SelectsSalientColumns) {
  const int64_t rows = 4, cols = 10;
  auto w = gaussian(rows * cols, 31, 0.1f);
  for (int64_t r = 0; r < rows; ++r) w[r * cols + 6] = 5.0f;
  EXPECT_EQ(select_outlier_columns(w, rows, cols, 0.1), (std::vector<int64_t>{6}));
  std::vector<float> energy(cols, 1.0f);
  energy[2] = 1e6f;
  EXPECT_EQ(select_outlier_columns(w, rows, cols, 0.2, energy), (std::vector<int64_t>{2, 6}));
  EXPECT_TRUE(select_outlier_columns(w, rows, cols, 0.0).empty());
}


/// x[8,64] -> MatMul A[64,96] -> Relu -> MatMul B[96,64] -> Relu -> MatMul C[64,10] -> y; inputs
/// with correlated channels (where error compensation pays off).
ir::Model registry_mlp() {
  ir::Model m;
  m.ir_version = 8;
  m.set_opset("", 17);
  ir::Graph& g = *m.graph;
  ir::Value* x = g.add_input("x", testing::float_type({8, 64}));
  const int64_t dims[4] = {64, 96, 64, 10};
  ir::Value* h = x;
  for (int i = 0; i < 3; ++i) {
    auto* w = g.add_initializer("w" + std::to_string(i),
                                Tensor::from_vector<float>({dims[i], dims[i + 1]}, gaussian(dims[i] * dims[i + 1], 10 + i, 0.2f)));
    h = g.add_node("MatMul", {h, w}, {"m" + std::to_string(i)}, "mm" + std::to_string(i))->output(0);
    if (i < 2) h = g.add_node("Relu", {h}, {"r" + std::to_string(i)}, "relu" + std::to_string(i))->output(0);
  }
  h->type() = testing::float_type({8, 10});
  g.add_output(h);
  return m;
}

std::map<std::string, Tensor> registry_sample(uint32_t seed) {
  const auto z = gaussian(8 * 4, seed), mix = gaussian(4 * 64, 7), noise = gaussian(8 * 64, seed + 1000, 0.1f);
  std::vector<float> v(8 * 64);
  for (int64_t r = 0; r < 8; ++r)
    for (int64_t c = 0; c < 64; ++c) {
      float s = noise[r * 64 + c];
      for (int64_t l = 0; l < 4; ++l) s += z[r * 4 + l] * mix[l * 64 + c] * (c % 8 == 0 ? 8.0f : 1.0f);
      v[r * 64 + c] = s;
    }
  return {{"x", Tensor::from_vector<float>({8, 64}, v)}};
}

// THE registry (weight_algorithms.h): every row parses from its name and is found by its id, its
// help is listed, an algorithm that needs data refuses to run without it, and apply_weight_only
// runs each one through its row: the layers carry the row's label, and the algorithms that use
// calibration data beat plain RTN on the model's output.
TEST(WeightAlgorithmRegistry, EveryRowParsesRunsAndLabelsItsLayers) {
  const ir::Model fp = registry_mlp();
  CalibrationInputs calib;
  for (uint32_t i = 0; i < 16; ++i) calib.samples.push_back(registry_sample(100 + i));
  auto output_error = [&](const ir::Model& q) {
    runtime::Executor ef(fp), eq(q);
    double num = 0, den = 0;
    for (uint32_t i = 0; i < 6; ++i) {
      const auto in = registry_sample(500 + i);
      const Tensor a = ef.run(in).at(0), b = eq.run(in).at(0);
      for (int64_t j = 0; j < a.numel(); ++j) {
        num += std::pow(a.data<float>()[j] - b.data<float>()[j], 2);
        den += std::pow(a.data<float>()[j], 2);
      }
    }
    return num / den;
  };
  double rtn_error = -1;
  std::set<std::string> names;
  for (const WeightAlgorithmInfo& a : weight_algorithms()) {
    SCOPED_TRACE(std::string(a.name));
    EXPECT_TRUE(names.insert(std::string(a.name)).second);
    EXPECT_EQ(parse_weight_algorithm(a.name), a.id);
    EXPECT_EQ(&weight_algorithm(a.id), &a);
    EXPECT_NE(weight_algorithms_help().find(std::string(a.name)), std::string::npos);
    WeightOnlyConfig cfg;
    cfg.bits = "4";
    cfg.bits_first_last = "";
    cfg.algorithm = a.id;
    if (a.needs_calibration) {
      ir::Model none = fp.clone();
      EXPECT_THROW(apply_weight_only(none, cfg, nullptr), Error);
    }
    ir::Model m = fp.clone();
    const WeightOnlyReport rep = apply_weight_only(m, cfg, &calib);
    ASSERT_EQ(rep.layers.size(), 3u);
    for (const auto& l : rep.layers) {
      EXPECT_EQ(l.format, "int4_b32");
      if (a.gptq) EXPECT_NE(l.algorithm.find("gptq"), std::string::npos) << l.algorithm;
      else if (a.awq_scales) EXPECT_NE(l.algorithm.find("output-clip"), std::string::npos) << l.algorithm;
      else EXPECT_EQ(l.algorithm, "rtn");
    }
    const double err = output_error(m);
    if (a.id == WeightAlgorithm::kRtn) rtn_error = err;
    else EXPECT_LT(err, rtn_error) << "rtn " << rtn_error;  // rtn registers first
  }
  EXPECT_EQ(names.size(), 4u);
  EXPECT_THROW(parse_weight_algorithm("sparsegpt"), Error);
}

}  // namespace
}  // namespace qtool::quant
