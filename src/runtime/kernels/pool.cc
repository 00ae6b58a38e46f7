// Pooling: MaxPool (with Indices), AveragePool, LpPool and the Global* variants, over
// 1-3 spatial dims, split across the thread pool by (batch, channel) plane.
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "kernels.h"
#include "nn_util.h"

namespace qtool::runtime {
namespace {

enum class PoolKind { kMax, kAverage, kLp };

/// The p of LpPool/GlobalLpPool: a float attribute in opset 1, an int from opset 2.
float lp_order(const KernelContext& ctx) {
  const ir::Attribute* a = ctx.node().find_attr("p");
  if (!a) return 2.0f;
  return a->type == ir::AttrType::kFloat ? a->f : static_cast<float>(a->i);
}

/// Visits the valid input positions of output position (od, oh, ow): fn(input offset in plane).
/// Returns the count of positions inside the padded extent [-pad_begin, in + pad_end) too.
template <typename Fn>
inline int64_t visit_window(const nn::WindowGeometry& g, int64_t od, int64_t oh, int64_t ow, int64_t* padded_count,
                            Fn&& fn) {
  int64_t valid = 0, padded = 0;
  const int64_t o[3] = {od, oh, ow};
  int64_t lo[3], cnt_valid[3], cnt_pad[3];
  for (int i = 0; i < 3; ++i) {
    const int64_t start = o[i] * g.stride[i] - g.pad_begin[i];
    lo[i] = start;
    cnt_valid[i] = 0;
    cnt_pad[i] = 0;
    for (int64_t k = 0; k < g.kernel[i]; ++k) {
      const int64_t p = start + k * g.dilation[i];
      if (p >= 0 && p < g.in[i]) ++cnt_valid[i];
      if (p >= -g.pad_begin[i] && p < g.in[i] + g.pad_end[i]) ++cnt_pad[i];
    }
  }
  padded = cnt_pad[0] * cnt_pad[1] * cnt_pad[2];
  for (int64_t a = 0; a < g.kernel[0]; ++a) {
    const int64_t d = lo[0] + a * g.dilation[0];
    if (d < 0 || d >= g.in[0]) continue;
    for (int64_t b = 0; b < g.kernel[1]; ++b) {
      const int64_t h = lo[1] + b * g.dilation[1];
      if (h < 0 || h >= g.in[1]) continue;
      const int64_t row = (d * g.in[1] + h) * g.in[2];
      for (int64_t c = 0; c < g.kernel[2]; ++c) {
        const int64_t w = lo[2] + c * g.dilation[2];
        if (w < 0 || w >= g.in[2]) continue;
        fn(row + w, d, h, w);
        ++valid;
      }
    }
  }
  *padded_count = padded;
  return valid;
}

template <typename T>
void max_pool_typed(KernelContext& ctx, const Tensor& x, const nn::WindowGeometry& g) {
  const int64_t planes = x.dim(0) * x.dim(1), in_sz = g.in_size(), out_sz = g.out_size();
  Shape ys = {x.dim(0), x.dim(1)};
  for (int64_t d : g.out_shape()) ys.push_back(d);
  Tensor y = Tensor::empty(x.dtype(), ys);
  const bool want_idx = ctx.wants_output(1);
  Tensor idx;
  if (want_idx) idx = Tensor::empty(DataType::kInt64, ys);
  const bool col_major = ctx.node().attr_int("storage_order", 0) != 0;
  const bool fast2d = g.in[0] == 1 && g.kernel[0] == 1 && g.dilation[1] == 1 && g.dilation[2] == 1;
  const T* xp = x.data<T>();
  T* yp = y.mutable_data<T>();
  int64_t* ip = want_idx ? idx.mutable_data<int64_t>() : nullptr;
  const nn::Plane2d plane2d = nn::plane2d_of(g);  // fast2d: no dilation
  ctx.pool().parallel_for(planes, 1, [&](int64_t p0, int64_t p1) {
    if constexpr (std::is_same_v<T, float>) {
      // Values only, float, 2-D: the AVX2 kernel where the CPU has it.
      if (fast2d && !ip && nn::maxpool2d_avx2(plane2d, p1 - p0, xp + p0 * in_sz, yp + p0 * out_sz)) return;
    }
    for (int64_t p = p0; p < p1; ++p) {
      const T* xs = xp + p * in_sz;
      if (fast2d) {
        // 1-D/2-D, no dilation: clamp the window to the input once per output.
        for (int64_t oh = 0, o = 0; oh < g.out[1]; ++oh) {
          const int64_t hs = oh * g.stride[1] - g.pad_begin[1];
          const int64_t h0 = std::max<int64_t>(hs, 0), h1 = std::min(hs + g.kernel[1], g.in[1]);
          for (int64_t ow = 0; ow < g.out[2]; ++ow, ++o) {
            const int64_t ws = ow * g.stride[2] - g.pad_begin[2];
            const int64_t w0 = std::max<int64_t>(ws, 0), w1 = std::min(ws + g.kernel[2], g.in[2]);
            T best = std::numeric_limits<T>::lowest();
            int64_t bi = -1;
            if (!ip) {
              // Values only: branch-free max (a data-dependent branch mispredicts on real activations).
              for (int64_t h = h0; h < h1; ++h) {
                const T* row = xs + h * g.in[2];
                for (int64_t w = w0; w < w1; ++w) best = std::max(best, row[w]);
              }
              yp[p * out_sz + o] = best;
              continue;
            }
            for (int64_t h = h0; h < h1; ++h) {
              const T* row = xs + h * g.in[2];
              for (int64_t w = w0; w < w1; ++w) {
                if (bi < 0 || row[w] > best) {
                  best = row[w];
                  bi = h * g.in[2] + w;
                }
              }
            }
            yp[p * out_sz + o] = best;
            if (ip) {
              const int64_t local = bi < 0 ? 0 : col_major ? (bi % g.in[2]) * g.in[1] + bi / g.in[2] : bi;
              ip[p * out_sz + o] = bi < 0 ? -1 : p * in_sz + local;
            }
          }
        }
        continue;
      }
      for (int64_t od = 0, o = 0; od < g.out[0]; ++od)
        for (int64_t oh = 0; oh < g.out[1]; ++oh)
          for (int64_t ow = 0; ow < g.out[2]; ++ow, ++o) {
            T best = std::numeric_limits<T>::lowest();
            int64_t best_i = -1, bd = 0, bh = 0, bw = 0, padded;
            visit_window(g, od, oh, ow, &padded, [&](int64_t off, int64_t d, int64_t h, int64_t w) {
              // NaN-propagating max would differ from ORT, which keeps the first maximum.
              if (best_i < 0 || xs[off] > best) {
                best = xs[off];
                best_i = off;
                bd = d, bh = h, bw = w;
              }
            });
            yp[p * out_sz + o] = best;
            if (ip) {
              const int64_t local = col_major ? (bw * g.in[1] + bh) * g.in[0] + bd : best_i;
              ip[p * out_sz + o] = best_i < 0 ? -1 : p * in_sz + local;
            }
          }
    }
  });
  ctx.set_output(0, nn::to_dtype_like(std::move(y), ctx.input(0).dtype()));
  if (want_idx) ctx.set_output(1, std::move(idx));
}

/// MaxPool (1, 8: Indices + storage_order, 10: ceil_mode + dilations, 12: int8/uint8).
void max_pool_kernel(KernelContext& ctx) {
  const Tensor& in = ctx.input(0);
  const nn::WindowGeometry g = nn::window_geometry(ctx, in.shape(), {}, ctx.opset() >= 10);
  if (in.dtype() == DataType::kInt8) return max_pool_typed<int8_t>(ctx, in, g);
  if (in.dtype() == DataType::kUint8) return max_pool_typed<uint8_t>(ctx, in, g);
  Tensor x = nn::float_input(ctx, 0);
  max_pool_typed<float>(ctx, x, g);
}

/// AveragePool (count_include_pad from 7, ceil_mode from 10, dilations from 19) and LpPool (p).
void avg_lp_pool(KernelContext& ctx, PoolKind kind) {
  Tensor x = nn::float_input(ctx, 0);
  const nn::WindowGeometry g = nn::window_geometry(ctx, x.shape(), {}, kind == PoolKind::kAverage && ctx.opset() >= 10);
  const bool include_pad = ctx.node().attr_int("count_include_pad", 0) != 0;
  const float p_norm = lp_order(ctx);
  const int64_t planes = x.dim(0) * x.dim(1), in_sz = g.in_size(), out_sz = g.out_size();
  Shape ys = {x.dim(0), x.dim(1)};
  for (int64_t d : g.out_shape()) ys.push_back(d);
  Tensor y = Tensor::empty(DataType::kFloat, ys);
  const bool fast2d = kind == PoolKind::kAverage && g.in[0] == 1 && g.kernel[0] == 1 && g.dilation[1] == 1 &&
                      g.dilation[2] == 1;
  const float* xp = x.data<float>();
  float* yp = y.mutable_data<float>();
  ctx.pool().parallel_for(planes, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const float* xs = xp + p * in_sz;
      if (fast2d) {
        for (int64_t oh = 0, o = 0; oh < g.out[1]; ++oh) {
          const int64_t hs = oh * g.stride[1] - g.pad_begin[1];
          const int64_t h0 = std::max<int64_t>(hs, 0), h1 = std::min(hs + g.kernel[1], g.in[1]);
          const int64_t hp = std::min(hs + g.kernel[1], g.in[1] + g.pad_end[1]) - hs;
          for (int64_t ow = 0; ow < g.out[2]; ++ow, ++o) {
            const int64_t ws = ow * g.stride[2] - g.pad_begin[2];
            const int64_t w0 = std::max<int64_t>(ws, 0), w1 = std::min(ws + g.kernel[2], g.in[2]);
            const int64_t wp = std::min(ws + g.kernel[2], g.in[2] + g.pad_end[2]) - ws;
            float acc = 0.0f;
            for (int64_t h = h0; h < h1; ++h)
              for (int64_t w = w0; w < w1; ++w) acc += xs[h * g.in[2] + w];
            const int64_t cnt = include_pad ? hp * wp : std::max<int64_t>(h1 - h0, 0) * std::max<int64_t>(w1 - w0, 0);
            yp[p * out_sz + o] = cnt > 0 ? acc / static_cast<float>(cnt) : 0.0f;
          }
        }
        continue;
      }
      for (int64_t od = 0, o = 0; od < g.out[0]; ++od)
        for (int64_t oh = 0; oh < g.out[1]; ++oh)
          for (int64_t ow = 0; ow < g.out[2]; ++ow, ++o) {
            double acc = 0;
            int64_t padded;
            const int64_t valid = visit_window(g, od, oh, ow, &padded, [&](int64_t off, int64_t, int64_t, int64_t) {
              if (kind == PoolKind::kLp) acc += std::pow(std::fabs(static_cast<double>(xs[off])), p_norm);
              else acc += xs[off];
            });
            float r;
            if (kind == PoolKind::kLp) {
              r = static_cast<float>(std::pow(acc, 1.0 / p_norm));
            } else {
              const int64_t cnt = include_pad ? padded : valid;
              r = cnt > 0 ? static_cast<float>(acc / cnt) : 0.0f;
            }
            yp[p * out_sz + o] = r;
          }
    }
  });
  ctx.set_output(0, nn::to_dtype_like(std::move(y), ctx.input(0).dtype()));
}

void average_pool_kernel(KernelContext& ctx) { avg_lp_pool(ctx, PoolKind::kAverage); }
void lp_pool_kernel(KernelContext& ctx) { avg_lp_pool(ctx, PoolKind::kLp); }

/// GlobalAveragePool / GlobalMaxPool / GlobalLpPool: one value per (n, c), spatial dims kept as 1.
void global_pool(KernelContext& ctx, PoolKind kind) {
  Tensor x = nn::float_input(ctx, 0);
  if (x.rank() < 3) nn::bad_node(ctx, "input {} must be [N, C, spatial...]", shape_str(x.shape()));
  const int64_t planes = x.dim(0) * x.dim(1), sz = x.numel() / std::max<int64_t>(planes, 1);
  Shape ys = x.shape();
  for (size_t i = 2; i < ys.size(); ++i) ys[i] = 1;
  Tensor y = Tensor::empty(DataType::kFloat, ys);
  const float* xp = x.data<float>();
  float* yp = y.mutable_data<float>();
  const double p_norm = lp_order(ctx);
  ctx.pool().parallel_for(planes, 16, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const float* s = xp + p * sz;
      if (kind == PoolKind::kMax) {
        float m = sz > 0 ? s[0] : 0.0f;
        for (int64_t i = 1; i < sz; ++i) m = std::max(m, s[i]);
        yp[p] = m;
      } else if (kind == PoolKind::kAverage) {
        float acc = 0.0f;
        for (int64_t i = 0; i < sz; ++i) acc += s[i];
        yp[p] = sz > 0 ? acc / static_cast<float>(sz) : 0.0f;
      } else {
        double acc = 0;
        for (int64_t i = 0; i < sz; ++i) acc += std::pow(std::fabs(static_cast<double>(s[i])), p_norm);
        yp[p] = static_cast<float>(std::pow(acc, 1.0 / p_norm));
      }
    }
  });
  ctx.set_output(0, nn::to_dtype_like(std::move(y), ctx.input(0).dtype()));
}

void global_average_pool_kernel(KernelContext& ctx) { global_pool(ctx, PoolKind::kAverage); }
void global_max_pool_kernel(KernelContext& ctx) { global_pool(ctx, PoolKind::kMax); }
void global_lp_pool_kernel(KernelContext& ctx) { global_pool(ctx, PoolKind::kLp); }

}  // namespace

/// Registers the pooling family.
void kernels::register_pool_kernels(KernelRegistry& r) {
  r.add("", "MaxPool", 1, max_pool_kernel);
  r.add("", "AveragePool", 1, average_pool_kernel);
  r.add("", "LpPool", 1, lp_pool_kernel);
  r.add("", "GlobalAveragePool", 1, global_average_pool_kernel);
  r.add("", "GlobalMaxPool", 1, global_max_pool_kernel);
  r.add("", "GlobalLpPool", 1, global_lp_pool_kernel);
}

}  // namespace qtool::runtime
