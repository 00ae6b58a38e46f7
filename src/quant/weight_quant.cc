// RTN with clipping search, optimal ternary, binary (see weight_quant.h).
#include <algorithm>
#include <cmath>
#include <numeric>

#include "qtool/core/error.h"
#include "qtool/quant/palette.h"
#include "qtool/quant/weight_quant.h"

namespace qtool::quant {

std::shared_ptr<const Palette> Palette::make(std::vector<float> table) {
  auto p = std::make_shared<Palette>();
  p->values = std::move(table);
  std::vector<int32_t> order(p->values.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int32_t>(i);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return p->values[a] < p->values[b]; });
  for (int32_t i : order) {
    if (!p->sorted.empty() && p->sorted.back() == p->values[i]) continue;  // duplicates: the first index
    p->sorted.push_back(p->values[i]);
    p->sorted_index.push_back(i);
  }
  return p;
}

int32_t Palette::nearest(float w) const {
  const auto it = std::lower_bound(sorted.begin(), sorted.end(), w);
  size_t j = static_cast<size_t>(it - sorted.begin());
  if (j == sorted.size()) return sorted_index.back();
  if (j > 0 && w - sorted[j - 1] <= sorted[j] - w) --j;
  return sorted_index[j];
}

int32_t BlockGrid::quantize(float w) const {
  if (palette) return palette->nearest(scale == 1.0f ? w : w / scale);
  if (binary) return w >= 0.0f ? 1 : -1;
  if (float8) return float_to_float8e4m3fn(w / scale);
  if (float4) return float_to_float4e2m1(w / scale);
  const float q = std::nearbyint(w / scale) + static_cast<float>(zero_point);
  return static_cast<int32_t>(std::clamp(q, static_cast<float>(lo), static_cast<float>(hi)));
}

QuantSpec QuantSpec::from_format(const WeightFormat& f) {
  QuantSpec s;
  s.scheme = f.scheme;
  s.bits = f.bits;
  s.is_signed = f.is_signed;
  s.symmetric = f.symmetric;
  s.block_size = f.block_size;  // palettes: the scale blocks (0: one grid per row; the group runs over rows)
  return s;
}

void QuantSpec::level_range(int32_t* lo, int32_t* hi) const {
  if (scheme == WeightScheme::kPalette) {
    *lo = 0;
    *hi = (1 << bits) - 1;
  } else if (is_float_scheme(scheme)) {  // codes
    *lo = 0;
    *hi = scheme == WeightScheme::kFloat8 ? 255 : 15;
  } else if (scheme != WeightScheme::kInt) {
    *lo = -1;
    *hi = 1;
  } else if (is_signed) {
    *lo = -(1 << (bits - 1));
    *hi = (1 << (bits - 1)) - 1;
  } else {
    *lo = 0;
    *hi = (1 << bits) - 1;
  }
}

float QuantSpec::stored_scale(float s) const { return fp16_scale ? half_to_float(float_to_half(s)) : s; }

bool scales_fit_fp16(const QuantizedMatrix& q) {
  constexpr float kMinNormal = 6.103515625e-05f;  // 2^-14
  for (const BlockGrid& g : q.grids) {
    const float a = std::fabs(g.scale);
    if (!(a >= kMinNormal && a <= 65504.0f)) return false;
  }
  return true;
}

int64_t effective_block(const QuantSpec& spec, int64_t cols) { return spec.block_size > 0 ? spec.block_size : cols; }

namespace {

/// Σ e (x - Q(x))² of a block on `g`.
double block_error(std::span<const float> x, std::span<const float> e, const BlockGrid& g) {
  if (!g.binary && !g.float_codes()) {
    // The same arithmetic as BlockGrid::quantize/dequantize (divide, round half to even, clamp),
    // written as one branch-free float loop the compiler vectorizes: the clipping search calls
    // this ~40 times per block, and it dominates streaming quantization of large models.
    const float s = g.scale, zp = static_cast<float>(g.zero_point);
    const float lo = static_cast<float>(g.lo), hi = static_cast<float>(g.hi);
    const size_t n = x.size();
    const float* xp = x.data();
    // Eight independent partial sums, so the lanes vectorize without reassociating one sum.
    auto sum = [&](auto weight) {
      float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      auto sq = [&](size_t i) {
        const float q = std::min(std::max(std::rint(xp[i] / s) + zp, lo), hi);
        const float d = xp[i] - (q - zp) * s;
        return weight(i) * d * d;
      };
      size_t i = 0;
      for (; i + 8 <= n; i += 8)
        for (size_t j = 0; j < 8; ++j) part[j] += sq(i + j);
      float total = 0.0f;
      for (; i < n; ++i) total += sq(i);
      for (float p : part) total += p;
      return total;
    };
    const float* ep = e.data();
    const float err = e.empty() ? sum([](size_t) { return 1.0f; }) : sum([ep](size_t i) { return ep[i]; });
    return err;
  }
  double err = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double d = static_cast<double>(x[i]) - g.dequantize(g.quantize(x[i]));
    err += (e.empty() ? 1.0 : e[i]) * d * d;
  }
  return err;
}

/// Clipping search of a uniform grid; `error(grid)` scores a candidate (least wins).
template <typename ErrorFn>
BlockGrid int_grid_search(std::span<const float> x, const QuantSpec& spec, ErrorFn&& error) {
  BlockGrid g;
  spec.level_range(&g.lo, &g.hi);
  float mn = 0.0f, mx = 0.0f;
  for (float v : x) {
    mn = std::min(mn, v);
    mx = std::max(mx, v);
  }
  const int steps = std::max(0, spec.clip_steps);
  BlockGrid best = g;
  double best_err = -1;
  auto consider = [&](const BlockGrid& cand) {
    const double err = error(cand);
    if (best_err < 0 || err < best_err) {
      best_err = err;
      best = cand;
    }
  };
  for (int i = 0; i <= steps; ++i) {
    const float r = steps == 0 ? 1.0f : 1.0f - static_cast<float>(i) * (1.0f - spec.min_clip) / steps;
    BlockGrid c = g;
    if (spec.symmetric) {
      const float amax = std::max(-mn, mx) * r;
      if (amax <= 0.0f) {
        c.scale = 1.0f;
        consider(c);
        break;
      }
      // Two symmetric grids: the extreme maps to hi (±hi used) or to |lo| (the extra negative level used).
      c.scale = spec.stored_scale(amax / static_cast<float>(g.hi));
      consider(c);
      if (steps > 0 && g.lo < -g.hi) {
        c.scale = spec.stored_scale(amax / static_cast<float>(-g.lo));
        consider(c);
      }
    } else {
      const float lo_v = mn * r, hi_v = mx * r;
      if (hi_v - lo_v <= 0.0f) {
        c.scale = 1.0f;
        c.zero_point = spec.is_signed ? 0 : g.lo;
        consider(c);
        break;
      }
      c.scale = spec.stored_scale((hi_v - lo_v) / static_cast<float>(g.hi - g.lo));
      c.zero_point = std::clamp(static_cast<int32_t>(std::nearbyint(g.lo - lo_v / c.scale)), g.lo, g.hi);
      consider(c);
    }
  }
  return best;
}

/// FP8 E4M3FN / FP4 E2M1 per block: scale = r·amax/max_code over the clipping ratios r of `spec`
/// (448, 6: the largest finite value of the code), levels the nearest codes; the ratio with the
/// least Σ e (x - Q(x))² wins.
BlockGrid float_code_grid(std::span<const float> x, std::span<const float> e, const QuantSpec& spec) {
  BlockGrid g;
  const bool fp8 = spec.scheme == WeightScheme::kFloat8;
  g.float8 = fp8;
  g.float4 = !fp8;
  g.lo = 0;
  g.hi = fp8 ? 255 : 15;
  const float max_code = fp8 ? 448.0f : 6.0f;
  float amax = 0.0f;
  for (float v : x) amax = std::max(amax, std::fabs(v));
  if (amax <= 0.0f) return g;  // scale 1, every code 0
  const int steps = std::max(0, spec.clip_steps);
  BlockGrid best = g;
  double best_err = -1;
  for (int i = 0; i <= steps; ++i) {
    const float r = steps == 0 ? 1.0f : 1.0f - static_cast<float>(i) * (1.0f - spec.min_clip) / steps;
    BlockGrid c = g;
    c.scale = spec.stored_scale(r * amax / max_code);
    const double err = block_error(x, e, c);
    if (best_err < 0 || err < best_err) {
      best_err = err;
      best = c;
    }
  }
  return best;
}

BlockGrid int_grid(std::span<const float> x, std::span<const float> e, const QuantSpec& spec) {
  return int_grid_search(x, spec, [&](const BlockGrid& g) { return block_error(x, e, g); });
}

/// The quadratic form dᵀ H d, H [n, n] row-major (zero entries of d skipped).
double quadratic_form(std::span<const double> d, const double* h) {
  const size_t n = d.size();
  double err = 0;
  for (size_t i = 0; i < n; ++i) {
    if (d[i] == 0.0) continue;
    const double* hi = h + i * n;
    double row = 0;
    for (size_t j = 0; j < n; ++j) row += hi[j] * d[j];
    err += d[i] * row;
  }
  return err;
}

/// dᵀ H d with d = x − Q(x) on grid g, H [n, n] row-major.
double block_error_hessian(std::span<const float> x, std::span<const double> h, const BlockGrid& g,
                           std::vector<double>& d) {
  const size_t n = x.size();
  d.resize(n);
  for (size_t i = 0; i < n; ++i) d[i] = static_cast<double>(x[i]) - g.dequantize(g.quantize(x[i]));
  return quadratic_form(d, h.data());
}

/// Exact optimum over "top-k by magnitude" supports: α_k = Σ_top-k e|x| / Σ_top-k e, error reduction
/// (Σ e|x|)² / Σ e. With uniform e this is the global optimum of min ‖x - α t‖².
BlockGrid ternary_grid(std::span<const float> x, std::span<const float> e) {
  BlockGrid g;
  g.lo = -1;
  g.hi = 1;
  std::vector<int64_t> order(x.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return std::fabs(x[a]) > std::fabs(x[b]); });
  double sa = 0, se = 0, best_gain = 0, best_alpha = 0;
  for (int64_t i : order) {
    const double ei = e.empty() ? 1.0 : e[i];
    sa += ei * std::fabs(x[i]);
    se += ei;
    if (se <= 0) continue;
    const double gain = sa * sa / se;
    if (gain > best_gain) {
      best_gain = gain;
      best_alpha = sa / se;
    }
  }
  g.scale = best_alpha > 0 ? static_cast<float>(best_alpha) : 1.0f;
  return g;
}

BlockGrid binary_grid(std::span<const float> x, std::span<const float> e) {
  BlockGrid g;
  g.lo = -1;
  g.hi = 1;
  g.binary = true;
  double sa = 0, se = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double ei = e.empty() ? 1.0 : e[i];
    sa += ei * std::fabs(x[i]);
    se += ei;
  }
  g.scale = se > 0 && sa > 0 ? static_cast<float>(sa / se) : 1.0f;
  return g;
}

}  // namespace

BlockGrid find_block_grid(std::span<const float> x, const QuantSpec& spec, std::span<const float> weights) {
  QTOOL_CHECK(weights.empty() || weights.size() == x.size(), ErrorCode::kInternal, "error weights size");
  switch (spec.scheme) {
    case WeightScheme::kInt: return int_grid(x, weights, spec);
    case WeightScheme::kFloat8:
    case WeightScheme::kFloat4: return float_code_grid(x, weights, spec);
    case WeightScheme::kTernary: {
      BlockGrid g = ternary_grid(x, weights);
      g.scale = spec.stored_scale(g.scale);
      return g;
    }
    case WeightScheme::kBinary: {
      BlockGrid g = binary_grid(x, weights);
      g.scale = spec.stored_scale(g.scale);
      return g;
    }
    case WeightScheme::kPalette: {  // a table for this block alone
      std::vector<float> table = kmeans_1d(x, weights, 1 << spec.bits).centroids;
      if (spec.fp16_scale)
        for (float& v : table) v = half_to_float(float_to_half(v));
      BlockGrid g;
      spec.level_range(&g.lo, &g.hi);
      g.palette = Palette::make(std::move(table));
      return g;
    }
  }
  fail(ErrorCode::kInternal, "unknown weight scheme");
}

BlockGrid find_block_grid_hessian(std::span<const float> x, const QuantSpec& spec, std::span<const double> hb) {
  const size_t n = x.size();
  QTOOL_CHECK(hb.size() == n * n, ErrorCode::kInternal, "block Hessian has {} values for a block of {}", hb.size(), n);
  if (spec.scheme != WeightScheme::kInt) {
    std::vector<float> diag(n);
    for (size_t i = 0; i < n; ++i) diag[i] = static_cast<float>(hb[i * n + i]);
    return find_block_grid(x, spec, diag);
  }
  std::vector<double> d;
  return int_grid_search(x, spec, [&](const BlockGrid& g) { return block_error_hessian(x, hb, g, d); });
}

std::vector<double> diagonal_block(std::span<const double> h, int64_t cols, int64_t c0, int64_t c1) {
  const int64_t n = c1 - c0;
  std::vector<double> out(n * n);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) out[i * n + j] = h[(c0 + i) * cols + c0 + j];
  return out;
}

QuantizedMatrix quantize_rtn_hessian(std::span<const float> w, int64_t rows, int64_t cols, const QuantSpec& spec,
                                     std::span<const double> h) {
  QTOOL_CHECK(static_cast<int64_t>(w.size()) == rows * cols, ErrorCode::kInternal, "quantize_rtn_hessian: W size");
  QTOOL_CHECK(static_cast<int64_t>(h.size()) == cols * cols, ErrorCode::kInternal, "quantize_rtn_hessian: H size");
  QuantizedMatrix q;
  q.rows = rows;
  q.cols = cols;
  q.block_size = spec.block_size > 0 ? spec.block_size : cols;
  const int64_t kb = q.k_blocks();
  q.levels.resize(rows * cols);
  q.grids.resize(rows * kb);
  for (int64_t b = 0; b < kb; ++b) {
    const int64_t c0 = b * q.block_size, c1 = std::min(cols, c0 + q.block_size);
    const std::vector<double> hb = diagonal_block(h, cols, c0, c1);
    for (int64_t r = 0; r < rows; ++r) {
      std::span<const float> x = w.subspan(r * cols + c0, c1 - c0);
      const BlockGrid g = find_block_grid_hessian(x, spec, hb);
      q.grids[r * kb + b] = g;
      for (int64_t c = c0; c < c1; ++c) q.levels[r * cols + c] = g.quantize(w[r * cols + c]);
    }
  }
  return q;
}

double hessian_error(std::span<const float> w, std::span<const float> q, int64_t rows, int64_t cols,
                     std::span<const double> h) {
  QTOOL_CHECK(static_cast<int64_t>(w.size()) == rows * cols && q.size() == w.size(), ErrorCode::kInternal,
              "hessian_error: W size");
  QTOOL_CHECK(static_cast<int64_t>(h.size()) == cols * cols, ErrorCode::kInternal, "hessian_error: H size");
  std::vector<double> d(cols);
  double s = 0;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) d[c] = static_cast<double>(w[r * cols + c]) - q[r * cols + c];
    s += quadratic_form(d, h.data());
  }
  return s;
}

std::vector<float> QuantizedMatrix::dequantize() const {
  std::vector<float> out(rows * cols);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out[r * cols + c] = grid(r, c).dequantize(levels[r * cols + c]);
  return out;
}

QuantizedMatrix quantize_rtn(std::span<const float> w, int64_t rows, int64_t cols, const QuantSpec& spec) {
  QTOOL_CHECK(static_cast<int64_t>(w.size()) == rows * cols, ErrorCode::kInternal, "quantize_rtn: size");
  QuantizedMatrix q;
  q.rows = rows;
  q.cols = cols;
  q.block_size = spec.block_size > 0 ? spec.block_size : cols;
  const int64_t kb = q.k_blocks();
  q.levels.resize(rows * cols);
  q.grids.resize(rows * kb);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t b = 0; b < kb; ++b) {
      const int64_t c0 = b * q.block_size, c1 = std::min(cols, c0 + q.block_size);
      std::span<const float> x = w.subspan(r * cols + c0, c1 - c0);
      const BlockGrid g = find_block_grid(x, spec);
      q.grids[r * kb + b] = g;
      for (int64_t c = c0; c < c1; ++c) q.levels[r * cols + c] = g.quantize(w[r * cols + c]);
    }
  return q;
}

QuantizedMatrix quantize_ternary_twn(std::span<const float> w, int64_t rows, int64_t cols, int64_t block_size) {
  QuantizedMatrix q;
  q.rows = rows;
  q.cols = cols;
  q.block_size = block_size > 0 ? block_size : cols;
  const int64_t kb = q.k_blocks();
  q.levels.resize(rows * cols);
  q.grids.resize(rows * kb);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t b = 0; b < kb; ++b) {
      const int64_t c0 = b * q.block_size, c1 = std::min(cols, c0 + q.block_size);
      double mean_abs = 0;
      for (int64_t c = c0; c < c1; ++c) mean_abs += std::fabs(w[r * cols + c]);
      mean_abs /= static_cast<double>(c1 - c0);
      const double delta = 0.7 * mean_abs;
      double sa = 0;
      int64_t cnt = 0;
      for (int64_t c = c0; c < c1; ++c)
        if (std::fabs(w[r * cols + c]) > delta) {
          sa += std::fabs(w[r * cols + c]);
          ++cnt;
        }
      BlockGrid g;
      g.lo = -1;
      g.hi = 1;
      g.scale = cnt > 0 && sa > 0 ? static_cast<float>(sa / cnt) : 1.0f;
      q.grids[r * kb + b] = g;
      for (int64_t c = c0; c < c1; ++c) {
        const float v = w[r * cols + c];
        q.levels[r * cols + c] = std::fabs(v) > delta ? (v > 0 ? 1 : -1) : 0;
      }
    }
  return q;
}

double squared_error(std::span<const float> a, std::span<const float> b) {
  QTOOL_CHECK(a.size() == b.size(), ErrorCode::kInternal, "squared_error: sizes {} vs {}", a.size(), b.size());
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = static_cast<double>(a[i]) - b[i];
    s += d * d;
  }
  return s;
}

double output_error(std::span<const float> w, std::span<const float> q, int64_t rows, int64_t cols,
                    std::span<const float> x, int64_t n) {
  QTOOL_CHECK(static_cast<int64_t>(x.size()) == n * cols, ErrorCode::kInternal, "output_error: x size");
  double s = 0;
  std::vector<double> d(cols);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) d[c] = static_cast<double>(w[r * cols + c]) - q[r * cols + c];
    for (int64_t i = 0; i < n; ++i) {
      double y = 0;
      const float* xi = x.data() + i * cols;
      for (int64_t c = 0; c < cols; ++c) y += d[c] * xi[c];
      s += y * y;
    }
  }
  return s;
}

std::vector<int64_t> select_outlier_columns(std::span<const float> w, int64_t rows, int64_t cols, double fraction,
                                            std::span<const float> act_energy) {
  if (fraction <= 0) return {};
  const int64_t count = std::min<int64_t>(cols, static_cast<int64_t>(std::ceil(fraction * static_cast<double>(cols))));
  std::vector<double> sal(cols, 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) sal[c] += static_cast<double>(w[r * cols + c]) * w[r * cols + c];
  if (!act_energy.empty())
    for (int64_t c = 0; c < cols; ++c) sal[c] *= act_energy[c];
  std::vector<int64_t> order(cols);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return sal[a] > sal[b]; });
  order.resize(count);
  std::sort(order.begin(), order.end());
  return order;
}

}  // namespace qtool::quant
