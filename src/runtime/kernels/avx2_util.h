// Private helpers of the AVX2 + FMA kernels (sgemm_direct.cc and the *_avx2.cc files): the target
// attribute, lane masks and the fused activations on eight lanes. Included only where
// QTOOL_AVX2_KERNELS is set (x86-64 with GCC or Clang); the functions run only on CPUs with AVX2
// and FMA (nn::sgemm_direct_available()).
#pragma once

#if defined(__x86_64__) && defined(__GNUC__)
#define QTOOL_AVX2_KERNELS 1
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "qtool/runtime/kernel.h"

#define QTOOL_AVX2 __attribute__((target("avx2,fma")))

namespace qtool::runtime::nn::avx2 {

/// The epilogue's activation by value (kNone: identity).
struct VecAct {
  FusedActivation::Kind kind = FusedActivation::Kind::kNone;
  float alpha = 0.0f, beta = 0.0f;
  static VecAct of(const FusedActivation* a) { return a ? VecAct{a->kind, a->alpha, a->beta} : VecAct{}; }
};

QTOOL_AVX2 inline __m256 activate(__m256 v, const VecAct& act) {
  switch (act.kind) {
    case FusedActivation::Kind::kNone:
      return v;
    case FusedActivation::Kind::kRelu:
      return _mm256_max_ps(v, _mm256_setzero_ps());
    case FusedActivation::Kind::kClip:
      return _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(act.alpha)), _mm256_set1_ps(act.beta));
    case FusedActivation::Kind::kLeakyRelu: {
      const __m256 neg = _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_LT_OQ);
      return _mm256_blendv_ps(v, _mm256_mul_ps(v, _mm256_set1_ps(act.alpha)), neg);
    }
    case FusedActivation::Kind::kHardSigmoid: {
      // Multiply, then add (not fused): the same roundings as FusedActivation::apply.
      const __m256 t = _mm256_add_ps(_mm256_mul_ps(v, _mm256_set1_ps(act.alpha)), _mm256_set1_ps(act.beta));
      return _mm256_min_ps(_mm256_max_ps(t, _mm256_setzero_ps()), _mm256_set1_ps(1.0f));
    }
  }
  return v;
}

/// A mask of the first n (0..8) lanes.
QTOOL_AVX2 inline __m256i lane_mask(int64_t n) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), idx);
}

/// A mask of the lanes i with lo <= i < hi (any lo, hi: clamped to [0, 8]).
QTOOL_AVX2 inline __m256i range_mask(int64_t lo, int64_t hi) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  lo = std::clamp<int64_t>(lo, 0, 8);
  hi = std::clamp<int64_t>(hi, 0, 8);
  return _mm256_and_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(hi)), idx),
                          _mm256_cmpgt_epi32(idx, _mm256_set1_epi32(static_cast<int>(lo) - 1)));
}

}  // namespace qtool::runtime::nn::avx2
#endif
