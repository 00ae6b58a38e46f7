// --bits fp8: FLOAT8E4M3FN weights per output channel (a row of the precision table plus its level
// rule), written as DequantizeLinear (opset 19), which ONNX Runtime 1.30's CPU provider runs; qtool's
// executor gives the same outputs.
#include <gtest/gtest.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "qtool/core/npy.h"
#include "qtool/onnx_io/onnx_io.h"
#include "test_util.h"

namespace qtool {
namespace {

TEST(CliQuantizeFp8, DigitsRunsInOnnxRuntimeAndMatchesTheExecutor) {
  QTOOL_REQUIRE_ORT();
  testing::TempDir d;
  const std::string model = testing::source_path("calibration_samples/digits/digits_cnn.onnx");
  const auto q = testing::run_command(fmt::format("{} quantize {} --bits fp8 --calib {} --samples 64 --json -o {}",
                                                  testing::qtool_bin(), model,
                                                  testing::source_path("calibration_samples/digits"), d.file("q.onnx")));
  ASSERT_EQ(q.exit_code, 0) << q.err;
  const nlohmann::json rep = nlohmann::json::parse(q.out);
  int fp8 = 0;
  for (const auto& l : rep["layers"]) fp8 += l["precision"] == "fp8";
  EXPECT_EQ(fp8, 3);  // first and last layers stay int8
  EXPECT_EQ(rep["precision"], "Wfp8 A32");
  EXPECT_GT(rep["evaluation"]["outputs"][0]["sqnr_db"].get<double>(), 30.0);
  const ir::Model m = onnx_io::load_model(d.file("q.onnx"));
  EXPECT_GE(m.opset(""), 19);
  const Tensor x = read_npy(testing::source_path("calibration_samples/digits/calib_0001.npy"));
  EXPECT_LT(testing::ort_vs_qtool_run_error(d.file("q.onnx"), "image", x, "logits", d.path()), 1e-4);
  // Distillation tuning works on float codes too (the scale gradient through the decoded code, the
  // latent weights straight through): it runs, and keeps the held-out loss from getting worse.
  const auto t = testing::run_command(fmt::format("{} quantize {} --bits fp8 --calib {} --tune-steps 5 --json -o {}",
                                                  testing::qtool_bin(), model,
                                                  testing::source_path("calibration_samples/digits"), d.file("t.onnx")));
  ASSERT_EQ(t.exit_code, 0) << t.err;
  const nlohmann::json tr = nlohmann::json::parse(t.out);
  int tuned = 0;
  for (const auto& l : tr["layers"]) tuned += l["precision"] == "fp8" && l["method"].get<std::string>().find("tuned") != std::string::npos;
  EXPECT_EQ(tuned, 3);
}

}  // namespace
}  // namespace qtool
