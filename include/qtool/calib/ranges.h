// The ranges file: what calibration produced, in a documented JSON that `qtool quantize
// --ranges` reads back without running calibration again.
//
// Schema (version 1):
// {
//   "format": "qtool-ranges", "version": 1,
//   "model": {"name": "mobilenetv2_dequant_fp32.onnx", "fingerprint": "fnv1a64:0123456789abcdef"},
//   "method": "entropy",
//   "config": {"bits": 8, "symmetric": true, "percentile": 99.999, "bins": 4096, "channel_axis": -1},
//   "samples": 500, "source": "../shared/data/imagenet-sample/images", "preprocess": "mobilenetv2-244",
//   "tensors": [                        // in execution order
//     {"name": "input.4", "dtype": "float32", "shape": [1,32,122,122],   // last observed shape
//      "count": 238144000,              // finite elements seen
//      "min": -8.1, "max": 9.3, "mean": 0.02, "std": 1.1,   // exact observed statistics
//      "range_min": -6.2, "range_max": 6.2,                 // the method's quantization range
//      "channel_axis": 1,               // absent when no per-channel statistics were kept
//      "per_channel_min": [...], "per_channel_max": [...], "per_channel_absmax": [...],
//      "histogram": {"lo": -8.25, "hi": 9.5, "counts": [...]},  // <= 128 equal bins over [lo, hi)
//      "percentiles": {"0.001": .., "0.01": .., "0.1": .., "1": .., "50": .., "99": .., "99.9": .., "99.99": .., "99.999": ..},
//      "nonfinite": 0}
//   ]
// }
// Unknown keys are ignored on reading (forward compatible within a version); a different
// "format" or a newer "version" is refused.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "qtool/calib/methods.h"

namespace qtool::calib {

inline constexpr int kRangesVersion = 1;

/// One tensor's entry of the ranges file.
struct TensorRange {
  std::string name;
  std::string dtype = "float32";
  Shape shape;
  uint64_t count = 0;
  double min = 0, max = 0, mean = 0, std = 0;
  double range_min = 0, range_max = 0;
  int channel_axis = -1;  ///< -1: no per-channel statistics
  std::vector<float> per_channel_min, per_channel_max;
  /// max(|per_channel_min|, |per_channel_max|) per channel (SmoothQuant/AWQ activation scales).
  std::vector<float> per_channel_absmax() const;
  double hist_lo = 0, hist_hi = 0;
  std::vector<uint64_t> hist_counts;  ///< equal bins over [hist_lo, hist_hi)
  std::map<std::string, double> percentiles;  ///< "99.9" -> value
  uint64_t nonfinite = 0;
};

/// A whole ranges file.
struct RangesFile {
  int version = kRangesVersion;
  std::string model_name;
  std::string model_fingerprint;  ///< "fnv1a64:<16 hex digits>" of the model file, "" if unknown
  std::string method;
  RangeConfig config;
  int bins = 4096;
  int channel_axis = -1;
  uint64_t samples = 0;
  std::string source;
  std::string preprocess;
  std::vector<TensorRange> tensors;  ///< execution order

  /// nullptr if absent.
  const TensorRange* find(const std::string& name) const;
};

/// Writes `file` as JSON (atomically). Throws kIo naming the path.
void save_ranges(const std::string& path, const RangesFile& file);
/// Serialises to a JSON string.
std::string ranges_to_json(const RangesFile& file);
/// Reads a ranges file. Throws kIo (unreadable), kInvalidInput (not JSON, wrong format, bad field:
/// the message names the tensor and key), kUnsupported (newer version).
RangesFile load_ranges(const std::string& path);
/// Parses from a JSON string; `what` names it in errors.
RangesFile parse_ranges(const std::string& json, const std::string& what);

/// Fills one TensorRange from statistics and a range (histogram summary of <= summary_bins bins).
TensorRange make_tensor_range(const TensorStats& stats, const Range& range, int summary_bins = 128);

/// "fnv1a64:<hex>" of a file's bytes (a cheap identity check, not a security hash).
std::string file_fingerprint(const std::string& path);

}  // namespace qtool::calib
