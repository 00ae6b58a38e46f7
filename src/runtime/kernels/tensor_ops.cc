// Ops that create, convert or pick tensors: Constant, Identity, Dropout (inference), Cast,
// CastLike, and the index-driven ops (Gather*, Scatter*, OneHot, NonZero, TopK, CumSum, Trilu).
#include <algorithm>
#include <cmath>
#include <numeric>
#include <type_traits>

#include "kernel_util.h"
#include "kernels.h"

namespace qtool::runtime::kernels {

namespace {

/// Constant: exactly one of value, value_float(s), value_int(s), value_string(s).
void constant_kernel(KernelContext& ctx) {
  const ir::Node& n = ctx.node();
  if (const ir::Attribute* a = n.find_attr("value")) {
    QTOOL_CHECK(!a->tensors.empty(), ErrorCode::kInvalidModel, "{}: 'value' holds no tensor", n.describe());
    ctx.set_output(0, a->tensors[0]);
  } else if (const ir::Attribute* a = n.find_attr("value_float")) {
    ctx.set_output(0, Tensor::scalar<float>(a->f));
  } else if (const ir::Attribute* a = n.find_attr("value_floats")) {
    ctx.set_output(0, Tensor::from_vector<float>({static_cast<int64_t>(a->floats.size())}, a->floats));
  } else if (const ir::Attribute* a = n.find_attr("value_int")) {
    ctx.set_output(0, Tensor::scalar<int64_t>(a->i));
  } else if (const ir::Attribute* a = n.find_attr("value_ints")) {
    ctx.set_output(0, Tensor::from_vector<int64_t>({static_cast<int64_t>(a->ints.size())}, a->ints));
  } else if (const ir::Attribute* a = n.find_attr("value_string")) {
    ctx.set_output(0, Tensor::from_strings({}, {a->s}));
  } else if (const ir::Attribute* a = n.find_attr("value_strings")) {
    ctx.set_output(0, Tensor::from_strings({static_cast<int64_t>(a->strings.size())}, a->strings));
  } else {
    fail(ErrorCode::kUnsupported, "{}: no supported value attribute (sparse_value is not supported)",
         n.describe());
  }
}

void identity_kernel(KernelContext& ctx) { ctx.set_output(0, ctx.input(0)); }

/// Dropout at inference: output = input, mask = all true.
void dropout_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  ctx.set_output(0, x);
  if (ctx.num_outputs() > 1 && ctx.wants_output(1)) {
    Tensor mask(DataType::kBool, x.shape());
    std::memset(mask.mutable_raw(), 1, mask.nbytes());
    ctx.set_output(1, std::move(mask));
  }
}

/// d[i] = s[i] with ONNX Cast semantics: float -> int truncates toward zero (NaN -> 0), any -> bool is != 0.
template <typename S, typename D>
void cast_loop(const S* s, D* d, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if constexpr (std::is_same_v<D, bool>) {
      d[i] = s[i] != S(0);
    } else if constexpr (std::is_floating_point_v<S> && std::is_integral_v<D>) {
      const S v = s[i];
      if constexpr (std::is_same_v<D, uint64_t>) {
        d[i] = std::isfinite(v) ? static_cast<uint64_t>(v) : 0;
      } else {
        d[i] = std::isfinite(v) ? static_cast<D>(static_cast<int64_t>(v)) : D(0);
      }
    } else {
      d[i] = static_cast<D>(s[i]);
    }
  }
}

/// Calls f.template operator()<T>() for the plain C++ numeric/bool dtypes; false for the others.
template <typename F>
bool visit_plain(DataType t, F&& f) {
  switch (t) {
    case DataType::kFloat: f.template operator()<float>(); return true;
    case DataType::kDouble: f.template operator()<double>(); return true;
    case DataType::kInt8: f.template operator()<int8_t>(); return true;
    case DataType::kUint8: f.template operator()<uint8_t>(); return true;
    case DataType::kInt16: f.template operator()<int16_t>(); return true;
    case DataType::kUint16: f.template operator()<uint16_t>(); return true;
    case DataType::kInt32: f.template operator()<int32_t>(); return true;
    case DataType::kUint32: f.template operator()<uint32_t>(); return true;
    case DataType::kInt64: f.template operator()<int64_t>(); return true;
    case DataType::kUint64: f.template operator()<uint64_t>(); return true;
    case DataType::kBool: f.template operator()<bool>(); return true;
    default: return false;
  }
}

/// float16/bfloat16 <-> float32 element loops.
Tensor half_to_float_tensor(const Tensor& x) {
  Tensor out = Tensor::empty(DataType::kFloat, x.shape());
  const uint16_t* s = x.data<uint16_t>();
  float* d = out.mutable_data<float>();
  if (x.dtype() == DataType::kFloat16) {
    for (int64_t i = 0; i < x.numel(); ++i) d[i] = half_to_float(s[i]);
  } else {
    for (int64_t i = 0; i < x.numel(); ++i) d[i] = bf16_to_float(s[i]);
  }
  return out;
}

/// Cast: direct typed loops between the plain types and float16/bfloat16 (via float32);
/// Tensor::cast for the rest (packed int4/int2, float8), strtod for string -> float.
Tensor cast_tensor(const Tensor& x, DataType to) {
  if (x.dtype() == to) return x;
  if (x.dtype() == DataType::kString || to == DataType::kString) {
    QTOOL_CHECK(x.dtype() == DataType::kString && dtype_is_float(to), ErrorCode::kUnsupported,
                "cast from {} to {} is not supported", dtype_name(x.dtype()), dtype_name(to));
    Tensor out = Tensor(DataType::kDouble, x.shape());
    double* o = out.mutable_data<double>();
    for (int64_t i = 0; i < x.numel(); ++i) o[i] = std::strtod(x.strings()[i].c_str(), nullptr);
    return out.cast(to);
  }
  const bool half_in = x.dtype() == DataType::kFloat16 || x.dtype() == DataType::kBFloat16;
  const bool half_out = to == DataType::kFloat16 || to == DataType::kBFloat16;
  if (half_in) return cast_tensor(half_to_float_tensor(x), to);
  if (half_out) {
    const Tensor f = cast_tensor(x, DataType::kFloat);
    if (!f.defined() || f.dtype() != DataType::kFloat) return x.cast(to);
    Tensor out = Tensor::empty(to, x.shape());
    const float* s = f.data<float>();
    uint16_t* d = out.mutable_data<uint16_t>();
    for (int64_t i = 0; i < x.numel(); ++i) d[i] = to == DataType::kFloat16 ? float_to_half(s[i]) : float_to_bf16(s[i]);
    return out;
  }
  Tensor out;
  const bool done = visit_plain(x.dtype(), [&]<typename S>() {
    visit_plain(to, [&]<typename D>() {
      out = Tensor::empty(to, x.shape());
      cast_loop(reinterpret_cast<const S*>(x.raw()), reinterpret_cast<D*>(out.mutable_raw()), x.numel());
    });
  });
  if (done && out.defined()) return out;
  return x.cast(to);
}

void cast_kernel(KernelContext& ctx) {
  const int64_t to = ctx.node().required_attr("to").i;
  QTOOL_CHECK(dtype_is_known(static_cast<int32_t>(to)), ErrorCode::kUnsupported, "{}: unknown target type {}",
              ctx.node().describe(), to);
  ctx.set_output(0, cast_tensor(ctx.input(0), static_cast<DataType>(to)));
}

void cast_like_kernel(KernelContext& ctx) { ctx.set_output(0, cast_tensor(ctx.input(0), ctx.input(1).dtype())); }

/// Indices (int32/int64) with negatives counted from the end; throws naming the node when out of range.
std::vector<int64_t> checked_indices(const Tensor& t, int64_t dim, const ir::Node& n) {
  std::vector<int64_t> idx = int_values(t);
  for (int64_t& i : idx) {
    if (i < 0) i += dim;
    if (i < 0 || i >= dim) {
      fail(ErrorCode::kInvalidInput, "{}: index {} is out of range for a dimension of size {}", n.describe(), i < 0 ? i - dim : i, dim);
    }
  }
  return idx;
}

/// Gather: out = x[..., idx, ...] along axis; copies whole inner blocks.
void gather_kernel(KernelContext& ctx) {
  const ir::Node& n = ctx.node();
  const Tensor& x = ctx.input(0);
  const Tensor& ind = ctx.input(1);
  const int64_t r = static_cast<int64_t>(x.rank());
  const int64_t axis = normalize_axis(n.attr_int("axis", 0), r, n);
  const std::vector<int64_t> idx = checked_indices(ind, x.shape()[axis], n);
  Shape out;
  for (int64_t d = 0; d < axis; ++d) out.push_back(x.shape()[d]);
  for (int64_t d : ind.shape()) out.push_back(d);
  for (int64_t d = axis + 1; d < r; ++d) out.push_back(x.shape()[d]);
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < axis; ++d) outer *= x.shape()[d];
  for (int64_t d = axis + 1; d < r; ++d) inner *= x.shape()[d];
  Tensor result = Tensor::empty(x.dtype(), out);
  const int64_t dim = x.shape()[axis], k = static_cast<int64_t>(idx.size());
  if (x.dtype() == DataType::kString) {
    auto& o = result.mutable_strings();
    for (int64_t i = 0; i < outer; ++i)
      for (int64_t j = 0; j < k; ++j)
        for (int64_t l = 0; l < inner; ++l) o[(i * k + j) * inner + l] = x.strings()[(i * dim + idx[j]) * inner + l];
  } else {
    const size_t es = static_cast<size_t>(dtype_bits(x.dtype()) / 8);
    QTOOL_CHECK(es > 0, ErrorCode::kUnsupported, "{} does not support {}", n.describe(), dtype_name(x.dtype()));
    const uint8_t* src = x.raw();
    uint8_t* dst = result.mutable_raw();
    const size_t block = static_cast<size_t>(inner) * es;
    for (int64_t i = 0; i < outer; ++i)
      for (int64_t j = 0; j < k; ++j) std::memcpy(dst + (i * k + j) * block, src + (i * dim + idx[j]) * block, block);
  }
  ctx.set_output(0, std::move(result));
}

/// Calls f(out_index, multi_index) for every element of `shape` in row-major order.
template <typename F>
void for_each_index(const Shape& shape, F&& f) {
  const int64_t n = shape_numel(shape);
  std::vector<int64_t> idx(shape.size(), 0);
  for (int64_t i = 0; i < n; ++i) {
    f(i, idx);
    for (size_t d = shape.size(); d-- > 0;) {
      if (++idx[d] < shape[d]) break;
      idx[d] = 0;
    }
  }
}

void gather_elements_kernel(KernelContext& ctx) {
  const ir::Node& n = ctx.node();
  const Tensor& x = ctx.input(0);
  const Tensor& ind = ctx.input(1);
  const int64_t axis = normalize_axis(n.attr_int("axis", 0), static_cast<int64_t>(x.rank()), n);
  QTOOL_CHECK(ind.rank() == x.rank(), ErrorCode::kInvalidModel, "{}: indices rank differs from data",
              n.describe());
  const std::vector<int64_t> idx = checked_indices(ind, x.shape()[axis], n);
  const std::vector<int64_t> st = strides_of(x.shape());
  Tensor result = Tensor::empty(x.dtype(), ind.shape());
  visit_by_size(x.dtype(), n, [&]<typename U>() {
    const U* src = raw_as<U>(x);
    U* dst = mutable_raw_as<U>(result);
    for_each_index(ind.shape(), [&](int64_t i, const std::vector<int64_t>& m) {
      int64_t off = 0;
      for (size_t d = 0; d < m.size(); ++d) off += (static_cast<int64_t>(d) == axis ? idx[i] : m[d]) * st[d];
      dst[i] = src[off];
    });
  });
  ctx.set_output(0, std::move(result));
}

void scatter_elements_kernel(KernelContext& ctx) {
  const ir::Node& n = ctx.node();
  const Tensor& x = ctx.input(0);
  const Tensor& ind = ctx.input(1);
  const Tensor& upd = ctx.input(2);
  const int64_t axis = normalize_axis(n.attr_int("axis", 0), static_cast<int64_t>(x.rank()), n);
  const std::vector<int64_t> idx = checked_indices(ind, x.shape()[axis], n);
  const std::string reduction = n.attr_string("reduction", "none");
  const std::vector<int64_t> st = strides_of(x.shape());
  Tensor result = x.clone();
  visit_numeric(x.dtype() == DataType::kBool ? DataType::kUint8 : x.dtype(), n, [&]<typename T>() {
    const T* u = reinterpret_cast<const T*>(upd.raw());
    T* dst = reinterpret_cast<T*>(result.mutable_raw());
    for_each_index(ind.shape(), [&](int64_t i, const std::vector<int64_t>& m) {
      int64_t off = 0;
      for (size_t d = 0; d < m.size(); ++d) off += (static_cast<int64_t>(d) == axis ? idx[i] : m[d]) * st[d];
      if (reduction == "add") dst[off] = static_cast<T>(dst[off] + u[i]);
      else if (reduction == "mul") dst[off] = static_cast<T>(dst[off] * u[i]);
      else if (reduction == "max") dst[off] = std::max(dst[off], u[i]);
      else if (reduction == "min") dst[off] = std::min(dst[off], u[i]);
      else dst[off] = u[i];
    });
  });
  ctx.set_output(0, std::move(result));
}

/// GatherND with batch_dims: each index tuple (last dim of indices) selects a slice of data.
void gather_nd_kernel(KernelContext& ctx) {
  const ir::Node& n = ctx.node();
  const Tensor& x = ctx.input(0);
  const Tensor& ind = ctx.input(1);
  const int64_t b = n.attr_int("batch_dims", 0);
  const int64_t r = static_cast<int64_t>(x.rank()), q = static_cast<int64_t>(ind.rank());
  QTOOL_CHECK(q >= 1 && b < q && b < r, ErrorCode::kInvalidModel, "{}: bad ranks", n.describe());
  const int64_t k = ind.shape().back();
  QTOOL_CHECK(k >= 1 && b + k <= r, ErrorCode::kInvalidModel, "{}: index depth {} too large", n.describe(), k);
  Shape out(ind.shape().begin(), ind.shape().end() - 1);
  for (int64_t d = b + k; d < r; ++d) out.push_back(x.shape()[d]);
  int64_t batch = 1, slice = 1;
  for (int64_t d = 0; d < b; ++d) batch *= x.shape()[d];
  for (int64_t d = b + k; d < r; ++d) slice *= x.shape()[d];
  const std::vector<int64_t> st = strides_of(x.shape());
  const int64_t batch_stride = b > 0 ? st[b - 1] : x.numel();
  const std::vector<int64_t> iv = int_values(ind);
  const int64_t tuples = static_cast<int64_t>(iv.size()) / k;
  const int64_t per_batch = tuples / std::max<int64_t>(batch, 1);
  Tensor result = Tensor::empty(x.dtype(), out);
  const size_t es = static_cast<size_t>(dtype_bits(x.dtype()) / 8);
  for (int64_t t = 0; t < tuples; ++t) {
    int64_t off = (t / std::max<int64_t>(per_batch, 1)) * batch_stride;
    for (int64_t j = 0; j < k; ++j) {
      int64_t i = iv[t * k + j];
      const int64_t dim = x.shape()[b + j];
      if (i < 0) i += dim;
      QTOOL_CHECK(i >= 0 && i < dim, ErrorCode::kInvalidInput, "{}: index out of range", n.describe());
      off += i * st[b + j];
    }
    std::memcpy(result.mutable_raw() + t * slice * es, x.raw() + off * es, slice * es);
  }
  ctx.set_output(0, std::move(result));
}

void scatter_nd_kernel(KernelContext& ctx) {
  const ir::Node& n = ctx.node();
  const Tensor& x = ctx.input(0);
  const Tensor& ind = ctx.input(1);
  const Tensor& upd = ctx.input(2);
  const int64_t k = ind.shape().back();
  const int64_t r = static_cast<int64_t>(x.rank());
  int64_t slice = 1;
  for (int64_t d = k; d < r; ++d) slice *= x.shape()[d];
  const std::vector<int64_t> st = strides_of(x.shape());
  const std::vector<int64_t> iv = int_values(ind);
  const int64_t tuples = static_cast<int64_t>(iv.size()) / std::max<int64_t>(k, 1);
  const std::string reduction = n.attr_string("reduction", "none");
  Tensor result = x.clone();
  visit_numeric(x.dtype() == DataType::kBool ? DataType::kUint8 : x.dtype(), n, [&]<typename T>() {
    const T* u = reinterpret_cast<const T*>(upd.raw());
    T* dst = reinterpret_cast<T*>(result.mutable_raw());
    for (int64_t t = 0; t < tuples; ++t) {
      int64_t off = 0;
      for (int64_t j = 0; j < k; ++j) {
        int64_t i = iv[t * k + j];
        if (i < 0) i += x.shape()[j];
        QTOOL_CHECK(i >= 0 && i < x.shape()[j], ErrorCode::kInvalidInput, "{}: index out of range",
                    n.describe());
        off += i * st[j];
      }
      for (int64_t e = 0; e < slice; ++e) {
        T& d = dst[off + e];
        const T v = u[t * slice + e];
        if (reduction == "add") d = static_cast<T>(d + v);
        else if (reduction == "mul") d = static_cast<T>(d * v);
        else if (reduction == "max") d = std::max(d, v);
        else if (reduction == "min") d = std::min(d, v);
        else d = v;
      }
    }
  });
  ctx.set_output(0, std::move(result));
}

/// OneHot(indices, depth, values=[off, on]) along `axis` (default -1: a new last axis).
void one_hot_kernel(KernelContext& ctx) {
  const ir::Node& n = ctx.node();
  const Tensor& ind = ctx.input(0);
  const int64_t depth = static_cast<int64_t>(scalar_value(ctx.input(1), n, "depth"));
  const Tensor& vals = ctx.input(2);
  QTOOL_CHECK(vals.numel() == 2, ErrorCode::kInvalidModel, "{}: values must have 2 elements", n.describe());
  const int64_t r = static_cast<int64_t>(ind.rank()) + 1;
  const int64_t axis = normalize_axis(n.attr_int("axis", -1), r, n);
  Shape out(ind.shape());
  out.insert(out.begin() + axis, depth);
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < axis; ++d) outer *= ind.shape()[d];
  for (int64_t d = axis; d < r - 1; ++d) inner *= ind.shape()[d];
  const std::vector<double> iv = double_values(ind);
  Tensor result = Tensor::empty(vals.dtype(), out);
  visit_by_size(vals.dtype(), n, [&]<typename U>() {
    const U off = raw_as<U>(vals)[0], on = raw_as<U>(vals)[1];
    U* o = mutable_raw_as<U>(result);
    std::fill(o, o + result.numel(), off);
    for (int64_t i = 0; i < outer; ++i) {
      for (int64_t j = 0; j < inner; ++j) {
        int64_t v = static_cast<int64_t>(iv[i * inner + j]);
        if (v < 0) v += depth;
        if (v >= 0 && v < depth) o[(i * depth + v) * inner + j] = on;
      }
    }
  });
  ctx.set_output(0, std::move(result));
}

void non_zero_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  const int64_t r = static_cast<int64_t>(x.rank());
  std::vector<std::vector<int64_t>> coords;
  for_each_index(x.shape(), [&](int64_t i, const std::vector<int64_t>& m) {
    if (x.get_as_double(i) != 0.0) coords.push_back(m);
  });
  const int64_t cnt = static_cast<int64_t>(coords.size());
  Tensor out(DataType::kInt64, {std::max<int64_t>(r, 1), cnt});
  int64_t* o = out.mutable_data<int64_t>();
  for (int64_t j = 0; j < cnt; ++j)
    for (int64_t d = 0; d < r; ++d) o[d * cnt + j] = coords[j][d];
  if (r == 0) out = out.reshaped({0, cnt}).clone();  // scalar input: shape [0, count]
  ctx.set_output(0, std::move(out));
}

/// TopK along axis: largest (default) or smallest; ties broken by the smaller index.
void top_k_kernel(KernelContext& ctx) {
  const ir::Node& n = ctx.node();
  const Tensor& x = ctx.input(0);
  const int64_t r = static_cast<int64_t>(x.rank());
  const int64_t axis = normalize_axis(n.attr_int("axis", -1), r, n);
  const int64_t k = ctx.opset() < 10 ? n.attr_int("k", 1) : static_cast<int64_t>(scalar_value(ctx.input(1), n, "K"));
  const bool largest = n.attr_int("largest", 1) != 0;
  const int64_t dim = x.shape()[axis];
  QTOOL_CHECK(k >= 0 && k <= dim, ErrorCode::kInvalidModel, "{}: k={} for a dimension of {}", n.describe(), k,
              dim);
  Shape out = x.shape();
  out[axis] = k;
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < axis; ++d) outer *= x.shape()[d];
  for (int64_t d = axis + 1; d < r; ++d) inner *= x.shape()[d];
  Tensor indices = Tensor::empty(DataType::kInt64, out);
  int64_t* oi = indices.mutable_data<int64_t>();
  Tensor values = visit_numeric(x.dtype() == DataType::kFloat16 ? DataType::kFloat : x.dtype(), n, [&]<typename T>() {
    const Tensor xs = x.dtype() == DataType::kFloat16 ? x.to_float() : x;
    const T* p = xs.data<T>();
    Tensor v = Tensor::empty(dtype_of<T>(), out);
    T* ov = v.mutable_data<T>();
    std::vector<int64_t> order(dim);
    for (int64_t i = 0; i < outer; ++i) {
      for (int64_t j = 0; j < inner; ++j) {
        const T* base = p + i * dim * inner + j;
        std::iota(order.begin(), order.end(), 0);
        auto cmp = [&](int64_t a, int64_t b) {
          const T va = base[a * inner], vb = base[b * inner];
          if (va != vb) return largest ? va > vb : va < vb;
          return a < b;
        };
        std::partial_sort(order.begin(), order.begin() + k, order.end(), cmp);
        for (int64_t t = 0; t < k; ++t) {
          ov[(i * k + t) * inner + j] = base[order[t] * inner];
          oi[(i * k + t) * inner + j] = order[t];
        }
      }
    }
    return v;
  });
  ctx.set_output(0, x.dtype() == DataType::kFloat16 ? values.cast(DataType::kFloat16) : std::move(values));
  if (ctx.wants_output(1)) ctx.set_output(1, std::move(indices));
}

void cum_sum_kernel(KernelContext& ctx) {
  const ir::Node& n = ctx.node();
  const Tensor& x = ctx.input(0);
  const int64_t r = static_cast<int64_t>(x.rank());
  const int64_t axis = normalize_axis(static_cast<int64_t>(scalar_value(ctx.input(1), n, "axis")), r, n);
  const bool exclusive = n.attr_int("exclusive", 0) != 0;
  const bool reverse = n.attr_int("reverse", 0) != 0;
  const int64_t dim = x.shape()[axis];
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < axis; ++d) outer *= x.shape()[d];
  for (int64_t d = axis + 1; d < r; ++d) inner *= x.shape()[d];
  Tensor out = visit_numeric(x.dtype(), n, [&]<typename T>() {
    Tensor o = Tensor::empty(x.dtype(), x.shape());
    const T* p = x.data<T>();
    T* q = o.mutable_data<T>();
    for (int64_t i = 0; i < outer; ++i) {
      for (int64_t j = 0; j < inner; ++j) {
        T acc = 0;
        for (int64_t t = 0; t < dim; ++t) {
          const int64_t a = reverse ? dim - 1 - t : t;
          const int64_t off = (i * dim + a) * inner + j;
          if (exclusive) {
            q[off] = acc;
            acc = static_cast<T>(acc + p[off]);
          } else {
            acc = static_cast<T>(acc + p[off]);
            q[off] = acc;
          }
        }
      }
    }
    return o;
  });
  ctx.set_output(0, std::move(out));
}

/// Trilu: keep the upper (upper=1) or lower triangle of the last two dims, shifted by k.
void trilu_kernel(KernelContext& ctx) {
  const ir::Node& n = ctx.node();
  const Tensor& x = ctx.input(0);
  QTOOL_CHECK(x.rank() >= 2, ErrorCode::kInvalidModel, "{} needs rank >= 2", n.describe());
  const int64_t k = ctx.has_input(1) ? static_cast<int64_t>(scalar_value(ctx.input(1), n, "k")) : 0;
  const bool upper = n.attr_int("upper", 1) != 0;
  const int64_t rows = x.dim(-2), cols = x.dim(-1);
  const int64_t mats = x.numel() / std::max<int64_t>(rows * cols, 1);
  Tensor out = x.clone();
  visit_by_size(x.dtype(), n, [&]<typename U>() {
    U* o = mutable_raw_as<U>(out);
    for (int64_t m = 0; m < mats; ++m)
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < cols; ++j) {
          const bool keep = upper ? j - i >= k : j - i <= k;
          if (!keep) o[(m * rows + i) * cols + j] = U(0);
        }
  });
  ctx.set_output(0, std::move(out));
}

void eye_like_kernel(KernelContext& ctx) {
  const ir::Node& n = ctx.node();
  const Tensor& x = ctx.input(0);
  QTOOL_CHECK(x.rank() == 2, ErrorCode::kInvalidModel, "{} needs a 2-D input", n.describe());
  const DataType dt = n.has_attr("dtype") ? static_cast<DataType>(n.attr_int("dtype", 1)) : x.dtype();
  const int64_t k = n.attr_int("k", 0);
  Tensor out(DataType::kDouble, x.shape());
  double* o = out.mutable_data<double>();
  for (int64_t i = 0; i < x.dim(0); ++i) {
    const int64_t j = i + k;
    if (j >= 0 && j < x.dim(1)) o[i * x.dim(1) + j] = 1.0;
  }
  ctx.set_output(0, out.cast(dt));
}

/// Compress: keeps the slices along `axis` (or of the flattened input) whose condition is true.
void compress_kernel(KernelContext& ctx) {
  const ir::Node& n = ctx.node();
  Tensor x = ctx.input(0);
  const Tensor& cond = ctx.input(1);
  int64_t axis = 0;
  if (n.has_attr("axis")) {
    axis = normalize_axis(n.attr_int("axis", 0), static_cast<int64_t>(x.rank()), n);
  } else {
    x = x.reshaped({x.numel()});
  }
  std::vector<int64_t> keep;
  for (int64_t i = 0; i < std::min(cond.numel(), x.shape()[axis]); ++i) {
    if (cond.get_as_double(i) != 0.0) keep.push_back(i);
  }
  Tensor idx = Tensor::from_vector<int64_t>({static_cast<int64_t>(keep.size())}, keep);
  Shape out = x.shape();
  out[axis] = static_cast<int64_t>(keep.size());
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < axis; ++d) outer *= x.shape()[d];
  for (size_t d = axis + 1; d < x.rank(); ++d) inner *= x.shape()[d];
  Tensor result = Tensor::empty(x.dtype(), out);
  const size_t es = static_cast<size_t>(dtype_bits(x.dtype()) / 8);
  const size_t block = static_cast<size_t>(inner) * es;
  const int64_t dim = x.shape()[axis], k = static_cast<int64_t>(keep.size());
  for (int64_t i = 0; i < outer; ++i)
    for (int64_t j = 0; j < k; ++j)
      std::memcpy(result.mutable_raw() + (i * k + j) * block, x.raw() + (i * dim + keep[j]) * block, block);
  ctx.set_output(0, std::move(result));
}

/// ReverseSequence: reverses the first seq_lens[b] steps along time_axis for each batch b.
void reverse_sequence_kernel(KernelContext& ctx) {
  const ir::Node& n = ctx.node();
  const Tensor& x = ctx.input(0);
  const std::vector<int64_t> lens = int_values(ctx.input(1));
  const int64_t r = static_cast<int64_t>(x.rank());
  const int64_t bax = normalize_axis(n.attr_int("batch_axis", 1), r, n);
  const int64_t tax = normalize_axis(n.attr_int("time_axis", 0), r, n);
  const std::vector<int64_t> st = strides_of(x.shape());
  Tensor out = x.clone();
  const size_t es = static_cast<size_t>(dtype_bits(x.dtype()) / 8);
  for_each_index(x.shape(), [&](int64_t i, const std::vector<int64_t>& m) {
    const int64_t b = m[bax], t = m[tax];
    const int64_t len = std::clamp<int64_t>(lens.at(b), 0, x.shape()[tax]);
    if (t < len) {
      const int64_t src = i + (len - 1 - t - t) * st[tax];
      std::memcpy(out.mutable_raw() + i * es, x.raw() + src * es, es);
    }
  });
  ctx.set_output(0, std::move(out));
}

}  // namespace

void register_tensor_kernels(KernelRegistry& r) {
  r.add("", "Constant", 1, constant_kernel);
  r.add("", "Identity", 1, identity_kernel);
  r.add("", "Dropout", 1, dropout_kernel);
  r.add("", "Cast", 1, cast_kernel);
  r.add("", "CastLike", 15, cast_like_kernel);
  r.add("", "Gather", 1, gather_kernel);
  r.add("", "GatherElements", 11, gather_elements_kernel);
  r.add("", "GatherND", 11, gather_nd_kernel);
  r.add("", "ScatterElements", 11, scatter_elements_kernel);
  r.add("", "Scatter", 9, scatter_elements_kernel);
  r.add("", "ScatterND", 11, scatter_nd_kernel);
  r.add("", "OneHot", 9, one_hot_kernel);
  r.add("", "NonZero", 9, non_zero_kernel);
  r.add("", "TopK", 1, top_k_kernel);
  r.add("", "CumSum", 11, cum_sum_kernel);
  r.add("", "Trilu", 14, trilu_kernel);
  r.add("", "EyeLike", 9, eye_like_kernel);
  r.add("", "Compress", 9, compress_kernel);
  r.add("", "ReverseSequence", 10, reverse_sequence_kernel);
}

}  // namespace qtool::runtime::kernels
