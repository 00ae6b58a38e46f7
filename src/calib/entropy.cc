// entropy: TensorRT's KL-divergence calibration.
//
// On the histogram of |x| (at most 2048 bins, as TensorRT), choose the threshold T whose
// 2^(bits-1)-level quantization Q of the clipped distribution P loses the least information,
// KL(P || Q) = sum P log(P/Q). This is the algorithm of TensorRT's "8-bit inference with
// TensorRT" (Migacz, GTC 2017), as implemented in MXNet/TVM (_get_optimal_threshold) and ONNX
// Runtime (HistogramCalibrater, entropy). Symmetric: [-T, T]; asymmetric: the observed range
// clipped to [-T, T].
#include <algorithm>
#include <cmath>
#include <limits>

#include "qtool/calib/methods.h"

namespace qtool::calib {

namespace {
constexpr int kEntropyBins = 2048;

// MXNet's _smooth_distribution: move eps of mass onto the zero bins so that KL is finite.
// Returns false when every bin is zero (or eps would swamp the counts).
bool smooth(std::vector<double>& p) {
  constexpr double kEps = 1e-4;
  size_t zeros = 0;
  for (double v : p) zeros += v == 0.0;
  const size_t nonzeros = p.size() - zeros;
  if (nonzeros == 0) return false;
  const double eps1 = kEps * static_cast<double>(zeros) / static_cast<double>(nonzeros);
  if (eps1 >= 1.0) return false;
  for (double& v : p) v = v == 0.0 ? kEps : v - eps1;
  return true;
}
}  // namespace

size_t entropy_threshold_bins(const std::vector<uint64_t>& hist, int num_quant_bins) {
  const size_t nb = hist.size();
  const size_t nq = static_cast<size_t>(num_quant_bins);
  if (nb <= nq) return nb;
  double best = std::numeric_limits<double>::infinity();
  size_t best_i = nb;
  std::vector<double> suffix(nb + 1, 0.0);  // outliers beyond i
  for (size_t i = nb; i-- > 0;) suffix[i] = suffix[i + 1] + static_cast<double>(hist[i]);
  std::vector<double> p, q;
  for (size_t i = nq; i <= nb; ++i) {
    p.assign(hist.begin(), hist.begin() + static_cast<std::ptrdiff_t>(i));
    p[i - 1] += suffix[i];
    const size_t merged = i / nq;
    q.assign(i, 0.0);
    for (size_t j = 0; j < nq; ++j) {
      const size_t start = j * merged;
      const size_t stop = j == nq - 1 ? i : start + merged;
      double sum = 0.0;
      size_t nonzero = 0;
      for (size_t k = start; k < stop; ++k) {
        sum += static_cast<double>(hist[k]);  // the sliced histogram, without the folded tail
        nonzero += p[k] != 0.0;
      }
      if (nonzero == 0) continue;
      const double v = sum / static_cast<double>(nonzero);
      for (size_t k = start; k < stop; ++k) q[k] = p[k] != 0.0 ? v : 0.0;
    }
    if (!smooth(p) || !smooth(q)) continue;
    double sp = 0.0, sq = 0.0;
    for (size_t k = 0; k < i; ++k) sp += p[k], sq += q[k];
    double kl = 0.0;
    for (size_t k = 0; k < i; ++k) {
      const double pn = p[k] / sp, qn = q[k] / sq;
      kl += pn * std::log(pn / qn);
    }
    if (kl < best) {
      best = kl;
      best_i = i;
    }
  }
  return best_i;
}

void register_entropy(std::vector<MethodInfo>& methods) {
  methods.push_back({"entropy", "TensorRT-style: the threshold minimising KL divergence (2^(bits-1) levels)",
                     [](const TensorStats& s, const RangeConfig& c) -> Range {
                       QTOOL_CHECK(!s.hist.empty(), ErrorCode::kInternal, "no histogram for tensor '{}'", s.name);
                       const Histogram::Abs a = s.hist.abs_histogram(kEntropyBins);
                       const size_t i = entropy_threshold_bins(a.counts, 1 << (c.bits - 1));
                       const double t = std::min(static_cast<double>(i) * a.bin_width(), s.absmax());
                       if (c.symmetric) return {-t, t};
                       return {std::max(s.min, -t), std::min(s.max, t)};
                     }});
}

}  // namespace qtool::calib
