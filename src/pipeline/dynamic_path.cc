// The dynamic path of the quantize job (--mode dynamic, quant/dynamic.h): no calibration; with
// samples (--calib) the model is judged against the quality floor, and the nodes that cost the most
// are kept in float until it holds.
#include <algorithm>
#include <cmath>
#include <optional>

#include <spdlog/spdlog.h>

#include "internal.h"
#include "qtool/onnx_io/onnx_io.h"
#include "qtool/quant/dynamic.h"
#include "qtool/quant/static_quant.h"

namespace qtool::pipeline::detail {
namespace {

/// Samples the floor is judged on (the first ones given; dynamic quantization fits nothing to them).
constexpr size_t kMaxJudgeSamples = 64;
/// Samples each node is probed on when the model is below the floor.
constexpr size_t kProbeSamples = 4;

/// The dynamic rewrite of a copy of fp32; then the weights it leaves float (Conv unless opted in,
/// GRU/RNN, which have no integer form in ONNX Runtime, an LSTM it could not rewrite) are stored as
/// int8 levels read through Cast · scales, which ONNX Runtime folds at load (static_quant.h:
/// quantize_body_weights): a smaller file at float speed.
quant::DynamicSummary emit(ir::Model& out, const ir::Model& fp32, const quant::DynamicOptions& o, size_t* body_weights) {
  out = fp32.clone();
  quant::DynamicSummary s = quant::emit_dynamic(out, o);
  *body_weights = quant::quantize_body_weights(out, false, {"LSTM", "GRU", "RNN", "Conv", "ConvTranspose"}, true);
  return s;
}

report::CompareResult judge(const ir::Model& fp32, const ir::Model& q, data::SampleSource& samples, int threads,
                            report::ReferenceCache* cache) {
  report::CompareOptions co;
  co.threads = threads;
  co.per_layer = false;
  co.reference_cache = cache;
  return report::compare_models(fp32, q, sample_provider(samples), co);
}

}  // namespace

QuantizeOutcome run_dynamic(const QuantizeJob& job, ir::Model& model, std::vector<report::Timing>& timings) {
  auto t = clock_type::now();
  quant::prepare_model(model, 13);  // the static path's preparation (constant folding reaches LSTM weights)
  const ir::Model fp32 = model.clone();
  quant::DynamicOptions opt = job.dynamic_cfg;
  for (const auto& x : job.exclude_nodes) opt.exclude_nodes.insert(x);
  size_t body_weights = 0;
  quant::DynamicSummary s = emit(model, fp32, opt, &body_weights);
  QTOOL_CHECK(s.rewritten() > 0 || body_weights > 0, ErrorCode::kUnsupported,
              "no node of '{}' was quantized dynamically ({} candidates left in float{}{}); nothing is written",
              job.model_path, s.float_nodes.size(), s.float_nodes.empty() ? "" : ", e.g. ",
              s.float_nodes.empty() ? "" : s.float_nodes.front());
  timings.push_back({"quantize", seconds_since(t)});
  std::vector<std::string> actions;
  actions.push_back(fmt::format(
      "dynamic: {} MatMul, {} Gemm, {} Conv nodes with {} weights per {} and {} DynamicQuantizeLinear, {} embedding "
      "tables int8 per row, {} LSTM as DynamicQuantizeLSTM; weights {} -> {} bytes",
      s.matmuls, s.gemms, s.convs, dtype_name(opt.weight_type), opt.per_channel ? "output channel" : "tensor",
      s.quantize_nodes, s.gathers, s.lstms, s.float_weight_bytes, s.quant_weight_bytes));
  if (body_weights > 0)
    actions.push_back(fmt::format("{} other weights (Conv, GRU/RNN) stored as int8 levels read through Cast and "
                                  "their scales, which ONNX Runtime folds at load (they compute in float)",
                                  body_weights));
  for (const auto& f : s.float_nodes) spdlog::info("dynamic: left in float: {}", f);

  std::optional<report::CompareResult> verdict;
  std::optional<Error> failure;
  std::vector<std::string> warnings;
  // As on the weight-only path, a model above kMaxEvalModelBytes is not judged (it would hold a
  // second copy, and each probe of the floor's search another one).
  const bool too_big = file_size(job.model_path) > kMaxEvalModelBytes;
  if (too_big && !job.data.path.empty() && job.guard)
    warnings.push_back(fmt::format("the model is over {} MB: its dynamic form was not judged on the samples",
                                   kMaxEvalModelBytes >> 20));
  if (!job.data.path.empty() && job.guard && !too_big) {
    t = clock_type::now();
    auto samples = open_samples(job.data, fp32, "--calib");
    std::vector<size_t> idx;
    for (size_t i = 0; i < std::min(samples->size(), kMaxJudgeSamples); ++i) idx.push_back(i);
    data::SelectedSource judged(samples, idx);
    report::ReferenceCache cache;
    const QualityFloor floor = floor_of(job);
    verdict = judge(fp32, model, judged, job.threads, &cache);
    std::string why;
    bool ok = meets_floor(*verdict, floor, &why);
    actions.push_back(fmt::format("judged on {} samples: {}{}", verdict->samples, describe_outputs(*verdict),
                                  ok ? "" : " (below the quality floor)"));
    if (!ok) {
      // Raise precision: score each node quantized alone on a few samples, keep the worst in float.
      std::vector<size_t> pidx(idx.begin(), idx.begin() + std::min(idx.size(), kProbeSamples));
      data::SelectedSource probe(samples, pidx);
      report::ReferenceCache probe_cache;
      // Nodes are told apart by their outputs (names may be empty or repeated). Copies: `s` becomes
      // the summary of the model kept below.
      const std::vector<std::string> outs = s.quantized_outputs, labels = s.quantized_nodes;
      std::vector<std::pair<double, size_t>> score;  // (output SQNR alone, index into s.quantized_*)
      for (size_t i = 0; i < outs.size(); ++i) {
        quant::DynamicOptions one = opt;
        for (size_t j = 0; j < outs.size(); ++j)
          if (j != i) one.exclude_outputs.insert(outs[j]);
        ir::Model m;
        size_t bw = 0;
        emit(m, fp32, one, &bw);
        score.emplace_back(worst_output_sqnr(judge(fp32, m, probe, job.threads, &probe_cache)), i);
      }
      std::sort(score.begin(), score.end());
      actions.push_back(fmt::format("probe: {} nodes quantized alone on {} samples; noisiest '{}' ({:.1f} dB)",
                                    score.size(), pidx.size(), labels[score.front().second],
                                    score.front().first));
      for (size_t k = 1; k < score.size() && !ok; k *= 2) {
        quant::DynamicOptions raised = opt;
        for (size_t i = 0; i < k; ++i) raised.exclude_outputs.insert(outs[score[i].second]);
        ir::Model m;
        size_t bw = 0;
        const quant::DynamicSummary sk = emit(m, fp32, raised, &bw);
        report::CompareResult r = judge(fp32, m, judged, job.threads, &cache);
        ok = meets_floor(r, floor, &why);
        actions.push_back(fmt::format("kept {} of {} nodes in float: {}{}", k, outs.size(),
                                      describe_outputs(r), ok ? "" : " (below the floor)"));
        if (ok || worst_output_sqnr(r) > worst_output_sqnr(*verdict)) {
          model = std::move(m);
          s = sk;
          verdict = std::move(r);
        }
      }
    }
    if (!ok)
      failure.emplace(ErrorCode::kQualityGate,
                      fmt::format("the dynamically quantized model is below the quality floor ({}); --min-sqnr / "
                                  "--min-agreement / --max-nll-increase set the floor, --force writes the model "
                                  "anyway{}",
                                  why, job.force ? "" : ": no model written"));
    timings.push_back({"evaluate", seconds_since(t)});
  } else if (job.data.path.empty()) {
    warnings.push_back("no samples given (--calib): the dynamic model's quality was not measured");
  }

  QuantizeOutcome out{report::make_quantize_report(job.model_path, job.out_path, model,
                                                   fmt::format("W8 {} dynamic A8", dtype_name(opt.weight_type))),
                      std::nullopt};
  out.report.output_file_bytes = 0;
  for (const quant::DynamicLayer& l : s.layers) {  // the graph reader does not parse MatMulInteger forms
    report::LayerReport r;
    r.node = l.node;
    r.op_type = l.op_type;
    r.weight = l.weight;
    r.precision = l.precision;
    r.bits = 8;
    r.scheme = l.scheme;
    r.method = "dynamic";
    r.params = l.params;
    r.fp32_bytes = 4 * l.params;
    r.bytes = l.bytes;
    out.report.layers.push_back(std::move(r));
  }
  out.report.actions = actions;
  out.report.warnings = warnings;
  if (verdict) {
    out.report.outputs = report::to_output_quality(*verdict);
    out.report.eval_samples = verdict->samples;
  }
  if (failure) {
    out.report.warnings.push_back(failure->what());
    out.gate_failure = failure;
  }
  if (!failure || job.force) {
    t = clock_type::now();
    model.source_path.clear();
    onnx_io::save_model(model, job.out_path);
    timings.push_back({"save", seconds_since(t)});
    report::measure_output_file(out.report);
  }
  if (job.max_drop && !out.gate_failure) {
    QTOOL_CHECK(verdict.has_value(), ErrorCode::kConfig, "--max-drop needs samples (--calib) and the guard");
    double agree = 2.0;
    for (const auto& o : out.report.outputs)
      if (!std::isnan(o.top1_agreement)) agree = std::min(agree, o.top1_agreement);
    const double drop = agree <= 1.0 ? 100.0 * (1.0 - agree) : 0.0;
    if (drop > *job.max_drop)
      out.gate_failure.emplace(ErrorCode::kQualityGate,
                               fmt::format("quality gate failed: top-1 agreement drop {:.2f} points (limit --max-drop {:.2f})",
                                           drop, *job.max_drop));
  }
  return out;
}

}  // namespace qtool::pipeline::detail
