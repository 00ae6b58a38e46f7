// Weight quantizers on plain matrices (no graph): round-to-nearest with a clipping search,
// optimal ternary, binary, and the per-block grid they share with GPTQ and AWQ.
//
// A weight matrix is W [rows = N output channels, cols = K reduction channels], row-major float.
// Blocks run along K (see format.h). For a block with grid (scale s, zero point z, levels
// [lo, hi]) an element dequantizes to (q - z)·s with q = clamp(round(w/s) + z, lo, hi).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "qtool/core/dtype.h"
#include "qtool/quant/format.h"

namespace qtool::quant {

/// A palette: the table of values a level indexes (palette.h fits it by weighted k-means).
struct Palette {
  std::vector<float> values;           ///< table order: level q dequantizes to values[q]
  std::vector<float> sorted;           ///< the values ascending
  std::vector<int32_t> sorted_index;   ///< the level of each sorted value
  /// A palette of `table` (any order; duplicates allowed: the first index of a value wins).
  static std::shared_ptr<const Palette> make(std::vector<float> table);
  /// The level whose value is nearest to w (ties: the smaller value).
  int32_t nearest(float w) const;
};

/// The quantization grid of one block.
struct BlockGrid {
  float scale = 1.0f;
  int32_t zero_point = 0;
  int32_t lo = 0, hi = 0;
  bool binary = false;  ///< levels {-1, +1} only (sign), zero never produced
  bool float8 = false;  ///< levels are FLOAT8E4M3FN codes (0..255): w ≈ decode(code)·scale
  bool float4 = false;  ///< levels are FLOAT4E2M1 codes (0..15): w ≈ decode(code)·scale
  /// Levels index this table (palettes; shared by the rows of a group): w ≈ palette->values[q]·scale
  /// (scale 1 unless the palette is scaled per block).
  std::shared_ptr<const Palette> palette{};
  /// Levels are float codes (fp8, fp4), not an integer ladder.
  bool float_codes() const { return float8 || float4; }
  /// The value of float code q before scaling (fp8 / fp4 grids only).
  float code_value(int32_t q) const {
    return float8 ? float8e4m3fn_to_float(static_cast<uint8_t>(q)) : float4e2m1_to_float(static_cast<uint8_t>(q));
  }
  /// Nearest level of w on this grid.
  int32_t quantize(float w) const;
  float dequantize(int32_t q) const {
    if (palette) return palette->values[static_cast<size_t>(q)] * scale;
    if (float_codes()) return code_value(q) * scale;
    return static_cast<float>(q - zero_point) * scale;
  }
};

/// The quantizer settings that matter for the math (a WeightFormat minus its layout).
struct QuantSpec {
  WeightScheme scheme = WeightScheme::kInt;
  int bits = 4;
  bool is_signed = true;
  bool symmetric = true;
  int64_t block_size = 32;   ///< 0 = per output channel (one block per row)
  /// Clipping search for kInt: candidate ratios r = 1 - i·(1 - min_clip)/clip_steps, i = 0..clip_steps;
  /// the block range is shrunk to r·range and the ratio with the least squared error wins.
  /// clip_steps = 0 disables the search (plain min/max RTN).
  int clip_steps = 20;
  float min_clip = 0.5f;
  /// Scales are stored as float16 (DequantizeLinear scale initializer in half precision): every
  /// candidate scale is rounded to the nearest float16 before its levels and error are computed, so
  /// the levels are the best ones for the scale actually stored and dequantization is exact.
  bool fp16_scale = false;
  /// `s` as stored: rounded to float16 when fp16_scale, else unchanged.
  float stored_scale(float s) const;
  /// The spec of a table row.
  static QuantSpec from_format(const WeightFormat& f);
  void level_range(int32_t* lo, int32_t* hi) const;
};

/// A quantized W: integer levels plus one grid per (row, block).
struct QuantizedMatrix {
  int64_t rows = 0, cols = 0;
  int64_t block_size = 0;           ///< effective block (cols when per channel)
  std::vector<int32_t> levels;      ///< [rows, cols]
  std::vector<BlockGrid> grids;     ///< [rows, k_blocks]
  /// Optional, [rows, cols]: the value each level was rounded from (GPTQ's error-compensated
  /// weights; filled when GptqOptions::keep_latent), the starting point of distillation tuning.
  std::vector<float> rounded_from;
  int64_t k_blocks() const { return block_size > 0 ? (cols + block_size - 1) / block_size : 1; }
  const BlockGrid& grid(int64_t r, int64_t c) const { return grids[r * k_blocks() + c / block_size]; }
  /// The float matrix this represents, [rows, cols].
  std::vector<float> dequantize() const;
};

/// True when every grid's scale is a finite, normal float16 value (|s| in [2^-14, 65504]) or the
/// unit scale of an all-zero block: the condition for storing the matrix with float16 scales
/// without losing precision to subnormals.
bool scales_fit_fp16(const QuantizedMatrix& q);

/// Effective block size of a spec for `cols` (cols when per channel).
int64_t effective_block(const QuantSpec& spec, int64_t cols);

/// The grid for one block of values x[0..n) (stride 1) under `spec`: kInt with the clipping
/// search (least Σ(x - Q(x))²), ternary with the exact optimal threshold/α, binary with α = mean|x|.
/// `weights` (optional, size n) weighs the squared error per element (AWQ/GPTQ use activation
/// energy); empty means uniform.
BlockGrid find_block_grid(std::span<const float> x, const QuantSpec& spec, std::span<const float> weights = {});

/// The grid for one block minimizing the block's share of the layer's output error, dᵀ H_b d with
/// d = x − Q(x) and H_b [n, n] (row-major) the block's diagonal block of H = Σ x xᵀ over calibration
/// inputs (AWQ's "auto_clip": the clipping ratio best for the output, not for the weights; cross
/// terms between blocks are ignored). kInt searches the clipping ratios of `spec`; ternary and
/// binary use diag(H_b) as per-element error weights.
BlockGrid find_block_grid_hessian(std::span<const float> x, const QuantSpec& spec, std::span<const double> hb);

/// H's diagonal block of columns [c0, c1), H [cols, cols] row-major.
std::vector<double> diagonal_block(std::span<const double> h, int64_t cols, int64_t c0, int64_t c1);

/// RTN of W [rows, cols] with per-block grids from find_block_grid_hessian on H [cols, cols].
QuantizedMatrix quantize_rtn_hessian(std::span<const float> w, int64_t rows, int64_t cols, const QuantSpec& spec,
                                     std::span<const double> h);

/// Output error tr((W − Q) H (W − Q)ᵀ) for H [cols, cols]; equals ‖W X − Q X‖²_F when H = Σ x xᵀ.
double hessian_error(std::span<const float> w, std::span<const float> q, int64_t rows, int64_t cols,
                     std::span<const double> h);

/// Round-to-nearest quantization of W [rows, cols] with per-block grids from find_block_grid.
QuantizedMatrix quantize_rtn(std::span<const float> w, int64_t rows, int64_t cols, const QuantSpec& spec);

/// Ternary with the common fixed rule: threshold Δ = 0.7·mean|w|, α = mean of |w| above Δ
/// (TWN). Kept as the baseline that the optimal search is tested against.
QuantizedMatrix quantize_ternary_twn(std::span<const float> w, int64_t rows, int64_t cols, int64_t block_size);

/// Σ (a - b)² over two equal-length arrays.
double squared_error(std::span<const float> a, std::span<const float> b);

/// Output error ‖W X - Q X‖²_F where X is given as samples x [n, cols] (row-major, one sample per row).
double output_error(std::span<const float> w, std::span<const float> q, int64_t rows, int64_t cols,
                    std::span<const float> x, int64_t n);

/// Input channels (columns of W) to keep in higher precision: the ceil(fraction·cols) columns with the
/// largest saliency Σ_r w[r,c]²·e[c], where e is the per-channel activation energy E[x_c²]
/// (all ones when `act_energy` is empty: pure weight magnitude). Sorted ascending.
std::vector<int64_t> select_outlier_columns(std::span<const float> w, int64_t rows, int64_t cols, double fraction,
                                            std::span<const float> act_energy = {});

}  // namespace qtool::quant
