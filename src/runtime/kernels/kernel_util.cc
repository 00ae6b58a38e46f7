// Non-template helpers of kernel_util.h.
#include "kernel_util.h"

namespace qtool::runtime::kernels {

std::vector<int64_t> int_values(const Tensor& t) {
  std::vector<int64_t> out(static_cast<size_t>(t.numel()));
  if (t.dtype() == DataType::kInt64) {
    if (t.numel()) std::memcpy(out.data(), t.raw(), out.size() * sizeof(int64_t));
  } else if (t.dtype() == DataType::kInt32) {
    const int32_t* p = t.data<int32_t>();
    for (size_t i = 0; i < out.size(); ++i) out[i] = p[i];
  } else {
    for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<int64_t>(t.get_as_double(static_cast<int64_t>(i)));
  }
  return out;
}

std::vector<double> double_values(const Tensor& t) {
  std::vector<double> out(static_cast<size_t>(t.numel()));
  for (size_t i = 0; i < out.size(); ++i) out[i] = t.get_as_double(static_cast<int64_t>(i));
  return out;
}

double scalar_value(const Tensor& t, const ir::Node& node, const char* what) {
  QTOOL_CHECK(t.numel() == 1, ErrorCode::kInvalidModel, "{}: {} must be a scalar but has shape {}",
              node.describe(), what, shape_str(t.shape()));
  return t.get_as_double(0);
}

int64_t normalize_axis(int64_t axis, int64_t rank, const ir::Node& node) {
  const int64_t a = axis < 0 ? axis + rank : axis;
  if (a < 0 || a >= std::max<int64_t>(rank, 1)) {
    fail(ErrorCode::kInvalidModel, "{}: axis {} is out of range for rank {}", node.describe(),
         axis, rank);
  }
  return a;
}

std::vector<int64_t> strides_of(const Shape& shape) {
  std::vector<int64_t> s(shape.size(), 1);
  for (size_t i = shape.size(); i-- > 1;) s[i - 1] = s[i] * shape[i];
  return s;
}

Shape broadcast_shapes(const Shape& a, const Shape& b, const ir::Node& node) {
  const size_t r = std::max(a.size(), b.size());
  Shape out(r, 1);
  for (size_t i = 0; i < r; ++i) {
    const int64_t da = i < r - a.size() ? 1 : a[i - (r - a.size())];
    const int64_t db = i < r - b.size() ? 1 : b[i - (r - b.size())];
    if (da == db || db == 1) {
      out[i] = da;
    } else if (da == 1) {
      out[i] = db;
    } else {
      fail(ErrorCode::kInvalidModel, "{}: shapes {} and {} cannot be broadcast together", node.describe(), shape_str(a), shape_str(b));
    }
  }
  return out;
}

std::vector<int64_t> axes_from(const KernelContext& ctx, bool from_input, size_t input_index, const char* name,
                               bool* present) {
  if (from_input) {
    *present = ctx.has_input(input_index);
    return *present ? int_values(ctx.input(input_index)) : std::vector<int64_t>{};
  }
  *present = ctx.node().has_attr(name);
  return ctx.node().attr_ints(name);
}

}  // namespace qtool::runtime::kernels

namespace qtool::runtime::kernels {

Tensor strided_copy(const Tensor& in, const Shape& out_shape, const std::vector<int64_t>& strides, int64_t offset,
                    ThreadPool* pool, const ir::Node& node) {
  Tensor out = Tensor::empty(in.dtype(), out_shape);
  const int64_t n = out.numel();
  if (n == 0) return out;
  // Collapse: drop size-1 dims; merge i into i+1 when stride[i] == stride[i+1] * dim[i+1].
  std::vector<int64_t> d, s;
  for (size_t i = 0; i < out_shape.size(); ++i) {
    if (out_shape[i] == 1) continue;
    if (!d.empty() && s.back() == strides[i] * out_shape[i]) {
      d.back() *= out_shape[i];
      s.back() = strides[i];
    } else {
      d.push_back(out_shape[i]);
      s.push_back(strides[i]);
    }
  }
  if (d.empty()) {
    d.push_back(1);
    s.push_back(1);
  }
  if (in.dtype() == DataType::kString) {
    auto& o = out.mutable_strings();
    std::vector<int64_t> idx(d.size(), 0);
    for (int64_t i = 0; i < n; ++i) {
      int64_t off = offset;
      for (size_t k = 0; k < d.size(); ++k) off += idx[k] * s[k];
      o[i] = in.strings()[off];
      for (size_t k = d.size(); k-- > 0;) {
        if (++idx[k] < d[k]) break;
        idx[k] = 0;
      }
    }
    return out;
  }
  const size_t r = d.size();
  const int64_t inner = d.back(), inner_stride = s.back();
  const int64_t rows = n / inner;
  visit_by_size(in.dtype(), node, [&]<typename U>() {
    const U* src = raw_as<U>(in);
    U* dst = mutable_raw_as<U>(out);
    auto run_rows = [&](int64_t rb, int64_t re) {
      if (r == 0) __builtin_unreachable();  // d has at least one dim; silences -Wstringop-overflow
      std::vector<int64_t> idx(r, 0);
      int64_t rem = rb;
      for (size_t k = r - 1; k-- > 0;) {
        idx[k] = rem % d[k];
        rem /= d[k];
      }
      int64_t off = offset;
      for (size_t k = 0; k + 1 < r; ++k) off += idx[k] * s[k];
      for (int64_t row = rb; row < re; ++row) {
        U* o = dst + row * inner;
        const U* p = src + off;
        if (inner_stride == 1) {
          std::memcpy(o, p, inner * sizeof(U));
        } else {
          for (int64_t j = 0; j < inner; ++j) o[j] = p[j * inner_stride];
        }
        for (size_t k = r - 1; k-- > 0;) {
          off += s[k];
          if (++idx[k] < d[k]) break;
          off -= s[k] * d[k];
          idx[k] = 0;
        }
      }
    };
    if (pool && n >= kParallelGrain) {
      pool->parallel_for(rows, std::max<int64_t>(1, kParallelGrain / inner), run_rows);
    } else {
      run_rows(0, rows);
    }
  });
  return out;
}


std::vector<int64_t> split_sizes(std::vector<int64_t> split, const ir::Node& node, int64_t opset, int64_t dim,
                                 int64_t outs) {
  if (split.empty()) {
    if (opset >= 18 && node.has_attr("num_outputs")) {
      const int64_t k = node.attr_int("num_outputs", outs);
      QTOOL_CHECK(k > 0, ErrorCode::kInvalidModel, "{}: num_outputs must be positive, got {}", node.describe(), k);
      const int64_t each = (dim + k - 1) / k;
      for (int64_t i = 0; i < k; ++i) split.push_back(std::max<int64_t>(0, std::min(each, dim - i * each)));
    } else {
      QTOOL_CHECK(outs > 0 && dim % outs == 0, ErrorCode::kInvalidModel,
                  "{}: dimension {} is not divisible into {} parts", node.describe(), dim, outs);
      split.assign(static_cast<size_t>(outs), dim / outs);
    }
  }
  int64_t total = 0;
  for (int64_t s : split) {
    QTOOL_CHECK(s >= 0, ErrorCode::kInvalidModel, "{}: split size {} is negative", node.describe(), s);
    total += s;
  }
  QTOOL_CHECK(static_cast<int64_t>(split.size()) == outs && total == dim, ErrorCode::kInvalidModel,
              "{}: split sizes {} do not match dimension {} and {} outputs", node.describe(), shape_str(split), dim,
              outs);
  return split;
}

SliceView slice_view(const Shape& x, const std::vector<int64_t>& starts, const std::vector<int64_t>& ends,
                     std::vector<int64_t> axes, std::vector<int64_t> steps, const ir::Node& n) {
  const int64_t r = static_cast<int64_t>(x.size());
  QTOOL_CHECK(starts.size() == ends.size(), ErrorCode::kInvalidModel, "{}: {} starts but {} ends", n.describe(),
              starts.size(), ends.size());
  if (axes.empty())
    for (size_t i = 0; i < starts.size(); ++i) axes.push_back(static_cast<int64_t>(i));
  if (steps.empty()) steps.assign(starts.size(), 1);
  QTOOL_CHECK(axes.size() == starts.size() && steps.size() == starts.size(), ErrorCode::kInvalidModel,
              "{}: starts, ends, axes and steps differ in length", n.describe());
  const std::vector<int64_t> st = strides_of(x);
  SliceView v{x, st, 0};
  std::vector<char> seen(r, 0);
  for (size_t i = 0; i < starts.size(); ++i) {
    const int64_t a = normalize_axis(axes[i], r, n);
    QTOOL_CHECK(!seen[a], ErrorCode::kInvalidModel, "{}: axis {} repeated", n.describe(), a);
    seen[a] = 1;
    const int64_t dim = x[a];
    const int64_t step = steps[i];
    QTOOL_CHECK(step != 0, ErrorCode::kInvalidModel, "{}: step is 0", n.describe());
    int64_t s = starts[i], e = ends[i];
    if (s < 0) s += dim;
    if (e < 0 && e > std::numeric_limits<int64_t>::min() / 2) e += dim;
    else if (e < 0) e = -1;
    int64_t len;
    if (step > 0) {
      s = std::clamp<int64_t>(s, 0, dim);
      e = std::clamp<int64_t>(e, 0, dim);
      len = e > s ? (e - s + step - 1) / step : 0;
    } else {
      s = std::clamp<int64_t>(s, -1, dim - 1);
      e = std::clamp<int64_t>(e, -1, dim - 1);
      len = s > e ? (s - e + (-step) - 1) / (-step) : 0;
    }
    v.out[a] = len;
    if (len > 0) v.offset += s * st[a];
    v.strides[a] = st[a] * step;
  }
  return v;
}

}  // namespace qtool::runtime::kernels
