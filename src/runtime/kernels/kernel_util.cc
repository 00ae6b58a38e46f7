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
  QTOOL_CHECK(t.numel() == 1, ErrorCode::kInvalidModel, "{} ({}): {} must be a scalar but has shape {}",
              node.describe(), node.op_type(), what, shape_str(t.shape()));
  return t.get_as_double(0);
}

int64_t normalize_axis(int64_t axis, int64_t rank, const ir::Node& node) {
  const int64_t a = axis < 0 ? axis + rank : axis;
  if (a < 0 || a >= std::max<int64_t>(rank, 1)) {
    fail(ErrorCode::kInvalidModel, "{} ({}): axis {} is out of range for rank {}", node.describe(), node.op_type(),
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
      fail(ErrorCode::kInvalidModel, "{} ({}): shapes {} and {} cannot be broadcast together", node.describe(),
           node.op_type(), shape_str(a), shape_str(b));
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
