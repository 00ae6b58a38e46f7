// quantize_static: prepare, calibrate, emit, guard (see static_quant.h).
#include "qtool/quant/static_quant.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "qtool/calib/calibrate.h"
#include "qtool/passes/cross_layer_equalization.h"
#include "qtool/passes/pass.h"
#include "qtool/passes/qdq_to_qoperator.h"
#include "qtool/quant/bias_correction.h"
#include "qtool/runtime/executor.h"

namespace qtool::quant {
namespace {

// Classifier-like: the last non-unit axis holds >= 2 classes; rows = numel / classes.
int64_t class_count(const Tensor& t) {
  for (size_t i = t.rank(); i-- > 0;)
    if (t.shape()[i] != 1) return t.shape()[i] >= 2 && dtype_is_float(t.dtype()) ? t.shape()[i] : 0;
  return 0;
}

struct Accum {
  double signal = 0, noise = 0;
  int64_t rows = 0, agree = 0, samples = 0;
  bool classifier = true;
};

void accumulate(Accum& a, const Tensor& ref, const Tensor& got) {
  const Tensor r = ref.to_float(), q = got.to_float();
  const int64_t n = std::min(r.numel(), q.numel());
  const float* pr = r.data<float>();
  const float* pq = q.data<float>();
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(pr[i])) continue;
    const double d = static_cast<double>(pr[i]) - pq[i];
    a.signal += static_cast<double>(pr[i]) * pr[i];
    a.noise += std::isfinite(d) ? d * d : 1e30;
  }
  const int64_t classes = class_count(ref);
  if (classes == 0 || r.numel() != q.numel()) {
    a.classifier = false;
  } else {
    for (int64_t row = 0; row < n / classes; ++row) {
      const float* x = pr + row * classes;
      const float* y = pq + row * classes;
      const int64_t ax = std::max_element(x, x + classes) - x;
      const int64_t ay = std::max_element(y, y + classes) - y;
      a.agree += ax == ay;
      ++a.rows;
    }
  }
  ++a.samples;
}

double sqnr_db(double signal, double noise) {
  if (noise <= 0) return std::numeric_limits<double>::infinity();
  if (signal <= 0) return -std::numeric_limits<double>::infinity();
  return 10.0 * std::log10(signal / noise);
}

// Lower is worse: the guard's single figure for a comparison.
double quality_score(const std::vector<OutputAgreement>& outs) {
  double s = std::numeric_limits<double>::infinity();
  for (const auto& o : outs) s = std::min(s, o.sqnr_db);
  return s;
}

bool is_poor(const std::vector<OutputAgreement>& outs, const StaticQuantConfig& c) {
  for (const auto& o : outs) {
    if (o.top1_agreement >= 0 && o.top1_agreement < c.min_top1_agreement) return true;
    if (o.sqnr_db < c.min_sqnr_db) return true;
  }
  return false;
}

std::string describe_outputs(const std::vector<OutputAgreement>& outs) {
  std::string s;
  for (const auto& o : outs) {
    if (!s.empty()) s += "; ";
    s += fmt::format("{}: SQNR {:.1f} dB", o.name, o.sqnr_db);
    if (o.top1_agreement >= 0) s += fmt::format(", top-1 agreement {:.1f}%", 100.0 * o.top1_agreement);
  }
  return s;
}

}  // namespace

double StaticQuantResult::min_top1_agreement() const {
  double m = -1.0;
  for (const auto& o : outputs)
    if (o.top1_agreement >= 0) m = m < 0 ? o.top1_agreement : std::min(m, o.top1_agreement);
  return m;
}

size_t prepare_model(ir::Model& model, int64_t target_opset) {
  passes::PassOptions po;
  po.target_opset = target_opset;
  return passes::run_passes(model, passes::default_quantize_pipeline(), po);
}

RangeMap ranges_for_model(const ir::Model& model, const calib::RangesFile& file) {
  RangeMap out;
  const ir::Graph& g = *model.graph;
  for (const calib::TensorRange& t : file.tensors) {
    const ir::Value* v = g.find_value(t.name);
    if (v == nullptr || v->is_initializer()) continue;
    out[v] = Range{static_cast<float>(t.range_min), static_cast<float>(t.range_max)};
  }
  return out;
}

std::vector<OutputAgreement> compare_models(const ir::Model& reference, const ir::Model& candidate,
                                            data::SampleSource& samples, int threads) {
  runtime::ExecutorOptions eo;
  eo.threads = threads;
  // Score the candidate as ONNX Runtime will run it: QDQ groups fused into integer kernels.
  ir::Model fused = candidate.clone();
  passes::fuse_qdq_to_qoperator(fused);
  runtime::Executor ref(reference, eo), cand(fused, eo);
  const std::vector<std::string> names = ref.output_names();
  std::vector<Accum> acc(names.size());
  for (size_t i = 0; i < samples.size(); ++i) {
    const data::Sample s = samples.load(i);
    const std::vector<Tensor> a = ref.run(s);
    const std::vector<Tensor> b = cand.run(s);
    for (size_t k = 0; k < names.size() && k < a.size() && k < b.size(); ++k) accumulate(acc[k], a[k], b[k]);
  }
  std::vector<OutputAgreement> out;
  for (size_t k = 0; k < names.size(); ++k) {
    OutputAgreement o;
    o.name = names[k];
    o.sqnr_db = sqnr_db(acc[k].signal, acc[k].noise);
    o.samples = acc[k].samples;
    if (acc[k].classifier && acc[k].rows > 0) o.top1_agreement = static_cast<double>(acc[k].agree) / acc[k].rows;
    out.push_back(o);
  }
  return out;
}

StaticQuantResult quantize_static(ir::Model& model, data::SampleSource& samples, const StaticQuantConfig& config) {
  StaticQuantResult result;
  const size_t n = samples.size();
  QTOOL_CHECK(n > 0 || config.ranges != nullptr, ErrorCode::kConfig, "no calibration samples");
  // Split: the last part is held out for the guard.
  size_t holdout = 0;
  if (config.guard && n >= 2 * config.min_holdout) {
    holdout = std::max(config.min_holdout, static_cast<size_t>(std::ceil(config.holdout_fraction * n)));
    holdout = std::min(holdout, n / 2);
  }
  std::vector<size_t> calib_idx, hold_idx;
  for (size_t i = 0; i < n; ++i) (i < n - holdout ? calib_idx : hold_idx).push_back(i);
  if (config.guard && holdout == 0 && n > 0) {
    hold_idx = calib_idx;
    result.warnings.push_back(fmt::format(
        "only {} samples: the quality guard checks on the calibration samples themselves (give at least {})", n,
        2 * config.min_holdout));
  }
  std::shared_ptr<data::SampleSource> base(&samples, [](data::SampleSource*) {});
  data::SelectedSource calib_src(base, calib_idx), hold_src(base, hold_idx);
  result.calib_samples = static_cast<int64_t>(calib_idx.size());
  result.holdout_samples = static_cast<int64_t>(hold_idx.size());

  const ir::Model reference = model.clone();
  // Cross-layer equalization before calibration: `model` becomes the equalized copy that is
  // calibrated and emitted (`float_base`); the guard still compares with the unequalized `reference`.
  std::optional<ir::Model> equalized;
  if (config.cle) {
    QTOOL_CHECK(config.ranges == nullptr, ErrorCode::kConfig,
                "cross-layer equalization rescales activations, so ranges from a file (computed on the model "
                "before equalization) no longer fit: calibrate with --calib instead of --ranges");
    passes::CleOptions co;
    co.replace_relu6 = config.cle_replace_relu6;
    const passes::CleResult cr = passes::equalize_cross_layer(model, co);
    std::string a = fmt::format("CLE: {} conv pairs equalized ({} with a depthwise conv, {} iterations)", cr.pairs,
                                cr.depthwise_pairs, cr.iterations);
    if (cr.relu6_replaced) a += fmt::format("; {} Clip(0, 6) replaced by Relu (changes the float model)", cr.relu6_replaced);
    if (cr.skipped_relu6) a += fmt::format("; {} pairs skipped: Clip(0, 6) between them is not scale-invariant", cr.skipped_relu6);
    result.actions.push_back(a);
    equalized.emplace(model.clone());
    for (const ir::Value* v : model.graph->initializers())
      if (const Tensor* t = v->initializer(); t && t->dtype() == DataType::kFloat && t->numel() >= 16)
        result.equalized_weights.emplace(v->name(), *t);
  }
  const ir::Model& float_base = equalized ? *equalized : reference;
  // Bias correction of an emitted model against `float_base` on the calibration samples.
  auto correct = [&](ir::Model& qm, const char* what) {
    if (!config.bias_correction) return;
    BiasCorrectionOptions bo;
    bo.max_samples = config.bias_correction_samples;
    bo.threads = config.threads;
    const BiasCorrectionResult br = correct_biases(float_base, qm, calib_src, bo);
    if (br.layers.empty()) {
      result.actions.push_back(fmt::format("bias correction{}: no layer to correct{}", what,
                                           br.skipped.empty() ? "" : fmt::format(" ({} skipped, e.g. {})",
                                                                                 br.skipped.size(), br.skipped.front())));
      return;
    }
    result.actions.push_back(fmt::format(
        "bias correction{}: {} layers corrected on {} calibration samples (mean |bias error| {:.2f}% of mean |output|)"
        "{}", what, br.layers.size(), br.samples, br.mean_relative_error_percent(),
        br.skipped.empty() ? "" : fmt::format(", {} skipped ({})", br.skipped.size(), br.skipped.front())));
  };

  // Ranges.
  RangeMap ranges;
  if (config.ranges != nullptr) {
    ranges = ranges_for_model(model, *config.ranges);
    result.actions.push_back(fmt::format("ranges of {} tensors read from the ranges file", ranges.size()));
  } else {
    calib::CalibConfig cc;
    cc.method = config.method;
    cc.range.bits = dtype_bits(config.qdq.activation_type);
    cc.range.symmetric = config.qdq.activation_symmetric;
    cc.range.percentile = config.percentile;
    cc.threads = config.threads;
    cc.run.label = "calibrating";
    calib::CalibrationResult cr = calib::calibrate(model, calib_src, cc);
    ranges = ranges_for_model(model, cr.ranges);
  }

  auto emit = [&](const std::set<std::string>& keep) {
    ir::Model m = float_base.clone();
    QdqOptions o = config.qdq;
    o.keep_float_names.insert(keep.begin(), keep.end());
    // Ranges are keyed by the reference model's values: re-key them by name on the copy.
    RangeMap r;
    for (const auto& [v, rg] : ranges)
      if (const ir::Value* mv = m.graph->find_value(v->name())) r[mv] = rg;
    QdqSummary s = emit_qdq(m, r, o);
    return std::make_pair(std::move(m), std::move(s));
  };

  auto emitted = emit({});  // (not a structured binding: clang 14 cannot capture one in a lambda)
  ir::Model& qmodel = emitted.first;
  QdqSummary& summary = emitted.second;
  correct(qmodel, "");
  std::set<std::string> kept;
  if (config.guard && !hold_idx.empty()) {
    result.outputs = compare_models(reference, qmodel, hold_src, config.threads);
    spdlog::info("quality guard: {}", describe_outputs(result.outputs));
    if (is_poor(result.outputs, config)) {
      // Sensitivity: each suspect activation alone quantized (the rest float) on a few held-out
      // samples, against FP32 outputs computed once. Suspects: the widest ranges (a -1e9 mask, mixed
      // scales), at most kMaxSuspects of them, so the search costs a bounded number of runs.
      constexpr size_t kMaxSuspects = 24, kProbeSamples = 4;
      std::vector<std::pair<double, std::string>> by_width;
      for (const auto& [v, rg] : ranges)
        if (summary.activation_params.count(v->name()))
          by_width.emplace_back(-(static_cast<double>(rg.max) - rg.min), v->name());
      std::sort(by_width.begin(), by_width.end());
      if (by_width.size() > kMaxSuspects) by_width.resize(kMaxSuspects);
      std::set<std::string> all;
      for (const auto& [name, p] : summary.activation_params) all.insert(name);
      std::vector<size_t> probe_idx(hold_idx.begin(), hold_idx.begin() + std::min(kProbeSamples, hold_idx.size()));
      data::SelectedSource probe(base, probe_idx);
      std::vector<std::vector<Tensor>> ref_out;
      {
        runtime::ExecutorOptions eo;
        eo.threads = config.threads;
        runtime::Executor ref(reference, eo);
        for (size_t i = 0; i < probe.size(); ++i) ref_out.push_back(ref.run(probe.load(i)));
      }
      std::vector<std::pair<double, std::string>> scored;
      for (const auto& [neg_width, name] : by_width) {
        std::set<std::string> others = all;
        others.erase(name);
        auto [m1, s1] = emit(others);
        runtime::ExecutorOptions eo;
        eo.threads = config.threads;
        runtime::Executor ex(m1, eo);
        double worst = std::numeric_limits<double>::infinity();
        std::vector<Accum> acc(ref_out.empty() ? 0 : ref_out[0].size());
        for (size_t i = 0; i < probe.size(); ++i) {
          const std::vector<Tensor> got = ex.run(probe.load(i));
          for (size_t k = 0; k < acc.size() && k < got.size(); ++k) accumulate(acc[k], ref_out[i][k], got[k]);
        }
        for (const Accum& a : acc) worst = std::min(worst, sqnr_db(a.signal, a.noise));
        scored.emplace_back(worst, name);
      }
      std::sort(scored.begin(), scored.end());
      const double target = quality_score(result.outputs);
      for (const auto& [score, name] : scored) {
        if (kept.size() >= config.max_float_groups) break;
        // Only tensors that alone lose much more than the threshold are worth keeping in float.
        if (score >= config.min_sqnr_db + 10.0) break;
        kept.insert(name);
        result.actions.push_back(fmt::format("kept '{}' in float: quantized alone it gives output SQNR {:.1f} dB",
                                             name, score));
      }
      // An Add/Mul whose output stays float runs in float in ONNX Runtime anyway, and quantizing its
      // inputs can still ruin it (a power spectrum re² + im² loses its quiet bins): keep them float too.
      for (const std::string& name : std::set<std::string>(kept)) {
        const ir::Value* v = float_base.graph->find_value(name);
        const ir::Node* p = v ? v->producer() : nullptr;
        if (p == nullptr || (p->op_type() != "Add" && p->op_type() != "Mul")) continue;
        for (const ir::Value* in : p->inputs())
          if (in && all.count(in->name()) && kept.insert(in->name()).second)
            result.actions.push_back(fmt::format("kept '{}' in float with '{}' (input of {})", in->name(), name,
                                                 p->describe()));
      }
      if (kept.empty())
        result.actions.push_back(fmt::format(
            "sensitivity: no single activation among the {} widest-range ones explains the loss (worst alone: "
            "{:.1f} dB); the error is spread over many tensors: try --method percentile or --exclude-op-types",
            scored.size(), scored.empty() ? 0.0 : scored.front().first));
      if (!kept.empty()) {
        auto [m2, s2] = emit(kept);
        correct(m2, " (model with float tensors)");
        auto outs = compare_models(reference, m2, hold_src, config.threads);
        result.actions.push_back(fmt::format("after keeping {} tensor(s) in float: {}", kept.size(),
                                             describe_outputs(outs)));
        if (quality_score(outs) >= target) {
          qmodel = std::move(m2);
          summary = std::move(s2);
          result.outputs = std::move(outs);
        } else {
          result.actions.push_back("no improvement: kept the fully quantized model");
          kept.clear();
        }
      }
    }
    for (const auto& o : result.outputs) {
      if ((o.top1_agreement >= 0 && o.top1_agreement < 0.5) || o.sqnr_db < 5.0) result.looks_broken = true;
    }
    if (result.looks_broken)
      result.warnings.push_back(fmt::format("THE QUANTIZED MODEL LOOKS BROKEN on {} held-out samples: {}",
                                            hold_idx.size(), describe_outputs(result.outputs)));
  }
  // If/Loop/Scan bodies stay in float (calibration observes main-graph values only): say so.
  size_t body_ops = 0;
  passes::for_each_graph(*qmodel.graph, [&](ir::Graph& g) {
    if (&g != qmodel.graph.get())
      for (const auto& bn : g.nodes()) body_ops += is_quantizable_op(bn->op_type());
    return size_t{0};
  });
  if (body_ops)
    result.actions.push_back(fmt::format("{} quantizable nodes inside If/Loop/Scan bodies left in float (values "
                                         "inside subgraphs are not calibrated)", body_ops));
  result.qdq = std::move(summary);
  model = std::move(qmodel);
  return result;
}

}  // namespace qtool::quant
