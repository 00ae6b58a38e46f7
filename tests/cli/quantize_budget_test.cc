// --target-size / --target-bpw through the CLI on the bundled digits CNN: the file fits its budget
// (and uses it), quality does not fall as the budget grows, the plan it chose reproduces the model,
// the models run in ONNX Runtime like in qtool's executor, and bad budgets are refused.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "qtool/core/npy.h"
#include "test_util.h"

namespace qtool {
namespace {

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

struct BudgetRun {
  int exit_code;
  nlohmann::json report;
  std::string err;
};

BudgetRun quantize(const testing::TempDir& d, const std::string& args, const std::string& out) {
  const auto r = testing::run_command(fmt::format(
      "{} quantize {} {} --calib {} --samples 64 --json -o {}", testing::qtool_bin(),
      testing::source_path("calibration_samples/digits/digits_cnn.onnx"), args,
      testing::source_path("calibration_samples/digits"), d.file(out)));
  BudgetRun run{r.exit_code, nlohmann::json(), r.err};
  if (r.exit_code == 0) run.report = nlohmann::json::parse(r.out);
  return run;
}

int64_t fp32_bytes() {
  return static_cast<int64_t>(std::filesystem::file_size(testing::source_path("calibration_samples/digits/digits_cnn.onnx")));
}

TEST(CliQuantizeBudget, FileFitsEachSizeBudgetAndQualityGrowsWithIt) {
  testing::TempDir d;
  double last_predicted = -1e9, last_measured = -1e9;
  for (const int pct : {12, 15, 20, 25}) {
    SCOPED_TRACE(pct);
    const std::string out = fmt::format("b{}.onnx", pct);
    const BudgetRun r = quantize(d, fmt::format("--target-size {}%", pct), out);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const int64_t target = fp32_bytes() * pct / 100;
    const int64_t size = static_cast<int64_t>(std::filesystem::file_size(d.file(out)));
    EXPECT_LE(size, target);
    // Five layers give coarse steps (fc1 alone is 70% of the weights, and nothing lies between its
    // int8 and float forms, so 25% is spent like 20%): within 10% here up to 20%; the shared models'
    // files land within 2% (BENCHMARKS.md).
    if (pct <= 20) EXPECT_GE(size, target - target / 10) << "more than 10% of the budget left unused";
    EXPECT_EQ(r.report["size"]["output_file_bytes"].get<int64_t>(), size);
    const auto& b = r.report["budget"];
    ASSERT_TRUE(b.is_object()) << r.report.dump();
    EXPECT_EQ(b["target_file_bytes"].get<int64_t>(), target);
    EXPECT_GE(b["curve"].size(), 5u);
    EXPECT_LE(b["chosen"]["weight_bytes"].get<int64_t>(), b["weight_budget_bytes"].get<int64_t>());
    int layers = 0;
    for (const auto& [f, n] : b["layers_by_format"].items()) layers += n.get<int>();
    EXPECT_EQ(layers, 5);  // every weight of the CNN was searched
    EXPECT_NE(r.report["precision"].get<std::string>().find("mixed"), std::string::npos);
    // More bytes never predict, nor measure, a worse model.
    const double predicted = b["chosen"]["predicted_sqnr_db"].get<double>();
    const double measured = r.report["evaluation"]["outputs"][0]["sqnr_db"].get<double>();
    EXPECT_GE(predicted, last_predicted);
    EXPECT_GE(measured, last_measured - 0.5);
    last_predicted = predicted;
    last_measured = measured;
  }
  EXPECT_GT(last_measured, 20.0);  // 25% of FP32 (8 bits per weight) is close to the float model
}

TEST(CliQuantizeBudget, BitsPerWeightBudgetPlanReproducesAndRunsInOnnxRuntime) {
  testing::TempDir d;
  const BudgetRun r = quantize(d, fmt::format("--target-bpw 3 --plan-out {}", d.file("plan.json")), "a.onnx");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto& b = r.report["budget"];
  EXPECT_LE(b["bits_per_weight"].get<double>(), 3.0);
  EXPECT_GE(b["bits_per_weight"].get<double>(), 2.8);
  EXPECT_DOUBLE_EQ(b["target_bits_per_weight"].get<double>(), 3.0);
  // The plan names a reason and reproduces the model byte for byte; a second search gives the same.
  const nlohmann::json plan = nlohmann::json::parse(slurp(d.file("plan.json")));
  ASSERT_EQ(plan["layers"].size(), 5u);
  EXPECT_EQ(plan["layers"][0]["reason"], "budget search");
  const BudgetRun again = quantize(d, fmt::format("--plan {}", d.file("plan.json")), "b.onnx");
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_EQ(slurp(d.file("a.onnx")), slurp(d.file("b.onnx")));
  const BudgetRun twice = quantize(d, "--target-bpw 3", "c.onnx");
  ASSERT_EQ(twice.exit_code, 0) << twice.err;
  EXPECT_EQ(slurp(d.file("a.onnx")), slurp(d.file("c.onnx")));
  if (testing::ort_available()) {
    const Tensor x = read_npy(testing::source_path("calibration_samples/digits/calib_0001.npy"));
    EXPECT_LT(testing::ort_vs_qtool_run_error(d.file("a.onnx"), "image", x, "logits", d.path()), 1e-4);
  }
}

TEST(CliQuantizeBudget, BadBudgetsAreRefusedAndNothingIsWritten) {
  testing::TempDir d;
  struct Case {
    std::string args, message;
  } cases[] = {
      {"--target-size 0.5%", "the model's other tensors and graph alone take about"},
      {"--target-bpw 1", "smallest plan"},
      {"--target-size 12parsecs", "--target-size '12parsecs'"},
      {"--target-size 150%", "at most 100%"},
      {"--target-size 20% --target-bpw 4", "give one"},
      {"--target-size 20% --sparsity 0.5", "--sparsity"},
      {"--target-size 20% --no-guard", "held-out"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.args);
    const BudgetRun r = quantize(d, c.args, "x.onnx");
    EXPECT_NE(r.exit_code, 0);
    EXPECT_NE(r.err.find(c.message), std::string::npos) << r.err;
    EXPECT_FALSE(std::filesystem::exists(d.file("x.onnx")));
  }
  const auto no_calib = testing::run_command(fmt::format("{} quantize {} --target-bpw 3 -o {}", testing::qtool_bin(),
                                                         testing::source_path("calibration_samples/digits/digits_cnn.onnx"),
                                                         d.file("x.onnx")));
  EXPECT_NE(no_calib.exit_code, 0);
  EXPECT_NE(no_calib.err.find("--calib"), std::string::npos) << no_calib.err;
}

}  // namespace
}  // namespace qtool
