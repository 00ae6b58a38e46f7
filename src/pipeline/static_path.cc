// The static W8A8 / W8A16 path of the quantize job: prepare, calibrate, Q/DQ placement, guard.
#include <algorithm>
#include <optional>

#include <spdlog/spdlog.h>

#include "internal.h"
#include "qtool/calib/ranges.h"
#include "qtool/onnx_io/onnx_io.h"
#include "qtool/passes/qdq_to_qoperator.h"
#include "qtool/quant/bias_correction.h"

namespace qtool::pipeline::detail {

QuantizeOutcome run_static(const QuantizeJob& job, ir::Model& model, std::vector<report::Timing>& timings) {
  QTOOL_CHECK(!job.data.path.empty() || !job.ranges_path.empty(), ErrorCode::kConfig,
              "static quantization needs calibration data (--calib DIR) or --ranges FILE");
  quant::StaticQuantConfig cfg = job.static_cfg;
  cfg.guard = job.guard;
  cfg.threads = job.threads;

  auto t = clock_type::now();
  const int64_t target_opset = job.activation_bits == 16 ? 21 : 13;
  const size_t rewrites = quant::prepare_model(model, target_opset);
  spdlog::info("prepared '{}': {} rewrites, opset {}", job.model_path, rewrites, model.opset(""));
  // Bias correction: on by default for models with depthwise convs, where it raised top-1 and
  // agreement with FP32 on the shared models (MobileNetV2 per-tensor +0.8 points; per-channel +0.2
  // to +0.4 points and agreement +1.0 to +1.4 points; BENCHMARKS.md) and hurt nowhere it was tried.
  cfg.bias_correction = job.bias_correction.value_or(quant::has_depthwise_conv(model));
  if (cfg.bias_correction && !job.bias_correction)
    spdlog::info("bias correction: on by default for models with depthwise convs (--no-bias-correction to skip)");
  if (!job.op_types.empty()) {
    // Quantize only these op types: every other quantizable op type is excluded.
    for (const auto& n : model.graph->nodes())
      if (std::find(job.op_types.begin(), job.op_types.end(), n->op_type()) == job.op_types.end())
        cfg.qdq.exclude_op_types.insert(n->op_type());
  }

  std::optional<calib::RangesFile> ranges;
  if (!job.ranges_path.empty()) {
    ranges = calib::load_ranges(job.ranges_path);
    cfg.ranges = &*ranges;
  }
  std::shared_ptr<data::SelectedSource> samples;
  std::unique_ptr<data::SelectedSource> empty;
  if (!job.data.path.empty()) {
    samples = open_samples(job.data, model, "--calib");
    spdlog::info("calibration data: {} samples from '{}' ({})", samples->size(), job.data.path, samples->kind());
  } else {
    cfg.guard = false;
    empty = std::make_unique<data::SelectedSource>(nullptr, std::vector<size_t>{});
  }
  data::SampleSource& src = samples ? static_cast<data::SampleSource&>(*samples) : *empty;
  // Per-layer output SQNR is only shown in --report/--json, so the extra held-out run (and the
  // FP32 copy it needs) is only paid for then.
  std::optional<ir::Model> fp32;
  if (samples && cfg.guard && job.per_layer_eval && file_size(job.model_path) <= kMaxEvalModelBytes)
    fp32.emplace(model.clone());
  const std::map<std::string, Tensor> fp32_weights = float_weights(model);
  // quantize_static runs calibration, Q/DQ placement and the quality guard (the held-out
  // evaluation) in one call, so they are timed together as "quantize".
  const quant::StaticQuantResult res = quant::quantize_static(model, src, cfg);
  timings.push_back({"quantize", seconds_since(t)});
  QTOOL_CHECK(res.qdq.quantized_nodes > 0, ErrorCode::kUnsupported,
              "no node of '{}' was quantized (nothing quantizable outside If/Loop/Scan bodies, or everything excluded); "
              "nothing is written",
              job.model_path);
  if (job.qoperator) {
    // The same integer ops ONNX Runtime fuses the QDQ form into, written out (groups it would
    // leave in float stay QDQ).
    const passes::QOperatorReport fused = passes::fuse_qdq_to_qoperator(model);
    std::string what;
    for (const auto& [op, n] : fused.fused) what += fmt::format("{}{} {}", what.empty() ? "" : ", ", n, op);
    spdlog::info("QOperator form: {} groups rewritten ({})", fused.rewrites, what.empty() ? "none" : what);
  }
  t = clock_type::now();
  model.source_path.clear();
  onnx_io::save_model(model, job.out_path);
  timings.push_back({"save", seconds_since(t)});

  spdlog::info("quantized {} -> {}: W8A{} QDQ ({}, {} activations), {} nodes quantized, {} weights, {} biases, "
               "{} Relu/Clip folded",
               job.model_path, job.out_path, job.activation_bits, cfg.method, dtype_name(cfg.qdq.activation_type),
               res.qdq.quantized_nodes, res.qdq.quantized_weights, res.qdq.quantized_biases,
               res.qdq.folded_activations);
  const std::string headline = fmt::format("W8A{} {}", job.activation_bits, job.qoperator ? "QOperator" : "QDQ");
  QuantizeOutcome out{report::make_quantize_report(job.model_path, job.out_path, model, headline), std::nullopt};
  for (auto& l : out.report.layers)
    if (l.method.empty() && l.precision != "fp32" && l.precision != "fp16") l.method = cfg.method;
  fill_weight_sqnr(out.report, model, res.equalized_weights.empty() ? fp32_weights : res.equalized_weights);
  out.report.outputs = to_quality(res.outputs);
  out.report.eval_samples = res.holdout_samples;
  if (fp32 && res.holdout_samples > 0 && static_cast<size_t>(res.holdout_samples) <= samples->size()) {
    // The guard held out the last holdout_samples samples; evaluate per layer on the same ones.
    t = clock_type::now();
    std::vector<size_t> idx;
    for (size_t i = samples->size() - static_cast<size_t>(res.holdout_samples); i < samples->size(); ++i)
      idx.push_back(i);
    data::SelectedSource held_out(samples, idx);
    evaluate_into(out.report, *fp32, model, held_out, job.threads);
    timings.push_back({"evaluate", seconds_since(t)});
  }
  // What the pipeline did beyond the defaults (CLE, bias correction, tensors the guard kept in float, ...).
  for (const auto& s : res.actions) out.report.actions.push_back(s);
  for (const auto& w : res.warnings) {
    spdlog::warn("{}", w);
    out.report.warnings.push_back(w);
  }
  if (job.max_drop) {
    const double agree = res.min_top1_agreement();
    QTOOL_CHECK(agree >= 0 || !res.outputs.empty(), ErrorCode::kConfig,
                "--max-drop needs the quality guard (calibration data) to measure agreement");
    const double drop = agree >= 0 ? 100.0 * (1.0 - agree) : 0.0;
    if (drop > *job.max_drop || res.looks_broken) {
      out.gate_failure.emplace(
          ErrorCode::kQualityGate,
          fmt::format("quality gate failed: top-1 agreement drop {:.2f} points (limit --max-drop {:.2f}){}", drop,
                      *job.max_drop, res.looks_broken ? "; the model looks broken" : ""));
    }
  }
  return out;
}

}  // namespace qtool::pipeline::detail
