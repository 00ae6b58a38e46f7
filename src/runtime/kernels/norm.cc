// Normalizations: BatchNormalization (inference), LayerNormalization, InstanceNormalization,
// GroupNormalization and LpNormalization. Statistics are accumulated in double, then applied
// in float: y = (x - mean) * (1 / sqrt(var + eps)) * scale + bias.
#include <algorithm>
#include <cmath>

#include "kernels.h"
#include "nn_util.h"

namespace qtool::runtime {
namespace {

/// BatchNormalization in inference mode (all opsets; opset < 9 "spatial=0" per-element stats
/// are supported when the parameters hold C * inner values). training_mode=1 (14+) is rejected.
void batch_norm_kernel(KernelContext& ctx) {
  const ir::Node& node = ctx.node();
  if (node.attr_int("training_mode", 0) != 0) nn::bad_node(ctx, "training_mode=1 is not supported (inference only)");
  Tensor x = nn::float_input(ctx, 0), scale = nn::float_input(ctx, 1), bias = nn::float_input(ctx, 2);
  Tensor mean = nn::float_input(ctx, 3), var = nn::float_input(ctx, 4);
  const float eps = node.attr_float("epsilon", 1e-5f);
  if (x.rank() < 2) nn::bad_node(ctx, "input {} must be [N, C, ...]", shape_str(x.shape()));
  const int64_t n = x.dim(0), c = x.dim(1), inner = x.numel() / std::max<int64_t>(n * c, 1);
  const int64_t pn = scale.numel();
  const bool per_elem = pn == c * inner && inner != 1;
  if (!per_elem && pn != c) nn::bad_node(ctx, "scale {} does not match {} channels", shape_str(scale.shape()), c);
  for (const Tensor* t : {&bias, &mean, &var}) {
    if (t->numel() != pn) nn::bad_node(ctx, "B/mean/var shapes must match scale {}", shape_str(scale.shape()));
  }
  std::vector<float> a(pn), b(pn);
  for (int64_t i = 0; i < pn; ++i) {
    a[i] = scale.data<float>()[i] / std::sqrt(var.data<float>()[i] + eps);
    b[i] = bias.data<float>()[i] - mean.data<float>()[i] * a[i];
  }
  Tensor y = Tensor::empty(DataType::kFloat, x.shape());
  const float* xp = x.data<float>();
  float* yp = y.mutable_data<float>();
  ctx.pool().parallel_for(n * c, std::max<int64_t>(1, 16384 / std::max<int64_t>(inner, 1)), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t ch = p % c;
      const float* s = xp + p * inner;
      float* d = yp + p * inner;
      if (per_elem) {
        for (int64_t i = 0; i < inner; ++i) d[i] = s[i] * a[ch * inner + i] + b[ch * inner + i];
      } else {
        const float av = a[ch], bv = b[ch];
        for (int64_t i = 0; i < inner; ++i) d[i] = s[i] * av + bv;
      }
    }
  });
  ctx.set_output(0, nn::to_dtype_like(std::move(y), ctx.input(0).dtype()));
  // Old opsets list running statistics as outputs; in inference mode they pass through.
  if (ctx.wants_output(1)) ctx.set_output(1, ctx.input(3));
  if (ctx.wants_output(2)) ctx.set_output(2, ctx.input(4));
}

/// Mean and 1/sqrt(var + eps) of n values (two passes in double).
inline void moments(const float* s, int64_t n, float eps, float* mean, float* inv_std) {
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += s[i];
  const double mu = n > 0 ? sum / n : 0.0;
  double sq = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = s[i] - mu;
    sq += d * d;
  }
  *mean = static_cast<float>(mu);
  *inv_std = static_cast<float>(1.0 / std::sqrt((n > 0 ? sq / n : 0.0) + eps));
}

/// LayerNormalization (17): normalises over dims [axis, rank); Scale/B broadcast over those
/// dims; optional outputs Mean and InvStdDev have the input shape with those dims set to 1.
void layer_norm_kernel(KernelContext& ctx) {
  const ir::Node& node = ctx.node();
  Tensor x = nn::float_input(ctx, 0), scale = nn::float_input(ctx, 1);
  Tensor bias;
  if (ctx.has_input(2)) bias = nn::float_input(ctx, 2);
  const int64_t rank = static_cast<int64_t>(x.rank());
  const int64_t axis = nn::normalize_axis(ctx, node.attr_int("axis", -1), rank);
  const float eps = node.attr_float("epsilon", 1e-5f);
  int64_t outer = 1, len = 1;
  for (int64_t i = 0; i < axis; ++i) outer *= x.dim(static_cast<int>(i));
  for (int64_t i = axis; i < rank; ++i) len *= x.dim(static_cast<int>(i));
  if (scale.numel() != len && scale.numel() != 1) {
    nn::bad_node(ctx, "Scale {} does not match normalized size {}", shape_str(scale.shape()), len);
  }
  if (bias.defined() && bias.numel() != len && bias.numel() != 1) {
    nn::bad_node(ctx, "B {} does not match normalized size {}", shape_str(bias.shape()), len);
  }
  Tensor y = Tensor::empty(DataType::kFloat, x.shape());
  Shape stat_shape = x.shape();
  for (int64_t i = axis; i < rank; ++i) stat_shape[i] = 1;
  Tensor mean_t = Tensor::empty(DataType::kFloat, stat_shape), inv_t = Tensor::empty(DataType::kFloat, stat_shape);
  const float* xp = x.data<float>();
  const float* sp = scale.data<float>();
  const float* bp = bias.defined() ? bias.data<float>() : nullptr;
  const bool s1 = scale.numel() == 1, b1 = bias.defined() && bias.numel() == 1;
  float* yp = y.mutable_data<float>();
  float* mp = mean_t.mutable_data<float>();
  float* ip = inv_t.mutable_data<float>();
  ctx.pool().parallel_for(outer, std::max<int64_t>(1, 8192 / std::max<int64_t>(len, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* s = xp + r * len;
      float* d = yp + r * len;
      float mu, inv;
      moments(s, len, eps, &mu, &inv);
      mp[r] = mu;
      ip[r] = inv;
      for (int64_t i = 0; i < len; ++i) {
        const float v = (s[i] - mu) * inv * (s1 ? sp[0] : sp[i]);
        d[i] = bp ? v + (b1 ? bp[0] : bp[i]) : v;
      }
    }
  });
  ctx.set_output(0, nn::to_dtype_like(std::move(y), ctx.input(0).dtype()));
  if (ctx.wants_output(1)) ctx.set_output(1, std::move(mean_t));
  if (ctx.wants_output(2)) ctx.set_output(2, std::move(inv_t));
}

/// Normalises `groups` groups of each sample (InstanceNormalization: groups == C) and applies a
/// per-channel (or, for GroupNormalization-18, per-group) affine transform.
void group_normalize(KernelContext& ctx, int64_t groups, bool per_group_affine) {
  Tensor x = nn::float_input(ctx, 0), scale = nn::float_input(ctx, 1), bias = nn::float_input(ctx, 2);
  if (x.rank() < 2) nn::bad_node(ctx, "input {} must be [N, C, ...]", shape_str(x.shape()));
  const int64_t n = x.dim(0), c = x.dim(1), inner = x.numel() / std::max<int64_t>(n * c, 1);
  if (groups <= 0 || c % groups != 0) nn::bad_node(ctx, "{} channels not divisible into {} groups", c, groups);
  const int64_t want = per_group_affine ? groups : c;
  if (scale.numel() != want || bias.numel() != want) {
    nn::bad_node(ctx, "scale {} / bias {} must have {} values", shape_str(scale.shape()), shape_str(bias.shape()), want);
  }
  const float eps = ctx.node().attr_float("epsilon", 1e-5f);
  const int64_t cpg = c / groups, glen = cpg * inner;
  Tensor y = Tensor::empty(DataType::kFloat, x.shape());
  const float* xp = x.data<float>();
  const float* sp = scale.data<float>();
  const float* bp = bias.data<float>();
  float* yp = y.mutable_data<float>();
  ctx.pool().parallel_for(n * groups, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t gi = g0; gi < g1; ++gi) {
      const int64_t grp = gi % groups;
      const float* s = xp + gi * glen;
      float* d = yp + gi * glen;
      float mu, inv;
      moments(s, glen, eps, &mu, &inv);
      for (int64_t ch = 0; ch < cpg; ++ch) {
        const int64_t a = per_group_affine ? grp : grp * cpg + ch;
        const float sc = sp[a] * inv, bb = bp[a] - mu * sp[a] * inv;
        for (int64_t i = 0; i < inner; ++i) d[ch * inner + i] = s[ch * inner + i] * sc + bb;
      }
    }
  });
  ctx.set_output(0, nn::to_dtype_like(std::move(y), ctx.input(0).dtype()));
}

/// InstanceNormalization (1, 6): per (n, c) plane.
void instance_norm_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  if (x.rank() < 2) nn::bad_node(ctx, "input {} must be [N, C, ...]", shape_str(x.shape()));
  group_normalize(ctx, x.dim(1), false);
}

/// GroupNormalization: opset 18 has scale/bias per group, opset 21 per channel.
void group_norm_kernel(KernelContext& ctx) {
  const int64_t groups = ctx.node().required_attr("num_groups").i;
  const Tensor& scale = ctx.input(1);
  const Tensor& x = ctx.input(0);
  // Opset 18 models sometimes already carry per-channel params; accept either when unambiguous.
  const bool per_group = ctx.opset() < 21 && !(x.rank() >= 2 && scale.numel() == x.dim(1) && x.dim(1) != groups);
  group_normalize(ctx, groups, per_group);
}

/// LpNormalization (1): x / ||x||_p along `axis` (p = 1 or 2; a zero norm leaves zeros).
void lp_norm_kernel(KernelContext& ctx) {
  Tensor x = nn::float_input(ctx, 0);
  const int64_t rank = static_cast<int64_t>(x.rank());
  const int64_t axis = nn::normalize_axis(ctx, ctx.node().attr_int("axis", -1), rank);
  const int64_t p = ctx.node().attr_int("p", 2);
  if (p != 1 && p != 2) nn::bad_node(ctx, "p must be 1 or 2, got {}", p);
  int64_t outer = 1, inner = 1;
  for (int64_t i = 0; i < axis; ++i) outer *= x.dim(static_cast<int>(i));
  for (int64_t i = axis + 1; i < rank; ++i) inner *= x.dim(static_cast<int>(i));
  const int64_t len = x.dim(static_cast<int>(axis));
  Tensor y = Tensor::empty(DataType::kFloat, x.shape());
  const float* xp = x.data<float>();
  float* yp = y.mutable_data<float>();
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t in = 0; in < inner; ++in) {
      const float* s = xp + o * len * inner + in;
      float* d = yp + o * len * inner + in;
      double acc = 0;
      for (int64_t i = 0; i < len; ++i) acc += p == 1 ? std::fabs(s[i * inner]) : double(s[i * inner]) * s[i * inner];
      const double norm = p == 1 ? acc : std::sqrt(acc);
      for (int64_t i = 0; i < len; ++i) d[i * inner] = norm == 0 ? 0.0f : static_cast<float>(s[i * inner] / norm);
    }
  }
  ctx.set_output(0, nn::to_dtype_like(std::move(y), ctx.input(0).dtype()));
}

}  // namespace

/// Registers the normalization family.
void kernels::register_norm_kernels(KernelRegistry& r) {
  r.add("", "BatchNormalization", 1, batch_norm_kernel);
  r.add("", "LayerNormalization", 17, layer_norm_kernel);
  r.add("", "InstanceNormalization", 1, instance_norm_kernel);
  r.add("", "GroupNormalization", 18, group_norm_kernel);
  r.add("", "LpNormalization", 1, lp_norm_kernel);
}

}  // namespace qtool::runtime
