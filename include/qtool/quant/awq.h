// AWQ (Lin et al. 2023, "AWQ: Activation-aware Weight Quantization"), on plain matrices.
//
// Math: salient input channels are those with large activations. Scaling input channel c of W by
// s_c and the activation by 1/s_c leaves W X unchanged but shrinks the relative rounding error of
// the salient weights. The search takes s = s_x^α / sqrt(max(s_x^α)·min(s_x^α)) for α on a grid in
// [0, 1] (s_x = mean |x_c| over calibration samples) and keeps the α minimizing the output error
// ‖Q(W·diag(s))·diag(s)⁻¹ X − W X‖² over the samples. Several matrices that read the same input
// (q/k/v projections) are searched jointly, since one scale vector is folded into their shared
// producer (RMSNorm weight, previous MatMul output channels, or an inserted Mul).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "qtool/quant/weight_quant.h"

namespace qtool::quant {

struct AwqOptions {
  int grid = 20;  ///< α = i / grid, i = 0..grid (α = 0 is plain RTN, so AWQ is never worse on the samples)
  /// awq_search_hessian: quantize each candidate with the clipping chosen per block by the output
  /// error (quantize_rtn_hessian on the rescaled H, AWQ's auto_clip) instead of the weight error,
  /// so that α is chosen for the quantizer that is finally used.
  bool output_clip = true;
  /// AutoAWQ's "duo scaling" for α > 0: s = x_mean^α / w_mean^(1-α) (w_mean: mean |w| per input
  /// channel relative to its block's max), normalised likewise; α = 0 stays s = 1 (plain RTN).
  bool duo_scaling = false;
};

/// One weight matrix of a group sharing the same input: W [rows, cols], cols = input channels.
struct AwqMatrix {
  std::span<const float> w;
  int64_t rows = 0;
};

struct AwqResult {
  std::vector<float> scales;  ///< s, per input channel: the weights become W·diag(s), the input X·diag(1/s)
  double alpha = 0.0;         ///< chosen α
  double error = 0.0;         ///< output error at the chosen α (sum over the group)
  double rtn_error = 0.0;     ///< output error at α = 0 (plain RTN)
};

/// Searches the AWQ scales for a group of matrices sharing an input with `cols` channels, from
/// calibration samples x [n, cols]. `act_mean_abs` is mean |x_c| (over all calibration rows, may be
/// more rows than x). Quantization inside the search is RTN under `spec` (its clip search included).
AwqResult awq_search(std::span<const AwqMatrix> group, int64_t cols, std::span<const float> x, int64_t n,
                     std::span<const float> act_mean_abs, const QuantSpec& spec, const AwqOptions& options = {});

/// The same search with the output error measured through H = Σ x xᵀ over all calibration rows
/// (H [cols, cols] row-major, any positive scale): err = Σ_m tr(ΔW_m H ΔW_mᵀ) with
/// ΔW_m = W_m − Q(W_m·diag(s))·diag(s)⁻¹. Exact for every calibration row at O(rows·cols²) per
/// candidate, instead of a subsample of rows. With options.output_clip the candidates are quantized
/// by quantize_rtn_hessian(W·diag(s), scale_hessian(H, s)).
AwqResult awq_search_hessian(std::span<const AwqMatrix> group, int64_t cols, std::span<const double> h,
                             std::span<const float> act_mean_abs, const QuantSpec& spec,
                             const AwqOptions& options = {});

/// The Hessian of the rescaled input x·diag(1/s): H'_ij = H_ij / (s_i s_j).
std::vector<double> scale_hessian(std::span<const double> h, std::span<const float> s);

/// W·diag(s): scales column c of W [rows, cols] by s[c], in place.
void scale_columns(std::span<float> w, int64_t rows, int64_t cols, std::span<const float> s);

}  // namespace qtool::quant
