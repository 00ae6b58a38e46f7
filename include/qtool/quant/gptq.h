// GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative
// Pre-trained Transformers"), on a plain weight matrix and a Hessian.
//
// Math: for a layer Y = W X, quantize W row-wise minimizing ‖W X - Q X‖² = tr((W-Q) H (W-Q)ᵀ),
// H = Σ x xᵀ over calibration inputs. Columns are quantized one at a time; the error of column j,
// e = (w_j - q_j) / [H⁻¹]_jj, is spread onto the not-yet-quantized columns as w_k -= e·[H⁻¹]_jk,
// using the upper Cholesky factor U of H⁻¹ (H⁻¹ = Uᵀ U) so the update is numerically stable.
// Updates are applied lazily in blocks of `block_columns` (the reference's blocksize 128).
// Dampening adds percdamp·mean(diag H) to the diagonal; dead inputs (H_jj = 0) get H_jj = 1 and
// w_j = 0. With act_order, columns are processed by decreasing H_jj and block grids are computed
// up front from the unmodified W ("static groups") so the stored layout stays in natural order.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "qtool/quant/sparsity.h"
#include "qtool/quant/weight_quant.h"

namespace qtool::quant {

/// Streaming H = Σ x xᵀ accumulator (double), fed with activation rows as they are produced.
class HessianAccumulator {
 public:
  explicit HessianAccumulator(int64_t dim = 0);
  /// Adds n rows x[i, 0..dim) (row-major).
  void add(std::span<const float> x, int64_t n);
  int64_t dim() const { return dim_; }
  int64_t samples() const { return samples_; }
  /// H / samples (the scale does not change GPTQ's result; kept well-conditioned), [dim, dim] row-major.
  std::vector<double> hessian() const;
  /// Mean of x_c² per channel (the diagonal of H / samples): activation energy for saliency.
  std::vector<float> channel_energy() const;

 private:
  int64_t dim_ = 0;
  int64_t samples_ = 0;
  std::vector<double> h_;  // lower triangle used during accumulation; symmetrised on read
};

struct GptqOptions {
  double percdamp = 0.01;       ///< dampening, fraction of mean(diag H)
  bool act_order = false;       ///< process columns by decreasing H_jj
  int64_t block_columns = 128;  ///< lazy-update block width
  /// Choose each block's grid (clipping ratio) by the block's output error dᵀ H_b d with the block's
  /// diagonal block of H (find_block_grid_hessian) instead of the diag(H)-weighted weight error.
  bool output_clip = false;
  /// After the columns are quantized, refit each row's block scales to the fixed levels by least
  /// squares on the output error (refine_scales).
  bool refine_scales = false;
  /// Passes of coordinate descent after GPTQ: each level moves by ±1 when that lowers the row's
  /// exact output error dᵀ H d (grids kept), in the spirit of QuantEase (Behdin et al. 2023).
  int cd_passes = 0;
  /// Keep the value each column had when it was rounded (QuantizedMatrix::rounded_from).
  bool keep_latent = false;
};

struct GptqPruning;  // below

/// GPTQ with arbitrary (static) column groups: column c of each row is quantized on grid
/// column_group[c] ∈ [0, num_groups) of that row, the grids computed up front from W (as with
/// act_order). Used for k×k Conv weights, whose columns are (input channel, kernel tap) pairs and
/// whose blocks run along the input channels at one tap. The result's `levels` are [rows, cols] and
/// its `grids` [rows, num_groups]; its block_size and grid() do not describe this layout.
QuantizedMatrix quantize_gptq_grouped(std::span<const float> w, int64_t rows, int64_t cols,
                                      std::span<const double> hessian, const QuantSpec& spec,
                                      std::span<const int64_t> column_group, int64_t num_groups,
                                      const GptqOptions& options = {}, const GptqPruning* pruning = nullptr);

/// Refits the block scales of each row of q to its fixed integer levels, minimizing the layer's output
/// error tr((W − Q) H (W − Q)ᵀ) exactly: with Q_row = A s (A [cols, k_blocks], column b holding
/// (level − zero point) on block b's columns), s = (Aᵀ H A)⁻¹ Aᵀ H w. Levels and zero points are kept,
/// so the stored layout does not change. A row's scales are only replaced when the refit lowers its
/// error, every new scale is positive, and (with fp16) it is rounded to float16 and still lowers it.
/// Returns the total output error after refitting. W [rows, cols] is the target (e.g. the weights
/// before GPTQ's updates), H [cols, cols] row-major.
double refine_scales(QuantizedMatrix& q, std::span<const float> w, std::span<const double> h, bool fp16 = false);

/// Quantizes W [rows, cols] with GPTQ under `spec` (per-block grids found on the updated weights
/// at the start of each block, or statically with act_order). `hessian` is [cols, cols] row-major.
/// Throws kInternal if the dampened Hessian is not positive definite even after retrying with more
/// dampening.
QuantizedMatrix quantize_gptq(std::span<const float> w, int64_t rows, int64_t cols, std::span<const double> hessian,
                              const QuantSpec& spec, const GptqOptions& options = {});

/// What the GPTQ sweep prunes and which grids it rounds on, beyond quantize_gptq.
struct GptqPruning {
  /// Weights held at exactly 0 ([rows, cols], 1 = pruned; empty = none): chosen before the sweep
  /// (magnitude, Wanda); their whole value is error pushed onto the later columns.
  std::span<const uint8_t> pruned;
  /// SparseGPT: the sweep chooses the mask itself, at the start of each block of columns (N:M: of
  /// each run of m), pruning the weights with the least w²/[H⁻¹]_cc² (the OBS saliency). act_order is
  /// ignored (the pattern runs along the natural column order).
  SparsitySpec adaptive;
  /// Fixed grids, [rows, k_blocks] as the sweep's own would be (palettes fitted before the sweep).
  /// Empty: grids of `spec`.
  std::span<const BlockGrid> row_grids;
  /// Filled with the final mask ([rows, cols]) when not null.
  std::vector<uint8_t>* mask_out = nullptr;
};

/// GPTQ (or, with pruning, SparseGPT's joint pruning and quantization) of W [rows, cols]: pruned
/// weights take the grid's level of 0 (which must dequantize to exactly 0). Throws as quantize_gptq.
QuantizedMatrix quantize_gptq_pruned(std::span<const float> w, int64_t rows, int64_t cols,
                                     std::span<const double> hessian, const QuantSpec& spec,
                                     const GptqOptions& options, const GptqPruning& pruning);

}  // namespace qtool::quant
