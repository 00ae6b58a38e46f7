// A precision ladder (`qtool quantize MODEL --ladder 8,4,2 -o DIR`): one run writes several variants
// of one model and a manifest, DIR/ladder.json, with each variant's file, size, bits per weight and
// measured quality, so that an app can pick a variant at run time by the load it is under.
//
// Each rung is an ordinary quantize job (its own path: static, dynamic or weight-only, with its
// own quality floor). A rung that fails (below its floor, or bad input for that path) writes no
// model and is listed in the manifest with status "failed" and the reason; the others are written.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "qtool/pipeline/quantize.h"

namespace qtool::pipeline {

struct LadderRung {
  std::string name;  ///< file-name safe, e.g. "w8", "w4", "ternary"
  std::string bits;  ///< as given on the command line
  QuantizeJob job;   ///< its out_path is DIR/<model stem>.<name>.onnx
};

struct LadderOutcome {
  nlohmann::json manifest;      ///< what DIR/ladder.json holds
  std::string manifest_path;
  int failed = 0;               ///< rungs that wrote no model
  std::vector<QuantizeOutcome> outcomes;  ///< per rung, in order (empty report when it threw)
};

/// The rung names and output paths for `bits` under `dir` (e.g. "8" -> "w8", "ternary" -> "ternary").
std::string ladder_rung_name(const std::string& bits);
std::string ladder_output_path(const std::string& dir, const std::string& model_path, const std::string& rung);

/// Runs every rung in order (creating `dir`), then writes the manifest atomically: schema
/// "qtool.ladder" 1.0, the model, and per rung its name, bits, file (relative to `dir`), status
/// ("ok" / "failed" + error), precision, size_bytes, size_percent, bits_per_weight and the measured
/// quality (worst output SQNR, top-1 agreement, eval_samples; none without samples), largest first.
LadderOutcome run_ladder(const std::string& model_path, const std::string& dir, std::vector<LadderRung> rungs);

}  // namespace qtool::pipeline
