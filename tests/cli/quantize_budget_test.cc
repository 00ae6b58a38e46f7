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
  const BudgetRun twice = quantize(d, fmt::format("--target-bpw 3 --report {}", d.file("r.html")), "c.onnx");
  ASSERT_EQ(twice.exit_code, 0) << twice.err;
  EXPECT_EQ(slurp(d.file("a.onnx")), slurp(d.file("c.onnx")));
  // The HTML report draws the traced curve, one dot per plan.
  const std::string html = slurp(d.file("r.html"));
  EXPECT_NE(html.find("id=\"chart-budget\""), std::string::npos);
  size_t dots = 0;
  for (size_t p = html.find("<circle"); p != std::string::npos; p = html.find("<circle", p + 1)) ++dots;
  EXPECT_EQ(dots, b["curve"].size());  // every plan but the all-float one (exact: no SQNR), and the ring
  if (testing::ort_available()) {
    const Tensor x = read_npy(testing::source_path("calibration_samples/digits/calib_0001.npy"));
    EXPECT_LT(testing::ort_vs_qtool_run_error(d.file("a.onnx"), "image", x, "logits", d.path()), 1e-4);
  }
}

TEST(CliQuantizeBudget, MaxDropWithABudgetGivesTheSmallestPlanThatKeepsIt) {
  testing::TempDir d;
  const BudgetRun big = quantize(d, "--target-size 20%", "big.onnx");
  ASSERT_EQ(big.exit_code, 0) << big.err;
  const BudgetRun small = quantize(d, "--target-size 20% --max-drop 0", "small.onnx");
  ASSERT_EQ(small.exit_code, 0) << small.err;
  const int64_t b = big.report["size"]["output_file_bytes"], s = small.report["size"]["output_file_bytes"];
  EXPECT_LT(s, b * 3 / 4) << s << " vs " << b;  // far below the budget: the quality target decides
  EXPECT_DOUBLE_EQ(small.report["evaluation"]["outputs"][0]["top1_agreement"].get<double>(), 1.0);
  bool told = false;
  for (const auto& a : small.report["actions"]) told = told || a.get<std::string>().rfind("--max-drop 0.00 with a budget", 0) == 0;
  EXPECT_TRUE(told) << small.report["actions"].dump();
}

TEST(CliQuantizeBudget, MinSqnrGivesTheSmallestPlanThatKeepsIt) {
  testing::TempDir d;
  const BudgetRun big = quantize(d, "--target-size 20%", "big.onnx");
  ASSERT_EQ(big.exit_code, 0) << big.err;
  const BudgetRun small = quantize(d, "--target-size 20% --min-sqnr 30", "small.onnx");
  ASSERT_EQ(small.exit_code, 0) << small.err;
  const int64_t b = big.report["size"]["output_file_bytes"], s = small.report["size"]["output_file_bytes"];
  EXPECT_LT(s, b * 3 / 4) << s << " vs " << b;  // far below the budget: the quality target decides
  const double sqnr = small.report["evaluation"]["outputs"][0]["sqnr_db"];
  EXPECT_GE(sqnr, 30.0);
  EXPECT_LT(sqnr, big.report["evaluation"]["outputs"][0]["sqnr_db"].get<double>());  // it gave quality for size
  bool told = false;
  for (const auto& a : small.report["actions"]) told = told || a.get<std::string>().rfind("--min-sqnr 30.0 with a budget", 0) == 0;
  EXPECT_TRUE(told) << small.report["actions"].dump();
  // A target no plan within the budget reaches: the budget's plan, and exit 3 naming the target.
  const BudgetRun high = quantize(d, "--target-size 20% --min-sqnr 90", "high.onnx");
  EXPECT_EQ(high.exit_code, 3) << high.err;
  EXPECT_NE(high.err.find("--min-sqnr 90.0"), std::string::npos) << high.err;
  // A quality target alone: the smallest plan of the whole curve that keeps it (here the same plan:
  // the 20% budget did not bind), and exit 3 when not even the least-noise quantized plan does.
  const BudgetRun alone = quantize(d, "--bits 4 --min-sqnr 30", "alone.onnx");
  ASSERT_EQ(alone.exit_code, 0) << alone.err;
  EXPECT_EQ(alone.report["size"]["output_file_bytes"].get<int64_t>(), s);
  EXPECT_GE(alone.report["evaluation"]["outputs"][0]["sqnr_db"].get<double>(), 30.0);
  EXPECT_EQ(alone.report["precision"], "mixed (--min-sqnr 30.0) A32");
  const BudgetRun unreachable = quantize(d, "--bits 4 --min-sqnr 200", "unreachable.onnx");
  EXPECT_EQ(unreachable.exit_code, 3) << unreachable.err;
  EXPECT_NE(unreachable.err.find("no plan keeps it"), std::string::npos) << unreachable.err;
  // A ladder's 4-bit rung is 4-bit: a quality target there would turn it into a mixed plan.
  const BudgetRun ladder = quantize(d, "--ladder 8,4 --min-sqnr 30", "ladder");
  EXPECT_EQ(ladder.exit_code, 2) << ladder.err;
  EXPECT_NE(ladder.err.find("without --ladder"), std::string::npos) << ladder.err;
  EXPECT_FALSE(std::filesystem::exists(d.file("ladder")));
}

TEST(CliQuantizeBudget, KeepInt8SpeedMixesInt4AndInt8WeightsWithEightBitActivations) {
  testing::TempDir d;
  const BudgetRun r = quantize(d, "--target-size 20% --keep-int8-speed", "k.onnx");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const int64_t target = fp32_bytes() * 20 / 100;
  const int64_t size = r.report["size"]["output_file_bytes"];
  EXPECT_LE(size, target);
  EXPECT_GE(size, target - target / 20);
  const std::string prec = r.report["precision"];
  EXPECT_EQ(prec.rfind("W8A8 QDQ, ", 0), 0u) << prec;  // static path: 8-bit activations
  EXPECT_EQ(prec.find("16 bits"), std::string::npos) << prec;
  const auto& b = r.report["budget"];
  EXPECT_GE(b["layers_by_format"].value("int4", 0), 1) << b.dump();
  EXPECT_GE(b["layers_by_format"].value("int8", 0), 1) << b.dump();
  EXPECT_GT(r.report["evaluation"]["outputs"][0]["sqnr_db"].get<double>(), 25.0);
  // Every weight is int4 or int8 (no float weight, no weight-only form).
  for (const auto& l : r.report["layers"]) EXPECT_TRUE(l["precision"] == "int4" || l["precision"] == "int8") << l;
  // Its int8 layers compute exactly in ONNX Runtime only where its u8s8 kernels do (not on x86
  // without VNNI: test_util.h ort_int8_exact); the all-int4 model below is exact everywhere.
  if (testing::ort_available() && testing::ort_int8_exact()) {
    const Tensor x = read_npy(testing::source_path("calibration_samples/digits/calib_0001.npy"));
    EXPECT_LT(testing::ort_vs_qtool_run_error(d.file("k.onnx"), "image", x, "logits", d.path()), 1e-3);
  }
  // 15% is below every weight at 4 bits here: refused, nothing written; and the flag needs a budget.
  const BudgetRun small = quantize(d, "--target-size 15% --keep-int8-speed", "s.onnx");
  EXPECT_NE(small.exit_code, 0);
  EXPECT_NE(small.err.find("smallest plan"), std::string::npos) << small.err;
  EXPECT_FALSE(std::filesystem::exists(d.file("s.onnx")));
  // A floor that needs the 4-bit weight back at 8 bits, past the budget: exit 3, nothing written.
  const auto over = testing::run_command(fmt::format(
      "{} quantize {} --target-size 20% --keep-int8-speed --metric sqnr --min-sqnr 40 --calib {} --samples 64 -o {}",
      testing::qtool_bin(), testing::source_path("calibration_samples/digits/digits_cnn.onnx"),
      testing::source_path("calibration_samples/digits"), d.file("o.onnx")));
  EXPECT_EQ(over.exit_code, 3) << over.err;
  EXPECT_NE(over.err.find("over the budget"), std::string::npos) << over.err;
  EXPECT_FALSE(std::filesystem::exists(d.file("o.onnx")));
  const BudgetRun no_budget = quantize(d, "--keep-int8-speed", "n.onnx");
  EXPECT_NE(no_budget.exit_code, 0);
  EXPECT_NE(no_budget.err.find("applies to a size budget"), std::string::npos) << no_budget.err;
}

TEST(CliQuantizeBudget, ConfigSweepTracesTheSizeQualityCurve) {
  testing::TempDir d;
  std::ofstream(d.file("exp.json")) << fmt::format(
      R"({{"output_dir": "out", "defaults": {{"calib": "{}", "samples": 64}},
          "sweep": {{"target-size": ["15%", "20%"]}}}})",
      testing::source_path("calibration_samples/digits"));
  const auto r = testing::run_command(fmt::format("{} quantize {} --config {}", testing::qtool_bin(),
                                                  testing::source_path("calibration_samples/digits/digits_cnn.onnx"),
                                                  d.file("exp.json")));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json rows = nlohmann::json::parse(slurp(d.file("out/results.json")));
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0]["status"], "ok");
  EXPECT_LE(rows[0]["size_percent"].get<double>(), 15.0);
  EXPECT_LE(rows[1]["size_percent"].get<double>(), 20.0);
  EXPECT_GT(rows[1]["size_percent"].get<double>(), rows[0]["size_percent"].get<double>());
  EXPECT_GE(rows[1]["sqnr_db"].get<double>(), rows[0]["sqnr_db"].get<double>());
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

namespace qtool {
namespace {

// W4A8 on the static path: --bits 8 --layer-bits '*=4' writes packed int4 levels read through
// Cast(to=int8) by the int8 DequantizeLinear (ONNX Runtime folds the Cast and fuses QLinearConv,
// BENCHMARKS.md "W4A8"): a smaller file, the report sees the 4-bit layers, ONNX Runtime and qtool's
// executor agree, and other widths are refused.
TEST(CliQuantizeW4A8, FourBitLevelsReadAsInt8RunInOnnxRuntime) {
  testing::TempDir d;
  const BudgetRun w8 = quantize(d, "--bits 8", "w8.onnx");
  ASSERT_EQ(w8.exit_code, 0) << w8.err;
  const BudgetRun w4 = quantize(d, "--bits 8 --layer-bits '*=4'", "w4.onnx");
  ASSERT_EQ(w4.exit_code, 0) << w4.err;
  EXPECT_EQ(w4.report["precision"].get<std::string>().rfind("W4A8", 0), 0u) << w4.report["precision"];
  const int64_t s8 = w8.report["size"]["output_file_bytes"], s4 = w4.report["size"]["output_file_bytes"];
  EXPECT_LT(s4, s8 * 6 / 10) << s4 << " vs " << s8;
  int int4 = 0;
  for (const auto& l : w4.report["layers"])
    if (l["precision"] == "int4") {
      ++int4;
      EXPECT_EQ(l["bits"], 4);
      EXPECT_GT(l["weight_sqnr_db"].get<double>(), 3.0) << l;  // measured through the Cast (GPTQ moves fc2's most)
    }
  EXPECT_EQ(int4, 5) << w4.report["layers"].dump();
  EXPECT_GT(w4.report["evaluation"]["outputs"][0]["top1_agreement"].get<double>(), 0.8);
  EXPECT_GT(w4.report["evaluation"]["outputs"][0]["sqnr_db"].get<double>(), 20.0);
  if (testing::ort_available()) {
    const Tensor x = read_npy(testing::source_path("calibration_samples/digits/calib_0001.npy"));
    EXPECT_LT(testing::ort_vs_qtool_run_error(d.file("w4.onnx"), "image", x, "logits", d.path()), 1e-3);
  }
  // Only conv1 at 4 bits: a mixed model.
  const BudgetRun one = quantize(d, "--bits 8 --layer-bits 'conv1=4'", "one.onnx");
  ASSERT_EQ(one.exit_code, 0) << one.err;
  EXPECT_NE(one.report["precision"].get<std::string>().find("1 weights at 4 bits"), std::string::npos)
      << one.report["precision"];
  // Below the floor (judged by SQNR at 33 dB; all at 4 bits gives 28.5 dB): the 4-bit weights that
  // cost the most go back to 8 bits, fewest first, until the floor holds; activations stay 8-bit.
  const BudgetRun raised = quantize(d, "--bits 8 --layer-bits '*=4' --metric sqnr --min-sqnr 33", "raised.onnx");
  ASSERT_EQ(raised.exit_code, 0) << raised.err;
  EXPECT_GE(raised.report["evaluation"]["outputs"][0]["sqnr_db"].get<double>(), 33.0);
  const std::string prec = raised.report["precision"];
  EXPECT_EQ(prec.rfind("W8A8 QDQ, ", 0), 0u) << prec;
  EXPECT_NE(prec.find("weights at 4 bits"), std::string::npos) << prec;  // some stay at 4 bits
  EXPECT_EQ(prec.find("at 16 bits"), std::string::npos) << prec;
  bool told = false;
  for (const auto& a : raised.report["actions"]) told = told || a.get<std::string>().find("raising the 4-bit weights") != std::string::npos;
  EXPECT_TRUE(told) << raised.report["actions"].dump();
  const BudgetRun bad = quantize(d, "--bits 8 --layer-bits '*=2'", "bad.onnx");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.err.find("4 (W4A8"), std::string::npos) << bad.err;
  EXPECT_FALSE(std::filesystem::exists(d.file("bad.onnx")));
}

}  // namespace
}  // namespace qtool

namespace qtool {
namespace {

// A weight written as Reshape(constant) (mnist-8, exported from CNTK: its FC weight is
// Reshape(Parameter193), and IR 3 lists every initializer as a graph input) is folded into an
// initializer and quantized; before, the layer stayed float (61.9% of FP32 at --bits 4).
TEST(CliQuantizeWeightOnly, WeightsBehindALayoutOpAreFoldedAndQuantized) {
  QTOOL_REQUIRE_SHARED();
  testing::TempDir d;
  const std::string model = testing::shared_path("models/mnist-8/mnist-8.onnx");
  const auto r = testing::run_command(fmt::format(
      "{} quantize {} --bits 4 --calib {} --preprocess mnist-raw --samples 64 --json -o {}", testing::qtool_bin(), model,
      testing::shared_path("data/mnist/t10k-images-idx3-ubyte.gz"), d.file("q.onnx")));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json rep = nlohmann::json::parse(r.out);
  ASSERT_EQ(rep["layers"].size(), 3u) << rep["layers"].dump();
  int uint4 = 0;
  for (const auto& l : rep["layers"]) uint4 += l["precision"] == "uint4";
  EXPECT_EQ(uint4, 1);
  EXPECT_LT(rep["size"]["percent_of_fp32"].get<double>(), 35.0);
  bool told = false;
  for (const auto& a : rep["actions"]) told = told || a.get<std::string>().find("layout ops on constant weights") != std::string::npos;
  EXPECT_TRUE(told) << rep["actions"].dump();
  EXPECT_GT(rep["evaluation"]["outputs"][0]["top1_agreement"].get<double>(), 0.9);
  if (testing::ort_available()) {
    Tensor x(DataType::kFloat, {1, 1, 28, 28});
    for (int64_t i = 0; i < x.numel(); ++i) x.mutable_data<float>()[i] = static_cast<float>((i * 37) % 256);
    EXPECT_LT(testing::ort_vs_qtool_run_error(d.file("q.onnx"), "Input3", x, "Plus214_Output_0", d.path()), 1e-3);
  }
}

// A four-layer CNN has few sums of layer sizes: the budget is filled by the exact knapsack over
// forms whose bytes include the graph each form adds (6-bit palettes add ~900 bytes a layer on a
// model this small). Every output lands within 2% under its budget here (the test allows 3%), and
// quality grows with it.
TEST(CliQuantizeBudget, SmallCnnFillsEachBudgetWithinTwoPercent) {
  QTOOL_REQUIRE_SHARED();
  testing::TempDir d;
  const std::string model = testing::shared_path("models/mnist-cnn-pytorch/cnn_mnist_pytorch.onnx");
  const auto fp32 = static_cast<int64_t>(std::filesystem::file_size(model));
  double last_sqnr = -1e9;
  for (int pct : {12, 15, 20, 25}) {
    const std::string out = d.file(fmt::format("q{}.onnx", pct));
    const auto r = testing::run_command(fmt::format(
        "{} quantize {} --target-size {}% --calib {} --preprocess mnist-pytorch --samples 1000 --json -o {}",
        testing::qtool_bin(), model, pct, testing::shared_path("data/mnist/t10k-images-idx3-ubyte.gz"), out));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto target = fp32 * pct / 100;
    const auto size = static_cast<int64_t>(std::filesystem::file_size(out));
    EXPECT_LE(size, target) << pct;
    // 98.4-99.7% measured (session 10's solver: 90-98%); 97% leaves room for another CPU's noise
    // figures picking another plan.
    EXPECT_GE(size, target - 3 * target / 100) << pct << "%: " << size << " of " << target;
    const double sqnr = nlohmann::json::parse(r.out)["evaluation"]["outputs"][0]["sqnr_db"].get<double>();
    EXPECT_GT(sqnr, last_sqnr) << pct;  // 27 / 37 / 44 / 52 dB
    last_sqnr = sqnr;
  }
}

}  // namespace
}  // namespace qtool
