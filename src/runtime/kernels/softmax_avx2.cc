// Softmax of one contiguous row with AVX2 + FMA (issue 18): the maximum, exp(x - max) with the
// Cephes single-precision polynomial (the one Eigen's packet exp used: relative error ~1e-7),
// entries more than 87 below the maximum written as exact 0 (no denormals), then the sum and the
// scaling, eight lanes at a time. Run only on CPUs with AVX2 and FMA (nn::sgemm_direct_available()).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "avx2_util.h"
#include "nn_util.h"

namespace qtool::runtime::nn {

#if QTOOL_AVX2_KERNELS
namespace {

/// exp(x) for x in [-87, 0] (the caller clamps): x = n ln2 + r, |r| <= ln2 / 2, exp(r) by a
/// degree-6 polynomial, times 2^n through the exponent bits.
QTOOL_AVX2 inline __m256 exp_neg(__m256 x) {
  const __m256 log2e = _mm256_set1_ps(1.44269504088896341f);
  const __m256 ln2_hi = _mm256_set1_ps(0.693359375f), ln2_lo = _mm256_set1_ps(-2.12194440e-4f);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, ln2_hi, x);
  r = _mm256_fnmadd_ps(n, ln2_lo, r);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

QTOOL_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

QTOOL_AVX2 inline float hmax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

QTOOL_AVX2 void row(float* r, int64_t len) {
  const int64_t vec = len / 8 * 8;
  const __m256i tail = avx2::lane_mask(len - vec);
  const __m256 lowest = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 mv = lowest;
  for (int64_t i = 0; i < vec; i += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(r + i));
  if (vec < len) {
    const __m256 t = _mm256_blendv_ps(lowest, _mm256_maskload_ps(r + vec, tail), _mm256_castsi256_ps(tail));
    mv = _mm256_max_ps(mv, t);
  }
  float mx = hmax(mv);
  if (std::isnan(mx)) {
    for (int64_t i = 0; i < len; ++i) mx = std::isnan(r[i]) ? mx : std::max(mx, r[i]);
  }
  if (std::isinf(mx) && mx < 0) mx = 0.0f;  // all -inf: avoid inf - inf
  const __m256 m = _mm256_set1_ps(mx), floor = _mm256_set1_ps(-87.0f), zero = _mm256_setzero_ps();
  // e = exp(x - max), 0 where x - max <= -87 (its weight is < 1.7e-38 of the maximum's).
  auto ex = [&](__m256 v) QTOOL_AVX2 {
    const __m256 d = _mm256_max_ps(_mm256_sub_ps(v, m), floor);
    return _mm256_blendv_ps(exp_neg(d), zero, _mm256_cmp_ps(d, floor, _CMP_LE_OQ));
  };
  __m256 sv = zero;
  for (int64_t i = 0; i < vec; i += 8) {
    const __m256 v = _mm256_loadu_ps(r + i);
    // Eight entries all 87 or more below the maximum (a causal mask's -inf half): exact zeros, no
    // polynomial (the same zeros ex() writes).
    if (_mm256_movemask_ps(_mm256_cmp_ps(_mm256_sub_ps(v, m), floor, _CMP_LE_OQ)) == 0xff) {
      _mm256_storeu_ps(r + i, zero);
      continue;
    }
    const __m256 e = ex(v);
    _mm256_storeu_ps(r + i, e);
    sv = _mm256_add_ps(sv, e);
  }
  if (vec < len) {
    const __m256 e = _mm256_and_ps(ex(_mm256_maskload_ps(r + vec, tail)), _mm256_castsi256_ps(tail));
    _mm256_maskstore_ps(r + vec, tail, e);
    sv = _mm256_add_ps(sv, e);
  }
  const float sum = hsum(sv);
  if (!(sum > 0.0f)) {
    // Only an all -inf row sums to 0: it stays uniform (NaN rows keep their NaN sum below).
    if (sum == 0.0f) {
      std::fill(r, r + len, 1.0f / static_cast<float>(len));
      return;
    }
  }
  const __m256 inv = _mm256_set1_ps(1.0f / sum);
  for (int64_t i = 0; i < vec; i += 8) _mm256_storeu_ps(r + i, _mm256_mul_ps(_mm256_loadu_ps(r + i), inv));
  for (int64_t i = vec; i < len; ++i) r[i] *= 1.0f / sum;
}

}  // namespace

bool softmax_row_avx2(float* r, int64_t len) {
  if (!sgemm_direct_available() || len <= 0) return false;
  row(r, len);
  return true;
}

#else

bool softmax_row_avx2(float*, int64_t) { return false; }

#endif

}  // namespace qtool::runtime::nn
