// Shape and layout ops: Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Concat, Split, Slice,
// Expand, Tile, Pad, Shape, Size, ConstantOfShape, Range, DepthToSpace, SpaceToDepth.
//
// Reshape-like ops return views of the input storage (no copy). Ops that move elements go
// through strided_copy (one strided gather with collapsed dimensions) or, for Pad, one
// per-dimension index map, so no op has its own N-d loop.
#include <algorithm>
#include <cmath>
#include <limits>

#include "kernel_util.h"
#include "kernels.h"

namespace qtool::runtime::kernels {

namespace {

int64_t rank_of(const Tensor& t) { return static_cast<int64_t>(t.rank()); }

/// Reshape: 0 copies the input dim (unless allowzero), -1 is inferred.
void reshape_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  const ir::Node& n = ctx.node();
  std::vector<int64_t> spec = ctx.opset() < 5 ? n.attr_ints("shape") : int_values(ctx.input(1));
  const bool allowzero = ctx.opset() >= 14 && n.attr_int("allowzero", 0) != 0;
  Shape out(spec.size());
  int infer = -1;
  int64_t known = 1;
  for (size_t i = 0; i < spec.size(); ++i) {
    if (spec[i] == 0 && !allowzero) {
      QTOOL_CHECK(i < x.rank(), ErrorCode::kInvalidModel, "{}: 0 at index {} but the input {} has rank {}",
                  n.describe(), i, shape_str(x.shape()), x.rank());
      out[i] = x.shape()[i];
    } else if (spec[i] == -1) {
      QTOOL_CHECK(infer < 0, ErrorCode::kInvalidModel, "{}: more than one -1 in shape", n.describe());
      infer = static_cast<int>(i);
      out[i] = 1;
    } else {
      QTOOL_CHECK(spec[i] >= 0, ErrorCode::kInvalidModel, "{}: invalid dimension {}", n.describe(), spec[i]);
      out[i] = spec[i];
    }
    if (static_cast<int>(i) != infer) known *= out[i];
  }
  if (infer >= 0) {
    QTOOL_CHECK(known != 0 && x.numel() % known == 0, ErrorCode::kInvalidModel,
                "{}: cannot reshape {} to {}", n.describe(), shape_str(x.shape()), shape_str(spec));
    out[infer] = x.numel() / known;
  }
  QTOOL_CHECK(shape_numel(out) == x.numel(), ErrorCode::kInvalidModel, "{}: cannot reshape {} ({} elements) to {}",
              n.describe(), shape_str(x.shape()), x.numel(), shape_str(out));
  ctx.set_output(0, x.reshaped(out));
}

void flatten_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  int64_t axis = ctx.node().attr_int("axis", 1);
  if (axis < 0) axis += rank_of(x);
  QTOOL_CHECK(axis >= 0 && axis <= rank_of(x), ErrorCode::kInvalidModel, "{}: axis {} out of range for rank {}",
              ctx.node().describe(), ctx.node().attr_int("axis", 1), x.rank());
  int64_t outer = 1;
  for (int64_t i = 0; i < axis; ++i) outer *= x.shape()[i];
  ctx.set_output(0, x.reshaped({outer, outer == 0 ? 0 : x.numel() / std::max<int64_t>(outer, 1)}));
}

void squeeze_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  bool present = false;
  std::vector<int64_t> axes = axes_from(ctx, ctx.opset() >= 13, 1, "axes", &present);
  std::vector<char> drop(x.rank(), 0);
  if (!present) {
    for (size_t i = 0; i < x.rank(); ++i) drop[i] = x.shape()[i] == 1;
  } else {
    for (int64_t a : axes) {
      const int64_t ax = normalize_axis(a, rank_of(x), ctx.node());
      QTOOL_CHECK(x.shape()[ax] == 1, ErrorCode::kInvalidModel, "{}: dimension {} of {} is not 1",
                  ctx.node().describe(), ax, shape_str(x.shape()));
      drop[ax] = 1;
    }
  }
  Shape out;
  for (size_t i = 0; i < x.rank(); ++i) {
    if (!drop[i]) out.push_back(x.shape()[i]);
  }
  ctx.set_output(0, x.reshaped(out));
}

void unsqueeze_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  bool present = false;
  std::vector<int64_t> axes = axes_from(ctx, ctx.opset() >= 13, 1, "axes", &present);
  const int64_t r = rank_of(x) + static_cast<int64_t>(axes.size());
  std::vector<char> ins(r, 0);
  for (int64_t a : axes) {
    const int64_t ax = normalize_axis(a, r, ctx.node());
    QTOOL_CHECK(!ins[ax], ErrorCode::kInvalidModel, "{}: axis {} repeated", ctx.node().describe(), a);
    ins[ax] = 1;
  }
  Shape out;
  size_t k = 0;
  for (int64_t i = 0; i < r; ++i) out.push_back(ins[i] ? 1 : x.shape()[k++]);
  ctx.set_output(0, x.reshaped(out));
}

void transpose_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  const int64_t r = rank_of(x);
  std::vector<int64_t> perm = ctx.node().attr_ints("perm");
  if (perm.empty()) {
    for (int64_t i = r - 1; i >= 0; --i) perm.push_back(i);
  }
  QTOOL_CHECK(static_cast<int64_t>(perm.size()) == r, ErrorCode::kInvalidModel,
              "{}: perm has {} entries for rank {}", ctx.node().describe(), perm.size(), r);
  const std::vector<int64_t> st = strides_of(x.shape());
  Shape out(r);
  std::vector<int64_t> strides(r);
  std::vector<char> seen(r, 0);
  for (int64_t i = 0; i < r; ++i) {
    const int64_t p = normalize_axis(perm[i], r, ctx.node());
    QTOOL_CHECK(!seen[p], ErrorCode::kInvalidModel, "{}: perm repeats axis {}", ctx.node().describe(), p);
    seen[p] = 1;
    out[i] = x.shape()[p];
    strides[i] = st[p];
  }
  ctx.set_output(0, strided_copy(x, out, strides, 0, &ctx.pool(), ctx.node()));
}

void concat_kernel(KernelContext& ctx) {
  const ir::Node& n = ctx.node();
  std::vector<const Tensor*> ins;
  for (size_t i = 0; i < ctx.num_inputs(); ++i) {
    if (ctx.has_input(i)) ins.push_back(&ctx.input(i));
  }
  QTOOL_CHECK(!ins.empty(), ErrorCode::kInvalidModel, "{} has no inputs", n.describe());
  const Tensor& first = *ins[0];
  const int64_t r = rank_of(first);
  const int64_t axis = normalize_axis(n.attr_int("axis", ctx.opset() < 4 ? 1 : 0), r, n);
  Shape out = first.shape();
  out[axis] = 0;
  for (const Tensor* t : ins) {
    bool ok = t->dtype() == first.dtype() && rank_of(*t) == r;
    for (int64_t d = 0; ok && d < r; ++d) ok = d == axis || t->shape()[d] == first.shape()[d];
    if (!ok) {
      fail(ErrorCode::kInvalidModel, "{}: cannot concatenate {} {} with {} {} along axis {}", n.describe(),
           dtype_name(first.dtype()), shape_str(first.shape()), dtype_name(t->dtype()), shape_str(t->shape()), axis);
    }
    out[axis] += t->shape()[axis];
  }
  Tensor result = Tensor::empty(first.dtype(), out);
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < axis; ++d) outer *= out[d];
  for (int64_t d = axis + 1; d < r; ++d) inner *= out[d];
  if (first.dtype() == DataType::kString) {
    auto& o = result.mutable_strings();
    int64_t pos = 0;
    for (int64_t i = 0; i < outer; ++i) {
      for (const Tensor* t : ins) {
        const int64_t len = t->shape()[axis] * inner;
        for (int64_t j = 0; j < len; ++j) o[pos++] = t->strings()[i * len + j];
      }
    }
    ctx.set_output(0, std::move(result));
    return;
  }
  const size_t esize = static_cast<size_t>(dtype_bits(first.dtype()) / 8);
  uint8_t* dst = result.mutable_raw();
  const size_t out_row = static_cast<size_t>(out[axis] * inner) * esize;
  size_t col = 0;
  for (const Tensor* t : ins) {
    const size_t len = static_cast<size_t>(t->shape()[axis] * inner) * esize;
    const uint8_t* src = t->raw();
    for (int64_t i = 0; i < outer; ++i) std::memcpy(dst + i * out_row + col, src + i * len, len);
    col += len;
  }
  ctx.set_output(0, std::move(result));
}

/// Slice along one axis [start, start+len) of x, as a strided copy.
Tensor slice_axis(const Tensor& x, int64_t axis, int64_t start, int64_t len, ThreadPool* pool, const ir::Node& n) {
  Shape out = x.shape();
  out[axis] = len;
  const std::vector<int64_t> st = strides_of(x.shape());
  return strided_copy(x, out, st, start * st[axis], pool, n);
}

void split_kernel(KernelContext& ctx) {
  const ir::Node& n = ctx.node();
  const Tensor& x = ctx.input(0);
  const int64_t axis = normalize_axis(n.attr_int("axis", 0), rank_of(x), n);
  const int64_t dim = x.shape()[axis];
  const int64_t outs = static_cast<int64_t>(ctx.num_outputs());
  const std::vector<int64_t> sizes = split_sizes_of(ctx, dim);
  int64_t start = 0;
  for (int64_t i = 0; i < outs; ++i) {
    if (ctx.wants_output(i)) ctx.set_output(i, slice_axis(x, axis, start, sizes[i], &ctx.pool(), n));
    start += sizes[i];
  }
}

void slice_kernel(KernelContext& ctx) {
  const ir::Node& n = ctx.node();
  const Tensor& x = ctx.input(0);
  const SliceView v = slice_view_of(ctx);
  const Shape& out = v.out;
  const std::vector<int64_t>& strides = v.strides;
  const int64_t offset = v.offset;
  ctx.set_output(0, strided_copy(x, out, strides, offset, &ctx.pool(), n));
}

void expand_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  const std::vector<int64_t> shape = int_values(ctx.input(1));
  const Shape out = broadcast_shapes(x.shape(), shape, ctx.node());
  const std::vector<int64_t> st = strides_of(x.shape());
  std::vector<int64_t> strides(out.size(), 0);
  const size_t lead = out.size() - x.rank();
  for (size_t i = 0; i < x.rank(); ++i) strides[lead + i] = x.shape()[i] == 1 ? 0 : st[i];
  ctx.set_output(0, strided_copy(x, out, strides, 0, &ctx.pool(), ctx.node()));
}

/// Tile: view the output as [r0, d0, r1, d1, ...] with stride 0 on the repeat dims.
void tile_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  const std::vector<int64_t> reps = int_values(ctx.input(1));
  QTOOL_CHECK(reps.size() == x.rank(), ErrorCode::kInvalidModel, "{}: {} repeats for rank {}",
              ctx.node().describe(), reps.size(), x.rank());
  const std::vector<int64_t> st = strides_of(x.shape());
  Shape view, out;
  std::vector<int64_t> strides;
  for (size_t i = 0; i < x.rank(); ++i) {
    QTOOL_CHECK(reps[i] >= 0, ErrorCode::kInvalidModel, "{}: negative repeat", ctx.node().describe());
    view.push_back(reps[i]);
    strides.push_back(0);
    view.push_back(x.shape()[i]);
    strides.push_back(st[i]);
    out.push_back(reps[i] * x.shape()[i]);
  }
  ctx.set_output(0, strided_copy(x, view, strides, 0, &ctx.pool(), ctx.node()).reshaped(out));
}

/// Pad: each output index maps to an input index per dimension (or to the constant).
void pad_kernel(KernelContext& ctx) {
  const ir::Node& n = ctx.node();
  const Tensor& x = ctx.input(0);
  const int64_t r = rank_of(x);
  double value = 0.0;
  if (ctx.opset() < 11) {
    value = n.attr_float("value", 0.0f);
  } else if (ctx.has_input(2) && ctx.input(2).numel() > 0) {
    value = ctx.input(2).get_as_double(0);
  }
  const std::string mode = n.attr_string("mode", "constant");
  const PadAmounts amounts = pad_amounts_of(ctx);
  const std::vector<int64_t>& begin = amounts.begin;
  const std::vector<int64_t>& end = amounts.end;
  Shape out(r);
  std::vector<std::vector<int64_t>> map(r);  // output index -> input index (-1: constant)
  for (int64_t d = 0; d < r; ++d) {
    const int64_t dim = x.shape()[d];
    out[d] = dim + begin[d] + end[d];
    QTOOL_CHECK(out[d] >= 0, ErrorCode::kInvalidModel, "{}: pads make dimension {} negative", n.describe(), d);
    map[d].resize(out[d]);
    for (int64_t o = 0; o < out[d]; ++o) {
      int64_t i = o - begin[d];
      if (i < 0 || i >= dim) {
        if (mode == "constant" || dim == 0) {
          i = -1;
        } else if (mode == "edge") {
          i = std::clamp<int64_t>(i, 0, dim - 1);
        } else if (mode == "reflect") {
          if (dim == 1) {
            i = 0;
          } else {
            const int64_t period = 2 * (dim - 1);
            i = ((i % period) + period) % period;
            if (i >= dim) i = period - i;
          }
        } else if (mode == "wrap") {
          i = ((i % dim) + dim) % dim;
        } else {
          fail(ErrorCode::kUnsupported, "{}: mode '{}' is not supported", n.describe(), mode);
        }
      }
      map[d][o] = i;
    }
  }
  Tensor result = Tensor::empty(x.dtype(), out);
  const int64_t total = result.numel();
  if (total == 0) {
    ctx.set_output(0, std::move(result));
    return;
  }
  const std::vector<int64_t> st = strides_of(x.shape());
  visit_by_size(x.dtype(), n, [&]<typename U>() {
    const U pad_value = [&] {
      Tensor v = Tensor::scalar<double>(value).cast(x.dtype());
      return *raw_as<U>(v);
    }();
    const U* src = raw_as<U>(x);
    U* dst = mutable_raw_as<U>(result);
    const int64_t inner = r == 0 ? 1 : out[r - 1];
    std::vector<int64_t> idx(std::max<int64_t>(r - 1, 0), 0);
    for (int64_t row = 0; row < total / inner; ++row) {
      int64_t off = 0;
      bool constant = false;
      for (int64_t d = 0; d + 1 < r; ++d) {
        const int64_t i = map[d][idx[d]];
        if (i < 0) constant = true;
        off += i * st[d];
      }
      U* o = dst + row * inner;
      if (constant) {
        std::fill(o, o + inner, pad_value);
      } else if (r == 0) {
        o[0] = src[0];
      } else {
        const auto& m = map[r - 1];
        for (int64_t j = 0; j < inner; ++j) o[j] = m[j] < 0 ? pad_value : src[off + m[j]];
      }
      for (int64_t d = r - 2; d >= 0; --d) {
        if (++idx[d] < out[d]) break;
        idx[d] = 0;
      }
    }
  });
  ctx.set_output(0, std::move(result));
}

void shape_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  const int64_t r = rank_of(x);
  int64_t start = ctx.opset() >= 15 ? ctx.node().attr_int("start", 0) : 0;
  int64_t end = ctx.opset() >= 15 ? ctx.node().attr_int("end", r) : r;
  if (start < 0) start += r;
  if (end < 0) end += r;
  start = std::clamp<int64_t>(start, 0, r);
  end = std::clamp<int64_t>(end, 0, r);
  std::vector<int64_t> dims;
  for (int64_t i = start; i < end; ++i) dims.push_back(x.shape()[i]);
  ctx.set_output(0, Tensor::from_vector<int64_t>({static_cast<int64_t>(dims.size())}, dims));
}

void size_kernel(KernelContext& ctx) { ctx.set_output(0, Tensor::scalar<int64_t>(ctx.input(0).numel())); }

void constant_of_shape_kernel(KernelContext& ctx) {
  const std::vector<int64_t> shape = int_values(ctx.input(0));
  Tensor value = Tensor::scalar<float>(0.0f);
  if (const ir::Attribute* a = ctx.node().find_attr("value"); a && !a->tensors.empty()) value = a->tensors[0];
  QTOOL_CHECK(value.numel() == 1, ErrorCode::kInvalidModel, "{}: value must have one element",
              ctx.node().describe());
  Tensor out = Tensor::empty(value.dtype(), shape);
  visit_by_size(value.dtype(), ctx.node(), [&]<typename U>() {
    const U v = *raw_as<U>(value);
    U* o = mutable_raw_as<U>(out);
    std::fill(o, o + out.numel(), v);
  });
  ctx.set_output(0, std::move(out));
}

void range_kernel(KernelContext& ctx) {
  const Tensor& start = ctx.input(0);
  Tensor out = visit_numeric(start.dtype(), ctx.node(), [&]<typename T>() {
    const T s = static_cast<T>(scalar_value(start, ctx.node(), "start"));
    const T l = static_cast<T>(scalar_value(ctx.input(1), ctx.node(), "limit"));
    const T d = static_cast<T>(scalar_value(ctx.input(2), ctx.node(), "delta"));
    QTOOL_CHECK(d != T(0), ErrorCode::kInvalidModel, "{}: delta is 0", ctx.node().describe());
    const int64_t count = std::max<int64_t>(
        0, static_cast<int64_t>(std::ceil((static_cast<double>(l) - static_cast<double>(s)) / static_cast<double>(d))));
    Tensor o = Tensor::empty(dtype_of<T>(), {count});
    T* p = o.mutable_data<T>();
    for (int64_t i = 0; i < count; ++i) p[i] = static_cast<T>(s + static_cast<T>(i) * d);
    return o;
  });
  ctx.set_output(0, std::move(out));
}

/// DepthToSpace: [N, C, H, W] -> [N, C/b², H*b, W*b]; DCR reads depth as (b1, b2, C'), CRD as (C', b1, b2).
void depth_to_space_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  QTOOL_CHECK(x.rank() == 4, ErrorCode::kInvalidModel, "{} needs a 4-D input", ctx.node().describe());
  const int64_t b = ctx.node().required_attr("blocksize").i;
  const bool crd = ctx.node().attr_string("mode", "DCR") == "CRD";
  const int64_t N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3);
  QTOOL_CHECK(b > 0 && C % (b * b) == 0, ErrorCode::kInvalidModel, "{}: channels {} not divisible by {}",
              ctx.node().describe(), C, b * b);
  const int64_t c = C / (b * b);
  // Output viewed as [N, c, H, b1, W, b2].
  const Shape view{N, c, H, b, W, b};
  std::vector<int64_t> strides;
  const int64_t hw = H * W;
  if (crd) {  // input channel = (ci * b + b1) * b + b2
    strides = {C * hw, b * b * hw, W, b * hw, 1, hw};
  } else {  // input channel = (b1 * b + b2) * c + ci
    strides = {C * hw, hw, W, b * c * hw, 1, c * hw};
  }
  ctx.set_output(0, strided_copy(x, view, strides, 0, &ctx.pool(), ctx.node()).reshaped({N, c, H * b, W * b}));
}

/// SpaceToDepth: [N, C, H, W] -> [N, C*b², H/b, W/b], output channel = (b1 * b + b2) * C + c.
void space_to_depth_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  QTOOL_CHECK(x.rank() == 4, ErrorCode::kInvalidModel, "{} needs a 4-D input", ctx.node().describe());
  const int64_t b = ctx.node().required_attr("blocksize").i;
  const int64_t N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3);
  QTOOL_CHECK(b > 0 && H % b == 0 && W % b == 0, ErrorCode::kInvalidModel,
              "{}: spatial size {}x{} not divisible by {}", ctx.node().describe(), H, W, b);
  // Output viewed as [N, b1, b2, C, H/b, W/b].
  const Shape view{N, b, b, C, H / b, W / b};
  const std::vector<int64_t> strides{C * H * W, W, 1, H * W, b * W, b};
  ctx.set_output(0, strided_copy(x, view, strides, 0, &ctx.pool(), ctx.node()).reshaped({N, C * b * b, H / b, W / b}));
}

}  // namespace

void register_shape_kernels(KernelRegistry& r) {
  r.add("", "Reshape", 1, reshape_kernel);
  r.add("", "Flatten", 1, flatten_kernel);
  r.add("", "Squeeze", 1, squeeze_kernel);
  r.add("", "Unsqueeze", 1, unsqueeze_kernel);
  r.add("", "Transpose", 1, transpose_kernel);
  r.add("", "Concat", 1, concat_kernel);
  r.add("", "Split", 1, split_kernel);
  r.add("", "Slice", 1, slice_kernel);
  r.add("", "Expand", 8, expand_kernel);
  r.add("", "Tile", 6, tile_kernel);
  r.add("", "Pad", 1, pad_kernel);
  r.add("", "Shape", 1, shape_kernel);
  r.add("", "Size", 1, size_kernel);
  r.add("", "ConstantOfShape", 9, constant_of_shape_kernel);
  r.add("", "Range", 11, range_kernel);
  r.add("", "DepthToSpace", 1, depth_to_space_kernel);
  r.add("", "SpaceToDepth", 1, space_to_depth_kernel);
}

}  // namespace qtool::runtime::kernels
