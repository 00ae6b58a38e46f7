// `qtool compare` reports the accuracy ONNX Runtime gives: MobileNetV2 FP32 vs INT8 on real
// ImageNet images, ONNX Runtime 1.30 classifying exactly the tensors qtool compared on.
#include <gtest/gtest.h>

#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "test_util.h"

namespace qtool {
namespace {

using testing::shared_path;

TEST(CompareOrtAccuracy, MobileNetV2Int8AccuracyIsOnnxRuntimes) {
  QTOOL_REQUIRE_SHARED();
  QTOOL_REQUIRE_ORT();
  QTOOL_REQUIRE_EXACT_ORT_INT8();
  testing::TempDir dir;
  const std::string fp32 = shared_path("models/mobilenetv2/mobilenetv2_dequant_fp32.onnx");
  const std::string images = shared_path("data/imagenet-sample/images");
  const std::string labels = shared_path("data/imagenet-sample/labels.csv");
  const std::string int8 = dir.file("int8.onnx");
  const auto q = testing::run_command(fmt::format(
      "{} quantize {} --bits 8 --calib {} --calib-split even --samples 32 --preprocess mobilenetv2-244 --no-guard -o {}",
      testing::qtool_bin(), fp32, images, int8));
  ASSERT_EQ(q.exit_code, 0) << q.err;
  const std::string dump = dir.file("eval");
  const auto c = testing::run_command(fmt::format(
      "{} compare {} {} --data {} --split odd --samples 60 --preprocess mobilenetv2-244 --labels {} --no-layers --json "
      "--dump-inputs {}",
      testing::qtool_bin(), fp32, int8, images, labels, dump));
  ASSERT_EQ(c.exit_code, 0) << c.err;
  const auto report = nlohmann::json::parse(c.out);
  const auto& acc = report["outputs"][0]["accuracy"];
  ASSERT_EQ(acc["labelled"].get<int>(), 60);

  const auto ort = testing::run_command(fmt::format("cd '{}' && node tools/make_example/ort_accuracy.js {} {} {} {}",
                                                    testing::source_path(""), labels, dump, fp32, int8));
  ASSERT_EQ(ort.exit_code, 0) << ort.err;
  std::istringstream lines(ort.out);
  std::string l1, l2;
  std::getline(lines, l1);
  std::getline(lines, l2);
  const auto ort_fp32 = nlohmann::json::parse(l1), ort_int8 = nlohmann::json::parse(l2);
  ASSERT_EQ(ort_int8["samples"].get<int>(), 60);
  // Same accuracy image for image: at 60 images one image is 1.7 points, so equality is the only
  // agreement within 0.2 points.
  EXPECT_DOUBLE_EQ(acc["fp32"].get<double>(), ort_fp32["accuracy"].get<double>());
  EXPECT_DOUBLE_EQ(acc["quantized"].get<double>(), ort_int8["accuracy"].get<double>());
  EXPECT_DOUBLE_EQ(report["outputs"][0]["top1_agreement"].get<double>(), ort_int8["top1_agreement_with_first"].get<double>());
}

}  // namespace
}  // namespace qtool
