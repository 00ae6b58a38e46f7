// Internal pieces of the weight-only rewrite shared by src/quant/lowbit_*.cc (not a public header).
#pragma once

#include <cstdint>
#include <unordered_map>
#include <vector>

#include "qtool/ir/graph.h"
#include "qtool/quant/gptq.h"
#include "qtool/quant/lowbit.h"

namespace qtool::quant::detail {

/// Streaming statistics of one weight layer's input X (last dimension = K channels).
struct InputStats {
  int64_t k = 0;
  bool want_hessian = false;
  /// The channels are on axis 1 (NCHW input of a 1x1 Conv): each pixel of each image is one row.
  bool channel_axis1 = false;
  /// k×k Conv (2-D, group 1): rows are the im2col patches of the input, k = C·kh·kw with patch
  /// element c·kh·kw + ky·kw + kx; geometry {kh, kw, stride_h, stride_w, pad_top, pad_left,
  /// pad_bottom, pad_right, dilation_h, dilation_w}. At most kMaxPatchRows evenly spaced output positions per image.
  std::vector<int64_t> conv_geometry;
  static constexpr int64_t kMaxPatchRows = 256;
  HessianAccumulator hessian;
  std::vector<double> sum_abs;   ///< Σ |x_c|
  std::vector<double> sum_sq;    ///< Σ x_c²
  int64_t rows = 0;              ///< rows seen
  std::vector<float> kept;       ///< up to max rows of X, [kept_rows, k]
  int64_t kept_rows = 0;
  std::vector<float> mean_abs() const;
  std::vector<float> energy() const;
};

/// Runs the calibration samples through the executor and fills `stats` (keyed by the input
/// value of the weight layers; each entry's k and want_hessian set by the caller).
/// `extra` adds statistics of values that need more than one view (a value read by a 1x1 and a k×k
/// Conv, e.g. SqueezeNet's squeeze output): each pair's stats are filled from that value too.
void collect_input_stats(const ir::Model& model, const CalibrationInputs& calib, int threads, int64_t max_rows,
                         std::unordered_map<const ir::Value*, InputStats>& stats,
                         const std::vector<std::pair<const ir::Value*, InputStats*>>& extra = {});

}  // namespace qtool::quant::detail
