// Binary and ternary element-wise ops with multidirectional (numpy) broadcasting:
// arithmetic (Add, Sub, Mul, Div, Pow, Mod), variadic Max/Min/Sum/Mean, BitShift, logic
// (And, Or, Xor), comparisons and Where.
//
// Every op is a small functor; one templated loop (broadcast_binary) applies any of them. It
// takes a flat path when neither input is broadcast or one is a scalar, and otherwise walks
// the collapsed BroadcastPlan row by row with the innermost stride pattern specialised
// ((1,1), (1,0), (0,1)), so the inner loops vectorise. Large outputs are split across the pool.
// float16/bfloat16 inputs are computed in float32 and converted back.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "kernel_util.h"
#include "kernels.h"
#include "nn_util.h"

namespace qtool::runtime::kernels {

namespace {

/// One innermost row: o[i] = op(a[i*sa], b[i*sb]) with the common stride patterns specialised.
template <typename T, typename R, typename Op>
inline void binary_row(const T* a, int64_t sa, const T* b, int64_t sb, R* o, int64_t n, const Op& op) {
  if (sa == 1 && sb == 1) {
    for (int64_t i = 0; i < n; ++i) o[i] = op(a[i], b[i]);
  } else if (sa == 1 && sb == 0) {
    const T bv = *b;
    for (int64_t i = 0; i < n; ++i) o[i] = op(a[i], bv);
  } else if (sa == 0 && sb == 1) {
    const T av = *a;
    for (int64_t i = 0; i < n; ++i) o[i] = op(av, b[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) o[i] = op(a[i * sa], b[i * sb]);
  }
}

/// out = op(a, b) broadcast; T is the input storage type, R the output's.
/// `storage`, when given, is a uniquely owned input (a or b itself) whose buffer becomes the
/// output if its shape and dtype fit: element k of the output only reads element k of a
/// same-shaped input, so writing in place is safe.
template <typename T, typename R, typename Op>
Tensor broadcast_binary(const Tensor& a, const Tensor& b, const ir::Node& node, ThreadPool& pool, const Op& op,
                        DataType out_dtype = dtype_of<R>(), Tensor* storage = nullptr) {
  // Copies: `storage` may be a or b, and is moved from below.
  const Shape a_shape = a.shape(), b_shape = b.shape();
  const int64_t na = a.numel(), nb = b.numel();
  const T* pa = reinterpret_cast<const T*>(a.raw());
  const T* pb = reinterpret_cast<const T*>(b.raw());
  Shape out_shape = a_shape == b_shape ? a_shape : broadcast_shapes(a_shape, b_shape, node);
  Tensor out;
  if (storage && storage->dtype() == out_dtype && storage->shape() == out_shape) {
    out = std::move(*storage);
  } else {
    out = Tensor::empty(out_dtype, std::move(out_shape));
  }
  const int64_t n = out.numel();
  if (n == 0) return out;
  R* po = reinterpret_cast<R*>(out.mutable_raw());
  int64_t sa = -1, sb = -1;
  if (na == n && nb == n) {
    sa = 1, sb = 1;
  } else if (na == n && nb == 1) {
    sa = 1, sb = 0;
  } else if (na == 1 && nb == n) {
    sa = 0, sb = 1;
  }
  if (sa >= 0) {
    pool.parallel_for(n, kParallelGrain, [&](int64_t begin, int64_t end) {
      binary_row(pa + begin * sa, sa, pb + begin * sb, sb, po + begin, end - begin, op);
    });
    return out;
  }
  const BroadcastPlan<2> plan({&a_shape, &b_shape}, out.shape());
  pool.parallel_for(n, kParallelGrain, [&](int64_t begin, int64_t end) {
    plan.for_rows(begin, end, [&](int64_t o, const std::array<int64_t, 2>& off, int64_t len,
                                  const std::array<int64_t, 2>& st) {
      binary_row(pa + off[0], st[0], pb + off[1], st[1], po + o, len, op);
    });
  });
  return out;
}

bool is_half(DataType t) { return t == DataType::kFloat16 || t == DataType::kBFloat16; }

// ---- functors ----
struct AddOp {
  template <typename T> T operator()(T a, T b) const { return static_cast<T>(a + b); }
};
struct SubOp {
  template <typename T> T operator()(T a, T b) const { return static_cast<T>(a - b); }
};
struct MulOp {
  template <typename T> T operator()(T a, T b) const { return static_cast<T>(a * b); }
};
struct DivOp {
  template <typename T> T operator()(T a, T b) const {
    if constexpr (std::is_integral_v<T>) {
      return b == 0 ? T(0) : static_cast<T>(a / b);
    } else {
      return a / b;
    }
  }
};
struct MaxOp {
  template <typename T> T operator()(T a, T b) const {
    if constexpr (std::is_floating_point_v<T>) {
      if (std::isnan(a) || std::isnan(b)) return std::numeric_limits<T>::quiet_NaN();
    }
    return a < b ? b : a;
  }
};
struct MinOp {
  template <typename T> T operator()(T a, T b) const {
    if constexpr (std::is_floating_point_v<T>) {
      if (std::isnan(a) || std::isnan(b)) return std::numeric_limits<T>::quiet_NaN();
    }
    return b < a ? b : a;
  }
};
struct PowOp {
  template <typename T> T operator()(T a, T b) const {
    if constexpr (std::is_floating_point_v<T>) {
      return std::pow(a, b);
    } else {
      if (b < 0) return a == 1 ? T(1) : T(0);
      T r = 1, base = a;
      for (auto e = b; e > 0; e /= 2) {
        if (e & 1) r = static_cast<T>(r * base);
        base = static_cast<T>(base * base);
      }
      return r;
    }
  }
};
/// PRelu: x < 0 ? slope * x : x, slope broadcast to x.
struct PReluOp {
  template <typename T> T operator()(T x, T slope) const { return x < T(0) ? static_cast<T>(slope * x) : x; }
};
struct SquareOp {  // Pow with exponent 2
  template <typename T> T operator()(T a, T) const { return a * a; }
};
/// Mod: fmod=1 is C's fmod (sign of the dividend); fmod=0 takes the sign of the divisor (Python).
struct ModOp {
  bool c_fmod = false;
  template <typename T> T operator()(T a, T b) const {
    if constexpr (std::is_floating_point_v<T>) {
      T r = std::fmod(a, b);
      if (!c_fmod && r != 0 && ((r < 0) != (b < 0))) r += b;
      return r;
    } else {
      if (b == 0) return T(0);
      T r = static_cast<T>(a % b);
      if constexpr (std::is_signed_v<T>) {
        if (!c_fmod && r != 0 && ((r < 0) != (b < 0))) r = static_cast<T>(r + b);
      }
      return r;
    }
  }
};
struct ShiftOp {
  bool left = true;
  template <typename T> T operator()(T a, T b) const {
    if (b >= static_cast<T>(sizeof(T) * 8)) return T(0);
    return left ? static_cast<T>(a << b) : static_cast<T>(a >> b);
  }
};
struct AndOp {
  bool operator()(bool a, bool b) const { return a && b; }
};
struct OrOp {
  bool operator()(bool a, bool b) const { return a || b; }
};
struct XorOp {
  bool operator()(bool a, bool b) const { return a != b; }
};
struct EqualOp {
  template <typename T> bool operator()(T a, T b) const { return a == b; }
};
struct LessOp {
  template <typename T> bool operator()(T a, T b) const { return a < b; }
};
struct LessEqOp {
  template <typename T> bool operator()(T a, T b) const { return a <= b; }
};
struct GreaterOp {
  template <typename T> bool operator()(T a, T b) const { return a > b; }
};
struct GreaterEqOp {
  template <typename T> bool operator()(T a, T b) const { return a >= b; }
};

/// Opset < 7 Add/Sub/Mul/Div/Pow: with broadcast=1, B is aligned to A at `axis` (default: suffix).
Tensor legacy_align(const KernelContext& ctx, const Tensor& a, const Tensor& b) {
  const ir::Node& n = ctx.node();
  if (ctx.opset() >= 7 || n.attr_int("broadcast", 0) == 0 || !n.has_attr("axis")) return b;
  const int64_t axis = normalize_axis(n.attr_int("axis", 0), static_cast<int64_t>(a.rank()), n);
  Shape s = b.shape();
  while (static_cast<int64_t>(s.size()) + axis < static_cast<int64_t>(a.rank())) s.push_back(1);
  return b.reshaped(s);
}

/// Arithmetic op: same-type inputs, result of the same type.
template <typename Op>
Tensor arith(const KernelContext& ctx, const Tensor& a, const Tensor& b, const Op& op, Tensor* storage = nullptr) {
  if (a.dtype() != b.dtype()) {
    fail(ErrorCode::kInvalidModel, "{}: input types differ ({} and {})", ctx.node().describe(), dtype_name(a.dtype()), dtype_name(b.dtype()));
  }
  if (is_half(a.dtype())) {
    return arith(ctx, a.to_float(), b.to_float(), op).cast(a.dtype());
  }
  return visit_numeric(a.dtype(), ctx.node(), [&]<typename T>() {
    return broadcast_binary<T, T>(a, b, ctx.node(), ctx.pool(), op, dtype_of<T>(), storage);
  });
}

/// Add/Sub/Mul/Div: when an input of the output's size dies here, its buffer holds the result.
template <typename Op>
void arith_kernel(KernelContext& ctx) {
  const DataType t = ctx.input(0).dtype();
  if (ctx.opset() >= 7 && t == ctx.input(1).dtype() && !is_half(t)) {
    const int64_t n = std::max(ctx.input(0).numel(), ctx.input(1).numel());
    for (size_t i : {size_t{0}, size_t{1}}) {
      if (!ctx.can_reuse_input(i) || ctx.input(i).numel() != n) continue;
      Tensor own = ctx.take_input(i);
      const Tensor& other = ctx.input(1 - i);
      ctx.set_output(0, i == 0 ? arith(ctx, own, other, Op{}, &own) : arith(ctx, other, own, Op{}, &own));
      return;
    }
  }
  const Tensor& a = ctx.input(0);
  ctx.set_output(0, arith(ctx, a, legacy_align(ctx, a, ctx.input(1)), Op{}));
}

void pow_kernel(KernelContext& ctx) {
  const Tensor& a = ctx.input(0);
  Tensor b = legacy_align(ctx, a, ctx.input(1));
  if (b.dtype() != a.dtype()) b = b.cast(a.dtype());  // opset 12+: exponent may have its own type
  if (b.numel() == 1 && dtype_is_float(a.dtype()) && b.get_as_double(0) == 2.0) {
    ctx.set_output(0, arith(ctx, a, b, SquareOp{}));
  } else {
    ctx.set_output(0, arith(ctx, a, b, PowOp{}));
  }
}

void prelu_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  Tensor slope = ctx.input(1);
  // Opset < 7 (and some exporters): a [C] slope for an [N, C, ...] input means per channel.
  if (slope.rank() == 1 && x.rank() > 2 && slope.dim(0) == x.dim(1) && slope.dim(0) != x.dim(-1)) {
    Shape s{slope.dim(0)};
    for (size_t d = 2; d < x.rank(); ++d) s.push_back(1);
    slope = slope.reshaped(s);
  }
  Tensor out = arith(ctx, x, slope, PReluOp{});
  QTOOL_CHECK(out.shape() == x.shape(), ErrorCode::kInvalidModel, "{}: slope {} does not broadcast to {}",
              ctx.node().describe(), shape_str(ctx.input(1).shape()), shape_str(x.shape()));
  ctx.set_output(0, std::move(out));
}

void mod_kernel(KernelContext& ctx) {
  ModOp op;
  op.c_fmod = ctx.node().attr_int("fmod", 0) != 0;
  ctx.set_output(0, arith(ctx, ctx.input(0), ctx.input(1), op));
}

void bitshift_kernel(KernelContext& ctx) {
  ShiftOp op;
  op.left = ctx.node().attr_string("direction", "") == "LEFT";
  const Tensor& a = ctx.input(0);
  const Tensor& b = ctx.input(1);
  Tensor out;
  switch (a.dtype()) {
    case DataType::kUint8: out = broadcast_binary<uint8_t, uint8_t>(a, b, ctx.node(), ctx.pool(), op); break;
    case DataType::kUint16: out = broadcast_binary<uint16_t, uint16_t>(a, b, ctx.node(), ctx.pool(), op); break;
    case DataType::kUint32: out = broadcast_binary<uint32_t, uint32_t>(a, b, ctx.node(), ctx.pool(), op); break;
    case DataType::kUint64: out = broadcast_binary<uint64_t, uint64_t>(a, b, ctx.node(), ctx.pool(), op); break;
    default:
      fail(ErrorCode::kUnsupported, "BitShift of {} is not supported", dtype_name(a.dtype()));
  }
  ctx.set_output(0, std::move(out));
}

/// Max/Min/Sum/Mean: a left fold of the broadcasting binary op over all inputs.
template <typename Op>
Tensor fold_inputs(KernelContext& ctx) {
  Tensor acc = ctx.input(0);
  for (size_t i = 1; i < ctx.num_inputs(); ++i) acc = arith(ctx, acc, ctx.input(i), Op{});
  return acc;
}

template <typename Op>
void variadic_kernel(KernelContext& ctx) {
  Tensor acc = fold_inputs<Op>(ctx);
  if (ctx.num_inputs() == 1) acc = acc.clone();
  ctx.set_output(0, std::move(acc));
}

void mean_kernel(KernelContext& ctx) {
  Tensor acc = fold_inputs<AddOp>(ctx);
  Tensor count = Tensor::scalar<double>(static_cast<double>(ctx.num_inputs())).cast(acc.dtype());
  ctx.set_output(0, arith(ctx, acc, count, DivOp{}));
}

template <typename Op>
void logic_kernel(KernelContext& ctx) {
  const Tensor& a = ctx.input(0);
  const Tensor& b = ctx.input(1);
  QTOOL_CHECK(a.dtype() == DataType::kBool && b.dtype() == DataType::kBool, ErrorCode::kInvalidModel,
              "{} needs bool inputs, got {} and {}", ctx.node().describe(),
              dtype_name(a.dtype()), dtype_name(b.dtype()));
  ctx.set_output(0, broadcast_binary<bool, bool>(a, b, ctx.node(), ctx.pool(), Op{}));
}

template <typename Op>
void compare_kernel(KernelContext& ctx) {
  Tensor a = ctx.input(0);
  Tensor b = ctx.input(1);
  if (a.dtype() != b.dtype()) {
    fail(ErrorCode::kInvalidModel, "{}: input types differ ({} and {})", ctx.node().describe(), dtype_name(a.dtype()), dtype_name(b.dtype()));
  }
  if (a.dtype() == DataType::kString) {  // Equal on strings
    const Shape out_shape = broadcast_shapes(a.shape(), b.shape(), ctx.node());
    QTOOL_CHECK(a.shape() == b.shape(), ErrorCode::kUnsupported, "broadcast string comparison is not supported");
    Tensor out = Tensor::empty(DataType::kBool, out_shape);
    bool* o = out.mutable_data<bool>();
    for (int64_t i = 0; i < out.numel(); ++i) o[i] = Op{}(a.strings()[i], b.strings()[i]);
    ctx.set_output(0, std::move(out));
    return;
  }
  if (is_half(a.dtype())) {
    a = a.to_float();
    b = b.to_float();
  }
  if (a.dtype() == DataType::kBool) {
    ctx.set_output(0, broadcast_binary<bool, bool>(a, b, ctx.node(), ctx.pool(), Op{}));
    return;
  }
  ctx.set_output(0, visit_numeric(a.dtype(), ctx.node(), [&]<typename T>() {
                   return broadcast_binary<T, bool>(a, b, ctx.node(), ctx.pool(), Op{});
                 }));
}

/// One innermost Where row with strides known to be 0 or 1 at compile time (vectorises).
template <typename U, int kC, int kX, int kY>
void where_row_fixed(const bool* c, const U* x, const U* y, U* o, int64_t n) {
  for (int64_t i = 0; i < n; ++i) o[i] = c[i * kC] ? x[i * kX] : y[i * kY];
}

/// o[i] = c[i*sc] ? x[i*sx] : y[i*sy], with the 0/1 stride patterns (same shape, a scalar or a
/// broadcast row/column such as an attention mask) specialised.
template <typename U>
void where_row(const bool* c, int64_t sc, const U* x, int64_t sx, const U* y, int64_t sy, U* o, int64_t n) {
  if ((sc | sx | sy) & ~int64_t{1}) {
    for (int64_t i = 0; i < n; ++i) o[i] = c[i * sc] ? x[i * sx] : y[i * sy];
    return;
  }
  if constexpr (sizeof(U) == 4) {
    if (sc == 1 && n >= 8 &&
        nn::where4_avx2(c, reinterpret_cast<const uint32_t*>(x), sx, reinterpret_cast<const uint32_t*>(y), sy,
                        reinterpret_cast<uint32_t*>(o), n)) {
      return;
    }
  }
  switch (sc * 4 + sx * 2 + sy) {
    case 0: std::fill(o, o + n, *c ? *x : *y); return;
    case 1: where_row_fixed<U, 0, 0, 1>(c, x, y, o, n); return;
    case 2: where_row_fixed<U, 0, 1, 0>(c, x, y, o, n); return;
    case 3: where_row_fixed<U, 0, 1, 1>(c, x, y, o, n); return;
    case 4: where_row_fixed<U, 1, 0, 0>(c, x, y, o, n); return;
    case 5: where_row_fixed<U, 1, 0, 1>(c, x, y, o, n); return;
    case 6: where_row_fixed<U, 1, 1, 0>(c, x, y, o, n); return;
    default: where_row_fixed<U, 1, 1, 1>(c, x, y, o, n); return;
  }
}

/// Where(cond, x, y): three-way broadcast; moves elements by size, so any dtype works.
void where_kernel(KernelContext& ctx) {
  const Tensor& c = ctx.input(0);
  const Tensor& x = ctx.input(1);
  const Tensor& y = ctx.input(2);
  QTOOL_CHECK(c.dtype() == DataType::kBool, ErrorCode::kInvalidModel, "{}: condition must be bool, got {}",
              ctx.node().describe(), dtype_name(c.dtype()));
  QTOOL_CHECK(x.dtype() == y.dtype(), ErrorCode::kInvalidModel, "{}: X is {} but Y is {}",
              ctx.node().describe(), dtype_name(x.dtype()), dtype_name(y.dtype()));
  const Shape out_shape =
      broadcast_shapes(broadcast_shapes(c.shape(), x.shape(), ctx.node()), y.shape(), ctx.node());
  const int64_t n = shape_numel(out_shape);
  if (n == 0) {
    ctx.set_output(0, Tensor::empty(x.dtype(), out_shape));
    return;
  }
  const BroadcastPlan<3> plan({&c.shape(), &x.shape(), &y.shape()}, out_shape);
  const bool* pc = c.data<bool>();
  if (x.dtype() != DataType::kString) {
    const DataType dtype = x.dtype();
    const uint8_t* raw_x = x.raw();
    const uint8_t* raw_y = y.raw();
    // Output element k reads only element k of a same-shaped X or Y, so a dying one can hold the
    // result (x and y are not used after the take; the raw pointers stay valid).
    Tensor out;
    for (size_t i : {size_t{1}, size_t{2}}) {
      if (ctx.can_reuse_input(i) && ctx.input(i).shape() == out_shape) {
        out = ctx.take_input(i);
        break;
      }
    }
    if (!out.defined()) out = Tensor::empty(dtype, out_shape);
    visit_by_size(dtype, ctx.node(), [&]<typename U>() {
      const U* px = reinterpret_cast<const U*>(raw_x);
      const U* py = reinterpret_cast<const U*>(raw_y);
      U* po = mutable_raw_as<U>(out);
      ctx.pool().parallel_for(n, kParallelGrain, [&](int64_t begin, int64_t end) {
        plan.for_rows(begin, end, [&](int64_t o, const std::array<int64_t, 3>& off, int64_t len,
                                      const std::array<int64_t, 3>& st) {
          where_row<U>(pc + off[0], st[0], px + off[1], st[1], py + off[2], st[2], po + o, len);
        });
      });
    });
    ctx.set_output(0, std::move(out));
    return;
  }
  Tensor out = Tensor::empty(x.dtype(), out_shape);
  {
    auto& os = out.mutable_strings();
    plan.for_rows(0, n, [&](int64_t o, const std::array<int64_t, 3>& off, int64_t len,
                            const std::array<int64_t, 3>& st) {
      for (int64_t i = 0; i < len; ++i) {
        os[o + i] = pc[off[0] + i * st[0]] ? x.strings()[off[1] + i * st[1]] : y.strings()[off[2] + i * st[2]];
      }
    });
  }
  ctx.set_output(0, std::move(out));
}

}  // namespace

void register_binary_kernels(KernelRegistry& r) {
  for (int v : {1, 7}) {
    r.add("", "Add", v, arith_kernel<AddOp>);
    r.add("", "Sub", v, arith_kernel<SubOp>);
    r.add("", "Mul", v, arith_kernel<MulOp>);
    r.add("", "Div", v, arith_kernel<DivOp>);
    r.add("", "Pow", v, pow_kernel);
  }
  r.add("", "Mod", 10, mod_kernel);
  r.add("", "PRelu", 1, prelu_kernel);
  r.add("", "BitShift", 11, bitshift_kernel);
  r.add("", "Max", 1, variadic_kernel<MaxOp>);
  r.add("", "Min", 1, variadic_kernel<MinOp>);
  r.add("", "Sum", 1, variadic_kernel<AddOp>);
  r.add("", "Mean", 1, mean_kernel);
  r.add("", "And", 1, logic_kernel<AndOp>);
  r.add("", "Or", 1, logic_kernel<OrOp>);
  r.add("", "Xor", 1, logic_kernel<XorOp>);
  r.add("", "Equal", 1, compare_kernel<EqualOp>);
  r.add("", "Less", 1, compare_kernel<LessOp>);
  r.add("", "LessOrEqual", 12, compare_kernel<LessEqOp>);
  r.add("", "Greater", 1, compare_kernel<GreaterOp>);
  r.add("", "GreaterOrEqual", 12, compare_kernel<GreaterEqOp>);
  r.add("", "Where", 9, where_kernel);
}

}  // namespace qtool::runtime::kernels
