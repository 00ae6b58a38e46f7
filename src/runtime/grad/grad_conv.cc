// Gradients: conv family (see grads.h). Conv over 1-3 spatial dims with groups, strides, pads,
// dilations and auto_pad, the geometry taken from the forward kernel's nn::window_geometry.
//
// Forward, per image n and group: Y_g[M/g, out] = W_g[M/g, C/g·k] · col(X_g)[C/g·k, out] + B,
// with col = im2col (nn::im2col_tile). Hence
//   dW_g = Σ_n dY_g · col(X_g)ᵀ              (dY·im2colᵀ, accumulated over images)
//   dX_g = col2im(W_gᵀ · dY_g)                (nn::col2im_tile is im2col's adjoint)
//   dB[m] = Σ_n Σ_out dY[n, m, out]
// 1x1 convolutions without stride or padding use X_g itself as the column matrix. Depthwise
// convolutions (C/group == 1, group > 1) run direct loops over a zero-padded copy of each plane:
//   dW[oc, t] = Σ_n Σ_o dY[n, oc, o] · P_x[o·s + t·d],   dP_x[o·s + t·d] += W[oc, t] · dY[n, oc, o].
// Work is split over images (each worker keeps its own dW partial, summed in a fixed order, so
// results do not depend on scheduling) or, for a single image, inside each GEMM; depthwise work
// is split over input channels. Only the gradients asked for are computed.
#include <algorithm>
#include <cstring>
#include <functional>
#include <vector>

#include "../kernels/nn_util.h"
#include "grad_nn_util.h"
#include "grads.h"

namespace qtool::runtime::grads {
namespace {

/// Columns of an im2col tile are capped so that one tile (and its gradient) stays ~4 MB.
constexpr int64_t kMaxTileFloats = int64_t{1} << 20;

/// Σ p[0, n) with eight partial sums (vectorizes without -ffast-math), returned as double.
double plane_sum(const float* p, int64_t n) {
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) s[l] += p[i + l];
  double total = 0;
  for (; i < n; ++i) total += p[i];
  for (float v : s) total += v;
  return total;
}

/// Validates X/W (the checks of the forward conv_geometry) and returns the window geometry.
nn::WindowGeometry conv_geometry(const GradContext& ctx, const Shape& xs, const Shape& ws, int64_t group) {
  if (xs.size() < 3) bad_grad_node(ctx, "X {} must be [N, C, spatial...]", shape_str(xs));
  if (ws.size() != xs.size()) bad_grad_node(ctx, "W {} and X {} ranks differ", shape_str(ws), shape_str(xs));
  if (group <= 0 || xs[1] % group != 0 || ws[0] % group != 0 || ws[1] * group != xs[1]) {
    bad_grad_node(ctx, "channels do not match: X {} W {} group {}", shape_str(xs), shape_str(ws), group);
  }
  const nn::WindowGeometry g =
      nn::window_geometry(ctx.node(), xs, std::vector<int64_t>(ws.begin() + 2, ws.end()), false);
  // The padded plane copies below assume pads >= 0 (as ONNX requires).
  for (int i = 0; i < 3; ++i)
    if (g.pad_begin[i] < 0 || g.pad_end[i] < 0) bad_grad_node(ctx, "pads must not be negative");
  return g;
}

/// One kernel tap along an output row of n positions (input stride kS, or s when kS == 0):
/// acc[o] += g[o]·src[o·s] (dW) and dsrc[o·s] += wv·g[o] (dX); either may be null.
template <int kS>
inline void depthwise_tap(const float* __restrict g, const float* __restrict src, float* __restrict acc,
                          float* __restrict dsrc, float wv, int64_t n, int64_t s) {
  const int64_t st = kS > 0 ? kS : s;
  if (acc)
    for (int64_t o = 0; o < n; ++o) acc[o] += g[o] * src[o * st];
  if (dsrc)
    for (int64_t o = 0; o < n; ++o) dsrc[o * st] += wv * g[o];
}

/// Depthwise (and channel-multiplier) Conv gradient: one work item per input channel ic, which
/// owns dX[:, ic] and dW[oc] for its output channels oc in [ic·M/C, (ic+1)·M/C).
void depthwise_grad(ThreadPool& pool, const float* x, const float* w, const float* dy, const Shape& xs,
                    const Shape& ws, const nn::WindowGeometry& g, float* dx, float* dw) {
  const int64_t n_batch = xs[0], c_in = xs[1], m_out = ws[0], cout_g = m_out / c_in;
  const int64_t in_sz = g.in_size(), out_sz = g.out_size(), ks = g.kernel_size();
  const int64_t pd = g.in[0] + g.pad_begin[0] + g.pad_end[0], ph = g.in[1] + g.pad_begin[1] + g.pad_end[1],
                pw = g.in[2] + g.pad_begin[2] + g.pad_end[2];
  const bool padded = pd * ph * pw != in_sz;
  const int64_t ow_n = g.out[2];
  const int64_t s2 = g.stride[2];
  auto tap = s2 == 1 ? depthwise_tap<1> : s2 == 2 ? depthwise_tap<2> : depthwise_tap<0>;
  pool.parallel_for(c_in, 1, [&](int64_t c0, int64_t c1) {
    // Per worker: padded X plane, padded dX plane, and per (oc, tap) row accumulators of dW.
    std::vector<float> px, pdx, acc;
    if (padded && dw) px.assign(static_cast<size_t>(pd * ph * pw), 0.0f);
    if (padded && dx) pdx.resize(static_cast<size_t>(pd * ph * pw));
    if (dw) acc.resize(static_cast<size_t>(cout_g * ks * ow_n));
    for (int64_t ic = c0; ic < c1; ++ic) {
      if (dw) std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t n = 0; n < n_batch; ++n) {
        const float* xplane = x + (n * c_in + ic) * in_sz;
        float* dxplane = dx ? dx + (n * c_in + ic) * in_sz : nullptr;
        const float* xp = xplane;
        float* dxp = dxplane;
        if (padded) {
          if (dw) {  // the border stays zero; only the interior is rewritten
            for (int64_t a = 0; a < g.in[0]; ++a)
              for (int64_t b = 0; b < g.in[1]; ++b)
                std::memcpy(px.data() + ((a + g.pad_begin[0]) * ph + b + g.pad_begin[1]) * pw + g.pad_begin[2],
                            xplane + (a * g.in[1] + b) * g.in[2], sizeof(float) * g.in[2]);
            xp = px.data();
          }
          if (dx) {
            std::fill(pdx.begin(), pdx.end(), 0.0f);
            dxp = pdx.data();
          }
        } else if (dx) {
          std::fill(dxplane, dxplane + in_sz, 0.0f);
        }
        for (int64_t ocl = 0; ocl < cout_g; ++ocl) {
          const int64_t oc = ic * cout_g + ocl;
          const float* wk = w + oc * ks;
          const float* gplane = dy + (n * m_out + oc) * out_sz;
          float* accp = dw ? acc.data() + ocl * ks * ow_n : nullptr;
          for (int64_t od = 0; od < g.out[0]; ++od) {
            for (int64_t oh = 0; oh < g.out[1]; ++oh) {
              const float* grow = gplane + (od * g.out[1] + oh) * ow_n;
              for (int64_t ka = 0; ka < g.kernel[0]; ++ka) {
                const int64_t pa = (od * g.stride[0] + ka * g.dilation[0]) * ph;
                for (int64_t kb = 0; kb < g.kernel[1]; ++kb) {
                  const int64_t prow = (pa + oh * g.stride[1] + kb * g.dilation[1]) * pw;
                  for (int64_t kc = 0; kc < g.kernel[2]; ++kc) {
                    const int64_t t = (ka * g.kernel[1] + kb) * g.kernel[2] + kc;
                    const int64_t off = prow + kc * g.dilation[2];
                    tap(grow, dw ? xp + off : nullptr, dw ? accp + t * ow_n : nullptr, dx ? dxp + off : nullptr, wk[t],
                        ow_n, s2);
                  }
                }
              }
            }
          }
        }
        if (padded && dx) {
          for (int64_t a = 0; a < g.in[0]; ++a)
            for (int64_t b = 0; b < g.in[1]; ++b)
              std::memcpy(dxplane + (a * g.in[1] + b) * g.in[2],
                          pdx.data() + ((a + g.pad_begin[0]) * ph + b + g.pad_begin[1]) * pw + g.pad_begin[2],
                          sizeof(float) * g.in[2]);
        }
      }
      if (dw) {
        for (int64_t ocl = 0; ocl < cout_g; ++ocl)
          for (int64_t t = 0; t < ks; ++t)
            dw[(ic * cout_g + ocl) * ks + t] =
                static_cast<float>(plane_sum(acc.data() + (ocl * ks + t) * ow_n, ow_n));
      }
    }
  });
}

/// im2col + GEMM Conv gradient (every conv that is not depthwise).
void gemm_conv_grad(ThreadPool& pool, const float* x, const float* w, const float* dy, const Shape& xs,
                    const Shape& ws, int64_t group, const nn::WindowGeometry& g, float* dx, float* dw) {
  const int64_t n_batch = xs[0], c_in = xs[1], m_out = ws[0];
  const int64_t cin_g = c_in / group, cout_g = m_out / group;
  const int64_t in_sz = g.in_size(), out_sz = g.out_size(), ks = g.kernel_size(), kdim = cin_g * ks;
  bool pointwise = ks == 1;
  for (int i = 0; i < 3; ++i) pointwise = pointwise && g.stride[i] == 1 && g.pad_begin[i] == 0 && g.pad_end[i] == 0;
  const int64_t tile =
      pointwise ? out_sz : std::clamp<int64_t>(kMaxTileFloats / std::max<int64_t>(kdim, 1) / 16 * 16, 16, out_sz);
  const int threads = pool.threads();
  const bool per_image = threads > 1 && n_batch >= threads;
  // Runs images [n0, n1) into dW partial `dwp` (overwritten), with `gp` splitting the GEMMs and
  // (when set) im2col/col2im split over channels.
  auto run_images = [&](int64_t n0, int64_t n1, float* dwp, ThreadPool* gp) {
    // Per-thread column buffers, kept across calls (a training loop runs the same layers every
    // step): only grown, never cleared, since im2col and the beta = 0 GEMM overwrite them.
    // The lambdas below use the pointers: a thread_local named inside them would be the
    // executing (pool) thread's own instance.
    thread_local std::vector<float> col_buf, dcol_buf;
    float* col = nullptr;
    float* dcol = nullptr;
    if (!pointwise) {
      const size_t sz = static_cast<size_t>(kdim * tile);
      if (dw && col_buf.size() < sz) col_buf.resize(sz);
      if (dx && dcol_buf.size() < sz) dcol_buf.resize(sz);
      col = col_buf.data();
      dcol = dcol_buf.data();
    }
    auto by_channel = [&](const std::function<void(int64_t, int64_t)>& fn) {
      if (gp) gp->parallel_for(cin_g, 1, fn);
      else fn(0, cin_g);
    };
    bool first = true;
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t grp = 0; grp < group; ++grp) {
        const float* xg = x + (n * c_in + grp * cin_g) * in_sz;
        const float* wg = w + grp * cout_g * kdim;
        const float* gg = dy + (n * m_out + grp * cout_g) * out_sz;
        float* dxg = dx ? dx + (n * c_in + grp * cin_g) * in_sz : nullptr;
        float* dwg = dw ? dwp + grp * cout_g * kdim : nullptr;
        if (dxg && !pointwise) std::fill(dxg, dxg + cin_g * in_sz, 0.0f);
        for (int64_t j0 = 0; j0 < out_sz; j0 += tile) {
          const int64_t j1 = std::min(out_sz, j0 + tile), jt = j1 - j0;
          const float beta = first && j0 == 0 ? 0.0f : 1.0f;
          if (dwg) {  // dW_g (+)= dY_g[:, j0:j1] · col[:, j0:j1]ᵀ
            const float* cp = xg + j0;
            int64_t ldc = in_sz;
            if (!pointwise) {
              by_channel([&](int64_t c0, int64_t c1) {
                for (int64_t c = c0; c < c1; ++c) nn::im2col_tile<float>(xg + c * in_sz, g, 1, j0, j1, col + c * ks * jt);
              });
              cp = col;
              ldc = jt;
            }
            nn::sgemm(false, true, cout_g, kdim, jt, 1.0f, gg + j0, out_sz, cp, ldc, beta, dwg, kdim, gp);
          }
          if (dxg) {  // dcol = W_gᵀ · dY_g[:, j0:j1], scattered back by col2im
            if (pointwise) {
              nn::sgemm(true, false, kdim, jt, cout_g, 1.0f, wg, kdim, gg + j0, out_sz, 0.0f, dxg + j0, in_sz, gp);
            } else {
              nn::sgemm(true, false, kdim, jt, cout_g, 1.0f, wg, kdim, gg + j0, out_sz, 0.0f, dcol, jt, gp);
              by_channel([&](int64_t c0, int64_t c1) {
                for (int64_t c = c0; c < c1; ++c) nn::col2im_tile<float>(dcol + c * ks * jt, g, 1, j0, j1, dxg + c * in_sz);
              });
            }
          }
        }
      }
      first = false;
    }
  };
  if (!per_image) {
    run_images(0, n_batch, dw, threads > 1 ? &pool : nullptr);
    return;
  }
  // One chunk of images per thread; partial dW sums are added in chunk order afterwards.
  const int64_t grain = (n_batch + threads - 1) / threads;
  const size_t wsz = static_cast<size_t>(m_out * kdim);
  std::vector<std::vector<float>> partial(static_cast<size_t>(n_batch));
  pool.parallel_for(n_batch, grain, [&](int64_t n0, int64_t n1) {
    float* dwp = nullptr;
    if (dw) {
      partial[n0].resize(wsz);
      dwp = partial[n0].data();
    }
    run_images(n0, n1, dwp, nullptr);
  });
  if (dw) {
    bool first = true;
    for (const std::vector<float>& p : partial) {
      if (p.empty()) continue;
      if (first) std::copy(p.begin(), p.end(), dw);
      else
        for (size_t i = 0; i < wsz; ++i) dw[i] += p[i];
      first = false;
    }
  }
}

/// Conv (1, 11: same semantics for float).
void conv_grad(GradContext& ctx) {
  if (!ctx.has_output_grad(0)) return;
  const bool want_x = ctx.wants_input_grad(0), want_w = ctx.wants_input_grad(1);
  const bool want_b = ctx.has_input(2) && ctx.wants_input_grad(2);
  if (!want_x && !want_w && !want_b) return;
  const Tensor x = float_value(ctx.input(0)), w = float_value(ctx.input(1));
  const int64_t group = ctx.node().attr_int("group", 1);
  const nn::WindowGeometry g = conv_geometry(ctx, x.shape(), w.shape(), group);
  const Tensor& dy = ctx.output_grad(0);
  Shape ys = {x.dim(0), w.dim(0)};
  for (int64_t d : g.out_shape()) ys.push_back(d);
  QTOOL_CHECK(dy.shape() == ys, ErrorCode::kInternal, "gradient of {}: dY {} but the output is {}",
              ctx.node().describe(), shape_str(dy.shape()), shape_str(ys));
  const int64_t m_out = w.dim(0), out_sz = g.out_size(), n_batch = x.dim(0);
  const float* gp = dy.data<float>();
  ThreadPool& pool = ctx.pool();
  if (want_b) {
    const Tensor& b = ctx.input(2);
    if (b.numel() != m_out) bad_grad_node(ctx, "bias {} does not match {} output channels", shape_str(b.shape()), m_out);
    Tensor db = Tensor::empty(DataType::kFloat, b.shape());
    float* dbp = db.mutable_data<float>();
    pool.parallel_for(m_out, 8, [&](int64_t m0, int64_t m1) {
      for (int64_t m = m0; m < m1; ++m) {
        double s = 0;
        for (int64_t n = 0; n < n_batch; ++n) s += plane_sum(gp + (n * m_out + m) * out_sz, out_sz);
        dbp[m] = static_cast<float>(s);
      }
    });
    ctx.set_input_grad(2, std::move(db));
  }
  if (!want_x && !want_w) return;
  Tensor dx = want_x ? Tensor::empty(DataType::kFloat, x.shape()) : Tensor();
  Tensor dw = want_w ? Tensor::empty(DataType::kFloat, w.shape()) : Tensor();
  float* dxp = want_x ? dx.mutable_data<float>() : nullptr;
  float* dwp = want_w ? dw.mutable_data<float>() : nullptr;
  if (x.numel() == 0 || w.numel() == 0 || dy.numel() == 0) {
    if (dxp) std::fill(dxp, dxp + dx.numel(), 0.0f);
    if (dwp) std::fill(dwp, dwp + dw.numel(), 0.0f);
  } else if (w.dim(1) == 1 && group > 1) {
    depthwise_grad(pool, x.data<float>(), w.data<float>(), gp, x.shape(), w.shape(), g, dxp, dwp);
  } else {
    gemm_conv_grad(pool, x.data<float>(), w.data<float>(), gp, x.shape(), w.shape(), group, g, dxp, dwp);
  }
  if (want_x) ctx.set_input_grad(0, std::move(dx));
  if (want_w) ctx.set_input_grad(1, std::move(dw));
}

}  // namespace

void register_conv_gradients(GradRegistry& r) { r.add("", "Conv", 1, conv_grad); }

}  // namespace qtool::runtime::grads
