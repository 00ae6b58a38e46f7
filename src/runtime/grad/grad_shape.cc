// Gradients: shape family (see grads.h).
//
// Every op here only moves elements: y[k] = x[m(k)] for an index map m. Its gradient is the
// adjoint scatter-add dL/dx[j] = Σ_{k: m(k) = j} dL/dy[k]:
//   Reshape/Flatten/Squeeze/Unsqueeze: m is the identity on the flat buffer (reshape g back);
//   Transpose: m is a permutation (transpose g by the inverse permutation);
//   Concat/Split: m is a block copy along the axis (slice g / concatenate the g's);
//   Slice/Pad: m is one-to-one onto a strided box (scatter g into zeros / cut the box out of g);
//   Expand/Tile: m repeats elements (sum g over the repeats);
//   Gather: m repeats rows as the indices say (scatter-add g's rows; repeated indices add up).
// One strided accumulate loop (strided_add) serves Slice, Split, Tile and Pad; Transpose and
// Concat use the forward kernels' strided_copy.
#include <algorithm>
#include <limits>
#include <string>
#include <vector>

#include "../kernels/kernel_util.h"
#include "grads.h"

namespace qtool::runtime::grads {

namespace {

using kernels::int_values;
using kernels::normalize_axis;
using kernels::strides_of;
using kernels::SliceView;
using kernels::slice_view_of;

int64_t rank_of(const Tensor& t) { return static_cast<int64_t>(t.rank()); }

/// dst[dst_off + Σ_d i_d·dst_st[d]] += src[src_off + Σ_d i_d·src_st[d]] for every index i of
/// `shape` (float32). The innermost dimension is one tight loop; the others are walked with an
/// index counter.
void strided_add(float* dst, const std::vector<int64_t>& dst_st, int64_t dst_off, const float* src,
                 const std::vector<int64_t>& src_st, int64_t src_off, const Shape& shape) {
  const size_t r = shape.size();
  for (int64_t d : shape)
    if (d == 0) return;
  if (r == 0) {
    dst[dst_off] += src[src_off];
    return;
  }
  const int64_t inner = shape[r - 1], ds = dst_st[r - 1], ss = src_st[r - 1];
  std::vector<int64_t> idx(r - 1, 0);
  for (;;) {
    int64_t od = dst_off, os = src_off;
    for (size_t d = 0; d + 1 < r; ++d) {
      od += idx[d] * dst_st[d];
      os += idx[d] * src_st[d];
    }
    float* pd = dst + od;
    const float* ps = src + os;
    if (ds == 1 && ss == 1) {
      for (int64_t i = 0; i < inner; ++i) pd[i] += ps[i];
    } else if (ds == 0) {
      float acc = 0.0f;
      for (int64_t i = 0; i < inner; ++i) acc += ps[i * ss];
      pd[0] += acc;
    } else {
      for (int64_t i = 0; i < inner; ++i) pd[i * ds] += ps[i * ss];
    }
    size_t d = r - 1;
    while (d-- > 0) {
      if (++idx[d] < shape[d]) break;
      idx[d] = 0;
    }
    if (d == static_cast<size_t>(-1)) return;
  }
}

/// Reshape, Flatten, Squeeze, Unsqueeze (every opset): the output is the input's buffer under
/// another shape, so dL/dx is dL/dy under the input's shape.
void reshape_grad(GradContext& ctx) {
  if (!ctx.wants_input_grad(0) || !ctx.has_output_grad(0)) return;
  ctx.set_input_grad(0, ctx.output_grad(0).reshaped(ctx.input(0).shape()));
}

/// Transpose: y = transpose(x, perm) so dL/dx = transpose(g, perm⁻¹); equivalently element
/// x-index j reads g with stride gst[i] along input dim perm[i]. Default perm reverses the axes.
void transpose_grad(GradContext& ctx) {
  if (!ctx.wants_input_grad(0) || !ctx.has_output_grad(0)) return;
  const Tensor& x = ctx.input(0);
  const Tensor& g = ctx.output_grad(0);
  const int64_t r = rank_of(x);
  std::vector<int64_t> perm = ctx.node().attr_ints("perm");
  if (perm.empty())
    for (int64_t i = r - 1; i >= 0; --i) perm.push_back(i);
  QTOOL_CHECK(static_cast<int64_t>(perm.size()) == r, ErrorCode::kInvalidModel, "{}: perm has {} entries for rank {}",
              ctx.node().describe(), perm.size(), r);
  const std::vector<int64_t> gst = strides_of(g.shape());
  std::vector<int64_t> strides(r, 0);
  std::vector<char> seen(r, 0);
  for (int64_t i = 0; i < r; ++i) {
    const int64_t p = normalize_axis(perm[i], r, ctx.node());
    QTOOL_CHECK(!seen[p], ErrorCode::kInvalidModel, "{}: perm repeats axis {}", ctx.node().describe(), p);
    seen[p] = 1;
    strides[p] = gst[i];
  }
  ctx.set_input_grad(0, kernels::strided_copy(g, x.shape(), strides, 0, &ctx.pool(), ctx.node()));
}

/// Concat along `axis`: input i's gradient is g's block [start_i, start_i + dim_i) on the axis.
/// Omitted inputs are skipped, as in the forward kernel.
void concat_grad(GradContext& ctx) {
  if (!ctx.has_output_grad(0)) return;
  const ir::Node& n = ctx.node();
  const Tensor& g = ctx.output_grad(0);
  const int64_t r = rank_of(g);
  const int64_t axis = normalize_axis(n.attr_int("axis", ctx.opset() < 4 ? 1 : 0), r, n);
  const std::vector<int64_t> gst = strides_of(g.shape());
  int64_t start = 0;
  for (size_t i = 0; i < ctx.num_inputs(); ++i) {
    if (!ctx.has_input(i)) continue;
    const Tensor& x = ctx.input(i);
    QTOOL_CHECK(rank_of(x) == r && start + x.shape()[axis] <= g.shape()[axis], ErrorCode::kInternal,
                "gradient of {}: input {} {} does not fit the output {}", n.describe(), i, shape_str(x.shape()),
                shape_str(g.shape()));
    if (ctx.wants_input_grad(i))
      ctx.set_input_grad(i, kernels::strided_copy(g, x.shape(), gst, start * gst[axis], &ctx.pool(), n));
    start += x.shape()[axis];
  }
}

/// Split: dL/dx is the concatenation of the outputs' gradients along the axis; an output
/// without a gradient (unused or omitted) contributes zeros.
void split_grad(GradContext& ctx) {
  if (!ctx.wants_input_grad(0)) return;
  const ir::Node& n = ctx.node();
  const Tensor& x = ctx.input(0);
  const int64_t axis = normalize_axis(n.attr_int("axis", 0), rank_of(x), n);
  const std::vector<int64_t> sizes = kernels::split_sizes_of(ctx, x.shape()[axis]);
  const std::vector<int64_t> xst = strides_of(x.shape());
  Tensor dx(DataType::kFloat, x.shape());
  float* pd = dx.mutable_data<float>();
  int64_t start = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (ctx.has_output_grad(i)) {
      const Tensor& g = ctx.output_grad(i);
      Shape expect = x.shape();
      expect[axis] = sizes[i];
      QTOOL_CHECK(g.shape() == expect, ErrorCode::kInternal, "gradient of {}: output {} gradient is {}, expected {}",
                  n.describe(), i, shape_str(g.shape()), shape_str(expect));
      strided_add(pd, xst, start * xst[axis], g.data<float>(), strides_of(g.shape()), 0, g.shape());
    }
    start += sizes[i];
  }
  ctx.set_input_grad(0, std::move(dx));
}

/// Slice: per sliced axis the forward reads x at s, s + step, ... (len elements) after numpy
/// clamping, identical to the forward kernel. The gradient scatters g into zeros at those
/// positions (they never overlap). starts/ends/axes are attributes before opset 10, inputs
/// (with optional steps, possibly negative) from 10.
void slice_grad(GradContext& ctx) {
  if (!ctx.wants_input_grad(0) || !ctx.has_output_grad(0)) return;
  const ir::Node& n = ctx.node();
  const Tensor& x = ctx.input(0);
  const Tensor& g = ctx.output_grad(0);
  const SliceView v = slice_view_of(ctx);
  const Shape& out = v.out;
  const std::vector<int64_t>& dst_st = v.strides;
  const int64_t offset = v.offset;
  QTOOL_CHECK(g.shape() == out, ErrorCode::kInternal, "gradient of {}: output gradient is {}, expected {}",
              n.describe(), shape_str(g.shape()), shape_str(out));
  Tensor dx(DataType::kFloat, x.shape());
  strided_add(dx.mutable_data<float>(), dst_st, offset, g.data<float>(), strides_of(out), 0, out);
  ctx.set_input_grad(0, std::move(dx));
}

/// Expand: a numpy broadcast, so dL/dx is g summed over the broadcast dimensions.
void expand_grad(GradContext& ctx) {
  if (!ctx.wants_input_grad(0) || !ctx.has_output_grad(0)) return;
  ctx.set_input_grad(0, reduce_to_shape(ctx.output_grad(0), ctx.input(0).shape()));
}

/// Tile: y viewed as [r0, d0, r1, d1, ...] reads x[i0, i1, ...] for every repeat, so dL/dx sums
/// g over the repeat dims (stride 0 into dx along them).
void tile_grad(GradContext& ctx) {
  if (!ctx.wants_input_grad(0) || !ctx.has_output_grad(0)) return;
  const Tensor& x = ctx.input(0);
  const Tensor& g = ctx.output_grad(0);
  const std::vector<int64_t> reps = int_values(ctx.input(1));
  QTOOL_CHECK(reps.size() == x.rank(), ErrorCode::kInvalidModel, "{}: {} repeats for rank {}", ctx.node().describe(),
              reps.size(), x.rank());
  const std::vector<int64_t> xst = strides_of(x.shape());
  Shape view;
  std::vector<int64_t> dst_st;
  for (size_t i = 0; i < x.rank(); ++i) {
    view.push_back(reps[i]);
    dst_st.push_back(0);
    view.push_back(x.shape()[i]);
    dst_st.push_back(xst[i]);
  }
  QTOOL_CHECK(shape_numel(view) == g.numel(), ErrorCode::kInternal, "gradient of {}: output gradient {} for {}",
              ctx.node().describe(), shape_str(g.shape()), shape_str(view));
  Tensor dx(DataType::kFloat, x.shape());
  strided_add(dx.mutable_data<float>(), dst_st, 0, g.data<float>(), strides_of(view), 0, view);
  ctx.set_input_grad(0, std::move(dx));
}

/// Pad (constant mode): y[o] = x[o − begin] inside the box, the constant elsewhere, so dL/dx is
/// g's box [begin, begin + dim) (cropped where pads are negative), and the constant value
/// (input 2 from opset 11) gets Σ g over the padding, i.e. Σ g − Σ dL/dx. Other modes reflect or
/// repeat edge elements and are refused.
void pad_grad(GradContext& ctx) {
  if (!ctx.has_output_grad(0)) return;
  const ir::Node& n = ctx.node();
  const std::string mode = n.attr_string("mode", "constant");
  if (mode != "constant")
    fail(ErrorCode::kUnsupported, "autodiff: no gradient for {} in mode '{}' (only 'constant')", n.describe(), mode);
  const bool want_x = ctx.wants_input_grad(0);
  const bool want_v = ctx.opset() >= 11 && ctx.wants_input_grad(2);
  if (!want_x && !want_v) return;
  const Tensor& x = ctx.input(0);
  const Tensor& g = ctx.output_grad(0);
  const int64_t r = rank_of(x);
  const std::vector<int64_t> begin = kernels::pad_amounts_of(ctx).begin;
  const std::vector<int64_t> xst = strides_of(x.shape()), gst = strides_of(g.shape());
  // The box of x that lands inside y: x indices [lo, hi) per dim, at y index + begin.
  Shape box(r);
  int64_t x_off = 0, g_off = 0;
  for (int64_t d = 0; d < r; ++d) {
    const int64_t lo = std::max<int64_t>(0, -begin[d]);
    const int64_t hi = std::min<int64_t>(x.shape()[d], g.shape()[d] - begin[d]);
    box[d] = std::max<int64_t>(0, hi - lo);
    x_off += lo * xst[d];
    g_off += (lo + begin[d]) * gst[d];
  }
  Tensor dx(DataType::kFloat, x.shape());
  strided_add(dx.mutable_data<float>(), xst, x_off, g.data<float>(), gst, g_off, box);
  if (want_v) {
    const float* pg = g.data<float>();
    const float* pd = dx.data<float>();
    double total = 0.0, inside = 0.0;
    for (int64_t i = 0; i < g.numel(); ++i) total += pg[i];
    for (int64_t i = 0; i < dx.numel(); ++i) inside += pd[i];
    const Tensor& v = ctx.input(2);
    Tensor dv(DataType::kFloat, v.shape());
    if (dv.numel() > 0) dv.mutable_data<float>()[0] = static_cast<float>(total - inside);
    ctx.set_input_grad(2, std::move(dv));
  }
  if (want_x) ctx.set_input_grad(0, std::move(dx));
}

/// Gather along `axis`: y[o, j, l] = x[o, idx[j], l] (o: outer dims, j: flattened indices,
/// l: inner dims), so dL/dx[o, m, l] = Σ_{j: idx[j] = m} g[o, j, l], a scatter-add (repeated
/// indices accumulate). Negative indices count from the end; the indices get no gradient.
void gather_grad(GradContext& ctx) {
  if (!ctx.wants_input_grad(0) || !ctx.has_output_grad(0)) return;
  const ir::Node& n = ctx.node();
  const Tensor& x = ctx.input(0);
  const Tensor& g = ctx.output_grad(0);
  const int64_t r = rank_of(x);
  const int64_t axis = normalize_axis(n.attr_int("axis", 0), r, n);
  const int64_t dim = x.shape()[axis];
  std::vector<int64_t> idx = int_values(ctx.input(1));
  for (int64_t& i : idx) {
    const int64_t given = i;
    if (i < 0) i += dim;
    if (i < 0 || i >= dim)
      fail(ErrorCode::kInvalidInput, "{}: index {} is out of range for a dimension of size {}", n.describe(), given,
           dim);
  }
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < axis; ++d) outer *= x.shape()[d];
  for (int64_t d = axis + 1; d < r; ++d) inner *= x.shape()[d];
  const int64_t k = static_cast<int64_t>(idx.size());
  QTOOL_CHECK(g.numel() == outer * k * inner, ErrorCode::kInternal, "gradient of {}: output gradient {} for {} rows",
              n.describe(), shape_str(g.shape()), outer * k);
  Tensor dx(DataType::kFloat, x.shape());
  float* pd = dx.mutable_data<float>();
  const float* pg = g.data<float>();
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t j = 0; j < k; ++j) {
      float* dst = pd + (o * dim + idx[j]) * inner;
      const float* src = pg + (o * k + j) * inner;
      for (int64_t l = 0; l < inner; ++l) dst[l] += src[l];
    }
  }
  ctx.set_input_grad(0, std::move(dx));
}

}  // namespace

void register_shape_gradients(GradRegistry& r) {
  r.add("", "Reshape", 1, reshape_grad);
  r.add("", "Flatten", 1, reshape_grad);
  r.add("", "Squeeze", 1, reshape_grad);
  r.add("", "Unsqueeze", 1, reshape_grad);
  r.add("", "Transpose", 1, transpose_grad);
  r.add("", "Concat", 1, concat_grad);
  r.add("", "Split", 1, split_grad);
  r.add("", "Slice", 1, slice_grad);
  r.add("", "Expand", 8, expand_grad);
  r.add("", "Tile", 6, tile_grad);
  r.add("", "Pad", 1, pad_grad);
  r.add("", "Gather", 1, gather_grad);
}

}  // namespace qtool::runtime::grads
