// Range methods: turn a tensor's streamed statistics into the [lo, hi] range that quantization
// maps onto the integer grid.
//
// A method is a config (RangeConfig, shared) plus a function registered in one list
// (range_methods(), built by register_builtin_methods() in methods.cc; each method lives in
// its own file: minmax.cc, percentile.cc, entropy.cc, mse.cc). Adding a method touches one new
// file and one line in that list.
//
// Symmetric ranges are [-T, T]. Asymmetric ranges always contain 0 (so that zero, e.g. padding and
// ReLU outputs, is exactly representable: lo = min(lo, 0), hi = max(hi, 0)).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "qtool/calib/observers.h"

namespace qtool::calib {

/// Options every method reads.
struct RangeConfig {
  int bits = 8;                ///< target integer bit width (entropy: 2^(bits-1) quantized bins; mse: grid)
  bool symmetric = true;       ///< [-T, T] instead of [lo, hi]
  double percentile = 99.999;  ///< percentile method: keep this percentage of the values
  int mse_candidates = 512;    ///< mse method: candidate clip points per side
};

/// A quantization range.
struct Range {
  double lo = 0.0;
  double hi = 0.0;
};

/// Signature of a range method.
using RangeFn = std::function<Range(const TensorStats&, const RangeConfig&)>;

/// A registered method.
struct MethodInfo {
  std::string name;  ///< --method value
  std::string help;  ///< one line for --help
  RangeFn fn;
  /// Whether fn reads TensorStats::hist. A method that does not (minmax) lets calibration skip
  /// filling the histograms, which cost as much as the model's own inference.
  bool needs_histogram = true;
};

/// The methods, in registration order (built once from the one list in methods.cc).
const std::vector<MethodInfo>& range_methods();
/// Throws kConfig naming the known methods when `name` is unknown.
const MethodInfo& find_method(const std::string& name);
/// Runs method `name` on `stats`; applies the symmetric/asymmetric convention. A tensor without
/// finite values gets [0, 0].
Range compute_range(const std::string& name, const TensorStats& stats, const RangeConfig& config);

// Registration (one function per method file; called from register_builtin_methods()).
void register_minmax(std::vector<MethodInfo>& methods);
void register_percentile(std::vector<MethodInfo>& methods);
void register_entropy(std::vector<MethodInfo>& methods);
void register_mse(std::vector<MethodInfo>& methods);

/// Minimum of KL(P || Q) over thresholds (TensorRT's entropy calibration, as in MXNet/TVM/ONNX
/// Runtime): `hist` is a histogram of |x| with bins of width 1 (scale the result by the real
/// width); for each candidate i in [num_quant_bins, hist.size()], P = hist[0:i] with the tail
/// folded into P[i-1], Q = hist[0:i] merged into num_quant_bins bins and expanded back over P's
/// non-zero bins; both smoothed (eps 1e-4) and normalised. Returns the best i (threshold = i bins).
/// A histogram with fewer than num_quant_bins bins returns hist.size() (no clipping).
size_t entropy_threshold_bins(const std::vector<uint64_t>& hist, int num_quant_bins);

/// Expected squared quantization error of clipping to [lo, hi] with `levels` evenly spaced levels,
/// estimated from a histogram (bin centres): values inside contribute step^2/12 (uniform rounding
/// noise), values outside their squared distance to the clip point.
double expected_quant_error(const Histogram& hist, double lo, double hi, int64_t levels);

}  // namespace qtool::calib
