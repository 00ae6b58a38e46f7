// Palettes (weight clustering): each weight becomes an index into a small table of values found by
// weighted k-means, one table per tensor or per group of output channels (coremltools'
// palettization; SqueezeLLM weighs the clustering by a sensitivity).
//
// Math: for the values x_i of a group with importance weights e_i (the diagonal of the layer's
// input Hessian, E[x_c²] of input channel c, when calibration data is given; else 1), find K = 2^bits
// centroids c_j minimizing Σ e_i (x_i − c_{j(i)})², j(i) the nearest centroid. In one dimension the
// clusters are runs of the sorted values, so Lloyd's iterations cost O(K log n) on prefix sums of
// the sorted values; two starts (k-means++ with a fixed seed, and weighted quantiles) are refined and
// the lower error kept. Deterministic.
//
// With `zero_entry`, index 0 holds exactly 0 (pruned weights point at it) and K − 1 centroids are
// fitted to the other values.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "qtool/quant/weight_quant.h"

namespace qtool::quant {

struct KMeansResult {
  std::vector<float> centroids;  ///< ascending (with zero_entry: 0 first, then the others ascending)
  double sse = 0.0;              ///< Σ e_i (x_i − c_{j(i)})² of the fit (before any float16 rounding)
  int iterations = 0;            ///< Lloyd iterations of the kept start
};

/// Weighted 1-D k-means of x (weights e, empty = all 1; zero weights are allowed) into exactly k
/// centroids (k ≥ 1). With fewer distinct values than free centroids, every distinct value is a
/// centroid and the table is padded with repeats of the largest. `zero_entry`: centroid 0 is fixed at 0.
KMeansResult kmeans_1d(std::span<const float> x, std::span<const float> e, int k, bool zero_entry = false,
                       int max_iterations = 300);

/// How a matrix is palettized.
struct PaletteSpec {
  int bits = 4;             ///< 2^bits entries per table
  int64_t group = 0;        ///< output channels (rows) per table; 0 = one table for the whole matrix
  /// A scale per block of `block` columns (0 = none): the table holds values of w / scale, each block's
  /// scale its absmax refined by least squares (float16 when fp16_table).
  int64_t block = 0;
  bool fp16_table = false;  ///< table values rounded to float16 (stored as float16): levels chosen for them
  bool zero_entry = false;  ///< index 0 is exactly 0 (set when some weights are pruned)
};

/// Palettizes W [rows, cols]: the rows ordered by RMS are taken spec.group at a time (rows of similar
/// spread share a table; a group need not be contiguous), and per group, k-means of its values weighted by
/// col_importance[c] (empty = uniform); pruned[r·cols + c] != 0 (empty = none) marks weights that
/// must be exactly 0: they take index 0 and are left out of the fit (spec.zero_entry must be set).
/// Returns levels = indices and one grid per row (block = cols), or per row and block of K with its
/// scale, sharing its group's Palette.
/// Groups are fitted on up to `threads` threads (the result does not depend on it).
QuantizedMatrix quantize_palette(std::span<const float> w, int64_t rows, int64_t cols, const PaletteSpec& spec,
                                 std::span<const float> col_importance = {}, std::span<const uint8_t> pruned = {},
                                 int threads = 1);

/// The rows sharing each table of a palettized q (by table identity), in order of first appearance.
std::vector<std::vector<int64_t>> palette_groups(const QuantizedMatrix& q);

/// Refits the tables of a palettized q (its indices fixed) to the layer's output error
/// tr((W − Q) H (W − Q)ᵀ), W [rows, cols] the target and H [cols, cols] the input Hessian: per group
/// of rows sharing a table, the table c solves (Σ_r A_rᵀ H A_r) c = Σ_r A_rᵀ H w_r with A_r the
/// one-hot index matrix of row r (entry 0 stays 0 when `zero_entry`; values rounded to float16 when
/// `fp16`). A group's table is replaced only when its error goes down. Returns the total error after.
double refine_palettes(QuantizedMatrix& q, std::span<const float> w, std::span<const double> h, bool fp16,
                       bool zero_entry);

}  // namespace qtool::quant
