// Reductions: ReduceSum/Mean/Max/Min/Prod/L1/L2/LogSum/LogSumExp/SumSquare and ArgMax/ArgMin.
//
// A reduction is pre(x) folded with combine() into the output element, then post():
//   L1 = sum |x|, L2 = sqrt(sum x²), SumSquare = sum x², LogSum = log(sum x),
//   LogSumExp = m + log(sum exp(x - m)) with m the max (for stability), Mean = sum / count.
// Axes come from the attribute before opset 13 (ReduceSum) or 18 (the others) and from the
// second input after; no axes reduce everything unless noop_with_empty_axes is set. The input
// is walked once with the output's strides (0 on reduced axes) through the shared
// BroadcastPlan, or as (outer, reduced, inner) blocks when the reduced axes are adjacent.
#include <cmath>
#include <limits>

#include "kernel_util.h"
#include "kernels.h"

namespace qtool::runtime::kernels {

namespace {

enum class Red { kSum, kMean, kMax, kMin, kProd, kL1, kL2, kLogSum, kLogSumExp, kSumSquare };

template <Red R, typename A>
A init_value() {
  if constexpr (R == Red::kMax) return std::numeric_limits<A>::has_infinity ? -std::numeric_limits<A>::infinity()
                                                                          : std::numeric_limits<A>::lowest();
  else if constexpr (R == Red::kMin) return std::numeric_limits<A>::has_infinity ? std::numeric_limits<A>::infinity()
                                                                               : std::numeric_limits<A>::max();
  else if constexpr (R == Red::kProd) return A(1);
  else return A(0);
}

template <Red R, typename A>
inline A combine(A acc, A v) {
  if constexpr (R == Red::kMax) return v > acc || std::isnan(static_cast<double>(v)) ? v : acc;
  else if constexpr (R == Red::kMin) return v < acc || std::isnan(static_cast<double>(v)) ? v : acc;
  else if constexpr (R == Red::kProd) return acc * v;
  else return acc + v;
}

template <Red R, typename A>
inline A pre(A x) {
  if constexpr (R == Red::kL1) return x < A(0) ? -x : x;
  else if constexpr (R == Red::kL2 || R == Red::kSumSquare) return x * x;
  else return x;
}

/// Reduces x (element type T, accumulator A) over `reduce` (flags per axis) into `out_shape`
/// (keepdims form). LogSumExp is handled by the caller (max pass, then a sum of exp).
template <Red R, typename T, typename A>
std::vector<A> reduce_raw(const Tensor& x, const std::vector<char>& reduce, const Shape& keep_shape,
                          const std::vector<A>* shift) {
  const int64_t out_n = shape_numel(keep_shape);
  std::vector<A> acc(out_n, init_value<R, A>());
  const T* p = x.data<T>();
  if (x.numel() == 0) return acc;
  auto value = [&](int64_t i, int64_t o) -> A {
    A v = static_cast<A>(p[i]);
    if constexpr (R == Red::kLogSumExp) v = std::exp(v - (*shift)[o]);
    return pre<R>(v);
  };
  // Adjacent reduced axes: (outer, red, inner) blocks.
  int first = -1, last = -1;
  for (size_t d = 0; d < reduce.size(); ++d) {
    if (reduce[d] && x.shape()[d] != 1) {
      if (first < 0) first = static_cast<int>(d);
      last = static_cast<int>(d);
    }
  }
  bool adjacent = true;
  for (int d = first; d >= 0 && d <= last; ++d) adjacent = adjacent && (reduce[d] || x.shape()[d] == 1);
  if (adjacent && first >= 0) {
    int64_t outer = 1, red = 1, inner = 1;
    for (int d = 0; d < first; ++d) outer *= x.shape()[d];
    for (int d = first; d <= last; ++d) red *= x.shape()[d];
    for (size_t d = last + 1; d < reduce.size(); ++d) inner *= x.shape()[d];
    for (int64_t o = 0; o < outer; ++o) {
      for (int64_t r = 0; r < red; ++r) {
        const int64_t base = (o * red + r) * inner;
        for (int64_t i = 0; i < inner; ++i) acc[o * inner + i] = combine<R>(acc[o * inner + i], value(base + i, o * inner + i));
      }
    }
    return acc;
  }
  const BroadcastPlan<1> plan({&keep_shape}, x.shape());
  plan.for_rows(0, x.numel(), [&](int64_t pos, const std::array<int64_t, 1>& off, int64_t len,
                                  const std::array<int64_t, 1>& st) {
    for (int64_t i = 0; i < len; ++i) {
      const int64_t o = off[0] + i * st[0];
      acc[o] = combine<R>(acc[o], value(pos + i, o));
    }
  });
  return acc;
}

template <Red R>
void reduce_kernel(KernelContext& ctx) {
  const ir::Node& n = ctx.node();
  const Tensor& in = ctx.input(0);
  const int64_t r = static_cast<int64_t>(in.rank());
  const int input_since = R == Red::kSum ? 13 : 18;
  bool present = false;
  std::vector<int64_t> axes = axes_from(ctx, ctx.opset() >= input_since, 1, "axes", &present);
  const bool keepdims = n.attr_int("keepdims", 1) != 0;
  if (axes.empty() && n.attr_int("noop_with_empty_axes", 0) != 0) {
    ctx.set_output(0, in);
    return;
  }
  std::vector<char> reduce(r, axes.empty() ? 1 : 0);
  for (int64_t a : axes) {
    const int64_t d = normalize_axis(a, r, n);  // a scalar accepts axis 0 and reduces to itself
    if (d < r) reduce[d] = 1;
  }
  Shape keep_shape(in.shape()), out_shape;
  int64_t count = 1;
  for (int64_t d = 0; d < r; ++d) {
    if (reduce[d]) {
      count *= in.shape()[d];
      keep_shape[d] = 1;
      if (keepdims) out_shape.push_back(1);
    } else {
      out_shape.push_back(in.shape()[d]);
    }
  }
  const bool half = in.dtype() == DataType::kFloat16 || in.dtype() == DataType::kBFloat16;
  const Tensor x = half ? in.to_float() : in;
  Tensor out = visit_numeric(x.dtype(), n, [&]<typename T>() {
    using A = std::conditional_t<std::is_floating_point_v<T>, T,
                                 std::conditional_t<std::is_signed_v<T>, int64_t, uint64_t>>;
    std::vector<A> acc;
    if constexpr (R == Red::kLogSumExp) {
      std::vector<A> mx = reduce_raw<Red::kMax, T, A>(x, reduce, keep_shape, nullptr);
      for (auto& m : mx) {
        if (!std::isfinite(static_cast<double>(m))) m = A(0);
      }
      acc = reduce_raw<R, T, A>(x, reduce, keep_shape, &mx);
      for (size_t i = 0; i < acc.size(); ++i) acc[i] = static_cast<A>(std::log(static_cast<double>(acc[i])) + mx[i]);
    } else {
      acc = reduce_raw<R, T, A>(x, reduce, keep_shape, nullptr);
      for (auto& v : acc) {
        if constexpr (R == Red::kMean) v = count ? static_cast<A>(v / static_cast<A>(count)) : v;
        else if constexpr (R == Red::kL2) v = static_cast<A>(std::sqrt(static_cast<double>(v)));
        else if constexpr (R == Red::kLogSum) v = static_cast<A>(std::log(static_cast<double>(v)));
      }
    }
    Tensor o = Tensor::empty(x.dtype(), out_shape);
    T* po = o.mutable_data<T>();
    for (size_t i = 0; i < acc.size(); ++i) po[i] = static_cast<T>(acc[i]);
    return o;
  });
  ctx.set_output(0, half ? out.cast(in.dtype()) : std::move(out));
}

template <bool kMax>
void arg_kernel(KernelContext& ctx) {
  const ir::Node& n = ctx.node();
  const Tensor& in = ctx.input(0);
  const int64_t r = static_cast<int64_t>(in.rank());
  const int64_t axis = normalize_axis(n.attr_int("axis", 0), r, n);
  const bool keepdims = n.attr_int("keepdims", 1) != 0;
  const bool last = n.attr_int("select_last_index", 0) != 0;
  const Tensor x = (in.dtype() == DataType::kFloat16 || in.dtype() == DataType::kBFloat16) ? in.to_float() : in;
  const int64_t dim = x.shape()[axis];
  QTOOL_CHECK(dim > 0, ErrorCode::kInvalidModel, "{}: cannot reduce an empty axis", n.describe());
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < axis; ++d) outer *= x.shape()[d];
  for (int64_t d = axis + 1; d < r; ++d) inner *= x.shape()[d];
  Shape out_shape;
  for (int64_t d = 0; d < r; ++d) {
    if (d != axis) out_shape.push_back(x.shape()[d]);
    else if (keepdims) out_shape.push_back(1);
  }
  Tensor out = Tensor::empty(DataType::kInt64, out_shape);
  int64_t* po = out.mutable_data<int64_t>();
  visit_numeric(x.dtype(), n, [&]<typename T>() {
    const T* p = x.data<T>();
    for (int64_t o = 0; o < outer; ++o) {
      for (int64_t i = 0; i < inner; ++i) {
        const T* base = p + o * dim * inner + i;
        int64_t best = 0;
        for (int64_t k = 1; k < dim; ++k) {
          const T v = base[k * inner], b = base[best * inner];
          const bool better = kMax ? (v > b || (last && v == b)) : (v < b || (last && v == b));
          if (better) best = k;
        }
        po[o * inner + i] = best;
      }
    }
  });
  ctx.set_output(0, std::move(out));
}

}  // namespace

void register_reduce_kernels(KernelRegistry& r) {
  r.add("", "ReduceSum", 1, reduce_kernel<Red::kSum>);
  r.add("", "ReduceMean", 1, reduce_kernel<Red::kMean>);
  r.add("", "ReduceMax", 1, reduce_kernel<Red::kMax>);
  r.add("", "ReduceMin", 1, reduce_kernel<Red::kMin>);
  r.add("", "ReduceProd", 1, reduce_kernel<Red::kProd>);
  r.add("", "ReduceL1", 1, reduce_kernel<Red::kL1>);
  r.add("", "ReduceL2", 1, reduce_kernel<Red::kL2>);
  r.add("", "ReduceLogSum", 1, reduce_kernel<Red::kLogSum>);
  r.add("", "ReduceLogSumExp", 1, reduce_kernel<Red::kLogSumExp>);
  r.add("", "ReduceSumSquare", 1, reduce_kernel<Red::kSumSquare>);
  r.add("", "ArgMax", 1, arg_kernel<true>);
  r.add("", "ArgMin", 1, arg_kernel<false>);
}

}  // namespace qtool::runtime::kernels
