// GPTQ: each layer's columns quantized in turn, the rounding error of each pushed onto the columns
// not yet quantized through the inverse of the input Hessian H = Σ x xᵀ (gptq.h holds the matrix
// algorithm); k×k convs use the Hessian of their im2col patches, and outlier columns (carried by the
// int8 branch) are left out. A layer without a Hessian (int8 first/last, Gather) is rounded.
#include "../lowbit_internal.h"
#include "qtool/quant/awq.h"
#include "qtool/quant/weight_algorithms.h"

namespace qtool::quant {
namespace detail {
namespace {

/// GPTQ of a k×k Conv on its im2col Hessian h [C·taps, C·taps]: the columns of the natural layout
/// W [M, C·taps] (column c·taps + tap) are grouped as the stored blocks are (32 input channels at
/// one tap, or one group per output channel), and the result is returned in the target's view.
QuantizedMatrix gptq_conv(const Target& t, std::span<const double> h, const QuantSpec& spec, const GptqOptions& o,
                          GptqPruning pruning) {
  const int64_t m_out = t.out_channels, c_in = t.shape[1], taps = t.taps, k = c_in * taps;
  if (!t.conv_blocked) return quantize_gptq_pruned(t.w, t.rows, t.cols, h, spec, o, pruning);  // view == natural [M, C·taps]
  const int64_t bs = t.format->block_size, kbc = (c_in + bs - 1) / bs;
  std::vector<float> nat(m_out * k);
  for (int64_t m = 0; m < m_out; ++m)
    for (int64_t tp = 0; tp < taps; ++tp)
      for (int64_t c = 0; c < c_in; ++c) nat[m * k + c * taps + tp] = t.w[(m * taps + tp) * c_in + c];
  std::vector<int64_t> groups(k);
  for (int64_t c = 0; c < c_in; ++c)
    for (int64_t tp = 0; tp < taps; ++tp) groups[c * taps + tp] = tp * kbc + c / bs;
  // The mask in the natural layout (and back): N:M runs stay along the view's input channels only
  // for masks chosen before the sweep; SparseGPT's own choice runs along the natural columns.
  std::vector<uint8_t> nat_mask, out_mask;
  if (!pruning.pruned.empty()) {
    nat_mask.resize(m_out * k);
    for (int64_t m = 0; m < m_out; ++m)
      for (int64_t tp = 0; tp < taps; ++tp)
        for (int64_t c = 0; c < c_in; ++c) nat_mask[m * k + c * taps + tp] = pruning.pruned[(m * taps + tp) * c_in + c];
    pruning.pruned = nat_mask;
  }
  std::vector<uint8_t>* mask_out = pruning.mask_out;
  pruning.mask_out = mask_out ? &out_mask : nullptr;
  const QuantizedMatrix g = quantize_gptq_grouped(nat, m_out, k, h, spec, groups, taps * kbc, o, &pruning);
  if (mask_out) {
    mask_out->assign(t.rows * t.cols, 0);
    for (int64_t m = 0; m < m_out; ++m)
      for (int64_t tp = 0; tp < taps; ++tp)
        for (int64_t c = 0; c < c_in; ++c) (*mask_out)[(m * taps + tp) * c_in + c] = out_mask[m * k + c * taps + tp];
  }
  QuantizedMatrix q;
  q.rows = t.rows;
  q.cols = t.cols;
  q.block_size = bs;
  q.levels.resize(t.rows * t.cols);
  q.grids.resize(t.rows * kbc);
  if (!g.rounded_from.empty()) q.rounded_from.resize(t.rows * t.cols);
  for (int64_t m = 0; m < m_out; ++m)
    for (int64_t tp = 0; tp < taps; ++tp) {
      for (int64_t c = 0; c < c_in; ++c) {
        q.levels[(m * taps + tp) * c_in + c] = g.levels[m * k + c * taps + tp];
        if (!g.rounded_from.empty()) q.rounded_from[(m * taps + tp) * c_in + c] = g.rounded_from[m * k + c * taps + tp];
      }
      for (int64_t b = 0; b < kbc; ++b) q.grids[(m * taps + tp) * kbc + b] = g.grids[m * taps * kbc + tp * kbc + b];
    }
  return q;
}

/// GPTQ of a MatMul/Gemm whose outlier columns are carried exactly by the int8 branch: GPTQ runs on
/// the other columns only (H restricted to them, each keeping its block's grid), so that no error is
/// pushed into the outlier columns (the branch holds their original weights); those columns get the
/// level of 0 in the low-bit matrix.
QuantizedMatrix gptq_without_columns(const Target& t, const std::vector<int64_t>& out_cols, std::span<const double> h,
                                     const QuantSpec& spec, const GptqOptions& o) {
  const int64_t rows = t.rows, cols = t.cols, bs = effective_block(spec, cols), kb = (cols + bs - 1) / bs;
  std::vector<char> is_out(cols, 0);
  for (int64_t c : out_cols) is_out[c] = 1;
  std::vector<int64_t> keep;
  for (int64_t c = 0; c < cols; ++c)
    if (!is_out[c]) keep.push_back(c);
  const int64_t n = static_cast<int64_t>(keep.size());
  std::vector<float> w(rows * n);
  std::vector<double> hk(n * n);
  std::vector<int64_t> groups(n);
  for (int64_t i = 0; i < n; ++i) {
    groups[i] = keep[i] / bs;
    for (int64_t r = 0; r < rows; ++r) w[r * n + i] = t.w[r * cols + keep[i]];
    for (int64_t j = 0; j < n; ++j) hk[i * n + j] = h[keep[i] * cols + keep[j]];
  }
  const QuantizedMatrix g = quantize_gptq_grouped(w, rows, n, hk, spec, groups, kb, o);
  QuantizedMatrix q;
  q.rows = rows;
  q.cols = cols;
  q.block_size = bs;
  q.grids = g.grids;  // [rows, kb]: the groups are the original blocks
  q.levels.assign(rows * cols, 0);
  if (!g.rounded_from.empty()) q.rounded_from.assign(rows * cols, 0.0f);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < n; ++i) {
      q.levels[r * cols + keep[i]] = g.levels[r * n + i];
      if (!g.rounded_from.empty()) q.rounded_from[r * cols + keep[i]] = g.rounded_from[r * n + i];
    }
    for (int64_t c : out_cols) q.levels[r * cols + c] = q.grids[r * kb + c / bs].quantize(0.0f);
  }
  return q;
}

}  // namespace

std::vector<double> input_hessian(const LayerJob& job) {
  std::vector<double> h = job.stats->hessian.hessian();
  if (job.awq_scales) h = scale_hessian(h, *job.awq_scales);  // of the input x / s
  return h;
}

/// The pruning a job asks the sweep for, and (palettes) the tables fitted before it on the
/// importance diag(H), kept alive in `palette`.
GptqPruning sweep_pruning(const LayerJob& job, std::span<const double> h, int64_t k, QuantizedMatrix& palette) {
  GptqPruning p;
  if (job.pruned) p.pruned = *job.pruned;
  p.adaptive = job.adaptive;
  if (job.t.format->scheme == WeightScheme::kPalette) {
    std::vector<float> importance(static_cast<size_t>(k));
    for (int64_t c = 0; c < k; ++c) importance[c] = static_cast<float>(h[c * k + c]);
    palette = quantize_palette_layer(job, importance);
    p.row_grids = palette.grids;
  }
  return p;
}

/// Palettes: GPTQ sweeps on the fixed tables, each followed by a refit of the tables to the output
/// error with the indices fixed (refine_palettes), the next sweep assigning indices on the refitted
/// tables; a mask chosen by the first sweep (SparseGPT) is kept by the later ones.
QuantizedMatrix palette_sweeps(const LayerJob& job, std::span<const float> w, int64_t rows, int64_t cols,
                               std::span<const double> h, GptqPruning p) {
  constexpr int kSweeps = 2;
  std::vector<uint8_t> mask;
  if (p.adaptive.active()) p.mask_out = &mask;
  QuantizedMatrix q = quantize_gptq_pruned(w, rows, cols, h, job.spec, job.gptq, p);
  for (int s = 1; s <= kSweeps; ++s) {
    refine_palettes(q, w, h, job.spec.fp16_scale, job.sparse());
    if (s == kSweeps) break;
    if (p.adaptive.active()) {
      p.adaptive = {};
      p.pruned = mask;
      p.mask_out = nullptr;
    }
    p.row_grids = q.grids;
    q = quantize_gptq_pruned(w, rows, cols, h, job.spec, job.gptq, p);
  }
  return q;
}

QuantizedMatrix quantize_gptq_layer(const LayerJob& job, std::string* label) {
  const Target& t = job.t;
  const std::string name = job.adaptive.active() ? "sparsegpt" : "gptq";
  QuantizedMatrix palette;
  if (job.patch_stats && job.patch_stats->hessian.samples() > 0) {
    // A palette scaled per block of a k×k conv's input channels: its view is not the im2col order.
    if (t.format->scheme == WeightScheme::kPalette && t.conv_blocked) return quantize_rtn_layer(job, label);
    *label = name;
    const std::vector<double> h = job.patch_stats->hessian.hessian();
    const GptqPruning p = sweep_pruning(job, h, t.shape[1] * t.taps, palette);
    if (t.format->scheme == WeightScheme::kPalette && !t.conv_blocked)  // the view is the natural [M, C·taps]
      return palette_sweeps(job, t.w, t.rows, t.cols, h, p);
    return gptq_conv(t, h, job.spec, job.gptq, p);
  }
  if (!job.have_hessian) return quantize_rtn_layer(job, label);
  const std::vector<double> h = input_hessian(job);
  *label = name;
  if (!job.outlier_columns.empty()) return gptq_without_columns(t, job.outlier_columns, h, job.spec, job.gptq);
  const GptqPruning p = sweep_pruning(job, h, t.cols, palette);
  if (t.format->scheme == WeightScheme::kPalette) return palette_sweeps(job, t.w, t.rows, t.cols, h, p);
  QuantizedMatrix q = quantize_gptq_pruned(t.w, t.rows, t.cols, h, job.spec, job.gptq, p);
  if (job.gptq.refine_scales) {
    refine_scales(q, t.w, h, job.spec.fp16_scale);
    *label = "gptq+refit";
  }
  return q;
}

}  // namespace detail

void register_gptq(std::vector<WeightAlgorithmInfo>& algorithms) {
  algorithms.push_back({WeightAlgorithm::kGptq, "gptq", "error compensation through the input Hessian", true, false,
                        true, detail::quantize_gptq_layer});
}

}  // namespace qtool::quant
