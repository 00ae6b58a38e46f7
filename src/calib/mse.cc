// mse: the clip range that minimises the expected squared quantization error.
//
// For a candidate [lo, hi] with L levels (step = (hi - lo) / (L - 1)), a value inside is rounded
// with error uniform in [-step/2, step/2] (expected step^2/12) and a value outside is clipped
// (error (x - clip)^2). Over the histogram (bin centres c_i, counts n_i):
//   E(lo, hi) = sum_{c<lo} n (c - lo)^2 + sum_{c>hi} n (c - hi)^2 + N_inside * step^2 / 12,
// each clipped sum computed in O(1) from prefix sums of n, n*c, n*c^2. Candidates form a grid of
// mse_candidates points per side between 0 and the observed extreme, then a finer grid of 64
// around the best. Levels: symmetric 2^bits - 1 (the restricted signed grid, -127..127), asymmetric
// 2^bits. Example: uniform on [-1, 1] at 8 bits, symmetric: E(T) = (1-T)^3/3 + T (T/127)^2/12 has its
// minimum at T = 254/255 (clipping hurts more than the finer step helps).
#include <algorithm>
#include <cmath>
#include <limits>

#include "qtool/calib/methods.h"

namespace qtool::calib {

namespace {

struct Prefix {
  double first = 0, w = 1;
  std::vector<double> s0, s1, s2;  // prefix sums over bins [0, i)
  explicit Prefix(const Histogram& h) : first(static_cast<double>(h.first_bin())), w(h.bin_width()) {
    const auto& c = h.counts();
    s0.assign(c.size() + 1, 0.0);
    s1 = s0;
    s2 = s0;
    for (size_t i = 0; i < c.size(); ++i) {
      const double n = static_cast<double>(c[i]);
      const double x = (first + static_cast<double>(i) + 0.5) * w;
      s0[i + 1] = s0[i] + n;
      s1[i + 1] = s1[i] + n * x;
      s2[i + 1] = s2[i] + n * x * x;
    }
  }
  // Number of bins whose centre is < v.
  size_t below(double v) const {
    const double k = std::ceil(v / w - first - 0.5);
    return static_cast<size_t>(std::clamp(k, 0.0, static_cast<double>(s0.size() - 1)));
  }
  // Number of bins whose centre is <= v.
  size_t upto(double v) const {
    const double k = std::floor(v / w - first - 0.5) + 1;
    return static_cast<size_t>(std::clamp(k, 0.0, static_cast<double>(s0.size() - 1)));
  }
  double error(double lo, double hi, double levels) const {
    const size_t a = below(lo), b = upto(hi);
    const size_t n = s0.size() - 1;
    const double low = s2[a] - 2 * lo * s1[a] + lo * lo * s0[a];
    const double high = (s2[n] - s2[b]) - 2 * hi * (s1[n] - s1[b]) + hi * hi * (s0[n] - s0[b]);
    const double step = (hi - lo) / (levels - 1);
    const double inside = b > a ? s0[b] - s0[a] : 0.0;
    return low + high + inside * step * step / 12.0;
  }
};

}  // namespace

double expected_quant_error(const Histogram& hist, double lo, double hi, int64_t levels) {
  if (hist.empty()) return 0.0;
  return Prefix(hist).error(lo, hi, static_cast<double>(levels));
}

void register_mse(std::vector<MethodInfo>& methods) {
  methods.push_back({"mse", "the clip range minimising the expected squared quantization error",
                     [](const TensorStats& s, const RangeConfig& c) -> Range {
                       QTOOL_CHECK(!s.hist.empty(), ErrorCode::kInternal, "no histogram for tensor '{}'", s.name);
                       QTOOL_CHECK(c.mse_candidates >= 8, ErrorCode::kConfig, "mse needs at least 8 candidates");
                       const Prefix pf(s.hist);
                       const int K = c.mse_candidates;
                       if (c.symmetric) {
                         const double levels = std::ldexp(1.0, c.bits) - 1;
                         const double amax = s.absmax();
                         if (amax == 0) return {0, 0};
                         auto err = [&](double t) { return pf.error(-t, t, levels); };
                         double best_t = amax, best = err(amax);
                         for (int j = 1; j < K; ++j) {
                           const double t = amax * j / K;
                           if (const double e = err(t); e < best) best = e, best_t = t;
                         }
                         const double d = amax / K;
                         for (int j = -64; j <= 64; ++j) {
                           const double t = std::clamp(best_t + d * j / 64.0, d / 64.0, amax);
                           if (const double e = err(t); e < best) best = e, best_t = t;
                         }
                         return {-best_t, best_t};
                       }
                       const double levels = std::ldexp(1.0, c.bits);
                       const double mn = std::min(s.min, 0.0), mx = std::max(s.max, 0.0);
                       if (mx == mn) return {mn, mx};
                       const int klo = mn < 0 ? K : 0, khi = mx > 0 ? K : 0;
                       double best = std::numeric_limits<double>::infinity(), blo = mn, bhi = mx;
                       for (int a = 0; a <= klo; ++a) {
                         const double lo = klo ? mn * a / klo : 0.0;
                         for (int b = 0; b <= khi; ++b) {
                           const double hi = khi ? mx * b / khi : 0.0;
                           if (hi <= lo) continue;
                           if (const double e = pf.error(lo, hi, levels); e < best) best = e, blo = lo, bhi = hi;
                         }
                       }
                       const double dl = klo ? -mn / K : 0.0, dh = khi ? mx / K : 0.0;
                       const double lo0 = blo, hi0 = bhi;
                       for (int a = -32; a <= 32; ++a) {
                         const double lo = std::clamp(lo0 + dl * a / 32.0, mn, 0.0);
                         for (int b = -32; b <= 32; ++b) {
                           const double hi = std::clamp(hi0 + dh * b / 32.0, 0.0, mx);
                           if (hi <= lo) continue;
                           if (const double e = pf.error(lo, hi, levels); e < best) best = e, blo = lo, bhi = hi;
                         }
                       }
                       return {blo, bhi};
                     }});
}

}  // namespace qtool::calib
