// MaxPool over 2-D planes with AVX2 (issue 18): eight outputs of a row per step, the window's
// columns loaded as vectors (stride 2 splits sixteen inputs into even and odd columns in
// registers) and reduced with vmaxps; windows crossing the plane's edge load with a mask and take
// the lowest float in the masked lanes, so no padded copy is made. Run only on CPUs with AVX2
// (nn::sgemm_direct_available()).
#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "avx2_util.h"
#include "nn_util.h"

namespace qtool::runtime::nn {

#if QTOOL_AVX2_KERNELS
namespace {

using avx2::range_mask;

/// row[c0 + i], i in [0, 8); lanes whose column is outside [0, iw) hold the lowest float.
template <bool kEdge>
QTOOL_AVX2 inline __m256 load8(const float* row, int64_t c0, int64_t iw) {
  if constexpr (!kEdge) {
    (void)iw;
    return _mm256_loadu_ps(row + c0);
  } else {
    const __m256i m = range_mask(-c0, iw - c0);
    const __m256 v = _mm256_maskload_ps(row + c0, m);
    return _mm256_blendv_ps(_mm256_set1_ps(std::numeric_limits<float>::lowest()), v, _mm256_castsi256_ps(m));
  }
}

/// max(acc, v), keeping acc where v is NaN (the portable kernel skips NaN inputs).
QTOOL_AVX2 inline __m256 vmax(__m256 acc, __m256 v) { return _mm256_max_ps(v, acc); }

/// The max over the window's rows [h0, h1) of outputs [o, o + 8) of one row.
template <int kStride, bool kEdge>
QTOOL_AVX2 inline __m256 block(const float* xp, int64_t h0, int64_t h1, int64_t o, const Plane2d& d) {
  __m256 acc = _mm256_set1_ps(std::numeric_limits<float>::lowest());
  const int64_t c0 = kStride * o - d.pl;
  for (int64_t h = h0; h < h1; ++h) {
    const float* row = xp + h * d.iw;
    if constexpr (kStride == 1) {
      for (int64_t kc = 0; kc < d.kw; ++kc) acc = vmax(acc, load8<kEdge>(row, c0 + kc, d.iw));
    } else {
      // Columns c0 + 2i + kc: even kc from the even lanes of a load at c0 + kc, odd from the odd.
      for (int64_t kc = 0; kc < d.kw; kc += 2) {
        const __m256 v0 = load8<kEdge>(row, c0 + kc, d.iw), v1 = load8<kEdge>(row, c0 + kc + 8, d.iw);
        const __m256 lo = _mm256_permute2f128_ps(v0, v1, 0x20), hi = _mm256_permute2f128_ps(v0, v1, 0x31);
        acc = vmax(acc, _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0)));
        if (kc + 1 < d.kw) acc = vmax(acc, _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 3, 1)));
      }
    }
  }
  return acc;
}

template <int kStride>
QTOOL_AVX2 void planes(const Plane2d& d, int64_t n_planes, const float* x, float* y) {
  const int64_t n_blocks = (d.ow + 7) / 8;
  // Columns loaded by block b: [s*8b - pl, s*8b - pl + reach]; inside the row or not (the same
  // for every row and plane).
  const int64_t reach = kStride == 1 ? 7 + d.kw - 1 : 15 + ((d.kw - 1) / 2) * 2;
  thread_local std::vector<char> edge;
  edge.resize(static_cast<size_t>(n_blocks));
  for (int64_t b = 0; b < n_blocks; ++b) {
    const int64_t c0 = kStride * b * 8 - d.pl;
    edge[b] = c0 < 0 || c0 + reach >= d.iw;
  }
  const bool partial = d.ow % 8 != 0;
  const __m256i store_mask = avx2::lane_mask(d.ow % 8);
  for (int64_t p = 0; p < n_planes; ++p) {
    const float* xp = x + p * d.ih * d.iw;
    float* yp = y + p * d.oh * d.ow;
    for (int64_t oh = 0; oh < d.oh; ++oh) {
      const int64_t hs = oh * d.sh - d.pt;
      const int64_t h0 = std::max<int64_t>(hs, 0), h1 = std::min(hs + d.kh, d.ih);
      float* yrow = yp + oh * d.ow;
      for (int64_t b = 0; b < n_blocks; ++b) {
        const __m256 v = edge[b] ? block<kStride, true>(xp, h0, h1, b * 8, d) : block<kStride, false>(xp, h0, h1, b * 8, d);
        if (partial && b == n_blocks - 1) _mm256_maskstore_ps(yrow + b * 8, store_mask, v);
        else _mm256_storeu_ps(yrow + b * 8, v);
      }
    }
  }
}

}  // namespace

bool maxpool2d_avx2(const Plane2d& d, int64_t n_planes, const float* x, float* y) {
  if (!sgemm_direct_available() || d.dh != 1 || d.dw != 1 || d.kw > 16) return false;
  if (d.sw == 1) planes<1>(d, n_planes, x, y);
  else if (d.sw == 2) planes<2>(d, n_planes, x, y);
  else return false;
  return true;
}

#else

bool maxpool2d_avx2(const Plane2d&, int64_t, const float*, float*) { return false; }

#endif

}  // namespace qtool::runtime::nn
