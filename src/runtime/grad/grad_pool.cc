// Gradients: pool family (see grads.h). The window geometry is the forward kernel's
// (nn::window_geometry: kernel_shape, strides, pads, dilations, auto_pad, ceil_mode from opset 10).
//
//   MaxPool:           dX[argmax(window o)] += dY[o], the first maximum in (d, h, w) scan order
//                      among the window's positions inside the input (as the forward kernel and
//                      its Indices output pick it); Indices carries no gradient.
//   AveragePool:       dX[i] += dY[o] / count(o) for every input position i of window o, count =
//                      the positions inside the input, or inside the padded extent when
//                      count_include_pad (a ceil_mode window past the end padding counts only
//                      up to it, as in the forward kernel).
//   GlobalAveragePool: dX[n, c, :] = dY[n, c] / (spatial size);  GlobalMaxPool: dY[n, c] to the
//                      plane's first maximum.
// Work is split over (n, c) planes.
#include <algorithm>
#include <vector>

#include "../kernels/nn_util.h"
#include "grad_nn_util.h"
#include "grads.h"

namespace qtool::runtime::grads {
namespace {

/// Along dim i for output position o: the window's first input index `start` and the taps
/// [k0, k1) whose input index start + k·dilation lies in [0, in); returns the number of taps
/// inside the padded extent [-pad_begin, in + pad_end) (count_include_pad's count).
inline int64_t window_taps(const nn::WindowGeometry& g, int i, int64_t o, int64_t* start, int64_t* k0, int64_t* k1) {
  const int64_t s = o * g.stride[i] - g.pad_begin[i], d = g.dilation[i], in = g.in[i];
  *start = s;
  *k0 = s >= 0 ? 0 : (-s + d - 1) / d;
  *k1 = in - 1 - s < 0 ? 0 : std::min(g.kernel[i], (in - 1 - s) / d + 1);
  if (*k1 < *k0) *k1 = *k0;
  const int64_t room = in + g.pad_end[i] - s;  // start >= -pad_begin always
  return room <= 0 ? 0 : std::min(g.kernel[i], (room + d - 1) / d);
}

/// Calls fn(output index, offset of the window's first position, [k0, k1) per dim, padded
/// count) for every output position of one plane.
template <typename Fn>
void for_each_window(const nn::WindowGeometry& g, Fn&& fn) {
  int64_t o = 0;
  for (int64_t od = 0; od < g.out[0]; ++od) {
    int64_t sd, ad0, ad1;
    const int64_t pd = window_taps(g, 0, od, &sd, &ad0, &ad1);
    for (int64_t oh = 0; oh < g.out[1]; ++oh) {
      int64_t sh, ah0, ah1;
      const int64_t ph = window_taps(g, 1, oh, &sh, &ah0, &ah1);
      for (int64_t ow = 0; ow < g.out[2]; ++ow, ++o) {
        int64_t sw, aw0, aw1;
        const int64_t pw = window_taps(g, 2, ow, &sw, &aw0, &aw1);
        const int64_t k0[3] = {ad0, ah0, aw0}, k1[3] = {ad1, ah1, aw1};
        fn(o, (sd * g.in[1] + sh) * g.in[2] + sw, k0, k1, pd * ph * pw);
      }
    }
  }
}

/// The forward kernels' pooling geometry (kernel_shape from the attribute).
nn::WindowGeometry pool_geometry(const GradContext& ctx, const Tensor& x, bool ceil) {
  return nn::window_geometry(ctx.node(), x.shape(), {}, ceil);
}

/// Checks dY against the pooled shape [N, C, out...].
void check_pooled(const GradContext& ctx, const Tensor& x, const Tensor& dy, const Shape& spatial) {
  Shape ys = {x.dim(0), x.dim(1)};
  ys.insert(ys.end(), spatial.begin(), spatial.end());
  QTOOL_CHECK(dy.shape() == ys, ErrorCode::kInternal, "gradient of {}: dY {} but the output is {}",
              ctx.node().describe(), shape_str(dy.shape()), shape_str(ys));
}

/// MaxPool; kCeil: ceil_mode is honoured (opset >= 10).
template <bool kCeil>
void max_pool_grad(GradContext& ctx) {
  if (!ctx.has_output_grad(0) || !ctx.wants_input_grad(0)) return;
  const Tensor x = float_value(ctx.input(0));
  const nn::WindowGeometry g = pool_geometry(ctx, x, kCeil);
  const Tensor& dy = ctx.output_grad(0);
  check_pooled(ctx, x, dy, g.out_shape());
  const int64_t planes = x.dim(0) * x.dim(1), in_sz = g.in_size(), out_sz = g.out_size();
  Tensor dx = Tensor::empty(DataType::kFloat, x.shape());
  const float* xp = x.data<float>();
  const float* gp = dy.data<float>();
  float* dp = dx.mutable_data<float>();
  const int64_t hw = g.in[1] * g.in[2];
  const int64_t sd = g.dilation[0] * hw, sh = g.dilation[1] * g.in[2], sw = g.dilation[2];
  ctx.pool().parallel_for(planes, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const float* xs = xp + p * in_sz;
      const float* gs = gp + p * out_sz;
      float* ds = dp + p * in_sz;
      std::fill(ds, ds + in_sz, 0.0f);
      for_each_window(g, [&](int64_t o, int64_t base, const int64_t* k0, const int64_t* k1, int64_t) {
        int64_t best = -1;
        float bv = 0.0f;
        for (int64_t a = k0[0]; a < k1[0]; ++a)
          for (int64_t b = k0[1]; b < k1[1]; ++b) {
            const int64_t row = base + a * sd + b * sh;
            for (int64_t c = k0[2]; c < k1[2]; ++c) {
              const int64_t i = row + c * sw;
              if (best < 0 || xs[i] > bv) {
                best = i;
                bv = xs[i];
              }
            }
          }
        if (best >= 0) ds[best] += gs[o];
      });
    }
  });
  ctx.set_input_grad(0, std::move(dx));
}

/// AveragePool; kCeil: ceil_mode is honoured (opset >= 10).
template <bool kCeil>
void average_pool_grad(GradContext& ctx) {
  if (!ctx.has_output_grad(0) || !ctx.wants_input_grad(0)) return;
  const Tensor x = float_value(ctx.input(0));
  const nn::WindowGeometry g = pool_geometry(ctx, x, kCeil);
  const bool include_pad = ctx.node().attr_int("count_include_pad", 0) != 0;
  const Tensor& dy = ctx.output_grad(0);
  check_pooled(ctx, x, dy, g.out_shape());
  const int64_t planes = x.dim(0) * x.dim(1), in_sz = g.in_size(), out_sz = g.out_size();
  Tensor dx = Tensor::empty(DataType::kFloat, x.shape());
  const float* gp = dy.data<float>();
  float* dp = dx.mutable_data<float>();
  const int64_t hw = g.in[1] * g.in[2];
  const int64_t sd = g.dilation[0] * hw, sh = g.dilation[1] * g.in[2], sw = g.dilation[2];
  ctx.pool().parallel_for(planes, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const float* gs = gp + p * out_sz;
      float* ds = dp + p * in_sz;
      std::fill(ds, ds + in_sz, 0.0f);
      for_each_window(g, [&](int64_t o, int64_t base, const int64_t* k0, const int64_t* k1, int64_t padded) {
        const int64_t valid = (k1[0] - k0[0]) * (k1[1] - k0[1]) * (k1[2] - k0[2]);
        const int64_t cnt = include_pad ? padded : valid;
        if (cnt <= 0 || valid <= 0) return;
        const float v = gs[o] / static_cast<float>(cnt);
        for (int64_t a = k0[0]; a < k1[0]; ++a)
          for (int64_t b = k0[1]; b < k1[1]; ++b) {
            float* row = ds + base + a * sd + b * sh;
            for (int64_t c = k0[2]; c < k1[2]; ++c) row[c * sw] += v;
          }
      });
    }
  });
  ctx.set_input_grad(0, std::move(dx));
}

/// GlobalAveragePool (kMax = false) / GlobalMaxPool (kMax = true).
template <bool kMax>
void global_pool_grad(GradContext& ctx) {
  if (!ctx.has_output_grad(0) || !ctx.wants_input_grad(0)) return;
  const Tensor x = float_value(ctx.input(0));
  if (x.rank() < 3) bad_grad_node(ctx, "input {} must be [N, C, spatial...]", shape_str(x.shape()));
  const Tensor& dy = ctx.output_grad(0);
  check_pooled(ctx, x, dy, Shape(x.rank() - 2, 1));
  const int64_t planes = x.dim(0) * x.dim(1), sz = planes > 0 ? x.numel() / planes : 0;
  Tensor dx = Tensor::empty(DataType::kFloat, x.shape());
  const float* xp = x.data<float>();
  const float* gp = dy.data<float>();
  float* dp = dx.mutable_data<float>();
  ctx.pool().parallel_for(planes, 16, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      float* ds = dp + p * sz;
      if constexpr (kMax) {
        const float* s = xp + p * sz;
        std::fill(ds, ds + sz, 0.0f);
        int64_t best = 0;
        for (int64_t i = 1; i < sz; ++i)
          if (s[i] > s[best]) best = i;
        if (sz > 0) ds[best] = gp[p];
      } else {
        std::fill(ds, ds + sz, sz > 0 ? gp[p] / static_cast<float>(sz) : 0.0f);
      }
    }
  });
  ctx.set_input_grad(0, std::move(dx));
}

}  // namespace

void register_pool_gradients(GradRegistry& r) {
  r.add("", "MaxPool", 1, max_pool_grad<false>);
  r.add("", "MaxPool", 10, max_pool_grad<true>);
  r.add("", "AveragePool", 1, average_pool_grad<false>);
  r.add("", "AveragePool", 10, average_pool_grad<true>);
  r.add("", "GlobalAveragePool", 1, global_pool_grad<false>);
  r.add("", "GlobalMaxPool", 1, global_pool_grad<true>);
}

}  // namespace qtool::runtime::grads
