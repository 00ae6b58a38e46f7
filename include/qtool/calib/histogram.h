// A streaming histogram that widens as the observed range grows, in bounded memory.
//
// Bins have width w = 2^e (a power of two) and are aligned to multiples of w: bin k covers
// [k*w, (k+1)*w), and a value x falls in bin floor(x / w), computed exactly (x / 2^e is an exact
// floating-point scaling). The histogram keeps only the bins from the bin of the smallest value
// seen to the bin of the largest, at most max_bins of them.
//
// When a new value falls outside, e grows to the smallest exponent for which the whole range
// fits in max_bins bins, and the old counts are merged: bin k at width w becomes bin
// floor(k / 2^d) at width w*2^d, exactly, because power-of-two bins nest. So, unlike the
// re-binning of TensorRT's or ONNX Runtime's calibrators (which rescale by a non-integer factor and
// smear counts), the result is EXACTLY the histogram one would get by binning all data at the
// final width: it depends only on the data's overall min and max, never on the order in which
// values arrive or on the batch size. The final width is the smallest power of two for which
// (a) the range spans at most max_bins bins and (b) |x| / w < 2^52 (so bin indices stay exact);
// hence the histogram has between max_bins/2 and max_bins occupied-range bins for any
// non-degenerate tensor. Memory is max_bins counters, whatever the number of samples.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace qtool::calib {

class Histogram {
 public:
  /// max_bins >= 16 (default 4096: at least 2048 bins over the range, as TensorRT uses).
  explicit Histogram(int max_bins = 4096);

  /// Adds n values; NaN and +-inf are skipped and counted in nonfinite().
  void add(const float* x, size_t n);
  /// The same when the caller already knows that all n values are finite and lie in [lo, hi]
  /// (saves a pass over the data; the observer computes min/max anyway).
  void add_finite(const float* x, size_t n, float lo, float hi);
  /// Adds every count of `other` (which must have the same max_bins): the result equals adding
  /// the other's values directly.
  void merge(const Histogram& other);

  int max_bins() const { return max_bins_; }
  /// Number of finite values added.
  uint64_t total() const { return total_; }
  uint64_t nonfinite() const { return nonfinite_; }
  bool empty() const { return counts_.empty(); }
  /// Bin width w = 2^exponent().
  int exponent() const { return exp_; }
  double bin_width() const;
  /// Index k of the first stored bin (covers [k*w, (k+1)*w)).
  int64_t first_bin() const { return first_; }
  /// Counts of the stored bins, first_bin() onwards.
  const std::vector<uint64_t>& counts() const { return counts_; }
  /// Lower edge of the first bin and upper edge of the last.
  double lo() const;
  double hi() const;

  /// Smallest and largest finite value added (exact, not bin edges).
  double min() const { return vmin_; }
  double max() const { return vmax_; }

  /// A histogram of |x|: bin k covers [k*w, (k+1)*w), k = 0..K-1, w = 2^exponent.
  struct Abs {
    int exponent = 0;
    std::vector<uint64_t> counts;
    double bin_width() const;
  };
  /// Folds the histogram onto |x| at the same width (a negative value in signed bin -k-1, i.e.
  /// x in [-(k+1)w, -kw), lands in |x| bin k: exact except on bin edges), then merges pairs of bins
  /// until at most `max_bins` remain (0 = this histogram's max_bins()).
  Abs abs_histogram(int max_bins = 0) const;

  /// The value below which a fraction q (0..1) of the values lie, interpolating linearly inside
  /// the bin where the cumulative count reaches q * total().
  double quantile(double q) const;
  /// The same on the |x| histogram.
  double abs_quantile(double q) const;

 private:
  // Smallest exponent >= from at which [vmin, vmax] fits (span <= max_bins, |x|/w < 2^52).
  int fit_exponent(double vmin, double vmax, int from) const;
  void rebin(int new_exp);

  int max_bins_;
  int exp_ = 0;
  int64_t first_ = 0;
  std::vector<uint64_t> counts_;
  uint64_t total_ = 0;
  uint64_t nonfinite_ = 0;
  double vmin_ = 0.0, vmax_ = 0.0;
};

/// Bin index floor(x * 2^-e) of x at exponent e (exact).
int64_t histogram_bin(double x, int e);

}  // namespace qtool::calib
