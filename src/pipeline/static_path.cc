// The static W8A8 / W8A16 path of the quantize job: prepare, split the samples, calibrate, place
// Q/DQ, bias-correct, guard (pipeline/guard.h), save, evaluate, gate.
#include <algorithm>
#include <cmath>
#include <memory>
#include <optional>

#include <spdlog/spdlog.h>

#include "budget_internal.h"
#include "internal.h"
#include "qtool/calib/ranges.h"
#include "qtool/onnx_io/onnx_io.h"
#include "qtool/passes/qdq_to_qoperator.h"
#include "qtool/pipeline/guard.h"
#include "qtool/pipeline/sensitivity.h"
#include "qtool/quant/bias_correction.h"
#include "qtool/quant/budget.h"
#include "qtool/quant/plan.h"

namespace qtool::pipeline::detail {
namespace {

/// The job's static options, completed for the prepared model.
quant::StaticQuantConfig static_config(const QuantizeJob& job, const ir::Model& prepared) {
  quant::StaticQuantConfig cfg = job.static_cfg;
  cfg.threads = job.threads;
  // int8 weights by GPTQ (the default with 16-bit activations, where the weights' rounding is most
  // of the error: SqueezeNet 28.6 -> 33.0 dB, MobileNetV2 31.4 -> 33.2 dB) or rounded (the default
  // with 8-bit activations: GPTQ costs MobileNetV2 8 s there for +0.2 dB; BENCHMARKS.md).
  QTOOL_CHECK(!job.algorithm || *job.algorithm == quant::WeightAlgorithm::kRtn ||
                  *job.algorithm == quant::WeightAlgorithm::kGptq,
              ErrorCode::kConfig,
              "--weight-algorithm {}: static quantization rounds its weights (rtn) or runs GPTQ (gptq)",
              quant::weight_algorithm_name(*job.algorithm));
  cfg.gptq_int8 = job.algorithm && *job.algorithm == quant::WeightAlgorithm::kGptq;  // default: run_static
  // Bias correction: on by default for models with depthwise convs, where it raised top-1 and
  // agreement with FP32 on the shared models (MobileNetV2 per-tensor +0.8 points; per-channel +0.2
  // to +0.4 points and agreement +1.0 to +1.4 points; BENCHMARKS.md) and hurt nowhere it was tried.
  cfg.bias_correction = job.bias_correction.value_or(quant::has_depthwise_conv(prepared));
  if (cfg.bias_correction && !job.bias_correction)
    spdlog::info("bias correction: on by default for models with depthwise convs (--no-bias-correction to skip)");
  if (!job.op_types.empty()) {
    // Quantize only these op types: every other quantizable op type is excluded.
    for (const auto& n : prepared.graph->nodes())
      if (std::find(job.op_types.begin(), job.op_types.end(), n->op_type()) == job.op_types.end())
        cfg.qdq.exclude_op_types.insert(n->op_type());
  }
  return cfg;
}

/// The run's samples, split once: the calibration part and the part the guard checks on.
struct StaticSamples {
  std::shared_ptr<data::SelectedSource> all;  ///< null without --calib (ranges from a file)
  std::unique_ptr<data::SelectedSource> calib, held_out;
  bool guard = false;                          ///< the guard runs (samples, and not --no-guard)
  std::string warning;                         ///< the split's (GuardSplit::warning)
};

StaticSamples open_static_samples(const QuantizeJob& job, const ir::Model& model) {
  StaticSamples s;
  if (job.data.path.empty()) {
    s.calib = std::make_unique<data::SelectedSource>(nullptr, std::vector<size_t>{});
    return s;
  }
  s.all = open_samples(job.data, model, "--calib");
  spdlog::info("calibration data: {} samples from '{}' ({})", s.all->size(), job.data.path, s.all->kind());
  s.guard = job.guard;
  GuardSplit split = split_for_guard(s.all->size(), s.guard);
  s.calib = std::make_unique<data::SelectedSource>(s.all, std::move(split.calib));
  s.held_out = std::make_unique<data::SelectedSource>(s.all, std::move(split.held_out));
  s.held_out->keep_loaded(size_t{256} << 20);  // the guard's comparisons, probe and evaluation read them again
  s.guard = s.guard && s.held_out->size() > 0;
  s.warning = std::move(split.warning);
  return s;
}

/// What the static quantization produced, before saving.
struct StaticRun {
  quant::StaticEmission emitted;
  std::optional<GuardResult> guard;              ///< nullopt when the guard did not run
  std::vector<std::string> actions, warnings;    ///< in the order the report lists them
  std::map<std::string, Tensor> equalized_weights;
  std::vector<report::Timing> timings;           ///< its phases ("quantize: calibrate", ...)
};

/// Calibrates, emits, bias-corrects and guards the prepared model (`reference`).
/// `planned` (a --plan's per-tensor choices) applies from the first emission; `search` lets the
/// guard raise tensors (off with a --plan: the plan decides).
StaticRun quantize_guarded(const ir::Model& reference, const quant::StaticQuantConfig& cfg, StaticSamples& samples,
                           const QualityFloor& floor, const quant::TensorChoices& planned = {}, bool search = true,
                           const ir::Model* calibrate_on = nullptr) {
  auto t = clock_type::now();
  quant::CalibratedModel calibrated = quant::calibrate_static(calibrate_on ? *calibrate_on : reference, *samples.calib, cfg);
  const double t_calib = seconds_since(t);
  t = clock_type::now();
  StaticRun run{quant::emit_static(calibrated, planned, cfg), std::nullopt, std::move(calibrated.actions), {}, {}, {}};
  run.timings.push_back({"quantize: calibrate", t_calib});
  run.timings.push_back({"quantize: emit", seconds_since(t)});
  if (!samples.warning.empty()) run.warnings.push_back(samples.warning);
  t = clock_type::now();
  if (std::string a = quant::correct_static_biases(calibrated, run.emitted.model, *samples.calib, cfg); !a.empty())
    run.actions.push_back(std::move(a));
  run.timings.push_back({"quantize: bias correction", seconds_since(t)});
  t = clock_type::now();
  if (samples.guard) {
    GuardOptions go;
    go.search = search;
    go.floor = floor;
    go.extend_with_calib = samples.warning.empty();  // else the held-out samples are the calibration ones
    run.guard = run_guard(reference, calibrated, cfg, *samples.calib, *samples.held_out, run.emitted, go, planned);
    run.actions.insert(run.actions.end(), run.guard->actions.begin(), run.guard->actions.end());
    run.warnings.insert(run.warnings.end(), run.guard->warnings.begin(), run.guard->warnings.end());
    run.timings.push_back({"quantize: guard", seconds_since(t)});
    run.timings.insert(run.timings.end(), run.guard->timings.begin(), run.guard->timings.end());
  }
  if (std::string a = quant::subgraph_note(run.emitted); !a.empty()) run.actions.push_back(std::move(a));
  run.equalized_weights = std::move(calibrated.equalized_weights);
  return run;
}

/// The model whose weights hold GPTQ's levels (per output channel, symmetric, fitted on the
/// calibration samples' input Hessians), for calibration and emission; the FP32 reference stays the
/// guard's and the evaluation's:
/// - W4A8 (QdqOptions::weight_bits): the 4-bit layers' int4 weights (quantize_weight4 finds their
///   grid exactly);
/// - with cfg.gptq_int8, every other Conv/Gemm/MatMul weight's int8 levels, whose channel scales go
///   to cfg.qdq.weight_scales (the emitter reproduces the levels exactly).
/// nullopt when there is nothing to do or no samples (RTN then). `layers` gets the 4-bit layers.
constexpr size_t kInt8GptqSamples = 64;

std::optional<ir::Model> gptq_model(const ir::Model& prepared, quant::StaticQuantConfig& cfg, data::SampleSource* calib,
                                    int threads, std::vector<std::string>& actions,
                                    std::vector<WeightSwap>* layers = nullptr,
                                    std::shared_ptr<quant::CalibrationStatsCache> cache = nullptr) {
  cfg.qdq.weight_scales.clear();
  const bool any4 = std::any_of(cfg.qdq.weight_bits.begin(), cfg.qdq.weight_bits.end(),
                                [](const auto& r) { return r.second == 4; });
  const bool int8 = cfg.gptq_int8 && cfg.qdq.per_channel && !cfg.qdq.reduce_range && !cfg.cle;
  if (cfg.gptq_int8 && !int8)
    actions.push_back("int8 weights: rounded (GPTQ's weights need per-channel scales, without --reduce-range or --cle)");
  const bool samples = calib != nullptr && calib->size() > 0;
  if (int8 && !samples) actions.push_back("int8 weights: rounded (GPTQ needs calibration samples: --calib)");
  if ((!any4 && !int8) || !samples) return std::nullopt;
  quant::WeightOnlyConfig w;
  w.bits = "int4";
  w.layer_bits.push_back({"*", int8 ? "int8" : "float"});  // without int8: only the layers the rules put at 4 bits
  w.bits_first_last = "";
  w.bits_depthwise = "";
  w.block_size = 0;
  w.symmetric = true;
  w.algorithm = quant::WeightAlgorithm::kGptq;
  w.gptq_int8 = int8;
  w.quantize_embedding = false;
  w.keep_dequantized = true;
  w.threads = threads;
  for (const auto& [pattern, bits] : cfg.qdq.weight_bits)
    w.layer_bits.push_back({pattern, bits == 4 ? "int4" : int8 ? "int8" : "float"});
  for (const auto& x : cfg.qdq.exclude_nodes) w.exclude.push_back(x);
  for (const auto& n : prepared.graph->nodes())
    if (cfg.qdq.exclude_op_types.count(n->op_type()) && !n->name().empty()) w.exclude.push_back(n->name());
  ir::Model scratch = prepared.clone();
  quant::CalibrationInputs ci;
  ci.source = calib;
  ci.cache = std::move(cache);
  // int8 alone: the Hessians of 64 samples (a conv sees thousands of rows per sample) keep the pass
  // short. W8A16, 64 against 128 samples: SqueezeNet 34.1 / 33.0 dB, MobileNetV2 33.0 / 33.2 dB, in
  // 7.6 / 10.6 s and 14.4 / 15.4 s.
  if (!any4) ci.max_samples = kInt8GptqSamples;
  const quant::WeightOnlyReport rep = quant::apply_weight_only(scratch, w, &ci);
  ir::Model m = prepared.clone();
  size_t replaced4 = 0, replaced8 = 0;
  for (const quant::WeightOnlyLayer& l : rep.layers) {
    ir::Value* v = m.graph->find_value(l.weight);
    if (l.format == "float" || l.dequantized.numel() == 0 || v == nullptr || !v->is_initializer()) continue;
    if (l.format == "int8") {
      if (l.algorithm.rfind("gptq", 0) != 0 || l.channel_scales.empty()) continue;  // rounded: the emitter's own grid
      cfg.qdq.weight_scales[l.weight] = l.channel_scales;
      v->set_initializer(l.dequantized);
      ++replaced8;
      continue;
    }
    v->set_initializer(l.dequantized);
    if (layers) layers->push_back({{l.weight, l.dequantized}});
    ++replaced4;
  }
  if (replaced4 > 0)
    actions.push_back(fmt::format("W4A8: {} weights at 4 bits (int4 per output channel, GPTQ on {} calibration samples; "
                                  "stored packed, read through Cast(to=int8) by the int8 DequantizeLinear)",
                                  replaced4, calib->size()));
  if (replaced8 > 0)
    actions.push_back(fmt::format("int8 weights: GPTQ on {} calibration samples for {} weights (per output channel)",
                                  any4 ? calib->size() : std::min(calib->size(), kInt8GptqSamples), replaced8));
  if (replaced4 == 0 && replaced8 == 0) return std::nullopt;
  return m;
}

/// W4A8 below the quality floor: the 4-bit layers that cost the most output quality alone (each
/// one's GPTQ int4 weights on the float model, on held-out samples) go back to 8 bits, 1, 2, 4, ...
/// of them, each try calibrated, emitted and guarded again, until the floor holds; the activations
/// stay 8-bit where they can, so the model keeps its INT8 speed. `cfg` and `run` become the try that
/// holds (unchanged when none does: the 16-bit floor run and exit 3 follow).
void raise_w4_weights(const ir::Model& reference, quant::StaticQuantConfig& cfg, StaticSamples& samples,
                      const QualityFloor& floor, int threads, const std::vector<WeightSwap>& layers,
                      const std::shared_ptr<quant::CalibrationStatsCache>& cache, StaticRun& run) {
  std::string why;
  if (meets_floor(run.guard->comparison, floor, &why)) return;
  // Only the weights this plan has at 4 bits (the last rule naming a weight decides; a budget's
  // plan names every weight, '*=4' all of them).
  auto at4 = [&](const std::string& weight) {
    std::vector<std::string> names{weight};
    if (const ir::Value* v = reference.graph->find_value(weight))
      for (const auto& u : v->uses()) names.push_back(u.node->name());
    int bits = 8;
    for (const auto& rule : cfg.qdq.weight_bits)
      for (const std::string& n : names)
        if (quant::glob_match(rule.first, n)) bits = rule.second;
    return bits == 4;
  };
  std::vector<WeightSwap> at_4;  // measured alone, noisiest first
  for (const WeightSwap& l : layers)
    if (at4(l.front().first)) at_4.push_back(l);
  if (at_4.empty()) return;
  const std::vector<Quality> alone = score_weight_swaps(
      reference, at_4, *samples.held_out, std::min(samples.held_out->size(), kBudgetSamples), threads);
  std::vector<size_t> order(at_4.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return alone[a].sqnr_db < alone[b].sqnr_db; });
  run.actions.push_back(fmt::format("W4A8 below the quality floor ({}): raising the 4-bit weights that cost the most "
                                    "to 8 bits ({} candidates)",
                                    why, order.size()));
  for (size_t k = 1; !order.empty(); k = std::min(order.size(), 2 * k)) {
    quant::StaticQuantConfig c = cfg;
    for (size_t i = 0; i < k; ++i) c.qdq.weight_bits.emplace_back(at_4[order[i]].front().first, 8);
    std::vector<std::string> actions;
    const std::optional<ir::Model> m = gptq_model(reference, c, samples.calib.get(), threads, actions, nullptr, cache);
    StaticRun r = quantize_guarded(reference, c, samples, floor, {}, true, m ? &*m : nullptr);
    const bool ok = meets_floor(r.guard->comparison, floor, &why);
    run.actions.push_back(fmt::format("{} of {} weights at 8 bits: {}{}", k, order.size(),
                                      describe_outputs(r.guard->comparison), ok ? "" : " (below the floor)"));
    if (ok) {
      // The try's own "W4A8: N weights at 4 bits" line first, then the first run's story (without its
      // own such line, whose count no longer holds), then the try's guard.
      std::vector<std::string> story = std::move(actions);
      for (std::string& a : run.actions)
        if (a.rfind("W4A8: ", 0) != 0) story.push_back(std::move(a));
      r.actions.insert(r.actions.begin(), story.begin(), story.end());
      run = std::move(r);
      cfg = std::move(c);
      return;
    }
    if (k == order.size()) return;
  }
}

/// --keep-int8-speed with --target-size / --target-bpw: each weight is int8 or int4 (W4A8, read as int8:
/// the same INT8 kernels), chosen by the budget solver (quant/budget.h) from each layer's measured
/// cost at 4 bits (its GPTQ int4 weights alone on the float model, on held-out samples; int8 counted
/// as exact). A size target is corrected on the written model (at most three calibrated, guarded
/// runs). Returns the run of the chosen plan; `cfg` gets its weight_bits, `w4_layers` every layer's
/// int4 weights (for the raise below the floor).
StaticRun w4a8_budget(const QuantizeJob& job, const ir::Model& reference, quant::StaticQuantConfig& cfg,
                      StaticSamples& samples, const QualityFloor& floor,
                      const std::shared_ptr<quant::CalibrationStatsCache>& cache, std::vector<WeightSwap>& w4_layers,
                      std::optional<report::BudgetSummary>& summary) {
  QTOOL_CHECK(samples.guard && samples.held_out, ErrorCode::kConfig,
              "--target-size / --target-bpw measure each layer on held-out samples: give --calib (and no --no-guard)");
  const auto t0 = clock_type::now();
  quant::StaticQuantConfig all4 = cfg;
  all4.qdq.weight_bits = {{"*", 4}};
  std::vector<std::string> ignored;
  gptq_model(reference, all4, samples.calib.get(), job.threads, ignored, &w4_layers, cache);
  const size_t n = std::min<size_t>(samples.held_out->size(), kBudgetSamples);
  const std::vector<Quality> q = score_weight_swaps(reference, w4_layers, *samples.held_out, n, job.threads);
  std::vector<quant::BudgetLayer> layers;
  int64_t params = 0;
  for (size_t i = 0; i < w4_layers.size(); ++i) {
    const Tensor& w = w4_layers[i].front().second;
    const int64_t numel = w.numel(), scales = 4 * (w.rank() > 0 ? w.shape()[0] : 1);
    quant::BudgetLayer l;
    l.weight = w4_layers[i].front().first;
    l.params = numel;
    l.candidates = {{"int8", numel + scales, 0.0}, {"int4", (numel + 1) / 2 + scales, noise_of(q[i])}};
    params += numel;
    layers.push_back(std::move(l));
  }
  QTOOL_CHECK(!layers.empty(), ErrorCode::kUnsupported, "--keep-int8-speed: no Conv/MatMul/Gemm weight of '{}' to plan",
              job.model_path);
  summary.emplace();
  report::BudgetSummary& sum = *summary;
  sum.target = job.budget.describe() + ", INT8 speed";
  sum.candidates = {"int8 per channel", "int4 per channel (GPTQ), read as int8"};
  sum.measurements = layers.size();
  sum.samples = n;
  for (const quant::BudgetPoint& p : quant::budget_curve(layers)) sum.curve.push_back({p.bytes, sqnr_of_noise(p.noise)});
  auto rules_of = [&](const quant::BudgetPoint& p) {
    std::vector<std::pair<std::string, int>> r;
    for (size_t i = 0; i < layers.size(); ++i) r.emplace_back(layers[i].weight, p.choice[i] == 1 ? 4 : 8);
    return r;
  };
  auto realize = [&](const quant::BudgetPoint& p, quant::StaticQuantConfig& c) {
    c = cfg;
    c.qdq.weight_bits = rules_of(p);
    std::vector<std::string> actions;
    const std::optional<ir::Model> m =
        gptq_model(reference, c, samples.calib.get(), job.threads, actions, nullptr, cache);
    StaticRun r = quantize_guarded(reference, c, samples, floor, {}, true, m ? &*m : nullptr);
    r.actions.insert(r.actions.begin(), actions.begin(), actions.end());
    return r;
  };
  std::optional<StaticRun> best;
  quant::BudgetPoint chosen;
  quant::StaticQuantConfig best_cfg = cfg;
  if (job.budget.kind == SizeBudget::Kind::kBitsPerWeight) {
    sum.target_bits_per_weight = job.budget.value;
    sum.weight_budget_bytes = bits_per_weight_budget(job.budget, params);
    chosen = quant::solve_budget(layers, sum.weight_budget_bytes);
    best.emplace(realize(chosen, best_cfg));
  } else {
    const int64_t fp32_file = file_size(job.model_path);
    sum.target_file_bytes = job.budget.file_bytes(fp32_file);
    std::optional<StaticRun> last;
    quant::StaticQuantConfig last_cfg;
    const std::optional<quant::BudgetPoint> fit = fit_file_size(
        layers, job.budget, sum.target_file_bytes, fp32_file - 4 * params, 3,  // each write is a guarded run
        [&](const quant::BudgetPoint& p) {
          last.emplace(realize(p, last_cfg));
          return static_cast<int64_t>(onnx_io::serialize_model(last->emitted.model).size());
        },
        [&](const quant::BudgetPoint&, int64_t weights) {
          best = std::move(last);
          best_cfg = last_cfg;
          sum.weight_budget_bytes = weights;
        });
    QTOOL_CHECK(fit.has_value(), ErrorCode::kConfig,
                "--target-size {}: no mix of int8 and int4 weights gives a file within {} bytes (the smallest, every "
                "weight at 4 bits, is larger)",
                job.budget.describe(), sum.target_file_bytes);
    chosen = *fit;
  }
  cfg = std::move(best_cfg);
  summarize_choice(sum, layers, chosen);
  sum.seconds = seconds_since(t0);
  best->actions.insert(best->actions.begin(),
                       fmt::format("budget search ({}): {} weights measured at 4 bits on {} held-out samples; chosen "
                                   "{} B of weights, {:.2f} bits per weight ({} int4, {} int8), predicted output SQNR "
                                   "{:.1f} dB ({:.1f} s)",
                                   sum.target, layers.size(), n, chosen.bytes, sum.bits_per_weight,
                                   sum.layers_by_format["int4"], sum.layers_by_format["int8"],
                                   sum.chosen.predicted_sqnr_db, sum.seconds));
  return std::move(*best);
}

/// The 16-bit twin of an 8-bit activation type.
DataType widened(DataType t) { return t == DataType::kInt8 ? DataType::kInt16 : DataType::kUint16; }

/// The quality floor (guard.h): a model below it gets 16-bit activations (a second calibration of
/// `original`, the model as given, prepared at opset 21 as --activation-bits 16 prepares it; none
/// with a --plan: nullptr), on the same samples; when even that is below the floor, the
/// run fails with kQualityGate (no model is written unless --force). Nothing to judge without the
/// guard's held-out comparison. Returns the failure, if any; `run` and `bits` become the 16-bit
/// run when it is kept.
std::optional<Error> apply_floor(const QuantizeJob& job, const ir::Model* original, const quant::StaticQuantConfig& cfg,
                                 StaticSamples& samples, StaticRun& run, int& bits) {
  if (!run.guard) return std::nullopt;
  const QualityFloor floor = floor_of(job);
  std::string why;
  if (meets_floor(run.guard->comparison, floor, &why)) return std::nullopt;
  run.actions.push_back("quality floor: below it with " + std::to_string(bits) + "-bit activations (" + why + ")");
  const bool raise = bits == 8 && original;
  if (raise) {  // the same preparation as a run with --activation-bits 16
    ir::Model wide = original->clone();
    quant::prepare_model(wide, 21);
    quant::StaticQuantConfig c16 = cfg;
    c16.qdq.activation_type = widened(cfg.qdq.activation_type);
    // 16-bit activations leave the int8 weights' rounding in front: GPTQ's weights, as a run with
    // --activation-bits 16 has them (unless --weight-algorithm rtn).
    if (!job.algorithm) c16.gptq_int8 = true;
    std::vector<std::string> gptq_actions;
    const std::optional<ir::Model> gptq = gptq_model(wide, c16, samples.calib.get(), job.threads, gptq_actions);
    StaticRun r16 = quantize_guarded(wide, c16, samples, floor, {}, true, gptq ? &*gptq : nullptr);
    r16.actions.insert(r16.actions.begin(), gptq_actions.begin(), gptq_actions.end());
    std::string why16;
    const bool ok = meets_floor(r16.guard->comparison, floor, &why16);
    run.actions.push_back(fmt::format("quality floor: activations raised to 16 bits: {}{}",
                                      describe_outputs(r16.guard->comparison), ok ? "" : " (still below the floor)"));
    if (ok || worst_output_sqnr(r16.guard->comparison) > worst_output_sqnr(run.guard->comparison)) {
      r16.actions.insert(r16.actions.begin(), run.actions.begin(), run.actions.end());
      run = std::move(r16);
      bits = 16;
    }
    if (ok) return std::nullopt;
    why = why16;
  }
  return Error(ErrorCode::kQualityGate,
               fmt::format("the quantized model is below the quality floor ({}){}{}; "
                           "--min-sqnr / --min-agreement set the floor, --force writes the model anyway",
                           why, raise || bits == 16 ? " even with 16-bit activations" : " (--plan: not raised)",
                           job.force ? "" : ": no model written"));
}

/// --max-drop on the static path: the guard's top-1 agreement drop, or a model that looks broken.
std::optional<Error> check_max_drop(const QuantizeJob& job, const std::optional<GuardResult>& guard) {
  if (!job.max_drop) return std::nullopt;
  QTOOL_CHECK(guard.has_value(), ErrorCode::kConfig,
              "--max-drop needs the quality guard (calibration data) to measure agreement");
  const double agree = guard->min_top1_agreement();
  const double drop = std::isnan(agree) ? 0.0 : 100.0 * (1.0 - agree);
  if (drop <= *job.max_drop && !guard->looks_broken) return std::nullopt;
  return Error(ErrorCode::kQualityGate,
               fmt::format("quality gate failed: top-1 agreement drop {:.2f} points (limit --max-drop {:.2f}){}", drop,
                           *job.max_drop, guard->looks_broken ? "; the model looks broken" : ""));
}

/// Rewrites `model` into the QOperator form (--format qoperator) and logs what was fused.
void to_qoperator(ir::Model& model) {
  // The same integer ops ONNX Runtime fuses the QDQ form into, written out (groups it would
  // leave in float stay QDQ).
  const passes::QOperatorReport fused = passes::fuse_qdq_to_qoperator(model);
  std::string what;
  for (const auto& [op, n] : fused.fused) what += fmt::format("{}{} {}", what.empty() ? "" : ", ", n, op);
  spdlog::info("QOperator form: {} groups rewritten ({})", fused.rewrites, what.empty() ? "none" : what);
}

}  // namespace

QuantizeOutcome run_static(const QuantizeJob& job, ir::Model& model, std::vector<report::Timing>& timings) {
  QTOOL_CHECK(!job.data.path.empty() || !job.ranges_path.empty(), ErrorCode::kConfig,
              "static quantization needs calibration data (--calib DIR) or --ranges FILE");
  auto t = clock_type::now();
  std::optional<quant::StaticPlan> plan;
  if (!job.plan_path.empty()) plan = quant::load_static_plan(job.plan_path);
  int bits = plan ? dtype_bits(plan->activation_type) : job.activation_bits;
  QTOOL_CHECK(job.activation_bits == 8 || bits == job.activation_bits, ErrorCode::kConfig,
              "--activation-bits {} contradicts the {} activations of plan '{}'", job.activation_bits,
              plan ? dtype_name(plan->activation_type) : "", job.plan_path);
  // The model as given, for the floor's 16-bit run (prepared the way --activation-bits 16 prepares it).
  std::optional<ir::Model> original;
  if (!plan && bits == 8 && job.guard) original.emplace(model.clone());
  const bool w4 = std::any_of(job.static_cfg.qdq.weight_bits.begin(), job.static_cfg.qdq.weight_bits.end(),
                              [](const auto& r) { return r.second == 4; }) ||
                        job.budget.active();
  const int64_t target_opset = bits == 16 || w4 ? 21 : 13;  // int4 levels need opset 21
  const size_t rewrites = quant::prepare_model(model, target_opset);
  spdlog::info("prepared '{}': {} rewrites, opset {}", job.model_path, rewrites, model.opset(""));
  quant::StaticQuantConfig cfg = static_config(job, model);
  // Without --weight-algorithm: GPTQ with 16-bit activations, given or a --plan's (which replays a
  // 16-bit floor run's GPTQ weights); see static_config.
  if (!job.algorithm) cfg.gptq_int8 = bits == 16;
  std::optional<calib::RangesFile> ranges;
  if (!job.ranges_path.empty()) {
    ranges = calib::load_ranges(job.ranges_path);
    cfg.ranges = &*ranges;
  }
  StaticSamples samples = open_static_samples(job, model);
  const std::map<std::string, Tensor> fp32_weights = float_weights(model);
  // The prepared FP32 model stays as the reference of the guard and the evaluation.
  const ir::Model reference = std::move(model);
  // Calibration, Q/DQ placement and the guard (the held-out check) are timed together as "quantize".
  quant::TensorChoices planned;
  if (plan) {
    cfg.qdq.activation_type = plan->activation_type;
    for (const auto& entry : plan->float_tensors) planned.keep_float.insert(entry.first);
    planned.wide = plan->wide_tensors;
    planned.observed = plan->observed_range;
  }
  const QualityFloor floor = floor_of(job);
  std::vector<std::string> w4_actions;
  std::vector<WeightSwap> w4_layers;
  const auto w4_cache = quant::make_stats_cache();  // the raise below quantizes again without calibrating again
  std::optional<report::BudgetSummary> budget;
  std::optional<StaticRun> first;
  bool w4_run = false;
  if (job.budget.active()) {
    QTOOL_CHECK(!plan, ErrorCode::kConfig, "--target-size / --target-bpw choose the plan; --plan gives one: use one of them");
    first.emplace(w4a8_budget(job, reference, cfg, samples, floor, w4_cache, w4_layers, budget));
    w4_run = budget->layers_by_format.count("int4") > 0;
  } else {
    const auto t_gptq = clock_type::now();
    const std::optional<ir::Model> gptq =
        gptq_model(reference, cfg, samples.calib.get(), job.threads, w4_actions, &w4_layers, w4_cache);
    const double gptq_seconds = seconds_since(t_gptq);
    first.emplace(quantize_guarded(reference, cfg, samples, floor, planned, !plan, gptq ? &*gptq : nullptr));
    first->actions.insert(first->actions.begin(), w4_actions.begin(), w4_actions.end());
    if (gptq) first->timings.insert(first->timings.begin(), report::Timing{"quantize: GPTQ weights", gptq_seconds});
    w4_run = !w4_layers.empty();
  }
  StaticRun run = std::move(*first);
  if (plan)
    run.actions.push_back(fmt::format("--plan: {} activations, {} at 16 bits, {} kept in float",
                                      dtype_name(plan->activation_type), planned.wide.size(),
                                      planned.keep_float.size()));
  if (w4_run && run.guard && !plan)
    raise_w4_weights(reference, cfg, samples, floor, job.threads, w4_layers, w4_cache, run);
  const int bits_before = bits;
  std::vector<report::Timing> phases = run.timings;
  const auto t_floor = clock_type::now();
  std::optional<Error> floor_failure = apply_floor(job, original ? &*original : nullptr, cfg, samples, run, bits);
  const double floor_seconds = seconds_since(t_floor);
  if (floor_seconds > 0.05) phases.push_back({"quantize: 16-bit floor run", floor_seconds});
  if (bits != bits_before) cfg.qdq.activation_type = widened(cfg.qdq.activation_type);
  model = std::move(run.emitted.model);
  timings.push_back({"quantize", seconds_since(t)});
  timings.insert(timings.end(), phases.begin(), phases.end());
  QTOOL_CHECK(run.emitted.qdq.quantized_nodes > 0 || run.emitted.body_weights > 0, ErrorCode::kUnsupported,
              "no node of '{}' was quantized (nothing quantizable, or everything excluded); nothing is written",
              job.model_path);
  if (job.qoperator && bits == 8) to_qoperator(model);
  if (job.qoperator && bits != 8)
    run.warnings.push_back("--format qoperator needs 8-bit activations: the 16-bit model is written as QDQ");
  // A size budget is a hard limit too: when the quality floor took weights back to 8 bits past it,
  // the budget and the floor cannot both hold (exit 3, no model unless --force).
  if (budget && !floor_failure && budget->target_file_bytes > 0) {
    const int64_t size = static_cast<int64_t>(onnx_io::serialize_model(model).size());
    if (size > budget->target_file_bytes)
      floor_failure = Error(ErrorCode::kQualityGate,
                            fmt::format("--target-size {}: the quality floor needed {} B, over the budget of {} B (W8A8 "
                                        "weights where the floor asked for them); raise the budget, or lower the floor "
                                        "(--min-agreement, --min-sqnr){}",
                                        job.budget.describe(), size, budget->target_file_bytes,
                                        job.force ? "" : ": no model written"));
  }
  const bool write = !floor_failure || job.force;
  t = clock_type::now();
  model.source_path.clear();
  if (write) onnx_io::save_model(model, job.out_path);
  if (write && !job.plan_out.empty()) {
    std::vector<std::string> quantized;
    for (const auto& entry : run.emitted.qdq.activation_params) quantized.push_back(entry.first);
    std::sort(quantized.begin(), quantized.end());
    std::map<std::string, std::string> kept = plan ? plan->float_tensors : std::map<std::string, std::string>{};
    quant::StaticPlan written;
    written.activation_type = cfg.qdq.activation_type;
    if (run.guard) {
      for (const std::string& t : run.guard->choices.keep_float)
        kept.emplace(t, plan ? "--plan" : "guard: quantized it ruins the output");
      written.wide_tensors = run.guard->choices.wide;
      written.observed_range = run.guard->choices.observed;
    }
    written.float_tensors = std::move(kept);
    const std::string reason = plan ? "--plan" : bits != job.activation_bits ? "quality floor" : "";
    write_file_atomic(job.plan_out, quant::static_plan_to_json(quantized, written, reason).dump(2) + "\n");
  }
  timings.push_back({"save", seconds_since(t)});

  const quant::QdqSummary& qdq = run.emitted.qdq;
  spdlog::info("quantized {} -> {}: W8A{} QDQ ({}, {} activations), {} nodes quantized, {} weights, {} biases, "
               "{} Relu/Clip folded",
               job.model_path, job.out_path, bits, cfg.method, dtype_name(cfg.qdq.activation_type),
               qdq.quantized_nodes, qdq.quantized_weights, qdq.quantized_biases, qdq.folded_activations);
  const bool all4 = qdq.int4_weights > 0 && qdq.int4_weights == qdq.quantized_weights;
  std::string headline = fmt::format("W{}A{} {}", all4 ? 4 : 8, bits, job.qoperator && bits == 8 ? "QOperator" : "QDQ");
  if (qdq.int4_weights > 0 && !all4) headline += fmt::format(", {} weights at 4 bits", qdq.int4_weights);
  if (budget) headline += " (" + job.budget.describe() + ")";
  if (!qdq.wide_activations.empty()) headline += fmt::format(", {} activations at 16 bits", qdq.wide_activations.size());
  QuantizeOutcome out{report::make_quantize_report(job.model_path, job.out_path, model, headline), std::nullopt};
  out.report.budget = budget;
  if (write) report::measure_output_file(out.report);
  for (auto& l : out.report.layers)
    if (l.method.empty() && l.precision != "fp32" && l.precision != "fp16") l.method = cfg.method;
  fill_weight_sqnr(out.report, model, run.equalized_weights.empty() ? fp32_weights : run.equalized_weights);
  if (run.guard) {
    out.report.outputs = report::to_output_quality(run.guard->comparison);
    out.report.eval_samples = run.guard->comparison.samples;
    // Per-layer output SQNR is only shown in --report/--json, so the extra held-out run is only paid for then.
    if (job.per_layer_eval && file_size(job.model_path) <= kMaxEvalModelBytes) {
      t = clock_type::now();
      evaluate_layers_into(out.report, reference, model, *samples.held_out, job.threads, kLayerEvalSamples);
      timings.push_back({"evaluate", seconds_since(t)});
    }
  }
  // What the pipeline did beyond the defaults (CLE, bias correction, tensors the guard kept in float, ...).
  for (const auto& s : run.actions) out.report.actions.push_back(s);
  for (const auto& w : run.warnings) {
    spdlog::warn("{}", w);
    out.report.warnings.push_back(w);
  }
  out.gate_failure = floor_failure ? floor_failure : check_max_drop(job, run.guard);
  if (floor_failure) out.report.warnings.push_back(floor_failure->what());
  return out;
}

}  // namespace qtool::pipeline::detail
