// The static path's quality guard (pipeline/guard.h): the sample split, the verdicts on a
// comparison (a NaN output is broken, not fine), and the guard on the bundled digits CNN, whose
// figures must be report::compare_models' on the model it keeps.
#include "qtool/pipeline/guard.h"

#include <gtest/gtest.h>

#include <cmath>

#include <fmt/format.h>

#include "qtool/onnx_io/onnx_io.h"
#include "qtool/pipeline/samples.h"
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
  EXPECT_TRUE(looks_poor(r));
  EXPECT_TRUE(looks_broken(r));
  EXPECT_EQ(describe_outputs(r), "logits: SQNR -inf dB, top-1 agreement 0.0%");
  GuardResult g;
  g.comparison = r;
  EXPECT_DOUBLE_EQ(g.min_top1_agreement(), 0.0);
}

TEST(GuardVerdicts, ThresholdsAndNotMeasured) {
  // sum r² = 30, sum e² = 0.01 -> 34.8 dB, same argmax: fine.
  const report::CompareResult good = one_output({1, 4, 2, 3}, {1, 4.1f, 2, 3});
  EXPECT_FALSE(looks_poor(good));
  EXPECT_FALSE(looks_broken(good));
  EXPECT_EQ(describe_outputs(good), "logits: SQNR 34.8 dB, top-1 agreement 100.0%");
  // 10·log10(30 / 1) = 14.8 dB: poor (< 15) but not broken (>= 5).
  const report::CompareResult poor = one_output({1, 4, 2, 3}, {1, 3, 2, 3});
  EXPECT_TRUE(looks_poor(poor));
  EXPECT_FALSE(looks_broken(poor));
  GuardOptions lenient;
  lenient.min_sqnr_db = 10.0;
  EXPECT_FALSE(looks_poor(poor, lenient));
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

struct Digits {
  ir::Model reference = onnx_io::load_model(testing::source_path("calibration_samples/digits/digits_cnn.onnx"));
  std::shared_ptr<data::SelectedSource> samples;
  std::unique_ptr<data::SelectedSource> calib, held_out;

  Digits() {
    quant::prepare_model(reference, 13);
    SampleSpec spec;
    spec.path = testing::source_path("calibration_samples/digits");
    spec.samples = 64;
    samples = open_samples(spec, reference, "--calib");
    GuardSplit split = split_for_guard(samples->size(), true);
    calib = std::make_unique<data::SelectedSource>(samples, split.calib);
    held_out = std::make_unique<data::SelectedSource>(samples, split.held_out);
  }
};

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
  EXPECT_TRUE(g.kept_float.empty());
  EXPECT_FALSE(g.looks_broken);
  EXPECT_EQ(g.comparison.samples, 16);
  ASSERT_EQ(g.comparison.outputs.size(), 1u);
  EXPECT_GT(g.comparison.outputs[0].error.sqnr_db(), 30.0);
  EXPECT_GE(g.min_top1_agreement(), 0.9);
  expect_same_comparison(g.comparison, compare_directly(d.reference, e.model, *d.held_out));
}

TEST(Guard, RuinedRangesRunTheProbeAndWarn) {
  Digits d;
  quant::StaticQuantConfig cfg;
  cfg.method = "percentile";
  cfg.percentile = 50.0;  // a median range clips most activations: ruins the model
  const quant::CalibratedModel c = quant::calibrate_static(d.reference, *d.calib, cfg);
  quant::StaticEmission e = quant::emit_static(c, {}, cfg);
  const report::CompareResult before = compare_directly(d.reference, e.model, *d.held_out);
  ASSERT_TRUE(looks_poor(before));
  const size_t activations = e.qdq.activation_params.size();
  const GuardResult g = run_guard(d.reference, c, cfg, *d.calib, *d.held_out, e);
  ASSERT_FALSE(g.actions.empty());
  EXPECT_EQ(g.actions.front().rfind("kept '", 0), 0u) << g.actions.front();
  // Whatever it kept, the model it kept is no worse than the fully quantized one (else it keeps that).
  const double sqnr_before = before.outputs[0].error.sqnr_db();
  EXPECT_GE(g.comparison.outputs[0].error.sqnr_db(), sqnr_before);
  if (g.kept_float.empty()) {
    EXPECT_EQ(g.actions.back(), "no improvement: kept the fully quantized model");
    EXPECT_EQ(e.qdq.activation_params.size(), activations);
  } else {
    EXPECT_NE(g.actions.back().find(fmt::format("after keeping {} tensor(s) in float", g.kept_float.size())),
              std::string::npos) << g.actions.back();
    EXPECT_LT(e.qdq.activation_params.size(), activations);
  }
  expect_same_comparison(g.comparison, compare_directly(d.reference, e.model, *d.held_out));
  EXPECT_EQ(g.looks_broken, looks_broken(g.comparison));
  EXPECT_EQ(g.looks_broken, !g.warnings.empty());
}

}  // namespace
}  // namespace qtool::pipeline
