// qtool quantize --bits < 8: the weight-only options reach the emitted model (checked with inspect --json).
#include <gtest/gtest.h>

#include <filesystem>

#include <nlohmann/json.hpp>

#include "test_util.h"

namespace qtool {
namespace {

using testing::qtool_bin;
using testing::run_command;
using testing::source_path;

const std::string kModel = source_path("calibration_samples/digits/digits_cnn.onnx");
const std::string kCalib = source_path("calibration_samples/digits/");

/// Quantizes the bundled example with `opts` and returns inspect's "weight_bits" histogram.
nlohmann::json quantize_and_inspect(const std::string& opts, const testing::TempDir& dir) {
  const std::string out = dir.file("q.onnx");
  auto q = run_command(fmt::format("{} -q quantize {} --calib {} --samples 64 {} -o {}", qtool_bin(), kModel, kCalib,
                                   opts, out));
  EXPECT_EQ(q.exit_code, 0) << q.err;
  auto r = run_command(fmt::format("{} inspect --json {}", qtool_bin(), out));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return nlohmann::json::parse(r.out)["quantization"];
}

TEST(QuantizeLowbitOptions, FirstLastAtEightByDefaultAndSameOnRequest) {
  testing::TempDir dir;
  // With calibration data the default is GPTQ with zero points (uint4); first and last stay int8.
  auto dflt = quantize_and_inspect("--bits 4", dir);
  EXPECT_EQ(dflt["weight_bits"]["uint4"], 3);
  EXPECT_EQ(dflt["weight_bits"]["int8"], 2);
  auto same = quantize_and_inspect("--bits 4 --bits-first-last same --symmetric", dir);
  EXPECT_EQ(same["weight_bits"]["int4"], 5);
  EXPECT_FALSE(same["weight_bits"].contains("int8"));
}

TEST(QuantizeLowbitOptions, LayerBitsAsymmetricAndOutliers) {
  testing::TempDir dir;
  auto lb = quantize_and_inspect("--bits 4 --layer-bits conv2=8 --symmetric", dir);
  EXPECT_EQ(lb["weight_bits"]["int4"], 2);
  EXPECT_EQ(lb["weight_bits"]["int8"], 3);
  auto asym = quantize_and_inspect("--bits 4 --asymmetric --weight-algorithm rtn", dir);
  EXPECT_EQ(asym["weight_bits"]["uint4"], 3);
  auto sym = quantize_and_inspect("--bits 4 --symmetric --weight-algorithm rtn", dir);
  EXPECT_EQ(sym["weight_bits"]["int4"], 3);
  auto outl = quantize_and_inspect("--bits 2 --outlier-fraction 0.1 --symmetric", dir);
  EXPECT_EQ(outl["weight_bits"]["int2"], 3);
  EXPECT_EQ(outl["weight_bits"]["int8"], 3);  // first, last, and one outlier-channel branch
}

TEST(QuantizeLowbitOptions, ScaleTypeFloat32AndBitsDepthwise) {
  testing::TempDir dir;
  // float16 scales (default) store 4 + 16/32 bits per 4-bit weight; float32 scales 4 + 32/32.
  const auto f16 = run_command(fmt::format("{} -q quantize {} --bits 4 -o {}", qtool_bin(), kModel, dir.file("a.onnx")));
  const auto f32 = run_command(
      fmt::format("{} -q quantize {} --bits 4 --scale-type float32 -o {}", qtool_bin(), kModel, dir.file("b.onnx")));
  ASSERT_EQ(f16.exit_code, 0) << f16.err;
  ASSERT_EQ(f32.exit_code, 0) << f32.err;
  EXPECT_LT(std::filesystem::file_size(dir.file("a.onnx")), std::filesystem::file_size(dir.file("b.onnx")));
  auto ops = [&](const std::string& f) {
    auto r = run_command(fmt::format("{} inspect --json {}", qtool_bin(), f));
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return nlohmann::json::parse(r.out)["op_histogram"];
  };
  EXPECT_EQ(ops(dir.file("a.onnx")).value("Cast", 0), 3);  // one per 4-bit weight's scale
  EXPECT_EQ(ops(dir.file("b.onnx")).value("Cast", 0), 0);
  const auto bad = run_command(
      fmt::format("{} -q quantize {} --bits 4 --scale-type float64 -o {}", qtool_bin(), kModel, dir.file("c.onnx")));
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.err.find("--scale-type"), std::string::npos) << bad.err;

  // Depthwise convs: int8 by default, 4-bit with --bits-depthwise same (MobileNetV2 has 17).
  QTOOL_REQUIRE_SHARED();
  const std::string mnv2 = testing::shared_path("models/mobilenetv2/mobilenetv2_dequant_fp32.onnx");
  auto bits = [&](const std::string& opts) {
    const std::string out = dir.file("m.onnx");
    auto q = run_command(fmt::format("{} -q quantize {} --bits 4 {} -o {}", qtool_bin(), mnv2, opts, out));
    EXPECT_EQ(q.exit_code, 0) << q.err;
    auto r = run_command(fmt::format("{} inspect --json {}", qtool_bin(), out));
    return nlohmann::json::parse(r.out)["quantization"]["weight_bits"];
  };
  const auto dflt = bits(""), same = bits("--bits-depthwise same");
  EXPECT_EQ(same["int4"].get<int>() - dflt["int4"].get<int>(), 17);
  EXPECT_EQ(dflt["int8"].get<int>() - same["int8"].get<int>(), 17);
}

TEST(QuantizeLowbitOptions, SplitIsAnAliasOfCalibSplit) {
  testing::TempDir dir;
  // 600 calibration files: --split even keeps 300, of which a fifth (60) is held out for the evaluation.
  auto r = run_command(fmt::format("{} -q quantize {} --calib {} --bits 4 --split even -o {}", qtool_bin(), kModel,
                                   kCalib, dir.file("q.onnx")));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("100.0%       60"), std::string::npos) << r.out;
}

TEST(QuantizeLowbitOptions, BadValuesExitTwo) {
  testing::TempDir dir;
  // ... and a zero-point flag that contradicts the element type named by --bits (int4 and fp4 have
  // no zero points; uint4 always stores them): refused, not silently ignored.
  for (const char* bad : {"--bits 4 --format qoperator", "--bits 4 --outlier-fraction 0.7",
                          "--bits 4 --layer-bits conv2", "--bits int4 --asymmetric", "--bits fp4 --asymmetric",
                          "--bits ternary --asymmetric", "--bits uint4 --symmetric"}) {
    auto r = run_command(fmt::format("{} quantize {} --calib {} {} -o {}", qtool_bin(), kModel, kCalib, bad,
                                     dir.file("x.onnx")));
    EXPECT_EQ(r.exit_code, 2) << bad << ": " << r.err;
    EXPECT_FALSE(std::filesystem::exists(dir.file("x.onnx"))) << bad;
  }
}

TEST(QuantizeLowbitOptions, MatMulNBitsOnStories260K) {
  QTOOL_REQUIRE_SHARED();
  testing::TempDir dir;
  const std::string out = dir.file("s.onnx");
  auto q = run_command(fmt::format(
      "{} -q quantize {} --bits 4 --format matmulnbits --calib {} --seq-len 64 --samples 16 -o {}", qtool_bin(),
      testing::shared_path("models/stories260K/stories260K.onnx"),
      testing::shared_path("data/stories260K-text/runc_samples_t1.0_p0.9_seed1-600.tok512.i32"), out));
  ASSERT_EQ(q.exit_code, 0) << q.err;
  auto r = run_command(fmt::format("{} inspect --json {}", qtool_bin(), out));
  auto mnb = nlohmann::json::parse(r.out)["quantization"]["matmul_nbits"];
  ASSERT_EQ(mnb.size(), 1u);
  EXPECT_EQ(mnb[0]["bits"], 4);
  EXPECT_EQ(mnb[0]["block_size"], 32);
  EXPECT_EQ(mnb[0]["count"], 34);  // 36 weight MatMuls, first and last stay at int8
}

}  // namespace
}  // namespace qtool
