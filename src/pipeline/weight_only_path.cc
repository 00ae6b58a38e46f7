// The weight-only path of the quantize job: plan, GPTQ/AWQ/RTN, tuning, evaluation.
#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <set>
#include <functional>

#include <spdlog/spdlog.h>

#include "budget_internal.h"
#include "internal.h"
#include "qtool/core/npy.h"
#include "qtool/onnx_io/onnx_io.h"
#include "qtool/passes/fold_constants.h"
#include "qtool/passes/remove_initializer_inputs.h"
#include "qtool/quant/plan.h"

namespace qtool::pipeline::detail {
namespace {

/// A report row from the quantizer's record of a layer it wrote in a form the graph reader does not
/// parse (the Cast / Gather forms: --format cast, fp4).
report::LayerReport row_of(const quant::WeightOnlyLayer& w) {
  report::LayerReport l;
  l.node = w.node;
  l.op_type = w.op_type;
  l.weight = w.stored;
  l.precision = w.precision;
  const quant::WeightFormat* f = quant::find_weight_format(w.format);
  l.bits = f ? f->bits : 32;
  l.scheme = w.scheme;
  l.symmetric = w.symmetric;
  l.params = w.rows * w.cols;
  l.fp32_bytes = 4 * l.params;
  l.bytes = w.bytes;
  l.scales = {w.scale_count, w.scale_min, w.scale_max, w.scale_mean};
  l.sparsity = w.sparsity;
  l.pruning = w.pruning;
  l.sparse_storage = w.sparse_storage;
  return l;
}

/// The quantizer's per-layer records joined to the report rows the report reads from the emitted
/// graph, by exact stored name or by the consuming node: the quantizer's precision (the table row:
/// "ternary", "fp8", not a guess from the stored values), errors and methods; layers the graph
/// reader does not parse get their row from the record.
void join_layers(report::QuantizeReport& report, const quant::WeightOnlyReport& rep) {
  for (const auto& w : rep.layers) {
    if (w.format == "float" || w.stored.empty()) continue;
    const bool listed = std::any_of(report.layers.begin(), report.layers.end(),
                                    [&](const report::LayerReport& l) { return l.weight == w.stored; });
    if (!listed) report.layers.push_back(row_of(w));
  }
  for (auto& l : report.layers) {
    for (const auto& w : rep.layers) {
      const bool same_weight = !w.weight.empty() && (l.weight == w.weight || l.weight == w.stored ||
                                                     l.weight == w.weight + "_quantized");
      if (!w.weight.empty() && l.weight == w.weight + "_outlier_quantized") {  // --outlier-fraction branch
        l.method = "rtn";
        l.note = fmt::format("int8 outlier columns of '{}'", w.weight);
        break;
      }
      if (!same_weight && (w.node.empty() || w.node != l.node)) continue;
      if (w.format != "float") l.weight_sqnr_db = sqnr_from_rel_mse(w.weight_rel_mse);
      if (!w.precision.empty()) l.precision = w.precision;
      if (w.format != "float") {
        l.sparsity = w.sparsity;
        l.pruning = w.pruning;
        l.sparse_storage = w.sparse_storage;
      }
      l.method = w.algorithm;
      l.note = w.note;
      break;
    }
  }
}

/// The outputs that look broken (a classifier agreeing with FP32 on under half of the rows, or an
/// SQNR under 5 dB: the static guard's "looks broken"), as text; "" when none (or nothing measured).
std::string broken_outputs(const std::vector<report::OutputQuality>& outputs) {
  std::string s;
  for (const auto& o : outputs) {
    const bool bad_top1 = !std::isnan(o.top1_agreement) && o.top1_agreement < 0.5;
    const bool bad_sqnr = !std::isnan(o.sqnr_db) && o.sqnr_db < 5.0;
    if (bad_top1 || bad_sqnr)
      s += fmt::format("{}{}: SQNR {:.1f} dB{}", s.empty() ? "" : "; ", o.name, o.sqnr_db,
                       std::isnan(o.top1_agreement) ? "" : fmt::format(", top-1 agreement {:.1f}%", 100.0 * o.top1_agreement));
  }
  return s;
}

/// A token model: an integer graph input read by a Gather on a float table (an embedding), as
/// language models are.
bool is_token_model(const ir::Model& model) {
  for (const ir::Value* in : model.graph->inputs()) {
    if (!dtype_is_integer(in->type().elem_type)) continue;
    for (const auto& u : in->uses())
      if (u.node->op_type() == "Gather" && u.index == 1 && u.node->input(0) && u.node->input(0)->initializer() &&
          u.node->input(0)->initializer()->dtype() == DataType::kFloat)
        return true;
  }
  return false;
}

/// The defaults of `--bits N --calib DIR` with nothing else, measured on the shared models
/// (README "Defaults of the weight-only path"; BENCHMARKS.md):
///  - calibration data, not a token model: GPTQ with zero points (SqueezeNet -2.6, MobileNetV2 -1.4
///    top-1 points on the 500 evaluation images, where symmetric RTN lost 9.2 and 13.0);
///  - calibration data, a token model: RTN with zero points and 200 steps of distillation tuning,
///    the best start for tuning measured (stories260K +1.7% / +0.9% NLL; GPTQ alone +0.8% / +4.1%);
///  - fp8 with calibration data: GPTQ in act order, not tuned (stories260K +0.49% / +0.13% NLL,
///    GPTQ +0.63% / +0.15%, RTN +0.94% / +0.34%);
///  - fp4 as the integer widths: on a token model RTN and 200 tuning steps (stories260K block 32
///    +1.73% / +1.34%, where GPTQ in act order without tuning gave +6.50% / +1.09%);
///  - no calibration data: symmetric RTN (nothing to fit or measure on).
/// Returns the action line that says what was chosen ("" when every choice was given).
std::string apply_defaults(const QuantizeJob& job, const ir::Model& model, quant::WeightOnlyConfig& cfg) {
  const bool calib = !job.data.path.empty();
  const bool tokens = is_token_model(model);
  const bool fp8 = job.bits.type() && job.bits.type()->scheme == quant::WeightScheme::kFloat8;
  // Palettes and pruning are not tuned (tuning moves levels on a uniform grid, and pruned weights off 0):
  // GPTQ's sweep with the fixed tables / masks instead.
  const bool compact = cfg.bits.is_palette() || cfg.sparsity.active();
  std::vector<std::string> chosen;
  if (!job.algorithm) {
    cfg.algorithm = calib && (!tokens || fp8 || compact) ? quant::WeightAlgorithm::kGptq : quant::WeightAlgorithm::kRtn;
    if (calib && fp8) cfg.gptq.act_order = true;
    chosen.push_back(std::string(quant::weight_algorithm_name(cfg.algorithm)) + (calib && fp8 ? " (act order)" : ""));
  }
  if (!job.symmetric && job.bits.width_only()) {  // "4", "2": zero points or not (int4, ternary, ... fix it)
    cfg.symmetric = !calib || cfg.sparsity.active();  // pruned weights sit on a zero level shared by the layer
    chosen.push_back(cfg.symmetric ? "symmetric" : "zero points");
  }
  if (!job.tune_given && calib && tokens && cfg.plan.empty() && !fp8 && !compact) {
    cfg.tune.steps = 200;
    chosen.push_back("200 tuning steps (a token model)");
  }
  if (chosen.empty()) return "";
  std::string what;
  for (const auto& c : chosen) what += (what.empty() ? "" : ", ") + c;
  return fmt::format("defaults: {} ({}; set --weight-algorithm, --asymmetric/--symmetric, --tune-steps to choose)",
                     what, calib ? "calibration data given" : "no calibration data");
}

}  // namespace

/// Weights an exporter wrote as a layout op on a constant (CNTK's Reshape of the FC weight, a
/// Transpose before MatMul): those ops are folded into initializers, so that the layer's weight is
/// a constant the quantizer finds. Only layout ops whose every use is a weight input (or another
/// such op) are folded; nothing else in the graph changes, except that an IR 3 model's initializers
/// stop being listed as graph inputs (as the opset upgrade of any low-bit output does anyway).
/// Returns how many were folded.
size_t fold_weight_layout_ops(ir::Model& model) {
  static const std::set<std::string> kLayout = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity"};
  std::function<bool(const ir::Value*)> feeds_weight = [&](const ir::Value* v) {
    if (v == nullptr || v->uses().empty() || v->is_graph_output()) return false;
    for (const ir::Use& u : v->uses()) {
      const std::string& op = u.node->op_type();
      const bool weight_input = u.index == 1 && (op == "MatMul" || op == "Gemm" || op == "Conv");
      const bool layout = kLayout.count(op) && u.index == 0 && feeds_weight(u.node->output(0));
      if (!weight_input && !layout) return false;
    }
    return true;
  };
  auto candidate = [&](const ir::Node& n) {
    return n.domain().empty() && kLayout.count(n.op_type()) && n.outputs().size() == 1 && n.input(0) &&
           n.input(0)->is_initializer() && feeds_weight(n.output(0));
  };
  const bool any = std::any_of(model.graph->nodes().begin(), model.graph->nodes().end(),
                               [&](const auto& n) { return candidate(*n); });
  if (!any) return 0;
  passes::remove_initializer_inputs(model, {});
  passes::PassOptions po;
  po.fold_only = [&](const ir::Node& n) { return candidate(n); };
  return passes::fold_constants(model, po);
}

QuantizeOutcome run_weight_only(const QuantizeJob& job, ir::Model& model, std::vector<report::Timing>& timings) {
  const size_t folded_layout = fold_weight_layout_ops(model);
  quant::WeightOnlyConfig cfg = job.weight_cfg;
  cfg.threads = job.threads;
  if (!job.plan_path.empty()) cfg.plan = quant::load_plan(job.plan_path);
  const std::string defaults = apply_defaults(job, model, cfg);
  if (!defaults.empty()) spdlog::info("{}", defaults);
  QTOOL_CHECK(cfg.tune.steps == 0 || !job.data.path.empty(), ErrorCode::kConfig, "--tune-steps needs --calib");
  std::shared_ptr<data::SelectedSource> samples, fit_part, held_out;
  quant::CalibrationInputs calib;
  std::optional<ir::Model> fp32;
  std::string eval_note;
  if (!job.data.path.empty()) {
    const auto t = clock_type::now();
    samples = open_samples(job.data, model, "--calib");
    // Hold out the last fifth (at least kMinHoldout) of the samples to measure the result on data
    // GPTQ/AWQ did not fit to; with too few samples, all serve both roles (and the report says so).
    const size_t n = samples->size();
    const size_t holdout = std::max(kMinHoldout, n / 5);
    std::vector<size_t> fit_idx, eval_idx;
    // Evaluating needs the FP32 model beside the quantized one: skipped (and nothing held out) for big models.
    const bool evaluate = job.guard && file_size(job.model_path) <= kMaxEvalModelBytes;
    for (size_t i = 0; i < n; ++i)
      (evaluate && n >= 2 * kMinHoldout && i >= n - holdout ? eval_idx : fit_idx).push_back(i);
    if (eval_idx.empty()) {
      eval_idx = fit_idx;
      eval_note = fmt::format("only {} calibration samples: the output quality is measured on the same samples", n);
    }
    fit_part = std::make_shared<data::SelectedSource>(samples, fit_idx);
    held_out = std::make_shared<data::SelectedSource>(samples, eval_idx);
    calib.source = fit_part.get();
    timings.push_back({"calibrate", seconds_since(t)});
    if (evaluate) fp32.emplace(model.clone());
  }
  auto t = clock_type::now();
  std::vector<std::string> actions_before;  ///< choices made before the final quantization
  // One quantization of `m` with `c` (then the accuracy level of --mode dynamic).
  auto quantize_once = [&](ir::Model& m, const quant::WeightOnlyConfig& c) {
    quant::WeightOnlyReport r = quant::apply_weight_only(m, c, job.data.path.empty() ? nullptr : &calib);
    if (job.matmulnbits_accuracy_level > 0) {
      size_t nbits = 0;
      for (const auto& n : m.graph->nodes())
        // 4 and 8 bits: the widths ONNX Runtime quantizes A for (and qtool's executor emulates).
        if (n->op_type() == "MatMulNBits" && n->domain() == "com.microsoft" &&
            (n->attr_int("bits", 4) == 4 || n->attr_int("bits", 4) == 8)) {
          n->set_attr(ir::Attribute::make_int("accuracy_level", job.matmulnbits_accuracy_level));
          ++nbits;
        }
      spdlog::info("dynamic: {} MatMulNBits nodes with accuracy_level {} (activations quantized to int8 per block on "
                   "the fly)",
                   nbits, job.matmulnbits_accuracy_level);
    }
    return r;
  };
  // Palettes with no granularity given: a table per tensor of values scaled per block of 32, or (up
  // to 4 bits) tables per 4 output channels / (from 5 bits) one bare table per tensor, whichever the
  // held-out samples judge better (measured: scaled is better on MobileNetV2 and stories260K at 4
  // bits, grouped on SqueezeNet; at 6 bits scaled on MobileNetV2, 24.3 against 22.0 dB). The better
  // candidate is kept as the quantized model.
  std::optional<quant::WeightOnlyReport> chosen;
  std::optional<report::BudgetSummary> budget;
  // --target-size / --target-bpw, or a --min-sqnr quality target alone: the plan comes from the
  // budget search (the smallest plan that keeps the target).
  const bool searched = job.budget.active() || job.min_sqnr.has_value();
  if (searched) {
    QTOOL_CHECK(fp32.has_value() && held_out, ErrorCode::kConfig,
                "--target-size / --target-bpw / --min-sqnr measure each layer's forms on held-out samples: give --calib "
                "(and no --no-guard)");
    if (cfg.palette_block < 0) cfg.palette_block = 0;
    calib.cache = quant::make_stats_cache();  // one calibration pass for every form and the final plan
    BudgetSearchResult b = search_budget({job, *fp32, cfg, held_out.get(), quantize_once});
    cfg.plan = std::move(b.plan);
    cfg.cast_dequant = b.cast_form;
    for (auto& a : b.actions) actions_before.push_back(std::move(a));
    budget = std::move(b.summary);
    if (b.model) {
      model = std::move(*b.model);
      chosen = std::move(*b.report);
    }
    timings.push_back({"budget search", seconds_since(t)});
    t = clock_type::now();
  }
  if (cfg.palette_block < 0) {
    cfg.palette_block = 32;
    // Up to 4 bits the other candidate is tables per 4 output channels; wider tables (64 entries and
    // more) per 4 channels cost too much, so from 5 bits on it is one bare table per tensor.
    const bool wide_tables = cfg.bits.is_palette() && cfg.bits.type() && cfg.bits.type()->bits > 4;
    if (fp32) {
      quant::WeightOnlyConfig grouped = cfg;
      grouped.palette_block = 0;
      grouped.palette_group = wide_tables ? 0 : 4;
      report::CompareOptions co;
      co.threads = job.threads;
      co.per_layer = false;
      struct Candidate {
        ir::Model model;
        quant::WeightOnlyReport report;
        double agree = 2.0;  ///< the lowest top-1 agreement of classifier outputs (2 when none)
        double sqnr = std::numeric_limits<double>::infinity();  ///< the lowest output SQNR
      };
      auto candidate = [&](const quant::WeightOnlyConfig& c) {
        Candidate k{fp32->clone(), {}};
        k.report = quantize_once(k.model, c);
        for (const auto& o :
             report::to_output_quality(report::compare_models(*fp32, k.model, sample_provider(*held_out), co))) {
          if (!std::isnan(o.top1_agreement)) k.agree = std::min(k.agree, o.top1_agreement);
          if (!std::isnan(o.sqnr_db)) k.sqnr = std::min(k.sqnr, o.sqnr_db);
        }
        return k;
      };
      Candidate a = candidate(cfg), b = candidate(grouped);
      // The output SQNR decides: it moves smoothly, where top-1 agreement on a few dozen held-out
      // samples moves in steps of a sample (on MobileNetV2's 50 it put the grouped form 10 points
      // ahead; on the 500 evaluation images the scaled one is ahead, as its SQNR said).
      const bool use_grouped = b.sqnr > a.sqnr;
      actions_before.push_back(fmt::format(
          "palette granularity measured on the held-out samples: scaled per block of 32 (SQNR {:.1f} dB{}) vs "
          "{} (SQNR {:.1f} dB{}): {}",
          a.sqnr, a.agree <= 1.0 ? fmt::format(", agreement {:.1f}%", 100 * a.agree) : "",
          wide_tables ? "one table per tensor" : "tables per 4 output channels", b.sqnr,
          b.agree <= 1.0 ? fmt::format(", agreement {:.1f}%", 100 * b.agree) : "",
          use_grouped ? (wide_tables ? "per tensor" : "grouped") : "scaled"));
      Candidate& win = use_grouped ? b : a;
      if (use_grouped) cfg = grouped;
      model = std::move(win.model);
      chosen = std::move(win.report);
    }
  }
  quant::WeightOnlyReport rep = chosen ? std::move(*chosen) : quantize_once(model, cfg);
  timings.push_back({"quantize", seconds_since(t)});
  const auto quantized = std::count_if(rep.layers.begin(), rep.layers.end(),
                                       [](const quant::WeightOnlyLayer& l) { return l.format != "float"; });
  QTOOL_CHECK(quantized > 0, ErrorCode::kUnsupported,
              "no weight of '{}' was quantized ({} candidate layers, all left in float{}); nothing is written",
              job.model_path, rep.layers.size(),
              has_subgraphs(*model.graph) ? "; weights inside If/Loop/Scan bodies are not quantized yet" : "");
  for (const auto& w : rep.warnings) spdlog::warn("{}", w);
  const std::string& bits = job.bits.spelled();
  spdlog::info("weight-only {}: {} layers, weights {} -> {} bytes", bits, rep.layers.size(), rep.float_weight_bytes,
               rep.quant_weight_bytes);
  std::string headline = job.budget.active() ? "mixed (" + job.budget.describe() + ")"
                         : job.min_sqnr       ? fmt::format("mixed (--min-sqnr {:.1f})", *job.min_sqnr)
                         : job.bits.is_sign_scheme() ? bits
                                                     : "W" + bits;
  const bool blocked_type = job.bits.type() && job.bits.type()->qdq_blocks[1] >= 0;  // not int8/fp8
  if (job.bits.is_palette())
    headline += cfg.palette_group > 0   ? fmt::format(" (group {})", cfg.palette_group)
                : cfg.palette_block > 0 ? fmt::format(" (scaled, block {})", cfg.palette_block)
                                        : std::string(" (per tensor)");
  else if (cfg.block_size > 0 && !job.bits.is_sign_scheme() && blocked_type && !searched)
    headline += fmt::format(" (block {})", cfg.block_size);
  if (cfg.sparsity.active()) headline += fmt::format(" sparse {}", cfg.sparsity.spelled());
  headline += job.matmulnbits_accuracy_level > 0 ? " A8 dynamic" : " A32";
  QuantizeOutcome out{report::make_quantize_report(job.model_path, job.out_path, model, headline), std::nullopt};
  out.report.output_file_bytes = 0;  // measured once written (a file already there is not ours)
  out.report.output_zstd_bytes = 0;
  join_layers(out.report, rep);
  out.report.warnings = rep.warnings;
  out.report.budget = budget;
  if (!defaults.empty()) out.report.actions.push_back(defaults);
  if (folded_layout > 0)
    out.report.actions.push_back(fmt::format(
        "{} layout ops on constant weights (Reshape/Transpose/...) folded into the weights they produce", folded_layout));
  for (auto& a : actions_before) out.report.actions.push_back(std::move(a));
  if (rep.tune.steps > 0) {
    const quant::TuneReport& tr = rep.tune;
    out.report.actions.push_back(fmt::format(
        "tuned {} steps on {} samples ({} held out), loss {}: held-out loss {:.4g} -> {:.4g} (kept step {}), "
        "{} levels changed, {} float values tuned, {:.1f} s",
        tr.steps, tr.train_samples, tr.holdout_samples, tr.loss, tr.holdout_before, tr.holdout_after, tr.best_step,
        tr.levels_changed, tr.float_params, tr.seconds));
    timings.push_back({"tune", tr.seconds});
  }
  std::optional<report::CompareResult> evaluation;
  if (fp32) {
    t = clock_type::now();
    evaluation = evaluate_into(out.report, *fp32, model, *held_out, job.threads);
    timings.push_back({"evaluate", seconds_since(t)});
    if (!eval_note.empty()) out.report.warnings.push_back(eval_note);
  }
  // Never a broken model: raise precision first. The layers where the noise enters (per-layer
  // drift on the held-out samples, lowest added-noise SQNR first) go to 8 bits, 1, 2, 4, ... of
  // them, each try quantized and judged again, until the outputs no longer look broken.
  if (std::string broken = broken_outputs(out.report.outputs); !broken.empty() && evaluation && cfg.plan.empty()) {
    t = clock_type::now();
    // The weights (unique names, which --layer-bits rules match) of the layers quantized below 8
    // bits, in the order of the noise they add: the evaluation's per-layer drift (ranked).
    std::vector<std::string> low;
    for (const report::LayerDrift& d : evaluation->layers)
      for (const quant::WeightOnlyLayer& l : rep.layers)
        // By node name, or by output for unnamed nodes (SqueezeNet's); d.tensor is the node's output.
        if (((!d.node.empty() && l.node == d.node) || (!l.output.empty() && d.tensor == l.output)) &&
            !l.weight.empty() && l.format != "float" &&
            l.bits_per_weight < 8.0 && std::find(low.begin(), low.end(), l.weight) == low.end())
          low.push_back(l.weight);
    report::CompareOptions trial_options;  // the outputs only: samples run in parallel
    trial_options.threads = job.threads;
    trial_options.per_layer = false;
    out.report.actions.push_back(fmt::format("the quantized model looks broken ({}): raising the layers that add the "
                                             "most noise to 8 bits{} ({} candidates)",
                                             broken, cfg.sparsity.active() ? ", unpruned" : "", low.size()));
    for (size_t k = 1; !low.empty(); k = std::min(low.size(), 2 * k)) {
      quant::WeightOnlyConfig raised = cfg;
      for (size_t i = 0; i < k; ++i) {
        raised.layer_bits.push_back({low[i], quant::BitsChoice("8")});
        raised.keep_dense.push_back(low[i]);  // raising a pruned layer also keeps all its weights
      }
      // The tries are judged untuned (tuning only improves on them; a tuned try costs minutes), and
      // the one that holds is quantized again with the tuning asked for.
      raised.tune.steps = 0;
      ir::Model m = fp32->clone();
      quant::WeightOnlyReport r = quantize_once(m, raised);
      broken = broken_outputs(
          report::to_output_quality(report::compare_models(*fp32, m, sample_provider(*held_out), trial_options)));
      out.report.actions.push_back(fmt::format("{} of {} layers at 8 bits{}: {}", k, low.size(),
                                               cfg.tune.steps > 0 ? " (judged untuned)" : "",
                                               broken.empty() ? "no longer broken" : broken));
      if (broken.empty() && cfg.tune.steps > 0) {
        raised.tune = cfg.tune;
        m = fp32->clone();
        r = quantize_once(m, raised);
      }
      if (broken.empty()) {
        std::vector<std::string> actions = std::move(out.report.actions);
        model = std::move(m);
        rep = std::move(r);
        out.report = report::make_quantize_report(job.model_path, job.out_path, model, headline);
        out.report.output_file_bytes = 0;
        out.report.output_zstd_bytes = 0;
        join_layers(out.report, rep);
        out.report.warnings = rep.warnings;
        out.report.actions = std::move(actions);
        evaluate_into(out.report, *fp32, model, *held_out, job.threads);
        if (!eval_note.empty()) out.report.warnings.push_back(eval_note);
        break;
      }
      if (k == low.size()) break;
    }
    timings.push_back({"raise precision", seconds_since(t)});
  }
  // Never a broken model with exit 0: judged on the held-out evaluation before anything is written.
  if (const std::string broken = broken_outputs(out.report.outputs); !broken.empty()) {
    out.gate_failure.emplace(
        ErrorCode::kQualityGate,
        fmt::format("the quantized model looks broken on the held-out samples ({}){}; raise --bits, or keep the "
                    "sensitive layers at 8 bits with --layer-bits; --force writes it anyway",
                    broken, job.force ? "" : ": no model written"));
    out.report.warnings.push_back(out.gate_failure->what());
  }
  if (!out.gate_failure || job.force) {
    t = clock_type::now();
    model.source_path.clear();
    onnx_io::save_model(model, job.out_path);
    // A budget run's plan names every weight; its default bits only has to pick the weight-only path
    // when the plan is read back without --bits.
    if (!job.plan_out.empty())
      write_file_atomic(job.plan_out, quant::plan_to_json(rep, searched ? "4" : bits).dump(2) + "\n");
    timings.push_back({"save", seconds_since(t)});
    report::measure_output_file(out.report);
  }
  if (job.min_sqnr && !out.gate_failure) {  // the search's quality target (budget_search.cc): checked as a gate too
    double sqnr = std::numeric_limits<double>::infinity();  // the lowest output's; NaN counts as -inf
    for (const auto& o : out.report.outputs)
      sqnr = std::min(sqnr, std::isnan(o.sqnr_db) ? -std::numeric_limits<double>::infinity() : o.sqnr_db);
    QTOOL_CHECK(fp32.has_value() && !out.report.outputs.empty(), ErrorCode::kConfig,
                "--min-sqnr needs the evaluation on held-out calibration samples (--calib, not --no-guard)");
    if (sqnr < *job.min_sqnr)
      out.gate_failure.emplace(ErrorCode::kQualityGate,
                               fmt::format("quality gate failed: output SQNR {:.1f} dB on the held-out samples (limit "
                                           "--min-sqnr {:.1f}): no plan {}keeps it",
                                           sqnr, *job.min_sqnr, job.budget.active() ? "within the budget " : ""));
  }
  if (job.max_drop && !out.gate_failure) {  // the same gate as the static path: top-1 agreement drop on held-out samples
    double agree = 2.0;
    for (const auto& o : out.report.outputs)
      if (!std::isnan(o.top1_agreement)) agree = std::min(agree, o.top1_agreement);
    QTOOL_CHECK(fp32.has_value() && !out.report.outputs.empty(), ErrorCode::kConfig,
                "--max-drop needs the evaluation on held-out calibration samples (--calib, not --no-guard)");
    const double drop = agree <= 1.0 ? 100.0 * (1.0 - agree) : 0.0;
    if (drop > *job.max_drop)
      out.gate_failure.emplace(ErrorCode::kQualityGate,
                               fmt::format("quality gate failed: top-1 agreement drop {:.2f} points (limit --max-drop "
                                           "{:.2f})",
                                           drop, *job.max_drop));
  }
  return out;
}

}  // namespace qtool::pipeline::detail
