// `qtool compare` through the CLI: report contents, --json schema, gate exit codes (0 pass,
// 3 violated, 2 bad input).
#include <cmath>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "qtool/core/error.h"
#include "qtool/onnx_io/onnx_io.h"
#include "qdq_fixture.h"
#include "test_util.h"

namespace qtool {
namespace {

using testing::run_command;
using testing::source_path;

std::string example() { return source_path("calibration_samples/digits/digits_cnn.onnx"); }
std::string eval_dir() { return source_path("calibration_samples/digits_eval"); }
std::string labels() { return eval_dir() + "/labels.csv"; }

/// The example with every Conv/Gemm weight behind an int8 DequantizeLinear; conv2 with `conv2_levels`.
void write_qdq(const std::string& out, float conv2_levels) {
  onnx_io::save_model(testing::make_weight_qdq(example(), {{"conv2", conv2_levels}}), out);
}

class CompareCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir();
    write_qdq(dir_->file("int8.onnx"), 127.f);
    write_qdq(dir_->file("coarse.onnx"), 1.f);  // conv2 with 3 weight levels: clearly broken
  }
  static void TearDownTestSuite() { delete dir_; }
  static std::string cmd(const std::string& quant, const std::string& extra) {
    return testing::qtool_bin() + " compare " + example() + " " + dir_->file(quant) + " --data " + eval_dir() + " " +
           extra;
  }
  static testing::TempDir* dir_;
};
testing::TempDir* CompareCli::dir_ = nullptr;

TEST_F(CompareCli, IdenticalModelsPassEveryGate) {
  const auto r = run_command(testing::qtool_bin() + " compare " + example() + " " + example() + " --data " +
                             eval_dir() + " --labels " + labels() +
                             " --max-drop 0 --min-sqnr 60 --min-agreement 1");
  EXPECT_EQ(r.exit_code, exit_code::kOk) << r.err;
  EXPECT_NE(r.out.find("compared on 500 samples"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("inf (identical)"), std::string::npos);
  EXPECT_NE(r.out.find("FP32 97.20%   quantized 97.20%   drop 0.00 points (500 labelled)"), std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("PASS  max-drop"), std::string::npos);
  EXPECT_EQ(r.out.find("FAIL"), std::string::npos);
}

TEST_F(CompareCli, Int8PassesRealisticGates) {
  const auto r = run_command(cmd("int8.onnx", "--labels " + labels() + " --max-drop 1 --min-sqnr 25 --min-agreement 0.98"));
  EXPECT_EQ(r.exit_code, exit_code::kOk) << r.out << r.err;
  EXPECT_NE(r.out.find("where error enters"), std::string::npos);
}

TEST_F(CompareCli, ViolatedGateExitsThreeAfterTheReport) {
  const auto r = run_command(cmd("coarse.onnx", "--labels " + labels() + " --min-sqnr 25"));
  EXPECT_EQ(r.exit_code, exit_code::kQualityGate) << r.out << r.err;
  // The whole report is printed before the failure.
  EXPECT_NE(r.out.find("top-1 agreement"), std::string::npos);
  EXPECT_NE(r.out.find("FAIL  min-sqnr"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("quality gate failed"), std::string::npos) << r.err;
  // The per-layer ranking names the planted layer first.
  const auto pos = r.out.find("where error enters");
  ASSERT_NE(pos, std::string::npos);
  const auto line = r.out.find('\n', r.out.find('\n', pos) + 1);  // first table row
  EXPECT_EQ(r.out.substr(line + 1, 7), "  conv2") << r.out.substr(pos, 400);
}

TEST_F(CompareCli, JsonDocumentWithFailedGate) {
  const auto r = run_command(cmd("coarse.onnx", "--labels " + labels() + " --json --samples 50 --min-agreement 0.999"));
  EXPECT_EQ(r.exit_code, exit_code::kQualityGate) << r.err;
  const auto j = nlohmann::json::parse(r.out);  // stdout holds exactly one JSON document
  EXPECT_EQ(j["schema"], "qtool.compare");
  EXPECT_EQ(j["schema_version"], "1.1");
  EXPECT_TRUE(j["outputs"][0]["mask_iou"].is_null());  // logits are not a probability map
  EXPECT_EQ(j["samples"], 50);
  EXPECT_FALSE(j["passed"].get<bool>());
  ASSERT_EQ(j["outputs"].size(), 1u);
  const auto& o = j["outputs"][0];
  EXPECT_EQ(o["name"], "logits");
  EXPECT_EQ(o["shape"], nlohmann::json::array({1, 10}));
  EXPECT_TRUE(o["classifier"].get<bool>());
  EXPECT_EQ(o["accuracy"]["labelled"], 50);
  EXPECT_LT(o["top1_agreement"].get<double>(), 0.999);
  EXPECT_LT(o["sqnr_db"].get<double>(), 25.0);
  EXPECT_EQ(j["layers"][0]["tensor"], "conv2");
  EXPECT_EQ(j["matched_tensors"], 10);
  EXPECT_EQ(j["gates"][0]["gate"], "min-agreement");
  EXPECT_FALSE(j["gates"][0]["passed"].get<bool>());
}

TEST_F(CompareCli, BadInputExitsTwo) {
  // Missing model file.
  auto r = run_command(testing::qtool_bin() + " compare " + dir_->file("nope.onnx") + " " + example() + " --data " +
                       eval_dir());
  EXPECT_EQ(r.exit_code, exit_code::kBadInput) << r.err;
  EXPECT_NE(r.err.find("nope.onnx"), std::string::npos) << r.err;
  // Missing data folder.
  r = run_command(cmd("int8.onnx", "").replace(cmd("int8.onnx", "").find(eval_dir()), eval_dir().size(),
                                                dir_->file("missing_dir")));
  EXPECT_EQ(r.exit_code, exit_code::kBadInput) << r.err;
  // --max-drop without labels cannot be checked.
  r = run_command(cmd("int8.onnx", "--max-drop 1"));
  EXPECT_EQ(r.exit_code, exit_code::kBadInput) << r.err;
  EXPECT_NE(r.err.find("--labels"), std::string::npos) << r.err;
  // Agreement outside [0, 1].
  r = run_command(cmd("int8.onnx", "--min-agreement 99"));
  EXPECT_EQ(r.exit_code, exit_code::kBadInput) << r.err;
  // Missing --data.
  r = run_command(testing::qtool_bin() + " compare " + example() + " " + example());
  EXPECT_EQ(r.exit_code, exit_code::kBadInput) << r.err;
}

}  // namespace
}  // namespace qtool
