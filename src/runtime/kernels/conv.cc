// Conv and ConvTranspose (float32). Conv: a direct kernel for depthwise convolutions and
// im2col tiles + GEMM for the rest; ConvTranspose: GEMM + col2im.
#include <algorithm>
#include <cstring>
#include <functional>
#include <type_traits>
#include <vector>

#include "kernels.h"
#include "qtool/core/simd_clones.h"
#include "nn_util.h"

namespace qtool::runtime {
namespace nn {

// im2col_tile / col2im_tile (nn_util.h): per row (channel, tap), the output positions of one
// output row segment map to an input row; valid_range() clips the segment to the input once.

namespace {

/// Walks the im2col rows of output positions [j0, j1) of a tile: for each row (channel ci, tap)
/// and each output-row segment [ow, ow + seg) of it, calls
/// f(row, col_off, seg, ow, x_row, a, b, s, xoff) where col_off = first column of the segment,
/// x_row = offset of the input row it reads (-1 when the tap falls in the padding rows), [a, b) =
/// the output positions of the segment whose input lies inside the row, at x_row + o * s + xoff.
template <typename F>
inline void walk_tile(const WindowGeometry& g, int64_t cin_g, int64_t j0, int64_t j1, F&& f) {
  const int64_t hw = g.in[1] * g.in[2];
  const int64_t ohw = g.out[1] * g.out[2];
  const int64_t s = g.stride[2];
  // The tile's output-row segments are the same for every im2col row: found once (no divisions
  // per row and segment), as (column offset, length, first ow, od, oh).
  struct Segment {
    int64_t col_off, seg, ow, od, oh;
  };
  thread_local std::vector<Segment> segs;
  segs.clear();
  for (int64_t j = j0; j < j1;) {
    const int64_t od = j / ohw, oh = (j / g.out[2]) % g.out[1], ow = j % g.out[2];
    const int64_t seg = std::min(g.out[2] - ow, j1 - j);
    segs.push_back({j - j0, seg, ow, od, oh});
    j += seg;
  }
  int64_t row = 0;
  for (int64_t ci = 0; ci < cin_g; ++ci) {
    const int64_t xc = ci * g.in_size();
    for (int64_t ka = 0; ka < g.kernel[0]; ++ka) {
      for (int64_t kb = 0; kb < g.kernel[1]; ++kb) {
        for (int64_t kc = 0; kc < g.kernel[2]; ++kc, ++row) {
          int64_t lo, hi;
          valid_range(g.out[2], g.in[2], s, g.pad_begin[2], kc * g.dilation[2], &lo, &hi);
          const int64_t xoff = kc * g.dilation[2] - g.pad_begin[2];
          for (const Segment& sg : segs) {
            const int64_t id = sg.od * g.stride[0] - g.pad_begin[0] + ka * g.dilation[0];
            const int64_t ih = sg.oh * g.stride[1] - g.pad_begin[1] + kb * g.dilation[1];
            const bool inside = id >= 0 && id < g.in[0] && ih >= 0 && ih < g.in[1];
            const int64_t e = sg.ow + sg.seg;
            const int64_t a = std::clamp(lo, sg.ow, e), b = std::clamp(hi, a, e);
            f(row, sg.col_off, sg.seg, sg.ow, inside ? xc + id * hw + ih * g.in[2] : int64_t{-1}, a, b, s, xoff);
          }
        }
      }
    }
  }
}

}  // namespace

/// d[i] = s[2 i] for i < n: the stride-2 rows of im2col (a first conv's), built for AVX2 too.
QTOOL_SIMD_CLONES void copy_stride2(float* __restrict d, const float* __restrict s, int64_t n) {
  for (int64_t i = 0; i < n; ++i) d[i] = s[2 * i];
}

template <typename T>
void im2col_tile(const T* x, const WindowGeometry& g, int64_t cin_g, int64_t j0, int64_t j1, T* col, int64_t ld) {
  if (ld <= 0) ld = j1 - j0;
  walk_tile(g, cin_g, j0, j1,
            [&](int64_t row, int64_t col_off, int64_t seg, int64_t ow, int64_t x_row, int64_t a, int64_t b, int64_t s,
                int64_t xoff) {
              T* d = col + row * ld + col_off;
              if (x_row < 0) {
                std::fill(d, d + seg, T(0));
                return;
              }
              const T* src = x + x_row;
              std::fill(d, d + (a - ow), T(0));
              if (s == 1) {
                std::memcpy(d + (a - ow), src + a + xoff, sizeof(T) * (b - a));
              } else if (std::is_same_v<T, float> && s == 2) {
                copy_stride2(reinterpret_cast<float*>(d + (a - ow)), reinterpret_cast<const float*>(src + 2 * a + xoff),
                             b - a);
              } else {
                for (int64_t o = a; o < b; ++o) d[o - ow] = src[o * s + xoff];
              }
              std::fill(d + (b - ow), d + seg, T(0));
            });
}

template <typename T>
void col2im_tile(const T* col, const WindowGeometry& g, int64_t cin_g, int64_t j0, int64_t j1, T* dx) {
  const int64_t ld = j1 - j0;
  walk_tile(g, cin_g, j0, j1,
            [&](int64_t row, int64_t col_off, int64_t, int64_t ow, int64_t x_row, int64_t a, int64_t b, int64_t s,
                int64_t xoff) {
              if (x_row < 0) return;
              const T* src = col + row * ld + col_off;
              T* dst = dx + x_row;
              if (s == 1) {
                T* d = dst + xoff;
                for (int64_t o = a; o < b; ++o) d[o] += src[o - ow];
              } else {
                for (int64_t o = a; o < b; ++o) dst[o * s + xoff] += src[o - ow];
              }
            });
}

template void im2col_tile<float>(const float*, const WindowGeometry&, int64_t, int64_t, int64_t, float*, int64_t);
template void im2col_tile<double>(const double*, const WindowGeometry&, int64_t, int64_t, int64_t, double*, int64_t);
template void col2im_tile<float>(const float*, const WindowGeometry&, int64_t, int64_t, int64_t, float*);
template void col2im_tile<double>(const double*, const WindowGeometry&, int64_t, int64_t, int64_t, double*);

namespace {

/// Direct depthwise convolution of one output channel plane (input channel plane `x`).
template <typename T>
void depthwise_plane(const T* x, const T* w, T bias, const WindowGeometry& g, T* y) {
  const int64_t hw = g.in[1] * g.in[2];
  const int64_t ow_n = g.out[2];
  for (int64_t od = 0; od < g.out[0]; ++od) {
    for (int64_t oh = 0; oh < g.out[1]; ++oh) {
      T* yrow = y + (od * g.out[1] + oh) * ow_n;
      std::fill(yrow, yrow + ow_n, bias);
      for (int64_t ka = 0; ka < g.kernel[0]; ++ka) {
        const int64_t id = od * g.stride[0] - g.pad_begin[0] + ka * g.dilation[0];
        if (id < 0 || id >= g.in[0]) continue;
        for (int64_t kb = 0; kb < g.kernel[1]; ++kb) {
          const int64_t ih = oh * g.stride[1] - g.pad_begin[1] + kb * g.dilation[1];
          if (ih < 0 || ih >= g.in[1]) continue;
          const T* xrow = x + id * hw + ih * g.in[2];
          const T* wk = w + (ka * g.kernel[1] + kb) * g.kernel[2];
          for (int64_t kc = 0; kc < g.kernel[2]; ++kc) {
            int64_t lo, hi;
            const int64_t kd = kc * g.dilation[2];
            valid_range(ow_n, g.in[2], g.stride[2], g.pad_begin[2], kd, &lo, &hi);
            const T wv = wk[kc];
            const T* src = xrow + kd - g.pad_begin[2];
            if (g.stride[2] == 1) {
              for (int64_t o = lo; o < hi; ++o) yrow[o] += wv * src[o];
            } else if (g.stride[2] == 2) {
              for (int64_t o = lo; o < hi; ++o) yrow[o] += wv * src[2 * o];
            } else {
              const int64_t s = g.stride[2];
              for (int64_t o = lo; o < hi; ++o) yrow[o] += wv * src[o * s];
            }
          }
        }
      }
    }
  }
}

/// Depthwise 1-D/2-D plane on a zero-padded copy: y[oh][ow] = b + sum_{kb,kc} w[kb][kc] *
/// P[oh*sh + kb*dh][ow*sw + kc*dw]. Padding once makes the inner loop branch-free, so it
/// vectorizes; 3x3 kernels keep all nine taps in registers (one store per output).
template <typename T, int kStride>
void depthwise_plane_2d(const T* __restrict x, const T* __restrict w, T bias, const WindowGeometry& g, T* __restrict y) {
  const int64_t ih = g.in[1], iw = g.in[2], oh_n = g.out[1], ow_n = g.out[2];
  const int64_t pt = g.pad_begin[1], pl = g.pad_begin[2];
  const int64_t ph = ih + pt + g.pad_end[1], pw = iw + pl + g.pad_end[2];
  // Rows the windows can reach (ceil-mode-free conv: never beyond the padded extent).
  thread_local std::vector<T> padded;
  const T* p = x;
  int64_t ld = iw;
  if (pt || pl || g.pad_end[1] || g.pad_end[2]) {
    // Only the border is zeroed; the interior is overwritten row by row.
    padded.resize(static_cast<size_t>(ph * pw));
    T* d = padded.data();
    std::fill(d, d + pt * pw, T(0));
    std::fill(d + (pt + ih) * pw, d + ph * pw, T(0));
    for (int64_t r = 0; r < ih; ++r) {
      T* row = d + (r + pt) * pw;
      std::fill(row, row + pl, T(0));
      std::memcpy(row + pl, x + r * iw, sizeof(T) * iw);
      std::fill(row + pl + iw, row + pw, T(0));
    }
    p = padded.data();
    ld = pw;
  }
  const int64_t sh = g.stride[1], sw = kStride > 0 ? kStride : g.stride[2];
  const int64_t dh = g.dilation[1], dw = g.dilation[2];
  const int64_t kh = g.kernel[1], kw = g.kernel[2];
  for (int64_t oh = 0; oh < oh_n; ++oh) {
    T* __restrict yrow = y + oh * ow_n;
    if (kh == 3 && kw == 3) {
      const T* r0 = p + (oh * sh) * ld;
      const T* r1 = r0 + dh * ld;
      const T* r2 = r1 + dh * ld;
      const T w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3], w4 = w[4], w5 = w[5], w6 = w[6], w7 = w[7], w8 = w[8];
      for (int64_t o = 0; o < ow_n; ++o) {
        const int64_t c = o * sw;
        yrow[o] = bias + w0 * r0[c] + w1 * r0[c + dw] + w2 * r0[c + 2 * dw] + w3 * r1[c] + w4 * r1[c + dw] +
                  w5 * r1[c + 2 * dw] + w6 * r2[c] + w7 * r2[c + dw] + w8 * r2[c + 2 * dw];
      }
      continue;
    }
    for (int64_t o = 0; o < ow_n; ++o) yrow[o] = bias;
    for (int64_t kb = 0; kb < kh; ++kb) {
      const T* row = p + (oh * sh + kb * dh) * ld;
      for (int64_t kc = 0; kc < kw; ++kc) {
        const T wv = w[kb * kw + kc];
        const T* src = row + kc * dw;
        for (int64_t o = 0; o < ow_n; ++o) yrow[o] += wv * src[o * sw];
      }
    }
  }
}

template <typename T>
void gemm_t(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb, T* c, int64_t ldc,
            ThreadPool* pool) {
  if constexpr (std::is_same_v<T, float>) {
    sgemm(false, false, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc, pool);
  } else {
    (void)pool;
    dgemm(false, false, m, n, k, a, lda, b, ldb, c, ldc);
  }
}

template <typename T>
std::vector<T>& scratch() {
  thread_local std::vector<T> buf;
  return buf;
}

}  // namespace

template <typename T>
void conv_forward(const T* x, const Shape& xs, const T* w, const Shape& ws, const T* bias, int64_t group,
                  const WindowGeometry& g, T* y, ThreadPool* pool, const FusedActivation* act) {
  if (act && act->kind == FusedActivation::Kind::kNone) act = nullptr;
  // Applies the fused activation to n values (float outputs only; callers pass none otherwise).
  auto activate = [act](T* v, int64_t n) {
    if constexpr (std::is_same_v<T, float>) {
      if (act) act->apply(v, n);
    } else {
      (void)v;
      (void)n;
    }
  };
  const int64_t n_batch = xs[0], c_in = xs[1], m_out = ws[0];
  const int64_t cin_g = c_in / group, cout_g = m_out / group;
  const int64_t in_sz = g.in_size(), out_sz = g.out_size(), ks = g.kernel_size();
  const int threads = pool ? pool->threads() : 1;
  auto run = [&](int64_t n, int64_t b, const std::function<void(int64_t, int64_t)>& fn) {
    if (pool && threads > 1) pool->parallel_for(n, b, fn);
    else fn(0, n);
  };
  if (cin_g == 1) {
    // Depthwise (or channel-multiplier) convolution: one output plane per work item. 2-D 3×3
    // planes go to the AVX2 kernel where the CPU has it (bias and activation fused, no padded copy).
    const bool dw_simd = g.in[0] == 1 && g.kernel[0] == 1 && g.kernel[1] == 3 && g.kernel[2] == 3;
    const Plane2d plane2d = plane2d_of(g);
    run(n_batch * m_out, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t n = p / m_out, oc = p % m_out, ic = oc / cout_g;
        const T* xp = x + (n * c_in + ic) * in_sz;
        if constexpr (std::is_same_v<T, float>) {
          // Consecutive planes of one image (channel multiplier 1) go in one call.
          const int64_t cnt = cout_g == 1 ? std::min(p1 - p, m_out - oc) : 1;
          if (dw_simd && depthwise3x3_avx2(plane2d, cnt, xp, w + oc * ks, bias ? bias + oc : nullptr, y + p * out_sz,
                                           act)) {
            p += cnt - 1;
            continue;
          }
        }
        const T b = bias ? bias[oc] : T(0);
        if (g.in[0] != 1 || g.kernel[0] != 1) depthwise_plane<T>(xp, w + oc * ks, b, g, y + p * out_sz);
        else if (g.stride[2] == 1) depthwise_plane_2d<T, 1>(xp, w + oc * ks, b, g, y + p * out_sz);
        else if (g.stride[2] == 2) depthwise_plane_2d<T, 2>(xp, w + oc * ks, b, g, y + p * out_sz);
        else depthwise_plane_2d<T, 0>(xp, w + oc * ks, b, g, y + p * out_sz);
        activate(y + p * out_sz, out_sz);
      }
    });
    return;
  }
  const int64_t kdim = cin_g * ks;
  bool pointwise = ks == 1;
  for (int i = 0; i < 3; ++i) {
    pointwise = pointwise && g.stride[i] == 1 && g.pad_begin[i] == 0 && g.pad_end[i] == 0;
  }
  // Column tiles sized so that a tile of the im2col matrix stays in L2 (~256 KB).
  int64_t tile = pointwise ? out_sz : std::clamp<int64_t>((65536 / std::max<int64_t>(kdim, 1)) / 16 * 16, 64, out_sz);
  int64_t tiles = (out_sz + tile - 1) / tile;
  if (n_batch * group * tiles < threads && out_sz >= 32 * threads && !pointwise) {
    tile = ((out_sz + threads - 1) / threads + 15) / 16 * 16;
    tiles = (out_sz + tile - 1) / tile;
  }
  const int64_t items = n_batch * group * tiles;
  const bool direct = std::is_same_v<T, float> && sgemm_direct_available();
  auto do_item = [&](int64_t it, ThreadPool* gemm_pool) {
    const int64_t t = it % tiles, ng = it / tiles, grp = ng % group, n = ng / group;
    const int64_t j0 = t * tile, j1 = std::min(out_sz, j0 + tile);
    const T* xg = x + (n * c_in + grp * cin_g) * in_sz;
    const T* wg = w + grp * cout_g * kdim;
    T* yg = y + (n * m_out + grp * cout_g) * out_sz;
    if constexpr (std::is_same_v<T, float>) {
      if (direct) {
        // The direct GEMM adds the bias and applies the activation as it stores each tile.
        const T* bg = bias ? bias + grp * cout_g : nullptr;
        if (pointwise) {
          sgemm_direct(cout_g, j1 - j0, kdim, wg, kdim, xg + j0, in_sz, false, yg + j0, out_sz, bg, act, gemm_pool);
        } else {
          // The tile's rows are padded to whole strips of 16 columns so the GEMM reads it in place.
          const int64_t ld = (j1 - j0 + 15) / 16 * 16;
          std::vector<T>& col = scratch<T>();
          if (col.size() < static_cast<size_t>(kdim * ld)) col.resize(kdim * ld);
          im2col_tile<T>(xg, g, cin_g, j0, j1, col.data(), ld);
          sgemm_direct(cout_g, j1 - j0, kdim, wg, kdim, col.data(), ld, false, yg + j0, out_sz, bg, act, gemm_pool,
                       DirectB::kRowsPadded);
        }
        return;
      }
    }
    if (pointwise) {
      gemm_t<T>(cout_g, j1 - j0, kdim, wg, kdim, xg + j0, in_sz, yg + j0, out_sz, gemm_pool);
    } else {
      std::vector<T>& col = scratch<T>();
      if (col.size() < static_cast<size_t>(kdim * (j1 - j0))) col.resize(kdim * (j1 - j0));
      im2col_tile<T>(xg, g, cin_g, j0, j1, col.data());
      gemm_t<T>(cout_g, j1 - j0, kdim, wg, kdim, col.data(), j1 - j0, yg + j0, out_sz, gemm_pool);
    }
    if (bias) {
      for (int64_t oc = 0; oc < cout_g; ++oc) {
        const T bv = bias[grp * cout_g + oc];
        T* row = yg + oc * out_sz;
        for (int64_t j = j0; j < j1; ++j) row[j] += bv;
      }
    }
    if (act) {
      for (int64_t oc = 0; oc < cout_g; ++oc) activate(yg + oc * out_sz + j0, j1 - j0);
    }
  };
  if (items >= threads || !pool) {
    run(items, 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) do_item(i, nullptr);
    });
  } else {
    for (int64_t i = 0; i < items; ++i) do_item(i, pool);  // few big items: split each GEMM instead
  }
}

template void conv_forward<float>(const float*, const Shape&, const float*, const Shape&, const float*, int64_t,
                                  const WindowGeometry&, float*, ThreadPool*, const FusedActivation*);
template void conv_forward<double>(const double*, const Shape&, const double*, const Shape&, const double*, int64_t,
                                   const WindowGeometry&, double*, ThreadPool*, const FusedActivation*);

}  // namespace nn

namespace {

/// Validates X/W shapes of a Conv-like node and returns the geometry (kernel from W when the
/// kernel_shape attribute is absent).
nn::WindowGeometry conv_geometry(const KernelContext& ctx, const Shape& xs, const Shape& ws, int64_t group) {
  if (xs.size() < 3) nn::bad_node(ctx, "X {} must be [N, C, spatial...]", shape_str(xs));
  if (ws.size() != xs.size()) nn::bad_node(ctx, "W {} and X {} ranks differ", shape_str(ws), shape_str(xs));
  if (group <= 0 || xs[1] % group != 0 || ws[0] % group != 0 || ws[1] * group != xs[1]) {
    nn::bad_node(ctx, "channels do not match: X {} W {} group {}", shape_str(xs), shape_str(ws), group);
  }
  return nn::window_geometry(ctx, xs, std::vector<int64_t>(ws.begin() + 2, ws.end()), false);
}

/// Conv (1, 11): y = conv(X, W) + B with groups, strides, dilations, pads/auto_pad.
void conv_kernel(KernelContext& ctx) {
  Tensor x = nn::float_input(ctx, 0), w = nn::float_input(ctx, 1);
  const int64_t group = ctx.node().attr_int("group", 1);
  const nn::WindowGeometry g = conv_geometry(ctx, x.shape(), w.shape(), group);
  Tensor b;
  if (ctx.has_input(2)) {
    b = nn::float_input(ctx, 2);
    if (b.numel() != w.dim(0)) nn::bad_node(ctx, "bias {} does not match {} output channels", shape_str(b.shape()), w.dim(0));
  }
  Shape ys = {x.dim(0), w.dim(0)};
  for (int64_t d : g.out_shape()) ys.push_back(d);
  Tensor y = Tensor::empty(DataType::kFloat, ys);
  nn::conv_forward<float>(x.data<float>(), x.shape(), w.data<float>(), w.shape(), b.defined() ? b.data<float>() : nullptr,
                          group, g, y.mutable_data<float>(), &ctx.pool(), &ctx.fused_activation());
  ctx.set_output(0, nn::to_dtype_like(std::move(y), ctx.input(0).dtype()));
}

/// ConvTranspose (1, 11): the gradient of Conv. col[M/g*k, HW] = W_g^T X_g, then col2im
/// scatters into the output; out = s*(in-1) + output_padding + (k-1)*d + 1 - pads, or
/// output_shape with pads derived from it (SAME_UPPER puts the smaller half first).
void conv_transpose_kernel(KernelContext& ctx) {
  const ir::Node& node = ctx.node();
  Tensor x = nn::float_input(ctx, 0), w = nn::float_input(ctx, 1);
  const Shape& xs = x.shape();
  const Shape& ws = w.shape();
  const int64_t group = node.attr_int("group", 1);
  if (xs.size() < 3 || xs.size() > 5 || ws.size() != xs.size()) {
    nn::bad_node(ctx, "X {} / W {} must be [N, C, spatial(1..3)...]", shape_str(xs), shape_str(ws));
  }
  if (group <= 0 || ws[0] != xs[1] || xs[1] % group != 0) {
    nn::bad_node(ctx, "channels do not match: X {} W {} group {}", shape_str(xs), shape_str(ws), group);
  }
  const int sp = static_cast<int>(xs.size()) - 2, off = 3 - sp;
  const int64_t cin_g = xs[1] / group, cout_g = ws[1], m_out = cout_g * group;
  std::vector<int64_t> ks = node.attr_ints("kernel_shape", std::vector<int64_t>(ws.begin() + 2, ws.end()));
  std::vector<int64_t> strides = node.attr_ints("strides", std::vector<int64_t>(sp, 1));
  std::vector<int64_t> dil = node.attr_ints("dilations", std::vector<int64_t>(sp, 1));
  std::vector<int64_t> pads = node.attr_ints("pads", std::vector<int64_t>(2 * sp, 0));
  std::vector<int64_t> opad = node.attr_ints("output_padding", std::vector<int64_t>(sp, 0));
  std::vector<int64_t> oshape = node.attr_ints("output_shape");
  const std::string auto_pad = node.attr_string("auto_pad", "NOTSET");
  if (static_cast<int>(ks.size()) != sp || static_cast<int>(strides.size()) != sp ||
      static_cast<int>(dil.size()) != sp || static_cast<int>(pads.size()) != 2 * sp ||
      static_cast<int>(opad.size()) != sp) {
    nn::bad_node(ctx, "kernel_shape/strides/dilations/pads/output_padding do not match {} spatial dims", sp);
  }
  if (!oshape.empty() && static_cast<int>(oshape.size()) > sp) oshape.erase(oshape.begin(), oshape.end() - sp);
  nn::WindowGeometry g;  // in = ConvTranspose output (the "image"), out = its input (the "columns")
  g.spatial = sp;
  for (int i = 0; i < sp; ++i) {
    const int j = off + i;
    g.kernel[j] = ks[i];
    g.stride[j] = strides[i];
    g.dilation[j] = dil[i];
    g.out[j] = xs[2 + i];
    const int64_t ek = (ks[i] - 1) * dil[i] + 1;
    const int64_t full = strides[i] * (xs[2 + i] - 1) + opad[i] + ek;
    if (!oshape.empty() || auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER") {
      const int64_t target = !oshape.empty() ? oshape[i] : xs[2 + i] * strides[i];
      const int64_t total = full - target;
      if (total < 0 && oshape.empty()) nn::bad_node(ctx, "negative total padding");
      g.in[j] = target;
      // ONNX spec: SAME_UPPER puts the smaller half first; SAME_LOWER and explicit output_shape the larger.
      g.pad_begin[j] = auto_pad == "SAME_UPPER" ? total / 2 : total - total / 2;
      // output_shape larger than the natural size: the extra rows/cols go at the end (like output_padding).
      if (total < 0) g.pad_begin[j] = 0;
      g.pad_end[j] = total - g.pad_begin[j];
    } else {
      g.pad_begin[j] = auto_pad == "VALID" ? 0 : pads[i];
      g.pad_end[j] = auto_pad == "VALID" ? 0 : pads[sp + i];
      g.in[j] = full - g.pad_begin[j] - g.pad_end[j];
    }
    if (g.in[j] <= 0) nn::bad_node(ctx, "non-positive output size {}", g.in[j]);
  }
  Tensor b;
  if (ctx.has_input(2)) {
    b = nn::float_input(ctx, 2);
    if (b.numel() != m_out) nn::bad_node(ctx, "bias {} does not match {} output channels", shape_str(b.shape()), m_out);
  }
  Shape ys = {xs[0], m_out};
  for (int i = 0; i < sp; ++i) ys.push_back(g.in[off + i]);
  Tensor y = Tensor::empty(DataType::kFloat, ys);
  float* yp = y.mutable_data<float>();
  const float* xp = x.data<float>();
  const float* wp = w.data<float>();
  const int64_t img = g.in_size(), cols = g.out_size(), ksz = g.kernel_size();
  std::vector<float> col(static_cast<size_t>(cout_g * ksz * cols));
  const int64_t hw = g.in[1] * g.in[2];
  for (int64_t n = 0; n < xs[0]; ++n) {
    for (int64_t grp = 0; grp < group; ++grp) {
      nn::sgemm(true, false, cout_g * ksz, cols, cin_g, 1.0f, wp + grp * cin_g * cout_g * ksz, cout_g * ksz,
                xp + (n * xs[1] + grp * cin_g) * cols, cols, 0.0f, col.data(), cols, &ctx.pool());
      ctx.pool().parallel_for(cout_g, 1, [&](int64_t c0, int64_t c1) {
        for (int64_t oc = c0; oc < c1; ++oc) {
          float* out = yp + (n * m_out + grp * cout_g + oc) * img;
          std::fill(out, out + img, b.defined() ? b.data<float>()[grp * cout_g + oc] : 0.0f);
          for (int64_t ka = 0; ka < g.kernel[0]; ++ka)
            for (int64_t kb = 0; kb < g.kernel[1]; ++kb)
              for (int64_t kc = 0; kc < g.kernel[2]; ++kc) {
                const float* src = col.data() + ((oc * g.kernel[0] + ka) * g.kernel[1] + kb) * g.kernel[2] * cols +
                                   kc * cols;
                for (int64_t id = 0; id < g.out[0]; ++id) {
                  const int64_t od = id * g.stride[0] - g.pad_begin[0] + ka * g.dilation[0];
                  if (od < 0 || od >= g.in[0]) continue;
                  for (int64_t ih = 0; ih < g.out[1]; ++ih) {
                    const int64_t oh = ih * g.stride[1] - g.pad_begin[1] + kb * g.dilation[1];
                    if (oh < 0 || oh >= g.in[1]) continue;
                    const float* s = src + (id * g.out[1] + ih) * g.out[2];
                    float* drow = out + od * hw + oh * g.in[2];
                    for (int64_t iw = 0; iw < g.out[2]; ++iw) {
                      const int64_t ow = iw * g.stride[2] - g.pad_begin[2] + kc * g.dilation[2];
                      if (ow >= 0 && ow < g.in[2]) drow[ow] += s[iw];
                    }
                  }
                }
              }
        }
      });
    }
  }
  ctx.set_output(0, nn::to_dtype_like(std::move(y), ctx.input(0).dtype()));
}

}  // namespace

/// Registers Conv and ConvTranspose (semantics unchanged across opsets 1 and 11 for float).
void FusedActivation::apply(float* v, int64_t n) const {
  switch (kind) {
    case Kind::kNone:
      return;
    case Kind::kRelu:
      for (int64_t i = 0; i < n; ++i) v[i] = v[i] > 0.0f ? v[i] : 0.0f;
      return;
    case Kind::kClip: {
      const float lo = alpha, hi = beta;
      for (int64_t i = 0; i < n; ++i) v[i] = std::min(std::max(v[i], lo), hi);
      return;
    }
    case Kind::kLeakyRelu: {
      const float a = alpha;
      for (int64_t i = 0; i < n; ++i) v[i] = v[i] < 0.0f ? a * v[i] : v[i];
      return;
    }
    case Kind::kHardSigmoid: {
      const float a = alpha, b = beta;
      for (int64_t i = 0; i < n; ++i) v[i] = std::max(0.0f, std::min(1.0f, a * v[i] + b));
      return;
    }
  }
}

void kernels::register_conv_kernels(KernelRegistry& r) {
  r.add("", "Conv", 1, conv_kernel);
  r.add("", "ConvTranspose", 1, conv_transpose_kernel);
}

}  // namespace qtool::runtime
