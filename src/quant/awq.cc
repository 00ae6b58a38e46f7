// AWQ scale search on plain matrices (see awq.h). Follows the reference (mit-han-lab/llm-awq
// auto_scale): s = s_x^α normalised by sqrt(max·min), α on a grid, least output error wins.
#include <algorithm>
#include <cmath>

#include "qtool/core/error.h"
#include "qtool/quant/awq.h"

namespace qtool::quant {

void scale_columns(std::span<float> w, int64_t rows, int64_t cols, std::span<const float> s) {
  QTOOL_CHECK(static_cast<int64_t>(w.size()) == rows * cols && static_cast<int64_t>(s.size()) == cols,
              ErrorCode::kInternal, "scale_columns: sizes");
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) w[r * cols + c] *= s[c];
}

namespace {

/// s = s_x^α / sqrt(max·min) (the reference's normalisation).
std::vector<float> awq_scales(std::span<const float> act_mean_abs, double alpha) {
  const size_t cols = act_mean_abs.size();
  std::vector<float> s(cols);
  double mx = 0, mn = INFINITY;
  for (size_t c = 0; c < cols; ++c) {
    const double v = std::max(1e-4, std::pow(std::max(static_cast<double>(act_mean_abs[c]), 0.0), alpha));
    s[c] = static_cast<float>(v);
    mx = std::max(mx, v);
    mn = std::min(mn, v);
  }
  const double norm = std::sqrt(mx * mn);
  for (auto& v : s) v = static_cast<float>(v / norm);
  return s;
}

}  // namespace

std::vector<double> scale_hessian(std::span<const double> h, std::span<const float> s) {
  const size_t n = s.size();
  QTOOL_CHECK(h.size() == n * n, ErrorCode::kInternal, "scale_hessian: sizes");
  std::vector<double> out(n * n);
  for (size_t i = 0; i < n; ++i)
    for (size_t j = 0; j < n; ++j) out[i * n + j] = h[i * n + j] / (static_cast<double>(s[i]) * s[j]);
  return out;
}

AwqResult awq_search_hessian(std::span<const AwqMatrix> group, int64_t cols, std::span<const double> h,
                             std::span<const float> act_mean_abs, const QuantSpec& spec, const AwqOptions& options) {
  QTOOL_CHECK(static_cast<int64_t>(act_mean_abs.size()) == cols, ErrorCode::kInternal, "awq: act size");
  QTOOL_CHECK(static_cast<int64_t>(h.size()) == cols * cols, ErrorCode::kInternal, "awq: H size");
  const int grid = std::max(1, options.grid);
  AwqResult best;
  best.error = -1;
  std::vector<float> ws;
  // Duo scaling: w_mean[c] = mean over the group's rows of |w| relative to its block's max |w|.
  std::vector<double> w_mean(cols, 0.0);
  if (options.duo_scaling) {
    const int64_t bs = effective_block(spec, cols);
    int64_t total_rows = 0;
    for (const AwqMatrix& m : group) {
      for (int64_t r = 0; r < m.rows; ++r)
        for (int64_t c0 = 0; c0 < cols; c0 += bs) {
          const int64_t c1 = std::min(cols, c0 + bs);
          float mx = 0.0f;
          for (int64_t c = c0; c < c1; ++c) mx = std::max(mx, std::fabs(m.w[r * cols + c]));
          for (int64_t c = c0; c < c1; ++c) w_mean[c] += std::fabs(m.w[r * cols + c]) / (mx + 1e-6);
        }
      total_rows += m.rows;
    }
    for (auto& v : w_mean) v /= static_cast<double>(std::max<int64_t>(1, total_rows));
  }
  for (int i = 0; i <= grid; ++i) {
    const double alpha = static_cast<double>(i) / grid;
    std::vector<float> s = awq_scales(act_mean_abs, alpha);
    if (options.duo_scaling && i > 0) {  // i = 0 stays s = 1 (plain RTN)
      double mx = 0, mn = INFINITY;
      for (int64_t c = 0; c < cols; ++c) {
        const double v = std::max(1e-4, std::pow(std::max(static_cast<double>(act_mean_abs[c]), 0.0), alpha) /
                                            (std::pow(w_mean[c], 1.0 - alpha) + 1e-4));
        s[c] = static_cast<float>(v);
        mx = std::max(mx, v);
        mn = std::min(mn, v);
      }
      const double norm = std::sqrt(mx * mn);
      for (auto& v : s) v = static_cast<float>(v / norm);
    }
    // Error of the scaled problem: ‖(W·S − Q)(S⁻¹X)‖ = tr(ΔW' H' ΔW'ᵀ) with H' = S⁻¹ H S⁻¹.
    const std::vector<double> hs = scale_hessian(h, s);
    double err = 0;
    for (const AwqMatrix& m : group) {
      QTOOL_CHECK(static_cast<int64_t>(m.w.size()) == m.rows * cols, ErrorCode::kInternal, "awq: W size");
      ws.assign(m.w.begin(), m.w.end());
      scale_columns(ws, m.rows, cols, s);
      const QuantizedMatrix q =
          options.output_clip ? quantize_rtn_hessian(ws, m.rows, cols, spec, hs) : quantize_rtn(ws, m.rows, cols, spec);
      err += hessian_error(ws, q.dequantize(), m.rows, cols, hs);
    }
    if (i == 0) best.rtn_error = err;
    if (best.error < 0 || err < best.error) {
      best.error = err;
      best.alpha = alpha;
      best.scales = s;
    }
  }
  return best;
}

AwqResult awq_search(std::span<const AwqMatrix> group, int64_t cols, std::span<const float> x, int64_t n,
                     std::span<const float> act_mean_abs, const QuantSpec& spec, const AwqOptions& options) {
  QTOOL_CHECK(static_cast<int64_t>(act_mean_abs.size()) == cols, ErrorCode::kInternal, "awq: act size");
  QTOOL_CHECK(static_cast<int64_t>(x.size()) == n * cols, ErrorCode::kInternal, "awq: x size");
  const int grid = std::max(1, options.grid);
  AwqResult best;
  best.error = -1;
  std::vector<float> s(cols), ws, deq;
  for (int i = 0; i <= grid; ++i) {
    const double alpha = static_cast<double>(i) / grid;
    s = awq_scales(act_mean_abs, alpha);
    double err = 0;
    for (const AwqMatrix& m : group) {
      QTOOL_CHECK(static_cast<int64_t>(m.w.size()) == m.rows * cols, ErrorCode::kInternal, "awq: W size");
      ws.assign(m.w.begin(), m.w.end());
      scale_columns(ws, m.rows, cols, s);
      deq = quantize_rtn(ws, m.rows, cols, spec).dequantize();
      for (int64_t r = 0; r < m.rows; ++r)
        for (int64_t c = 0; c < cols; ++c) deq[r * cols + c] /= s[c];
      err += output_error(m.w, deq, m.rows, cols, x, n);
    }
    if (i == 0) best.rtn_error = err;
    if (best.error < 0 || err < best.error) {
      best.error = err;
      best.alpha = alpha;
      best.scales = s;
    }
  }
  return best;
}

}  // namespace qtool::quant
