// Batch experiment configs: parsing, sweeps, argument lists, results.csv/results.json.
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "qtool/core/error.h"
#include "qtool/core/npy.h"
#include "qtool/report/experiments.h"
#include "test_util.h"

namespace qtool::report {
namespace {

TEST(Experiments, SettingsDefaultsAndArgs) {
  const auto cfg = parse_experiment_config(R"({
    // comments are allowed
    "output_dir": "out",
    "defaults": {"calib": "calibration_samples/digits", "method": "minmax"},
    "settings": [
      {"name": "int8", "bits": 8, "cle": true},
      {"name": "w4 gptq", "bits": 4, "weight_algorithm": "gptq", "block-size": 32, "bias-correction": false,
       "exclude-nodes": ["a", "b"]}
    ]})",
                                           "exp.json", "/base");
  EXPECT_EQ(cfg.output_dir, "/base/out");
  ASSERT_EQ(cfg.settings.size(), 2u);
  EXPECT_EQ(cfg.settings[0].name, "int8");
  EXPECT_EQ(cfg.settings[0].output_model, "/base/out/int8.onnx");
  // nlohmann::json objects iterate keys in sorted order.
  EXPECT_EQ(cfg.settings[0].to_args(), (std::vector<std::string>{"--bits", "8", "--calib", "calibration_samples/digits",
                                                                  "--cle", "--method", "minmax"}));
  EXPECT_EQ(cfg.settings[1].name, "w4_gptq");  // made file-name safe
  EXPECT_EQ(cfg.settings[1].to_args(),
            (std::vector<std::string>{"--bits", "4", "--block-size", "32", "--calib", "calibration_samples/digits",
                                      "--exclude-nodes", "a", "--exclude-nodes", "b", "--method", "minmax",
                                      "--weight-algorithm", "gptq"}));
}

TEST(Experiments, SweepIsACartesianProduct) {
  const auto cfg =
      parse_experiment_config(R"({"sweep": {"bits": [4, 2], "block_size": [32, 64, 128]}})", "/x/sweep.json", "/x");
  ASSERT_EQ(cfg.settings.size(), 6u);
  EXPECT_EQ(cfg.output_dir, "/x/sweep_results");
  EXPECT_EQ(cfg.settings[0].name, "bits=4_block-size=32");
  EXPECT_EQ(cfg.settings[5].name, "bits=2_block-size=128");
  EXPECT_EQ(cfg.settings[5].options["bits"], 2);
  // Named settings crossed with a sweep keep their name as a prefix.
  const auto crossed = parse_experiment_config(
      R"({"settings": [{"name": "gptq", "weight-algorithm": "gptq"}], "sweep": {"bits": [4, 2]}})", "c.json", "");
  ASSERT_EQ(crossed.settings.size(), 2u);
  EXPECT_EQ(crossed.settings[1].name, "gptq_bits=2");
}

TEST(Experiments, BadConfigsAreConfigErrors) {
  for (const char* bad : {"not json", "[]", R"({"settings": []})", R"({"setting": [{"bits": 4}]})",
                          R"({"settings": [{"name": "a"}, {"name": "a"}]})", R"({"sweep": {"bits": []}})",
                          R"({"settings": [{"bits": {"x": 1}}]})",
                          R"({"settings": [{"bits": 31e3081}]})" /* number overflow (fuzz_config finding) */}) {
    try {
      parse_experiment_config(bad, "bad.json", "");
      ADD_FAILURE() << "accepted: " << bad;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kConfig) << bad;
      EXPECT_NE(std::string(e.what()).find("bad.json"), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(load_experiment_config("/nonexistent/exp.json"), Error);
}

TEST(Experiments, RunWritesOneRowPerSettingAndKeepsGoingAfterAFailure) {
  testing::TempDir dir;
  {
    std::ofstream f(dir.file("exp.json"));
    f << R"({"output_dir": "res", "sweep": {"bits": [8, 4, 2]}})";
  }
  const auto cfg = load_experiment_config(dir.file("exp.json"));
  const auto outcome = run_experiments(cfg, [](const ExperimentSetting& s) -> nlohmann::json {
    if (s.options["bits"] == 2) fail(ErrorCode::kUnsupported, "2-bit not available");
    write_file_atomic(s.output_model, "model");
    return {{"size_bytes", 1000 / s.options["bits"].get<int>()}, {"sqnr_db", 10.5}, {"note", "a, \"b\""}};
  });
  EXPECT_EQ(outcome.failed, 1);
  ASSERT_EQ(outcome.rows.size(), 3u);
  EXPECT_EQ(outcome.rows[0]["status"], "ok");
  EXPECT_EQ(outcome.rows[1]["size_bytes"], 250);
  EXPECT_EQ(outcome.rows[2]["status"], "failed");
  EXPECT_NE(outcome.rows[2]["error"].get<std::string>().find("2-bit not available"), std::string::npos);
  EXPECT_TRUE(std::filesystem::exists(dir.file("res/bits=8.onnx")));
  EXPECT_TRUE(std::filesystem::exists(dir.file("res/bits=4.onnx")));
  const auto j = nlohmann::json::parse(read_file(dir.file("res/results.json")));
  EXPECT_EQ(j, outcome.rows);
  const std::string csv = read_file(dir.file("res/results.csv"));
  // Header: union of keys in first-seen order (nlohmann sorts keys within a row).
  EXPECT_EQ(csv.substr(0, csv.find('\n')), "bits,error,name,note,output_model,seconds,size_bytes,sqnr_db,status");
  EXPECT_NE(csv.find("\"a, \"\"b\"\"\""), std::string::npos) << csv;  // RFC 4180 quoting
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 4);
}

}  // namespace
}  // namespace qtool::report

namespace qtool::report {
namespace {

TEST(Experiments, YamlConfigMatchesJson) {
  if (!yaml_supported()) GTEST_SKIP() << "built without yaml-cpp (libyaml-cpp-dev)";
  const auto y = parse_experiment_config(R"(
# a sweep in YAML
output_dir: out
defaults:
  calib: calibration_samples/digits
  cle: true
settings:
  - name: int8
    bits: 8
  - name: w4
    bits: 4
    percentile: 99.99
    keep-fp: "007"
sweep:
  block_size: [32, 64]
)",
                                         "exp.yaml", "/b", /*yaml=*/true);
  ASSERT_EQ(y.settings.size(), 4u);
  EXPECT_EQ(y.settings[0].name, "int8_block-size=32");
  EXPECT_EQ(y.settings[0].options["bits"], 8);  // typed, not "8"
  EXPECT_EQ(y.settings[0].options["cle"], true);
  EXPECT_DOUBLE_EQ(y.settings[3].options["percentile"].get<double>(), 99.99);
  EXPECT_EQ(y.settings[3].options["keep-fp"], "007");  // quoted stays a string
  EXPECT_EQ(y.settings[3].to_args(),
            (std::vector<std::string>{"--bits", "4", "--block-size", "64", "--calib", "calibration_samples/digits",
                                      "--cle", "--keep-fp", "007", "--percentile", "99.99"}));
  EXPECT_EQ(y.output_dir, "/b/out");
  EXPECT_THROW(parse_experiment_config("a: [1, 2", "bad.yaml", "", true), Error);
}

}  // namespace
}  // namespace qtool::report
