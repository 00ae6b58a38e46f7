// `qtool sensitivity`: the job (prepare, split, calibrate, emit, measure) and its outputs (JSON,
// text table, HTML chart). The measurement itself is pipeline/sensitivity.cc.
#include <algorithm>
#include <cmath>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "internal.h"
#include "qtool/onnx_io/onnx_io.h"
#include "qtool/pipeline/guard.h"
#include "qtool/pipeline/sensitivity.h"
#include "qtool/quant/static_quant.h"

namespace qtool::pipeline {
namespace {

/// A dB figure for JSON: null when not finite (+inf is exact: a string says so).
nlohmann::json db_json(double v) {
  if (std::isnan(v)) return nullptr;
  if (std::isinf(v)) return v > 0 ? nlohmann::json("exact") : nlohmann::json("-inf");
  return std::round(v * 100.0) / 100.0;
}

std::string db_text(double v) {
  if (std::isnan(v)) return "-";
  if (std::isinf(v)) return v > 0 ? "exact" : "-inf";
  return fmt::format("{:.1f}", v);
}

std::string agreement_text(double a) { return std::isnan(a) ? "" : fmt::format(" ({:.0f}%)", 100.0 * a); }

std::string html_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '<') o += "&lt;";
    else if (c == '>') o += "&gt;";
    else if (c == '&') o += "&amp;";
    else if (c == '"') o += "&quot;";
    else o += c;
  }
  return o;
}

}  // namespace

SensitivityRun run_sensitivity(const SensitivityJob& job) {
  SensitivityRun run;
  run.model_path = job.model_path;
  ir::Model model = with_context(fmt::format("while loading '{}'", job.model_path),
                                 [&] { return onnx_io::load_model(job.model_path); });
  QTOOL_CHECK(!job.data.path.empty(), ErrorCode::kConfig, "sensitivity needs samples (--calib DIR)");
  QTOOL_CHECK(dtype_bits(job.activation_type) == 8, ErrorCode::kConfig,
              "sensitivity measures 8-bit activations against 16-bit ones: give uint8 or int8 activations");
  quant::prepare_model(model, 13);
  auto all = open_samples(job.data, model, "--calib");
  const GuardSplit split = split_for_guard(all->size(), true);
  if (!split.warning.empty()) spdlog::warn("{}", split.warning);
  data::SelectedSource calib(all, split.calib), held_out(all, split.held_out);
  run.calib_samples = calib.size();
  run.held_out_samples = std::min(held_out.size(), job.options.samples);
  auto t = detail::clock_type::now();
  quant::StaticQuantConfig cfg;
  cfg.method = job.method;
  cfg.percentile = job.percentile;
  cfg.qdq.activation_type = job.activation_type;
  cfg.qdq.activation_symmetric = job.activation_type == DataType::kInt8;
  cfg.threads = job.options.threads;
  const quant::CalibratedModel calibrated = quant::calibrate_static(model, calib, cfg);
  const quant::StaticEmission emitted = quant::emit_static(calibrated, {}, cfg);
  run.calibrate_seconds = detail::seconds_since(t);
  t = detail::clock_type::now();
  const EmissionView view{&calibrated.float_model, &emitted.model, &emitted.qdq, cfg.qdq.activation_type,
                          cfg.qdq.activation_symmetric};
  run.result = measure_layer_sensitivity(view, held_out, job.options);
  run.measure_seconds = detail::seconds_since(t);
  for (const LayerSensitivity& l : run.result.layers) run.fp32_weight_bytes += 4 * l.weight_elements;
  return run;
}

nlohmann::json sensitivity_to_json(const SensitivityRun& run) {
  nlohmann::ordered_json j;
  j["schema"] = "qtool.sensitivity";
  j["schema_version"] = "1.0";
  j["model"] = run.model_path;
  j["calibration_samples"] = run.calib_samples;
  j["held_out_samples"] = run.result.samples;
  j["metric"] = "lowest output SQNR in dB (per family of channels where an output mixes magnitudes 100x apart); "
                "top-1 agreement for classifier outputs";
  j["outputs"] = run.result.outputs;
  j["whole_model_w8a8"] = {{"sqnr_db", db_json(run.result.whole_model.sqnr_db)},
                           {"top1_agreement", std::isnan(run.result.whole_model.top1_agreement)
                                                  ? nlohmann::json(nullptr)
                                                  : nlohmann::json(run.result.whole_model.top1_agreement)}};
  j["cost"] = {{"calibrate_seconds", run.calibrate_seconds},
               {"measure_seconds", run.measure_seconds},
               {"model_runs", run.result.runs}};
  j["layers"] = nlohmann::ordered_json::array();
  for (size_t rank = 0; rank < run.result.layers.size(); ++rank) {
    const LayerSensitivity& l = run.result.layers[rank];
    nlohmann::ordered_json e;
    e["rank"] = rank + 1;
    e["node"] = l.node;
    e["op_type"] = l.op_type;
    e["weight"] = l.weight;
    e["weight_elements"] = l.weight_elements;
    e["activations"] = l.activations;
    e["candidates"] = nlohmann::ordered_json::array();
    for (const CandidateScore& c : l.candidates) {
      nlohmann::ordered_json ce = {{"precision", layer_precision_name(c.precision)},
                                   {"sqnr_db", db_json(c.quality.sqnr_db)},
                                   {"bytes", c.bytes}};
      ce["top1_agreement"] =
          std::isnan(c.quality.top1_agreement) ? nlohmann::json(nullptr) : nlohmann::json(c.quality.top1_agreement);
      e["candidates"].push_back(std::move(ce));
    }
    j["layers"].push_back(std::move(e));
  }
  return nlohmann::json(j);
}

std::string sensitivity_table(const SensitivityRun& run, size_t rows) {
  const SensitivityResult& r = run.result;
  std::string s = fmt::format(
      "sensitivity of {}: {} layers, each alone at each precision on {} held-out samples (output SQNR dB, top-1 "
      "agreement for classifiers; lower loses more)\nall layers at W8A8: {}{}\n",
      run.model_path, r.layers.size(), r.samples, db_text(r.whole_model.sqnr_db),
      agreement_text(r.whole_model.top1_agreement));
  if (r.layers.empty())
    return s + "no layer of the main graph is quantized at 8 bits (layers inside If/Loop/Scan bodies are not measured: "
               "quantize stores their weights as int8, their activations stay float)\n";
  std::vector<LayerPrecision> cols;
  if (!r.layers.empty())
    for (const CandidateScore& c : r.layers.front().candidates) cols.push_back(c.precision);
  for (const LayerSensitivity& l : r.layers)
    for (const CandidateScore& c : l.candidates)
      if (std::find(cols.begin(), cols.end(), c.precision) == cols.end()) cols.push_back(c.precision);
  std::sort(cols.begin(), cols.end());  // the order of LayerPrecision: W8A8, W8A16, W4A32, float
  s += fmt::format("{:>4}  {:<40} {:<14}", "rank", "layer", "op");
  for (LayerPrecision p : cols) s += fmt::format(" {:>16}", std::string(layer_precision_name(p)) + " dB (bytes)");
  s += "\n";
  const size_t n = rows == 0 ? r.layers.size() : std::min(rows, r.layers.size());
  for (size_t i = 0; i < n; ++i) {
    const LayerSensitivity& l = r.layers[i];
    std::string name = l.node.size() > 40 ? "..." + l.node.substr(l.node.size() - 37) : l.node;
    s += fmt::format("{:>4}  {:<40} {:<14}", i + 1, name, l.op_type);
    for (LayerPrecision p : cols) {
      const CandidateScore* c = l.find(p);
      s += fmt::format(" {:>16}", c ? fmt::format("{} ({})", db_text(c->quality.sqnr_db), c->bytes) : "-");
    }
    s += "\n";
  }
  if (n < r.layers.size()) s += fmt::format("... {} more layers (--json or --html for all)\n", r.layers.size() - n);
  s += fmt::format("cost: calibration {:.1f} s, measurement {:.1f} s ({} model runs)\n", run.calibrate_seconds,
                   run.measure_seconds, r.runs);
  return s;
}

std::string sensitivity_html(const SensitivityRun& run) {
  const SensitivityResult& r = run.result;
  static const char* const kColors[] = {"#d62728", "#1f77b4", "#2ca02c", "#7f7f7f"};
  const double cap = 80.0;  // dB shown at most (exact = the cap)
  const int row_h = 14, label_w = 320, chart_w = 520;
  std::string svg;
  int y = 20;
  for (const LayerSensitivity& l : r.layers) {
    svg += fmt::format("<text x='{}' y='{}' text-anchor='end' font-size='11'>{}</text>", label_w - 6, y + 10,
                       html_escape(l.node.size() > 48 ? "..." + l.node.substr(l.node.size() - 45) : l.node));
    const double bar_h = static_cast<double>(row_h) / std::max<size_t>(1, l.candidates.size());
    for (size_t k = 0; k < l.candidates.size(); ++k) {
      const CandidateScore& c = l.candidates[k];
      double v = std::isnan(c.quality.sqnr_db) ? 0.0 : std::clamp(c.quality.sqnr_db, 0.0, cap);
      svg += fmt::format("<rect x='{}' y='{:.1f}' width='{:.1f}' height='{:.1f}' fill='{}'><title>{} {}: {} dB, {} "
                         "bytes</title></rect>",
                         label_w, y + k * bar_h, v / cap * chart_w, bar_h - 0.5,
                         kColors[static_cast<int>(c.precision) % 4], html_escape(l.node),
                         layer_precision_name(c.precision), db_text(c.quality.sqnr_db), c.bytes);
    }
    y += row_h + 4;
  }
  std::string legend;
  for (LayerPrecision p : {LayerPrecision::kW8A8, LayerPrecision::kW8A16, LayerPrecision::kW4A32, LayerPrecision::kFloat})
    legend += fmt::format("<span style='color:{}'>&#9632; {}</span> ", kColors[static_cast<int>(p)], layer_precision_name(p));
  std::string page = fmt::format(
      "<!DOCTYPE html><html><head><meta charset='utf-8'><title>qtool sensitivity: {0}</title></head><body "
      "style='font-family:sans-serif'><h1>Per-layer sensitivity</h1><p>{0}: {1} layers, each alone at each "
      "precision, everything else float; output SQNR in dB on {2} held-out samples (bars capped at {3:.0f} dB; "
      "lower loses more). All layers at W8A8: {4} dB.</p><p>{5}</p><svg width='{6}' height='{7}' "
      "xmlns='http://www.w3.org/2000/svg'>{8}</svg>",
      html_escape(run.model_path), r.layers.size(), r.samples, cap, db_text(r.whole_model.sqnr_db), legend,
      label_w + chart_w + 20, y + 10, svg);
  page += "<h2>Table</h2><pre>" + html_escape(sensitivity_table(run)) + "</pre></body></html>\n";
  return page;
}

}  // namespace qtool::pipeline
