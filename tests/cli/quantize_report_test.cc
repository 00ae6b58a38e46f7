// qtool quantize's reports on the bundled digits example (calibration_samples/): the summary table
// at the end of every run, --json, --report FILE.json / FILE.html, and --config batch experiments.
// Runs from the source folder, writing only into a temp dir; few samples so it stays fast.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "qtool/core/error.h"
#include "test_util.h"

namespace qtool {
namespace {

namespace fs = std::filesystem;
using testing::run_command;

constexpr const char* kModel = "calibration_samples/digits/digits_cnn.onnx";

/// "cd <source> && <qtool> quantize ARGS".
testing::CommandResult quantize(const std::string& args) {
  return run_command("cd " + testing::source_path("") + " && " + testing::qtool_bin() + " quantize " + args);
}

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

nlohmann::json read_json(const std::string& path) { return nlohmann::json::parse(slurp(path)); }

/// The size cell the summary table shows for `out` relative to the bundled FP32 model.
std::string size_percent_cell(const std::string& out) {
  const double pct = 100.0 * static_cast<double>(fs::file_size(out)) /
                     static_cast<double>(fs::file_size(testing::source_path(kModel)));
  return fmt::format("({:.1f}%)", pct);
}

TEST(CliQuantizeReport, SummaryTableWeightOnly) {
  testing::TempDir dir;
  const std::string out = dir.file("q4.onnx");
  const auto r = quantize(fmt::format("{} --bits 4 --calib calibration_samples/digits/ --samples 32 -o {}", kModel, out));
  ASSERT_EQ(r.exit_code, exit_code::kOk) << r.out << r.err;
  ASSERT_TRUE(fs::exists(out));
  EXPECT_NE(r.out.find("precision"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("FP32"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("W4 (block 32) A32"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(size_percent_cell(out)), std::string::npos) << size_percent_cell(out) << "\n" << r.out;
  // 5 weights: 3 at 4 bits, first and last at 8 (mixed precision), 144+4608+9216+32768+640 parameters.
  EXPECT_NE(r.out.find("47,376 parameters"), std::string::npos) << r.out;
  EXPECT_EQ(r.err.find("precision  "), std::string::npos) << "the table goes to stdout, not stderr";
  // Held-out quality: the last 8 of the 32 samples are kept out of calibration and evaluated.
  EXPECT_NE(r.out.find(" dB"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("%       8\n"), std::string::npos) << r.out;
  // --no-guard: no evaluation, nothing measured.
  const auto ng = quantize(fmt::format("{} --bits 4 --calib calibration_samples/digits/ --samples 32 --no-guard -o {}",
                                       kModel, dir.file("ng.onnx")));
  ASSERT_EQ(ng.exit_code, exit_code::kOk) << ng.out << ng.err;
  EXPECT_EQ(ng.out.find(" dB"), std::string::npos) << ng.out;
}

TEST(CliQuantizeReport, SummaryTableStaticShowsHeldOutQuality) {
  testing::TempDir dir;
  const std::string out = dir.file("q8.onnx");
  const auto r = quantize(fmt::format("{} --calib calibration_samples/digits/ --samples 48 -o {}", kModel, out));
  ASSERT_EQ(r.exit_code, exit_code::kOk) << r.out << r.err;
  EXPECT_NE(r.out.find("W8A8 QDQ"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(size_percent_cell(out)), std::string::npos) << size_percent_cell(out) << "\n" << r.out;
  EXPECT_NE(r.out.find(" dB"), std::string::npos) << r.out;  // held-out SQNR from the quality guard
  EXPECT_NE(r.out.find("%  "), std::string::npos) << r.out;  // and top-1 agreement
}

TEST(CliQuantizeReport, JsonReportHasSchemaAndLayers) {
  testing::TempDir dir;
  const std::string out = dir.file("q4.onnx"), rep = dir.file("report.json");
  const auto r = quantize(fmt::format("{} --bits 4 -o {} --report {} --json", kModel, out, rep));
  ASSERT_EQ(r.exit_code, exit_code::kOk) << r.out << r.err;
  ASSERT_TRUE(fs::exists(rep));
  const auto j = nlohmann::json::parse(slurp(rep));
  EXPECT_EQ(j["schema"], "qtool.quantize_report");
  EXPECT_EQ(j["schema_version"], "1.5");
  EXPECT_FALSE(j.contains("budget"));  // only a --target-size / --target-bpw run has one
  EXPECT_EQ(j["output_model"], out);
  EXPECT_EQ(j["settings"]["bits"], "4");
  EXPECT_EQ(j["size"]["output_file_bytes"].get<int64_t>(), static_cast<int64_t>(fs::file_size(out)));
  ASSERT_EQ(j["layers"].size(), 5u);
  int int4 = 0;
  for (const auto& l : j["layers"]) {
    EXPECT_FALSE(l["node"].get<std::string>().empty());
    EXPECT_GT(l["params"].get<int64_t>(), 0);
    EXPECT_EQ(l["method"], "rtn");
    ASSERT_TRUE(l["weight_sqnr_db"].is_number()) << l.dump();
    // 4-bit RTN keeps roughly 6 dB per bit; 8-bit layers far more.
    EXPECT_GT(l["weight_sqnr_db"].get<double>(), l["bits"].get<int>() == 4 ? 10.0 : 30.0) << l.dump();
    int4 += l["bits"].get<int>() == 4;
  }
  EXPECT_EQ(int4, 3);
  std::set<std::string> phases;
  for (const auto& t : j["timings"]) phases.insert(t["phase"].get<std::string>());
  EXPECT_EQ(phases, (std::set<std::string>{"load", "quantize", "save"}));
  // --json prints the same document on stdout instead of the table.
  const auto printed = nlohmann::json::parse(r.out);
  EXPECT_EQ(printed["schema"], "qtool.quantize_report");
  EXPECT_EQ(printed["layers"].size(), 5u);
}

TEST(CliQuantizeReport, JsonReportWithCalibrationHasPerLayerOutputError) {
  testing::TempDir dir;
  for (const std::string bits : {"8", "4"}) {
    const std::string rep = dir.file("report" + bits + ".json");
    // 8 bits: 240 samples, 24 held out; the per-layer SQNR is measured on the first 16 of them.
    const auto r = quantize(fmt::format("{} --bits {} --calib calibration_samples/digits/ --samples {} -o {} --report {}",
                                        kModel, bits, bits == "8" ? 240 : 48, dir.file("q" + bits + ".onnx"), rep));
    ASSERT_EQ(r.exit_code, exit_code::kOk) << r.out << r.err;
    const auto j = read_json(rep);
    ASSERT_EQ(j["layers"].size(), 5u) << bits;
    for (const auto& l : j["layers"]) {
      ASSERT_TRUE(l["output_sqnr_db"].is_number()) << bits << " " << l.dump();
      EXPECT_GT(l["output_sqnr_db"].get<double>(), bits == "8" ? 30.0 : 15.0) << bits << " " << l.dump();
      // Weight error of the stored weights: 8-bit per-channel keeps > 35 dB, 4-bit blocks > 10 dB.
      ASSERT_TRUE(l["weight_sqnr_db"].is_number()) << bits << " " << l.dump();
      EXPECT_GT(l["weight_sqnr_db"].get<double>(), l["bits"].get<int>() == 8 ? 35.0 : 10.0) << l.dump();
      EXPECT_LT(l["weight_sqnr_db"].get<double>(), l["bits"].get<int>() == 8 ? 60.0 : 35.0) << l.dump();
    }
    ASSERT_EQ(j["evaluation"]["outputs"].size(), 1u);
    const auto& o = j["evaluation"]["outputs"][0];
    EXPECT_EQ(o["name"], "logits");
    EXPECT_GT(o["sqnr_db"].get<double>(), bits == "8" ? 30.0 : 15.0) << o.dump();
    EXPECT_GT(o["top1_agreement"].get<double>(), 0.9) << o.dump();
    EXPECT_GT(o["cosine"].get<double>(), 0.99) << o.dump();
    EXPECT_GT(j["evaluation"]["samples"].get<int64_t>(), 0);
    // Static: the guard's verdict on every held-out sample, the per-layer figures on 16 of them;
    // weight-only: one evaluation for both.
    if (bits == "8") {
      EXPECT_EQ(j["evaluation"]["samples"].get<int64_t>(), 24);
      EXPECT_EQ(j["evaluation"]["layer_samples"].get<int64_t>(), 16);
    } else {
      EXPECT_EQ(j["evaluation"]["layer_samples"], j["evaluation"]["samples"]);
    }
    bool evaluated = false;
    for (const auto& t : j["timings"]) evaluated |= t["phase"] == "evaluate";
    EXPECT_TRUE(evaluated) << j["timings"].dump();
  }
}

TEST(CliQuantizeReport, HtmlReportHasCharts) {
  testing::TempDir dir;
  const std::string rep = dir.file("report.html");
  const auto r = quantize(fmt::format("{} --bits 4 -o {} --report {}", kModel, dir.file("q4.onnx"), rep));
  ASSERT_EQ(r.exit_code, exit_code::kOk) << r.out << r.err;
  ASSERT_TRUE(fs::exists(rep));
  const std::string html = slurp(rep);
  EXPECT_NE(html.find("<svg"), std::string::npos);
  EXPECT_NE(html.find("conv2"), std::string::npos);  // a layer of the model is named
  EXPECT_EQ(html.find("<script"), std::string::npos);  // self-contained, no scripts
}

size_t csv_data_rows(const std::string& path) {
  std::istringstream in(slurp(path));
  std::string line;
  size_t n = 0;
  while (std::getline(in, line)) n += !line.empty();
  return n > 0 ? n - 1 : 0;  // minus the header
}

TEST(CliQuantizeReport, ConfigRunsSettingsTimesSweep) {
  testing::TempDir dir;
  const std::string results = dir.file("results");
  const std::string cfg = dir.file("experiment.json");
  {
    std::ofstream f(cfg);
    f << nlohmann::json{{"output_dir", results},
                        {"defaults", {{"samples", 16}}},
                        {"settings", {{{"name", "w4"}, {"bits", 4}}, {{"name", "w2"}, {"bits", 2}}}},
                        {"sweep", {{"block-size", {16, 32}}}}}
             .dump();
  }
  const auto r = quantize(fmt::format("{} --config {}", kModel, cfg));
  ASSERT_EQ(r.exit_code, exit_code::kOk) << r.out << r.err;
  for (const char* name : {"w4_block-size=16", "w4_block-size=32", "w2_block-size=16", "w2_block-size=32"})
    EXPECT_TRUE(fs::exists(fs::path(results) / (std::string(name) + ".onnx"))) << name;
  EXPECT_EQ(csv_data_rows(results + "/results.csv"), 4u);
  const auto rows = read_json(results + "/results.json");
  ASSERT_EQ(rows.size(), 4u);
  for (const auto& row : rows) {
    EXPECT_EQ(row["status"], "ok") << row.dump();
    EXPECT_EQ(row["size_bytes"].get<int64_t>(), static_cast<int64_t>(fs::file_size(row["output_model"].get<std::string>())));
  }
  // 2-bit is smaller than 4-bit at the same block size.
  EXPECT_LT(rows[2]["size_bytes"].get<int64_t>(), rows[0]["size_bytes"].get<int64_t>());
  EXPECT_NE(r.out.find("== w2_block-size=32 =="), std::string::npos) << r.out;  // a table per setting
}

TEST(CliQuantizeReport, ConfigRecordsFailedSettingAndContinues) {
  testing::TempDir dir;
  const std::string results = dir.file("results");
  const std::string cfg = dir.file("experiment.json");
  {
    std::ofstream f(cfg);
    f << nlohmann::json{{"output_dir", results},
                        {"settings",
                         {{{"name", "bad"}, {"bits", 8}, {"activation-bits", 12}, {"calib", "calibration_samples/digits"}},
                          {{"name", "unknown-option"}, {"bits", 4}, {"no-such-option", 1}},
                          {{"name", "good"}, {"bits", 4}}}}}
             .dump();
  }
  const auto r = quantize(fmt::format("{} --config {}", kModel, cfg));
  EXPECT_EQ(r.exit_code, exit_code::kBadInput) << r.out << r.err;  // some settings failed
  EXPECT_NE(r.err.find("2 of 3 experiment settings failed"), std::string::npos) << r.err;
  const auto rows = read_json(results + "/results.json");
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[0]["status"], "failed");
  EXPECT_NE(rows[0]["error"].get<std::string>().find("--activation-bits"), std::string::npos) << rows[0].dump();
  EXPECT_EQ(rows[1]["status"], "failed");
  EXPECT_NE(rows[1]["error"].get<std::string>().find("no-such-option"), std::string::npos) << rows[1].dump();
  EXPECT_EQ(rows[2]["status"], "ok");
  EXPECT_TRUE(fs::exists(fs::path(results) / "good.onnx"));
  EXPECT_FALSE(fs::exists(fs::path(results) / "bad.onnx"));
  EXPECT_EQ(csv_data_rows(results + "/results.csv"), 3u);
}

}  // namespace
}  // namespace qtool
