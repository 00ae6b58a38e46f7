// apply_weight_only: the low-bit weight rewrite of a whole model (see lowbit.h).
//
// Phases, each over the weight layers in node order (deterministic):
//   1. find the weight layers (MatMul, Gemm, Conv with a constant float weight; Gather tables) and
//      view each weight as W [N output channels, K reduction channels] (lowbit_targets.cc);
//   2. choose each one's format (default, first/last rule, --layer-bits, exclusions, --plan);
//   3. calibration statistics of the layers' inputs (Hessians of MatMul/Gemm rows, 1x1 Conv
//      pixels and k×k Conv im2col patches; mean |x| and energy for AWQ and saliency);
//   4. the algorithm's pre-pass (AWQ: scales searched and folded, algorithms/awq.cc);
//   5. quantize each layer with the algorithm's function (weight_algorithms.h: RTN, GPTQ, AWQ's
//      output-error clipping; outlier columns split off; optionally re-collecting the statistics
//      from the partly quantized model) and rewrite it (lowbit_emit.cc), raising the opset to what
//      the output needs; with tuning, the layers are written after tune_quantized.
#include <algorithm>
#include <cmath>
#include <unordered_map>

#include <spdlog/spdlog.h>

#include "lowbit_internal.h"
#include "qtool/core/error.h"
#include "qtool/core/interrupt.h"
#include "qtool/passes/upgrade_opset.h"
#include "qtool/quant/lowbit.h"
#include "qtool/quant/weight_algorithms.h"
#include "qtool/quant/sparsity.h"

namespace qtool::quant {
namespace {

using detail::InputStats;
using detail::Kind;
using detail::Target;
using StatsMap = std::unordered_map<const ir::Value*, InputStats>;

bool has_samples(const CalibrationInputs* calib) { return calib && (calib->source || !calib->samples.empty()); }

/// A layer quantized but not yet written (tuning runs on all of them first).
struct Pending {
  size_t target, layer;
  QuantizedMatrix q;
  bool fp16;
  std::vector<float> latent;
  int64_t float_bytes;
  std::vector<uint8_t> pruned;  ///< weights held at 0 while tuning (a pruned layer's zeros)
};

/// One run of apply_weight_only: the phases share the targets, statistics and report.
class WeightOnlyRun {
 public:
  WeightOnlyRun(ir::Model& model, const WeightOnlyConfig& cfg, const CalibrationInputs* calib)
      : model_(model), g_(*model.graph), cfg_(cfg), calib_(calib), algo_(weight_algorithm(cfg.algorithm)) {}

  WeightOnlyReport run();

 private:
  void validate();
  void collect_stats();
  bool from_cache();
  bool raise_opset();
  void recollect_stats(size_t from);
  void quantize_target(size_t ti);
  QuantizedMatrix quantize_matrix(Target& t, QuantSpec& spec, const InputStats* st, const std::vector<float>* awq_s,
                                  const std::vector<int64_t>& out_cols, WeightOnlyLayer& L);
  bool prunes(const Target& t) const;
  std::vector<uint8_t> choose_mask(Target& t, const InputStats* st, const std::vector<float>* awq_s,
                                   WeightOnlyLayer& L, SparsitySpec* adaptive);
  std::vector<int64_t> outlier_columns(Target& t, const InputStats* st, const std::vector<float>* awq_s,
                                       std::vector<float>& w_before_copy);
  void emit_layer(Target& t, QuantizedMatrix& q, bool fp16, const std::vector<int64_t>& out_cols,
                  const std::vector<float>& w_before, WeightOnlyLayer& L, int64_t float_bytes);
  void tune_and_emit();

  ir::Model& model_;
  ir::Graph& g_;
  const WeightOnlyConfig& cfg_;
  const CalibrationInputs* calib_;
  const WeightAlgorithmInfo& algo_;
  WeightOnlyReport report_;
  bool tuning_ = false;
  bool want_stats_ = false;
  bool sparsegpt_ = false;  ///< --sparsity-method sparsegpt: Hessians collected for the pruned layers
  bool compact_ = false;    ///< palettes or pruning in this run: every layer in a form folded at load
  bool sequential_ = false;
  ir::Model teacher_;  ///< the float model tuning distills from, before AWQ folds its scales
  std::vector<Target> targets_;
  StatsMap stats_;
  std::unordered_map<const Target*, InputStats> patch_stats_;  ///< k×k Convs (GPTQ)
  std::unordered_map<const ir::Value*, std::vector<float>> awq_scales_;
  std::unordered_map<const Target*, std::string> awq_where_;
  const WeightFormat* main_format_ = nullptr;
  double main_bits_ = 0, main_weights_ = 0;
  // Sequential calibration: the statistics of a layer's input are re-collected from the model with
  // every earlier layer already quantized (GPTQ's "true sequential" order). Re-collected statistics
  // are keyed by the value the layer reads now (after AWQ folding, the already rescaled x / s), so
  // their Hessian needs no AWQ rescaling.
  bool stale_ = false;                     ///< some layer was quantized since the stats were collected
  const ir::Value* last_input_ = nullptr;  ///< input of the last quantized layer
  std::unordered_map<const Target*, const ir::Value*> actual_key_;
  StatsMap fresh_stats_;
  GptqOptions gopt_;
  std::vector<Pending> pending_;
};

void WeightOnlyRun::validate() {
  QTOOL_CHECK(cfg_.outlier_fraction >= 0.0 && cfg_.outlier_fraction < 0.5, ErrorCode::kConfig,
              "--outlier-fraction {} must be in [0, 0.5)", cfg_.outlier_fraction);
  if (cfg_.format == WeightLayout::kMatMulNBits && cfg_.block_size <= 0)
    fail(ErrorCode::kConfig, "--format matmulnbits needs --block-size 16, 32, 64 or 128");
  QTOOL_CHECK(!algo_.needs_calibration || has_samples(calib_), ErrorCode::kConfig,
              "--algorithm {} needs calibration data (--calib)", algo_.name);
  QTOOL_CHECK(cfg_.palette_block >= 0, ErrorCode::kInternal, "palette_block {} was not resolved", cfg_.palette_block);
  tuning_ = cfg_.tune.steps > 0;
  const bool palette = cfg_.bits.is_palette() || cfg_.bits_first_last.is_palette() || cfg_.bits_depthwise.is_palette() ||
                       std::any_of(cfg_.layer_bits.begin(), cfg_.layer_bits.end(),
                                   [](const LayerBitsRule& r) { return r.bits.is_palette(); }) ||
                       std::any_of(cfg_.plan.begin(), cfg_.plan.end(), [](const auto& e) {
                         return e.second.format && e.second.format->scheme == WeightScheme::kPalette;
                       });
  if (cfg_.sparsity.active()) {
    QTOOL_CHECK(cfg_.outlier_fraction == 0.0, ErrorCode::kConfig,
                "--outlier-fraction cannot be combined with --sparsity");
    QTOOL_CHECK(cfg_.format != WeightLayout::kMatMulNBits, ErrorCode::kConfig,
                "--sparsity needs --format qdq or cast: MatMulNBits has no sparse form");
  }
  compact_ = palette || cfg_.sparsity.active();
  QTOOL_CHECK(!(tuning_ && palette), ErrorCode::kConfig,
              "--tune-steps cannot be combined with palettes yet (tuning moves levels on a uniform grid)");
  if (tuning_) {
    QTOOL_CHECK(has_samples(calib_), ErrorCode::kConfig, "--tune-steps needs calibration data (--calib)");
    QTOOL_CHECK(cfg_.outlier_fraction == 0.0, ErrorCode::kConfig,
                "--tune-steps cannot be combined with --outlier-fraction (the int8 outlier branch is not tuned)");
  }
}

/// Phase 3: calibration statistics of the inputs of quantized layers.
void WeightOnlyRun::collect_stats() {
  const bool any_palette = std::any_of(targets_.begin(), targets_.end(), [](const Target& t) {
    return t.format && t.format->scheme == WeightScheme::kPalette;
  });
  const bool sparse_stats = cfg_.sparsity.active() && cfg_.sparsity_method != SparsityMethod::kMagnitude;
  sparsegpt_ = cfg_.sparsity.active() && cfg_.sparsity_method == SparsityMethod::kSparseGpt;
  want_stats_ = has_samples(calib_) &&
                (algo_.needs_calibration || cfg_.outlier_fraction > 0.0 || any_palette || sparse_stats);
  if (!want_stats_) return;
  const bool hessians = algo_.needs_calibration || sparsegpt_;
  for (const Target& t : targets_)
    if (t.format && t.input && t.kind != Kind::kGather) {
      InputStats& s = stats_[t.input];
      s.channel_axis1 = t.channels_first;
      s.k = t.cols;
      // GPTQ, SparseGPT, and AWQ's output-error objective
      s.want_hessian = s.want_hessian || (hessians && (algo_.needs_calibration || prunes(t)));
    }
  std::vector<std::pair<const ir::Value*, InputStats*>> extra;
  if (algo_.gptq || sparsegpt_ || any_palette || sparse_stats)
    for (const Target& t : targets_)
      if (t.format && t.patch_input &&
          ((algo_.gptq && detail::gptq_eligible(*t.format, cfg_)) || prunes(t) ||
           t.format->scheme == WeightScheme::kPalette)) {
        InputStats& s = patch_stats_[&t];
        s.k = t.shape[1] * t.taps;
        s.want_hessian = true;
        s.conv_geometry = t.conv_geometry;
        extra.emplace_back(t.patch_input, &s);
      }
  if (from_cache()) return;
  detail::collect_input_stats(model_, *calib_, cfg_.threads, cfg_.max_calib_rows, stats_, extra);
  if (calib_->cache) {
    for (const auto& [v, s] : stats_) calib_->cache->by_value[v->name()] = s;
    for (const auto& [t, s] : patch_stats_) calib_->cache->patches_by_weight[t->weight_name] = s;
  }
}

/// Fills every statistic this run needs from CalibrationInputs::cache; false (nothing changed) when
/// one is missing there or was collected without the Hessian this run needs.
bool WeightOnlyRun::from_cache() {
  if (!calib_->cache) return false;
  auto usable = [](const InputStats& want, const InputStats& have) {
    return have.k == want.k && have.channel_axis1 == want.channel_axis1 && have.conv_geometry == want.conv_geometry &&
           (have.want_hessian || !want.want_hessian);
  };
  const CalibrationStatsCache& c = *calib_->cache;
  for (const auto& [v, s] : stats_) {
    const auto it = c.by_value.find(v->name());
    if (it == c.by_value.end() || !usable(s, it->second)) return false;
  }
  for (const auto& [t, s] : patch_stats_) {
    const auto it = c.patches_by_weight.find(t->weight_name);
    if (it == c.patches_by_weight.end() || !usable(s, it->second)) return false;
  }
  for (auto& [v, s] : stats_) s = c.by_value.at(v->name());
  for (auto& [t, s] : patch_stats_) s = c.patches_by_weight.at(t->weight_name);
  return true;
}

/// The opset the output needs (and com.microsoft for MatMulNBits). Returns true when the opset was
/// upgraded: the upgrade may rebuild values (initializers that were graph inputs), so the targets
/// found before must be found again.
bool WeightOnlyRun::raise_opset() {
  int64_t need = 0;
  bool nbits = false;
  for (const Target& t : targets_)
    if (t.format) {
      need = std::max(need, detail::required_opset(*t.format));
      nbits = nbits || t.format->layout == WeightLayout::kMatMulNBits;
    }
  const int64_t have = model_.opset("");
  if (need > have) {
    passes::PassOptions po;
    po.target_opset = need;
    with_context(fmt::format("while raising the model's opset from {} to {} for the low-bit weights", have, need),
                 [&] { passes::upgrade_opset(model_, po); });
  }
  if (need >= 25) model_.ir_version = std::max<int64_t>(model_.ir_version, 11);
  if (nbits && model_.opset("com.microsoft") == 0) model_.set_opset("com.microsoft", 1);
  report_.opset = model_.opset("");
  return need > have;
}

/// Sequential calibration: re-collects the statistics of the inputs of targets[from..] from the
/// partly quantized model (one calibration pass).
void WeightOnlyRun::recollect_stats(size_t from) {
  StatsMap fresh;
  for (size_t ui = from; ui < targets_.size(); ++ui) {
    const Target& u = targets_[ui];
    if (!u.format || !u.input || !stats_.count(u.input)) continue;
    const ir::Value* now = u.node->input(0);  // x, or AWQ's inserted x / s
    InputStats& f = fresh[now];
    f.channel_axis1 = u.channels_first;
    f.k = stats_.at(u.input).k;
    f.want_hessian = stats_.at(u.input).want_hessian;
    actual_key_[&u] = now;
  }
  g_.topo_sort();
  with_context("while re-collecting calibration statistics from the partly quantized model",
               [&] { detail::collect_input_stats(model_, *calib_, cfg_.threads, cfg_.max_calib_rows, fresh); });
  for (auto& entry : fresh) fresh_stats_[entry.first] = std::move(entry.second);
  stale_ = false;
}

/// Outlier input channels of a low-bit MatMul/Gemm whose output is not a graph output: selected,
/// then zeroed in t.w (the original kept in `w_before_copy`).
std::vector<int64_t> WeightOnlyRun::outlier_columns(Target& t, const InputStats* st, const std::vector<float>* awq_s,
                                                    std::vector<float>& w_before_copy) {
  std::vector<int64_t> out_cols;
  if (!(cfg_.outlier_fraction > 0 && t.format->bits < 8 && t.input && t.kind != Kind::kConv &&
        !t.node->output(0)->is_graph_output() && t.consumers.size() == 1))
    return out_cols;
  std::vector<float> energy;
  if (st && st->rows > 0) {
    energy = st->energy();
    if (awq_s)
      for (int64_t c = 0; c < t.cols; ++c) energy[c] /= (*awq_s)[c] * (*awq_s)[c];
  }
  out_cols = select_outlier_columns(t.w, t.rows, t.cols, cfg_.outlier_fraction, energy);
  if (!out_cols.empty()) w_before_copy = t.w;
  for (int64_t r = 0; r < t.rows; ++r)
    for (int64_t c : out_cols) t.w[r * t.cols + c] = 0.0f;
  return out_cols;
}

/// Whether a layer is pruned: every quantized layer but the first and last, depthwise convolutions
/// and embedding tables (few weights that everything downstream rests on).
bool WeightOnlyRun::prunes(const Target& t) const {
  if (!cfg_.sparsity.active() || !t.format || t.first_last || t.kind == Kind::kGather) return false;
  if (std::find(cfg_.keep_dense.begin(), cfg_.keep_dense.end(), t.weight->name()) != cfg_.keep_dense.end()) return false;
  return !detail::is_depthwise(t);
}

/// The mask of a pruned layer chosen before quantization (magnitude, Wanda; t.w zeroed there), or
/// none with `adaptive` set when the GPTQ sweep chooses it (SparseGPT with a Hessian).
std::vector<uint8_t> WeightOnlyRun::choose_mask(Target& t, const InputStats* st, const std::vector<float>* awq_s,
                                                WeightOnlyLayer& L, SparsitySpec* adaptive) {
  SparsityMethod method = cfg_.sparsity_method;
  const bool have_patch = patch_stats_.count(&t) && patch_stats_.at(&t).hessian.samples() > 0;
  const bool have_h = (st && st->want_hessian && st->hessian.samples() > 0 &&
                       (t.kind != Kind::kConv || t.channels_first)) ||
                      have_patch;
  // Input norms ‖x‖ per weight column (Wanda), when known: for a k×k conv viewed per kernel tap
  // (rows (m, tap), columns c), the norm of patch element (c, tap) goes with weight (r, c).
  std::vector<float> norm, blocked_norm;
  if (have_patch && !t.conv_blocked) {
    norm = patch_stats_.at(&t).hessian.channel_energy();
  } else if (have_patch) {
    blocked_norm = patch_stats_.at(&t).hessian.channel_energy();
    for (float& v : blocked_norm) v = std::sqrt(std::max(0.0f, v));
  } else if (st && st->rows > 0 && st->k == t.cols && (t.kind != Kind::kConv || t.channels_first)) {
    norm = st->energy();
    if (awq_s)
      for (int64_t c = 0; c < t.cols; ++c) norm[c] /= (*awq_s)[c] * (*awq_s)[c];
  }
  for (float& v : norm) v = std::sqrt(std::max(0.0f, v));
  // A k×k conv's palette scaled per block of input channels is not swept on its im2col Hessian.
  const bool no_sweep = t.format->scheme == WeightScheme::kPalette && t.conv_blocked && t.taps > 1;
  if (method == SparsityMethod::kSparseGpt && (!have_h || no_sweep)) {
    method = norm.empty() && blocked_norm.empty() ? SparsityMethod::kMagnitude : SparsityMethod::kWanda;
    L.note += fmt::format("{}{}: pruned by {}", L.note.empty() ? "" : "; ",
                          no_sweep ? "no SparseGPT sweep for a scaled palette of a k×k conv" : "no input Hessian for SparseGPT",
                          sparsity_method_name(method));
  }
  if (method == SparsityMethod::kWanda && norm.empty() && blocked_norm.empty()) {
    method = SparsityMethod::kMagnitude;
    L.note += fmt::format("{}no input statistics for Wanda: pruned by magnitude", L.note.empty() ? "" : "; ");
  }
  L.pruning = fmt::format("{} {}", sparsity_method_name(method), cfg_.sparsity.spelled());
  if (method == SparsityMethod::kSparseGpt) {
    *adaptive = cfg_.sparsity;
    return {};
  }
  std::vector<float> score = prune_scores(t.w, t.rows, t.cols, method, norm);
  if (method == SparsityMethod::kWanda && !blocked_norm.empty())
    for (int64_t r = 0; r < t.rows; ++r)
      for (int64_t c = 0; c < t.cols; ++c) score[r * t.cols + c] *= blocked_norm[c * t.taps + r % t.taps];
  // Magnitude compares the whole layer; Wanda compares the weights of each output row.
  std::vector<uint8_t> mask = prune_mask(score, t.rows, t.cols, cfg_.sparsity, method == SparsityMethod::kWanda);
  for (size_t i = 0; i < mask.size(); ++i)
    if (mask[i]) t.w[i] = 0.0f;
  return mask;
}

/// The algorithm's levels for one layer (again with float32 scales when a float16 scale would
/// leave float16's normal range).
QuantizedMatrix WeightOnlyRun::quantize_matrix(Target& t, QuantSpec& spec, const InputStats* st,
                                               const std::vector<float>* awq_s, const std::vector<int64_t>& out_cols,
                                               WeightOnlyLayer& L) {
  SparsitySpec adaptive;
  const std::vector<uint8_t> mask = prunes(t) ? choose_mask(t, st, awq_s, L, &adaptive) : std::vector<uint8_t>{};
  auto job = [&] {
    detail::LayerJob j{t, spec, cfg_, gopt_, st, nullptr, awq_s, out_cols, false, nullptr, {}};
    j.patch_stats = patch_stats_.count(&t) ? &patch_stats_.at(&t) : nullptr;
    j.have_hessian = st && st->want_hessian && st->hessian.samples() > 0 &&
                     (t.kind != Kind::kConv || t.channels_first) && t.kind != Kind::kGather &&
                     (detail::gptq_eligible(*t.format, cfg_) || adaptive.active());
    if (!algo_.gptq && !adaptive.active()) j.patch_stats = nullptr;  // im2col statistics: importance only
    if (t.format->bits == 8 && t.format->scheme == WeightScheme::kInt && !adaptive.active()) {
      // int8 GPTQ (gptq_int8) only on a Hessian of at least 2K rows: on fewer (a classifier's
      // Gemm sees one row per sample) it fits the calibration rows, where rounding is already close.
      const HessianAccumulator* h = j.patch_stats ? &j.patch_stats->hessian : st ? &st->hessian : nullptr;
      const int64_t k = j.patch_stats ? t.shape[1] * t.taps : t.cols;
      if (h == nullptr || h->samples() < 2 * k) {
        j.have_hessian = false;
        j.patch_stats = nullptr;
      }
    }
    j.pruned = mask.empty() ? nullptr : &mask;
    j.adaptive = adaptive;
    return j;
  };
  // SparseGPT is a GPTQ sweep, whatever the algorithm of the unpruned layers.
  const LayerQuantizeFn quantize = adaptive.active() ? detail::quantize_gptq_layer : algo_.quantize;
  auto run = [&] {
    const detail::LayerJob j = job();
    if (t.format->scheme == WeightScheme::kPalette && !j.have_hessian && !(j.patch_stats && algo_.gptq) &&
        !adaptive.active()) {
      // Palettes without a Hessian sweep: weighted k-means (the importance from any statistics).
      detail::LayerJob k = j;
      k.patch_stats = patch_stats_.count(&t) ? &patch_stats_.at(&t) : nullptr;
      return detail::quantize_rtn_layer(k, &L.algorithm);
    }
    return quantize(j, &L.algorithm);
  };
  QuantizedMatrix q = run();
  if (spec.fp16_scale && !scales_fit_fp16(q)) {
    spec.fp16_scale = false;  // a scale below float16's normal range (or above it): keep float32
    q = run();
    L.note += (L.note.empty() ? "" : "; ") + std::string("scales outside float16's normal range: float32 scales");
  }
  return q;
}

/// Writes one quantized layer into the graph and accounts for it in the report.
void WeightOnlyRun::emit_layer(Target& t, QuantizedMatrix& q, bool fp16, const std::vector<int64_t>& out_cols,
                               const std::vector<float>& w_before, WeightOnlyLayer& L, int64_t float_bytes) {
  // Relative weight error (outlier columns count as int8-exact here; their error is tiny),
  // dequantizing element by element rather than materializing the whole matrix.
  double num = 0, den = 0;
  int64_t zeros = 0;
  std::vector<char> oc(static_cast<size_t>(t.cols), 0);
  for (int64_t c : out_cols) oc[static_cast<size_t>(c)] = 1;
  for (int64_t r = 0; r < t.rows; ++r)
    for (int64_t c = 0; c < t.cols; ++c) {
      const double wv = w_before[r * t.cols + c];
      const double qv = q.grid(r, c).dequantize(q.levels[r * t.cols + c]);
      const double e = oc[static_cast<size_t>(c)] ? 0.0 : wv - qv;
      zeros += qv == 0.0;
      num += e * e;
      den += wv * wv;
    }
  L.weight_rel_mse = den > 0 ? num / den : 0.0;
  if (cfg_.keep_dequantized) {
    L.dequantized = Tensor(DataType::kFloat, t.shape);
    float* d = L.dequantized.mutable_data<float>();
    for (int64_t r = 0; r < t.rows; ++r)
      for (int64_t c = 0; c < t.cols; ++c)
        d[detail::storage_index(t, r, c)] = oc[static_cast<size_t>(c)] ? w_before[r * t.cols + c]
                                                                       : q.grid(r, c).dequantize(q.levels[r * t.cols + c]);
    if (q.k_blocks() == 1 && t.format->scheme == WeightScheme::kInt && out_cols.empty()) {
      bool symmetric = true;
      for (const BlockGrid& g : q.grids) symmetric = symmetric && g.zero_point == 0;
      if (symmetric)
        for (int64_t r = 0; r < t.rows; ++r) L.channel_scales.push_back(q.grid(r, 0).scale);
    }
  }
  L.sparsity = static_cast<double>(zeros) / static_cast<double>(t.rows * t.cols);
  // With palettes or pruning the compressed layers are folded by ONNX Runtime at load; the int8 layers
  // beside them (first/last, depthwise) are written in the Cast form too, so that nothing is left
  // dequantizing on every run (their DequantizeLinear made MobileNetV2's palette model 2× slower).
  int64_t bytes = detail::emit_weight(g_, t, q, fp16, cfg_.cast_dequant || compact_, L);
  if (!out_cols.empty()) {
    bytes += detail::emit_outliers(g_, t, out_cols, w_before);
    L.outlier_columns = static_cast<int64_t>(out_cols.size());
  }
  L.format = std::string(t.format->name);
  L.bits_per_weight = static_cast<double>(bytes) * 8.0 / static_cast<double>(t.rows * t.cols);
  report_.float_weight_bytes += float_bytes;
  report_.quant_weight_bytes += bytes;
  std::vector<float>().swap(t.w);  // keep one layer's float copy at a time
  std::vector<int32_t>().swap(q.levels);
  if (t.format->bits == main_format_->bits && t.format->scheme == main_format_->scheme && !t.first_last) {
    main_bits_ += static_cast<double>(bytes) * 8.0;
    main_weights_ += static_cast<double>(t.rows * t.cols);
  }
}

/// Phase 5 for one target: quantize, then write it (or keep it for tuning).
void WeightOnlyRun::quantize_target(size_t ti) {
  Target& t = targets_[ti];
  if (sequential_ && stale_ && t.format && (detail::gptq_eligible(*t.format, cfg_) || prunes(t)) && t.input &&
      t.input != last_input_ && stats_.count(t.input))
    recollect_stats(ti);
  check_interrupt(fmt::format("before quantizing weight '{}'", t.weight->name()));  // Ctrl-C between layers
  WeightOnlyLayer L;
  L.node = t.node->name().empty() ? t.node->describe() : t.node->name();
  L.output = t.node->output(0) ? t.node->output(0)->name() : "";
  L.op_type = detail::kind_name(t.kind);
  L.weight = t.weight->name();
  L.rows = t.rows;
  L.cols = t.cols;
  L.note = t.note;
  const int64_t float_bytes = shape_numel(t.shape) * 4;
  if (!t.format) {
    L.format = "float";
    L.bits_per_weight = 32.0;
    report_.layers.push_back(std::move(L));
    return;
  }
  with_context("while quantizing weight '" + t.weight->name() + "' of " + t.node->describe(), [&] {
    detail::extract_matrix(t);
    QuantSpec spec = QuantSpec::from_format(*t.format);
    spec.clip_steps = cfg_.clip_steps;
    spec.fp16_scale = detail::wants_fp16_scales(cfg_, *t.format);
    const InputStats* st = t.input && stats_.count(t.input) ? &stats_.at(t.input) : nullptr;
    // AWQ scales to apply to the statistics: none when they were re-collected on the rescaled input.
    const std::vector<float>* awq_s = awq_scales_.count(t.input) ? &awq_scales_.at(t.input) : nullptr;
    if (actual_key_.count(&t) && fresh_stats_.count(actual_key_.at(&t))) {
      st = &fresh_stats_.at(actual_key_.at(&t));
      awq_s = nullptr;
    }
    // The weights before outlier columns are zeroed (after AWQ scaling); only copied when there
    // are outlier columns (a large layer's float copy is what bounds the streaming RSS).
    std::vector<float> w_before_copy;
    const std::vector<int64_t> out_cols = outlier_columns(t, st, awq_s, w_before_copy);
    const std::vector<float>& w_before = out_cols.empty() ? t.w : w_before_copy;
    QuantizedMatrix q = quantize_matrix(t, spec, st, awq_s, out_cols, L);
    L.scale_type = spec.fp16_scale ? "float16" : "float";
    if (awq_where_.count(&t)) {
      L.algorithm = "awq+" + L.algorithm;
      L.note += (L.note.empty() ? "" : "; ") + awq_where_[&t];
    }
    if (tuning_) {
      std::vector<float> latent = !q.rounded_from.empty() ? q.rounded_from : t.w;
      std::vector<float>().swap(q.rounded_from);
      // Start exactly at the chosen levels: where a latent value does not round to its level
      // (GPTQ's coordinate descent, a scale refit), start from the level's value.
      for (int64_t r = 0; r < t.rows; ++r)
        for (int64_t c = 0; c < t.cols; ++c) {
          const BlockGrid& gr = q.grid(r, c);
          float& x = latent[r * t.cols + c];
          if (gr.quantize(x) != q.levels[r * t.cols + c]) x = gr.dequantize(q.levels[r * t.cols + c]);
        }
      // A pruned layer's zeros (the pruned weights, and kept ones that rounded to 0) stay 0 while tuning.
      std::vector<uint8_t> zeros;
      if (!L.pruning.empty()) {
        zeros.assign(q.levels.size(), 0);
        for (int64_t r = 0; r < t.rows; ++r)
          for (int64_t c = 0; c < t.cols; ++c) {
            const BlockGrid& gr = q.grid(r, c);
            if (gr.dequantize(q.levels[r * t.cols + c]) == 0.0f) {
              zeros[r * t.cols + c] = 1;
              latent[r * t.cols + c] = 0.0f;
            }
          }
      }
      pending_.push_back({ti, report_.layers.size(), std::move(q), spec.fp16_scale, std::move(latent), float_bytes,
                          std::move(zeros)});
    } else {
      emit_layer(t, q, spec.fp16_scale, out_cols, w_before, L, float_bytes);
    }
    stale_ = true;
    last_input_ = t.input;
  });
  report_.layers.push_back(std::move(L));
}

/// Tuning on every pending layer, then writing them.
void WeightOnlyRun::tune_and_emit() {
  std::vector<TunableWeight> tws;
  for (Pending& p : pending_) {
    const Target& t = targets_[p.target];
    TunableWeight tw;
    tw.weight = t.weight;
    tw.q = &p.q;
    tw.latent = std::move(p.latent);
    tw.fp16_scales = p.fp16;
    tw.storage_index = [&t](int64_t r, int64_t c) { return detail::storage_index(t, r, c); };
    tw.pruned = std::move(p.pruned);
    tws.push_back(std::move(tw));
  }
  TuneOptions to = cfg_.tune;
  if (to.threads <= 0) to.threads = cfg_.threads;
  report_.tune = with_context("while tuning the quantized model on the calibration samples",
                              [&] { return tune_quantized(model_, teacher_, tws, *calib_, to); });
  for (Pending& p : pending_) {
    Target& t = targets_[p.target];
    WeightOnlyLayer& L = report_.layers[p.layer];
    with_context("while writing weight '" + t.weight->name() + "' of " + t.node->describe(),
                 [&] { emit_layer(t, p.q, p.fp16, {}, t.w, L, p.float_bytes); });
    if (L.algorithm.find("tuned") == std::string::npos) L.algorithm += "+tuned";
  }
}

WeightOnlyReport WeightOnlyRun::run() {
  validate();
  if (tuning_) teacher_ = model_.clone();
  targets_ = detail::find_targets(g_, cfg_.block_size);
  detail::choose_formats(targets_, cfg_);
  if (raise_opset()) {  // before anything holds on to the graph's values
    targets_ = detail::find_targets(g_, cfg_.block_size);
    detail::choose_formats(targets_, cfg_);
  }
  // Weights are read when quantized (streaming), except that AWQ needs them all before folding.
  if (algo_.awq_scales)
    for (Target& t : targets_)
      if (t.format) with_context("while reading weight '" + t.weight->name() + "'", [&] { detail::extract_matrix(t); });
  collect_stats();
  if (algo_.awq_scales) detail::awq_prepass(g_, targets_, stats_, cfg_, awq_scales_, awq_where_);
  main_format_ = &resolve_weight_format(cfg_.bits, cfg_.block_size, cfg_.symmetric,
                                        cfg_.bits.is_int8() ? WeightLayout::kQdq : cfg_.format);
  sequential_ = cfg_.sequential && want_stats_ &&
                (algo_.needs_calibration || (cfg_.sparsity.active() && cfg_.sparsity_method != SparsityMethod::kMagnitude));
  gopt_ = cfg_.gptq;
  gopt_.keep_latent = tuning_;
  for (size_t ti = 0; ti < targets_.size(); ++ti) quantize_target(ti);
  if (tuning_) tune_and_emit();
  report_.main_bits_per_weight = main_weights_ > 0 ? main_bits_ / main_weights_ : 0.0;
  g_.topo_sort();
  spdlog::info("weight-only: {} weights quantized, {:.1f} MB -> {:.1f} MB, {:.3f} bits per weight at {}",
               report_.layers.size(), report_.float_weight_bytes / 1e6, report_.quant_weight_bytes / 1e6,
               report_.main_bits_per_weight, main_format_->name);
  return std::move(report_);
}

}  // namespace

std::shared_ptr<CalibrationStatsCache> make_stats_cache() { return std::make_shared<CalibrationStatsCache>(); }

WeightOnlyReport apply_weight_only(ir::Model& model, const WeightOnlyConfig& cfg, const CalibrationInputs* calib) {
  return WeightOnlyRun(model, cfg, calib).run();
}

}  // namespace qtool::quant
