// Quantization parameters and weight/bias quantization (see qdq.h for the math).
#include <algorithm>
#include <cmath>
#include <limits>

#include "qtool/quant/qdq.h"

namespace qtool::quant {

QParams compute_qparams(Range r, DataType type, bool symmetric) {
  int64_t qmin = 0, qmax = 0;
  dtype_int_range(type, &qmin, &qmax);
  QTOOL_CHECK(qmax > qmin, ErrorCode::kUnsupported, "cannot quantize to {}", dtype_name(type));
  float lo = std::isfinite(r.min) ? std::min(r.min, 0.0f) : 0.0f;
  float hi = std::isfinite(r.max) ? std::max(r.max, 0.0f) : 0.0f;
  QParams p;
  if (symmetric) {
    const double absmax = std::max(std::fabs(lo), std::fabs(hi));
    const double half = static_cast<double>(qmax - qmin) / 2.0;
    p.scale = static_cast<float>(absmax / half);
    p.zero_point = dtype_is_signed(type) ? 0 : static_cast<int32_t>((qmax + qmin + 1) / 2);
  } else {
    p.scale = static_cast<float>((static_cast<double>(hi) - lo) / static_cast<double>(qmax - qmin));
    if (p.scale > 0.0f) {
      const double z = std::nearbyint(static_cast<double>(qmin) - lo / static_cast<double>(p.scale));
      p.zero_point = static_cast<int32_t>(std::clamp<double>(z, static_cast<double>(qmin), static_cast<double>(qmax)));
    } else {
      p.zero_point = static_cast<int32_t>(dtype_is_signed(type) ? 0 : qmin);
    }
  }
  if (!(p.scale > 0.0f) || !std::isfinite(p.scale)) {
    p.scale = 1.0f;
    p.zero_point = dtype_is_signed(type) ? 0 : static_cast<int32_t>(qmin);
  }
  return p;
}

int32_t quantize_value(float x, QParams p, DataType type) {
  int64_t qmin = 0, qmax = 0;
  dtype_int_range(type, &qmin, &qmax);
  const double q = std::nearbyint(static_cast<double>(x) / p.scale) + p.zero_point;  // FE_TONEAREST: half to even
  return static_cast<int32_t>(std::clamp<double>(q, static_cast<double>(qmin), static_cast<double>(qmax)));
}

QuantizedWeight quantize_weight(const Tensor& w, bool per_channel, int64_t axis, DataType type, bool reduce_range,
                                const std::vector<float>* scales) {
  QTOOL_CHECK(w.dtype() == DataType::kFloat, ErrorCode::kUnsupported, "weight of type {} (expected float32)",
              dtype_name(w.dtype()));
  QTOOL_CHECK(dtype_bits(type) == 8 && dtype_is_integer(type), ErrorCode::kUnsupported,
              "8-bit weights must be int8 or uint8, got {}", dtype_name(type));
  // Symmetric levels, s = max|w| / qmax: [-127, 127] ([-64, 63] with reduce_range); int8 keeps its
  // type's -128 as the lower clamp (never reached), uint8 stores the levels + 128, zero point 128.
  const bool is_signed = dtype_is_signed(type);
  const int32_t offset = is_signed ? 0 : 128;
  const int64_t qmax = reduce_range ? 63 : 127;
  const int64_t qmin = reduce_range ? -64 : is_signed ? -128 : -127;
  QuantizedWeight out;
  const float* x = w.data<float>();
  const int64_t n = w.numel();
  int64_t channels = 1, inner = n, outer = 1;
  if (per_channel && w.rank() > 0) {
    if (axis < 0) axis += static_cast<int64_t>(w.rank());
    QTOOL_CHECK(axis >= 0 && axis < static_cast<int64_t>(w.rank()), ErrorCode::kInternal, "bad channel axis");
    channels = w.dim(static_cast<int>(axis));
    inner = 1;
    for (size_t d = axis + 1; d < w.rank(); ++d) inner *= w.shape()[d];
    outer = n / std::max<int64_t>(1, channels * inner);
    out.axis = axis;
  }
  std::vector<float> absmax(channels, 0.0f);
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t c = 0; c < channels; ++c)
      for (int64_t i = 0; i < inner; ++i) {
        const float v = std::fabs(x[(o * channels + c) * inner + i]);
        if (std::isfinite(v)) absmax[c] = std::max(absmax[c], v);
      }
  out.scales.resize(channels);
  for (int64_t c = 0; c < channels; ++c) out.scales[c] = absmax[c] > 0.0f ? absmax[c] / static_cast<float>(qmax) : 1.0f;
  if (scales) {
    QTOOL_CHECK(scales->size() == static_cast<size_t>(channels), ErrorCode::kInternal,
                "{} weight scales for {} channels", scales->size(), channels);
    for (int64_t c = 0; c < channels; ++c)
      if (std::isfinite((*scales)[c]) && (*scales)[c] > 0.0f) out.scales[c] = (*scales)[c];
  }
  out.values = Tensor(type, w.shape());
  out.zero_point = offset;
  uint8_t* q = out.values.mutable_raw();
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t c = 0; c < channels; ++c)
      for (int64_t i = 0; i < inner; ++i) {
        const int64_t k = (o * channels + c) * inner + i;
        const int32_t v = quantize_value(x[k], QParams{out.scales[c], 0}, DataType::kInt8);
        q[k] = static_cast<uint8_t>(std::clamp<int32_t>(v, static_cast<int32_t>(qmin), static_cast<int32_t>(qmax)) + offset);
      }
  return out;
}

QuantizedWeight quantize_weight4(const Tensor& w, int64_t axis) {
  QTOOL_CHECK(w.dtype() == DataType::kFloat, ErrorCode::kUnsupported, "weight of type {} (expected float32)",
              dtype_name(w.dtype()));
  QuantizedWeight out;
  const float* x = w.data<float>();
  const int64_t n = w.numel();
  int64_t channels = 1, inner = n, outer = 1;
  if (axis >= 0 && w.rank() > 0) {
    QTOOL_CHECK(axis < static_cast<int64_t>(w.rank()), ErrorCode::kInternal, "bad channel axis");
    channels = w.dim(static_cast<int>(axis));
    inner = 1;
    for (size_t d = axis + 1; d < w.rank(); ++d) inner *= w.shape()[d];
    outer = n / std::max<int64_t>(1, channels * inner);
    out.axis = axis;
  }
  auto level = [](float v, float s) { return std::clamp<int32_t>(static_cast<int32_t>(std::nearbyint(v / s)), -8, 7); };
  out.scales.assign(channels, 1.0f);
  for (int64_t c = 0; c < channels; ++c) {
    float amax = 0.0f;
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t i = 0; i < inner; ++i) amax = std::max(amax, std::fabs(x[(o * channels + c) * inner + i]));
    if (!(amax > 0.0f) || !std::isfinite(amax)) continue;
    double best = std::numeric_limits<double>::infinity();
    // amax / k: a slice already on a 4-bit grid whose largest level is k (GPTQ's output).
    std::vector<float> candidates;
    for (int k = 8; k >= 1; --k) candidates.push_back(amax / static_cast<float>(k));
    for (int k = 0; k <= 20; ++k) candidates.push_back((1.0f - 0.025f * static_cast<float>(k)) * amax / 7.0f);
    for (const float s : candidates) {
      double err = 0;
      for (int64_t o = 0; o < outer; ++o)
        for (int64_t i = 0; i < inner; ++i) {
          const float v = x[(o * channels + c) * inner + i];
          const double d = v - s * static_cast<float>(level(v, s));
          err += d * d;
        }
      if (err < best) {
        best = err;
        out.scales[c] = s;
      }
    }
  }
  out.values = Tensor(DataType::kInt8, w.shape());
  int8_t* q = out.values.mutable_data<int8_t>();
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t c = 0; c < channels; ++c)
      for (int64_t i = 0; i < inner; ++i) {
        const int64_t k = (o * channels + c) * inner + i;
        q[k] = static_cast<int8_t>(level(x[k], out.scales[c]));
      }
  return out;
}

uint64_t content_hash(const Tensor& t) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&](const unsigned char* p, size_t n) {
    for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  };
  for (int64_t d : t.shape()) mix(reinterpret_cast<const unsigned char*>(&d), sizeof d);
  mix(reinterpret_cast<const unsigned char*>(t.data<float>()), static_cast<size_t>(t.numel()) * sizeof(float));
  return h;
}

Tensor quantize_bias(const Tensor& b, float input_scale, const std::vector<float>& w_scales) {
  QTOOL_CHECK(b.dtype() == DataType::kFloat, ErrorCode::kUnsupported, "bias of type {} (expected float32)",
              dtype_name(b.dtype()));
  Tensor out(DataType::kInt32, b.shape());
  const float* x = b.data<float>();
  int32_t* q = out.mutable_data<int32_t>();
  const int64_t n = b.numel();
  for (int64_t c = 0; c < n; ++c) {
    const double s = static_cast<double>(input_scale) * w_scales[w_scales.size() == 1 ? 0 : c];
    double v = s > 0 ? std::nearbyint(x[c] / s) : 0.0;
    v = std::clamp<double>(v, std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max());
    q[c] = static_cast<int32_t>(v);
  }
  return out;
}

}  // namespace qtool::quant
