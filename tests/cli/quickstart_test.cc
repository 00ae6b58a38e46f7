// The README's quick start, run as written on the bundled example (calibration_samples/): quantize
// to 4 bits, compare against FP32 on the held-out digits with labels, and check what the README
// shows (size, accuracy before/after). Runs from the source folder, writing only into a temp dir.
#include <cstdio>
#include <filesystem>

#include <gtest/gtest.h>

#include "qtool/core/error.h"
#include "qtool/onnx_io/onnx_io.h"
#include "qtool/report/report.h"
#include "test_util.h"

namespace qtool {
namespace {

using testing::run_command;

/// "cd <source> && <qtool> ARGS".
testing::CommandResult qtool_in_source(const std::string& args) {
  return run_command("cd " + testing::source_path("") + " && " + testing::qtool_bin() + " " + args);
}

bool has_subcommand(const std::string& name) {
  const auto r = run_command(testing::qtool_bin() + " " + name + " --help");
  return r.exit_code == 0;
}

TEST(QuickStart, BundledExampleIsComplete) {
  namespace fs = std::filesystem;
  const fs::path root = testing::source_path("calibration_samples");
  EXPECT_TRUE(fs::exists(root / "digits/digits_cnn.onnx"));
  EXPECT_TRUE(fs::exists(root / "digits_eval/labels.csv"));
  EXPECT_TRUE(fs::exists(root / "README.md"));
  size_t calib = 0, eval = 0;
  for (const auto& e : fs::directory_iterator(root / "digits")) calib += e.path().extension() == ".npy";
  for (const auto& e : fs::directory_iterator(root / "digits_eval")) eval += e.path().extension() == ".npy";
  EXPECT_EQ(calib, 600u);  // within the field's 500-1000 guidance
  EXPECT_EQ(eval, 500u);
}

TEST(QuickStart, QuantizeToFourBitsThenCompare) {
  if (!has_subcommand("quantize")) GTEST_SKIP() << "qtool quantize is not available in this build yet";
  testing::TempDir dir;
  const std::string out = dir.file("example.q4.onnx");
  // Step 1 of the README quick start.
  const auto q = qtool_in_source("quantize calibration_samples/digits/digits_cnn.onnx --bits 4 "
                                 "--calib calibration_samples/digits/ -o " + out);
  ASSERT_EQ(q.exit_code, exit_code::kOk) << q.out << q.err;
  ASSERT_TRUE(std::filesystem::exists(out));
  const auto fp32_size = std::filesystem::file_size(testing::source_path("calibration_samples/digits/digits_cnn.onnx"));
  const auto q4_size = std::filesystem::file_size(out);
  EXPECT_LT(q4_size * 100, fp32_size * 25) << q4_size << " of " << fp32_size;  // well under a quarter
  // What the emitted file stores: 4-bit middle layers, 8-bit first and last layers (mixed precision).
  const auto rep = report::make_quantize_report(testing::source_path("calibration_samples/digits/digits_cnn.onnx"),
                                                out, onnx_io::load_model(out), "W4");
  EXPECT_EQ(rep.total_params(), 144 + 4608 + 9216 + 32768 + 640);  // every Conv/Gemm weight, none lost
  EXPECT_LT(rep.bits_per_weight(), 6.0);
  EXPECT_GT(rep.bits_per_weight(), 4.0);
  EXPECT_EQ(rep.output_file_bytes, static_cast<int64_t>(q4_size));
  std::printf("%s", report::format_summary_table(rep).c_str());
  // Step 2: compare with labels and a CI gate.
  const auto c = qtool_in_source("compare calibration_samples/digits/digits_cnn.onnx " + out +
                                 " --data calibration_samples/digits_eval"
                                 " --labels calibration_samples/digits_eval/labels.csv --max-drop 2");
  EXPECT_EQ(c.exit_code, exit_code::kOk) << c.out << c.err;
  EXPECT_NE(c.out.find("compared on 500 samples"), std::string::npos) << c.out;
  EXPECT_NE(c.out.find("accuracy          FP32 97.20%"), std::string::npos) << c.out;
  EXPECT_NE(c.out.find("PASS  max-drop"), std::string::npos) << c.out;
}

TEST(QuickStart, QuantizeToEightBitsThenCompare) {
  if (!has_subcommand("quantize")) GTEST_SKIP() << "qtool quantize is not available in this build yet";
  testing::TempDir dir;
  const std::string out = dir.file("example.q8.onnx");
  const auto q = qtool_in_source("quantize calibration_samples/digits/digits_cnn.onnx --bits 8 "
                                 "--calib calibration_samples/digits/ -o " + out);
  ASSERT_EQ(q.exit_code, exit_code::kOk) << q.out << q.err;
  const auto c = qtool_in_source("compare calibration_samples/digits/digits_cnn.onnx " + out +
                                 " --data calibration_samples/digits_eval"
                                 " --labels calibration_samples/digits_eval/labels.csv --json"
                                 " --max-drop 1 --min-sqnr 25 --min-agreement 0.98");
  EXPECT_EQ(c.exit_code, exit_code::kOk) << c.out << c.err;
  EXPECT_NE(c.out.find("\"schema\": \"qtool.compare\""), std::string::npos);
}

}  // namespace
}  // namespace qtool
