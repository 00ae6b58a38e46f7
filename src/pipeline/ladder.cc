// The precision ladder (pipeline/ladder.h).
#include "qtool/pipeline/ladder.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>

#include <spdlog/spdlog.h>

#include "qtool/core/npy.h"
#include "qtool/report/experiments.h"

namespace qtool::pipeline {

namespace fs = std::filesystem;

std::string ladder_rung_name(const std::string& bits) {
  std::string b;
  for (char c : bits) b += std::isalnum(static_cast<unsigned char>(c)) ? static_cast<char>(std::tolower(c)) : '_';
  return !b.empty() && std::isdigit(static_cast<unsigned char>(b[0])) ? "w" + b : b;
}

std::string ladder_output_path(const std::string& dir, const std::string& model_path, const std::string& rung) {
  return (fs::path(dir) / (fs::path(model_path).stem().string() + "." + rung + ".onnx")).string();
}

LadderOutcome run_ladder(const std::string& model_path, const std::string& dir, std::vector<LadderRung> rungs) {
  QTOOL_CHECK(!rungs.empty(), ErrorCode::kConfig, "--ladder needs at least one precision");
  std::error_code ec;
  fs::create_directories(dir, ec);
  QTOOL_CHECK(!ec && fs::is_directory(dir), ErrorCode::kIo, "--ladder: cannot create the output folder '{}': {}", dir,
              ec.message());
  LadderOutcome out;
  nlohmann::json variants = nlohmann::json::array();
  for (LadderRung& r : rungs) {
    spdlog::info("ladder: {} (--bits {})", r.name, r.bits);
    nlohmann::json v{{"name", r.name}, {"bits", r.bits}, {"file", fs::path(r.job.out_path).filename().string()}};
    try {
      QuantizeOutcome q = quantize(r.job);
      nlohmann::json m = report::setting_metrics(q.report);
      for (const auto& [k, val] : m.items()) v[k] = val;
      v["eval_samples"] = q.report.eval_samples;
      if (q.gate_failure) {
        v["status"] = "failed";
        v["error"] = q.gate_failure->what();
        ++out.failed;
        std::error_code rm;
        if (!r.job.force) fs::remove(r.job.out_path, rm);  // only a --force run keeps a model below its floor
      } else {
        v["status"] = "ok";
      }
      out.outcomes.push_back(std::move(q));
    } catch (const Error& e) {
      v["status"] = "failed";
      v["error"] = e.what();
      ++out.failed;
      out.outcomes.emplace_back();
    }
    variants.push_back(std::move(v));
  }
  std::stable_sort(variants.begin(), variants.end(), [](const nlohmann::json& a, const nlohmann::json& b) {
    return a.value("size_bytes", int64_t{0}) > b.value("size_bytes", int64_t{0});
  });
  out.manifest = {{"schema", "qtool.ladder"},
                  {"schema_version", "1.0"},
                  {"model", model_path},
                  {"fp32_bytes", static_cast<int64_t>(fs::file_size(model_path))},
                  {"variants", variants}};
  out.manifest_path = (fs::path(dir) / "ladder.json").string();
  write_file_atomic(out.manifest_path, out.manifest.dump(2) + "\n");
  return out;
}

}  // namespace qtool::pipeline
