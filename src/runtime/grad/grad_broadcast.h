// Helpers shared by the element-wise gradient families (private to src/runtime/grad): the one
// broadcasting map that turns dL/dY and the forward inputs into a full-shape gradient, and the
// elementwise scale. A full-shape gradient is then summed back to each input with
// reduce_to_shape (autodiff.h).
//
// For y = f(a, b) with numpy broadcasting, y[k] = f(a[ia(k)], b[ib(k)]), so
//   dL/da[j] = Σ_{k: ia(k) = j} dL/dy[k] · ∂f/∂a(a[ia(k)], b[ib(k)])
// i.e. the full-shape product reduced over the broadcast dimensions.
#pragma once

#include <array>
#include <cstdint>

#include "../kernels/kernel_util.h"
#include "qtool/runtime/autodiff.h"

namespace qtool::runtime::grads {

/// One innermost row of broadcast_map: o[i] = f(a[i*sa], b[i*sb], g[i]). SA/SB are the strides
/// when known at compile time (0 or 1, so the loop vectorises), -1 when given at run time.
template <int SA, int SB, typename A, typename B, typename F>
inline void broadcast_map_row(const A* a, int64_t sa, const B* b, int64_t sb, const float* g, float* o, int64_t n,
                              const F& f) {
  const int64_t ka = SA >= 0 ? SA : sa, kb = SB >= 0 ? SB : sb;
  for (int64_t i = 0; i < n; ++i) o[i] = f(a[i * ka], b[i * kb], g[i]);
}

/// Returns r of g's shape (the broadcast output shape) with r[k] = f(a[ia(k)], b[ib(k)], g[k]),
/// where ia/ib are the numpy-broadcast source indices of output element k. A and B are the
/// storage types of a and b (float, or bool for Where's condition). g is float32.
template <typename A, typename B, typename F>
Tensor broadcast_map(const Tensor& a, const Tensor& b, const Tensor& g, ThreadPool& pool, const F& f) {
  Tensor out = Tensor::empty(DataType::kFloat, g.shape());
  const int64_t n = out.numel();
  if (n == 0) return out;
  const A* pa = a.data<A>();
  const B* pb = b.data<B>();
  const float* pg = g.data<float>();
  float* po = out.mutable_data<float>();
  const int64_t na = a.numel(), nb = b.numel();
  if ((na == n || na == 1) && (nb == n || nb == 1)) {
    // Flat: each input is full-size (same shape as the output) or a single element.
    const int64_t sa = na == n ? 1 : 0, sb = nb == n ? 1 : 0;
    pool.parallel_for(n, kernels::kParallelGrain, [&](int64_t s, int64_t e) {
      if (sa == 1 && sb == 1) {
        broadcast_map_row<1, 1>(pa + s, 1, pb + s, 1, pg + s, po + s, e - s, f);
      } else if (sa == 1) {
        broadcast_map_row<1, 0>(pa + s, 1, pb, 0, pg + s, po + s, e - s, f);
      } else if (sb == 1) {
        broadcast_map_row<0, 1>(pa, 0, pb + s, 1, pg + s, po + s, e - s, f);
      } else {
        broadcast_map_row<0, 0>(pa, 0, pb, 0, pg + s, po + s, e - s, f);
      }
    });
    return out;
  }
  const kernels::BroadcastPlan<3> plan({&a.shape(), &b.shape(), &g.shape()}, g.shape());
  pool.parallel_for(n, kernels::kParallelGrain, [&](int64_t s, int64_t e) {
    plan.for_rows(s, e, [&](int64_t o, const std::array<int64_t, 3>& off, int64_t len,
                            const std::array<int64_t, 3>& st) {
      const A* ra = pa + off[0];
      const B* rb = pb + off[1];
      const float* rg = pg + off[2];  // g is never broadcast: off[2] == o, st[2] == 1
      float* ro = po + o;
      if (st[0] == 1 && st[1] == 1) {
        broadcast_map_row<1, 1>(ra, 1, rb, 1, rg, ro, len, f);
      } else if (st[0] == 1 && st[1] == 0) {
        broadcast_map_row<1, 0>(ra, 1, rb, 0, rg, ro, len, f);
      } else if (st[0] == 0 && st[1] == 1) {
        broadcast_map_row<0, 1>(ra, 0, rb, 1, rg, ro, len, f);
      } else {
        broadcast_map_row<-1, -1>(ra, st[0], rb, st[1], rg, ro, len, f);
      }
    });
  });
  return out;
}

/// Input 1 of Add/Sub/Mul/Div/Pow as the forward kernel broadcast it: before opset 7, with
/// broadcast=1 and an axis, B is aligned to A from `axis` (trailing unit dims appended), else
/// numpy rules apply. The gradient of B is reduced to this view, then reshaped to B's shape.
inline Tensor legacy_aligned_b(const GradContext& ctx) {
  const Tensor& a = ctx.input(0);
  const Tensor& b = ctx.input(1);
  const ir::Node& n = ctx.node();
  if (ctx.opset() >= 7 || n.attr_int("broadcast", 0) == 0 || !n.has_attr("axis")) return b;
  const int64_t axis = kernels::normalize_axis(n.attr_int("axis", 0), static_cast<int64_t>(a.rank()), n);
  Shape s = b.shape();
  while (static_cast<int64_t>(s.size()) + axis < static_cast<int64_t>(a.rank())) s.push_back(1);
  return b.reshaped(s);
}

/// dL/dB from a full-shape gradient: summed to B's broadcast view `aligned`, in B's own shape.
inline Tensor reduce_to_input(const Tensor& full, const Tensor& aligned, const Shape& shape) {
  Tensor r = reduce_to_shape(full, aligned.shape());
  return r.shape() == shape ? r : r.reshaped(shape);
}

/// s · g (a new float32 tensor of g's shape).
inline Tensor scaled(const Tensor& g, float s, ThreadPool& pool) {
  Tensor out = Tensor::empty(DataType::kFloat, g.shape());
  const float* pg = g.data<float>();
  float* po = out.mutable_data<float>();
  pool.parallel_for(g.numel(), kernels::kParallelGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) po[i] = s * pg[i];
  });
  return out;
}

}  // namespace qtool::runtime::grads
