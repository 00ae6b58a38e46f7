// Gradients: reduce family (see grads.h).
//
//   ReduceSum:  dX[i] = dY[r(i)]             (r(i): the output element input i reduces into)
//   ReduceMean: dX[i] = dY[r(i)] / count     (count = product of the reduced dims)
//   ReduceMax / ReduceMin: dX[i] = dY[r(i)] for the first i (row-major) with X[i] == Y[r(i)],
//               0 elsewhere (one subgradient: ties give everything to the first extremum)
//   Softmax:    dX = y ⊙ (dY − Σ_axis dY ⊙ y)
//   LogSoftmax: dX = dY − exp(y) · Σ_axis dY
// Axes of the reductions come from the attribute before opset 13 (ReduceSum) or 18 (the others)
// and from the optional second input after; no axes reduce everything unless
// noop_with_empty_axes (then Y = X and dX = dY). Softmax before opset 13 coerces the input to
// 2-D at `axis` (default 1) and normalises over the whole trailing block; from 13 over the one
// `axis` (default -1). Softmax uses the forward output y, so nothing is recomputed.
#include <cmath>
#include <vector>

#include "../kernels/kernel_util.h"
#include "grad_nn_util.h"
#include "grads.h"

namespace qtool::runtime::grads {
namespace {

enum class Red { kSum, kMean, kMax, kMin };

/// Reduce{Sum,Mean,Max,Min}; kAxesInput: axes come from input 1 (opset 13 / 18 on).
template <Red R, bool kAxesInput>
void reduce_grad(GradContext& ctx) {
  if (!ctx.has_output_grad(0) || !ctx.wants_input_grad(0)) return;
  const ir::Node& node = ctx.node();
  const Tensor& in = ctx.input(0);
  const Tensor& dy = ctx.output_grad(0);
  const int64_t r = static_cast<int64_t>(in.rank());
  std::vector<int64_t> axes;
  if constexpr (kAxesInput) {
    if (ctx.has_input(1)) axes = kernels::int_values(ctx.input(1));
  } else {
    axes = node.attr_ints("axes");
  }
  if (axes.empty() && node.attr_int("noop_with_empty_axes", 0) != 0) {  // Y = X
    ctx.set_input_grad(0, dy);
    return;
  }
  std::vector<char> reduce(static_cast<size_t>(r), axes.empty() ? 1 : 0);
  for (int64_t a : axes) {
    const int64_t d = kernels::normalize_axis(a, r, node);  // a scalar accepts axis 0, as the kernel does
    if (d < r) reduce[d] = 1;
  }
  Shape keep_shape = in.shape();
  int64_t count = 1;
  for (int64_t d = 0; d < r; ++d) {
    if (!reduce[d]) continue;
    count *= keep_shape[d];
    keep_shape[d] = 1;
  }
  QTOOL_CHECK(dy.numel() == shape_numel(keep_shape), ErrorCode::kInternal,
              "gradient of {}: dY {} does not match the reduction of {}", node.describe(), shape_str(dy.shape()),
              shape_str(in.shape()));
  Tensor dx = Tensor::empty(DataType::kFloat, in.shape());
  float* dp = dx.mutable_data<float>();
  const float* gp = dy.data<float>();
  const int64_t n = in.numel();
  if (n == 0) {
    ctx.set_input_grad(0, std::move(dx));
    return;
  }
  // Walks X with the reduced output's strides (0 on reduced axes).
  const kernels::BroadcastPlan<1> plan({&keep_shape}, in.shape());
  if constexpr (R == Red::kSum || R == Red::kMean) {
    const float scale = R == Red::kMean ? 1.0f / static_cast<float>(count) : 1.0f;
    ctx.pool().parallel_for(n, kernels::kParallelGrain, [&](int64_t i0, int64_t i1) {
      plan.for_rows(i0, i1, [&](int64_t pos, const std::array<int64_t, 1>& off, int64_t len,
                                const std::array<int64_t, 1>& st) {
        for (int64_t i = 0; i < len; ++i) dp[pos + i] = gp[off[0] + i * st[0]] * scale;
      });
    });
  } else {
    const Tensor x = float_value(in);
    const Tensor y = float_value(ctx.output(0));
    const float* xp = x.data<float>();
    const float* yp = y.data<float>();
    std::vector<char> taken(static_cast<size_t>(dy.numel()), 0);
    plan.for_rows(0, n, [&](int64_t pos, const std::array<int64_t, 1>& off, int64_t len,
                            const std::array<int64_t, 1>& st) {
      for (int64_t i = 0; i < len; ++i) {
        const int64_t o = off[0] + i * st[0];
        const bool hit = !taken[o] && xp[pos + i] == yp[o];
        taken[o] = taken[o] || hit;
        dp[pos + i] = hit ? gp[o] : 0.0f;
      }
    });
  }
  ctx.set_input_grad(0, std::move(dx));
}

/// Softmax (kLog = false) / LogSoftmax (kLog = true); kPerAxis: opset >= 13 (one axis).
template <bool kLog, bool kPerAxis>
void softmax_grad(GradContext& ctx) {
  if (!ctx.has_output_grad(0) || !ctx.wants_input_grad(0)) return;
  const Tensor y = float_value(ctx.output(0));
  const Tensor& dy = ctx.output_grad(0);
  const Shape& s = y.shape();
  QTOOL_CHECK(dy.shape() == s && s == ctx.input(0).shape(), ErrorCode::kInternal,
              "gradient of {}: dY {}, Y {} and X {} differ", ctx.node().describe(), shape_str(dy.shape()),
              shape_str(s), shape_str(ctx.input(0).shape()));
  const int64_t rank = static_cast<int64_t>(s.size());
  int64_t outer = 1, len = 1, inner = 1;
  if (rank > 0) {
    const int64_t axis = kernels::normalize_axis(ctx.node().attr_int("axis", kPerAxis ? -1 : 1), rank, ctx.node());
    for (int64_t i = 0; i < axis; ++i) outer *= s[i];
    if (kPerAxis) {
      len = s[axis];
      for (int64_t i = axis + 1; i < rank; ++i) inner *= s[i];
    } else {
      for (int64_t i = axis; i < rank; ++i) len *= s[i];
    }
  }
  Tensor dx = Tensor::empty(DataType::kFloat, s);
  const float* yp = y.data<float>();
  const float* gp = dy.data<float>();
  float* dp = dx.mutable_data<float>();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(len, 1));
  ctx.pool().parallel_for(outer * inner, grain, [&](int64_t s0, int64_t s1) {
    for (int64_t sl = s0; sl < s1; ++sl) {
      const int64_t base = (sl / inner) * len * inner + sl % inner;
      const float* ys = yp + base;
      const float* gs = gp + base;
      float* ds = dp + base;
      double acc = 0;
      for (int64_t i = 0; i < len; ++i) acc += kLog ? gs[i * inner] : static_cast<double>(gs[i * inner]) * ys[i * inner];
      const float sum = static_cast<float>(acc);
      for (int64_t i = 0; i < len; ++i) {
        const int64_t k = i * inner;
        ds[k] = kLog ? gs[k] - std::exp(ys[k]) * sum : ys[k] * (gs[k] - sum);
      }
    }
  });
  ctx.set_input_grad(0, std::move(dx));
}

}  // namespace

void register_reduce_gradients(GradRegistry& r) {
  r.add("", "ReduceSum", 1, reduce_grad<Red::kSum, false>);
  r.add("", "ReduceSum", 13, reduce_grad<Red::kSum, true>);
  r.add("", "ReduceMean", 1, reduce_grad<Red::kMean, false>);
  r.add("", "ReduceMean", 18, reduce_grad<Red::kMean, true>);
  r.add("", "ReduceMax", 1, reduce_grad<Red::kMax, false>);
  r.add("", "ReduceMax", 18, reduce_grad<Red::kMax, true>);
  r.add("", "ReduceMin", 1, reduce_grad<Red::kMin, false>);
  r.add("", "ReduceMin", 18, reduce_grad<Red::kMin, true>);
  r.add("", "Softmax", 1, softmax_grad<false, false>);
  r.add("", "Softmax", 13, softmax_grad<false, true>);
  r.add("", "LogSoftmax", 1, softmax_grad<true, false>);
  r.add("", "LogSoftmax", 13, softmax_grad<true, true>);
}

}  // namespace qtool::runtime::grads
