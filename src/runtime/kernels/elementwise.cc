// Unary element-wise math and activations, Clip, IsNaN/IsInf and Not.
//
// Each op is a functor with a templated scalar operator() (float and double; integer types
// where the op is defined on them, kInts = true). One loop (unary_kernel) applies any functor,
// splitting large tensors across the pool. Ops whose functor has a `block(in, out, n)` member
// use Eigen's vectorised array functions for float32 (Exp, Log, Tanh, Sigmoid, Sqrt, Erf).
// float16/bfloat16 are computed in float32 and converted back.
#include <cmath>
#include <limits>
#include <type_traits>

#include <Eigen/Core>
#include <unsupported/Eigen/SpecialFunctions>

#include "kernel_util.h"
#include "kernels.h"

namespace qtool::runtime::kernels {

namespace {

using ArrayMap = Eigen::Map<Eigen::ArrayXf>;
using ConstArrayMap = Eigen::Map<const Eigen::ArrayXf>;

// ---- functors. A functor is built from the node (for its attributes). ----
struct AbsOp {
  static constexpr bool kInts = true;
  explicit AbsOp(const ir::Node&) {}
  template <typename T> T operator()(T x) const {
    if constexpr (std::is_unsigned_v<T>) return x;
    else return x < 0 ? static_cast<T>(-x) : x;
  }
};
struct NegOp {
  static constexpr bool kInts = true;
  explicit NegOp(const ir::Node&) {}
  template <typename T> T operator()(T x) const { return static_cast<T>(-x); }
};
struct SignOp {
  static constexpr bool kInts = true;
  explicit SignOp(const ir::Node&) {}
  template <typename T> T operator()(T x) const { return static_cast<T>((x > T(0)) - (x < T(0))); }
};
struct ReluOp {
  static constexpr bool kInts = true;
  explicit ReluOp(const ir::Node&) {}
  template <typename T> T operator()(T x) const { return x > T(0) ? x : T(0); }
};
struct ExpOp {
  static constexpr bool kInts = false;
  explicit ExpOp(const ir::Node&) {}
  template <typename T> T operator()(T x) const { return std::exp(x); }
  void block(const float* in, float* out, int64_t n) const { ArrayMap(out, n) = ConstArrayMap(in, n).exp(); }
};
struct LogOp {
  static constexpr bool kInts = false;
  explicit LogOp(const ir::Node&) {}
  template <typename T> T operator()(T x) const { return std::log(x); }
  void block(const float* in, float* out, int64_t n) const { ArrayMap(out, n) = ConstArrayMap(in, n).log(); }
};
struct SqrtOp {
  static constexpr bool kInts = false;
  explicit SqrtOp(const ir::Node&) {}
  template <typename T> T operator()(T x) const { return std::sqrt(x); }
  void block(const float* in, float* out, int64_t n) const { ArrayMap(out, n) = ConstArrayMap(in, n).sqrt(); }
};
struct TanhOp {
  static constexpr bool kInts = false;
  explicit TanhOp(const ir::Node&) {}
  template <typename T> T operator()(T x) const { return std::tanh(x); }
  void block(const float* in, float* out, int64_t n) const { ArrayMap(out, n) = ConstArrayMap(in, n).tanh(); }
};
struct SigmoidOp {
  static constexpr bool kInts = false;
  explicit SigmoidOp(const ir::Node&) {}
  template <typename T> T operator()(T x) const { return T(1) / (T(1) + std::exp(-x)); }
  void block(const float* in, float* out, int64_t n) const { ArrayMap(out, n) = ConstArrayMap(in, n).logistic(); }
};
struct ErfOp {
  static constexpr bool kInts = false;
  explicit ErfOp(const ir::Node&) {}
  template <typename T> T operator()(T x) const { return std::erf(x); }
  void block(const float* in, float* out, int64_t n) const { ArrayMap(out, n) = ConstArrayMap(in, n).erf(); }
};

#define QTOOL_SIMPLE_FLOAT_OP(Name, expr)                  \
  struct Name {                                            \
    static constexpr bool kInts = false;                   \
    explicit Name(const ir::Node&) {}                      \
    template <typename T> T operator()(T x) const { return expr; } \
  };
QTOOL_SIMPLE_FLOAT_OP(ReciprocalOp, T(1) / x)
QTOOL_SIMPLE_FLOAT_OP(FloorOp, std::floor(x))
QTOOL_SIMPLE_FLOAT_OP(CeilOp, std::ceil(x))
QTOOL_SIMPLE_FLOAT_OP(RoundOp, std::nearbyint(x))  // half to even under the default rounding mode
QTOOL_SIMPLE_FLOAT_OP(SinOp, std::sin(x))
QTOOL_SIMPLE_FLOAT_OP(CosOp, std::cos(x))
QTOOL_SIMPLE_FLOAT_OP(TanOp, std::tan(x))
QTOOL_SIMPLE_FLOAT_OP(AsinOp, std::asin(x))
QTOOL_SIMPLE_FLOAT_OP(AcosOp, std::acos(x))
QTOOL_SIMPLE_FLOAT_OP(AtanOp, std::atan(x))
QTOOL_SIMPLE_FLOAT_OP(SinhOp, std::sinh(x))
QTOOL_SIMPLE_FLOAT_OP(CoshOp, std::cosh(x))
QTOOL_SIMPLE_FLOAT_OP(AsinhOp, std::asinh(x))
QTOOL_SIMPLE_FLOAT_OP(AcoshOp, std::acosh(x))
QTOOL_SIMPLE_FLOAT_OP(AtanhOp, std::atanh(x))
QTOOL_SIMPLE_FLOAT_OP(SoftsignOp, x / (T(1) + std::abs(x)))
// softplus(x) = log(1 + e^x), written to stay finite for large x.
QTOOL_SIMPLE_FLOAT_OP(SoftplusOp, x > T(0) ? x + std::log1p(std::exp(-x)) : std::log1p(std::exp(x)))
// mish(x) = x * tanh(softplus(x)).
QTOOL_SIMPLE_FLOAT_OP(MishOp, x * std::tanh(x > T(0) ? x + std::log1p(std::exp(-x)) : std::log1p(std::exp(x))))
// hardswish(x) = x * max(0, min(1, x/6 + 1/2)).
QTOOL_SIMPLE_FLOAT_OP(HardSwishOp, x * std::max(T(0), std::min(T(1), x / T(6) + T(0.5))))
#undef QTOOL_SIMPLE_FLOAT_OP

struct LeakyReluOp {
  static constexpr bool kInts = false;
  float alpha;
  explicit LeakyReluOp(const ir::Node& n) : alpha(n.attr_float("alpha", 0.01f)) {}
  template <typename T> T operator()(T x) const { return x >= T(0) ? x : static_cast<T>(alpha) * x; }
};
struct EluOp {
  static constexpr bool kInts = false;
  float alpha;
  explicit EluOp(const ir::Node& n) : alpha(n.attr_float("alpha", 1.0f)) {}
  template <typename T> T operator()(T x) const { return x >= T(0) ? x : static_cast<T>(alpha) * std::expm1(x); }
};
struct CeluOp {
  static constexpr bool kInts = false;
  float alpha;
  explicit CeluOp(const ir::Node& n) : alpha(n.attr_float("alpha", 1.0f)) {}
  template <typename T> T operator()(T x) const {
    const T a = static_cast<T>(alpha);
    return std::max(T(0), x) + std::min(T(0), a * std::expm1(x / a));
  }
};
struct SeluOp {
  static constexpr bool kInts = false;
  float alpha, gamma;
  explicit SeluOp(const ir::Node& n)
      : alpha(n.attr_float("alpha", 1.67326319217681884765625f)), gamma(n.attr_float("gamma", 1.05070102214813232421875f)) {}
  template <typename T> T operator()(T x) const {
    return static_cast<T>(gamma) * (x > T(0) ? x : static_cast<T>(alpha) * (std::exp(x) - T(1)));
  }
};
struct ThresholdedReluOp {
  static constexpr bool kInts = false;
  float alpha;
  explicit ThresholdedReluOp(const ir::Node& n) : alpha(n.attr_float("alpha", 1.0f)) {}
  template <typename T> T operator()(T x) const { return x > static_cast<T>(alpha) ? x : T(0); }
};
struct HardSigmoidOp {
  static constexpr bool kInts = false;
  float alpha, beta;
  explicit HardSigmoidOp(const ir::Node& n) : alpha(n.attr_float("alpha", 0.2f)), beta(n.attr_float("beta", 0.5f)) {}
  template <typename T> T operator()(T x) const {
    return std::max(T(0), std::min(T(1), static_cast<T>(alpha) * x + static_cast<T>(beta)));
  }
};

struct ShrinkOp {
  static constexpr bool kInts = true;
  float lambd, bias;
  explicit ShrinkOp(const ir::Node& n) : lambd(n.attr_float("lambd", 0.5f)), bias(n.attr_float("bias", 0.0f)) {}
  template <typename T> T operator()(T x) const {
    const double v = static_cast<double>(x);
    if (v < -lambd) return static_cast<T>(v + bias);
    if (v > lambd) return static_cast<T>(v - bias);
    return T(0);
  }
};

/// out[i] = op(in[i]) over a contiguous range, through block() when the functor has one.
template <typename T, typename Op>
void unary_range(const Op& op, const T* in, T* out, int64_t n) {
  if constexpr (std::is_same_v<T, float> && requires { op.block(in, out, n); }) {
    op.block(in, out, n);
  } else {
    for (int64_t i = 0; i < n; ++i) out[i] = op(in[i]);
  }
}

/// out = op(x); with `in_place` the result overwrites x's (uniquely owned) storage.
template <typename T, typename Op>
Tensor unary_apply(const Tensor& x, const Op& op, ThreadPool& pool, Tensor* in_place = nullptr) {
  Tensor out = in_place ? std::move(*in_place) : Tensor::empty(x.dtype(), x.shape());
  T* o = out.mutable_data<T>();
  const T* in = in_place ? o : x.data<T>();
  pool.parallel_for(out.numel(), kParallelGrain, [&](int64_t b, int64_t e) { unary_range(op, in + b, o + b, e - b); });
  return out;
}

template <typename Op>
void unary_kernel(KernelContext& ctx) {
  const Op op(ctx.node());
  const DataType t = ctx.input(0).dtype();
  if ((t == DataType::kFloat || t == DataType::kDouble) && ctx.can_reuse_input(0)) {
    Tensor x = ctx.take_input(0);
    ctx.set_output(0, t == DataType::kFloat ? unary_apply<float>(x, op, ctx.pool(), &x)
                                            : unary_apply<double>(x, op, ctx.pool(), &x));
    return;
  }
  const Tensor& x = ctx.input(0);
  if (t == DataType::kFloat) {
    ctx.set_output(0, unary_apply<float>(x, op, ctx.pool()));
  } else if (t == DataType::kDouble) {
    ctx.set_output(0, unary_apply<double>(x, op, ctx.pool()));
  } else if (t == DataType::kFloat16 || t == DataType::kBFloat16) {
    ctx.set_output(0, unary_apply<float>(x.to_float(), op, ctx.pool()).cast(t));
  } else if (Op::kInts && dtype_is_integer(t) && !dtype_is_packed(t)) {
    if constexpr (Op::kInts) {
      ctx.set_output(0, visit_numeric(t, ctx.node(), [&]<typename T>() { return unary_apply<T>(x, op, ctx.pool()); }));
    }
  } else {
    fail(ErrorCode::kUnsupported, "{} does not support element type {}", ctx.node().describe(), dtype_name(t));
  }
}

/// Clip: bounds are attributes min/max before opset 11, optional scalar inputs from 11 on.
void clip_kernel(KernelContext& ctx) {
  const DataType in_type = ctx.input(0).dtype();
  const bool half = in_type == DataType::kFloat16 || in_type == DataType::kBFloat16;
  const bool in_place = !half && ctx.can_reuse_input(0);
  Tensor work = in_place ? ctx.take_input(0) : (half ? ctx.input(0).to_float() : ctx.input(0));
  Tensor out = visit_numeric(work.dtype(), ctx.node(), [&]<typename T>() {
    T lo = std::numeric_limits<T>::lowest(), hi = std::numeric_limits<T>::max();
    if (ctx.opset() < 11) {
      lo = static_cast<T>(ctx.node().attr_float("min", -std::numeric_limits<float>::max()));
      hi = static_cast<T>(ctx.node().attr_float("max", std::numeric_limits<float>::max()));
      if constexpr (std::is_floating_point_v<T>) {
        if (!ctx.node().has_attr("min")) lo = -std::numeric_limits<T>::infinity();
        if (!ctx.node().has_attr("max")) hi = std::numeric_limits<T>::infinity();
      }
    } else {
      if (ctx.has_input(1) && ctx.input(1).numel() > 0) lo = static_cast<T>(scalar_value(ctx.input(1), ctx.node(), "min"));
      if (ctx.has_input(2) && ctx.input(2).numel() > 0) hi = static_cast<T>(scalar_value(ctx.input(2), ctx.node(), "max"));
    }
    Tensor o = in_place ? std::move(work) : Tensor::empty(work.dtype(), work.shape());
    T* po = o.mutable_data<T>();
    const T* in = in_place ? po : work.data<T>();
    ctx.pool().parallel_for(o.numel(), kParallelGrain, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) po[i] = std::min(std::max(in[i], lo), hi);
    });
    return o;
  });
  ctx.set_output(0, half ? out.cast(in_type) : std::move(out));
}

/// IsNaN / IsInf: float in, bool out.
template <bool kNaN>
void float_class_kernel(KernelContext& ctx) {
  const Tensor x = ctx.input(0).to_float();
  const bool neg = ctx.node().attr_int("detect_negative", 1) != 0;
  const bool pos = ctx.node().attr_int("detect_positive", 1) != 0;
  Tensor out = Tensor::empty(DataType::kBool, x.shape());
  const float* in = x.data<float>();
  bool* o = out.mutable_data<bool>();
  for (int64_t i = 0; i < x.numel(); ++i) {
    if constexpr (kNaN) {
      o[i] = std::isnan(in[i]);
    } else {
      o[i] = std::isinf(in[i]) && ((in[i] > 0 && pos) || (in[i] < 0 && neg));
    }
  }
  ctx.set_output(0, std::move(out));
}

void not_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  QTOOL_CHECK(x.dtype() == DataType::kBool, ErrorCode::kInvalidModel, "{} needs a bool input, got {}",
              ctx.node().describe(), dtype_name(x.dtype()));
  Tensor out = Tensor::empty(DataType::kBool, x.shape());
  const bool* in = x.data<bool>();
  bool* o = out.mutable_data<bool>();
  for (int64_t i = 0; i < x.numel(); ++i) o[i] = !in[i];
  ctx.set_output(0, std::move(out));
}

}  // namespace

void register_elementwise_kernels(KernelRegistry& r) {
  r.add("", "Abs", 1, unary_kernel<AbsOp>);
  r.add("", "Neg", 1, unary_kernel<NegOp>);
  r.add("", "Sign", 9, unary_kernel<SignOp>);
  r.add("", "Relu", 1, unary_kernel<ReluOp>);
  r.add("", "Exp", 1, unary_kernel<ExpOp>);
  r.add("", "Log", 1, unary_kernel<LogOp>);
  r.add("", "Sqrt", 1, unary_kernel<SqrtOp>);
  r.add("", "Tanh", 1, unary_kernel<TanhOp>);
  r.add("", "Sigmoid", 1, unary_kernel<SigmoidOp>);
  r.add("", "Erf", 9, unary_kernel<ErfOp>);
  r.add("", "Reciprocal", 1, unary_kernel<ReciprocalOp>);
  r.add("", "Floor", 1, unary_kernel<FloorOp>);
  r.add("", "Ceil", 1, unary_kernel<CeilOp>);
  r.add("", "Round", 11, unary_kernel<RoundOp>);
  r.add("", "Sin", 7, unary_kernel<SinOp>);
  r.add("", "Cos", 7, unary_kernel<CosOp>);
  r.add("", "Tan", 7, unary_kernel<TanOp>);
  r.add("", "Asin", 7, unary_kernel<AsinOp>);
  r.add("", "Acos", 7, unary_kernel<AcosOp>);
  r.add("", "Atan", 7, unary_kernel<AtanOp>);
  r.add("", "Sinh", 9, unary_kernel<SinhOp>);
  r.add("", "Cosh", 9, unary_kernel<CoshOp>);
  r.add("", "Asinh", 9, unary_kernel<AsinhOp>);
  r.add("", "Acosh", 9, unary_kernel<AcoshOp>);
  r.add("", "Atanh", 9, unary_kernel<AtanhOp>);
  r.add("", "Softsign", 1, unary_kernel<SoftsignOp>);
  r.add("", "Softplus", 1, unary_kernel<SoftplusOp>);
  r.add("", "Mish", 18, unary_kernel<MishOp>);
  r.add("", "HardSwish", 14, unary_kernel<HardSwishOp>);
  r.add("", "LeakyRelu", 1, unary_kernel<LeakyReluOp>);
  r.add("", "Elu", 1, unary_kernel<EluOp>);
  r.add("", "Celu", 12, unary_kernel<CeluOp>);
  r.add("", "Selu", 1, unary_kernel<SeluOp>);
  r.add("", "ThresholdedRelu", 10, unary_kernel<ThresholdedReluOp>);
  r.add("", "HardSigmoid", 1, unary_kernel<HardSigmoidOp>);
  r.add("", "Shrink", 9, unary_kernel<ShrinkOp>);
  r.add("", "Clip", 1, clip_kernel);
  r.add("", "IsNaN", 9, float_class_kernel<true>);
  r.add("", "IsInf", 10, float_class_kernel<false>);
  r.add("", "Not", 1, not_kernel);
}

}  // namespace qtool::runtime::kernels
