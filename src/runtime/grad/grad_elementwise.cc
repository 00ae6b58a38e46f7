// Gradients: elementwise family (see grads.h).
//
// A unary op y = f(x) has dL/dx[i] = dL/dy[i] · f'(x[i]). Each op is a small functor
// d(x, y, g) -> g · f'(x) that may use the forward output y where that is cheaper (Sigmoid:
// y(1 − y), Tanh: 1 − y², Exp: y, Sqrt: 1/(2y), Reciprocal: −y²); one loop (unary_grad) applies
// any of them. Kinks (Relu at 0, Clip at its bounds, Abs at 0) take the derivative 0 except
// LeakyRelu, whose forward uses the x ≥ 0 branch at 0. Pow is binary with broadcasting: see
// pow_grad.
#include <cmath>
#include <limits>

#include "../kernels/kernel_util.h"
#include "grad_broadcast.h"
#include "grads.h"

namespace qtool::runtime::grads {

namespace {

// ---- derivative functors: operator()(x, y, g) = g · f'(x) ----
struct ReluD {
  explicit ReluD(const GradContext&) {}
  float operator()(float x, float, float g) const { return x > 0.0f ? g : 0.0f; }
};
/// y = x (x ≥ 0), αx (x < 0).
struct LeakyReluD {
  float alpha;
  explicit LeakyReluD(const GradContext& c) : alpha(c.node().attr_float("alpha", 0.01f)) {}
  float operator()(float x, float, float g) const { return x >= 0.0f ? g : alpha * g; }
};
/// σ'(x) = σ(x)(1 − σ(x)) = y(1 − y).
struct SigmoidD {
  explicit SigmoidD(const GradContext&) {}
  float operator()(float, float y, float g) const { return g * y * (1.0f - y); }
};
/// tanh'(x) = 1 − y².
struct TanhD {
  explicit TanhD(const GradContext&) {}
  float operator()(float, float y, float g) const { return g * (1.0f - y * y); }
};
/// (√x)' = 1 / (2√x) = 0.5 / y.
struct SqrtD {
  explicit SqrtD(const GradContext&) {}
  float operator()(float, float y, float g) const { return 0.5f * g / y; }
};
/// (eˣ)' = y.
struct ExpD {
  explicit ExpD(const GradContext&) {}
  float operator()(float, float y, float g) const { return g * y; }
};
/// (ln x)' = 1/x.
struct LogD {
  explicit LogD(const GradContext&) {}
  float operator()(float x, float, float g) const { return g / x; }
};
struct NegD {
  explicit NegD(const GradContext&) {}
  float operator()(float, float, float g) const { return -g; }
};
/// |x|' = sign(x) (0 at 0).
struct AbsD {
  explicit AbsD(const GradContext&) {}
  float operator()(float x, float, float g) const { return x > 0.0f ? g : (x < 0.0f ? -g : 0.0f); }
};
/// (1/x)' = −1/x² = −y².
struct ReciprocalD {
  explicit ReciprocalD(const GradContext&) {}
  float operator()(float, float y, float g) const { return -g * y * y; }
};
/// erf'(x) = 2/√π · e^(−x²).
struct ErfD {
  explicit ErfD(const GradContext&) {}
  float operator()(float x, float, float g) const { return g * 1.1283791670955126f * std::exp(-x * x); }
};
/// softplus(x) = ln(1 + eˣ), softplus'(x) = σ(x) = 1 / (1 + e^(−x)).
struct SoftplusD {
  explicit SoftplusD(const GradContext&) {}
  float operator()(float x, float, float g) const { return g / (1.0f + std::exp(-x)); }
};
/// y = max(0, min(1, αx + β)): y' = α strictly inside (0, 1), else 0.
struct HardSigmoidD {
  float alpha, beta;
  explicit HardSigmoidD(const GradContext& c)
      : alpha(c.node().attr_float("alpha", 0.2f)), beta(c.node().attr_float("beta", 0.5f)) {}
  float operator()(float x, float, float g) const {
    const float v = alpha * x + beta;
    return v > 0.0f && v < 1.0f ? alpha * g : 0.0f;
  }
};
/// y = x · max(0, min(1, x/6 + 1/2)): y' = 0 (x < −3), x/3 + 1/2 (−3 < x < 3), 1 (x > 3).
struct HardSwishD {
  explicit HardSwishD(const GradContext&) {}
  float operator()(float x, float, float g) const {
    if (x <= -3.0f) return 0.0f;
    if (x >= 3.0f) return g;
    return g * (x / 3.0f + 0.5f);
  }
};
/// Gelu (opset 20). Exact: y = x Φ(x), y' = Φ(x) + x φ(x) with Φ(x) = (1 + erf(x/√2))/2 and
/// φ(x) = e^(−x²/2)/√(2π). approximate="tanh": y = x(1 + tanh u)/2 with u = k(x + c x³),
/// y' = (1 + t)/2 + x (1 − t²) k (1 + 3c x²)/2, t = tanh u, k = √(2/π), c = 0.044715.
struct GeluD {
  bool use_tanh;
  explicit GeluD(const GradContext& c) : use_tanh(c.node().attr_string("approximate", "none") == "tanh") {}
  float operator()(float x, float, float g) const {
    if (use_tanh) {
      constexpr float k = 0.7978845608028654f, c = 0.044715f;
      const float t = std::tanh(k * (x + c * x * x * x));
      return g * (0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * k * (1.0f + 3.0f * c * x * x));
    }
    const float cdf = 0.5f * (1.0f + std::erf(x * 0.7071067811865476f));
    const float pdf = 0.3989422804014327f * std::exp(-0.5f * x * x);
    return g * (cdf + x * pdf);
  }
};

/// dL/dx = d(x, y, dL/dy) element by element; D is built from the context (its attributes).
template <typename D>
void unary_grad(GradContext& ctx) {
  if (!ctx.wants_input_grad(0) || !ctx.has_output_grad(0)) return;
  const D d(ctx);
  const Tensor& x = ctx.input(0);
  const Tensor& y = ctx.output(0);
  const Tensor& g = ctx.output_grad(0);
  QTOOL_CHECK(y.dtype() == DataType::kFloat && y.shape() == x.shape(), ErrorCode::kInternal,
              "gradient of {}: output {} {} does not match input {}", ctx.node().describe(), dtype_name(y.dtype()),
              shape_str(y.shape()), shape_str(x.shape()));
  Tensor dx = Tensor::empty(DataType::kFloat, x.shape());
  const float* px = x.data<float>();
  const float* py = y.data<float>();
  const float* pg = g.data<float>();
  float* po = dx.mutable_data<float>();
  ctx.pool().parallel_for(dx.numel(), kernels::kParallelGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) po[i] = d(px[i], py[i], pg[i]);
  });
  ctx.set_input_grad(0, std::move(dx));
}

/// Clip: y = min(max(x, lo), hi); dy/dx = 1 for lo < x < hi, 0 outside (and at the bounds).
/// Bounds are attributes before opset 11 (absent = unbounded), optional scalar inputs from 11
/// (absent or empty = unbounded). The bounds get no gradient.
void clip_grad(GradContext& ctx) {
  if (!ctx.wants_input_grad(0) || !ctx.has_output_grad(0)) return;
  const ir::Node& n = ctx.node();
  float lo = -std::numeric_limits<float>::infinity(), hi = std::numeric_limits<float>::infinity();
  if (ctx.opset() < 11) {
    if (n.has_attr("min")) lo = n.attr_float("min", lo);
    if (n.has_attr("max")) hi = n.attr_float("max", hi);
  } else {
    if (ctx.has_input(1) && ctx.input(1).numel() > 0)
      lo = static_cast<float>(kernels::scalar_value(ctx.input(1), n, "min"));
    if (ctx.has_input(2) && ctx.input(2).numel() > 0)
      hi = static_cast<float>(kernels::scalar_value(ctx.input(2), n, "max"));
  }
  const Tensor& x = ctx.input(0);
  const Tensor& g = ctx.output_grad(0);
  Tensor dx = Tensor::empty(DataType::kFloat, x.shape());
  const float* px = x.data<float>();
  const float* pg = g.data<float>();
  float* po = dx.mutable_data<float>();
  ctx.pool().parallel_for(dx.numel(), kernels::kParallelGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) po[i] = px[i] > lo && px[i] < hi ? pg[i] : 0.0f;
  });
  ctx.set_input_grad(0, std::move(dx));
}

/// Identity (and Dropout at inference, output 0): dL/dx = dL/dy. Dropout's mask output and its
/// ratio/training_mode inputs carry no gradient.
void identity_grad(GradContext& ctx) {
  if (!ctx.wants_input_grad(0) || !ctx.has_output_grad(0)) return;
  ctx.set_input_grad(0, ctx.output_grad(0));
}

/// Cast float32 -> float32 is the identity; a cast to any other type ends the gradient path (the
/// engine only differentiates float32), so there is nothing to do.
void cast_grad(GradContext& ctx) {
  const int64_t to = ctx.node().attr_int("to", 0);
  if (static_cast<DataType>(to) != DataType::kFloat || ctx.input(0).dtype() != DataType::kFloat) return;
  identity_grad(ctx);
}

/// Pow: y = a^b with numpy broadcasting (before opset 7: legacy axis alignment of b).
///   dL/da = reduce(g · b · a^(b−1)),   dL/db = reduce(g · a^b · ln a) where a > 0, 0 elsewhere
/// (a^b is not real-differentiable in b for a ≤ 0). b may have its own (non-float) type from
/// opset 12; it then gets no gradient but its values are used for dL/da.
void pow_grad(GradContext& ctx) {
  if (!ctx.has_output_grad(0)) return;
  const bool want_a = ctx.wants_input_grad(0), want_b = ctx.wants_input_grad(1);
  if (!want_a && !want_b) return;
  const Tensor& a = ctx.input(0);
  const Tensor& g = ctx.output_grad(0);
  Tensor b = legacy_aligned_b(ctx);
  if (b.dtype() != DataType::kFloat) b = b.to_float();
  if (want_a) {
    Tensor full = broadcast_map<float, float>(
        a, b, g, ctx.pool(), [](float x, float e, float gv) { return gv * e * std::pow(x, e - 1.0f); });
    ctx.set_input_grad(0, reduce_to_shape(full, a.shape()));
  }
  if (want_b) {
    Tensor full = broadcast_map<float, float>(a, b, g, ctx.pool(), [](float x, float e, float gv) {
      return x > 0.0f ? gv * std::pow(x, e) * std::log(x) : 0.0f;
    });
    ctx.set_input_grad(1, reduce_to_input(full, b, ctx.input(1).shape()));
  }
}

}  // namespace

void register_elementwise_gradients(GradRegistry& r) {
  r.add("", "Relu", 1, unary_grad<ReluD>);
  r.add("", "LeakyRelu", 1, unary_grad<LeakyReluD>);
  r.add("", "Clip", 1, clip_grad);
  r.add("", "Sigmoid", 1, unary_grad<SigmoidD>);
  r.add("", "Tanh", 1, unary_grad<TanhD>);
  r.add("", "Sqrt", 1, unary_grad<SqrtD>);
  r.add("", "Exp", 1, unary_grad<ExpD>);
  r.add("", "Log", 1, unary_grad<LogD>);
  r.add("", "Neg", 1, unary_grad<NegD>);
  r.add("", "Abs", 1, unary_grad<AbsD>);
  r.add("", "Reciprocal", 1, unary_grad<ReciprocalD>);
  r.add("", "Erf", 9, unary_grad<ErfD>);
  r.add("", "Softplus", 1, unary_grad<SoftplusD>);
  r.add("", "HardSigmoid", 1, unary_grad<HardSigmoidD>);
  r.add("", "HardSwish", 14, unary_grad<HardSwishD>);
  r.add("", "Gelu", 20, unary_grad<GeluD>);
  r.add("", "Identity", 1, identity_grad);
  r.add("", "Dropout", 1, identity_grad);
  r.add("", "Cast", 1, cast_grad);
  r.add("", "Pow", 1, pow_grad);
}

}  // namespace qtool::runtime::grads
