// Helpers shared by the kernel families (private to src/runtime/kernels): dtype dispatch,
// axis and attribute/input reading, and the one multidirectional-broadcasting loop that every
// binary and ternary element-wise op uses.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <vector>

#include "qtool/runtime/kernel.h"

namespace qtool::runtime::kernels {

/// Calls f.template operator()<T>() with T the C++ storage type of a numeric dtype
/// (float, double, int8..uint64). float16/bfloat16/bool/packed types throw kUnsupported.
template <typename F>
decltype(auto) visit_numeric(DataType t, const ir::Node& node, F&& f) {
  switch (t) {
    case DataType::kFloat: return f.template operator()<float>();
    case DataType::kDouble: return f.template operator()<double>();
    case DataType::kInt8: return f.template operator()<int8_t>();
    case DataType::kUint8: return f.template operator()<uint8_t>();
    case DataType::kInt16: return f.template operator()<int16_t>();
    case DataType::kUint16: return f.template operator()<uint16_t>();
    case DataType::kInt32: return f.template operator()<int32_t>();
    case DataType::kUint32: return f.template operator()<uint32_t>();
    case DataType::kInt64: return f.template operator()<int64_t>();
    case DataType::kUint64: return f.template operator()<uint64_t>();
    default:
      fail(ErrorCode::kUnsupported, "{} does not support element type {}", node.describe(),
           dtype_name(t));
  }
}

/// Calls f.template operator()<U>() with U an unsigned integer of the dtype's element size
/// (1, 2, 4 or 8 bytes): for ops that only move elements (Transpose, Gather, Concat, ...).
template <typename F>
decltype(auto) visit_by_size(DataType t, const ir::Node& node, F&& f) {
  if (dtype_is_packed(t) || t == DataType::kString || t == DataType::kUndefined) {
    fail(ErrorCode::kUnsupported, "{} does not support element type {}", node.describe(),
         dtype_name(t));
  }
  switch (dtype_bits(t)) {
    case 8: return f.template operator()<uint8_t>();
    case 16: return f.template operator()<uint16_t>();
    case 32: return f.template operator()<uint32_t>();
    case 64: return f.template operator()<uint64_t>();
    default:
      fail(ErrorCode::kUnsupported, "{} does not support element type {}", node.describe(),
           dtype_name(t));
  }
}

/// Same storage, reinterpreted as U (for visit_by_size).
template <typename U>
const U* raw_as(const Tensor& t) {
  return reinterpret_cast<const U*>(t.raw());
}
template <typename U>
U* mutable_raw_as(Tensor& t) {
  return reinterpret_cast<U*>(t.mutable_raw());
}

/// Integer values of an int32/int64 (or any integer) tensor, e.g. a shape or axes input.
std::vector<int64_t> int_values(const Tensor& t);
/// Float values of any numeric tensor.
std::vector<double> double_values(const Tensor& t);
/// Scalar (or one-element) tensor as a double.
double scalar_value(const Tensor& t, const ir::Node& node, const char* what);

/// Maps a possibly negative axis into [0, rank); throws kInvalidModel naming the node.
int64_t normalize_axis(int64_t axis, int64_t rank, const ir::Node& node);
/// Row-major strides of a shape (elements).
std::vector<int64_t> strides_of(const Shape& shape);

/// Multidirectional (numpy) broadcast of two shapes; throws kInvalidModel naming the node.
Shape broadcast_shapes(const Shape& a, const Shape& b, const ir::Node& node);

/// Axes from the attribute `name` (older opsets) or from input `input_index` (newer opsets).
/// `from_input` chooses; *present says whether any axes were given.
std::vector<int64_t> axes_from(const KernelContext& ctx, bool from_input, size_t input_index, const char* name,
                               bool* present);

/// What a Slice reads from x: element (i0, i1, ...) of the output is x[offset + Σ i_k·strides[k]].
struct SliceView {
  Shape out;
  std::vector<int64_t> strides;
  int64_t offset = 0;
};
/// The view of Slice(x, starts, ends, axes, steps) with numpy clamping: negative indices count from
/// the end, then into [0, dim] (step > 0) or [-1, dim-1] (step < 0). Empty axes = 0, 1, ...; empty
/// steps = 1. Throws kInvalidModel naming `node` on mismatched lengths, repeated axes or step 0.
SliceView slice_view(const Shape& x, const std::vector<int64_t>& starts, const std::vector<int64_t>& ends,
                     std::vector<int64_t> axes, std::vector<int64_t> steps, const ir::Node& node);
/// The view of the Slice node of `ctx` (a KernelContext or a GradContext) on its input 0: starts,
/// ends, axes as attributes before opset 10, as inputs 1..4 (with steps) from 10.
template <typename Ctx>
SliceView slice_view_of(const Ctx& ctx) {
  const ir::Node& n = ctx.node();
  std::vector<int64_t> starts, ends, axes, steps;
  if (ctx.opset() < 10) {
    starts = n.attr_ints("starts");
    ends = n.attr_ints("ends");
    axes = n.attr_ints("axes");
  } else {
    starts = int_values(ctx.input(1));
    ends = int_values(ctx.input(2));
    if (ctx.has_input(3)) axes = int_values(ctx.input(3));
    if (ctx.has_input(4)) steps = int_values(ctx.input(4));
  }
  return slice_view(ctx.input(0).shape(), starts, ends, std::move(axes), std::move(steps), n);
}

/// Split's part sizes along an axis of length `dim` into `outs` outputs: `split` when given, else
/// num_outputs (> 0, opset >= 18) parts of ceil(dim / k), else `outs` equal parts. Throws
/// kInvalidModel naming `node` when the sizes do not add up to dim or do not match outs.
std::vector<int64_t> split_sizes(std::vector<int64_t> split, const ir::Node& node, int64_t opset, int64_t dim,
                                 int64_t outs);
/// The part sizes of the Split node of `ctx` (a KernelContext or a GradContext) along an axis of
/// length `dim`: `split` as input 1 from opset 13, as attribute from 2 (input or attribute in 1).
template <typename Ctx>
std::vector<int64_t> split_sizes_of(const Ctx& ctx, int64_t dim) {
  const ir::Node& n = ctx.node();
  std::vector<int64_t> split;
  if (ctx.opset() >= 13) {
    if (ctx.has_input(1)) split = int_values(ctx.input(1));
  } else if (ctx.opset() >= 2) {
    split = n.attr_ints("split");
  } else {
    split = ctx.has_input(1) ? int_values(ctx.input(1)) : n.attr_ints("split");
  }
  return split_sizes(std::move(split), n, ctx.opset(), dim, static_cast<int64_t>(ctx.num_outputs()));
}

/// Pad's amounts per dimension of its input: `begin[d]` before and `end[d]` after (negative crops).
struct PadAmounts {
  std::vector<int64_t> begin, end;
};
/// The amounts of the Pad node of `ctx` (a KernelContext or a GradContext) on its input 0: the
/// `paddings` (opset 1) or `pads` attribute before opset 11, input 1 from 11, over the axes of
/// input 3 from 18 (default: every axis). Throws kInvalidModel naming the node when the pads do
/// not match the axes.
template <typename Ctx>
PadAmounts pad_amounts_of(const Ctx& ctx) {
  const ir::Node& n = ctx.node();
  const int64_t r = static_cast<int64_t>(ctx.input(0).rank());
  const std::vector<int64_t> pads =
      ctx.opset() < 11 ? n.attr_ints(ctx.opset() < 2 ? "paddings" : "pads") : int_values(ctx.input(1));
  std::vector<int64_t> axes;
  if (ctx.opset() >= 18 && ctx.has_input(3)) {
    for (int64_t a : int_values(ctx.input(3))) axes.push_back(normalize_axis(a, r, n));
  } else {
    for (int64_t a = 0; a < r; ++a) axes.push_back(a);
  }
  QTOOL_CHECK(pads.size() == 2 * axes.size(), ErrorCode::kInvalidModel, "{}: {} pads for {} axes", n.describe(),
              pads.size(), axes.size());
  PadAmounts p{std::vector<int64_t>(r, 0), std::vector<int64_t>(r, 0)};
  for (size_t i = 0; i < axes.size(); ++i) {
    p.begin[axes[i]] = pads[i];
    p.end[axes[i]] = pads[i + axes.size()];
  }
  return p;
}

/// Collapsed iteration plan for N inputs broadcast to one output: adjacent dimensions with the
/// same broadcast pattern are merged, so [N,C,H,W] + [1,C,1,1] becomes 3 dims (N, C, HW).
template <size_t N>
struct BroadcastPlan {
  Shape out_shape;
  int64_t numel = 0;
  std::vector<int64_t> dims;                    // collapsed output dims (at least one)
  std::array<std::vector<int64_t>, N> strides;  // per input, per collapsed dim (0 = broadcast)

  BroadcastPlan(const std::array<const Shape*, N>& in, const Shape& out) : out_shape(out) {
    numel = shape_numel(out);
    const size_t r = out.size();
    // bcast flags per dim: bit k set if input k is broadcast (size 1 where out > 1) along it.
    std::vector<int64_t> d;
    std::vector<uint32_t> pat;
    std::array<std::vector<int64_t>, N> full;  // per input dim sizes padded to rank r
    for (size_t k = 0; k < N; ++k) {
      full[k].assign(r, 1);
      const Shape& s = *in[k];
      for (size_t i = 0; i < s.size(); ++i) full[k][r - s.size() + i] = s[i];
    }
    for (size_t i = 0; i < r; ++i) {
      if (out[i] == 1) continue;
      uint32_t p = 0;
      for (size_t k = 0; k < N; ++k) {
        if (full[k][i] == 1) p |= 1u << k;
      }
      if (!d.empty() && pat.back() == p) {
        d.back() *= out[i];
      } else {
        d.push_back(out[i]);
        pat.push_back(p);
      }
    }
    if (d.empty()) {
      d.push_back(1);
      pat.push_back(0);
    }
    dims = d;
    for (size_t k = 0; k < N; ++k) {
      strides[k].assign(d.size(), 0);
      int64_t s = 1;
      for (size_t i = d.size(); i-- > 0;) {
        if (!(pat[i] & (1u << k))) {
          strides[k][i] = s;
          s *= d[i];
        }
      }
    }
  }

  /// Calls row(out_offset, in_offsets, len, inner_strides) over output elements [begin, end),
  /// one call per (partial) innermost row.
  template <typename Row>
  void for_rows(int64_t begin, int64_t end, Row&& row) const {
    const size_t r = dims.size();
    const int64_t inner = dims.back();
    std::array<int64_t, N> inner_stride;
    for (size_t k = 0; k < N; ++k) inner_stride[k] = strides[k].back();
    // Multi-index of `begin`.
    std::vector<int64_t> idx(r, 0);
    int64_t rem = begin;
    for (size_t i = r; i-- > 0;) {
      idx[i] = rem % dims[i];
      rem /= dims[i];
    }
    std::array<int64_t, N> off{};
    for (size_t k = 0; k < N; ++k) {
      for (size_t i = 0; i < r; ++i) off[k] += idx[i] * strides[k][i];
    }
    int64_t pos = begin;
    while (pos < end) {
      const int64_t len = std::min(inner - idx[r - 1], end - pos);
      row(pos, off, len, inner_stride);
      pos += len;
      if (pos >= end) break;
      // Advance the multi-index by len (to the start of the next row).
      for (size_t k = 0; k < N; ++k) off[k] += len * inner_stride[k];
      idx[r - 1] += len;
      for (size_t i = r - 1; i > 0 && idx[i] == dims[i]; --i) {
        for (size_t k = 0; k < N; ++k) off[k] -= dims[i] * strides[k][i];
        idx[i] = 0;
        ++idx[i - 1];
        for (size_t k = 0; k < N; ++k) off[k] += strides[k][i - 1];
      }
    }
  }
};

/// Element count from which element-wise kernels split work across the pool.
inline constexpr int64_t kParallelGrain = 1 << 15;

}  // namespace qtool::runtime::kernels

namespace qtool::runtime::kernels {

/// out[i0..ik] = in[offset + sum_j ij * strides[j]] for an output of `out_shape`: the one strided
/// copy behind Transpose, Slice, Expand, Tile-free broadcasting and DepthToSpace. Dimensions are
/// collapsed where the strides allow, and contiguous rows are copied with memcpy.
Tensor strided_copy(const Tensor& in, const Shape& out_shape, const std::vector<int64_t>& strides, int64_t offset,
                    ThreadPool* pool, const ir::Node& node);

}  // namespace qtool::runtime::kernels
