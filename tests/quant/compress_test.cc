// Palettes (weighted 1-D k-means) and pruning masks on plain matrices: hand-computed clusterings,
// exact pruning patterns, and SparseGPT's error compensation against magnitude pruning.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <map>
#include <set>

#include "../../src/quant/lowbit_internal.h"  // emit_codes, emit_sparse_levels
#include "qtool/core/error.h"
#include "qtool/onnx_io/onnx_io.h"
#include "qtool/runtime/executor.h"
#include "graph_builders.h"
#include "test_util.h"
#include "qtool/quant/gptq.h"
#include "qtool/quant/palette.h"
#include "qtool/quant/sparsity.h"
#include "qtool/quant/weight_quant.h"

namespace qtool::quant {
namespace {

std::vector<float> gaussian(int64_t n, uint32_t seed, float sigma = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, sigma);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = d(rng);
  return v;
}

TEST(KMeans, TwoObviousClusters) {
  const std::vector<float> x = {1, 2, 3, 10, 11, 12};
  const KMeansResult r = kmeans_1d(x, {}, 2);
  ASSERT_EQ(r.centroids.size(), 2u);
  EXPECT_FLOAT_EQ(r.centroids[0], 2.0f);
  EXPECT_FLOAT_EQ(r.centroids[1], 11.0f);
  EXPECT_DOUBLE_EQ(r.sse, 4.0);  // (1 + 0 + 1) twice
}

TEST(KMeans, WeightsMoveTheCentroid) {
  // Clusters {0, 1} and {10}: the weighted mean of the first is (0·1 + 1·3) / 4 = 0.75,
  // its error 1·0.75² + 3·0.25² = 0.75.
  const KMeansResult r = kmeans_1d(std::vector<float>{0, 1, 10}, std::vector<float>{1, 3, 1}, 2);
  EXPECT_FLOAT_EQ(r.centroids[0], 0.75f);
  EXPECT_FLOAT_EQ(r.centroids[1], 10.0f);
  EXPECT_NEAR(r.sse, 0.75, 1e-12);
  // Unweighted, the same split has its centroid at 0.5.
  EXPECT_FLOAT_EQ(kmeans_1d(std::vector<float>{0, 1, 10}, {}, 2).centroids[0], 0.5f);
}

TEST(KMeans, EscapesABadStartThatLloydAloneKeeps) {
  // Three tight groups of unequal size: the quantile start puts two centroids in the big group,
  // k-means++ finds the three groups; the better of the two is kept.
  std::vector<float> x;
  for (int i = 0; i < 50; ++i) x.push_back(0.0f + 0.001f * i);
  for (int i = 0; i < 3; ++i) x.push_back(5.0f + 0.001f * i);
  for (int i = 0; i < 3; ++i) x.push_back(9.0f + 0.001f * i);
  const KMeansResult r = kmeans_1d(x, {}, 3);
  EXPECT_NEAR(r.centroids[0], 0.0245f, 1e-4);
  EXPECT_NEAR(r.centroids[1], 5.001f, 1e-4);
  EXPECT_NEAR(r.centroids[2], 9.001f, 1e-4);
  EXPECT_LT(r.sse, 0.011);  // the big group's own spread: 50 values 0.001 apart, Σ (i − 24.5)² · 1e-6
}

TEST(KMeans, ZeroEntryIsFixedAndFirst) {
  const KMeansResult r = kmeans_1d(std::vector<float>{-5, -4, 4, 5, 0.1f}, {}, 3, /*zero_entry=*/true);
  ASSERT_EQ(r.centroids.size(), 3u);
  EXPECT_EQ(r.centroids[0], 0.0f);
  EXPECT_FLOAT_EQ(r.centroids[1], -4.5f);
  EXPECT_FLOAT_EQ(r.centroids[2], 4.5f);
  EXPECT_NEAR(r.sse, 0.25 * 4 + 0.01, 1e-6);
}

TEST(KMeans, FewerValuesThanCentroidsArePaddedWithRepeats) {
  const KMeansResult r = kmeans_1d(std::vector<float>{1, 1, 2}, {}, 4);
  EXPECT_EQ(r.centroids, (std::vector<float>{1, 2, 2, 2}));
  EXPECT_EQ(r.sse, 0.0);
  const auto p = Palette::make(r.centroids);
  EXPECT_EQ(p->nearest(2.0f), 1);  // the first index of a repeated value
}

TEST(KMeans, DeterministicAndNoWorseThanUniformLevels) {
  const auto x = gaussian(5000, 7);
  const KMeansResult a = kmeans_1d(x, {}, 16), b = kmeans_1d(x, {}, 16);
  EXPECT_EQ(a.centroids, b.centroids);
  // A uniform 16-level grid over [-amax, amax] (RTN without clipping) as the baseline.
  float amax = 0;
  for (float v : x) amax = std::max(amax, std::fabs(v));
  const float s = amax / 7.5f;
  double uniform = 0;
  for (float v : x) {
    const float q = (std::clamp(std::floor(v / s), -8.0f, 7.0f) + 0.5f) * s;
    uniform += (v - q) * (v - q);
  }
  EXPECT_LT(a.sse, 0.6 * uniform);
}

TEST(Palette, NearestBreaksTiesDownward) {
  const auto p = Palette::make({0.0f, 1.0f, -1.0f});
  EXPECT_EQ(p->nearest(0.5f), 0);
  EXPECT_EQ(p->nearest(-0.5f), 2);
  EXPECT_EQ(p->nearest(-7.0f), 2);
  EXPECT_EQ(p->nearest(7.0f), 1);
  EXPECT_EQ(p->nearest(0.2f), 0);
}

TEST(Palette, GroupsOfRowsShareOneTableAndPrunedWeightsIndexZero) {
  const int64_t rows = 8, cols = 32;
  auto w = gaussian(rows * cols, 3);
  for (int64_t c = 0; c < cols; ++c) w[5 * cols + c] += 100.0f;  // row 5 far from the others
  std::vector<uint8_t> pruned(w.size(), 0);
  for (size_t i = 0; i < w.size(); i += 3) pruned[i] = 1;
  PaletteSpec ps;
  ps.bits = 3;
  ps.group = 4;
  ps.zero_entry = true;
  const QuantizedMatrix q = quantize_palette(w, rows, cols, ps, {}, pruned, 2);
  ASSERT_EQ(q.grids.size(), 8u);
  // Two tables of four rows each, the rows grouped by spread: row 5 with the three widest others.
  std::map<const Palette*, std::vector<int64_t>> members;
  for (int64_t r = 0; r < rows; ++r) {
    members[q.grids[r].palette.get()].push_back(r);
    EXPECT_EQ(q.grids[r].palette->values[0], 0.0f);
  }
  ASSERT_EQ(members.size(), 2u);
  for (const auto& [p, rs] : members) {
    EXPECT_EQ(rs.size(), 4u);
    const bool has5 = std::find(rs.begin(), rs.end(), 5) != rs.end();
    if (has5) {
      EXPECT_GT(p->sorted.back(), 90.0f);  // reaches row 5's values
    } else {
      EXPECT_LT(p->sorted.back(), 10.0f);  // the other group's table does not
    }
  }
  for (size_t i = 0; i < w.size(); ++i) {
    ASSERT_GE(q.levels[i], 0);
    ASSERT_LT(q.levels[i], 8);
    if (pruned[i]) {
      EXPECT_EQ(q.levels[i], 0) << i;
    }
  }
  // Each kept weight sits on its nearest table value.
  const auto d = q.dequantize();
  for (size_t i = 0; i < w.size(); ++i) {
    if (pruned[i]) continue;
    const auto& table = q.grids[i / cols].palette->values;
    for (float v : table) EXPECT_LE(std::fabs(w[i] - d[i]), std::fabs(w[i] - v) + 1e-6f);
  }
}

TEST(Palette, ThreadsDoNotChangeTheResult) {
  const auto w = gaussian(64 * 48, 5);
  PaletteSpec ps;
  ps.bits = 4;
  ps.group = 8;
  const QuantizedMatrix a = quantize_palette(w, 64, 48, ps, {}, {}, 1), b = quantize_palette(w, 64, 48, ps, {}, {}, 3);
  EXPECT_EQ(a.levels, b.levels);
  for (size_t r = 0; r < a.grids.size(); ++r) EXPECT_EQ(a.grids[r].palette->values, b.grids[r].palette->values);
}

TEST(Sparsity, ParsesFractionsPercentAndNm) {
  EXPECT_DOUBLE_EQ(SparsitySpec::parse("0.5").fraction, 0.5);
  EXPECT_DOUBLE_EQ(SparsitySpec::parse("75%").fraction, 0.75);
  const SparsitySpec nm = SparsitySpec::parse("2:4");
  EXPECT_EQ(nm.n, 2);
  EXPECT_EQ(nm.m, 4);
  EXPECT_DOUBLE_EQ(nm.target(), 0.5);
  EXPECT_EQ(nm.spelled(), "2:4");
  EXPECT_FALSE(SparsitySpec::parse("").active());
  for (const char* bad : {"1.0", "-0.1", "4:4", "0:4", "2:", "x", "50%%", "2:4:8"})
    EXPECT_THROW(SparsitySpec::parse(bad), Error) << bad;
}

TEST(Sparsity, UnstructuredMaskPrunesExactlyTheLowestScores) {
  const std::vector<float> score = {5, 1, 4, 2, 30, 60, 5, 70};
  // The four lowest of the matrix (the 5s tie: the earlier one goes first).
  const auto m = prune_mask(score, 2, 4, SparsitySpec::parse("0.5"), /*per_row=*/false);
  EXPECT_EQ(m, (std::vector<uint8_t>{1, 1, 1, 1, 0, 0, 0, 0}));
  // Per row: two of each row of four, whatever the other row holds.
  const auto r = prune_mask(score, 2, 4, SparsitySpec::parse("0.5"), /*per_row=*/true);
  EXPECT_EQ(r, (std::vector<uint8_t>{0, 1, 0, 1, 1, 0, 1, 0}));
}

TEST(Sparsity, TwoFourKeepsAtMostTwoOfEveryFour) {
  const int64_t rows = 16, cols = 42;  // a short last run of 2
  const auto w = gaussian(rows * cols, 9);
  const SparsitySpec spec = SparsitySpec::parse("2:4");
  const auto m = prune_mask(prune_scores(w, rows, cols, SparsityMethod::kMagnitude), rows, cols, spec, false);
  EXPECT_TRUE(mask_follows_pattern(m, rows, cols, spec));
  int64_t pruned = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c0 = 0; c0 < cols; c0 += 4) {
      int kept = 0;
      for (int64_t c = c0; c < std::min<int64_t>(cols, c0 + 4); ++c) {
        kept += !m[r * cols + c];
        pruned += m[r * cols + c];
        // A kept weight is at least as large as every pruned one of its run.
        for (int64_t d = c0; d < std::min<int64_t>(cols, c0 + 4); ++d)
          if (!m[r * cols + c] && m[r * cols + d]) {
            EXPECT_GE(std::fabs(w[r * cols + c]), std::fabs(w[r * cols + d]));
          }
      }
      EXPECT_LE(kept, 2);
    }
  EXPECT_EQ(pruned, rows * (10 * 2));  // the last run of 2 keeps both
  std::vector<uint8_t> bad(m.size(), 0);
  EXPECT_FALSE(mask_follows_pattern(bad, rows, cols, spec));
}

TEST(Sparsity, WandaWeighsByInputNorm) {
  // Row [1, 2] with input norms [10, 1]: Wanda keeps the first (10 > 2), magnitude the second.
  const std::vector<float> w = {1, 2};
  const std::vector<float> norm = {10, 1};
  const SparsitySpec half = SparsitySpec::parse("0.5");
  EXPECT_EQ(prune_mask(prune_scores(w, 1, 2, SparsityMethod::kWanda, norm), 1, 2, half, true),
            (std::vector<uint8_t>{0, 1}));
  EXPECT_EQ(prune_mask(prune_scores(w, 1, 2, SparsityMethod::kMagnitude, norm), 1, 2, half, true),
            (std::vector<uint8_t>{1, 0}));
}

/// H = XᵀX / n for correlated inputs X [n, k].
std::vector<double> correlated_hessian(int64_t k, uint32_t seed) {
  const int64_t n = 4 * k;
  const auto z = gaussian(n * k, seed);
  std::vector<double> h(static_cast<size_t>(k * k), 0.0);
  std::vector<float> x(static_cast<size_t>(k));
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t c = 0; c < k; ++c) x[c] = z[i * k + c] + (c > 0 ? 0.8f * x[c - 1] : 0.0f);
    for (int64_t a = 0; a < k; ++a)
      for (int64_t b = 0; b < k; ++b) h[a * k + b] += static_cast<double>(x[a]) * x[b] / n;
  }
  return h;
}

TEST(SparseGpt, RoughlyHalvesTheOutputErrorOfMagnitudePruning) {
  const int64_t rows = 24, cols = 64;
  const auto w = gaussian(rows * cols, 11);
  const auto h = correlated_hessian(cols, 12);
  QuantSpec spec;  // int8 per channel: the pruning error dominates
  spec.bits = 8;
  spec.block_size = 0;
  for (const char* pattern : {"0.5", "2:4"}) {
    SCOPED_TRACE(pattern);
    const SparsitySpec sp = SparsitySpec::parse(pattern);
    GptqPruning p;
    p.adaptive = sp;
    std::vector<uint8_t> mask;
    p.mask_out = &mask;
    const QuantizedMatrix q = quantize_gptq_pruned(w, rows, cols, h, spec, {}, p);
    ASSERT_EQ(mask.size(), w.size());
    EXPECT_TRUE(mask_follows_pattern(mask, rows, cols, sp));
    const auto d = q.dequantize();
    int64_t zeros = 0;
    for (size_t i = 0; i < d.size(); ++i) {
      if (mask[i]) {
        EXPECT_EQ(d[i], 0.0f) << i;
      }
      zeros += mask[i];
    }
    EXPECT_NEAR(static_cast<double>(zeros) / static_cast<double>(d.size()), 0.5, 0.01);
    // Magnitude pruning of the float weights, no compensation.
    const auto mm = prune_mask(prune_scores(w, rows, cols, SparsityMethod::kMagnitude), rows, cols, sp, false);
    std::vector<float> wm = w;
    for (size_t i = 0; i < wm.size(); ++i)
      if (mm[i]) wm[i] = 0.0f;
    const double e_sgpt = hessian_error(w, d, rows, cols, h), e_mag = hessian_error(w, wm, rows, cols, h);
    EXPECT_LT(e_sgpt, (sp.structured() ? 0.5 : 0.6) * e_mag) << e_sgpt << " vs " << e_mag;
    // A mask fixed before the sweep (magnitude) is kept exactly, and compensation still helps.
    GptqPruning fixed;
    fixed.pruned = mm;
    const auto df = quantize_gptq_pruned(w, rows, cols, h, spec, {}, fixed).dequantize();
    for (size_t i = 0; i < df.size(); ++i)
      if (mm[i]) {
        EXPECT_EQ(df[i], 0.0f);
      }
    EXPECT_LT(hessian_error(w, df, rows, cols, h), e_mag);
  }
}

TEST(SparseGpt, PalettesKeepTheirTablesThroughTheSweep) {
  const int64_t rows = 16, cols = 32;
  const auto w = gaussian(rows * cols, 21);
  const auto h = correlated_hessian(cols, 22);
  PaletteSpec ps;
  ps.bits = 3;
  const QuantizedMatrix pal = quantize_palette(w, rows, cols, ps);
  GptqPruning p;
  p.row_grids = pal.grids;
  QuantSpec spec;
  spec.scheme = WeightScheme::kPalette;
  spec.bits = 3;
  spec.block_size = 0;
  const QuantizedMatrix q = quantize_gptq_pruned(w, rows, cols, h, spec, {}, p);
  EXPECT_EQ(q.grids[0].palette, pal.grids[0].palette);
  EXPECT_LT(hessian_error(w, q.dequantize(), rows, cols, h), hessian_error(w, pal.dequantize(), rows, cols, h));
}

/// A graph computing emit_codes (or emit_sparse_levels) of `codes` as its second output.
ir::Model codes_model(std::span<const int32_t> codes, int bits, bool sparse, int64_t* bytes) {
  ir::Model m;
  m.ir_version = 9;
  m.set_opset("", 21);
  ir::Graph& g = *m.graph;
  ir::Value* x = g.add_input("x", qtool::testing::float_type({1}));
  ir::Node* id = g.add_node("Identity", {x}, {"y"}, "identity");
  g.add_output(id->output(0));
  const int64_t n = static_cast<int64_t>(codes.size());
  ir::Value* v = sparse ? detail::emit_sparse_levels(g, id, codes, 0, DataType::kInt32, bits, {n}, bytes)
                        : detail::emit_codes(g, id, codes, bits, {n}, bytes);
  g.add_output(v);
  g.topo_sort();
  return m;
}

// The stored index forms, bit for bit: every width 1-8 (uint8, uint4, uint4 + bit planes, bit
// planes) and the sparse form decode to exactly the codes in qtool's executor and in ONNX Runtime,
// from the number of bytes the size accounting promises.
TEST(CompactCodes, EveryWidthDecodesBitExactFromTheCountedBytes) {
  std::mt19937 rng(3);
  const int64_t n = 37;  // not a multiple of 8 (a partial last byte) nor of 2 (a half uint4 byte)
  for (int bits = 1; bits <= 8; ++bits)
    for (bool sparse : {false, true}) {
      SCOPED_TRACE(::testing::Message() << bits << " bits" << (sparse ? " sparse" : ""));
      std::vector<int32_t> codes(n);
      for (auto& c : codes) c = static_cast<int32_t>(rng() % (1u << bits));
      if (sparse)
        for (int64_t i = 0; i < n; i += 2) codes[i] = 0;
      int64_t bytes = 0;
      const ir::Model m = codes_model(codes, bits, sparse, &bytes);
      const int64_t kept = std::count_if(codes.begin(), codes.end(), [](int32_t c) { return c != 0; });
      EXPECT_EQ(bytes, sparse ? detail::sparse_storage_bytes(n, kept, bits) : detail::code_storage_bytes(n, bits));
      EXPECT_EQ(detail::code_storage_bytes(n, bits),
                bits == 8 ? n : bits >= 4 ? (n + 1) / 2 + (bits - 4) * 5 : bits * 5);  // 5 bytes per bit plane
      const std::map<std::string, Tensor> in = {{"x", Tensor::from_vector<float>({1}, {1.0f})}};
      runtime::Executor ex(m);
      const Tensor got = ex.run(in).at(1);
      ASSERT_EQ(got.dtype(), DataType::kInt32);
      EXPECT_EQ(std::vector<int32_t>(got.data<int32_t>(), got.data<int32_t>() + n), codes);
      if (qtool::testing::ort_available()) {
        qtool::testing::TempDir dir;
        onnx_io::save_model(m, dir.file("codes.onnx"));
        const auto ort = qtool::testing::ort_run(dir.file("codes.onnx"), in);
        ASSERT_EQ(ort.size(), 2u);
        const Tensor& o = ort.rbegin()->first == "y" ? ort.begin()->second : ort.rbegin()->second;
        EXPECT_EQ(std::vector<int32_t>(o.data<int32_t>(), o.data<int32_t>() + n), codes);
      }
    }
}

}  // namespace
}  // namespace qtool::quant
