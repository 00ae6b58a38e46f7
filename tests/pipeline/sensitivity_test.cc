// Per-layer sensitivity by simulation (pipeline/sensitivity.h) on the bundled digits CNN: the
// simulated all-W8A8 model must measure what the emitted Q/DQ model gives when run as written, and
// each candidate must order as precision does.
#include "qtool/pipeline/sensitivity.h"

#include <gtest/gtest.h>

#include <cmath>

#include "qtool/onnx_io/onnx_io.h"
#include "qtool/pipeline/guard.h"
#include "qtool/quant/static_quant.h"
#include "qtool/report/compare.h"
#include "digits_split.h"
#include "test_util.h"

namespace qtool::pipeline {
namespace {

struct Emitted : testing_digits::DigitsSplit {
  quant::StaticQuantConfig cfg;
  quant::CalibratedModel calibrated;
  quant::StaticEmission emission;

  Emitted() {
    calibrated = quant::calibrate_static(reference, *calib, cfg);
    emission = quant::emit_static(calibrated, {}, cfg);
  }
  EmissionView view() const {
    return {&calibrated.float_model, &emission.model, &emission.qdq, DataType::kUint8, false};
  }
};

TEST(Sensitivity, SimulatedWholeModelMatchesTheEmittedModelRunAsWritten) {
  Emitted e;
  SensitivityOptions o;
  o.samples = 16;
  const SensitivityResult r = measure_layer_sensitivity(e.view(), *e.held_out, o);
  report::CompareOptions co;
  co.per_layer = false;
  co.fuse_qdq = false;  // the simulation dequantizes as the Q/DQ graph does, without integer requantization
  size_t next = 0;
  const report::CompareResult direct = report::compare_models(e.reference, e.emission.model, [&](report::CompareSample& s) {
    if (next >= e.held_out->size()) return false;
    s.inputs = e.held_out->load(next++);
    return true;
  }, co);
  ASSERT_EQ(direct.outputs.size(), 1u);
  EXPECT_NEAR(r.whole_model.sqnr_db, direct.outputs[0].error.sqnr_db(), 0.5);
  EXPECT_EQ(r.samples, 16u);
  EXPECT_EQ(r.outputs, std::vector<std::string>{"logits"});
}

TEST(Sensitivity, CandidatesOrderAsPrecisionAndBytesAsStorage) {
  Emitted e;
  const SensitivityResult r = measure_layer_sensitivity(e.view(), *e.held_out, {});
  // conv1..3, fc1, fc2 (weights) and the flatten's own quantized output.
  ASSERT_EQ(r.layers.size(), 6u);
  size_t with_weight = 0;
  for (size_t i = 0; i < r.layers.size(); ++i) {
    const LayerSensitivity& l = r.layers[i];
    const CandidateScore* a8 = l.find(LayerPrecision::kW8A8);
    const CandidateScore* a16 = l.find(LayerPrecision::kW8A16);
    const CandidateScore* fl = l.find(LayerPrecision::kFloat);
    ASSERT_TRUE(a8 && a16 && fl) << l.node;
    if (i > 0) {  // ranked
      EXPECT_GE(a8->quality.sqnr_db, r.layers[i - 1].find(LayerPrecision::kW8A8)->quality.sqnr_db);
    }
    EXPECT_GE(a16->quality.sqnr_db, a8->quality.sqnr_db - 0.5) << l.node;
    EXPECT_TRUE(std::isinf(fl->quality.sqnr_db)) << l.node;
    EXPECT_LT(a8->quality.sqnr_db, 80.0) << l.node;  // 8 bits lose something measurable
    // Together they lose more than any one alone.
    EXPECT_LT(r.whole_model.sqnr_db, a8->quality.sqnr_db) << l.node;
    const CandidateScore* w4 = l.find(LayerPrecision::kW4A32);
    if (l.weight.empty()) {
      EXPECT_EQ(w4, nullptr) << l.node;
      EXPECT_EQ(a8->bytes, 0);
      continue;
    }
    ++with_weight;
    ASSERT_NE(w4, nullptr) << l.node;
    EXPECT_EQ(fl->bytes, 4 * l.weight_elements);
    EXPECT_GT(a8->bytes, l.weight_elements);  // one byte each plus the scales
    EXPECT_LT(w4->bytes, a8->bytes);
    EXPECT_LT(w4->quality.sqnr_db, a8->quality.sqnr_db) << l.node;  // int4 weights lose more than int8
  }
  EXPECT_EQ(with_weight, 5u);
  EXPECT_EQ(r.runs, (5 * 3 + 1 * 2 + 1) * 16u);
}

TEST(Sensitivity, PrecisionListsParse) {
  EXPECT_EQ(parse_layer_precisions("W8A16,float"),
            (std::vector<LayerPrecision>{LayerPrecision::kW8A16, LayerPrecision::kFloat}));
  EXPECT_THROW(parse_layer_precisions("W8A8,W3"), Error);
  EXPECT_THROW(parse_layer_precisions(","), Error);
  // 16-bit parameters over the range the 8-bit ones cover: uint8 z=10 s=0.5 covers [-5, 122.5].
  const quant::QParams w = widen_params({0.5f, 10}, DataType::kUint8, false);
  EXPECT_NEAR((0 - w.zero_point) * w.scale, -5.0, 1e-3);
  EXPECT_NEAR((65535 - w.zero_point) * w.scale, 122.5, 1e-2);
}

}  // namespace
}  // namespace qtool::pipeline
