// Calibration: widening histogram, observers, range methods on known distributions, ranges JSON.
#include <algorithm>
#include <cmath>
#include <random>

#include "qtool/calib/calibrate.h"
#include "qtool/calib/histogram.h"
#include "qtool/calib/methods.h"
#include "qtool/calib/observers.h"
#include "qtool/calib/ranges.h"
#include "test_util.h"

namespace qtool::calib {
namespace {

std::vector<float> gaussian(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

std::vector<float> uniform(size_t n, float lo, float hi, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// Statistics of a flat tensor fed in chunks of `chunk` values.
TensorStats stats_of(const std::vector<float>& v, size_t chunk = 0, int bins = 4096) {
  TensorStats s(bins);
  s.name = "t";
  ObserverOptions o;
  o.per_channel = false;
  if (chunk == 0) chunk = v.size();
  for (size_t i = 0; i < v.size(); i += chunk) {
    const size_t n = std::min(chunk, v.size() - i);
    s.observe(Tensor::from_vector<float>({static_cast<int64_t>(n)}, std::vector<float>(v.begin() + i, v.begin() + i + n)), o);
  }
  return s;
}

TEST(Histogram, WideningPreservesCountsAndIsOrderIndependent) {
  std::vector<float> v = gaussian(50000, 1);
  v.push_back(40.0f);
  v.push_back(-7.5f);
  Histogram whole;
  whole.add(v.data(), v.size());
  // Chunks growing the range step by step (small first), and a reversed order.
  Histogram chunked;
  for (size_t i = 0; i < v.size(); i += 97) chunked.add(v.data() + i, std::min<size_t>(97, v.size() - i));
  std::vector<float> r(v.rbegin(), v.rend());
  Histogram reversed;
  for (size_t i = 0; i < r.size(); i += 1000) reversed.add(r.data() + i, std::min<size_t>(1000, r.size() - i));
  for (const Histogram* h : {&whole, &chunked, &reversed}) {
    uint64_t sum = 0;
    for (auto c : h->counts()) sum += c;
    EXPECT_EQ(sum, v.size());
    EXPECT_EQ(h->total(), v.size());
    EXPECT_LE(h->counts().size(), 4096u);
    EXPECT_GT(h->counts().size(), 2048u);  // at least half the bins used over the range
    EXPECT_LE(h->lo(), -7.5);
    EXPECT_GT(h->hi(), 40.0);
  }
  EXPECT_EQ(chunked.counts(), whole.counts());
  EXPECT_EQ(chunked.exponent(), whole.exponent());
  EXPECT_EQ(chunked.first_bin(), whole.first_bin());
  EXPECT_EQ(reversed.counts(), whole.counts());
  // Range 47.5 over <= 4096 bins: width 2^-6 = 0.015625 (2^-7 would need 6080 bins).
  EXPECT_EQ(whole.exponent(), -6);
  // Merge equals adding everything.
  Histogram a, b;
  a.add(v.data(), 20000);
  b.add(v.data() + 20000, v.size() - 20000);
  a.merge(b);
  EXPECT_EQ(a.counts(), whole.counts());
}

TEST(Histogram, LargeTensorsCountOnInterleavedCountersExactly) {
  // A Relu output much larger than its histogram (half exact zeros, then runs of one value): counted
  // on four interleaved counters, the counts equal those of small chunks counted one by one.
  std::vector<float> v = gaussian(300000, 7);
  for (size_t i = 0; i < v.size(); ++i) v[i] = v[i] < 0.0f ? 0.0f : (i % 1000 < 50 ? 1.5f : v[i]);
  Histogram whole, chunked;
  whole.add(v.data(), v.size());
  ASSERT_GE(v.size(), 16 * whole.counts().size());  // the interleaved path
  for (size_t i = 0; i < v.size(); i += 97) chunked.add(v.data() + i, std::min<size_t>(97, v.size() - i));
  EXPECT_EQ(whole.counts(), chunked.counts());
  EXPECT_EQ(whole.first_bin(), chunked.first_bin());
  // Bin [0, width) holds the zeros and the values below one width.
  const double width = std::ldexp(1.0, whole.exponent());
  uint64_t first = 0;
  for (float x : v) first += x >= 0.0f && x < width;
  EXPECT_EQ(whole.counts()[static_cast<size_t>(-whole.first_bin())], first);
}

TEST(Histogram, NonFiniteSkippedAndConstantTensor) {
  std::vector<float> v = {1.0f, NAN, INFINITY, 1.0f, -INFINITY};
  Histogram h;
  h.add(v.data(), v.size());
  EXPECT_EQ(h.total(), 2u);
  EXPECT_EQ(h.nonfinite(), 3u);
  ASSERT_EQ(h.counts().size(), 1u);
  EXPECT_EQ(h.quantile(0.5), 1.0);
  const float big = 1e6f;
  h.add(&big, 1);  // widens from a tiny width by a huge factor
  EXPECT_EQ(h.total(), 3u);
  EXPECT_EQ(h.max(), 1e6);
  uint64_t sum = 0;
  for (auto c : h.counts()) sum += c;
  EXPECT_EQ(sum, 3u);
}

TEST(Histogram, QuantilesInterpolateWithinOneBin) {
  std::vector<float> v(1000);
  for (int i = 0; i < 1000; ++i) v[i] = static_cast<float>(i + 1);  // 1..1000
  Histogram h;
  h.add(v.data(), v.size());
  EXPECT_NEAR(h.quantile(0.5), 500.0, 1.0);
  EXPECT_NEAR(h.quantile(0.999), 999.0, 1.0);
  EXPECT_NEAR(h.abs_quantile(0.9), 900.0, 1.0);
  std::vector<float> neg(v);
  for (auto& x : neg) x = -x;
  Histogram hn;
  hn.add(neg.data(), neg.size());
  EXPECT_NEAR(hn.abs_quantile(0.9), 900.0, 1.0);
  EXPECT_NEAR(hn.quantile(0.1), -900.0, 1.0);
}

// A seeded Gaussian with 20 planted outliers at +-60 (1e-4 of the data): minmax keeps them,
// percentile (99.9) and entropy clip them. MSE weighs them: with n outliers at distance 60 and
// N values rounded with step T/127, E(T) = n (60-T)^2 + N (T/127)^2 / 12, minimal at
// T = 60 n / (n + N / (12 * 127^2)); here n = 20, N = 200000: T = 57.05 (they are too many to clip).
TEST(Methods, GaussianWithOutliers) {
  std::vector<float> v = gaussian(200000, 7);
  for (int i = 0; i < 10; ++i) {
    v[i * 1000] = 60.0f;
    v[i * 1000 + 1] = -60.0f;
  }
  const TensorStats s = stats_of(v, 4096);
  RangeConfig c;
  const Range mm = compute_range("minmax", s, c);
  EXPECT_FLOAT_EQ(mm.hi, 60.0f);
  EXPECT_FLOAT_EQ(mm.lo, -60.0f);
  c.percentile = 99.9;  // |N(0,1)|: P(|x| > 3.2905) = 1e-3
  const Range p = compute_range("percentile", s, c);
  EXPECT_NEAR(p.hi, 3.29, 0.06);
  EXPECT_DOUBLE_EQ(p.lo, -p.hi);
  c.percentile = 99.999;  // keeps 1 - 1e-5 of the values: the outliers (1e-4) stay in
  EXPECT_NEAR(compute_range("percentile", s, c).hi, 60.0, 1e-6);
  const Range e = compute_range("entropy", s, c);
  EXPECT_GT(e.hi, 2.5);
  EXPECT_LT(e.hi, 10.0);
  const double n = 20, N = 200000 - 20;
  EXPECT_NEAR(compute_range("mse", s, c).hi, 60 * n / (n + N / (12.0 * 127 * 127)), 0.05);
  // Asymmetric percentile cuts (100-p)/2 per side: symmetric data gives a symmetric range.
  c.symmetric = false;
  c.percentile = 99.8;  // 0.1% per side: z = 3.0902
  const Range pa = compute_range("percentile", s, c);
  EXPECT_NEAR(pa.hi, 3.09, 0.06);
  EXPECT_NEAR(pa.lo, -3.09, 0.06);
}

// Two outliers in 400000 (5e-6 of the data): now 99.999 clips them (P(|x| > 4.417) = 1e-5), and
// MSE's optimum moves to T = 60 * 2 / (2 + 399998 / (12 * 127^2)) = 29.5.
TEST(Methods, RareOutliersAreClippedByPercentileAndMse) {
  std::vector<float> v = gaussian(400000, 8);
  v[123] = 60.0f;
  v[456] = -60.0f;
  const TensorStats s = stats_of(v, 10000);
  RangeConfig c;
  EXPECT_NEAR(compute_range("percentile", s, c).hi, 4.42, 0.4);
  EXPECT_LT(compute_range("entropy", s, c).hi, 10.0);
  EXPECT_NEAR(compute_range("mse", s, c).hi, 60 * 2 / (2 + 399998 / (12.0 * 127 * 127)), 0.1);
  EXPECT_FLOAT_EQ(compute_range("minmax", s, c).hi, 60.0f);
}

// Uniform on [-1, 1], 8 bits symmetric: E(T) = (1-T)^3/3 + T (T/127)^2/12, minimum at
// 1 - T = T/254, T = 254/255 = 0.99608. Asymmetric on [0, 1] (256 levels): E(h) = (1-h)^3/3 +
// h (h/255)^2/12, minimum at h = 510/511 = 0.99804.
TEST(Methods, MseOnUniformMatchesHandComputedOptimum) {
  const TensorStats s = stats_of(uniform(400000, -1.0f, 1.0f, 3));
  RangeConfig c;
  const Range r = compute_range("mse", s, c);
  EXPECT_NEAR(r.hi, 254.0 / 255.0, 0.0025);
  const TensorStats pos = stats_of(uniform(400000, 0.0f, 1.0f, 4));
  c.symmetric = false;
  const Range a = compute_range("mse", pos, c);
  EXPECT_NEAR(a.hi, 510.0 / 511.0, 0.0025);
  EXPECT_EQ(a.lo, 0.0);
  // At 4 bits clipping pays more: T = 1 - T/14 -> T = 14/15 = 0.9333 (symmetric, 15 levels).
  c.symmetric = true;
  c.bits = 4;
  EXPECT_NEAR(compute_range("mse", s, c).hi, 14.0 / 15.0, 0.004);
}

TEST(Methods, ExpectedErrorFormula) {
  const TensorStats s = stats_of(uniform(400000, -1.0f, 1.0f, 5));
  // No clipping, 255 levels over [-1, 1]: step 2/254, error per value step^2/12.
  const double step = 2.0 / 254.0;
  EXPECT_NEAR(expected_quant_error(s.hist, -1, 1, 255) / 400000.0, step * step / 12, 1e-8);
  // Clip at 0.5: (1-0.5)^3/3 = 0.041667 per value (plus the small rounding term).
  EXPECT_NEAR(expected_quant_error(s.hist, -0.5, 0.5, 255) / 400000.0, 0.125 / 3 + 0.5 * std::pow(1.0 / 254, 2) / 12,
              5e-4);
}

TEST(Methods, EntropyDoesNotClipAUniformDistribution) {
  const TensorStats s = stats_of(uniform(300000, 0.0f, 4.0f, 9));
  RangeConfig c;
  const Range r = compute_range("entropy", s, c);
  EXPECT_GT(r.hi, 0.98 * 4.0);
  EXPECT_LE(r.hi, 4.0);
}

TEST(Methods, EntropyThresholdOnCraftedHistogram) {
  // 256 bins: 200 flat bins, then a long thin tail of single counts out to bin 2047.
  std::vector<uint64_t> h(2048, 0);
  for (int i = 0; i < 200; ++i) h[i] = 1000;
  for (int i = 200; i < 2048; i += 37) h[i] = 1;
  const size_t t = entropy_threshold_bins(h, 128);
  EXPECT_GE(t, 190u);
  EXPECT_LE(t, 260u);
  // Fewer bins than levels: nothing to clip.
  EXPECT_EQ(entropy_threshold_bins(std::vector<uint64_t>(100, 5), 128), 100u);
}

TEST(Methods, AsymmetricRangesContainZeroAndRegistryIsOneList) {
  const TensorStats s = stats_of(uniform(10000, 0.5f, 3.0f, 2));
  RangeConfig c;
  c.symmetric = false;
  const Range r = compute_range("minmax", s, c);
  EXPECT_EQ(r.lo, 0.0);
  EXPECT_NEAR(r.hi, 3.0, 1e-3);
  std::vector<std::string> names;
  for (const auto& m : range_methods()) names.push_back(m.name);
  EXPECT_EQ(names, (std::vector<std::string>{"minmax", "percentile", "entropy", "mse"}));
  try {
    find_method("kl");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kConfig);
    EXPECT_NE(std::string(e.what()).find("entropy"), std::string::npos);
  }
}

TEST(Observer, PerChannelMomentsAndBatchIndependence) {
  ir::Graph g;
  ir::Value* x = g.add_value("x");
  // [4, 3, 2, 2]: channel c of sample n holds values n*10 + c + k*0.25 (k = 0..3).
  std::vector<float> vals;
  for (int n = 0; n < 4; ++n)
    for (int c = 0; c < 3; ++c)
      for (int k = 0; k < 4; ++k) vals.push_back(n * 10.0f + c + k * 0.25f - 15.0f);
  StatsObserver batched, single;
  batched.begin_batch(4);
  batched.on_value(*x, Tensor::from_vector<float>({4, 3, 2, 2}, vals));
  batched.on_value(*x, Tensor::from_vector<float>({4, 3, 2, 2}, vals));  // same batch: counted once
  for (int n = 0; n < 4; ++n) {
    single.begin_batch(1);
    single.on_value(*x, Tensor::from_vector<float>({1, 3, 2, 2}, std::vector<float>(vals.begin() + n * 12, vals.begin() + n * 12 + 12)));
  }
  const TensorStats* a = batched.find(x);
  const TensorStats* b = single.find(x);
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->count, 48u);
  EXPECT_EQ(b->count, 48u);
  EXPECT_EQ(a->channel_axis, 1);
  EXPECT_EQ(a->channel_min, (std::vector<float>{-15.0f, -14.0f, -13.0f}));
  EXPECT_EQ(a->channel_max, (std::vector<float>{15.75f, 16.75f, 17.75f}));
  EXPECT_EQ(a->channel_min, b->channel_min);
  EXPECT_EQ(a->channel_max, b->channel_max);
  EXPECT_EQ(a->hist.counts(), b->hist.counts());
  EXPECT_EQ(a->min, b->min);
  EXPECT_EQ(a->max, b->max);
  // Mean of n*10 + c + k/4 - 15 over n,c,k: 15 + 1 + 0.375 - 15 = 1.375.
  EXPECT_NEAR(a->mean, 1.375, 1e-12);
  EXPECT_NEAR(b->mean, 1.375, 1e-12);
  EXPECT_NEAR(a->stddev(), b->stddev(), 1e-12);
  double var = 0;
  for (float v : vals) var += (v - 1.375) * (v - 1.375);
  EXPECT_NEAR(a->stddev(), std::sqrt(var / 48), 1e-9);
  for (const auto& m : range_methods()) {
    RangeConfig c;
    const Range ra = compute_range(m.name, *a, c), rb = compute_range(m.name, *b, c);
    EXPECT_EQ(ra.lo, rb.lo) << m.name;
    EXPECT_EQ(ra.hi, rb.hi) << m.name;
  }
  // Integer tensors and initializers are not observed.
  ir::Value* ids = g.add_value("ids");
  batched.on_value(*ids, Tensor::from_vector<int64_t>({2}, {1, 2}));
  EXPECT_EQ(batched.find(ids), nullptr);
}

TEST(Observer, ChannelAxisRules) {
  EXPECT_EQ(resolve_channel_axis(-1, 4), 1);
  EXPECT_EQ(resolve_channel_axis(-1, 3), 2);  // [batch, seq, hidden]
  EXPECT_EQ(resolve_channel_axis(-1, 2), 1);
  EXPECT_EQ(resolve_channel_axis(-1, 1), -1);
  EXPECT_EQ(resolve_channel_axis(0, 4), 0);
  EXPECT_EQ(resolve_channel_axis(3, 2), -1);
}

TEST(Observer, MemoryDoesNotGrowWithSamples) {
  ir::Graph g;
  ir::Value* x = g.add_value("x");
  StatsObserver obs;
  std::mt19937_64 rng(1);
  std::normal_distribution<float> d;
  size_t after10 = 0;
  for (int i = 0; i < 200; ++i) {
    std::vector<float> v(1 * 8 * 16 * 16);
    for (auto& e : v) e = d(rng) * (1.0f + i * 0.05f);  // the range keeps growing
    obs.begin_batch(1);
    obs.on_value(*x, Tensor::from_vector<float>({1, 8, 16, 16}, v));
    if (i == 9) after10 = obs.memory_bytes();
  }
  EXPECT_LE(obs.memory_bytes(), after10 + 4096 * 8);  // at most one full histogram more
  EXPECT_LE(obs.memory_bytes(), 40000u);
}

TEST(Ranges, JsonRoundTripAndErrors) {
  std::vector<float> v = gaussian(10000, 11);
  TensorStats s(4096);
  s.name = "conv1_out";
  ObserverOptions o;
  s.observe(Tensor::from_vector<float>({1, 4, 50, 50}, v), o);
  RangesFile f;
  f.model_name = "m.onnx";
  f.model_fingerprint = "fnv1a64:0000000000000001";
  f.method = "percentile";
  f.samples = 1;
  f.tensors.push_back(make_tensor_range(s, compute_range("percentile", s, {})));
  testing::TempDir dir;
  save_ranges(dir.file("r.json"), f);
  RangesFile g = load_ranges(dir.file("r.json"));
  ASSERT_EQ(g.tensors.size(), 1u);
  const TensorRange& t = g.tensors[0];
  EXPECT_EQ(t.name, "conv1_out");
  EXPECT_EQ(g.method, "percentile");
  EXPECT_EQ(g.model_fingerprint, f.model_fingerprint);
  EXPECT_DOUBLE_EQ(t.range_max, f.tensors[0].range_max);
  EXPECT_DOUBLE_EQ(t.min, s.min);
  EXPECT_EQ(t.per_channel_max.size(), 4u);
  EXPECT_EQ(t.channel_axis, 1);
  EXPECT_FLOAT_EQ(t.per_channel_absmax()[2], std::max(std::fabs(s.channel_min[2]), std::fabs(s.channel_max[2])));
  EXPECT_LE(t.hist_counts.size(), 128u);
  uint64_t sum = 0;
  for (auto c : t.hist_counts) sum += c;
  EXPECT_EQ(sum, 10000u);
  EXPECT_NEAR(t.percentiles.at("50"), 0.0, 0.05);
  EXPECT_NE(g.find("conv1_out"), nullptr);

  std::string json = ranges_to_json(f);
  auto err = [&](const std::string& text) -> Error {
    try {
      parse_ranges(text, "x.json");
    } catch (const Error& e) {
      return e;
    }
    return Error(ErrorCode::kInternal, "no error");
  };
  EXPECT_EQ(err("{").code(), ErrorCode::kInvalidInput);
  // Out-of-range numbers where integers belong (fuzz_config: converting 3e83 to int was undefined).
  EXPECT_EQ(err(R"({"format":"qtool-ranges","version":3e83,"tensors":[]})").code(), ErrorCode::kInvalidInput);
  EXPECT_EQ(err(R"({"format":"qtool-ranges","version":1,"config":{"channel_axis":3e83},"tensors":[]})").code(),
            ErrorCode::kInvalidInput);
  EXPECT_EQ(err(R"({"format":"qtool-ranges","version":1,"samples":-5,"tensors":[]})").code(), ErrorCode::kInvalidInput);
  EXPECT_EQ(err(R"({"format":"qtool-ranges","version":99,"tensors":[]})").code(), ErrorCode::kUnsupported);
  Error bad = err(R"({"format":"qtool-ranges","version":1,"tensors":[{"name":"a","min":0,"max":1,"range_min":0}]})");
  EXPECT_EQ(bad.code(), ErrorCode::kInvalidInput);
  EXPECT_NE(std::string(bad.what()).find("tensor 'a'"), std::string::npos) << bad.what();
}

}  // namespace
}  // namespace qtool::calib
