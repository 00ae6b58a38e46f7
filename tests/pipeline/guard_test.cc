// The static path's quality guard (pipeline/guard.h): the sample split, the verdicts on a
// comparison (a NaN output is broken, not fine), and the guard on the bundled digits CNN, whose
// figures must be report::compare_models' on the model it keeps.
#include "qtool/pipeline/guard.h"

#include <gtest/gtest.h>

#include <algorithm>

#include <cmath>

#include <fmt/format.h>

#include "qtool/onnx_io/onnx_io.h"
#include "qtool/pipeline/samples.h"
#include "digits_split.h"
#include "test_util.h"

namespace qtool::pipeline {
namespace {

TEST(GuardSplit, HoldsOutTheLastPartOrSharesWithFewSamples) {
  // 64 samples: max(16, ceil(6.4)) = 16 held out, the first 48 calibrate.
  const GuardSplit s64 = split_for_guard(64, true);
  ASSERT_EQ(s64.calib.size(), 48u);
  ASSERT_EQ(s64.held_out.size(), 16u);
  EXPECT_EQ(s64.calib.back(), 47u);
  EXPECT_EQ(s64.held_out.front(), 48u);
  EXPECT_TRUE(s64.warning.empty());
  // 300 samples: ceil(0.1 · 300) = 30.
  EXPECT_EQ(split_for_guard(300, true).held_out.size(), 30u);
  // 20 < 2 · 16: every sample serves both roles, and the warning says so.
  const GuardSplit s20 = split_for_guard(20, true);
  EXPECT_EQ(s20.calib.size(), 20u);
  EXPECT_EQ(s20.held_out, s20.calib);
  EXPECT_NE(s20.warning.find("only 20 samples"), std::string::npos) << s20.warning;
  // Without the guard nothing is held out.
  const GuardSplit off = split_for_guard(64, false);
  EXPECT_EQ(off.calib.size(), 64u);
  EXPECT_TRUE(off.held_out.empty());
  EXPECT_TRUE(off.warning.empty());
}

/// A comparison of one [1,4] classifier output over one sample.
report::CompareResult one_output(const std::vector<float>& ref, const std::vector<float>& test) {
  report::CompareResult r;
  r.samples = 1;
  r.outputs.resize(1);
  r.outputs[0].name = "logits";
  r.outputs[0].add(Tensor::from_vector<float>({1, 4}, ref), Tensor::from_vector<float>({1, 4}, test));
  return r;
}

TEST(GuardVerdicts, NanInTheQuantizedOutputLooksBroken) {
  // Three exact logits and one NaN: skipping the NaN would measure an exact, agreeing output.
  const report::CompareResult r = one_output({1, 4, 2, 3}, {1, 4, NAN, 3});
  EXPECT_FALSE(meets_floor(r, QualityFloor{}, nullptr));
  EXPECT_TRUE(looks_broken(r));
  EXPECT_EQ(describe_outputs(r), "logits: SQNR -inf dB, top-1 agreement 0.0%");
  GuardResult g;
  g.comparison = r;
  EXPECT_DOUBLE_EQ(g.min_top1_agreement(), 0.0);
}

/// A comparison of `rows` one-row [1,2] classifier samples, the last `misses` of them disagreeing.
report::CompareResult rows_with_misses(int rows, int misses) {
  report::CompareResult r;
  r.samples = rows;
  r.outputs.resize(1);
  r.outputs[0].name = "logits";
  for (int i = 0; i < rows; ++i) {
    const bool miss = i >= rows - misses;
    r.outputs[0].add(Tensor::from_vector<float>({1, 2}, {1.0f, 0.9f}), Tensor::from_vector<float>({1, 2}, {miss ? 0.9f : 1.0f, miss ? 1.0f : 0.9f}));
  }
  return r;
}

TEST(GuardVerdicts, AgreementFloorCountsRowsItCanResolve) {
  // 97%: 20 rows cannot resolve it: one disagreement (95%) passes, two do not.
  EXPECT_TRUE(meets_floor(rows_with_misses(20, 1), QualityFloor{}, nullptr));
  std::string why;
  EXPECT_FALSE(meets_floor(rows_with_misses(20, 2), QualityFloor{}, &why));
  EXPECT_EQ(why, "logits: top-1 agreement 90.0% < 97.0%");
  // 50 rows allow floor(1.5) = 1; 100 rows allow 3; fewer than 16 rows allow none.
  EXPECT_TRUE(meets_floor(rows_with_misses(50, 1), QualityFloor{}, nullptr));
  EXPECT_FALSE(meets_floor(rows_with_misses(50, 2), QualityFloor{}, nullptr));
  EXPECT_TRUE(meets_floor(rows_with_misses(100, 3), QualityFloor{}, nullptr));
  EXPECT_FALSE(meets_floor(rows_with_misses(100, 4), QualityFloor{}, nullptr));
  EXPECT_FALSE(meets_floor(rows_with_misses(8, 1), QualityFloor{}, nullptr));
  // A floor of 100% allows none.
  EXPECT_FALSE(meets_floor(rows_with_misses(20, 1), QualityFloor{20.0, 1.0}, nullptr));
}

/// A [1, 1, 10, 10] map: the reference marks positions 0..19 (0.95, else 0.02); the test model
/// drops `lost` of them to 0.3 and adds `noise` to every value (kept within [0, 1]).
report::CompareResult prob_map(int lost, float noise, bool image_like = false) {
  std::vector<float> ref(100), test(100);
  for (int i = 0; i < 100; ++i) {
    ref[i] = image_like ? 0.2f + 0.6f * static_cast<float>(i) / 99.0f : (i < 20 ? 0.95f : 0.02f);
    test[i] = std::clamp(ref[i] + (i % 2 ? noise : -noise), 0.0f, 1.0f);
    if (i < lost) test[i] = 0.3f;
  }
  report::CompareResult r;
  r.samples = 1;
  r.outputs.resize(1);
  r.outputs[0].name = "map";
  r.outputs[0].add(Tensor::from_vector<float>({1, 1, 10, 10}, ref), Tensor::from_vector<float>({1, 1, 10, 10}, test));
  return r;
}

TEST(GuardVerdicts, ProbabilityMapsAreJudgedByMaskIou) {
  // 2 of 20 marked positions lost: IoU 18/20 = 0.9 exactly; the map's SQNR is far below 20 dB.
  const report::CompareResult r = prob_map(2, 0.05f);
  EXPECT_DOUBLE_EQ(r.outputs[0].mask_iou(), 0.9);
  EXPECT_LT(r.outputs[0].error.sqnr_db(), 20.0);
  EXPECT_TRUE(meets_floor(r, QualityFloor{}, nullptr));  // the masks agree: not held to SQNR
  std::string why;
  EXPECT_FALSE(meets_floor(prob_map(4, 0.05f), QualityFloor{}, &why));  // 16/20 = 0.8
  EXPECT_EQ(why, "map: mask IoU 0.800 < 0.900 (probability map thresholded at 0.5)");
  EXPECT_NE(describe_outputs(r).find("mask IoU 0.900"), std::string::npos);
  // --metric sqnr judges the same map by SQNR (below the floor).
  QualityFloor by_sqnr;
  by_sqnr.metric = OutputMetric::kSqnr;
  EXPECT_FALSE(meets_floor(r, by_sqnr, nullptr));
  // An image-like output in [0, 1] (mostly mid-range values) is no probability map: SQNR.
  const report::CompareResult img = prob_map(0, 0.15f, true);
  EXPECT_TRUE(std::isnan(img.outputs[0].mask_iou()));
  EXPECT_FALSE(meets_floor(img, QualityFloor{}, nullptr));
  EXPECT_EQ(parse_output_metric("iou"), OutputMetric::kIou);
}

TEST(GuardVerdicts, NextTokenLogitsAreJudgedByTheirNllIncrease) {
  // Uniform reference over 32 tokens; the test model doubles one token's weight:
  // KL = ln(33/32) - ln(2)/32, H = ln 32: +0.263%.
  report::CompareResult r;
  r.samples = 1;
  r.outputs.resize(1);
  r.outputs[0].name = "logits";
  r.outputs[0].token_model = true;
  std::vector<float> test(32, 1.0f);
  test[5] = 1.0f + std::log(2.0f);
  r.outputs[0].add(Tensor::from_vector<float>({1, 1, 32}, std::vector<float>(32, 1.0f)),
                   Tensor::from_vector<float>({1, 1, 32}, test));
  const double expected = (std::log(33.0 / 32.0) - std::log(2.0) / 32.0) / std::log(32.0);
  EXPECT_NEAR(r.outputs[0].lm_nll_increase(), expected, 1e-6);
  QualityFloor floor;
  floor.min_sqnr_db = -100.0;  // judged by NLL alone here
  EXPECT_TRUE(meets_floor(r, floor, nullptr));
  floor.max_lm_nll_increase = 0.002;
  std::string why;
  EXPECT_FALSE(meets_floor(r, floor, &why));
  EXPECT_EQ(why, "logits: NLL +0.26% on the model's own next-token predictions > +0.20%");
  // Not a token model (float inputs): no NLL, SQNR only.
  r.outputs[0] = report::OutputComparison{};
  r.outputs[0].add(Tensor::from_vector<float>({1, 1, 32}, std::vector<float>(32, 1.0f)),
                   Tensor::from_vector<float>({1, 1, 32}, test));
  EXPECT_TRUE(std::isnan(r.outputs[0].lm_nll_increase()));
}

TEST(GuardVerdicts, RecurrentStateIsDetectedAndAimedHigher) {
  // y = x + s: two inputs, and the output has the state input's shape.
  ir::Model m;
  m.set_opset("", 17);
  ir::Graph& g = *m.graph;
  ir::Value* y = g.add_node("Add", {g.add_input("x"), g.add_input("s")}, {"y"}, "add")->output(0);
  g.add_output(y);
  const Tensor x = Tensor::from_vector<float>({1, 4}, {1, 2, 3, 4});
  bool given = false;
  auto once = [&](report::CompareSample& sample) {
    if (given) return false;
    sample.inputs = {{"x", x}, {"s", x}};
    return given = true;
  };
  report::CompareOptions co;
  co.per_layer = false;
  EXPECT_TRUE(report::compare_models(m, m, once, co).outputs[0].recurrent_state);
  // One state at 30 dB: it meets the floor, not a 15 dB target above it.
  report::CompareResult r;
  r.samples = 1;
  r.outputs.resize(1);
  r.outputs[0].name = "state";
  r.outputs[0].recurrent_state = true;
  r.outputs[0].add(Tensor::from_vector<float>({1, 1}, {1000.0f}), Tensor::from_vector<float>({1, 1}, {1031.6228f}));
  QualityFloor floor;
  EXPECT_TRUE(meets_floor(r, floor, nullptr));
  floor.state_extra_db = GuardOptions{}.state_target_extra_db;
  std::string why;
  EXPECT_FALSE(meets_floor(r, floor, &why));
  EXPECT_EQ(why, "state: SQNR 30.0 dB < 35.0 dB (a recurrent state, fed back at every step)");
}

TEST(GuardVerdicts, ThresholdsAndNotMeasured) {
  // sum r² = 30, sum e² = 0.01 -> 34.8 dB, same argmax: fine.
  const report::CompareResult good = one_output({1, 4, 2, 3}, {1, 4.1f, 2, 3});
  EXPECT_TRUE(meets_floor(good, QualityFloor{}, nullptr));
  EXPECT_FALSE(looks_broken(good));
  EXPECT_EQ(describe_outputs(good), "logits: SQNR 34.8 dB, top-1 agreement 100.0%");
  // 10·log10(30 / 1) = 14.8 dB but the same argmax: a classifier is judged by its agreement.
  const report::CompareResult poor = one_output({1, 4, 2, 3}, {1, 3, 2, 3});
  EXPECT_TRUE(meets_floor(poor, QualityFloor{}, nullptr));
  EXPECT_FALSE(looks_broken(poor));
  // Agreeing rows do not hide scores distorted beyond use: 10·log10(30 / 13) = 3.6 dB.
  std::string distorted;
  EXPECT_FALSE(meets_floor(one_output({1, 4, 2, 3}, {3, 5, 0, 1}), QualityFloor{}, &distorted));
  EXPECT_EQ(distorted, "logits: scores' SQNR 3.6 dB < 10.0 dB (top-1 agreement 100.0%)");
  // --metric sqnr judges the classifier-shaped output by its SQNR: 14.8 < 20 dB.
  QualityFloor by_sqnr;
  by_sqnr.metric = OutputMetric::kSqnr;
  EXPECT_FALSE(meets_floor(poor, by_sqnr, nullptr));
  EXPECT_EQ(parse_output_metric("sqnr"), OutputMetric::kSqnr);
  EXPECT_THROW(parse_output_metric("mAP"), Error);
  // The same values as a flat output (not a classifier): below a 20 dB floor, above a 10 dB one.
  report::CompareResult map;
  map.samples = 1;
  map.outputs.resize(1);
  map.outputs[0].name = "map";
  map.outputs[0].add(Tensor::from_vector<float>({4}, {1, 4, 2, 3}), Tensor::from_vector<float>({4}, {1, 3, 2, 3}));
  std::string why;
  EXPECT_FALSE(meets_floor(map, QualityFloor{}, &why));
  EXPECT_EQ(why, "map: SQNR 14.8 dB < 20.0 dB");
  EXPECT_TRUE(meets_floor(map, QualityFloor{10.0, 0.97}, nullptr));
  // Not a classifier: no agreement, and "not measured" is NaN.
  report::CompareResult flat;
  flat.samples = 1;
  flat.outputs.resize(1);
  flat.outputs[0].name = "y";
  flat.outputs[0].add(Tensor::from_vector<float>({4}, {1, 2, 3, 4}), Tensor::from_vector<float>({4}, {1, 2, 3, 4}));
  GuardResult g;
  g.comparison = flat;
  EXPECT_TRUE(std::isnan(g.min_top1_agreement()));
  EXPECT_EQ(describe_outputs(flat), "y: SQNR inf dB");
}

using Digits = testing_digits::DigitsSplit;

/// The guard's figures are report::compare_models' on the model it keeps.
void expect_same_comparison(const report::CompareResult& guard, const report::CompareResult& direct) {
  ASSERT_EQ(guard.samples, direct.samples);
  ASSERT_EQ(guard.outputs.size(), direct.outputs.size());
  for (size_t i = 0; i < guard.outputs.size(); ++i) {
    EXPECT_DOUBLE_EQ(guard.outputs[i].error.sqnr_db(), direct.outputs[i].error.sqnr_db());
    EXPECT_DOUBLE_EQ(guard.outputs[i].classes.top1_agreement(), direct.outputs[i].classes.top1_agreement());
  }
}

report::CompareResult compare_directly(const ir::Model& reference, const ir::Model& quantized,
                                       data::SampleSource& held_out) {
  size_t next = 0;
  report::CompareOptions options;
  options.per_layer = false;
  return report::compare_models(reference, quantized, [&](report::CompareSample& s) {
    if (next >= held_out.size()) return false;
    s.inputs = held_out.load(next++);
    return true;
  }, options);
}

TEST(Guard, GoodModelPassesUntouched) {
  Digits d;
  quant::StaticQuantConfig cfg;
  const quant::CalibratedModel c = quant::calibrate_static(d.reference, *d.calib, cfg);
  quant::StaticEmission e = quant::emit_static(c, {}, cfg);
  const GuardResult g = run_guard(d.reference, c, cfg, *d.calib, *d.held_out, e);
  EXPECT_TRUE(g.actions.empty());
  EXPECT_TRUE(g.choices.empty());
  EXPECT_FALSE(g.looks_broken);
  EXPECT_EQ(g.comparison.samples, 16);
  ASSERT_EQ(g.comparison.outputs.size(), 1u);
  EXPECT_GT(g.comparison.outputs[0].error.sqnr_db(), 30.0);
  EXPECT_GE(g.min_top1_agreement(), 0.9);
  expect_same_comparison(g.comparison, compare_directly(d.reference, e.model, *d.held_out));
}

TEST(Guard, ClippedRangesAreRaisedUntilTheFloorHolds) {
  Digits d;
  quant::StaticQuantConfig cfg;
  cfg.method = "percentile";
  cfg.percentile = 50.0;  // a median range clips most activations: ruins the model
  const quant::CalibratedModel c = quant::calibrate_static(d.reference, *d.calib, cfg);
  quant::StaticEmission e = quant::emit_static(c, {}, cfg);
  const report::CompareResult before = compare_directly(d.reference, e.model, *d.held_out);
  ASSERT_FALSE(meets_floor(before, QualityFloor{}, nullptr));
  const GuardResult g = run_guard(d.reference, c, cfg, *d.calib, *d.held_out, e);
  ASSERT_GE(g.actions.size(), 2u);
  EXPECT_EQ(g.actions[0], "guard: below the quality floor at 8 bits (logits: scores' SQNR 2.6 dB < 10.0 dB (top-1 "
                          "agreement 100.0%))");
  EXPECT_EQ(g.actions[1].rfind("guard probe: 6 quantized tensors (6 groups) scored alone (24 runs on up to 4 held-out samples", 0), 0u)
      << g.actions[1];
  // The clipped tensors take their observed ranges (no 16 bits or float needed), and the floor holds.
  EXPECT_FALSE(g.choices.observed.empty());
  EXPECT_TRUE(g.choices.keep_float.empty());
  std::string why;
  EXPECT_TRUE(meets_floor(g.comparison, QualityFloor{}, &why)) << why;
  EXPECT_GT(g.comparison.outputs[0].error.sqnr_db(), before.outputs[0].error.sqnr_db());
  expect_same_comparison(g.comparison, compare_directly(d.reference, e.model, *d.held_out));
  EXPECT_FALSE(g.looks_broken);
  EXPECT_TRUE(g.warnings.empty());
}

TEST(Guard, APlanRunOnlyMeasures) {
  Digits d;
  quant::StaticQuantConfig cfg;
  cfg.method = "percentile";
  cfg.percentile = 50.0;
  const quant::CalibratedModel c = quant::calibrate_static(d.reference, *d.calib, cfg);
  quant::StaticEmission e = quant::emit_static(c, {}, cfg);
  GuardOptions options;
  options.search = false;
  const GuardResult g = run_guard(d.reference, c, cfg, *d.calib, *d.held_out, e, options);
  EXPECT_TRUE(g.actions.empty());
  EXPECT_TRUE(g.choices.empty());
  EXPECT_FALSE(meets_floor(g.comparison, QualityFloor{}, nullptr));
}

}  // namespace
}  // namespace qtool::pipeline

namespace qtool::pipeline {
namespace {

TEST(ReferenceCache, SameComparisonFromCachedFp32OutputsAndBounded) {
  Digits d;
  quant::StaticQuantConfig cfg;
  const quant::CalibratedModel c = quant::calibrate_static(d.reference, *d.calib, cfg);
  const quant::StaticEmission e = quant::emit_static(c, {}, cfg);
  auto compare = [&](report::ReferenceCache* cache) {
    size_t next = 0;
    report::CompareOptions co;
    co.per_layer = false;
    co.reference_cache = cache;
    return report::compare_models(d.reference, e.model, [&](report::CompareSample& s) {
      if (next >= d.held_out->size()) return false;
      s.inputs = d.held_out->load(next++);
      return true;
    }, co);
  };
  report::ReferenceCache cache;
  const report::CompareResult plain = compare(nullptr), filled = compare(&cache), reused = compare(&cache);
  EXPECT_EQ(cache.outputs.size(), 16u);
  EXPECT_EQ(cache.bytes, 16u * 10 * sizeof(float));  // 16 samples of [1, 10] logits
  expect_same_comparison(filled, plain);
  expect_same_comparison(reused, plain);
  // The FP32 outputs really come from the cache: altered there, the comparison changes.
  report::ReferenceCache altered = cache;
  for (auto& outs : altered.outputs) outs[0] = Tensor::from_vector<float>({1, 10}, std::vector<float>(10, 1.0f));
  EXPECT_NE(compare(&altered).outputs[0].error.sqnr_db(), plain.outputs[0].error.sqnr_db());
  // Over its bound the cache empties itself and stays off; the comparison is unchanged.
  report::ReferenceCache small;
  small.max_bytes = 100;
  expect_same_comparison(compare(&small), plain);
  EXPECT_TRUE(small.overflow);
  EXPECT_TRUE(small.outputs.empty());
}

}  // namespace
}  // namespace qtool::pipeline
