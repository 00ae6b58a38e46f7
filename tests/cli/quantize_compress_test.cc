// --palette / --palette-group / --palette-block and --sparsity / --sparsity-method through the CLI on
// the bundled digits CNN: the models run in ONNX Runtime and match qtool's executor, the report
// lists each layer's palette or pruning (sparsity, mask storage, bytes), the zstd-compressed size is
// reported, and options that do not combine are refused before anything is written.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <tuple>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "qtool/core/npy.h"
#include "qtool/onnx_io/onnx_io.h"
#include "test_util.h"

namespace qtool {
namespace {

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

struct QuantizeRun {
  int exit_code;
  nlohmann::json report;
  std::string err;
};

QuantizeRun quantize(const testing::TempDir& d, const std::string& args, const std::string& out) {
  const auto r = testing::run_command(fmt::format(
      "{} quantize {} {} --calib {} --samples 64 --json -o {}", testing::qtool_bin(),
      testing::source_path("calibration_samples/digits/digits_cnn.onnx"), args,
      testing::source_path("calibration_samples/digits"), d.file(out)));
  QuantizeRun run{r.exit_code, nlohmann::json(), r.err};
  if (r.exit_code == 0) run.report = nlohmann::json::parse(r.out);
  return run;
}

TEST(CliQuantizeCompress, PalettesRunInOnnxRuntimeAndReportTheirTables) {
  QTOOL_REQUIRE_ORT();
  testing::TempDir d;
  const Tensor x = read_npy(testing::source_path("calibration_samples/digits/calib_0001.npy"));
  for (const std::string& args : {std::string("--palette 4"), std::string("--palette 6 --palette-group 4"),
                                  std::string("--palette 3 --palette-block 32"), std::string("--bits pal5")}) {
    SCOPED_TRACE(args);
    const QuantizeRun r = quantize(d, args, "p.onnx");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    int pal = 0;
    for (const auto& l : r.report["layers"]) {
      const std::string p = l["precision"];
      if (p.rfind("pal", 0) != 0) continue;
      ++pal;
      EXPECT_NE(l["scheme"].get<std::string>().find("palette"), std::string::npos) << l;
      EXPECT_GT(l["weight_sqnr_db"].get<double>(), 8.0) << l;
    }
    EXPECT_EQ(pal, 3) << r.report.dump();  // first and last layers stay int8
    EXPECT_GT(r.report["size"]["output_zstd_bytes"].get<int64_t>(), 0);
    EXPECT_LE(r.report["size"]["output_zstd_bytes"].get<int64_t>(), r.report["size"]["output_file_bytes"].get<int64_t>());
    EXPECT_GT(r.report["evaluation"]["outputs"][0]["top1_agreement"].get<double>(), 0.8);
    EXPECT_LT(testing::ort_vs_qtool_run_error(d.file("p.onnx"), "image", x, "logits", d.path()), 1e-4);
    // qtool inspect recognizes the three palettized layers (and not the input's float tensors).
    const auto ins = testing::run_command(fmt::format("{} inspect {} --json", testing::qtool_bin(), d.file("p.onnx")));
    ASSERT_EQ(ins.exit_code, 0) << ins.err;
    const auto q = nlohmann::json::parse(ins.out)["quantization"];
    EXPECT_EQ(q["table_weights"], 3) << q;
    EXPECT_EQ(q["sparse_weights"], 0) << q;
  }
  // A palette has no MatMulNBits form, and its group and scale blocks exclude each other.
  EXPECT_EQ(quantize(d, "--palette 4 --format matmulnbits", "x.onnx").exit_code, 2);
  EXPECT_EQ(quantize(d, "--palette 4 --palette-group 4 --palette-block 32", "x.onnx").exit_code, 2);
  EXPECT_EQ(quantize(d, "--palette 4 --bits 4", "x.onnx").exit_code, 2);
  EXPECT_EQ(quantize(d, "--palette 4 --tune-steps 10", "x.onnx").exit_code, 2);
  // Palette options without a palette are refused, not ignored.
  EXPECT_EQ(quantize(d, "--bits 4 --palette-block 32", "x.onnx").exit_code, 2);
  EXPECT_EQ(quantize(d, "--bits 4 --palette-group 4", "x.onnx").exit_code, 2);
  EXPECT_FALSE(std::filesystem::exists(d.file("x.onnx")));
}

TEST(CliQuantizeCompress, DefaultPaletteGranularityIsMeasured) {
  // Without --palette-group / --palette-block the held-out samples choose: up to 4 bits scaled per
  // block of 32 or tables per 4 channels; from 5 bits on scaled or one bare table per tensor.
  testing::TempDir d;
  for (const auto& [args, other, headline] :
       {std::tuple<std::string, std::string, std::string>{"--palette 4", "tables per 4 output channels", "group 4"},
        {"--palette 6", "one table per tensor", "per tensor"}}) {
    SCOPED_TRACE(args);
    const QuantizeRun r = quantize(d, args, "p.onnx");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    std::string action;
    for (const auto& a : r.report["actions"])
      if (a.get<std::string>().rfind("palette granularity measured", 0) == 0) action = a;
    ASSERT_NE(action.find("scaled per block of 32 (SQNR "), std::string::npos) << r.report["actions"].dump();
    EXPECT_NE(action.find("vs " + other + " (SQNR "), std::string::npos) << action;
    // The headline names the form kept, as the action does.
    const std::string precision = r.report["precision"];
    const bool scaled = action.substr(action.rfind(':')) == ": scaled";
    EXPECT_NE(precision.find(scaled ? "(scaled, block 32)" : "(" + headline + ")"), std::string::npos)
        << precision << " / " << action;
  }
}

TEST(CliQuantizeCompress, PrunedLayersKeepTheirPatternAndShrinkTheFile) {
  QTOOL_REQUIRE_ORT();
  testing::TempDir d;
  const Tensor x = read_npy(testing::source_path("calibration_samples/digits/calib_0001.npy"));
  const QuantizeRun dense = quantize(d, "--bits 4 --symmetric", "dense.onnx");
  ASSERT_EQ(dense.exit_code, 0) << dense.err;
  for (const std::string method : {"magnitude", "wanda", "sparsegpt"}) {
    SCOPED_TRACE(method);
    const QuantizeRun r = quantize(d, "--bits 4 --sparsity 2:4 --sparsity-method " + method, "s.onnx");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    int pruned = 0;
    for (const auto& l : r.report["layers"]) {
      if (l["pruning"].get<std::string>().empty()) continue;
      ++pruned;
      EXPECT_EQ(l["pruning"], method + " 2:4") << l;
      EXPECT_GE(l["sparsity"].get<double>(), 0.5) << l;
      EXPECT_TRUE(l["sparse_storage"].get<bool>()) << l;
    }
    EXPECT_EQ(pruned, 3);  // not the first and last layers
    EXPECT_LT(r.report["size"]["output_file_bytes"].get<int64_t>(), dense.report["size"]["output_file_bytes"].get<int64_t>());
    EXPECT_EQ(r.report["precision"], "W4 (block 32) sparse 2:4 A32");
    EXPECT_LT(testing::ort_vs_qtool_run_error(d.file("s.onnx"), "image", x, "logits", d.path()), 1e-4);
    const auto ins = testing::run_command(fmt::format("{} inspect {} --json", testing::qtool_bin(), d.file("s.onnx")));
    ASSERT_EQ(ins.exit_code, 0) << ins.err;
    EXPECT_EQ(nlohmann::json::parse(ins.out)["quantization"]["sparse_weights"], 3) << ins.out;
  }
  // --bits 8 with --sparsity: int8 weights (weight-only), pruned.
  const QuantizeRun i8 = quantize(d, "--bits 8 --sparsity 0.5", "i8.onnx");
  ASSERT_EQ(i8.exit_code, 0) << i8.err;
  EXPECT_EQ(i8.report["precision"], "W8 sparse 0.5 A32");
  EXPECT_EQ(quantize(d, "--bits 4 --sparsity 1.5", "x.onnx").exit_code, 2);
  EXPECT_EQ(quantize(d, "--bits 4 --sparsity-method wanda", "x.onnx").exit_code, 2);  // without --sparsity
  EXPECT_EQ(quantize(d, "--bits 4 --sparsity 2:4 --format matmulnbits", "x.onnx").exit_code, 2);
  // Tuning keeps the pruned weights at 0 (they get no gradient): the pattern survives it.
  const QuantizeRun tuned = quantize(d, "--bits 4 --sparsity 2:4 --tune-steps 20", "t.onnx");
  ASSERT_EQ(tuned.exit_code, 0) << tuned.err;
  int tuned_pruned = 0;
  for (const auto& l : tuned.report["layers"]) {
    if (l["pruning"].get<std::string>().empty()) continue;
    ++tuned_pruned;
    EXPECT_GE(l["sparsity"].get<double>(), 0.5) << l;
    EXPECT_NE(l["method"].get<std::string>().find("tuned"), std::string::npos) << l;
  }
  EXPECT_EQ(tuned_pruned, 3);
  EXPECT_FALSE(std::filesystem::exists(d.file("x.onnx")));
}

// The same inputs and options give the same bytes, whatever the thread count (palette groups and
// RTN rows are split over threads; k-means starts from a fixed seed).
TEST(CliQuantizeCompress, ByteIdenticalAcrossRunsAndThreads) {
  testing::TempDir d;
  for (const std::string& args : {std::string("--palette 4 --palette-group 4 --sparsity 0.5"),
                                  std::string("--palette 3"), std::string("--bits 4 --sparsity 2:4")}) {
    SCOPED_TRACE(args);
    ASSERT_EQ(quantize(d, args + " --threads 1", "a.onnx").exit_code, 0);
    ASSERT_EQ(quantize(d, args + " --threads 2", "b.onnx").exit_code, 0);
    EXPECT_EQ(slurp(d.file("a.onnx")), slurp(d.file("b.onnx")));
  }
}

}  // namespace
}  // namespace qtool
