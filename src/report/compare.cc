// Output and per-layer drift of a quantized model against its FP32 original (see compare.h).
#include "qtool/report/compare.h"

#include <algorithm>
#include <map>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <numeric>
#include <optional>
#include <sstream>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include <fmt/format.h>

#include "qtool/core/npy.h"
#include "qtool/core/simd_clones.h"
#include "qtool/passes/qdq_to_qoperator.h"
#include "qtool/runtime/executor.h"

namespace qtool::report {

namespace {
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
/// SQNRs above this are treated as "exact" when ranking layers: float32 rounding alone sits near
/// 140 dB, so differences above 120 dB say nothing about quantization.
constexpr double kSqnrCapDb = 120.0;

/// A float32 view of `t`: the tensor itself when it already is float32, else a converted copy.
Tensor as_float(const Tensor& t) { return t.dtype() == DataType::kFloat ? t : t.to_float(); }
}  // namespace

// ---------------------------------------------------------------------------------------------
// ErrorAccumulator

namespace {

/// The sums of ErrorAccumulator::add: per block of kBlock values in eight float lanes (one AVX2
/// register per sum where the CPU has it), each block's lanes then added in double. A float sum of
/// at most kBlock / 8 terms is within about 1e-5 of its exact value, far below any SQNR of
/// interest. Returns false, with nothing added, when a sum is not finite: a value is infinite or
/// NaN, or so large that its square overflows a float (the caller then sums one by one in double).
struct Sums {
  double rr = 0, tt = 0, rt = 0, ee = 0, ab = 0, mx = 0;
};

/// Eight floats (GCC/Clang vector extension: one AVX2 register, or two SSE ones).
typedef float Float8 __attribute__((vector_size(32)));

QTOOL_SIMD_CLONES bool finite_sums(const float* ref, const float* test, int64_t n, Sums* out) {
  constexpr int64_t kBlock = 1024;
  constexpr int kLanes = 8;
  Sums s;
  const Float8 zero = {};
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t e = std::min(n, b + kBlock);
    Float8 rr = zero, tt = zero, rt = zero, ee = zero, ab = zero, mx = zero;
    int64_t i = b;
    for (; i + kLanes <= e; i += kLanes) {
      Float8 r, t;
      std::memcpy(&r, ref + i, sizeof r);
      std::memcpy(&t, test + i, sizeof t);
      const Float8 d = r - t;
      const Float8 a = d > zero ? d : -d;
      rr += r * r;
      tt += t * t;
      rt += r * t;
      ee += d * d;
      ab += a;
      mx = a > mx ? a : mx;
    }
    for (int k = 0; i < e; ++i, ++k) {  // the tail, in the first lanes
      const float r = ref[i], t = test[i], d = r - t, a = std::fabs(d);
      rr[k] += r * r;
      tt[k] += t * t;
      rt[k] += r * t;
      ee[k] += d * d;
      ab[k] += a;
      mx[k] = a > mx[k] ? a : mx[k];
    }
    float check = 0.0f;  // inf or NaN when a sum is
    for (int k = 0; k < kLanes; ++k) {
      check += rr[k] + tt[k] + ee[k] + ab[k];
      s.rr += rr[k];
      s.tt += tt[k];
      s.rt += rt[k];
      s.ee += ee[k];
      s.ab += ab[k];
      s.mx = std::max(s.mx, static_cast<double>(mx[k]));
    }
    if (!std::isfinite(check)) return false;
  }
  *out = s;
  return true;
}

}  // namespace

void ErrorAccumulator::add(const float* ref, const float* test, int64_t n) {
  // Per-call partial sums in double keep rounding error far below any SQNR of interest.
  if (Sums s; finite_sums(ref, test, n, &s)) {
    sum_rr_ += s.rr;
    sum_tt_ += s.tt;
    sum_rt_ += s.rt;
    sum_ee_ += s.ee;
    sum_abs_ += s.ab;
    max_abs_ = std::max(max_abs_, s.mx);
    count_ += n;
    return;
  }
  // Some value is not finite: the one-by-one loop, which skips or counts them.
  double rr = 0, tt = 0, rt = 0, ee = 0, ab = 0, mx = max_abs_;
  int64_t skipped = 0, broken = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double r = ref[i], t = test[i];
    if (!std::isfinite(r)) {
      ++skipped;  // nothing to measure against
      continue;
    }
    if (!std::isfinite(t)) {
      ++broken;  // the quantized model produced NaN/inf: maximal error (see sqnr_db)
      continue;
    }
    const double e = r - t;
    rr += r * r;
    tt += t * t;
    rt += r * t;
    ee += e * e;
    const double a = std::fabs(e);
    ab += a;
    mx = std::max(mx, a);
  }
  sum_rr_ += rr;
  sum_tt_ += tt;
  sum_rt_ += rt;
  sum_ee_ += ee;
  sum_abs_ += ab;
  max_abs_ = mx;
  count_ += n - skipped;
  non_finite_ += skipped + broken;
  broken_ += broken;
}

void ErrorAccumulator::add(const Tensor& ref, const Tensor& test, const std::string& what) {
  QTOOL_CHECK(ref.numel() == test.numel(), ErrorCode::kInvalidInput,
              "{}: the FP32 model gives shape {} but the quantized model {}", what, shape_str(ref.shape()),
              shape_str(test.shape()));
  const Tensor r = as_float(ref), t = as_float(test);
  add(r.data<float>(), t.data<float>(), r.numel());
}

void ErrorAccumulator::merge(const ErrorAccumulator& o) {
  count_ += o.count_;
  non_finite_ += o.non_finite_;
  broken_ += o.broken_;
  sum_rr_ += o.sum_rr_;
  sum_tt_ += o.sum_tt_;
  sum_rt_ += o.sum_rt_;
  sum_ee_ += o.sum_ee_;
  sum_abs_ += o.sum_abs_;
  max_abs_ = std::max(max_abs_, o.max_abs_);
}

double ErrorAccumulator::sqnr_db() const {
  if (count_ == 0) return kNaN;
  if (broken_ > 0) return -kInf;
  if (sum_ee_ == 0.0) return kInf;
  if (sum_rr_ == 0.0) return -kInf;  // a zero reference with any error: no signal at all
  return 10.0 * std::log10(sum_rr_ / sum_ee_);
}

double ErrorAccumulator::cosine() const {
  if (count_ == 0) return kNaN;
  if (broken_ > 0) return 0.0;
  if (sum_rr_ == 0.0 && sum_tt_ == 0.0) return 1.0;
  if (sum_rr_ == 0.0 || sum_tt_ == 0.0) return 0.0;
  return sum_rt_ / std::sqrt(sum_rr_ * sum_tt_);
}

double ErrorAccumulator::max_abs() const {
  if (count_ == 0) return kNaN;
  return broken_ > 0 ? kInf : max_abs_;
}

double ErrorAccumulator::mean_abs() const {
  if (count_ == 0) return kNaN;
  return broken_ > 0 ? kInf : sum_abs_ / static_cast<double>(count_);
}

// ---------------------------------------------------------------------------------------------
// ClassifierAccumulator

namespace {
int64_t argmax(const float* v, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (v[i] > v[best]) best = i;  // first maximum wins, as numpy.argmax
  return best;
}
/// True if class `c` is among the k largest entries of v (ties broken toward lower indices, as a
/// stable descending sort would).
bool in_top_k(const float* v, int64_t n, int64_t c, int64_t k) {
  int64_t above = 0;
  for (int64_t i = 0; i < n; ++i)
    if (v[i] > v[c] || (v[i] == v[c] && i < c)) ++above;
  return above < k;
}
bool has_nan(const float* v, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (std::isnan(v[i])) return true;
  return false;
}
}  // namespace

namespace {
/// True when the row is a probability distribution (entries in [0, 1], sum 1 within 1e-3).
bool is_distribution(const float* x, int64_t n) {
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    if (!(x[i] >= 0.0f && x[i] <= 1.0f)) return false;
    sum += x[i];
  }
  return std::fabs(sum - 1.0) <= 1e-3;
}

/// log p of a row: log of the row itself when both rows are distributions, else log-softmax.
void log_probs(const float* x, int64_t n, bool given, std::vector<double>& out) {
  out.resize(static_cast<size_t>(n));
  if (given) {
    for (int64_t i = 0; i < n; ++i) out[i] = x[i] > 0.0f ? std::log(static_cast<double>(x[i])) : -std::numeric_limits<double>::infinity();
    return;
  }
  double mx = -std::numeric_limits<double>::infinity(), z = 0.0;
  for (int64_t i = 0; i < n; ++i) mx = std::max(mx, static_cast<double>(x[i]));
  for (int64_t i = 0; i < n; ++i) z += std::exp(x[i] - mx);
  const double lz = mx + std::log(z);
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] - lz;
}

/// KL(p_a ‖ p_b) of two score rows (see ClassifierAccumulator::mean_kl).
double row_kl(const float* a, const float* b, int64_t n) {
  const bool given = is_distribution(a, n) && is_distribution(b, n);
  std::vector<double> la, lb;
  log_probs(a, n, given, la);
  log_probs(b, n, given, lb);
  double kl = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double p = std::exp(la[i]);
    if (p > 0.0) kl += p * (la[i] - lb[i]);
  }
  return std::isnan(kl) ? std::numeric_limits<double>::infinity() : std::max(0.0, kl);
}
}  // namespace

void ClassifierAccumulator::add(const float* ref, const float* test, int64_t rows, int64_t classes,
                                const std::vector<int64_t>& labels) {
  const int64_t k = std::min<int64_t>(5, classes);
  for (int64_t r = 0; r < rows; ++r) {
    const float* a = ref + r * classes;
    const float* b = test + r * classes;
    if (has_nan(a, classes)) continue;  // no FP32 prediction to agree with
    // A NaN in the quantized scores has no argmax: the row counts as a wrong prediction.
    const bool broken = has_nan(b, classes);
    const int64_t ra = argmax(a, classes), tb = broken ? -1 : argmax(b, classes);
    top1_ += ra == tb;
    top5_ += !broken && in_top_k(b, classes, ra, k);
    if (r < static_cast<int64_t>(labels.size()) && labels[r] >= 0) {
      ++labeled_;
      correct_ref_ += ra == labels[r];
      correct_test_ += tb == labels[r];
    }
    kl_sum_ += broken ? std::numeric_limits<double>::infinity() : row_kl(a, b, classes);
    ++rows_;
  }
}

double ClassifierAccumulator::mean_kl() const { return rows_ ? kl_sum_ / static_cast<double>(rows_) : kNaN; }

double ClassifierAccumulator::top1_agreement() const {
  return rows_ ? static_cast<double>(top1_) / static_cast<double>(rows_) : kNaN;
}
double ClassifierAccumulator::top5_agreement() const {
  return rows_ ? static_cast<double>(top5_) / static_cast<double>(rows_) : kNaN;
}
double ClassifierAccumulator::accuracy_ref() const {
  return labeled_ ? static_cast<double>(correct_ref_) / static_cast<double>(labeled_) : kNaN;
}
double ClassifierAccumulator::accuracy_test() const {
  return labeled_ ? static_cast<double>(correct_test_) / static_cast<double>(labeled_) : kNaN;
}

bool is_classifier_shape(const Shape& s) {
  if (s.size() == 2) return s[1] >= 2;
  if (s.size() == 4) return s[1] >= 2 && s[2] == 1 && s[3] == 1;
  return false;
}

namespace {

/// Adds |ref|² and (ref - test)² of each index along `axis` of a float tensor (finite pairs only).
void add_channel_sums(const Tensor& r, const Tensor& t, OutputComparison::ChannelStats& c) {
  const Shape& sh = r.shape();
  const int64_t ch = sh[c.axis];
  int64_t inner = 1;
  for (size_t d = static_cast<size_t>(c.axis) + 1; d < sh.size(); ++d) inner *= sh[d];
  const float* a = r.data<float>();
  const float* b = t.data<float>();
  const int64_t outer = r.numel() / std::max<int64_t>(1, ch * inner);
  // A non-finite reference value is skipped; a non-finite test value is a maximal error.
  auto term = [](float x, float y, double& sig, double& noise) {
    if (!std::isfinite(x)) return;
    const double d = std::isfinite(y) ? static_cast<double>(x) - y : 1e30;
    sig += static_cast<double>(x) * x;
    noise += d * d;
  };
  for (int64_t o = 0; o < outer; ++o) {
    if (inner == 1) {  // channels along the last axis: one row at a time
      const float* ra = a + o * ch;
      const float* rb = b + o * ch;
      for (int64_t k = 0; k < ch; ++k) term(ra[k], rb[k], c.signal[k], c.noise[k]);
      continue;
    }
    for (int64_t k = 0; k < ch; ++k) {  // one contiguous run of `inner` values per channel
      const float* ra = a + (o * ch + k) * inner;
      const float* rb = b + (o * ch + k) * inner;
      double sig = 0.0, noise = 0.0;
      for (int64_t j = 0; j < inner; ++j) term(ra[j], rb[j], sig, noise);
      c.signal[k] += sig;
      c.noise[k] += noise;
    }
  }
}

}  // namespace

double OutputComparison::channel_group_sqnr_db() const {
  double worst = std::numeric_limits<double>::quiet_NaN();
  for (const ChannelStats& c : channel_stats) {
    // log10 of each channel's RMS (up to a constant: every channel has the same element count);
    // near-dead channels (RMS 4+ decades below the largest) are left out.
    double top = 0.0;
    for (double v : c.signal) top = std::max(top, v);
    if (top <= 0.0) continue;
    std::vector<std::pair<double, size_t>> level;
    for (size_t k = 0; k < c.signal.size(); ++k)
      if (c.signal[k] > top * 1e-8) level.emplace_back(0.5 * std::log10(c.signal[k]), k);
    std::sort(level.begin(), level.end());
    // Two families of channels: the widest gap between consecutive levels, when it is at least two
    // decades (0..1 scores beside 0..1000 coordinates; a recurrent state's channels spread evenly
    // and have no such gap). Each side needs two channels.
    size_t cut = 0;
    double gap = 0.0;
    for (size_t i = 2; i + 1 < level.size(); ++i)
      if (level[i].first - level[i - 1].first > gap) {
        gap = level[i].first - level[i - 1].first;
        cut = i;
      }
    if (gap < 2.0) continue;
    double sig[2] = {0, 0}, noi[2] = {0, 0};
    for (size_t i = 0; i < level.size(); ++i) {
      sig[i >= cut] += c.signal[level[i].second];
      noi[i >= cut] += c.noise[level[i].second];
    }
    for (int side = 0; side < 2; ++side) {
      const double s = noi[side] > 0 ? 10.0 * std::log10(sig[side] / noi[side]) : std::numeric_limits<double>::infinity();
      worst = std::isnan(worst) ? s : std::min(worst, s);
    }
  }
  return worst;
}

void OutputComparison::add_lm_positions(const Tensor& r, const Tensor& t) {
  const int64_t v = r.dim(2), positions = r.numel() / v;
  std::vector<double> p(static_cast<size_t>(v));
  for (int64_t i = 0; i < positions; ++i) {
    const float* a = r.data<float>() + i * v;
    const float* b = t.data<float>() + i * v;
    double ma = -std::numeric_limits<double>::infinity(), mb = ma;
    for (int64_t k = 0; k < v; ++k) {
      ma = std::max(ma, static_cast<double>(a[k]));
      mb = std::max(mb, static_cast<double>(b[k]));
    }
    double za = 0.0, zb = 0.0;
    for (int64_t k = 0; k < v; ++k) {
      za += std::exp(a[k] - ma);
      zb += std::exp(b[k] - mb);
    }
    const double la = ma + std::log(za), lb = mb + std::log(zb);  // log-sum-exp
    double kl = 0.0, h = 0.0;
    for (int64_t k = 0; k < v; ++k) {
      const double lpa = a[k] - la, lpb = b[k] - lb, pa = std::exp(lpa);
      kl += pa * (lpa - lpb);
      h -= pa * lpa;
    }
    if (!std::isfinite(kl)) kl = std::numeric_limits<double>::infinity();
    lm_kl += kl;
    lm_entropy += h;
    ++lm_positions;
  }
}

double OutputComparison::mask_iou() const {
  if (!prob_map || mask_union == 0 || 5 * map_mid_values > map_values) return std::numeric_limits<double>::quiet_NaN();
  return static_cast<double>(mask_intersection) / static_cast<double>(mask_union);
}

double OutputComparison::lm_nll_increase() const {
  if (lm_positions == 0) return std::numeric_limits<double>::quiet_NaN();
  return lm_entropy > 0.0 ? lm_kl / lm_entropy : (lm_kl > 0.0 ? std::numeric_limits<double>::infinity() : 0.0);
}

void OutputComparison::add(const Tensor& ref, const Tensor& test, const std::vector<int64_t>& labels) {
  const Tensor r = as_float(ref);
  const Tensor t = as_float(test);
  error.add(r, t, fmt::format("output '{}'", name));
  if (samples > 0 && r.shape() != shape) channel_stats.clear();
  if (r.shape() == t.shape() && r.rank() >= 2 && (samples == 0 || !channel_stats.empty())) {
    if (samples == 0)
      for (int64_t axis : {int64_t{1}, static_cast<int64_t>(r.rank()) - 1})
        if (r.dim(axis) > 1 && r.dim(axis) <= kMaxChannels && (channel_stats.empty() || channel_stats[0].axis != axis))
          channel_stats.push_back({axis, std::vector<double>(r.dim(axis), 0.0), std::vector<double>(r.dim(axis), 0.0)});
    for (ChannelStats& c : channel_stats) add_channel_sums(r, t, c);
  }
  shape = r.shape();
  if (token_model && r.rank() == 3 && r.dim(2) >= 32 && r.shape() == t.shape() && (samples == 0 || lm_positions > 0))
    add_lm_positions(r, t);
  else
    lm_positions = 0;
  // A dense probability map: one channel of spatial positions, FP32 values within [0, 1].
  bool map = r.shape() == t.shape() && r.rank() >= 3 && !is_classifier_shape(r.shape()) && !token_model &&
             !recurrent_state;
  if (map) {
    const int64_t channels = r.dim(1), per_map = r.numel() / std::max<int64_t>(1, r.dim(0) * channels);
    map = channels == 1 && per_map >= 16;
    const float* a = r.data<float>();
    for (int64_t i = 0; map && i < r.numel(); ++i) map = a[i] >= 0.0f && a[i] <= 1.0f;
  }
  if (map && (samples == 0 || prob_map)) {
    prob_map = true;
    const float* a = r.data<float>();
    const float* b = t.data<float>();
    for (int64_t i = 0; i < r.numel(); ++i) {
      const bool x = a[i] > 0.5f, y = b[i] > 0.5f;
      mask_intersection += x && y;
      mask_union += x || y;
      map_mid_values += a[i] > 0.1f && a[i] < 0.9f;
    }
    map_values += r.numel();
  } else {
    prob_map = false;
  }
  if (is_classifier_shape(r.shape()) && r.shape() == t.shape()) {
    // Every sample must be classifier-shaped for the output to count as a classifier.
    if (samples == 0) classifier = true;
    if (classifier) classes.add(r.data<float>(), t.data<float>(), r.dim(0), r.dim(1), labels);
  } else {
    classifier = false;
  }
  ++samples;
}

// ---------------------------------------------------------------------------------------------
// compare_models

namespace {

/// FP32 run: keeps a float copy of every matched intermediate tensor of the current sample.
class CaptureObserver final : public runtime::Observer {
 public:
  explicit CaptureObserver(const std::unordered_set<std::string>& names) : names_(names) {}
  void on_value(const ir::Value& value, const Tensor& tensor) override {
    if (!is_float_type(tensor.dtype()) || !names_.count(value.name())) return;
    // A float tensor is shared, not copied: the executor never writes into or recycles a buffer
    // somebody else holds.
    captured_[value.name()] = tensor.dtype() == DataType::kFloat ? tensor : tensor.to_float();
  }
  std::unordered_map<std::string, Tensor>& captured() { return captured_; }

  static bool is_float_type(DataType t) {
    return t == DataType::kFloat || t == DataType::kFloat16 || t == DataType::kBFloat16 || t == DataType::kDouble;
  }

 private:
  const std::unordered_set<std::string>& names_;
  std::unordered_map<std::string, Tensor> captured_;
};

/// Dequantizes an integer tensor with per-tensor parameters: (q - zero_point) · scale.
Tensor dequantize(const Tensor& q, float scale, int32_t zero_point) {
  Tensor f = Tensor::empty(DataType::kFloat, q.shape());
  float* fp = f.mutable_data<float>();
  auto run = [&](const auto* d) {
    for (int64_t i = 0; i < q.numel(); ++i) fp[i] = static_cast<float>(static_cast<int32_t>(d[i]) - zero_point) * scale;
  };
  switch (q.dtype()) {
    case DataType::kUint8: run(q.data<uint8_t>()); break;
    case DataType::kInt8: run(q.data<int8_t>()); break;
    case DataType::kUint16: run(q.data<uint16_t>()); break;
    case DataType::kInt16: run(q.data<int16_t>()); break;
    default:
      for (int64_t i = 0; i < q.numel(); ++i)
        fp[i] = static_cast<float>(static_cast<int32_t>(q.get_as_double(i)) - zero_point) * scale;
  }
  return f;
}

/// Quantized run: compares each matched tensor with the FP32 capture as it is produced. A fused
/// integer tensor (an alias) is dequantized and compared with the float tensor it stands for.
class DriftObserver final : public runtime::Observer {
 public:
  DriftObserver(std::unordered_map<std::string, Tensor>& reference,
                const std::unordered_map<std::string, size_t>& index, std::vector<LayerDrift>& layers,
                const std::unordered_map<std::string, passes::QOperatorAlias>& aliases)
      : reference_(reference), index_(index), layers_(layers), aliases_(aliases) {}
  void on_value(const ir::Value& value, const Tensor& tensor) override {
    auto it = index_.find(value.name());
    if (it == index_.end()) return;
    auto alias = aliases_.find(value.name());
    const bool is_alias = alias != aliases_.end();
    if (!is_alias && !CaptureObserver::is_float_type(tensor.dtype())) return;
    auto ref = reference_.find(is_alias ? alias->second.float_name : value.name());
    if (ref == reference_.end() || ref->second.numel() != tensor.numel()) return;  // shapes differ: not comparable
    const Tensor t = is_alias ? dequantize(tensor, alias->second.scale, alias->second.zero_point) : as_float(tensor);
    layers_[it->second].error.add(ref->second.data<float>(), t.data<float>(), t.numel());
    reference_.erase(ref);  // free it as soon as it is compared
  }

 private:
  std::unordered_map<std::string, Tensor>& reference_;
  const std::unordered_map<std::string, size_t>& index_;
  std::vector<LayerDrift>& layers_;
  const std::unordered_map<std::string, passes::QOperatorAlias>& aliases_;
};

double capped(double db) { return std::isnan(db) ? db : std::min(db, kSqnrCapDb); }

/// Fused tensor name -> the float tensor it stands for.
using AliasMap = std::unordered_map<std::string, passes::QOperatorAlias>;

/// The quantized model with its QDQ groups fused into the integer kernels ONNX Runtime runs
/// (nullopt when nothing fuses: the model runs as it is); `aliases` gets each fused tensor.
std::optional<ir::Model> fuse_as_onnx_runtime(const ir::Model& quantized, AliasMap& aliases) {
  std::optional<ir::Model> fused(quantized.clone());
  passes::QOperatorReport rep = passes::fuse_qdq_to_qoperator(*fused);
  if (rep.rewrites == 0) fused.reset();
  for (auto& a : rep.aliases) aliases.emplace(a.value, std::move(a));
  return fused;
}

/// A model written in QOperator form already (qtool --format qoperator, ONNX Runtime's quantizer):
/// its QLinear outputs keep the "<float tensor>_QuantizeLinear_Output" names both tools give them,
/// and their scale / zero point are the op's output parameters.
void add_qlinear_aliases(const ir::Model& test_model, AliasMap& aliases) {
  static const std::string kSuffix = "_QuantizeLinear_Output";
  for (const auto& np : test_model.graph->nodes()) {
    const ir::Node& n = *np;
    size_t scale_in = 0;
    if (n.op_type() == "QLinearConv" || n.op_type() == "QLinearMatMul" || n.op_type() == "QLinearAdd" ||
        n.op_type() == "QLinearMul")
      scale_in = 6;
    else if (n.op_type() == "QLinearGlobalAveragePool")
      scale_in = 3;
    else if (n.op_type() == "QLinearConcat")
      scale_in = 0;
    else
      continue;
    const ir::Value* y = n.output(0);
    const ir::Value* sv = n.input(scale_in);
    const ir::Value* zv = n.input(scale_in + 1);
    if (!y || aliases.count(y->name()) || !sv || !sv->initializer() || sv->initializer()->numel() != 1) continue;
    if (y->name().size() <= kSuffix.size() || !y->name().ends_with(kSuffix)) continue;
    passes::QOperatorAlias a;
    a.value = y->name();
    a.float_name = y->name().substr(0, y->name().size() - kSuffix.size());
    a.node = n.name();
    a.op_type = n.op_type();
    a.scale = static_cast<float>(sv->initializer()->get_as_double(0));
    a.zero_point = zv && zv->initializer() ? static_cast<int32_t>(zv->initializer()->get_as_double(0)) : 0;
    aliases.emplace(a.value, std::move(a));
  }
}

/// A fused tensor stands for the float tensor its QuantizeLinear read; where the quantizer folded a
/// Relu/Clip after it into the quantization (saturation clips), it stands for that activation's
/// output in the FP32 model.
void follow_folded_activations(const ir::Model& fp32, AliasMap& aliases) {
  for (auto& entry : aliases) {
    passes::QOperatorAlias& a = entry.second;
    const ir::Value* f = fp32.graph->find_value(a.float_name);
    if (!f || f->uses().size() != 1) continue;
    const ir::Node* act = f->uses()[0].node;
    if (act->domain().empty() && (act->op_type() == "Relu" || act->op_type() == "Clip") && act->output(0))
      a.float_name = act->output(0)->name();
  }
}

/// Intermediate tensors present (computed, not constant) in both graphs under the same name.
struct LayerMatch {
  std::unordered_set<std::string> names;                ///< FP32 names to capture
  std::unordered_map<std::string, size_t> index;        ///< test model value -> index in layers
};

LayerMatch match_layers(const ir::Model& test_model, const ir::Model& fp32, const AliasMap& aliases,
                        std::vector<LayerDrift>& layers) {
  LayerMatch m;
  for (const auto& node : test_model.graph->nodes()) {
    for (ir::Value* v : node->outputs()) {
      if (!v) continue;
      auto alias = aliases.find(v->name());
      const bool is_alias = alias != aliases.end();
      const std::string& name = is_alias ? alias->second.float_name : v->name();
      const ir::Value* f = fp32.graph->find_value(name);
      if (!f || !f->producer() || m.names.count(name)) continue;
      m.names.insert(name);
      m.index[v->name()] = layers.size();
      LayerDrift d;
      d.tensor = name;
      d.node = is_alias ? alias->second.node : node->name();
      d.op_type = is_alias ? alias->second.op_type : node->op_type();
      layers.push_back(std::move(d));
    }
  }
  return m;
}

/// One OutputComparison per output pair (matched by position).
std::vector<OutputComparison> output_slots(const runtime::Executor& ref, const runtime::Executor& test) {
  const auto ref_names = ref.output_names();
  const auto test_names = test.output_names();
  QTOOL_CHECK(ref_names.size() == test_names.size(), ErrorCode::kInvalidInput,
              "the FP32 model has {} outputs but the quantized model {}", ref_names.size(), test_names.size());
  std::vector<OutputComparison> out(ref_names.size());
  for (size_t i = 0; i < ref_names.size(); ++i)
    out[i].name = ref_names[i] == test_names[i] ? ref_names[i] : ref_names[i] + " / " + test_names[i];
  return out;
}

/// Where error enters: each layer's noise relative to its noisiest input, in the FP32 wiring;
/// sorts the layers by added_noise_db, lowest first.
void rank_layers(const ir::Graph& fg, std::vector<LayerDrift>& layers) {
  std::unordered_map<std::string, double> sqnr_of;
  for (const auto& d : layers) sqnr_of[d.tensor] = d.error.sqnr_db();
  auto nsr = [](double db) { return std::isnan(db) ? 0.0 : std::pow(10.0, -db / 10.0); };  // inf dB -> 0
  // Lowest SQNR among the nearest matched ancestors of a tensor (unmatched tensors in between,
  // such as activations a QDQ model renamed, are walked through). Memoised per tensor.
  std::unordered_map<const ir::Value*, double> ancestor_memo;
  std::function<double(const ir::Value*)> nearest = [&](const ir::Value* v) -> double {
    auto it = sqnr_of.find(v->name());
    if (it != sqnr_of.end()) return std::isnan(it->second) ? kInf : it->second;
    if (!v->producer()) return kInf;  // model input or weight: exact
    auto m = ancestor_memo.find(v);
    if (m != ancestor_memo.end()) return m->second;
    ancestor_memo[v] = kInf;  // guards against cycles in a malformed graph
    double worst = kInf;
    for (const ir::Value* in : v->producer()->inputs())
      if (in) worst = std::min(worst, nearest(in));
    ancestor_memo[v] = worst;
    return worst;
  };
  for (auto& d : layers) {
    double upstream = kInf;
    const ir::Value* f = fg.find_value(d.tensor);
    if (f && f->producer()) {
      for (const ir::Value* in : f->producer()->inputs())
        if (in) upstream = std::min(upstream, nearest(in));
    }
    const double own = d.error.sqnr_db();
    d.sqnr_loss_db = std::isnan(own) ? 0.0 : capped(upstream) - capped(own);
    const double added = nsr(own) - nsr(upstream);
    d.added_noise_db = added > 0.0 ? -10.0 * std::log10(added) : kInf;
  }
  std::stable_sort(layers.begin(), layers.end(),
                   [](const LayerDrift& a, const LayerDrift& b) { return a.added_noise_db < b.added_noise_db; });
}

}  // namespace

CompareResult compare_models(const ir::Model& fp32, const ir::Model& quantized, const SampleProvider& next,
                             const CompareOptions& options) {
  // ONNX Runtime runs QDQ groups as fused integer kernels; so does the comparison by default.
  AliasMap aliases;
  const std::optional<ir::Model> fused =
      options.fuse_qdq ? fuse_as_onnx_runtime(quantized, aliases) : std::optional<ir::Model>();
  const ir::Model& test_model = fused ? *fused : quantized;
  add_qlinear_aliases(test_model, aliases);
  follow_folded_activations(fp32, aliases);
  CompareResult result;
  LayerMatch match;
  if (options.per_layer) match = match_layers(test_model, fp32, aliases, result.layers);
  const bool observe = !match.names.empty();
  // With threads to spare, samples run in parallel (below): each worker's executors then run on
  // one thread, and with per-layer drift each captures and compares its own samples.
  const int workers = std::max(1, options.threads);
  runtime::ExecutorOptions exec_options;
  exec_options.fold_constants = true;  // neither model changes while it is compared
  exec_options.threads = workers > 1 ? 1 : std::max(1, options.threads);
  runtime::Executor ref_exec(fp32, exec_options);
  runtime::Executor test_exec(test_model, exec_options);
  result.outputs = output_slots(ref_exec, test_exec);
  CaptureObserver capture(match.names);
  DriftObserver drift(capture.captured(), match.index, result.layers, aliases);
  // Adds one sample's outputs to the result (in sample order, whichever worker ran it).
  auto accumulate = [&](const CompareSample& sample, const std::vector<Tensor>& ref_out,
                        const std::vector<Tensor>& test_out) {
    if (result.samples == 0) {  // a model reading only integers (token ids) may output next-token logits
      bool tokens = !sample.inputs.empty();
      for (const auto& in : sample.inputs)
        tokens &= in.second.dtype() == DataType::kInt64 || in.second.dtype() == DataType::kInt32;
      for (auto& o : result.outputs) o.token_model = tokens;
      for (size_t i = 0; i < ref_out.size() && sample.inputs.size() > 1; ++i)
        for (const auto& in : sample.inputs)
          if (in.second.dtype() == DataType::kFloat && in.second.shape() == ref_out[i].shape())
            result.outputs[i].recurrent_state = true;
    }
    for (size_t i = 0; i < ref_out.size(); ++i) result.outputs[i].add(ref_out[i], test_out[i], sample.labels);
    ++result.samples;
  };
  ReferenceCache* const cache_opt =
      observe || options.reference_cache == nullptr ? nullptr : options.reference_cache;
  // The FP32 outputs of sample `index`: from the cache, or run (and kept while the cache has room).
  auto cached = [&](size_t index) -> const std::vector<Tensor>* {
    return cache_opt && !cache_opt->overflow && index < cache_opt->outputs.size() ? &cache_opt->outputs[index] : nullptr;
  };
  auto keep = [&](size_t index, const std::vector<Tensor>& ref_out) {
    if (!cache_opt || cache_opt->overflow || index != cache_opt->outputs.size()) return;
    for (const Tensor& t : ref_out) cache_opt->bytes += t.nbytes();
    if (cache_opt->bytes > cache_opt->max_bytes) {
      cache_opt->outputs.clear();
      cache_opt->overflow = true;
    } else {  // copies: the executor's buffers belong to its pool, which goes with it
      std::vector<Tensor> kept;
      for (const Tensor& t : ref_out) kept.push_back(t.clone());
      cache_opt->outputs.push_back(std::move(kept));
    }
  };

  // Parallel samples: one pair of single-threaded executors per worker (batch-1 models use a
  // second core better this way than inside one convolution), the results added in sample order.
  if (workers > 1) {
    std::vector<std::unique_ptr<runtime::Executor>> extra_refs, extra_tests;
    std::vector<runtime::Executor*> refs{&ref_exec}, tests{&test_exec};
    // Per-layer drift: worker w > 0 adds into its own copy of the layers, merged into worker 0's in
    // worker order at the end (the sums depend on the thread count, never on timing).
    std::vector<std::vector<LayerDrift>> extra_layers(observe ? workers - 1 : 0, result.layers);
    std::vector<std::unique_ptr<CaptureObserver>> extra_captures;
    std::vector<std::unique_ptr<DriftObserver>> extra_drifts;
    std::vector<CaptureObserver*> captures{&capture};
    std::vector<DriftObserver*> drifts{&drift};
    for (int w = 1; w < workers; ++w) {
      extra_refs.push_back(std::make_unique<runtime::Executor>(fp32, exec_options));
      extra_tests.push_back(std::make_unique<runtime::Executor>(test_model, exec_options));
      refs.push_back(extra_refs.back().get());
      tests.push_back(extra_tests.back().get());
      if (!observe) continue;
      extra_captures.push_back(std::make_unique<CaptureObserver>(match.names));
      extra_drifts.push_back(std::make_unique<DriftObserver>(extra_captures.back()->captured(), match.index,
                                                             extra_layers[w - 1], aliases));
      captures.push_back(extra_captures.back().get());
      drifts.push_back(extra_drifts.back().get());
    }
    bool more = true;
    while (more && (options.max_samples <= 0 || result.samples < options.max_samples)) {
      std::vector<CompareSample> batch;
      while (static_cast<int>(batch.size()) < workers &&
             (options.max_samples <= 0 || result.samples + static_cast<int64_t>(batch.size()) < options.max_samples)) {
        CompareSample next_sample;
        if (!next(next_sample)) {
          more = false;
          break;
        }
        batch.push_back(std::move(next_sample));
      }
      if (batch.empty()) break;
      const size_t base = static_cast<size_t>(result.samples);
      std::vector<std::vector<Tensor>> ref_out(batch.size()), test_out(batch.size());
      std::vector<std::exception_ptr> errors(batch.size());
      auto work = [&](size_t j) {
        try {
          with_context(fmt::format("on sample '{}'", batch[j].name), [&] {
            if (const std::vector<Tensor>* c = cached(base + j)) ref_out[j] = *c;
            else
              ref_out[j] = with_context("while running the FP32 model", [&] {
                return refs[j]->run(batch[j].inputs, observe ? captures[j] : nullptr);
              });
            test_out[j] = with_context("while running the quantized model", [&] {
              return tests[j]->run(batch[j].inputs, observe ? drifts[j] : nullptr);
            });
            if (observe) captures[j]->captured().clear();
            return 0;
          });
        } catch (...) {
          errors[j] = std::current_exception();
        }
      };
      std::vector<std::thread> threads;
      for (size_t j = 1; j < batch.size(); ++j) threads.emplace_back(work, j);
      work(0);
      for (auto& t : threads) t.join();
      for (size_t j = 0; j < batch.size(); ++j) {
        if (errors[j]) std::rethrow_exception(errors[j]);
        keep(base + j, ref_out[j]);
        accumulate(batch[j], ref_out[j], test_out[j]);
      }
    }
    for (const std::vector<LayerDrift>& layers : extra_layers)
      for (size_t i = 0; i < layers.size(); ++i) result.layers[i].error.merge(layers[i].error);
  } else {
    CompareSample sample;
    while (options.max_samples <= 0 || result.samples < options.max_samples) {
      sample = CompareSample{};
      if (!next(sample)) break;
      with_context(fmt::format("on sample '{}'", sample.name), [&] {
        capture.captured().clear();
        const size_t index = static_cast<size_t>(result.samples);
        std::vector<Tensor> ref_out;
        if (const std::vector<Tensor>* c = cached(index)) {
          ref_out = *c;
        } else {
          ref_out = with_context("while running the FP32 model", [&] {
            return ref_exec.run(sample.inputs, observe ? &capture : nullptr);
          });
          keep(index, ref_out);
        }
        std::vector<Tensor> test_out = with_context("while running the quantized model", [&] {
          return test_exec.run(sample.inputs, observe ? &drift : nullptr);
        });
        capture.captured().clear();
        accumulate(sample, ref_out, test_out);
        return 0;
      });
    }
  }
  QTOOL_CHECK(result.samples > 0, ErrorCode::kInvalidInput, "no samples to compare the models on");

  std::erase_if(result.layers, [](const LayerDrift& d) { return d.error.count() == 0; });
  result.matched_tensors = static_cast<int64_t>(result.layers.size());
  rank_layers(*fp32.graph, result.layers);
  return result;
}

// ---------------------------------------------------------------------------------------------
// Gates

std::vector<GateResult> check_gates(const CompareResult& result, const Gates& gates) {
  std::vector<GateResult> out;
  if (gates.max_drop_points) {
    bool any = false;
    for (const auto& o : result.outputs) {
      if (!o.classifier || o.classes.labeled_rows() == 0) continue;
      any = true;
      GateResult g{"max-drop", o.name, *gates.max_drop_points,
                   100.0 * (o.classes.accuracy_ref() - o.classes.accuracy_test()), true, ""};
      g.passed = g.value <= g.threshold + 1e-9;
      g.message = fmt::format("accuracy drop {:.2f} points {} {:.2f} on '{}'", g.value, g.passed ? "<=" : ">",
                              g.threshold, o.name);
      out.push_back(g);
    }
    QTOOL_CHECK(any, ErrorCode::kConfig,
                "--max-drop needs labels (--labels FILE) matching the samples and a classifier-like output "
                "([N,C] or [N,C,1,1])");
  }
  if (gates.min_sqnr_db) {
    for (const auto& o : result.outputs) {
      GateResult g{"min-sqnr", o.name, *gates.min_sqnr_db, o.error.sqnr_db(), true, ""};
      g.passed = !std::isnan(g.value) && g.value >= g.threshold;
      g.message = fmt::format("SQNR {:.2f} dB {} {:.2f} dB on '{}'", g.value, g.passed ? ">=" : "<", g.threshold,
                              o.name);
      out.push_back(g);
    }
  }
  if (gates.min_agreement) {
    QTOOL_CHECK(*gates.min_agreement >= 0.0 && *gates.min_agreement <= 1.0, ErrorCode::kConfig,
                "--min-agreement is a fraction in [0, 1], got {}", *gates.min_agreement);
    bool any = false;
    for (const auto& o : result.outputs) {
      if (!o.classifier) continue;
      any = true;
      GateResult g{"min-agreement", o.name, *gates.min_agreement, o.classes.top1_agreement(), true, ""};
      g.passed = !std::isnan(g.value) && g.value >= g.threshold - 1e-12;
      g.message = fmt::format("top-1 agreement {:.4f} {} {:.4f} on '{}'", g.value, g.passed ? ">=" : "<",
                              g.threshold, o.name);
      out.push_back(g);
    }
    QTOOL_CHECK(any, ErrorCode::kConfig,
                "--min-agreement needs a classifier-like output ([N,C] or [N,C,1,1]); use --min-sqnr instead");
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Text and JSON

namespace {
std::string db_str(double db) {
  if (std::isnan(db)) return "-";
  if (std::isinf(db)) return db > 0 ? "inf (identical)" : "-inf";
  return fmt::format("{:.2f} dB", db);
}
std::string pct(double f) { return std::isnan(f) ? "-" : fmt::format("{:.2f}%", 100.0 * f); }
/// NaN -> null; +-inf -> null (JSON has no infinity; "identical" says it).
nlohmann::json num(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }
}  // namespace

std::string format_compare_text(const CompareResult& r, const std::vector<GateResult>& gates, int worst_layers) {
  std::string s = fmt::format("compared on {} sample{}\n", r.samples, r.samples == 1 ? "" : "s");
  for (const auto& o : r.outputs) {
    s += fmt::format("\noutput '{}' {}{}\n", o.name, shape_str(o.shape), o.classifier ? " (classifier)" : "");
    s += fmt::format("  SQNR              {}\n", db_str(o.error.sqnr_db()));
    s += fmt::format("  cosine similarity {:.6f}\n", o.error.cosine());
    s += fmt::format("  max abs error     {:.6g}\n", o.error.max_abs());
    s += fmt::format("  mean abs error    {:.6g}\n", o.error.mean_abs());
    if (o.error.broken())
      s += fmt::format("  BROKEN            {} quantized values are NaN/inf where FP32 is finite (maximal error)\n",
                       o.error.broken());
    if (o.error.non_finite() > o.error.broken())
      s += fmt::format("  non-finite values {} in the FP32 output (left out of the figures above)\n",
                       o.error.non_finite() - o.error.broken());
    if (const double iou = o.mask_iou(); !std::isnan(iou))
      s += fmt::format("  mask IoU          {:.4f} (probability map thresholded at 0.5)\n", iou);
    if (o.classifier) {
      s += fmt::format("  top-1 agreement   {} of {} rows\n", pct(o.classes.top1_agreement()), o.classes.rows());
      s += fmt::format("  top-5 agreement   {}\n", pct(o.classes.top5_agreement()));
      s += fmt::format("  mean KL           {:.6g} nats (FP32 ‖ quantized, per row)\n", o.classes.mean_kl());
      if (o.classes.labeled_rows() > 0) {
        s += fmt::format("  accuracy          FP32 {}   quantized {}   drop {:.2f} points ({} labelled)\n",
                         pct(o.classes.accuracy_ref()), pct(o.classes.accuracy_test()),
                         100.0 * (o.classes.accuracy_ref() - o.classes.accuracy_test()), o.classes.labeled_rows());
      }
    }
  }
  if (!r.layers.empty() && worst_layers > 0) {
    const size_t n = std::min<size_t>(worst_layers, r.layers.size());
    s += fmt::format(
        "\nwhere error enters ({} of {} tensors matched by name; ranked by the noise each layer adds, as an "
        "SQNR):\n",
        n, r.layers.size());
    size_t w = 6;
    for (size_t i = 0; i < n; ++i) w = std::max(w, r.layers[i].tensor.size());
    w = std::min<size_t>(w, 48);
    s += fmt::format("  {:<{}}  {:<14}  {:>10}  {:>10}  {:>9}  {:>9}\n", "tensor", w, "op", "SQNR dB", "added dB",
                     "lost dB", "cosine");
    for (size_t i = 0; i < n; ++i) {
      const auto& d = r.layers[i];
      const double db = d.error.sqnr_db();
      auto dbs = [](double v) { return std::isinf(v) ? std::string("inf") : fmt::format("{:.2f}", v); };
      s += fmt::format("  {:<{}}  {:<14}  {:>10}  {:>10}  {:>9.2f}  {:>9.6f}\n", d.tensor, w, d.op_type, dbs(db),
                       dbs(d.added_noise_db), d.sqnr_loss_db, d.error.cosine());
    }
  }
  if (!gates.empty()) {
    s += "\ngates:\n";
    for (const auto& g : gates) s += fmt::format("  {}  {}: {}\n", g.passed ? "PASS" : "FAIL", g.gate, g.message);
  }
  return s;
}

nlohmann::json compare_to_json(const CompareResult& r, const std::vector<GateResult>& gates,
                               const std::string& fp32_path, const std::string& quantized_path) {
  nlohmann::json j;
  j["schema"] = "qtool.compare";
  j["schema_version"] = kCompareSchemaVersion;
  j["fp32_model"] = fp32_path;
  j["quantized_model"] = quantized_path;
  j["samples"] = r.samples;
  j["outputs"] = nlohmann::json::array();
  for (const auto& o : r.outputs) {
    nlohmann::json e;
    e["name"] = o.name;
    e["shape"] = o.shape;
    e["elements"] = o.error.count();
    const double db = o.error.sqnr_db();
    e["sqnr_db"] = num(db);
    e["identical"] = std::isinf(db) && db > 0;
    e["cosine"] = num(o.error.cosine());
    e["max_abs_error"] = o.error.max_abs();
    e["mean_abs_error"] = o.error.mean_abs();
    e["non_finite"] = o.error.non_finite();
    e["mask_iou"] = num(o.mask_iou());
    e["classifier"] = o.classifier;
    if (o.classifier) {
      e["rows"] = o.classes.rows();
      e["top1_agreement"] = num(o.classes.top1_agreement());
      e["top5_agreement"] = num(o.classes.top5_agreement());
      e["mean_kl"] = num(o.classes.mean_kl());
    } else {
      e["rows"] = nullptr;
      e["top1_agreement"] = nullptr;
      e["top5_agreement"] = nullptr;
      e["mean_kl"] = nullptr;
    }
    if (o.classifier && o.classes.labeled_rows() > 0) {
      e["accuracy"] = {{"labelled", o.classes.labeled_rows()},
                       {"fp32", o.classes.accuracy_ref()},
                       {"quantized", o.classes.accuracy_test()},
                       {"drop_points", 100.0 * (o.classes.accuracy_ref() - o.classes.accuracy_test())}};
    } else {
      e["accuracy"] = nullptr;
    }
    j["outputs"].push_back(std::move(e));
  }
  j["matched_tensors"] = r.matched_tensors;
  j["layers"] = nlohmann::json::array();
  for (const auto& d : r.layers) {
    const double db = d.error.sqnr_db();
    j["layers"].push_back({{"tensor", d.tensor},
                           {"node", d.node},
                           {"op_type", d.op_type},
                           {"sqnr_db", num(db)},
                           {"identical", std::isinf(db) && db > 0},
                           {"sqnr_loss_db", num(d.sqnr_loss_db)},
                           {"added_noise_db", num(d.added_noise_db)},
                           {"cosine", num(d.error.cosine())},
                           {"max_abs_error", d.error.max_abs()},
                           {"mean_abs_error", d.error.mean_abs()}});
  }
  j["gates"] = nlohmann::json::array();
  bool passed = true;
  for (const auto& g : gates) {
    passed = passed && g.passed;
    j["gates"].push_back({{"gate", g.gate},
                          {"output", g.output},
                          {"threshold", g.threshold},
                          {"value", num(g.value)},
                          {"passed", g.passed},
                          {"message", g.message}});
  }
  j["passed"] = passed;
  return j;
}

std::vector<OutputQuality> to_output_quality(const CompareResult& r) {
  std::vector<OutputQuality> q;
  for (const auto& o : r.outputs) {
    OutputQuality e;
    e.name = o.name;
    e.samples = r.samples;
    e.sqnr_db = o.error.sqnr_db();
    e.cosine = o.error.cosine();
    e.mask_iou = o.mask_iou();
    if (o.classifier) {
      e.top1_agreement = o.classes.top1_agreement();
      e.top5_agreement = o.classes.top5_agreement();
    }
    q.push_back(e);
  }
  return q;
}

// ---------------------------------------------------------------------------------------------
// Labels

namespace {
std::string stem_of(const std::string& name) {
  std::filesystem::path p(name);
  return p.stem().string();
}
std::string trim(std::string s) {
  const auto b = s.find_first_not_of(" \t\r\n\"");
  const auto e = s.find_last_not_of(" \t\r\n\"");
  return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}
bool parse_int(const std::string& s, int64_t* v) {
  if (s.empty()) return false;
  size_t pos = 0;
  try {
    *v = std::stoll(s, &pos);
  } catch (...) {
    return false;
  }
  return pos == s.size();
}
/// Splits a CSV line (double-quoted fields may contain commas and "" escapes).
std::vector<std::string> split_csv(const std::string& line) {
  std::vector<std::string> f(1);
  bool quoted = false;
  for (size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (quoted) {
      if (c == '"' && i + 1 < line.size() && line[i + 1] == '"') {
        f.back() += '"';
        ++i;
      } else if (c == '"') {
        quoted = false;
      } else {
        f.back() += c;
      }
    } else if (c == '"') {
      quoted = true;
    } else if (c == ',' || c == '\t') {
      f.emplace_back();
    } else {
      f.back() += c;
    }
  }
  for (auto& s : f) s = trim(s);
  return f;
}
}  // namespace

std::map<std::string, int64_t> read_labels(const std::string& path) {
  std::map<std::string, int64_t> labels;
  if (path.size() > 4 && path.substr(path.size() - 4) == ".npy") {
    const Tensor t = with_context(fmt::format("while reading labels '{}'", path), [&] { return read_npy(path); });
    QTOOL_CHECK(t.dtype() != DataType::kFloat && t.dtype() != DataType::kDouble && t.dtype() != DataType::kFloat16,
                ErrorCode::kInvalidInput, "labels '{}': expected integer labels, got {}", path, dtype_name(t.dtype()));
    for (int64_t i = 0; i < t.numel(); ++i) labels[fmt::format("#{}", i)] = static_cast<int64_t>(t.get_as_double(i));
    return labels;
  }
  const std::string text = read_file(path);
  std::istringstream in(text);
  std::string line;
  std::vector<std::vector<std::string>> rows;
  while (std::getline(in, line)) {
    if (trim(line).empty() || trim(line)[0] == '#') continue;
    rows.push_back(split_csv(line));
  }
  QTOOL_CHECK(!rows.empty(), ErrorCode::kInvalidInput, "labels '{}' is empty", path);
  // Header: a first row whose cells are not all integers (and that is not "name,int").
  size_t key_col = 0, label_col = 0;
  size_t first = 0;
  int64_t v = 0;
  const auto& h = rows[0];
  const bool single_column = h.size() == 1;
  bool header = single_column ? !parse_int(h[0], &v) : !parse_int(h.back(), &v);
  if (header) {
    first = 1;
    auto lower = [](std::string s) {
      std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
      return s;
    };
    bool key_found = false, label_found = false;
    for (const char* kn : {"file", "filename", "image", "name", "path"}) {
      for (size_t c = 0; c < h.size() && !key_found; ++c)
        if (lower(h[c]) == kn) key_col = c, key_found = true;
    }
    for (const char* ln : {"class_index", "label", "class", "target"}) {
      for (size_t c = 0; c < h.size() && !label_found; ++c) {
        if (lower(h[c]) != ln) continue;
        bool all_int = true;
        for (size_t r = 1; r < rows.size() && all_int; ++r) all_int = c < rows[r].size() && parse_int(rows[r][c], &v);
        if (all_int) label_col = c, label_found = true;
      }
    }
    QTOOL_CHECK(label_found || single_column, ErrorCode::kInvalidInput,
                "labels '{}': no integer column named class_index, label, class or target in the header", path);
    if (single_column) label_col = 0;
    if (!key_found && !single_column) key_col = label_col == 0 ? 1 : 0;
    if (single_column) key_found = false;
    for (size_t r = first; r < rows.size(); ++r) {
      QTOOL_CHECK(label_col < rows[r].size() && parse_int(rows[r][label_col], &v), ErrorCode::kInvalidInput,
                  "labels '{}' line {}: no integer label", path, r + 1);
      const std::string key =
          (single_column ? fmt::format("#{}", r - first) : stem_of(rows[r].at(std::min(key_col, rows[r].size() - 1))));
      labels[key] = v;
    }
    return labels;
  }
  for (size_t r = 0; r < rows.size(); ++r) {
    const auto& row = rows[r];
    QTOOL_CHECK(parse_int(row.back(), &v), ErrorCode::kInvalidInput, "labels '{}' line {}: '{}' is not an integer label",
                path, r + 1, row.back());
    labels[row.size() == 1 ? fmt::format("#{}", r) : stem_of(row[0])] = v;
  }
  return labels;
}

int64_t lookup_label(const std::map<std::string, int64_t>& labels, const std::string& name, int64_t index) {
  auto it = labels.find(stem_of(name));
  if (it != labels.end()) return it->second;
  it = labels.find(fmt::format("#{}", index));
  return it != labels.end() ? it->second : -1;
}

}  // namespace qtool::report
