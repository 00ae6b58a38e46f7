// Batch experiments: `qtool quantize MODEL --config experiment.json` runs a list of settings
// against one model and data set, one output model and one results row per setting.
//
// Config (JSON; YAML when the file ends in .yaml/.yml and qtool was built with yaml-cpp):
//
//   {
//     "output_dir": "experiments/digits",          // default: "<config stem>_results" beside the config
//     "defaults": {"calib": "calibration_samples/digits", "method": "minmax"},
//     "settings": [                                   // explicit list ...
//       {"name": "int8", "bits": 8},
//       {"name": "w4-gptq", "bits": 4, "algorithm": "gptq", "block-size": 32}
//     ],
//     "sweep": {"bits": [4, 2], "block-size": [32, 64]}   // ... and/or a cartesian product
//   }
//
// Keys are `qtool quantize` long option names without "--" ("_" and "-" are interchangeable);
// values are strings, numbers, booleans (true: a flag, false: omitted) or lists (repeated). Each
// setting is defaults + its own keys. A setting without "name" is named from its keys
// ("bits=4_block-size=32"). The runner writes <output_dir>/<name>.onnx per setting, then
// results.csv and results.json with one row per setting (its options + the metrics the callback
// returned + "status"/"error"/"seconds").
#pragma once

#include "qtool/report/report.h"

#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace qtool::report {

/// One run of the sweep.
struct ExperimentSetting {
  std::string name;            ///< unique, file-name safe
  nlohmann::json options;      ///< object: option name (dashes) -> value
  std::string output_model;    ///< <output_dir>/<name>.onnx

  /// The options as command-line arguments: {"--bits", "4", "--block-size", "32", "--cle"}.
  std::vector<std::string> to_args() const;
};

struct ExperimentConfig {
  std::string path;            ///< the config file
  std::string output_dir;
  std::vector<ExperimentSetting> settings;
};

/// True when this build reads YAML configs (built with yaml-cpp, Debian's libyaml-cpp-dev).
bool yaml_supported();

/// Parses and expands a config file. Throws kIo (unreadable) or kConfig (bad JSON/YAML, unknown
/// top-level key, empty setting list, duplicate names) naming the file.
ExperimentConfig load_experiment_config(const std::string& path);
/// Same from text; `what` names it in errors, `base_dir` resolves a relative output_dir.
ExperimentConfig parse_experiment_config(const std::string& text, const std::string& what, const std::string& base_dir,
                                         bool yaml = false);

/// Performs one quantize run for a setting (writing setting.output_model) and returns its metrics
/// as a flat JSON object (numbers or strings), e.g. {"size_bytes": 1234, "sqnr_db": 31.2}.
using ExperimentRunner = std::function<nlohmann::json(const ExperimentSetting& setting)>;

struct ExperimentOutcome {
  nlohmann::json rows;         ///< array, one object per setting (as in results.json)
  int failed = 0;              ///< settings whose runner threw
  std::string csv_path, json_path;
};

/// Runs every setting in order. A setting whose runner throws qtool::Error is recorded with
/// status "failed" and its message, and the sweep goes on; results.csv/results.json are rewritten
/// after every setting, so an interrupted sweep keeps what it finished. Creates output_dir.
ExperimentOutcome run_experiments(const ExperimentConfig& config, const ExperimentRunner& run_one);

/// One setting's metrics for the results table: precision, size (bytes and percent of FP32), bits
/// per weight, the worst output SQNR and top-1 agreement measured.
nlohmann::json setting_metrics(const QuantizeReport& r);

/// CSV of rows (union of keys as columns, first-seen order; RFC 4180 quoting).
std::string rows_to_csv(const nlohmann::json& rows);

}  // namespace qtool::report
