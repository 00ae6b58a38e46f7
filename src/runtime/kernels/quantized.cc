// Quantized ops: QuantizeLinear / DequantizeLinear (per-tensor, per-axis, blocked; 8/16/32-bit
// and packed 4/2-bit), DynamicQuantizeLinear, MatMulInteger, ConvInteger, QLinearMatMul,
// QLinearConv, com.microsoft MatMulNBits and the com.microsoft QOperator helpers QLinearAdd,
// QLinearConcat, QGemm and QLinearGlobalAveragePool.
//
// Integer products are accumulated exactly (double GEMM: every int8/int16 product sum below
// 2^53 is exact), then requantized like ONNX Runtime: y = sat(nearbyint(acc * (s_a s_b / s_y)) + zp_y)
// with the multiplier computed in float and ties rounded to even.
// ONNX Runtime rounds each step of its requantization in float; contracting a*b+c into one FMA
// would round differently, so this file is compiled with -ffp-contract=off (CMakeLists.txt).
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "kernels.h"
#include "nn_util.h"

namespace qtool::runtime {
namespace {

/// Reads element i of any integer tensor (packed 4/2-bit types unpacked) as int32.
template <typename T>
inline int32_t rd(const uint8_t* p, int64_t i) {
  return static_cast<int32_t>(reinterpret_cast<const T*>(p)[i]);
}

/// Converts the integer tensor `t` to int32 values (any supported integer type).
std::vector<int32_t> int_values(const KernelContext& ctx, const Tensor& t, const char* what) {
  std::vector<int32_t> v(static_cast<size_t>(t.numel()));
  const uint8_t* p = t.raw();
  const int64_t n = t.numel();
  switch (t.dtype()) {
    case DataType::kInt8: for (int64_t i = 0; i < n; ++i) v[i] = rd<int8_t>(p, i); break;
    case DataType::kUint8: for (int64_t i = 0; i < n; ++i) v[i] = rd<uint8_t>(p, i); break;
    case DataType::kInt16: for (int64_t i = 0; i < n; ++i) v[i] = rd<int16_t>(p, i); break;
    case DataType::kUint16: for (int64_t i = 0; i < n; ++i) v[i] = rd<uint16_t>(p, i); break;
    case DataType::kInt32: for (int64_t i = 0; i < n; ++i) v[i] = rd<int32_t>(p, i); break;
    case DataType::kInt4: case DataType::kUint4: case DataType::kInt2: case DataType::kUint2: {
      const int bits = dtype_bits(t.dtype());
      const bool sgn = dtype_is_signed(t.dtype());
      for (int64_t i = 0; i < n; ++i) v[i] = packed_get(p, i, bits, sgn);
      break;
    }
    default: nn::bad_node(ctx, "{} has unsupported dtype {}", what, dtype_name(t.dtype()));
  }
  return v;
}

/// How a scale/zero-point tensor maps onto the elements of x: per-tensor, per-axis or blocked.
struct QuantLayout {
  int64_t outer = 1, len = 1, inner = 1;  ///< x viewed as [outer, len, inner] around the axis
  int64_t block = 0;                      ///< 0: per-axis (or per-tensor when `per_tensor`)
  bool per_tensor = true;
  int64_t nblk = 1;
  /// Index into the scale tensor of element i of x.
  inline int64_t index(int64_t i) const {
    if (per_tensor) return 0;
    const int64_t in = i % inner, a = (i / inner) % len;
    if (block == 0) return a;
    const int64_t o = i / (inner * len);
    return (o * nblk + a / block) * inner + in;
  }
};

QuantLayout quant_layout(const KernelContext& ctx, const Shape& xs, const Tensor& scale) {
  QuantLayout l;
  const int64_t rank = static_cast<int64_t>(xs.size());
  const int64_t block = ctx.node().attr_int("block_size", 0);
  if (scale.numel() == 1 && block == 0) return l;
  if (rank == 0) nn::bad_node(ctx, "scale {} for a scalar input", shape_str(scale.shape()));
  const int64_t axis = nn::normalize_axis(ctx, ctx.node().attr_int("axis", 1), rank);
  l.per_tensor = false;
  for (int64_t i = 0; i < axis; ++i) l.outer *= xs[i];
  l.len = xs[axis];
  for (int64_t i = axis + 1; i < rank; ++i) l.inner *= xs[i];
  if (block > 0) {
    l.block = block;
    l.nblk = (l.len + block - 1) / block;
    Shape want = xs;
    want[axis] = l.nblk;
    if (scale.shape() != want) {
      nn::bad_node(ctx, "blocked scale {} must be {} for block_size {}", shape_str(scale.shape()), shape_str(want), block);
    }
  } else if (scale.rank() != 1 || scale.numel() != l.len) {
    nn::bad_node(ctx, "per-axis scale {} must have {} values (axis {})", shape_str(scale.shape()), l.len, axis);
  }
  return l;
}

/// The level types the AVX2 Quantize/DequantizeLinear runs take (nn::quantize_run_avx2).
bool is_int8_or_int16(DataType t) {
  return t == DataType::kUint8 || t == DataType::kInt8 || t == DataType::kUint16 || t == DataType::kInt16;
}

/// DequantizeLinear (10 per-tensor, 13 axis, 19 float16 scales, 21 block_size + int4/int16,
/// 23+ int2 and output_dtype): y = (x - zp) * scale, y typed like the scale (or output_dtype).
void dequantize_linear_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  Tensor scale = nn::float_input(ctx, 1);
  const QuantLayout l = quant_layout(ctx, x.shape(), scale);
  std::vector<int32_t> zp;
  if (ctx.has_input(2)) {
    const Tensor& z = ctx.input(2);
    if (z.dtype() != x.dtype()) nn::bad_node(ctx, "zero point dtype {} differs from x {}", dtype_name(z.dtype()), dtype_name(x.dtype()));
    if (z.numel() != scale.numel()) nn::bad_node(ctx, "zero point {} and scale {} differ", shape_str(z.shape()), shape_str(scale.shape()));
    if (z.dtype() != DataType::kFloat8E4M3FN) zp = int_values(ctx, z, "zero point");
  }
  const float* sp = scale.data<float>();
  Tensor y = Tensor::empty(DataType::kFloat, x.shape());
  float* yp = y.mutable_data<float>();
  const int64_t n = x.numel();
  if (x.dtype() == DataType::kFloat8E4M3FN) {  // float8 levels: y = (decode(x) - decode(zp)) * scale
    const uint8_t* xp = x.raw();
    const uint8_t* zq = ctx.has_input(2) ? ctx.input(2).raw() : nullptr;
    ctx.pool().parallel_for(n, 65536, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t s = l.index(i);
        yp[i] = (float8e4m3fn_to_float(xp[i]) - (zq ? float8e4m3fn_to_float(zq[s]) : 0.0f)) * sp[s];
      }
    });
  } else if (l.block == 0 && is_int8_or_int16(x.dtype()) && (l.per_tensor || l.inner >= 16) &&
             nn::sgemm_direct_available()) {
    // Runs of one scale over 8/16-bit levels: the AVX2 loop reads the levels in place.
    const int64_t run_len = l.per_tensor ? n : l.inner;
    const size_t esize = static_cast<size_t>(dtype_bits(x.dtype()) / 8);
    const uint8_t* xp = x.raw();
    ctx.pool().parallel_for((n + run_len - 1) / run_len, std::max<int64_t>(1, 65536 / run_len), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t i = r * run_len, e = std::min(n, i + run_len), s = l.index(i);
        nn::dequantize_run_avx2(xp + i * esize, x.dtype(), e - i, sp[s], zp.empty() ? 0 : zp[s], yp + i);
      }
    });
  } else {
    const std::vector<int32_t> xv = int_values(ctx, x, "x");
    ctx.pool().parallel_for(n, 65536, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t s = l.index(i);
        yp[i] = static_cast<float>(xv[i] - (zp.empty() ? 0 : zp[s])) * sp[s];
      }
    });
  }
  DataType out = ctx.input(1).dtype();
  const int64_t od = ctx.node().attr_int("output_dtype", 0);
  if (od != 0) out = static_cast<DataType>(od);
  ctx.set_output(0, out == DataType::kFloat ? std::move(y) : y.cast(out));
}

/// Writes saturated integer v into element i of y (any integer dtype, packed included).
inline void write_int(uint8_t* p, DataType t, int64_t i, int32_t v) {
  switch (t) {
    case DataType::kInt8: reinterpret_cast<int8_t*>(p)[i] = static_cast<int8_t>(v); break;
    case DataType::kUint8: p[i] = static_cast<uint8_t>(v); break;
    case DataType::kInt16: reinterpret_cast<int16_t*>(p)[i] = static_cast<int16_t>(v); break;
    case DataType::kUint16: reinterpret_cast<uint16_t*>(p)[i] = static_cast<uint16_t>(v); break;
    case DataType::kInt32: reinterpret_cast<int32_t*>(p)[i] = v; break;
    default: packed_set(p, i, dtype_bits(t), v); break;
  }
}

/// Quantizes float values: y = saturate(nearbyint(x / scale) + zp) into dtype `t`.
inline int32_t quantize_one(float x, float scale, int32_t zp, int64_t lo, int64_t hi) {
  const float q = std::nearbyint(x / scale) + static_cast<float>(zp);
  if (std::isnan(q)) return static_cast<int32_t>(std::clamp<int64_t>(0, lo, hi));
  return static_cast<int32_t>(std::clamp<double>(q, static_cast<double>(lo), static_cast<double>(hi)));
}

/// QuantizeLinear (10, 13 axis, 19, 21 block_size/output_dtype/int4, 23+ int2): output dtype
/// is the zero point's, else output_dtype, else uint8.
void quantize_linear_kernel(KernelContext& ctx) {
  Tensor x = nn::float_input(ctx, 0), scale = nn::float_input(ctx, 1);
  const QuantLayout l = quant_layout(ctx, x.shape(), scale);
  DataType out = DataType::kUint8;
  std::vector<int32_t> zp;
  const int64_t od = ctx.node().attr_int("output_dtype", 0);
  if (ctx.has_input(2)) {
    const Tensor& z = ctx.input(2);
    out = z.dtype();
    if (od != 0 && od != static_cast<int64_t>(out)) nn::bad_node(ctx, "output_dtype {} differs from zero point dtype {}", od, dtype_name(out));
    if (z.numel() != scale.numel()) nn::bad_node(ctx, "zero point {} and scale {} differ", shape_str(z.shape()), shape_str(scale.shape()));
    zp = int_values(ctx, z, "zero point");
  } else if (od != 0) {
    out = static_cast<DataType>(od);
  }
  if (!dtype_is_integer(out) || dtype_bits(out) > 16) nn::bad_node(ctx, "unsupported output dtype {}", dtype_name(out));
  int64_t lo, hi;
  dtype_int_range(out, &lo, &hi);
  Tensor y(out, x.shape());  // zero-filled so packed writes start clean
  uint8_t* yp = y.mutable_raw();
  const float* xp = x.data<float>();
  const float* sp = scale.data<float>();
  const int64_t n = x.numel();
  // Runs of one scale (the whole tensor, or `inner` values per-axis) go to the AVX2 loop.
  const bool simd = l.block == 0 && is_int8_or_int16(out) && (l.per_tensor || l.inner >= 16);
  const int64_t run_len = l.per_tensor ? n : l.inner;
  const size_t esize = static_cast<size_t>(dtype_bits(out) / 8);
  auto run = [&](int64_t i0, int64_t i1) {
    if (simd) {
      for (int64_t i = i0; i < i1;) {
        const int64_t s = l.index(i), e = std::min(i1, (i / run_len + 1) * run_len);
        if (!nn::quantize_run_avx2(xp + i, e - i, sp[s], zp.empty() ? 0 : zp[s], out, yp + i * esize)) break;
        i = e;
        if (i == i1) return;
      }
    }
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t s = l.index(i);
      write_int(yp, out, i, quantize_one(xp[i], sp[s], zp.empty() ? 0 : zp[s], lo, hi));
    }
  };
  // Packed types share bytes between neighbours, so they are written on one thread.
  if (dtype_is_packed(out)) run(0, n);
  else ctx.pool().parallel_for(n, 65536, run);
  ctx.set_output(0, std::move(y));
}

/// DynamicQuantizeLinear (11): uint8 with scale = (max(0, max x) - min(0, min x)) / 255 and
/// zp = sat(nearbyint(-min / scale)).
void dynamic_quantize_linear_kernel(KernelContext& ctx) {
  Tensor x = nn::float_input(ctx, 0);
  const float* xp = x.data<float>();
  float mn = 0.0f, mx = 0.0f;
  for (int64_t i = 0; i < x.numel(); ++i) {
    mn = std::min(mn, xp[i]);
    mx = std::max(mx, xp[i]);
  }
  const float scale = (mx - mn) / 255.0f;
  const int32_t zp = scale == 0.0f ? 0 : static_cast<int32_t>(std::clamp(std::nearbyint(0.0f - mn / scale), 0.0f, 255.0f));
  Tensor y = Tensor::empty(DataType::kUint8, x.shape());
  uint8_t* yp = y.mutable_data<uint8_t>();
  for (int64_t i = 0; i < x.numel(); ++i) {
    yp[i] = scale == 0.0f ? static_cast<uint8_t>(zp) : static_cast<uint8_t>(quantize_one(xp[i], scale, zp, 0, 255));
  }
  ctx.set_output(0, std::move(y));
  ctx.set_output(1, Tensor::scalar<float>(scale));
  if (ctx.wants_output(2)) ctx.set_output(2, Tensor::from_vector<uint8_t>({}, {static_cast<uint8_t>(zp)}));
}

/// (x - zp) as T (exact: every value is a small integer), zp per-tensor or per-slice along `axis`
/// of x when it has dim(axis) values; *max_abs (if given) receives max |x - zp|. 8-bit data is
/// read straight from its bytes.
template <typename T>
std::vector<T> centered_values(const KernelContext& ctx, const Tensor& x, size_t zp_input, int64_t axis,
                               const char* what, double* max_abs = nullptr) {
  std::vector<int32_t> z = ctx.has_input(zp_input) ? int_values(ctx, ctx.input(zp_input), "zero point") : std::vector<int32_t>{0};
  const int64_t n = x.numel();
  int64_t inner = 1, len = 1;
  if (z.size() != 1) {
    const int64_t rank = static_cast<int64_t>(x.rank());
    const int64_t ax = axis < 0 ? axis + rank : axis;
    if (ax < 0 || ax >= rank || static_cast<int64_t>(z.size()) != x.dim(static_cast<int>(ax)))
      nn::bad_node(ctx, "{} zero point with {} values does not match {}", what, z.size(), shape_str(x.shape()));
    for (int64_t i = ax + 1; i < rank; ++i) inner *= x.dim(static_cast<int>(i));
    len = x.dim(static_cast<int>(ax));
  }
  std::vector<T> out(static_cast<size_t>(n));
  T mx = 0;
  // Runs of `inner` values share one zero point (all n of them when it is per-tensor); each run
  // is converted, and its integer min and max give max |x - zp| (both loops vectorize).
  const int64_t run = z.size() == 1 ? n : inner;
  auto fill = [&](const auto* p) {
    for (int64_t r0 = 0, k = 0; r0 < n; r0 += run, k = (k + 1) % len) {
      const int32_t zp = z.size() == 1 ? z[0] : z[k];
      const int64_t r1 = std::min(n, r0 + run);
      auto lo = p[r0], hi = p[r0];
      for (int64_t i = r0; i < r1; ++i) {
        out[i] = static_cast<T>(static_cast<int32_t>(p[i]) - zp);
        lo = std::min(lo, p[i]);
        hi = std::max(hi, p[i]);
      }
      if (r1 > r0)
        mx = std::max({mx, static_cast<T>(static_cast<int64_t>(hi) - zp), static_cast<T>(zp - static_cast<int64_t>(lo))});
    }
  };
  if (x.dtype() == DataType::kUint8) {
    fill(x.data<uint8_t>());
  } else if (x.dtype() == DataType::kInt8) {
    fill(x.data<int8_t>());
  } else {
    const std::vector<int32_t> v = int_values(ctx, x, what);
    fill(v.data());
  }
  if (max_abs) *max_abs = static_cast<double>(mx);
  return out;
}

/// (x - zp) as doubles (the exact operands of the integer MatMul kernels).
std::vector<double> centered(const KernelContext& ctx, const Tensor& x, size_t zp_input, int64_t axis,
                             const char* what) {
  return centered_values<double>(ctx, x, zp_input, axis, what);
}

/// Batched numpy matmul (A [.., M, K], B [.., K, N], 1-D operands promoted) in T: sgemm for
/// float, dgemm for double.
template <typename T>
std::vector<T> batched_matmul(const KernelContext& ctx, const Shape& as0, const T* a, const Shape& bs0, const T* b,
                              Shape* out_shape, int64_t* m_out, int64_t* n_out) {
  Shape as = as0, bs = bs0;
  const bool a_vec = as.size() == 1, b_vec = bs.size() == 1;
  if (as.empty() || bs.empty()) nn::bad_node(ctx, "operands must have rank >= 1");
  if (a_vec) as.insert(as.begin(), 1);
  if (b_vec) bs.push_back(1);
  const int64_t m = as[as.size() - 2], k = as.back(), n = bs.back();
  if (bs[bs.size() - 2] != k) nn::bad_node(ctx, "inner dimensions differ: A {} B {}", shape_str(as0), shape_str(bs0));
  Shape abatch(as.begin(), as.end() - 2), bbatch(bs.begin(), bs.end() - 2);
  Shape batch = nn::broadcast_shapes(ctx, abatch, bbatch);
  *out_shape = batch;
  if (!a_vec) out_shape->push_back(m);
  if (!b_vec) out_shape->push_back(n);
  *m_out = m;
  *n_out = n;
  const int64_t nb = shape_numel(batch);
  std::vector<T> y(static_cast<size_t>(nb * m * n));
  const size_t r = batch.size();
  const std::vector<int64_t> sa = nn::broadcast_strides(abatch, r), sb = nn::broadcast_strides(bbatch, r);
  for (int64_t idx = 0; idx < nb; ++idx) {
    int64_t rem = idx, oa = 0, ob = 0;
    for (size_t i = r; i-- > 0;) {
      const int64_t c = rem % batch[i];
      rem /= batch[i];
      oa += c * sa[i];
      ob += c * sb[i];
    }
    if constexpr (std::is_same_v<T, float>) {
      nn::sgemm(false, false, m, n, k, 1.0f, a + oa * m * k, k, b + ob * k * n, n, 0.0f, y.data() + idx * m * n, n,
                &ctx.pool());
    } else {
      nn::dgemm(false, false, m, n, k, a + oa * m * k, k, b + ob * k * n, n, y.data() + idx * m * n, n);
    }
  }
  return y;
}

/// Float32 represents every integer below 2^24 exactly: integer operands whose every partial sum
/// stays below it in magnitude (k · max|a| · max|b|) multiply exactly in float32, on the fast GEMM
/// (8-bit MatMuls up to k = 258 with 255 · 255 products, or 1040 with 127 · 127).
bool exact_in_float(int64_t k, double amax, double bmax) { return static_cast<double>(k) * amax * bmax < 16777216.0; }

/// Batched numpy matmul of integer-valued doubles (exact: in float32 where exact_in_float).
std::vector<double> dmatmul(const KernelContext& ctx, const Shape& as0, const std::vector<double>& a, const Shape& bs0,
                            const std::vector<double>& b, Shape* out_shape, int64_t* m_out, int64_t* n_out) {
  double amax = 0.0, bmax = 0.0;
  for (double v : a) amax = std::max(amax, std::fabs(v));
  for (double v : b) bmax = std::max(bmax, std::fabs(v));
  const int64_t k = as0.empty() ? 0 : as0.back();
  if (exact_in_float(k, amax, bmax)) {
    const std::vector<float> af(a.begin(), a.end()), bf(b.begin(), b.end());
    const std::vector<float> y = batched_matmul<float>(ctx, as0, af.data(), bs0, bf.data(), out_shape, m_out, n_out);
    return std::vector<double>(y.begin(), y.end());
  }
  return batched_matmul<double>(ctx, as0, a.data(), bs0, b.data(), out_shape, m_out, n_out);
}

/// MatMulInteger (10): int32 (A - a_zp)(B - b_zp); a_zp per-tensor or per-row, b_zp per-tensor or per-column.
void matmul_integer_kernel(KernelContext& ctx) {
  const Tensor& a = ctx.input(0);
  const Tensor& b = ctx.input(1);
  std::vector<double> av = centered(ctx, a, 2, -2, "A"), bv = centered(ctx, b, 3, -1, "B");
  Shape ys;
  int64_t m, n;
  std::vector<double> y = dmatmul(ctx, a.shape(), av, b.shape(), bv, &ys, &m, &n);
  Tensor out = Tensor::empty(DataType::kInt32, ys);
  int32_t* op = out.mutable_data<int32_t>();
  for (size_t i = 0; i < y.size(); ++i) op[i] = static_cast<int32_t>(static_cast<int64_t>(y[i]));
  ctx.set_output(0, std::move(out));
}

/// Float values of a per-tensor or per-channel scale input.
std::vector<float> scale_values(const KernelContext& ctx, size_t i) {
  Tensor s = nn::float_input(ctx, i);
  return std::vector<float>(s.data<float>(), s.data<float>() + s.numel());
}

/// com.microsoft DynamicQuantizeMatMul: A (float) quantized as DynamicQuantizeLinear does (uint8,
/// range including 0), B 8-bit with b_scale and optional b_zero_point per tensor or per column, then
/// Y = float((A_q - a_zp)(B - b_zp)) · (a_scale · b_scale[n]) + bias[n], as ONNX Runtime's
/// MatMulIntegerToFloat computes it.
void dynamic_quantize_matmul_kernel(KernelContext& ctx) {
  Tensor a = nn::float_input(ctx, 0);
  const float* ap = a.data<float>();
  float mn = 0.0f, mx = 0.0f;
  for (int64_t i = 0; i < a.numel(); ++i) mn = std::min(mn, ap[i]), mx = std::max(mx, ap[i]);
  const float a_scale = (mx - mn) / 255.0f;
  const int32_t a_zp =
      a_scale == 0.0f ? 0 : static_cast<int32_t>(std::clamp(std::nearbyint(0.0f - mn / a_scale), 0.0f, 255.0f));
  std::vector<double> av(static_cast<size_t>(a.numel()));
  for (int64_t i = 0; i < a.numel(); ++i)
    av[i] = (a_scale == 0.0f ? a_zp : quantize_one(ap[i], a_scale, a_zp, 0, 255)) - a_zp;
  const Tensor& b = ctx.input(1);
  std::vector<double> bv = centered(ctx, b, 3, -1, "B");
  Shape ys;
  int64_t m, n;
  std::vector<double> acc = dmatmul(ctx, a.shape(), av, b.shape(), bv, &ys, &m, &n);
  const std::vector<float> bs = scale_values(ctx, 2);
  if (bs.size() != 1 && static_cast<int64_t>(bs.size()) != n)
    nn::bad_node(ctx, "b_scale has {} values, expected 1 or {}", bs.size(), n);
  std::vector<float> bias;
  if (ctx.has_input(4)) {
    const Tensor bt = nn::float_input(ctx, 4);
    if (bt.numel() != n) nn::bad_node(ctx, "bias has {} values, expected {}", bt.numel(), n);
    bias.assign(bt.data<float>(), bt.data<float>() + n);
  }
  Tensor y = Tensor::empty(DataType::kFloat, ys);
  float* yp = y.mutable_data<float>();
  for (size_t i = 0; i < acc.size(); ++i) {
    const int64_t c = static_cast<int64_t>(i) % n;
    const float mult = a_scale * bs[bs.size() == 1 ? 0 : c];
    yp[i] = static_cast<float>(static_cast<int32_t>(acc[i])) * mult + (bias.empty() ? 0.0f : bias[c]);
  }
  ctx.set_output(0, std::move(y));
}

/// MLAS's requantization of n accumulators: clamp float(acc) · m to the range around the zero
/// point, round half to even, add zp (separate functions so that the loops vectorize).
template <typename A, typename Q>
void requantize_run(const A* __restrict acc, Q* __restrict dst, int64_t n, float m, float fmin, float fmax,
                    int32_t zp) {
  for (int64_t i = 0; i < n; ++i) {
    float v = static_cast<float>(acc[i]) * m;
    v = v < fmin ? fmin : v;
    v = v > fmax ? fmax : v;
    dst[i] = static_cast<Q>(static_cast<int32_t>(std::nearbyint(v)) + zp);
  }
}

/// The same with a multiplier per element of the run (per-column scales of a MatMul row).
template <typename A, typename Q>
void requantize_cols(const A* __restrict acc, Q* __restrict dst, int64_t n, const float* __restrict m, float fmin,
                     float fmax, int32_t zp) {
  for (int64_t i = 0; i < n; ++i) {
    float v = static_cast<float>(acc[i]) * m[i];
    v = v < fmin ? fmin : v;
    v = v > fmax ? fmax : v;
    dst[i] = static_cast<Q>(static_cast<int32_t>(std::nearbyint(v)) + zp);
  }
}

/// Requantizes `total` exact accumulators: y[i] = sat(nearbyint(acc * mult[c]) + zp) with
/// c = (i / inner) % channels.
template <typename A>
Tensor requantize(const KernelContext& ctx, const A* acc, int64_t total, const Shape& shape,
                  const std::vector<float>& mult, size_t y_zp_input, int64_t inner, int64_t channels) {
  DataType out = DataType::kUint8;
  int32_t zp = 0;
  if (ctx.has_input(y_zp_input)) {
    const Tensor& z = ctx.input(y_zp_input);
    out = z.dtype();
    zp = int_values(ctx, z, "y zero point").at(0);
  }
  int64_t lo, hi;
  dtype_int_range(out, &lo, &hi);
  Tensor y = Tensor::empty(out, shape);  // every element is written below
  uint8_t* yp = y.mutable_raw();
  const float fmin = static_cast<float>(lo - zp), fmax = static_cast<float>(hi - zp);
  auto run = [&](auto* dst) {
    if (mult.size() == 1) {
      requantize_run(acc, dst, total, mult[0], fmin, fmax, zp);
    } else if (inner == 1) {  // rows of `channels` values, one multiplier per column
      for (int64_t r0 = 0; r0 < total; r0 += channels)
        requantize_cols(acc + r0, dst + r0, std::min(channels, total - r0), mult.data(), fmin, fmax, zp);
    } else {  // element i belongs to channel (i / inner) % channels: walk [outer, channels, inner] blocks
      const int64_t block = std::max<int64_t>(inner, 1) * std::max<int64_t>(channels, 1);
      for (int64_t base = 0; base < total; base += block)
        for (int64_t c = 0; c < channels; ++c) {
          const int64_t i0 = base + c * inner, i1 = std::min(total, i0 + inner);
          if (i1 > i0) requantize_run(acc + i0, dst + i0, i1 - i0, mult[c], fmin, fmax, zp);
        }
    }
  };
  if (out == DataType::kUint8) {
    run(yp);
  } else if (out == DataType::kInt8) {
    run(reinterpret_cast<int8_t*>(yp));
  } else {
    for (int64_t i = 0; i < total; ++i) {
      const float m = mult.size() == 1 ? mult[0] : mult[(i / std::max<int64_t>(inner, 1)) % channels];
      const float v = std::clamp(static_cast<float>(acc[i]) * m, fmin, fmax);
      write_int(yp, out, i, static_cast<int32_t>(std::nearbyint(v)) + zp);
    }
  }
  return y;
}

template <typename A>
Tensor requantize(const KernelContext& ctx, const std::vector<A>& acc, const Shape& shape, const std::vector<float>& mult,
                  size_t y_zp_input, int64_t inner, int64_t channels) {
  return requantize(ctx, acc.data(), static_cast<int64_t>(acc.size()), shape, mult, y_zp_input, inner, channels);
}

/// QLinearMatMul (10, 21): a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp; b's scale and
/// zero point may be per output column.
void qlinear_matmul_kernel(KernelContext& ctx) {
  const Tensor& a = ctx.input(0);
  const Tensor& b = ctx.input(3);
  const std::vector<float> sa = scale_values(ctx, 1), sb = scale_values(ctx, 4), sy = scale_values(ctx, 6);
  std::vector<float> mult(sb.size());
  for (size_t j = 0; j < sb.size(); ++j) mult[j] = sa[0] * sb[j] / sy[0];
  const int64_t n_cols = b.rank() == 1 ? 1 : b.dim(-1);
  if (mult.size() != 1 && static_cast<int64_t>(mult.size()) != n_cols)
    nn::bad_node(ctx, "b_scale has {} values for N={}", mult.size(), n_cols);
  double amax = 0.0, bmax = 0.0;
  const std::vector<float> af = centered_values<float>(ctx, a, 2, -2, "A", &amax);
  const std::vector<float> bf = centered_values<float>(ctx, b, 5, -1, "B", &bmax);
  Shape ys;
  int64_t m, n;
  if (a.rank() >= 1 && exact_in_float(a.dim(-1), amax, bmax)) {
    const std::vector<float> acc = batched_matmul<float>(ctx, a.shape(), af.data(), b.shape(), bf.data(), &ys, &m, &n);
    ctx.set_output(0, requantize(ctx, acc, ys, mult, 7, 1, n));
    return;
  }
  const std::vector<double> av(af.begin(), af.end()), bv(bf.begin(), bf.end());
  const std::vector<double> acc = batched_matmul<double>(ctx, a.shape(), av.data(), b.shape(), bv.data(), &ys, &m, &n);
  ctx.set_output(0, requantize(ctx, acc, ys, mult, 7, 1, n));
}

/// Float32 represents every integer below 2^24 exactly, and im2col + GEMM only ever adds products
/// of the operands: a float convolution of integer-valued operands is exact while the sum of the
/// absolute values of any output's terms stays below this bound.
constexpr double kExactFloatSum = 16777216.0;

/// The operands of an exact integer convolution of (x - x_zp) with (w - w_zp[m]) (w_zp per-tensor
/// or per output channel) as floats, and how many input channels one float pass may sum exactly.
struct IntegerConv {
  std::vector<float> xv, wv;
  nn::WindowGeometry g;
  Shape ys;
  int64_t group = 1, cin = 0, kspatial = 1;
  /// Input channels per float pass (every partial sum an exactly representable integer); < 1 when
  /// even one channel cannot be bounded.
  int64_t chunk = 0;
};

IntegerConv integer_conv(KernelContext& ctx, size_t x_in, size_t xzp_in, size_t w_in, size_t wzp_in) {
  const Tensor& x = ctx.input(x_in);
  const Tensor& w = ctx.input(w_in);
  IntegerConv c;
  c.group = ctx.node().attr_int("group", 1);
  if (x.rank() < 3 || w.rank() != x.rank()) nn::bad_node(ctx, "x {} / w {} must be [N, C, spatial...]", shape_str(x.shape()), shape_str(w.shape()));
  if (c.group <= 0 || w.dim(1) * c.group != x.dim(1) || w.dim(0) % c.group != 0) {
    nn::bad_node(ctx, "channels do not match: x {} w {} group {}", shape_str(x.shape()), shape_str(w.shape()), c.group);
  }
  double xmax = 0, wmax = 0;
  c.xv = centered_values<float>(ctx, x, xzp_in, 1, "x", &xmax);
  c.wv = centered_values<float>(ctx, w, wzp_in, 0, "w", &wmax);
  c.g = nn::window_geometry(ctx, x.shape(), std::vector<int64_t>(w.shape().begin() + 2, w.shape().end()), false);
  c.ys = {x.dim(0), w.dim(0)};
  for (int64_t d : c.g.out_shape()) c.ys.push_back(d);
  c.cin = w.dim(1);
  c.kspatial = w.numel() / std::max<int64_t>(w.dim(0) * c.cin, 1);
  const double per_term = std::max(xmax * wmax, 1.0);
  const int64_t max_terms = static_cast<int64_t>((kExactFloatSum - 1) / per_term);
  c.chunk = max_terms / std::max<int64_t>(c.kspatial, 1);
  return c;
}

/// Exact integer convolution plus `bias` when given (integer_conv's operands). Runs in float32
/// (the fast im2col + GEMM path) in chunks of input channels small enough that every partial sum
/// is an exactly representable integer (e.g. 514 channels of a 1x1 conv for uint8 x int8),
/// summing the chunks in double; falls back to double when one chunk cannot be bounded (grouped
/// convs with huge kernels).
std::vector<double> conv_integer_acc(KernelContext& ctx, size_t x_in, size_t w_in, const IntegerConv& c,
                                     const std::vector<double>* bias) {
  const Tensor& x = ctx.input(x_in);
  const Tensor& w = ctx.input(w_in);
  const int64_t group = c.group, cin = c.cin, kspatial = c.kspatial, chunk = c.chunk;
  std::vector<double> y(static_cast<size_t>(shape_numel(c.ys)));
  if (chunk < 1 || (chunk < cin && group != 1)) {
    const std::vector<double> xd(c.xv.begin(), c.xv.end()), wd(c.wv.begin(), c.wv.end());
    nn::conv_forward<double>(xd.data(), x.shape(), wd.data(), w.shape(), bias ? bias->data() : nullptr, group, c.g,
                             y.data(), &ctx.pool());
    return y;
  }
  // Float path, one chunk of input channels at a time (all of them when they fit).
  const int64_t n = x.dim(0), cx = x.dim(1), m = w.dim(0);
  const int64_t plane = x.numel() / std::max<int64_t>(n * cx, 1);
  std::vector<float> part(y.size());
  for (int64_t c0 = 0; c0 < cin; c0 += chunk) {
    const int64_t c1 = std::min(cin, c0 + chunk), cc = c1 - c0;
    Shape xs = x.shape(), wsh = w.shape();
    std::vector<float> xf, wf;
    const float* xp = c.xv.data();
    const float* wp = c.wv.data();
    if (cc != cin) {  // group == 1: slice channels [c0, c1) of x and of w's input axis
      xs[1] = cc;
      wsh[1] = cc;
      xf.resize(static_cast<size_t>(n * cc * plane));
      for (int64_t b = 0; b < n; ++b)
        std::copy(c.xv.begin() + (b * cx + c0) * plane, c.xv.begin() + (b * cx + c1) * plane, xf.begin() + b * cc * plane);
      wf.resize(static_cast<size_t>(m * cc * kspatial));
      for (int64_t o = 0; o < m; ++o)
        std::copy(c.wv.begin() + (o * cin + c0) * kspatial, c.wv.begin() + (o * cin + c1) * kspatial,
                  wf.begin() + o * cc * kspatial);
      xp = xf.data();
      wp = wf.data();
    }
    nn::conv_forward<float>(xp, xs, wp, wsh, nullptr, group, c.g, part.data(), &ctx.pool());
    for (size_t i = 0; i < y.size(); ++i) y[i] += static_cast<double>(part[i]);
  }
  if (bias) {
    const int64_t out_plane = static_cast<int64_t>(y.size()) / std::max<int64_t>(n * m, 1);
    for (int64_t b = 0; b < n; ++b)
      for (int64_t o = 0; o < m; ++o) {
        double* yo = y.data() + (b * m + o) * out_plane;
        for (int64_t p = 0; p < out_plane; ++p) yo[p] += (*bias)[o];
      }
  }
  return y;
}

std::vector<double> conv_integer_acc(KernelContext& ctx, size_t x_in, size_t xzp_in, size_t w_in, size_t wzp_in,
                                     const std::vector<double>* bias, Shape* ys) {
  const IntegerConv c = integer_conv(ctx, x_in, xzp_in, w_in, wzp_in);
  *ys = c.ys;
  return conv_integer_acc(ctx, x_in, w_in, c, bias);
}

/// ConvInteger (10): int32 conv of (x - x_zp) and (w - w_zp).
void conv_integer_kernel(KernelContext& ctx) {
  Shape ys;
  std::vector<double> acc = conv_integer_acc(ctx, 0, 2, 1, 3, nullptr, &ys);
  Tensor out = Tensor::empty(DataType::kInt32, ys);
  int32_t* op = out.mutable_data<int32_t>();
  for (size_t i = 0; i < acc.size(); ++i) op[i] = static_cast<int32_t>(static_cast<int64_t>(acc[i]));
  ctx.set_output(0, std::move(out));
}

/// QLinearConv (10): x, x_scale, x_zp, w, w_scale (per-tensor or per output channel), w_zp,
/// y_scale, y_zp, optional int32 bias B.
void qlinear_conv_kernel(KernelContext& ctx) {
  std::vector<int32_t> bias32;
  if (ctx.has_input(8)) bias32 = int_values(ctx, ctx.input(8), "B");
  const IntegerConv c = integer_conv(ctx, 0, 2, 3, 5);
  const std::vector<float> sx = scale_values(ctx, 1), sw = scale_values(ctx, 4), sy = scale_values(ctx, 6);
  std::vector<float> mult(sw.size());
  for (size_t j = 0; j < sw.size(); ++j) mult[j] = sx[0] * sw[j] / sy[0];
  const int64_t m = c.ys[1];
  if (mult.size() != 1 && static_cast<int64_t>(mult.size()) != m) nn::bad_node(ctx, "w_scale has {} values for {} channels", mult.size(), m);
  if (!bias32.empty() && static_cast<int64_t>(bias32.size()) != m) nn::bad_node(ctx, "B has {} values for {} channels", bias32.size(), m);
  int64_t plane = 1;
  for (size_t i = 2; i < c.ys.size(); ++i) plane *= c.ys[i];
  int64_t max_bias = 0;
  for (int32_t b : bias32) max_bias = std::max<int64_t>(max_bias, std::abs(static_cast<int64_t>(b)));
  if (c.chunk >= c.cin && max_bias < (int64_t{1} << 30)) {
    // One float pass holds every sum exactly (|sum| < 2^24), and with the bias it stays an int32:
    // the int32 accumulators MLAS requantizes, without the double path's chunks.
    Tensor acc = Tensor::empty(DataType::kFloat, c.ys);
    nn::conv_forward<float>(c.xv.data(), ctx.input(0).shape(), c.wv.data(), ctx.input(3).shape(), nullptr, c.group, c.g,
                            acc.mutable_data<float>(), &ctx.pool());
    Tensor acc32 = Tensor::empty(DataType::kInt32, c.ys);
    const float* ap = acc.data<float>();
    int32_t* ip = acc32.mutable_data<int32_t>();
    for (int64_t r = 0; r < c.ys[0] * m; ++r) {  // rows of one output channel
      const int32_t bo = bias32.empty() ? 0 : bias32[r % m];
      for (int64_t p = r * plane; p < (r + 1) * plane; ++p) ip[p] = static_cast<int32_t>(ap[p]) + bo;
    }
    ctx.set_output(0, requantize(ctx, ip, acc32.numel(), c.ys, mult, 7, plane, m));
    return;
  }
  const std::vector<double> bias(bias32.begin(), bias32.end());
  std::vector<double> acc = conv_integer_acc(ctx, 0, 3, c, bias.empty() ? nullptr : &bias);
  ctx.set_output(0, requantize(ctx, acc, c.ys, mult, 7, plane, m));
}

/// com.microsoft MatMulNBits: Y = A @ dequant(B)^T (+ bias); accuracy_level 4 with 4 or 8 bits quantizes
/// A to int8 per block first, as ONNX Runtime's CPU kernel does (checked against ONNX Runtime 1.30:
/// 1.4e-6 on 4-bit, 1.9e-5 on 8-bit outputs of magnitude ~10, where leaving A float is 0.02 / 0.36 off). B [N, n_blocks, blob] holds `bits`-bit
/// codes packed low-first along K; scales [N * n_blocks]; zero_points either packed uint8
/// ([N * ceil(n_blocks * bits / 8)]) or float ([N * n_blocks]); default zero point 2^(bits-1).
void matmul_nbits_kernel(KernelContext& ctx) {
  const ir::Node& node = ctx.node();
  const int64_t k = node.required_attr("K").i, n = node.required_attr("N").i;
  const int64_t bits = node.attr_int("bits", 4), block = node.required_attr("block_size").i;
  if (bits != 2 && bits != 4 && bits != 8) nn::bad_node(ctx, "bits={} not supported (2, 4, 8)", bits);
  if (block < 16 || (block & (block - 1)) != 0) nn::bad_node(ctx, "block_size {} must be a power of two >= 16", block);
  Tensor a = nn::float_input(ctx, 0);
  const Tensor& b = ctx.input(1);
  if (a.rank() < 1 || a.dim(-1) != k) nn::bad_node(ctx, "A {} must end in K={}", shape_str(a.shape()), k);
  const int64_t nblk = (k + block - 1) / block, blob = block * bits / 8;
  if (b.dtype() != DataType::kUint8 || b.numel() != n * nblk * blob) {
    nn::bad_node(ctx, "B {} ({}) must be uint8 [{}, {}, {}]", shape_str(b.shape()), dtype_name(b.dtype()), n, nblk, blob);
  }
  Tensor scales = nn::float_input(ctx, 2);
  if (scales.numel() != n * nblk) nn::bad_node(ctx, "scales has {} values, expected {}", scales.numel(), n * nblk);
  const float* sp = scales.data<float>();
  const uint8_t* bp = b.data<uint8_t>();
  // Zero points: packed codes, float values or the default midpoint.
  std::vector<float> zpf(static_cast<size_t>(n * nblk), static_cast<float>(1 << (bits - 1)));
  if (ctx.has_input(3)) {
    const Tensor& z = ctx.input(3);
    if (z.dtype() == DataType::kUint8) {
      const int64_t zrow = (nblk * bits + 7) / 8;
      if (z.numel() != n * zrow) nn::bad_node(ctx, "packed zero_points has {} bytes, expected {}", z.numel(), n * zrow);
      for (int64_t r = 0; r < n; ++r)
        for (int64_t j = 0; j < nblk; ++j)
          zpf[r * nblk + j] = static_cast<float>(
              bits == 8 ? z.data<uint8_t>()[r * zrow + j] : packed_get(z.data<uint8_t>() + r * zrow, j, static_cast<int>(bits), false));
    } else {
      Tensor zf = nn::float_input(ctx, 3);
      if (zf.numel() != n * nblk) nn::bad_node(ctx, "zero_points has {} values, expected {}", zf.numel(), n * nblk);
      std::copy(zf.data<float>(), zf.data<float>() + zf.numel(), zpf.begin());
    }
  }
  if (ctx.has_input(4) && ctx.input(4).numel() > 0) nn::bad_node(ctx, "g_idx is not supported");
  // Dequantize B to [N, K] (rows are output channels), in parallel over rows.
  std::vector<float> wdq(static_cast<size_t>(n * k));
  ctx.pool().parallel_for(n, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t j = 0; j < nblk; ++j) {
        const uint8_t* blk = bp + (r * nblk + j) * blob;
        const float s = sp[r * nblk + j], z = zpf[r * nblk + j];
        const int64_t kk0 = j * block, kk1 = std::min(k, kk0 + block);
        float* dst = wdq.data() + r * k;
        for (int64_t kk = kk0; kk < kk1; ++kk) {
          const int32_t q = bits == 8 ? blk[kk - kk0] : packed_get(blk, kk - kk0, static_cast<int>(bits), false);
          dst[kk] = (static_cast<float>(q) - z) * s;
        }
      }
    }
  });
  Shape ys = a.shape();
  ys.back() = n;
  const int64_t rows = a.numel() / std::max<int64_t>(k, 1);
  if (node.attr_int("accuracy_level", 0) == 4 && (bits == 4 || bits == 8)) {
    // ONNX Runtime's CompInt8 path (MLAS QuantizeARow_CompInt8): each row of A quantized to int8 per
    // block of block_size along K, symmetric, scale = max|a| / 127, codes nearbyint(a · (127 / max|a|));
    // the integer dot per block is then scaled by both scales. Here A is replaced by code · scale,
    // which gives the same sums up to float summation order.
    Tensor aq = Tensor::empty(DataType::kFloat, a.shape());
    const float* ap = a.data<float>();
    float* qp = aq.mutable_data<float>();
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t k0 = 0; k0 < k; k0 += block) {
        const int64_t k1 = std::min(k, k0 + block);
        float amax = 0.0f;
        for (int64_t kk = k0; kk < k1; ++kk) amax = std::max(amax, std::fabs(ap[r * k + kk]));
        const float scale = amax / 127.0f;
        const float inv = amax != 0.0f ? 127.0f / amax : 0.0f;
        for (int64_t kk = k0; kk < k1; ++kk)
          qp[r * k + kk] = std::clamp(std::nearbyint(ap[r * k + kk] * inv), -128.0f, 127.0f) * scale;
      }
    a = std::move(aq);
  }
  Tensor y = Tensor::empty(DataType::kFloat, ys);
  float* yp = y.mutable_data<float>();
  nn::sgemm(false, true, rows, n, k, 1.0f, a.data<float>(), k, wdq.data(), k, 0.0f, yp, n, &ctx.pool());
  if (ctx.has_input(5)) {
    Tensor bias = nn::float_input(ctx, 5);
    if (bias.numel() != n) nn::bad_node(ctx, "bias has {} values, expected {}", bias.numel(), n);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < n; ++j) yp[r * n + j] += bias.data<float>()[j];
  }
  ctx.set_output(0, nn::to_dtype_like(std::move(y), ctx.input(0).dtype()));
}

/// Per-tensor scale and zero point of a (value, scale, zero point) triple starting at input i.
void scalar_qparams(const KernelContext& ctx, size_t scale_in, size_t zp_in, float* scale, int32_t* zp) {
  Tensor s = nn::float_input(ctx, scale_in);
  if (s.numel() != 1) nn::bad_node(ctx, "input {} must be a per-tensor scale, got {}", scale_in, shape_str(s.shape()));
  *scale = s.data<float>()[0];
  *zp = ctx.has_input(zp_in) ? int_values(ctx, ctx.input(zp_in), "zero point").at(0) : 0;
}

/// Output dtype of a QLinear* op: its zero point's, else the first input's.
DataType qoutput_dtype(const KernelContext& ctx, size_t zp_in, DataType fallback) {
  return ctx.has_input(zp_in) ? ctx.input(zp_in).dtype() : fallback;
}

/// com.microsoft QLinearAdd: C = quantize(dequantize(A) + dequantize(B)) with numpy broadcasting;
/// inputs A, A_scale, A_zp, B, B_scale, B_zp, C_scale, C_zp (per-tensor).
///
/// The float arithmetic is ONNX Runtime's (MLAS) step for step, so that both round every tie
/// the same way: for 8-bit data c = sat(rint((F + a·r_a) + b·r_b)) with r_a = s_a/s_c,
/// r_b = s_b/s_c and F = z_c - (r_a·z_a + r_b·z_b), a one-element operand taken as b (checked
/// against ONNX Runtime 1.30 for vector+vector, vector+scalar and scalar+vector); for 16-bit data
/// c = sat(rint((s_a(a - z_a) + s_b(b - z_b)) / s_c) + z_c).
/// QLinearAdd of two 8-bit tensors of one shape: ONNX Runtime's x86 formula (below), vectorized.
template <typename Q>
void qadd_run(const Q* __restrict a, const Q* __restrict b, Q* __restrict y, int64_t n, float ra, float rb, float fixed,
              float lo, float hi) {
  for (int64_t i = 0; i < n; ++i) {
    float v = std::fma(static_cast<float>(a[i]), ra, std::fma(static_cast<float>(b[i]), rb, fixed));
    v = std::nearbyint(v);
    v = v < lo ? lo : v;
    v = v > hi ? hi : v;
    y[i] = static_cast<Q>(static_cast<int32_t>(v));
  }
}

/// The same built for AVX2 and FMA (used where nn::sgemm_direct_available()): the FMAs inline.
#if defined(__x86_64__)
template <typename Q>
__attribute__((target("avx2,fma"))) void qadd_run_fma(const Q* __restrict a, const Q* __restrict b, Q* __restrict y,
                                                      int64_t n, float ra, float rb, float fixed, float lo, float hi) {
  for (int64_t i = 0; i < n; ++i) {
    float v = std::fma(static_cast<float>(a[i]), ra, std::fma(static_cast<float>(b[i]), rb, fixed));
    v = std::nearbyint(v);
    v = v < lo ? lo : v;
    v = v > hi ? hi : v;
    y[i] = static_cast<Q>(static_cast<int32_t>(v));
  }
}
#else
template <typename Q>
void qadd_run_fma(const Q* a, const Q* b, Q* y, int64_t n, float ra, float rb, float fixed, float lo, float hi) {
  qadd_run(a, b, y, n, ra, rb, fixed, lo, hi);
}
#endif

void qlinear_add_kernel(KernelContext& ctx) {
  const Tensor* a = &ctx.input(0);
  const Tensor* b = &ctx.input(3);
  float sa, sb, sc;
  int32_t za, zb, zc;
  scalar_qparams(ctx, 1, 2, &sa, &za);
  scalar_qparams(ctx, 4, 5, &sb, &zb);
  scalar_qparams(ctx, 6, 7, &sc, &zc);
  const Shape ys = nn::broadcast_shapes(ctx, a->shape(), b->shape());
  const DataType out = qoutput_dtype(ctx, 7, a->dtype());
  int64_t lo, hi;
  dtype_int_range(out, &lo, &hi);
  const size_t r = ys.size();
  const std::vector<int64_t> sta = nn::broadcast_strides(a->shape(), r), stb = nn::broadcast_strides(b->shape(), r);
  const bool eight_bit = dtype_bits(out) == 8;
  // ONNX Runtime's 8-bit kernel on x86 (MLAS's AVX2 QLinearAdd, also run on AVX-512 CPUs):
  // F = zc - (ra*za + rb*zb); c = fma(a, ra, fma(b, rb, F)), a one-element operand included (its
  // term folded into F as an FMA too). Checked against ONNX Runtime 1.30 on every residual Add of
  // PyTorch's MobileNetV3 QDQ export (269,592 values, none differ; the unfused (F + a*ra) + b*rb
  // differed in one) and on vector + one element both ways (tests/runtime/quantized_test.cc).
  const float ra = sa / sc, rb = sb / sc;
  const float fixed = static_cast<float>(zc) - (ra * static_cast<float>(za) + rb * static_cast<float>(zb));
  Tensor y = Tensor::empty(out, ys);  // every element is written below
  uint8_t* yp = y.mutable_raw();
  const int64_t n = y.numel();
  if (eight_bit && a->shape() == b->shape() && a->dtype() == out && b->dtype() == out) {
    const bool fma = nn::sgemm_direct_available();
    auto run = [&](auto* dst) {
      using Q = std::remove_pointer_t<decltype(dst)>;
      const Q* ap = reinterpret_cast<const Q*>(a->raw());
      const Q* bp = reinterpret_cast<const Q*>(b->raw());
      const float flo = static_cast<float>(lo), fhi = static_cast<float>(hi);
      if (fma) qadd_run_fma(ap, bp, dst, n, ra, rb, fixed, flo, fhi);
      else qadd_run(ap, bp, dst, n, ra, rb, fixed, flo, fhi);
    };
    if (out == DataType::kUint8) run(reinterpret_cast<uint8_t*>(yp));
    else run(reinterpret_cast<int8_t*>(yp));
    ctx.set_output(0, std::move(y));
    return;
  }
  const std::vector<int32_t> av = int_values(ctx, *a, "A"), bv = int_values(ctx, *b, "B");
  for (int64_t i = 0; i < n; ++i) {
    int64_t rem = i, ia = 0, ib = 0;
    for (size_t d = r; d-- > 0;) {
      const int64_t c = rem % ys[d];
      rem /= ys[d];
      ia += c * sta[d];
      ib += c * stb[d];
    }
    int64_t q;
    if (eight_bit) {
      const float v = std::fma(static_cast<float>(av[ia]), ra, std::fma(static_cast<float>(bv[ib]), rb, fixed));
      q = std::clamp<int64_t>(static_cast<int64_t>(std::nearbyint(v)), lo, hi);
    } else {
      const float v = (sa * static_cast<float>(av[ia] - za) + sb * static_cast<float>(bv[ib] - zb)) / sc;
      const float cl = std::clamp(v, static_cast<float>(lo - zc), static_cast<float>(hi - zc));
      q = static_cast<int64_t>(std::nearbyint(cl + static_cast<float>(zc)));
    }
    write_int(yp, out, i, static_cast<int32_t>(q));
  }
  ctx.set_output(0, std::move(y));
}

/// com.microsoft QLinearConcat: inputs Y_scale, Y_zp, then (X, X_scale, X_zp) per tensor; each
/// input is requantized to Y's parameters and concatenated along `axis`.
void qlinear_concat_kernel(KernelContext& ctx) {
  float sy;
  int32_t zy;
  scalar_qparams(ctx, 0, 1, &sy, &zy);
  const size_t count = (ctx.num_inputs() - 2) / 3;
  if (count == 0 || (ctx.num_inputs() - 2) % 3 != 0) nn::bad_node(ctx, "expects Y_scale, Y_zp and (X, scale, zp) triples");
  const Tensor& first = ctx.input(2);
  const int64_t rank = static_cast<int64_t>(first.rank());
  const int64_t axis = nn::normalize_axis(ctx, ctx.node().required_attr("axis").i, rank);
  Shape ys = first.shape();
  ys[axis] = 0;
  for (size_t t = 0; t < count; ++t) {
    const Tensor& x = ctx.input(2 + 3 * t);
    if (static_cast<int64_t>(x.rank()) != rank) nn::bad_node(ctx, "input {} has rank {}, expected {}", t, x.rank(), rank);
    for (int64_t d = 0; d < rank; ++d) {
      if (d != axis && x.dim(static_cast<int>(d)) != ys[d]) nn::bad_node(ctx, "input {} shape {} does not match", t, shape_str(x.shape()));
    }
    ys[axis] += x.dim(static_cast<int>(axis));
  }
  const DataType out = qoutput_dtype(ctx, 1, first.dtype());
  int64_t lo, hi;
  dtype_int_range(out, &lo, &hi);
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < axis; ++d) outer *= ys[d];
  for (int64_t d = axis + 1; d < rank; ++d) inner *= ys[d];
  Tensor y(out, ys);
  uint8_t* yp = y.mutable_raw();
  int64_t offset = 0;
  for (size_t t = 0; t < count; ++t) {
    const Tensor& x = ctx.input(2 + 3 * t);
    float sx;
    int32_t zx;
    scalar_qparams(ctx, 3 + 3 * t, 4 + 3 * t, &sx, &zx);
    const std::vector<int32_t> xv = int_values(ctx, x, "X");
    const int64_t len = x.dim(static_cast<int>(axis)) * inner;
    const bool same = sx == sy && zx == zy;
    for (int64_t o = 0; o < outer; ++o) {
      for (int64_t i = 0; i < len; ++i) {
        const int32_t q = xv[o * len + i];
        const int64_t dst = o * ys[axis] * inner + offset + i;
        write_int(yp, out, dst, same ? q : quantize_one(static_cast<float>(q - zx) * sx, sy, zy, lo, hi));
      }
    }
    offset += len;
  }
  ctx.set_output(0, std::move(y));
}

/// com.microsoft QGemm: acc = (A - a_zp) op(B - b_zp) (+ int32 C), then
/// y = sat(nearbyint(acc * alpha * a_scale * b_scale / y_scale) + y_zp), or float
/// alpha * a_scale * b_scale * acc when y_scale is absent. b_scale/b_zp may be per column.
void qgemm_kernel(KernelContext& ctx) {
  const ir::Node& node = ctx.node();
  const Tensor& a = ctx.input(0);
  const Tensor& b = ctx.input(3);
  if (a.rank() != 2 || b.rank() != 2) nn::bad_node(ctx, "A {} and B {} must be 2-D", shape_str(a.shape()), shape_str(b.shape()));
  const bool ta = node.attr_int("transA", 0) != 0, tb = node.attr_int("transB", 0) != 0;
  const float alpha = node.attr_float("alpha", 1.0f);
  const int64_t m = ta ? a.dim(1) : a.dim(0), k = ta ? a.dim(0) : a.dim(1);
  const int64_t n = tb ? b.dim(0) : b.dim(1);
  if ((tb ? b.dim(1) : b.dim(0)) != k) nn::bad_node(ctx, "inner dimensions differ: A {} B {}", shape_str(a.shape()), shape_str(b.shape()));
  float sa;
  int32_t za;
  scalar_qparams(ctx, 1, 2, &sa, &za);
  const std::vector<float> sb = scale_values(ctx, 4);
  std::vector<int32_t> zb = ctx.has_input(5) ? int_values(ctx, ctx.input(5), "b zero point") : std::vector<int32_t>{0};
  if (sb.size() != 1 && static_cast<int64_t>(sb.size()) != n) nn::bad_node(ctx, "b_scale has {} values for N={}", sb.size(), n);
  const std::vector<int32_t> av = int_values(ctx, a, "A"), bv = int_values(ctx, b, "B");
  std::vector<double> ad(av.size()), bd(bv.size());
  for (size_t i = 0; i < av.size(); ++i) ad[i] = av[i] - za;
  for (size_t i = 0; i < bv.size(); ++i) {
    const int64_t col = tb ? static_cast<int64_t>(i) / k : static_cast<int64_t>(i) % n;
    bd[i] = bv[i] - (zb.size() == 1 ? zb[0] : zb[col]);
  }
  std::vector<double> acc(static_cast<size_t>(m * n));
  nn::dgemm(ta, tb, m, n, k, ad.data(), a.dim(1), bd.data(), b.dim(1), acc.data(), n);
  if (ctx.has_input(6)) {
    const Tensor& c = ctx.input(6);
    const std::vector<int32_t> cv = int_values(ctx, c, "C");
    const int64_t cr = c.rank() == 2 ? c.dim(0) : 1, cc = c.rank() >= 1 ? c.dim(-1) : 1;
    if ((cr != 1 && cr != m) || (cc != 1 && cc != n)) nn::bad_node(ctx, "C {} cannot be broadcast to [{},{}]", shape_str(c.shape()), m, n);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) acc[i * n + j] += cv[(cr == 1 ? 0 : i) * cc + (cc == 1 ? 0 : j)];
  }
  if (!ctx.has_input(7)) {
    Tensor y = Tensor::empty(DataType::kFloat, {m, n});
    float* yp = y.mutable_data<float>();
    for (int64_t i = 0; i < m * n; ++i) yp[i] = static_cast<float>(acc[i]) * (alpha * sa * sb[sb.size() == 1 ? 0 : i % n]);
    ctx.set_output(0, std::move(y));
    return;
  }
  const std::vector<float> sy = scale_values(ctx, 7);
  std::vector<float> mult(sb.size());
  for (size_t j = 0; j < sb.size(); ++j) mult[j] = alpha * sa * sb[j] / sy.at(0);
  ctx.set_output(0, requantize(ctx, acc, {m, n}, mult, 8, 1, n));
}


/// com.microsoft QLinearGlobalAveragePool: X, x_scale, x_zp, y_scale, y_zp (per-tensor), NCHW or
/// NHWC (`channels_last`). Like ONNX Runtime's MLAS kernel: acc = Σ x - x_zp·HW (exact int32),
/// y = sat(round_half_even(float(acc) · s) + y_zp) with s = x_scale / (y_scale · float(HW)).
void qlinear_global_average_pool_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  if (x.rank() < 3) nn::bad_node(ctx, "X {} must be [N, C, spatial...] (or NHWC)", shape_str(x.shape()));
  float sx, sy;
  int32_t zx, zy;
  scalar_qparams(ctx, 1, 2, &sx, &zx);
  scalar_qparams(ctx, 3, 4, &sy, &zy);
  const bool last = ctx.node().attr_int("channels_last", 0) != 0;
  const int64_t n = x.dim(0), c = last ? x.dim(-1) : x.dim(1);
  const int64_t hw = x.numel() / std::max<int64_t>(n * c, 1);
  Shape ys(x.rank(), 1);
  ys[0] = n;
  ys[last ? x.rank() - 1 : 1] = c;
  const DataType out = qoutput_dtype(ctx, 4, x.dtype());
  int64_t lo, hi;
  dtype_int_range(out, &lo, &hi);
  const std::vector<int32_t> xv = int_values(ctx, x, "X");
  const float scale = sx / (sy * static_cast<float>(hw));
  Tensor y(out, ys);
  uint8_t* yp = y.mutable_raw();
  for (int64_t b = 0; b < n; ++b) {
    for (int64_t ch = 0; ch < c; ++ch) {
      int64_t acc = -static_cast<int64_t>(zx) * hw;
      for (int64_t i = 0; i < hw; ++i) acc += xv[last ? (b * hw + i) * c + ch : (b * c + ch) * hw + i];
      float v = static_cast<float>(static_cast<int32_t>(acc)) * scale;
      v = std::clamp(v, static_cast<float>(lo - zy), static_cast<float>(hi - zy));
      write_int(yp, out, b * c + ch, static_cast<int32_t>(std::nearbyint(v)) + zy);
    }
  }
  ctx.set_output(0, std::move(y));
}
}  // namespace

/// Registers the quantized family (ai.onnx and com.microsoft MatMulNBits).
void kernels::register_quantized_kernels(KernelRegistry& r) {
  r.add("", "QuantizeLinear", 10, quantize_linear_kernel);
  r.add("", "DequantizeLinear", 10, dequantize_linear_kernel);
  r.add("", "DynamicQuantizeLinear", 11, dynamic_quantize_linear_kernel);
  r.add("", "MatMulInteger", 10, matmul_integer_kernel);
  r.add("", "ConvInteger", 10, conv_integer_kernel);
  r.add("", "QLinearMatMul", 10, qlinear_matmul_kernel);
  r.add("", "QLinearConv", 10, qlinear_conv_kernel);
  r.add("com.microsoft", "MatMulNBits", 1, matmul_nbits_kernel);
  r.add("com.microsoft", "DynamicQuantizeMatMul", 1, dynamic_quantize_matmul_kernel);
  r.add("com.microsoft", "QLinearAdd", 1, qlinear_add_kernel);
  r.add("com.microsoft", "QLinearConcat", 1, qlinear_concat_kernel);
  r.add("com.microsoft", "QGemm", 1, qgemm_kernel);
  r.add("com.microsoft", "QLinearGlobalAveragePool", 1, qlinear_global_average_pool_kernel);
}

}  // namespace qtool::runtime
