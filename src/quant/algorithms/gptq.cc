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
QuantizedMatrix gptq_conv(const Target& t, std::span<const double> h, const QuantSpec& spec, const GptqOptions& o) {
  const int64_t m_out = t.out_channels, c_in = t.shape[1], taps = t.taps, k = c_in * taps;
  if (!t.conv_blocked) return quantize_gptq(t.w, t.rows, t.cols, h, spec, o);  // view == natural [M, C·taps]
  const int64_t bs = t.format->block_size, kbc = (c_in + bs - 1) / bs;
  std::vector<float> nat(m_out * k);
  for (int64_t m = 0; m < m_out; ++m)
    for (int64_t tp = 0; tp < taps; ++tp)
      for (int64_t c = 0; c < c_in; ++c) nat[m * k + c * taps + tp] = t.w[(m * taps + tp) * c_in + c];
  std::vector<int64_t> groups(k);
  for (int64_t c = 0; c < c_in; ++c)
    for (int64_t tp = 0; tp < taps; ++tp) groups[c * taps + tp] = tp * kbc + c / bs;
  const QuantizedMatrix g = quantize_gptq_grouped(nat, m_out, k, h, spec, groups, taps * kbc, o);
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

QuantizedMatrix quantize_gptq_layer(const LayerJob& job, std::string* label) {
  const Target& t = job.t;
  if (job.patch_stats && job.patch_stats->hessian.samples() > 0) {
    *label = "gptq";
    return gptq_conv(t, job.patch_stats->hessian.hessian(), job.spec, job.gptq);
  }
  if (!job.have_hessian) return quantize_rtn_layer(job, label);
  const std::vector<double> h = input_hessian(job);
  *label = "gptq";
  if (!job.outlier_columns.empty()) return gptq_without_columns(t, job.outlier_columns, h, job.spec, job.gptq);
  QuantizedMatrix q = quantize_gptq(t.w, t.rows, t.cols, h, job.spec, job.gptq);
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
