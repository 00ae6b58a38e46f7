// The static path's quality guard (pipeline/guard.h).
#include "qtool/pipeline/guard.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "internal.h"
#include "qtool/runtime/executor.h"

namespace qtool::pipeline {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
/// The probe's bounds: suspects (widest ranges first) and held-out samples it runs on.
constexpr size_t kMaxSuspects = 24, kProbeSamples = 4;

/// (score, activation name): the lowest output SQNR with that activation alone quantized.
using Scored = std::vector<std::pair<double, std::string>>;

/// report::compare_models on the held-out samples, fused as ONNX Runtime runs the model.
report::CompareResult compare_on(const ir::Model& reference, const ir::Model& quantized, data::SampleSource& held_out,
                                 int threads) {
  report::CompareOptions options;
  options.per_layer = false;
  options.threads = threads;
  return report::compare_models(reference, quantized, detail::sample_provider(held_out), options);
}

/// Every quantized activation of an emission, by name.
std::set<std::string> quantized_activations(const quant::QdqSummary& qdq) {
  std::set<std::string> all;
  for (const auto& entry : qdq.activation_params) all.insert(entry.first);
  return all;
}

/// The probe's suspects: quantized activations, widest calibrated range first, at most kMaxSuspects.
std::vector<std::string> suspects(const quant::CalibratedModel& calibrated, const std::set<std::string>& quantized) {
  std::vector<std::pair<double, std::string>> by_width;
  for (const auto& [v, rg] : calibrated.ranges)
    if (quantized.count(v->name())) by_width.emplace_back(-(static_cast<double>(rg.max) - rg.min), v->name());
  std::sort(by_width.begin(), by_width.end());
  if (by_width.size() > kMaxSuspects) by_width.resize(kMaxSuspects);
  std::vector<std::string> names;
  for (auto& entry : by_width) names.push_back(std::move(entry.second));
  return names;
}

/// Step 2: scores each suspect alone quantized on the first kProbeSamples held-out samples,
/// against FP32 outputs computed once; sorted, lowest (most harmful) first.
Scored probe_sensitivity(const ir::Model& reference, const quant::CalibratedModel& calibrated,
                         const quant::StaticQuantConfig& config, data::SampleSource& held_out,
                         const std::set<std::string>& quantized) {
  runtime::ExecutorOptions eo;
  eo.threads = config.threads;
  const size_t probes = std::min(kProbeSamples, held_out.size());
  std::vector<data::Sample> inputs;
  std::vector<std::vector<Tensor>> ref_out;
  std::vector<std::string> names;
  {
    runtime::Executor ref(reference, eo);
    names = ref.output_names();
    for (size_t i = 0; i < probes; ++i) {
      inputs.push_back(held_out.load(i));
      ref_out.push_back(ref.run(inputs.back()));
    }
  }
  Scored scored;
  for (const std::string& name : suspects(calibrated, quantized)) {
    std::set<std::string> others = quantized;
    others.erase(name);
    const quant::StaticEmission alone = quant::emit_static(calibrated, others, config);
    runtime::Executor ex(alone.model, eo);
    std::vector<report::OutputComparison> outs(names.size());
    for (size_t k = 0; k < outs.size(); ++k) outs[k].name = names[k];
    for (size_t i = 0; i < probes; ++i) {
      const std::vector<Tensor> got = ex.run(inputs[i]);
      for (size_t k = 0; k < outs.size() && k < got.size(); ++k) outs[k].add(ref_out[i][k], got[k]);
    }
    double worst = kInf;
    for (const auto& o : outs) worst = std::min(worst, o.error.sqnr_db());
    scored.emplace_back(worst, name);
  }
  std::sort(scored.begin(), scored.end());
  return scored;
}

/// Step 3: the activations worth keeping in float (alone they lose much more than the threshold),
/// worst first, then the quantized inputs of each kept Add/Mul.
std::set<std::string> choose_float(const Scored& scored, const ir::Model& float_model,
                                   const std::set<std::string>& quantized, const GuardOptions& options,
                                   std::vector<std::string>& actions) {
  std::set<std::string> kept;
  for (const auto& [score, name] : scored) {
    if (kept.size() >= options.max_float_groups || score >= options.min_sqnr_db + 10.0) break;
    kept.insert(name);
    actions.push_back(fmt::format("kept '{}' in float: quantized alone it gives output SQNR {:.1f} dB", name, score));
  }
  for (const std::string& name : std::set<std::string>(kept)) {
    const ir::Value* v = float_model.graph->find_value(name);
    const ir::Node* p = v ? v->producer() : nullptr;
    if (p == nullptr || (p->op_type() != "Add" && p->op_type() != "Mul")) continue;
    for (const ir::Value* in : p->inputs())
      if (in && quantized.count(in->name()) && kept.insert(in->name()).second)
        actions.push_back(fmt::format("kept '{}' in float with '{}' (input of {})", in->name(), name, p->describe()));
  }
  if (kept.empty())
    actions.push_back(fmt::format(
        "sensitivity: no single activation among the {} widest-range ones explains the loss (worst alone: "
        "{:.1f} dB); the error is spread over many tensors: try --method percentile or --exclude-op-types",
        scored.size(), scored.empty() ? 0.0 : scored.front().first));
  return kept;
}

}  // namespace

GuardSplit split_for_guard(size_t n, bool guard, const GuardOptions& options) {
  size_t holdout = 0;
  if (guard && n >= 2 * options.min_holdout) {
    holdout = std::max(options.min_holdout, static_cast<size_t>(std::ceil(options.holdout_fraction * n)));
    holdout = std::min(holdout, n / 2);
  }
  GuardSplit split;
  for (size_t i = 0; i < n; ++i) (i < n - holdout ? split.calib : split.held_out).push_back(i);
  if (guard && holdout == 0 && n > 0) {
    split.held_out = split.calib;
    split.warning = fmt::format(
        "only {} samples: the quality guard checks on the calibration samples themselves (give at least {})", n,
        2 * options.min_holdout);
  }
  return split;
}

double GuardResult::min_top1_agreement() const {
  double m = std::numeric_limits<double>::quiet_NaN();
  for (const auto& o : comparison.outputs) {
    const double a = o.classifier ? o.classes.top1_agreement() : m;
    if (!std::isnan(a)) m = std::isnan(m) ? a : std::min(m, a);
  }
  return m;
}

bool looks_poor(const report::CompareResult& result, const GuardOptions& options) {
  for (const auto& o : result.outputs) {
    if (o.classifier && o.classes.top1_agreement() < options.min_top1_agreement) return true;
    if (o.error.sqnr_db() < options.min_sqnr_db) return true;
  }
  return false;
}

double worst_output_sqnr(const report::CompareResult& r) {
  double s = std::numeric_limits<double>::infinity();
  for (const auto& o : r.outputs) s = std::min(s, o.error.sqnr_db());
  return s;
}

bool meets_floor(const report::CompareResult& result, const QualityFloor& floor, std::string* why) {
  std::string below;
  for (const auto& o : result.outputs) {
    // Channels of very different magnitudes (scores beside coordinates) are not class scores, even
    // in an [N, C] tensor: judged by SQNR per channel group.
    const double groups = o.channel_group_sqnr_db();
    const double top1 = o.classifier && std::isnan(groups) ? o.classes.top1_agreement() : std::nan("");
    if (!std::isnan(top1)) {
      if (top1 < floor.min_top1_agreement)
        below += fmt::format("{}{}: top-1 agreement {:.1f}% < {:.1f}%", below.empty() ? "" : "; ", o.name, 100.0 * top1,
                             100.0 * floor.min_top1_agreement);
    } else if (!std::isnan(o.error.sqnr_db()) && o.error.sqnr_db() < floor.min_sqnr_db) {  // NaN: not measured
      below += fmt::format("{}{}: SQNR {:.1f} dB < {:.1f} dB", below.empty() ? "" : "; ", o.name, o.error.sqnr_db(),
                           floor.min_sqnr_db);
    } else if (!std::isnan(groups) && groups < floor.min_sqnr_db) {
      below += fmt::format("{}{}: SQNR {:.1f} dB on one family of its channels (magnitudes 100x apart; whole tensor {:.1f} dB) < {:.1f} dB",
                           below.empty() ? "" : "; ", o.name, groups, o.error.sqnr_db(), floor.min_sqnr_db);
    }
  }
  if (why) *why = below;
  return below.empty();
}

bool looks_broken(const report::CompareResult& result) {
  for (const auto& o : result.outputs)
    if ((o.classifier && o.classes.top1_agreement() < 0.5) || o.error.sqnr_db() < 5.0) return true;
  return false;
}

std::string describe_outputs(const report::CompareResult& result) {
  std::string s;
  for (const auto& o : result.outputs) {
    if (!s.empty()) s += "; ";
    s += fmt::format("{}: SQNR {:.1f} dB", o.name, o.error.sqnr_db());
    const double top1 = o.classifier ? o.classes.top1_agreement() : std::nan("");
    if (!std::isnan(top1)) s += fmt::format(", top-1 agreement {:.1f}%", 100.0 * top1);
  }
  return s;
}

GuardResult run_guard(const ir::Model& reference, const quant::CalibratedModel& calibrated,
                      const quant::StaticQuantConfig& config, data::SampleSource& calib, data::SampleSource& held_out,
                      quant::StaticEmission& emitted, const GuardOptions& options) {
  GuardResult g;
  g.comparison = compare_on(reference, emitted.model, held_out, config.threads);
  spdlog::info("quality guard: {}", describe_outputs(g.comparison));
  if (options.search && looks_poor(g.comparison, options)) {
    const std::set<std::string> quantized = quantized_activations(emitted.qdq);
    const Scored scored = probe_sensitivity(reference, calibrated, config, held_out, quantized);
    std::set<std::string> kept = choose_float(scored, calibrated.float_model, quantized, options, g.actions);
    if (!kept.empty()) {
      quant::StaticEmission again = quant::emit_static(calibrated, kept, config);
      const std::string corrected =
          quant::correct_static_biases(calibrated, again.model, calib, config, " (model with float tensors)");
      if (!corrected.empty()) g.actions.push_back(corrected);
      report::CompareResult outs = compare_on(reference, again.model, held_out, config.threads);
      g.actions.push_back(fmt::format("after keeping {} tensor(s) in float: {}", kept.size(), describe_outputs(outs)));
      if (worst_output_sqnr(outs) >= worst_output_sqnr(g.comparison)) {
        emitted = std::move(again);
        g.comparison = std::move(outs);
        g.kept_float = std::move(kept);
      } else {
        g.actions.push_back("no improvement: kept the fully quantized model");
      }
    }
  }
  g.looks_broken = looks_broken(g.comparison);
  if (g.looks_broken)
    g.warnings.push_back(fmt::format("THE QUANTIZED MODEL LOOKS BROKEN on {} held-out samples: {}", held_out.size(),
                                     describe_outputs(g.comparison)));
  return g;
}

}  // namespace qtool::pipeline
