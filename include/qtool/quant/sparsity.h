// Pruning (sparsity) of weight matrices, before or together with quantization.
//
// A SparsitySpec asks for a fraction of zeros per layer ("0.5", unstructured) or an N:M pattern
// ("2:4": in every run of M consecutive weights along a row's reduction axis at most N are non-zero).
// Methods:
//   magnitude  prune the smallest |w| of the layer (unstructured) or of each run of M (N:M);
//   wanda      prune the smallest |w_rc|·‖x_c‖ of each output row (Sun et al. 2023), ‖x_c‖ the norm
//              of input channel c over the calibration rows;
//   sparsegpt  choose the mask inside the GPTQ sweep by w²/[H⁻¹]_cc² in each row of each block of 128 columns and
//              push each pruned (and quantized) weight's error onto the columns not yet processed
//              (Frantar & Alistarh 2023) -- see gptq.h, GptqOptions::sparsity.
// The pruned weights are exactly 0 in the output: the zero level of a symmetric grid, index 0 of a
// palette (which then holds 0).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace qtool::quant {

enum class SparsityMethod { kMagnitude, kWanda, kSparseGpt };
/// "magnitude" | "wanda" | "sparsegpt"; throws kConfig otherwise.
SparsityMethod parse_sparsity_method(std::string_view s);
std::string_view sparsity_method_name(SparsityMethod m);

struct SparsitySpec {
  double fraction = 0.0;  ///< unstructured: zeros per layer, in [0, 1)
  int n = 0, m = 0;       ///< N:M (m > 0): at most n non-zeros in every m consecutive weights
  /// Whether anything is pruned.
  bool active() const { return m > 0 || fraction > 0.0; }
  bool structured() const { return m > 0; }
  /// The fraction of zeros it asks for (N:M: 1 − n/m).
  double target() const { return m > 0 ? 1.0 - static_cast<double>(n) / m : fraction; }
  /// "0.5", "50%" or "2:4" (kConfig naming the value otherwise).
  static SparsitySpec parse(std::string_view text);
  /// As parse() reads it ("0.5", "2:4"); "" when inactive.
  std::string spelled() const;
};

/// The pruning mask (1 = pruned) of W [rows, cols] from per-weight scores (higher = keep): the
/// lowest `spec.fraction` of each row (per_row) or of the whole matrix, or for N:M the m − n lowest
/// of every run of m columns in each row (a short last run keeps at most n). Ties: the earlier weight
/// is pruned first. Deterministic.
std::vector<uint8_t> prune_mask(std::span<const float> score, int64_t rows, int64_t cols, const SparsitySpec& spec,
                                bool per_row);

/// The scores of a method that needs no Hessian sweep: |w| (magnitude), |w|·‖x_c‖ (wanda, with
/// `channel_norm` [cols]; empty = magnitude). W [rows, cols].
std::vector<float> prune_scores(std::span<const float> w, int64_t rows, int64_t cols, SparsityMethod method,
                                std::span<const float> channel_norm = {});

/// True when mask follows spec's pattern: for N:M, at most n kept in every run of m columns of each row.
bool mask_follows_pattern(std::span<const uint8_t> mask, int64_t rows, int64_t cols, const SparsitySpec& spec);

}  // namespace qtool::quant
