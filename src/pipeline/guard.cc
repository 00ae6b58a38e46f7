// The static path's quality guard (pipeline/guard.h).
#include "qtool/pipeline/guard.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <unordered_map>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "internal.h"
#include "qtool/pipeline/sensitivity.h"

namespace qtool::pipeline {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
/// Margins over the floor: the round's prediction aims at floor + kTargetMargin; a raised tensor
/// must alone score floor + kAloneMargin.
constexpr double kTargetMargin = 6.0, kAloneMargin = 10.0, kUnclipGain = 6.0, kFloatGain = 1.0;
/// Raised tensors named one by one in the actions (the rest are counted).
constexpr size_t kMaxNamed = 12;
/// The probe's first pass and the 16-bit / observed-range trials run on this many held-out
/// samples; the kRescored noisiest tensors of the first pass are scored again on probe_samples.
constexpr size_t kScreenSamples = 1, kRescored = 48;
/// Rows a borderline classifier verdict is judged on (held-out, then calibration samples).
constexpr size_t kJudgeRows = 150;

/// report::compare_models on the held-out samples, fused as ONNX Runtime runs the model; the FP32
/// outputs come from `cache` after the first call on the same samples.
report::CompareResult compare_on(const ir::Model& reference, const ir::Model& quantized, data::SampleSource& held_out,
                                 int threads, report::ReferenceCache* cache = nullptr) {
  report::CompareOptions options;
  options.per_layer = false;
  options.threads = threads;
  options.reference_cache = cache;
  return report::compare_models(reference, quantized, detail::sample_provider(held_out), options);
}

/// Relative noise power of an SQNR: 10^(-dB/10); exact is 0, NaN or -inf is overwhelming.
double noise_of(double db) {
  if (std::isnan(db) || db == -kInf) return 1e30;
  return db == kInf ? 0.0 : std::pow(10.0, -db / 10.0);
}

/// The held-out samples followed by the first calibration samples, up to `total`.
class ExtendedSource final : public data::SampleSource {
 public:
  ExtendedSource(data::SampleSource& held_out, data::SampleSource& calib, size_t total)
      : held_out_(held_out), calib_(calib),
        extra_(std::min(calib.size(), total > held_out.size() ? total - held_out.size() : 0)) {}
  size_t size() const override { return held_out_.size() + extra_; }
  data::Sample load(size_t i) override { return i < held_out_.size() ? held_out_.load(i) : calib_.load(i - held_out_.size()); }
  std::string describe(size_t i) const override {
    return i < held_out_.size() ? held_out_.describe(i) : calib_.describe(i - held_out_.size());
  }
  std::string kind() const override { return held_out_.kind(); }

 private:
  data::SampleSource& held_out_;
  data::SampleSource& calib_;
  size_t extra_;
};

/// True when a classifier output meets the floor with disagreements: the verdict rests on a few rows.
bool borderline(const report::CompareResult& result, const QualityFloor& floor) {
  if (!meets_floor(result, floor, nullptr)) return false;
  for (const auto& o : result.outputs)
    if (o.classifier && std::isnan(o.channel_group_sqnr_db()) && o.classes.top1_agreement() < 1.0) return true;
  return false;
}

/// How a raised tensor is quantized.
enum class Raise { kObserved, kWide, kFloat };

/// Steps 2-4 of the guard (see guard.h).
class Escalation {
 public:
  Escalation(const ir::Model& reference, const quant::CalibratedModel& calibrated, const quant::StaticQuantConfig& config,
             data::SampleSource& calib, data::SampleSource& held_out, const GuardOptions& options, GuardResult& g,
             report::ReferenceCache& cache)
      : reference_(reference), calibrated_(calibrated), config_(config), calib_(calib), held_out_(held_out),
        options_(options), g_(g), cache_(cache), type8_(config.qdq.activation_type),
        sym_(config.qdq.activation_symmetric) {}

  /// Replaces `emitted` (and g's comparison and choices) by the best emission with raised tensors.
  void run(quant::StaticEmission& emitted) {
    params_ = emitted.qdq.activation_params;
    float_bodies_ = g_.choices.float_bodies;  // the bodies went back to float before the rounds
    rank_tensors();
    if (order_.empty()) return;
    size_t k = first_round_size();
    double best = worst_output_sqnr(g_.comparison);
    for (size_t round = 1; round <= options_.max_rounds; ++round) {
      auto t = detail::clock_type::now();
      decide(k);
      const quant::TensorChoices choices = choices_for(k);
      quant::StaticEmission again = quant::emit_static(calibrated_, choices, config_);
      if (again.qdq.quantized_nodes == 0) {  // float is not a quantized model: the floor decides what then
        g_.actions.push_back(fmt::format("guard round {}: raising {} tensors would leave nothing quantized", round, k));
        break;
      }
      const std::string corrected =
          quant::correct_static_biases(calibrated_, again.model, calib_, config_, " (model with raised tensors)");
      if (!corrected.empty()) g_.actions.push_back(corrected);
      g_.timings.push_back({fmt::format("quantize: guard: round {} emission and bias correction", round), detail::seconds_since(t)});
      t = detail::clock_type::now();
      report::CompareResult outs = compare_on(reference_, again.model, held_out_, config_.threads, &cache_);
      g_.timings.push_back({fmt::format("quantize: guard: round {} comparison", round), detail::seconds_since(t)});
      const bool ok = meets_floor(outs, options_.floor, nullptr);
      g_.actions.push_back(fmt::format("guard round {}: {} of {} tensors raised ({} at their observed range, {} at 16 "
                                       "bits, {} float): {}{}",
                                       round, k, order_.size(), count(k, Raise::kObserved), count(k, Raise::kWide),
                                       count(k, Raise::kFloat), describe_outputs(outs), verdict(outs, ok)));
      // A round that sent 16-bit tensors to float must gain a clear 1 dB: float costs their weights'
      // compression, and a limit the tensors do not set moves by noise (no more such rounds then).
      const bool gained = worst_output_sqnr(outs) > best + (floated_ > 0 ? kFloatGain : 0.0);
      if (ok || gained) {
        best = worst_output_sqnr(outs);
        emitted = std::move(again);
        g_.comparison = std::move(outs);
        g_.choices = choices;
      }
      if (ok || (floated_ > 0 && !gained)) break;
      if (k == order_.size()) {  // every tensor raised: those at 8 bits (observed range) go to 16 bits, once,
        if (!promoted_ && promote()) continue;  // then the noisiest 16-bit ones to float
        promoted_ = true;
        if (!to_float()) break;
        continue;
      }
      k = std::min(order_.size(), 2 * k);
    }
  }

 private:
  /// Step 2: every quantized activation alone at 8 bits, noisiest first: a first pass on
  /// kScreenSamples held-out samples ranks them all, the noisiest kRescored are scored again on
  /// probe_samples (the rest keep their first score).
  void rank_tensors() {
    const auto t0 = detail::clock_type::now();
    struct Timer {  // the probe's row of the timings, however rank_tensors returns
      std::vector<report::Timing>& rows;
      detail::clock_type::time_point t0;
      ~Timer() { rows.push_back({"quantize: guard: probe", detail::seconds_since(t0)}); }
    } timer{g_.timings, t0};
    std::vector<FakeQuantTensor> each;
    for (const auto& [name, p] : params_) each.push_back({name, p, type8_});
    std::sort(each.begin(), each.end(), [](const FakeQuantTensor& a, const FakeQuantTensor& b) { return a.name < b.name; });
    // One score per family: a tensor whose producer moves one tensor with the same parameters
    // (Reshape, Transpose, MaxPool) holds that tensor's values rearranged.
    const std::vector<size_t> family = families(each);
    std::vector<FakeQuantTensor> reps;
    std::vector<size_t> rep_of(each.size());
    std::map<size_t, size_t> rep_index;
    for (size_t i = 0; i < each.size(); ++i) {
      auto [it, inserted] = rep_index.emplace(family[i], reps.size());
      if (inserted) reps.push_back(each[family[i]]);
      rep_of[i] = it->second;
    }
    // Few tensors: one pass on probe_samples.
    const size_t screen = reps.size() > kRescored ? std::min(kScreenSamples, options_.probe_samples) : options_.probe_samples;
    std::vector<Quality> q = score_alone(calibrated_.float_model, reps, held_out_, screen, config_.threads);
    size_t runs = reps.size() * std::min(screen, held_out_.size());
    if (options_.probe_samples > screen) {
      std::vector<size_t> idx(reps.size());
      for (size_t i = 0; i < idx.size(); ++i) idx[i] = i;
      std::stable_sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return noise_of(q[a].sqnr_db) > noise_of(q[b].sqnr_db); });
      idx.resize(kRescored);
      std::vector<FakeQuantTensor> top;
      for (size_t i : idx) top.push_back(reps[i]);
      const std::vector<Quality> again =
          score_alone(calibrated_.float_model, top, held_out_, options_.probe_samples, config_.threads);
      for (size_t j = 0; j < idx.size(); ++j) q[idx[j]] = again[j];
      runs += top.size() * std::min(options_.probe_samples, held_out_.size());
    }
    for (size_t i = 0; i < each.size(); ++i) scored_.emplace_back(q[rep_of[i]].sqnr_db, each[i].name);
    families_ = reps.size();
    std::stable_sort(scored_.begin(), scored_.end(),
                     [](const auto& a, const auto& b) { return noise_of(a.first) > noise_of(b.first); });
    for (const auto& entry : scored_)
      if (entry.first < kInf) order_.push_back(entry.second);
    g_.actions.push_back(fmt::format("guard probe: {} quantized tensors ({} groups) scored alone ({} runs on up to {} "
                                     "held-out samples, {:.1f} s); noisiest '{}' (output SQNR {:.1f} dB alone)",
                                     scored_.size(), families_, runs, std::min(options_.probe_samples, held_out_.size()),
                                     detail::seconds_since(t0), order_.empty() ? "" : order_.front(),
                                     scored_.empty() ? kInf : scored_.front().first));
  }

  /// For each tensor (sorted by name), the index of its family's first member: tensors joined
  /// through a producer whose one quantized input has identical parameters (Reshape, Transpose,
  /// MaxPool: the same values moved).
  std::vector<size_t> families(const std::vector<FakeQuantTensor>& each) const {
    std::map<std::string, size_t> index;
    for (size_t i = 0; i < each.size(); ++i) index[each[i].name] = i;
    std::vector<size_t> parent(each.size());
    for (size_t i = 0; i < parent.size(); ++i) parent[i] = i;
    std::function<size_t(size_t)> root = [&](size_t i) { return parent[i] == i ? i : parent[i] = root(parent[i]); };
    for (size_t i = 0; i < each.size(); ++i) {
      const ir::Value* v = calibrated_.float_model.graph->find_value(each[i].name);
      const ir::Node* p = v ? v->producer() : nullptr;
      if (p == nullptr) continue;
      // Only a producer with one quantized input moves that input's values (a Concat's inputs
      // share its parameters but hold different values: scores beside coordinates).
      std::vector<size_t> quantized_inputs;
      for (const ir::Value* in : p->inputs())
        if (const auto it = in ? index.find(in->name()) : index.end(); it != index.end()) quantized_inputs.push_back(it->second);
      if (quantized_inputs.size() != 1) continue;
      const quant::QParams& a = each[i].params;
      const quant::QParams& b = each[quantized_inputs[0]].params;
      if (a.scale != b.scale || a.zero_point != b.zero_point) continue;
      const size_t ra = root(i), rb = root(quantized_inputs[0]);
      parent[std::max(ra, rb)] = std::min(ra, rb);
    }
    std::vector<size_t> out(each.size());
    for (size_t i = 0; i < out.size(); ++i) out[i] = root(i);
    return out;
  }

  /// The fewest noisiest tensors whose removal leaves the predicted output SQNR at floor + margin.
  size_t first_round_size() const {
    const double allowed = noise_of(options_.floor.min_sqnr_db + kTargetMargin);
    double rest = 0.0;
    for (const auto& entry : scored_) rest += noise_of(entry.first);
    size_t k = 0;
    while (k < order_.size() && rest > allowed) rest -= noise_of(scored_[k++].first);
    return std::max<size_t>(1, k);
  }

  const quant::Range* observed(const std::string& name) const {
    for (const auto& [v, r] : calibrated_.observed)
      if (v->name() == name) return &r;
    return nullptr;
  }

  /// Step 3 for the first k tensors not yet decided.
  void decide(size_t k) {
    std::vector<std::string> fresh;
    for (size_t i = 0; i < k; ++i)
      if (!raise_.count(order_[i])) fresh.push_back(order_[i]);
    if (fresh.empty()) return;
    std::vector<FakeQuantTensor> trial;  // observed range at 8 bits (where clipped), then 16 bits
    for (const std::string& name : fresh)
      if (const quant::Range* r = observed(name)) trial.push_back({name, quant::compute_qparams(*r, type8_, sym_), type8_});
    const size_t n8 = trial.size();
    for (const std::string& name : fresh) {
      const quant::Range* r = observed(name);
      const DataType t16 = wide_activation_type(type8_);
      trial.push_back({name, r ? quant::compute_qparams(*r, t16, sym_) : widen_params(params_.at(name), type8_, sym_), t16});
    }
    const std::vector<Quality> q =
        score_alone(calibrated_.float_model, trial, held_out_, std::min(kScreenSamples, options_.probe_samples), config_.threads);
    const double need = options_.floor.min_sqnr_db + kAloneMargin;
    for (size_t i = 0; i < fresh.size(); ++i) {
      const std::string& name = fresh[i];
      double at8 = -kInf;
      for (size_t j = 0; j < n8; ++j)
        if (trial[j].name == name) at8 = q[j].sqnr_db;
      const double at16 = q[n8 + i].sqnr_db;
      at16_[name] = at16;
      const double alone = std::find_if(scored_.begin(), scored_.end(), [&](const auto& e) { return e.second == name; })->first;
      // The observed range at 8 bits only when un-clipping is what the tensor needed (6 dB better
      // than the method's range): mild clipping is not why 8 bits lose too much.
      const Raise r = at8 >= need && at8 >= alone + kUnclipGain ? Raise::kObserved
                      : at16 >= need                            ? Raise::kWide
                                                                : Raise::kFloat;
      raise_[name] = r;
      if (raise_.size() > kMaxNamed) continue;
      g_.actions.push_back(fmt::format(
          "guard: '{}' {}: quantized alone it gives output SQNR {:.1f} dB ({}16 bits: {:.1f} dB)", name,
          r == Raise::kObserved ? "takes its observed range" : r == Raise::kWide ? "raised to 16 bits" : "kept in float",
          alone, at8 > -kInf ? fmt::format("observed range: {:.1f} dB, ", at8) : "", at16));
    }
  }

  /// "" when the round meets the target, else whether it misses only the target or the floor too.
  std::string verdict(const report::CompareResult& outs, bool ok) const {
    if (ok) return "";
    QualityFloor floor = options_.floor;
    floor.state_extra_db = 0.0;
    return meets_floor(outs, floor, nullptr) ? " (meets the floor, below the target)" : " (below the floor)";
  }

  /// The tensors raised to their observed range at 8 bits go to 16 bits (8 bits each were enough
  /// alone, not together); false when there were none.
  bool promote() {
    size_t n = 0;
    for (auto& entry : raise_)
      if (entry.second == Raise::kObserved) {
        entry.second = Raise::kWide;
        ++n;
      }
    promoted_ = true;
    if (n > 0) g_.actions.push_back(fmt::format("guard: {} tensors at their observed range are not enough together: "
                                                "raised to 16 bits", n));
    return n > 0;
  }

  /// Every tensor raised and 16 bits not enough together: the 16-bit tensors that score lowest
  /// alone at 16 bits go to float, one more, then as many as already went; false when none is left.
  bool to_float() {
    std::vector<std::pair<double, std::string>> wide;
    for (const auto& [name, r] : raise_)
      if (r == Raise::kWide) wide.emplace_back(at16_.count(name) ? at16_.at(name) : kInf, name);
    if (wide.empty()) return false;
    std::stable_sort(wide.begin(), wide.end());
    const size_t n = std::min(wide.size(), std::max<size_t>(1, floated_));
    for (size_t i = 0; i < n; ++i) raise_[wide[i].second] = Raise::kFloat;
    floated_ += n;
    g_.actions.push_back(fmt::format("guard: 16 bits are not enough together: {} more tensors kept in float, from '{}' "
                                     "(alone at 16 bits: {:.1f} dB)",
                                     n, wide[0].second, wide[0].first));
    return true;
  }

  size_t count(size_t k, Raise what) const {
    size_t n = 0;
    for (size_t i = 0; i < k; ++i) n += raise_.at(order_[i]) == what;
    return n;
  }

  /// The emission choices for the first k tensors (with the quantized inputs of a float Add/Mul).
  quant::TensorChoices choices_for(size_t k) const {
    quant::TensorChoices c;
    c.float_bodies = float_bodies_;
    for (size_t i = 0; i < k; ++i) {
      const std::string& name = order_[i];
      switch (raise_.at(name)) {
        case Raise::kObserved: c.observed.insert(name); break;
        case Raise::kWide:
          c.wide.insert(name);
          if (observed(name)) c.observed.insert(name);
          break;
        case Raise::kFloat: c.keep_float.insert(name); break;
      }
    }
    for (const std::string& name : std::set<std::string>(c.keep_float)) {
      const ir::Value* v = calibrated_.float_model.graph->find_value(name);
      const ir::Node* p = v ? v->producer() : nullptr;
      if (p == nullptr || (p->op_type() != "Add" && p->op_type() != "Mul")) continue;
      for (const ir::Value* in : p->inputs())
        if (in && params_.count(in->name())) c.keep_float.insert(in->name());
    }
    return c;
  }

  const ir::Model& reference_;
  const quant::CalibratedModel& calibrated_;
  const quant::StaticQuantConfig& config_;
  data::SampleSource& calib_;
  data::SampleSource& held_out_;
  const GuardOptions& options_;
  GuardResult& g_;
  report::ReferenceCache& cache_;
  DataType type8_;
  bool sym_;
  std::unordered_map<std::string, quant::QParams> params_;
  std::vector<std::pair<double, std::string>> scored_;  ///< (alone SQNR, tensor), noisiest first
  std::vector<std::string> order_;                      ///< the tensors that lose anything, noisiest first
  std::map<std::string, Raise> raise_;
  bool promoted_ = false;
  bool float_bodies_ = false;
  size_t floated_ = 0;                          ///< tensors sent to float by to_float()
  std::map<std::string, double> at16_;          ///< each decided tensor's output SQNR alone at 16 bits
  size_t families_ = 0;
};

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

double worst_output_sqnr(const report::CompareResult& r) {
  double s = std::numeric_limits<double>::infinity();
  for (const auto& o : r.outputs) s = std::min(s, o.error.sqnr_db());
  return s;
}

const char* output_metric_name(OutputMetric m) {
  switch (m) {
    case OutputMetric::kAuto: return "auto";
    case OutputMetric::kAgreement: return "agreement";
    case OutputMetric::kSqnr: return "sqnr";
    case OutputMetric::kNll: return "nll";
    case OutputMetric::kIou: return "iou";
  }
  return "?";
}

OutputMetric parse_output_metric(const std::string& name) {
  for (OutputMetric m :
       {OutputMetric::kAuto, OutputMetric::kAgreement, OutputMetric::kSqnr, OutputMetric::kNll, OutputMetric::kIou})
    if (name == output_metric_name(m)) return m;
  fail(ErrorCode::kConfig, "--metric '{}' is not auto, agreement, sqnr, nll or iou", name);
}

bool meets_floor(const report::CompareResult& result, const QualityFloor& floor, std::string* why) {
  std::string below;
  for (const auto& o : result.outputs) {
    // Channels of very different magnitudes (scores beside coordinates) are not class scores, even
    // in an [N, C] tensor: judged by SQNR per channel group.
    const double groups = floor.metric == OutputMetric::kAgreement ? std::nan("") : o.channel_group_sqnr_db();
    const bool as_classifier = o.classifier && floor.metric != OutputMetric::kSqnr && floor.metric != OutputMetric::kNll;
    const double top1 = as_classifier && std::isnan(groups) ? o.classes.top1_agreement() : std::nan("");
    const double nll =
        floor.metric == OutputMetric::kAuto || floor.metric == OutputMetric::kNll ? o.lm_nll_increase() : std::nan("");
    const double iou =
        floor.metric == OutputMetric::kAuto || floor.metric == OutputMetric::kIou ? o.mask_iou() : std::nan("");
    if (!std::isnan(iou)) {
      if (!(iou >= floor.min_mask_iou))
        below += fmt::format("{}{}: mask IoU {:.3f} < {:.3f} (probability map thresholded at 0.5)",
                             below.empty() ? "" : "; ", o.name, iou, floor.min_mask_iou);
      continue;
    }
    if (!std::isnan(top1)) {
      // The counted disagreements may reach floor(rows · (1 - min)); a held-out set of 16 to
      // 1 / (1 - min) rows (33 at 97%) cannot tell one disagreement from the floor, so one is allowed.
      const int64_t rows = o.classes.rows();
      const int64_t misses = rows - static_cast<int64_t>(std::llround(top1 * static_cast<double>(rows)));
      int64_t allowed = static_cast<int64_t>(std::floor(static_cast<double>(rows) * (1.0 - floor.min_top1_agreement) + 1e-9));
      if (allowed == 0 && rows >= 16) allowed = 1;
      if (floor.min_top1_agreement >= 1.0 ? misses > 0 : misses > allowed)
        below += fmt::format("{}{}: top-1 agreement {:.1f}% < {:.1f}%", below.empty() ? "" : "; ", o.name, 100.0 * top1,
                             100.0 * floor.min_top1_agreement);
      else if (!(o.error.sqnr_db() >= floor.min_classifier_sqnr_db))
        below += fmt::format("{}{}: scores' SQNR {:.1f} dB < {:.1f} dB (top-1 agreement {:.1f}%)",
                             below.empty() ? "" : "; ", o.name, o.error.sqnr_db(), floor.min_classifier_sqnr_db,
                             100.0 * top1);
    } else if (const double need = floor.min_sqnr_db + (o.recurrent_state ? floor.state_extra_db : 0.0);
               !std::isnan(o.error.sqnr_db()) && o.error.sqnr_db() < need) {  // NaN: not measured
      below += fmt::format("{}{}: SQNR {:.1f} dB < {:.1f} dB{}", below.empty() ? "" : "; ", o.name, o.error.sqnr_db(),
                           need, o.recurrent_state ? " (a recurrent state, fed back at every step)" : "");
    } else if (!std::isnan(nll) && !(nll <= floor.max_lm_nll_increase)) {
      below += fmt::format("{}{}: NLL +{:.2f}% on the model's own next-token predictions > +{:.2f}%",
                           below.empty() ? "" : "; ", o.name, 100.0 * nll, 100.0 * floor.max_lm_nll_increase);
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
    if ((o.classifier && o.classes.top1_agreement() < 0.5) || (o.error.sqnr_db() < 5.0 && !(o.mask_iou() >= 0.5)))
      return true;
  return false;
}

std::string describe_outputs(const report::CompareResult& result) {
  std::string s;
  for (const auto& o : result.outputs) {
    if (!s.empty()) s += "; ";
    s += fmt::format("{}: SQNR {:.1f} dB", o.name, o.error.sqnr_db());
    const double top1 = o.classifier ? o.classes.top1_agreement() : std::nan("");
    if (!std::isnan(top1)) s += fmt::format(", top-1 agreement {:.1f}%", 100.0 * top1);
    if (const double nll = o.lm_nll_increase(); !std::isnan(nll)) s += fmt::format(", NLL +{:.2f}%", 100.0 * nll);
    if (const double iou = o.mask_iou(); !std::isnan(iou)) s += fmt::format(", mask IoU {:.3f}", iou);
  }
  return s;
}

namespace {

/// What a guard step needs to emit and judge a model.
struct GuardContext {
  const ir::Model& reference;
  const quant::CalibratedModel& calibrated;
  const quant::StaticQuantConfig& config;
  data::SampleSource& calib;
  data::SampleSource& judge;
  report::ReferenceCache* cache;
  const QualityFloor& target;
};

/// With activations quantized inside If/Loop/Scan bodies: the same main-graph choices with the
/// bodies in float, judged on the same rows; kept (true) when they meet the target or score a
/// clear kFloatGain higher.
bool try_float_bodies(const GuardContext& c, quant::StaticEmission& emitted, GuardResult& g) {
  if (emitted.qdq.body_activations == 0 || g.choices.float_bodies) return false;
  const auto t = detail::clock_type::now();
  // The main graph's choices stay; those naming body tensors go with the bodies' quantization.
  quant::TensorChoices flat;
  flat.float_bodies = true;
  const ir::Graph& main = *c.calibrated.float_model.graph;
  auto in_main = [&](const std::set<std::string>& names) {
    std::set<std::string> out;
    for (const std::string& n : names)
      if (main.find_value(n)) out.insert(n);
    return out;
  };
  flat.keep_float = in_main(g.choices.keep_float);
  flat.wide = in_main(g.choices.wide);
  flat.observed = in_main(g.choices.observed);
  quant::StaticEmission again = quant::emit_static(c.calibrated, flat, c.config);
  const std::string corrected = quant::correct_static_biases(c.calibrated, again.model, c.calib, c.config, " (bodies in float)");
  report::CompareResult outs = compare_on(c.reference, again.model, c.judge, c.config.threads, c.cache);
  g.timings.push_back({"quantize: guard: bodies in float", detail::seconds_since(t)});
  const bool better =
      meets_floor(outs, c.target, nullptr) || worst_output_sqnr(outs) > worst_output_sqnr(g.comparison) + kFloatGain;
  g.actions.push_back(fmt::format("guard: with the activations inside If/Loop/Scan bodies quantized: {}; in float: {}{}",
                                  describe_outputs(g.comparison), describe_outputs(outs),
                                  better ? " (kept)" : " (no better: kept quantized)"));
  if (!better) return false;
  if (!corrected.empty()) g.actions.push_back(corrected);
  emitted = std::move(again);
  g.comparison = std::move(outs);
  g.choices = flat;
  return true;
}

}  // namespace

GuardResult run_guard(const ir::Model& reference, const quant::CalibratedModel& calibrated,
                      const quant::StaticQuantConfig& config, data::SampleSource& calib, data::SampleSource& held_out,
                      quant::StaticEmission& emitted, const GuardOptions& options, const quant::TensorChoices& choices) {
  GuardResult g;
  g.choices = choices;
  report::ReferenceCache held_out_cache, extended_cache;
  auto t = detail::clock_type::now();
  g.comparison = compare_on(reference, emitted.model, held_out, config.threads, &held_out_cache);
  g.timings.push_back({"quantize: guard: held-out comparison", detail::seconds_since(t)});
  spdlog::info("quality guard: {}", describe_outputs(g.comparison));
  // A classifier that meets the floor with disagreements is judged again on more rows: the
  // held-out ones and calibration samples, up to kJudgeRows (their ranges came from those
  // samples, which matters little for agreement; a few dozen rows cannot resolve a few points).
  ExtendedSource extended(held_out, calib, kJudgeRows);
  data::SampleSource* judge = &held_out;
  report::ReferenceCache* judge_cache = &held_out_cache;
  if (options.extend_with_calib && borderline(g.comparison, options.floor) && extended.size() > held_out.size()) {
    judge = &extended;
    judge_cache = &extended_cache;
    t = detail::clock_type::now();
    g.comparison = compare_on(reference, emitted.model, extended, config.threads, judge_cache);
    g.timings.push_back({"quantize: guard: judged on more rows", detail::seconds_since(t)});
    g.actions.push_back(fmt::format("guard: disagreements on the {} held-out rows: judged on {} rows (with calibration "
                                    "samples): {}",
                                    held_out.size(), extended.size(), describe_outputs(g.comparison)));
  }
  // The rounds aim at the target (the floor, with a margin for recurrent states); the floor judges.
  GuardOptions aim = options;
  aim.floor.state_extra_db = std::max(options.floor.state_extra_db, options.state_target_extra_db);
  std::string why;
  bool below = !meets_floor(g.comparison, aim.floor, &why);
  GuardContext ctx{reference, calibrated, config, calib, *judge, judge_cache, aim.floor};
  // Quantized activations inside If/Loop/Scan bodies that leave the model below the target: the
  // same choices with the bodies in float are judged first (an LSTM state loop quantized even at 16
  // bits can cost a recurrent state 20 dB that float bodies keep), and again after the rounds (which
  // raise body tensors as any other) if those end below the target.
  if (options.search && below && try_float_bodies(ctx, emitted, g)) below = !meets_floor(g.comparison, aim.floor, &why);
  if (options.search && below && choices.empty() && dtype_bits(config.qdq.activation_type) == 8) {
    g.actions.push_back("guard: below the quality " +
                        std::string(meets_floor(g.comparison, options.floor, nullptr) ? "target" : "floor") +
                        " at 8 bits (" + why + ")");
    Escalation(reference, calibrated, config, calib, *judge, aim, g, *judge_cache).run(emitted);
  }
  if (options.search && !meets_floor(g.comparison, aim.floor, nullptr)) try_float_bodies(ctx, emitted, g);
  g.looks_broken = looks_broken(g.comparison);
  if (g.looks_broken)
    g.warnings.push_back(fmt::format("THE QUANTIZED MODEL LOOKS BROKEN on {} samples: {}", judge->size(),
                                     describe_outputs(g.comparison)));
  return g;
}

}  // namespace qtool::pipeline
