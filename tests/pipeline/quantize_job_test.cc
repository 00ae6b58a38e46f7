// pipeline::quantize on the bundled digits CNN: the checks that run before any work, the defaults
// of the weight-only path, and one gate on both paths.
#include "qtool/pipeline/quantize.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "qtool/core/output_file.h"
#include "test_util.h"

namespace qtool::pipeline {
namespace {

QuantizeJob digits_job(const testing::TempDir& d, const std::string& bits) {
  QuantizeJob job;
  job.model_path = testing::source_path("calibration_samples/digits/digits_cnn.onnx");
  job.out_path = d.file("q.onnx");
  job.data.path = testing::source_path("calibration_samples/digits");
  job.data.samples = 48;
  job.bits = quant::BitsChoice(bits);
  job.weight_cfg.bits = job.bits;
  return job;
}

TEST(QuantizeJob, OutputOverTheModelIsRefusedBeforeAnyWork) {
  testing::TempDir d;
  QuantizeJob job = digits_job(d, "4");
  std::filesystem::copy_file(job.model_path, d.file("m.onnx"));
  job.model_path = d.file("m.onnx");
  job.out_path = d.path() + "/./m.onnx";
  try {
    quantize(job);
    FAIL() << "wrote over its input";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kConfig);
    EXPECT_NE(std::string(e.what()).find("refusing to overwrite an input"), std::string::npos) << e.what();
  }
  clear_protected_inputs();
}

TEST(QuantizeJob, ImageOptionsOnNpyDataAreRefused) {
  testing::TempDir d;
  QuantizeJob job = digits_job(d, "8");
  job.data.preprocess = "imagenet";
  try {
    quantize(job);
    FAIL() << "accepted --preprocess on .npy samples";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kConfig);
    EXPECT_NE(std::string(e.what()).find("--preprocess"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(std::filesystem::exists(job.out_path));
  clear_protected_inputs();
}

TEST(QuantizeJob, WeightOnlyDefaultsWithDataAreGptqWithZeroPoints) {
  testing::TempDir d;
  const QuantizeOutcome out = quantize(digits_job(d, "4"));
  ASSERT_FALSE(out.report.actions.empty());
  EXPECT_EQ(out.report.actions.front().rfind("defaults: gptq, zero points", 0), 0u) << out.report.actions.front();
  int uint4 = 0;
  for (const auto& l : out.report.layers) {
    uint4 += l.precision == "uint4";
    if (l.precision == "uint4") {
      EXPECT_EQ(l.method, "gptq") << l.node;
    }
  }
  EXPECT_EQ(uint4, 3);  // conv2, conv3, fc1; first and last stay int8
  // Given explicitly, nothing is defaulted.
  QuantizeJob explicit_job = digits_job(d, "4");
  explicit_job.out_path = d.file("r.onnx");
  explicit_job.algorithm = quant::WeightAlgorithm::kRtn;
  explicit_job.symmetric = true;
  const QuantizeOutcome rtn = quantize(explicit_job);
  EXPECT_TRUE(rtn.report.actions.empty());
  clear_protected_inputs();
}

TEST(QuantizeJob, StaticReportTakesTheGuardsComparison) {
  // 48 samples: the guard holds out the last 16 and measures the kept model on them through
  // report::compare_models, so the report has every figure (cosine and top-5 included) without
  // the per-layer evaluation.
  testing::TempDir d;
  const QuantizeOutcome out = quantize(digits_job(d, "8"));
  EXPECT_EQ(out.report.eval_samples, 16);
  ASSERT_EQ(out.report.outputs.size(), 1u);
  const report::OutputQuality& q = out.report.outputs[0];
  EXPECT_EQ(q.name, "logits");
  EXPECT_EQ(q.samples, 16);
  EXPECT_GT(q.sqnr_db, 30.0);
  EXPECT_GT(q.cosine, 0.99);
  EXPECT_GE(q.top1_agreement, 0.9);
  EXPECT_GE(q.top5_agreement, q.top1_agreement);
  EXPECT_FALSE(out.gate_failure.has_value());
  clear_protected_inputs();
}

TEST(QuantizeJob, MaxDropGateIsReturnedNotThrownOnBothPaths) {
  testing::TempDir d;
  for (const std::string bits : {"8", "2"}) {
    QuantizeJob job = digits_job(d, bits);
    job.out_path = d.file("g" + bits + ".onnx");
    job.max_drop = 0.0;
    job.static_cfg.method = "percentile";
    job.static_cfg.percentile = 50.0;  // ruins the static model (the guard repairs it: observed ranges)
    job.floor_sqnr_db = 200.0;         // ... so an unreachable floor makes it fail
    job.weight_cfg.bits_first_last = "";  // every layer 2-bit, plain RTN: not broken, but agreement drops
    job.algorithm = quant::WeightAlgorithm::kRtn;
    job.force = true;  // write even below the quality floor / when it looks broken (exit 3 all the same)
    const QuantizeOutcome out = quantize(job);
    EXPECT_TRUE(std::filesystem::exists(job.out_path)) << bits;  // written (--force), then the gate reports
    ASSERT_TRUE(out.gate_failure.has_value()) << bits;
    EXPECT_EQ(out.gate_failure->code(), ErrorCode::kQualityGate);
  }
  clear_protected_inputs();
}

}  // namespace
}  // namespace qtool::pipeline
