// Element-wise rows with AVX2 (issue 18): Where over 4-byte elements with a per-element condition
// (an attention mask applied to scores), eight lanes per step. Run only on CPUs with AVX2
// (nn::sgemm_direct_available()).
#include <cstdint>
#include <cstring>

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

#else

bool where4_avx2(const bool*, const uint32_t*, int64_t, const uint32_t*, int64_t, uint32_t*, int64_t) { return false; }

#endif

}  // namespace qtool::runtime::nn
