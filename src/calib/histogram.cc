// Streaming power-of-two histogram (see histogram.h for why the bins nest).
#include "qtool/calib/histogram.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "qtool/core/error.h"
#include "qtool/core/simd_clones.h"

namespace qtool::calib {

namespace {
// Lowest exponent used (a constant tensor never widens past it): far below float's smallest
// subnormal (2^-149), so that any non-zero float still gets its own bin.
constexpr int kMinExp = -200;
constexpr double kMaxIndex = 4503599627370496.0;  // 2^52

int64_t shift_floor(int64_t k, int d) {
  if (d <= 0) return k;
  if (d >= 63) return k < 0 ? -1 : 0;
  return k >> d;  // arithmetic shift == floor division by 2^d (C++20)
}
}  // namespace

int64_t histogram_bin(double x, int e) { return static_cast<int64_t>(std::floor(std::ldexp(x, -e))); }

Histogram::Histogram(int max_bins) : max_bins_(max_bins) {
  QTOOL_CHECK(max_bins >= 16, ErrorCode::kConfig, "a histogram needs at least 16 bins, not {}", max_bins);
}

double Histogram::bin_width() const { return std::ldexp(1.0, exp_); }
double Histogram::lo() const { return std::ldexp(static_cast<double>(first_), exp_); }
double Histogram::hi() const {
  return std::ldexp(static_cast<double>(first_ + static_cast<int64_t>(counts_.size())), exp_);
}
double Histogram::Abs::bin_width() const { return std::ldexp(1.0, exponent); }

int Histogram::fit_exponent(double vmin, double vmax, int from) const {
  const double amax = std::max(std::fabs(vmin), std::fabs(vmax));
  int e = std::max(from, kMinExp);
  if (vmax > vmin) e = std::max(e, static_cast<int>(std::floor(std::log2((vmax - vmin) / max_bins_))) - 1);
  if (amax > 0) e = std::max(e, static_cast<int>(std::floor(std::log2(amax))) - 53);
  for (;; ++e) {
    if (std::ldexp(amax, -e) >= kMaxIndex) continue;
    if (histogram_bin(vmax, e) - histogram_bin(vmin, e) + 1 <= max_bins_) return e;
  }
}

void Histogram::rebin(int new_exp) {
  const int d = new_exp - exp_;
  if (d <= 0) return;
  const int64_t last = first_ + static_cast<int64_t>(counts_.size()) - 1;
  const int64_t nf = shift_floor(first_, d), nl = shift_floor(last, d);
  std::vector<uint64_t> nc(static_cast<size_t>(nl - nf + 1), 0);
  for (size_t i = 0; i < counts_.size(); ++i) nc[shift_floor(first_ + static_cast<int64_t>(i), d) - nf] += counts_[i];
  counts_ = std::move(nc);
  first_ = nf;
  exp_ = new_exp;
}

void Histogram::add(const float* x, size_t n) {
  float bmin = INFINITY, bmax = -INFINITY;
  size_t finite = 0;
  for (size_t i = 0; i < n; ++i) {
    const float v = x[i];
    if (!std::isfinite(v)) continue;
    ++finite;
    bmin = std::min(bmin, v);
    bmax = std::max(bmax, v);
  }
  nonfinite_ += n - finite;
  if (finite == 0) return;
  if (finite == n) {
    add_finite(x, n, bmin, bmax);
    return;
  }
  std::vector<float> kept;
  kept.reserve(finite);
  for (size_t i = 0; i < n; ++i) {
    if (std::isfinite(x[i])) kept.push_back(x[i]);
  }
  add_finite(kept.data(), kept.size(), bmin, bmax);
}

namespace {
/// k[i] = floor(x[i] · scale) - off for a run of values, exactly as the scalar expression (double
/// products by a power of two, floor, difference; an integer in the histogram's range): four
/// doubles at a time on CPUs with AVX2.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(QTOOL_NO_SIMD_CLONES)
#define QTOOL_HIST_AVX2 1
__attribute__((target("avx2"))) void bin_run_avx2(const float* x, size_t n, double scale, double off, int32_t* k) {
  const __m256d s = _mm256_set1_pd(scale), o = _mm256_set1_pd(off);
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const __m256d v = _mm256_sub_pd(_mm256_floor_pd(_mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(x + i)), s)), o);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(k + i), _mm256_cvttpd_epi32(v));
  }
  for (; i < n; ++i) k[i] = static_cast<int32_t>(std::floor(static_cast<double>(x[i]) * scale) - off);
}
#endif

void bin_run(const float* x, size_t n, double scale, double off, int32_t* k) {
#ifdef QTOOL_HIST_AVX2
  // QTOOL_NO_AVX2_KERNELS=1 runs the portable loop, as for the executor's kernels (same bins).
  static const bool avx2 = __builtin_cpu_supports("avx2") && std::getenv("QTOOL_NO_AVX2_KERNELS") == nullptr;
  if (avx2) {
    bin_run_avx2(x, n, scale, off, k);
    return;
  }
#endif
  for (size_t i = 0; i < n; ++i) k[i] = static_cast<int32_t>(std::floor(static_cast<double>(x[i]) * scale) - off);
}

/// ++c[floor(v · scale) - off] for every v (exact in double; scale a power of two), the bin
/// indices computed a run at a time (bin_run), counted on four interleaved counters when the tensor
/// is large against the histogram (`bins`): a run of one value (a Relu's zeros) would otherwise
/// chain every increment on the one before it. The counts are integers, so the sums are exact.
void count_bins(const float* x, size_t n, double scale, double off, uint64_t* c, size_t bins) {
  constexpr size_t kRun = 512;
  int32_t k[kRun];
  const bool interleave = n >= 16 * bins && n < (size_t{1} << 32);
  thread_local std::vector<uint32_t> sub;
  uint32_t *c1 = nullptr, *c2 = nullptr, *c3 = nullptr;
  if (interleave) {
    sub.assign(3 * bins, 0);
    c1 = sub.data();
    c2 = c1 + bins;
    c3 = c2 + bins;
  }
  for (size_t start = 0; start < n; start += kRun) {
    const size_t m = std::min(kRun, n - start);
    bin_run(x + start, m, scale, off, k);
    size_t i = 0;
    if (interleave) {
      for (; i + 4 <= m; i += 4) {
        ++c[k[i]];
        ++c1[k[i + 1]];
        ++c2[k[i + 2]];
        ++c3[k[i + 3]];
      }
    }
    for (; i < m; ++i) ++c[k[i]];
  }
  if (interleave)
    for (size_t b = 0; b < bins; ++b) c[b] += uint64_t{c1[b]} + c2[b] + c3[b];
}
}  // namespace

void Histogram::add_finite(const float* x, size_t n, float bmin, float bmax) {
  if (n == 0) return;
  if (counts_.empty()) {
    vmin_ = bmin;
    vmax_ = bmax;
    exp_ = fit_exponent(vmin_, vmax_, kMinExp);
    first_ = histogram_bin(vmin_, exp_);
    counts_.assign(static_cast<size_t>(histogram_bin(vmax_, exp_) - first_ + 1), 0);
  } else if (bmin < vmin_ || bmax > vmax_) {
    vmin_ = std::min<double>(vmin_, bmin);
    vmax_ = std::max<double>(vmax_, bmax);
    rebin(fit_exponent(vmin_, vmax_, exp_));
    const int64_t kmin = histogram_bin(vmin_, exp_), kmax = histogram_bin(vmax_, exp_);
    const int64_t last = first_ + static_cast<int64_t>(counts_.size()) - 1;
    if (kmin < first_) {
      counts_.insert(counts_.begin(), static_cast<size_t>(first_ - kmin), 0);
      first_ = kmin;
    }
    if (kmax > last) counts_.resize(counts_.size() + static_cast<size_t>(kmax - last), 0);
  }
  count_bins(x, n, std::ldexp(1.0, -exp_), static_cast<double>(first_), counts_.data(), counts_.size());
  total_ += n;
}

void Histogram::merge(const Histogram& o) {
  QTOOL_CHECK(o.max_bins_ == max_bins_, ErrorCode::kInternal, "merging histograms of {} and {} bins", max_bins_,
              o.max_bins_);
  nonfinite_ += o.nonfinite_;
  if (o.counts_.empty()) return;
  if (counts_.empty()) {
    *this = o;
    return;
  }
  vmin_ = std::min(vmin_, o.vmin_);
  vmax_ = std::max(vmax_, o.vmax_);
  const int e = fit_exponent(vmin_, vmax_, std::max(exp_, o.exp_));
  rebin(e);
  Histogram other = o;
  other.rebin(e);
  const int64_t nf = std::min(first_, other.first_);
  const int64_t nl = std::max(first_ + static_cast<int64_t>(counts_.size()),
                              other.first_ + static_cast<int64_t>(other.counts_.size())) - 1;
  std::vector<uint64_t> nc(static_cast<size_t>(nl - nf + 1), 0);
  for (size_t i = 0; i < counts_.size(); ++i) nc[first_ - nf + static_cast<int64_t>(i)] += counts_[i];
  for (size_t i = 0; i < other.counts_.size(); ++i) nc[other.first_ - nf + static_cast<int64_t>(i)] += other.counts_[i];
  counts_ = std::move(nc);
  first_ = nf;
  total_ += o.total_;
}

Histogram::Abs Histogram::abs_histogram(int max_bins) const {
  if (max_bins <= 0) max_bins = max_bins_;
  Abs a;
  a.exponent = exp_;
  if (counts_.empty()) return a;
  const int64_t last = first_ + static_cast<int64_t>(counts_.size()) - 1;
  const int64_t top = std::max(last >= 0 ? last : -1, first_ < 0 ? -first_ - 1 : -1);  // highest |x| bin
  // Coarsen so that bins 0..top fit in max_bins.
  int d = 0;
  while (shift_floor(top, d) + 1 > max_bins) ++d;
  a.exponent = exp_ + d;
  a.counts.assign(static_cast<size_t>(shift_floor(top, d) + 1), 0);
  for (size_t i = 0; i < counts_.size(); ++i) {
    const int64_t k = first_ + static_cast<int64_t>(i);
    const int64_t ak = k >= 0 ? k : -k - 1;
    a.counts[static_cast<size_t>(shift_floor(ak, d))] += counts_[i];
  }
  return a;
}

namespace {
double quantile_of(const std::vector<uint64_t>& counts, int64_t first, double w, uint64_t total, double q) {
  if (counts.empty() || total == 0) return 0.0;
  q = std::clamp(q, 0.0, 1.0);
  const double target = q * static_cast<double>(total);
  double cum = 0.0;
  for (size_t i = 0; i < counts.size(); ++i) {
    const double c = static_cast<double>(counts[i]);
    if (c > 0 && cum + c >= target) {
      const double frac = std::clamp((target - cum) / c, 0.0, 1.0);
      return (static_cast<double>(first + static_cast<int64_t>(i)) + frac) * w;
    }
    cum += c;
  }
  return (static_cast<double>(first + static_cast<int64_t>(counts.size()))) * w;
}
}  // namespace

double Histogram::quantile(double q) const {
  return std::clamp(quantile_of(counts_, first_, bin_width(), total_, q), vmin_, vmax_);
}

double Histogram::abs_quantile(double q) const {
  const Abs a = abs_histogram();
  const double amax = std::max(std::fabs(vmin_), std::fabs(vmax_));
  double amin = 0.0;
  if (vmin_ > 0) amin = vmin_;
  if (vmax_ < 0) amin = -vmax_;
  return std::clamp(quantile_of(a.counts, 0, a.bin_width(), total_, q), amin, amax);
}

}  // namespace qtool::calib
