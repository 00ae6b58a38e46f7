// Resize (10, 11, 13, 18, 19) and the deprecated Upsample (7, 9): nearest / linear / cubic over
// any dims. Each output coordinate maps back to the input with the node's
// coordinate_transformation_mode; the per-dim taps (index, weight) are precomputed and the
// output is their tensor product.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "kernels.h"
#include "nn_util.h"

namespace qtool::runtime {
namespace {

struct Taps {
  std::vector<int64_t> start;   ///< per output index: offset into idx/w
  std::vector<int64_t> idx;     ///< input indices
  std::vector<float> w;         ///< weights
  std::vector<uint8_t> outside; ///< tf_crop_and_resize: coordinate outside the input
};

struct ResizeParams {
  std::string mode = "nearest", ctm = "half_pixel", nearest_mode = "round_prefer_floor";
  float cubic_a = -0.75f, extrapolation = 0.0f;
  bool exclude_outside = false;
  bool legacy = false;  ///< Upsample / Resize-10: asymmetric, "simple" nearest rounding
};

/// Maps output coordinate x back to the input. `out` is the resized length as ONNX defines it for
/// the transform: in * scale (not floored) when scales are given, so align_corners and friends
/// use e.g. 2.4 for a length-4 axis scaled by 0.6.
float original_coord(const ResizeParams& p, float x, float scale, int64_t in, float out, float roi_start,
                     float roi_end) {
  const std::string& m = p.ctm;
  if (p.legacy || m == "asymmetric") return x / scale;
  if (m == "half_pixel") return (x + 0.5f) / scale - 0.5f;
  if (m == "half_pixel_symmetric") {
    const float adjustment = out / (scale * static_cast<float>(in));
    const float center = static_cast<float>(in) / 2.0f;
    const float offset = center * (1.0f - adjustment);
    return offset + (x + 0.5f) / scale - 0.5f;
  }
  if (m == "pytorch_half_pixel") return out > 1 ? (x + 0.5f) / scale - 0.5f : 0.0f;
  if (m == "align_corners") return out == 1 ? 0.0f : x * static_cast<float>(in - 1) / (out - 1);
  if (m == "tf_half_pixel_for_nn") return (x + 0.5f) / scale;
  if (m == "tf_crop_and_resize") {
    return out > 1 ? roi_start * static_cast<float>(in - 1) +
                         x * (roi_end - roi_start) * static_cast<float>(in - 1) / (out - 1)
                   : 0.5f * (roi_start + roi_end) * static_cast<float>(in - 1);
  }
  return x / scale;
}

int64_t nearest_index(const ResizeParams& p, float x, bool downsampling) {
  if (p.legacy) return downsampling ? static_cast<int64_t>(std::ceil(x)) : static_cast<int64_t>(x);
  const std::string& m = p.nearest_mode;
  if (m == "floor") return static_cast<int64_t>(std::floor(x));
  if (m == "ceil") return static_cast<int64_t>(std::ceil(x));
  const float fl = std::floor(x);
  if (x - fl == 0.5f) return static_cast<int64_t>(m == "round_prefer_ceil" ? fl + 1 : fl);
  return static_cast<int64_t>(std::round(x));
}

Taps make_taps(const ResizeParams& p, int64_t in, int64_t out, float scale, float roi_start, float roi_end) {
  Taps t;
  t.start.resize(static_cast<size_t>(out) + 1);
  t.outside.assign(static_cast<size_t>(out), 0);
  for (int64_t o = 0; o < out; ++o) {
    t.start[o] = static_cast<int64_t>(t.idx.size());
    if (in == out && scale == 1.0f && p.ctm != "tf_crop_and_resize") {
      t.idx.push_back(o);
      t.w.push_back(1.0f);
      continue;
    }
    const float out_len = p.ctm == "tf_crop_and_resize" ? static_cast<float>(out) : static_cast<float>(in) * scale;
    float x = original_coord(p, static_cast<float>(o), scale, in, out_len, roi_start, roi_end);
    if (p.ctm == "tf_crop_and_resize" && (x < 0 || x > static_cast<float>(in - 1))) t.outside[o] = 1;
    if (p.mode == "nearest") {
      t.idx.push_back(std::clamp<int64_t>(nearest_index(p, x, scale < 1.0f), 0, in - 1));
      t.w.push_back(1.0f);
    } else if (p.mode == "linear") {
      x = std::clamp(x, 0.0f, static_cast<float>(in - 1));
      const int64_t x0 = std::min<int64_t>(static_cast<int64_t>(x), in - 1), x1 = std::min<int64_t>(x0 + 1, in - 1);
      const float d = x - static_cast<float>(x0);
      t.idx.push_back(x0);
      t.w.push_back(1.0f - d);
      t.idx.push_back(x1);
      t.w.push_back(d);
    } else {  // cubic
      const float a = p.cubic_a;
      const float fl = std::floor(x), s = x - fl;
      const int64_t base = static_cast<int64_t>(fl) - 1;
      float c[4];
      const float s1 = s + 1, s2 = 1 - s, s3 = 2 - s;
      c[0] = ((a * s1 - 5 * a) * s1 + 8 * a) * s1 - 4 * a;
      c[1] = ((a + 2) * s - (a + 3)) * s * s + 1;
      c[2] = ((a + 2) * s2 - (a + 3)) * s2 * s2 + 1;
      c[3] = ((a * s3 - 5 * a) * s3 + 8 * a) * s3 - 4 * a;
      float sum = 0;
      for (int k = 0; k < 4; ++k) {
        const int64_t i = base + k;
        if (p.exclude_outside && (i < 0 || i >= in)) c[k] = 0;
        sum += c[k];
      }
      for (int k = 0; k < 4; ++k) {
        t.idx.push_back(std::clamp<int64_t>(base + k, 0, in - 1));
        t.w.push_back(p.exclude_outside && sum != 0 ? c[k] / sum : c[k]);
      }
    }
  }
  t.start[out] = static_cast<int64_t>(t.idx.size());
  return t;
}

void resize_impl(KernelContext& ctx, bool is_upsample) {
  const ir::Node& node = ctx.node();
  Tensor x = nn::float_input(ctx, 0);
  const int64_t rank = static_cast<int64_t>(x.rank());
  ResizeParams p;
  p.mode = node.attr_string("mode", "nearest");
  if (p.mode == "bilinear" || p.mode == "trilinear") p.mode = "linear";
  if (p.mode != "nearest" && p.mode != "linear" && p.mode != "cubic") nn::bad_node(ctx, "unknown mode '{}'", p.mode);
  p.legacy = is_upsample || ctx.opset() < 11;
  p.ctm = node.attr_string("coordinate_transformation_mode", "half_pixel");
  p.nearest_mode = node.attr_string("nearest_mode", "round_prefer_floor");
  p.cubic_a = node.attr_float("cubic_coeff_a", -0.75f);
  p.extrapolation = node.attr_float("extrapolation_value", 0.0f);
  p.exclude_outside = node.attr_int("exclude_outside", 0) != 0;
  if (node.attr_int("antialias", 0) != 0) nn::bad_node(ctx, "antialias=1 is not supported");

  std::vector<float> scales(static_cast<size_t>(rank), 1.0f);
  Shape out_shape = x.shape();
  std::vector<float> roi_start(static_cast<size_t>(rank), 0.0f), roi_end(static_cast<size_t>(rank), 1.0f);
  if (p.legacy) {
    std::vector<float> s;
    if (is_upsample && ctx.opset() < 9) {
      s = node.attr_floats("scales");
    } else {
      Tensor st = nn::float_input(ctx, 1);
      s.assign(st.data<float>(), st.data<float>() + st.numel());
    }
    if (static_cast<int64_t>(s.size()) != rank) nn::bad_node(ctx, "scales has {} values for rank {}", s.size(), rank);
    scales = s;
    for (int64_t i = 0; i < rank; ++i) out_shape[i] = static_cast<int64_t>(std::floor(x.dim(i) * scales[i]));
  } else {
    std::vector<int64_t> axes = node.attr_ints("axes");
    if (axes.empty()) {
      for (int64_t i = 0; i < rank; ++i) axes.push_back(i);
    }
    for (int64_t& a : axes) a = nn::normalize_axis(ctx, a, rank);
    const size_t na = axes.size();
    if (ctx.has_input(1) && ctx.input(1).numel() > 0) {
      Tensor roi = nn::float_input(ctx, 1);
      if (roi.numel() == static_cast<int64_t>(2 * na)) {
        for (size_t i = 0; i < na; ++i) {
          roi_start[axes[i]] = roi.data<float>()[i];
          roi_end[axes[i]] = roi.data<float>()[na + i];
        }
      } else if (p.ctm == "tf_crop_and_resize") {
        nn::bad_node(ctx, "roi has {} values, expected {}", roi.numel(), 2 * na);
      }
    }
    const bool has_scales = ctx.has_input(2) && ctx.input(2).numel() > 0;
    const bool has_sizes = ctx.has_input(3) && ctx.input(3).numel() > 0;
    if (has_scales == has_sizes) nn::bad_node(ctx, "exactly one of scales and sizes must be given");
    if (has_scales) {
      Tensor st = nn::float_input(ctx, 2);
      if (st.numel() != static_cast<int64_t>(na)) nn::bad_node(ctx, "scales has {} values, expected {}", st.numel(), na);
      for (size_t i = 0; i < na; ++i) {
        scales[axes[i]] = st.data<float>()[i];
        out_shape[axes[i]] = static_cast<int64_t>(std::floor(x.dim(axes[i]) * scales[axes[i]]));
      }
    } else {
      Tensor sz = ctx.input(3).cast(DataType::kInt64);
      if (sz.numel() != static_cast<int64_t>(na)) nn::bad_node(ctx, "sizes has {} values, expected {}", sz.numel(), na);
      const std::string policy = node.attr_string("keep_aspect_ratio_policy", "stretch");
      if (policy == "stretch") {
        for (size_t i = 0; i < na; ++i) {
          out_shape[axes[i]] = sz.data<int64_t>()[i];
          scales[axes[i]] = static_cast<float>(out_shape[axes[i]]) / static_cast<float>(x.dim(axes[i]));
        }
      } else {
        float s = policy == "not_larger" ? INFINITY : -INFINITY;
        for (size_t i = 0; i < na; ++i) {
          const float r = static_cast<float>(sz.data<int64_t>()[i]) / static_cast<float>(x.dim(axes[i]));
          s = policy == "not_larger" ? std::min(s, r) : std::max(s, r);
        }
        for (size_t i = 0; i < na; ++i) {
          scales[axes[i]] = s;
          out_shape[axes[i]] = static_cast<int64_t>(std::round(s * static_cast<float>(x.dim(axes[i]))));
        }
      }
    }
  }
  for (int64_t i = 0; i < rank; ++i) {
    if (scales[i] <= 0) nn::bad_node(ctx, "scale {} must be positive", scales[i]);
  }
  std::vector<Taps> taps;
  for (int64_t i = 0; i < rank; ++i) {
    taps.push_back(make_taps(p, x.dim(i), out_shape[i], scales[i], roi_start[i], roi_end[i]));
  }
  Tensor y = Tensor::empty(DataType::kFloat, out_shape);
  const float* xp = x.data<float>();
  float* yp = y.mutable_data<float>();
  std::vector<int64_t> in_stride(static_cast<size_t>(rank), 1);
  for (int64_t i = rank - 2; i >= 0; --i) in_stride[i] = in_stride[i + 1] * x.dim(i + 1);
  const int64_t total = y.numel();
  const int64_t last = rank > 0 ? out_shape[rank - 1] : 1;
  const int64_t rows = last > 0 ? total / last : 0;
  ctx.pool().parallel_for(rows, std::max<int64_t>(1, 4096 / std::max<int64_t>(last, 1)), [&](int64_t r0, int64_t r1) {
    std::vector<int64_t> oi(static_cast<size_t>(rank), 0);
    for (int64_t r = r0; r < r1; ++r) {
      int64_t rem = r;
      bool outside = false;
      for (int64_t d = rank - 2; d >= 0; --d) {
        oi[d] = rem % out_shape[d];
        rem /= out_shape[d];
        outside = outside || taps[d].outside[oi[d]];
      }
      // Weighted sum over the tap products of the leading dims, then the last dim's taps.
      std::vector<std::pair<int64_t, float>> lead = {{0, 1.0f}};
      for (int64_t d = 0; d + 1 < rank; ++d) {
        std::vector<std::pair<int64_t, float>> next;
        const Taps& t = taps[d];
        for (auto [off, wt] : lead)
          for (int64_t k = t.start[oi[d]]; k < t.start[oi[d] + 1]; ++k)
            next.emplace_back(off + t.idx[k] * in_stride[d], wt * t.w[k]);
        lead.swap(next);
      }
      const Taps& tl = taps[rank - 1];
      float* dst = yp + r * last;
      for (int64_t o = 0; o < last; ++o) {
        if (outside || tl.outside[o]) {
          dst[o] = p.extrapolation;
          continue;
        }
        float acc = 0.0f;
        for (auto [off, wt] : lead)
          for (int64_t k = tl.start[o]; k < tl.start[o + 1]; ++k) acc += wt * tl.w[k] * xp[off + tl.idx[k]];
        dst[o] = acc;
      }
    }
  });
  ctx.set_output(0, nn::to_dtype_like(std::move(y), ctx.input(0).dtype()));
}

void resize_kernel(KernelContext& ctx) { resize_impl(ctx, false); }
void upsample_kernel(KernelContext& ctx) { resize_impl(ctx, true); }

}  // namespace

/// Registers Resize (10: Upsample-like; 11+: coordinate modes, roi, sizes; 18+: axes,
/// keep_aspect_ratio_policy) and Upsample (7: scales attribute, 9: scales input).
void kernels::register_resize_kernels(KernelRegistry& r) {
  r.add("", "Resize", 10, resize_kernel);
  r.add("", "Upsample", 1, upsample_kernel);
}

}  // namespace qtool::runtime
