// `qtool sensitivity` end to end: the ranked table, the JSON document, the HTML chart, and bad options.
#include <gtest/gtest.h>

#include <filesystem>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "qtool/core/npy.h"
#include "test_util.h"

namespace qtool {
namespace {

std::string base() {
  return fmt::format("{} sensitivity {} --calib {} --samples 64", testing::qtool_bin(),
                     testing::source_path("calibration_samples/digits/digits_cnn.onnx"),
                     testing::source_path("calibration_samples/digits"));
}

TEST(CliSensitivity, JsonTableAndChart) {
  testing::TempDir d;
  const auto j = testing::run_command(base() + " --json --html " + d.file("s.html") + " -o " + d.file("s.json"));
  ASSERT_EQ(j.exit_code, 0) << j.err;
  const nlohmann::json doc = nlohmann::json::parse(j.out);
  EXPECT_EQ(doc["schema"], "qtool.sensitivity");
  EXPECT_EQ(doc["held_out_samples"], 16);
  EXPECT_EQ(doc["calibration_samples"], 48);
  ASSERT_EQ(doc["layers"].size(), 6u);
  EXPECT_EQ(doc["layers"][0]["rank"], 1);
  ASSERT_EQ(doc["layers"][0]["candidates"].size(), 4u);
  EXPECT_EQ(doc["layers"][0]["candidates"][0]["precision"], "W8A8");
  EXPECT_EQ(doc["layers"][0]["candidates"][3]["sqnr_db"], "exact");
  EXPECT_EQ(nlohmann::json::parse(read_file(d.file("s.json"))), doc);
  const std::string html = read_file(d.file("s.html"));
  EXPECT_NE(html.find("<svg"), std::string::npos);
  EXPECT_NE(html.find("conv2"), std::string::npos);
  // The table: ranked rows with the byte costs, and the cost line.
  const auto t = testing::run_command(base() + " --precisions W8A8,float");
  ASSERT_EQ(t.exit_code, 0) << t.err;
  EXPECT_NE(t.out.find("rank  layer"), std::string::npos) << t.out;
  EXPECT_NE(t.out.find("exact (131072)"), std::string::npos) << t.out;  // fc1 at FP32: 32768 weights
  EXPECT_NE(t.out.find("cost: calibration"), std::string::npos) << t.out;
  EXPECT_EQ(t.out.find("W4A32"), std::string::npos) << t.out;
}

TEST(CliSensitivity, BadOptionsExit2) {
  const auto p = testing::run_command(base() + " --precisions W8A8,W5A5");
  EXPECT_EQ(p.exit_code, 2) << p.err;
  EXPECT_NE(p.err.find("W5A5"), std::string::npos) << p.err;
  const auto c = testing::run_command(fmt::format("{} sensitivity {}", testing::qtool_bin(),
                                                  testing::source_path("calibration_samples/digits/digits_cnn.onnx")));
  EXPECT_EQ(c.exit_code, 2) << c.err;
}

}  // namespace
}  // namespace qtool
