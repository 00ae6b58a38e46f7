// Element-wise rows with AVX2 (issue 18), eight lanes per step: Where over 4-byte elements with a
// per-element condition (an attention mask applied to scores), and QuantizeLinear /
// DequantizeLinear runs of one scale over 8/16-bit levels (the same roundings as the portable
// kernel: x / scale, round half to even, + zp, saturate; (x - zp) * scale). Run only on CPUs with
// AVX2 (nn::sgemm_direct_available()).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "avx2_util.h"
#include "nn_util.h"

namespace qtool::runtime::nn {

#if QTOOL_AVX2_KERNELS
namespace {

template <bool kX, bool kY>
QTOOL_AVX2 void where4(const bool* c, const uint32_t* x, const uint32_t* y, uint32_t* o, int64_t n) {
  const __m256 xs = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(*x)));
  const __m256 ys = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(*y)));
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    int64_t bytes;
    std::memcpy(&bytes, c + i, 8);
    const __m256i m = _mm256_cmpgt_epi32(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(bytes)), _mm256_setzero_si256());
    const __m256 xv = kX ? _mm256_loadu_ps(reinterpret_cast<const float*>(x + i)) : xs;
    const __m256 yv = kY ? _mm256_loadu_ps(reinterpret_cast<const float*>(y + i)) : ys;
    _mm256_storeu_ps(reinterpret_cast<float*>(o + i), _mm256_blendv_ps(yv, xv, _mm256_castsi256_ps(m)));
  }
  for (; i < n; ++i) o[i] = c[i] ? x[kX ? i : 0] : y[kY ? i : 0];
}

}  // namespace

bool where4_avx2(const bool* c, const uint32_t* x, int64_t sx, const uint32_t* y, int64_t sy, uint32_t* o, int64_t n) {
  if (!sgemm_direct_available()) return false;
  if (sx == 1 && sy == 0) where4<true, false>(c, x, y, o, n);
  else if (sx == 0 && sy == 1) where4<false, true>(c, x, y, o, n);
  else if (sx == 1 && sy == 1) where4<true, true>(c, x, y, o, n);
  else where4<false, false>(c, x, y, o, n);
  return true;
}

namespace {

/// saturate(nearbyint(x / scale) + zp) for 8 lanes as int32 (NaN gives 0 before saturation, as
/// the portable kernel does). Division, not a reciprocal: the same roundings as the scalar code.
QTOOL_AVX2 inline __m256i quantize8(__m256 x, __m256 scale, __m256 zp, __m256 lo, __m256 hi) {
  __m256 q = _mm256_add_ps(_mm256_round_ps(_mm256_div_ps(x, scale), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), zp);
  q = _mm256_blendv_ps(q, _mm256_setzero_ps(), _mm256_cmp_ps(q, q, _CMP_UNORD_Q));
  return _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(q, lo), hi));
}

template <typename T>
QTOOL_AVX2 void quantize_run(const float* x, int64_t n, float scale, int32_t zp, T* y) {
  constexpr float lo = static_cast<float>(std::numeric_limits<T>::min());
  constexpr float hi = static_cast<float>(std::numeric_limits<T>::max());
  const __m256 vs = _mm256_set1_ps(scale), vz = _mm256_set1_ps(static_cast<float>(zp));
  const __m256 vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    alignas(32) int32_t q[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(q), quantize8(_mm256_loadu_ps(x + i), vs, vz, vlo, vhi));
    for (int k = 0; k < 8; ++k) y[i + k] = static_cast<T>(q[k]);
  }
  for (; i < n; ++i) {
    const float q = std::nearbyint(x[i] / scale) + static_cast<float>(zp);
    y[i] = std::isnan(q) ? T(0) : static_cast<T>(std::clamp(q, lo, hi));
  }
}

template <typename T>
QTOOL_AVX2 void dequantize_run(const T* x, int64_t n, float scale, int32_t zp, float* y) {
  const __m256 vs = _mm256_set1_ps(scale);
  const __m256i vz = _mm256_set1_epi32(zp);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256i v;
    if constexpr (sizeof(T) == 1) {
      int64_t bytes;
      std::memcpy(&bytes, x + i, 8);
      v = std::is_signed_v<T> ? _mm256_cvtepi8_epi32(_mm_cvtsi64_si128(bytes)) : _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(bytes));
    } else {
      const __m128i w = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i));
      v = std::is_signed_v<T> ? _mm256_cvtepi16_epi32(w) : _mm256_cvtepu16_epi32(w);
    }
    _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(v, vz)), vs));
  }
  for (; i < n; ++i) y[i] = static_cast<float>(static_cast<int32_t>(x[i]) - zp) * scale;
}

}  // namespace

bool quantize_run_avx2(const float* x, int64_t n, float scale, int32_t zp, DataType out, void* y) {
  if (!sgemm_direct_available()) return false;
  switch (out) {
    case DataType::kUint8: quantize_run(x, n, scale, zp, static_cast<uint8_t*>(y)); return true;
    case DataType::kInt8: quantize_run(x, n, scale, zp, static_cast<int8_t*>(y)); return true;
    case DataType::kUint16: quantize_run(x, n, scale, zp, static_cast<uint16_t*>(y)); return true;
    case DataType::kInt16: quantize_run(x, n, scale, zp, static_cast<int16_t*>(y)); return true;
    default: return false;
  }
}

bool dequantize_run_avx2(const void* x, DataType in, int64_t n, float scale, int32_t zp, float* y) {
  if (!sgemm_direct_available()) return false;
  switch (in) {
    case DataType::kUint8: dequantize_run(static_cast<const uint8_t*>(x), n, scale, zp, y); return true;
    case DataType::kInt8: dequantize_run(static_cast<const int8_t*>(x), n, scale, zp, y); return true;
    case DataType::kUint16: dequantize_run(static_cast<const uint16_t*>(x), n, scale, zp, y); return true;
    case DataType::kInt16: dequantize_run(static_cast<const int16_t*>(x), n, scale, zp, y); return true;
    default: return false;
  }
}

#else

bool where4_avx2(const bool*, const uint32_t*, int64_t, const uint32_t*, int64_t, uint32_t*, int64_t) { return false; }
bool quantize_run_avx2(const float*, int64_t, float, int32_t, DataType, void*) { return false; }
bool dequantize_run_avx2(const void*, DataType, int64_t, float, int32_t, float*) { return false; }

#endif

}  // namespace qtool::runtime::nn
