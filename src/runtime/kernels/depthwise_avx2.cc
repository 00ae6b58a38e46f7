// Depthwise 3×3 convolution of channel planes with AVX2 + FMA (issue 18): eight outputs of a row
// per step, two rows per pass, the nine taps held in registers, the bias and the fused ReLU/Clip
// applied before the one store. It reads the unpadded plane: a padding row is a shared row of
// zeros, and the blocks whose window crosses the left or right edge load with lane masks
// (computed once per call), so no padded copy of the plane is made. Stride 2 loads sixteen inputs
// per eight outputs and splits them into even and odd columns in registers. Run only on CPUs with
// AVX2 and FMA (nn::sgemm_direct_available()).
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

/// x[c0 + i] for i in [0, 8), with the lanes outside the row masked to 0 (`kEdge`, mask m), so
/// a window crossing the plane's edge reads the zero padding without a padded copy.
template <bool kEdge>
QTOOL_AVX2 inline __m256 load8(const float* row, int64_t c0, __m256i m) {
  if constexpr (!kEdge) {
    (void)m;
    return _mm256_loadu_ps(row + c0);
  } else {
    return _mm256_maskload_ps(row + c0, m);
  }
}

/// Even and odd columns of x[c0 .. c0 + 16): x[c0], x[c0 + 2], ... and x[c0 + 1], x[c0 + 3], ...
template <bool kEdge>
QTOOL_AVX2 inline void deinterleave(const float* row, int64_t c0, __m256i m0, __m256i m1, __m256* even, __m256* odd) {
  const __m256 v0 = load8<kEdge>(row, c0, m0), v1 = load8<kEdge>(row, c0 + 8, m1);
  const __m256 lo = _mm256_permute2f128_ps(v0, v1, 0x20), hi = _mm256_permute2f128_ps(v0, v1, 0x31);
  *even = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0));
  *odd = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 3, 1));
}

/// The nine taps and the bias on eight lanes, and the activation as a clamp (ReLU, Clip, none).
struct Taps {
  __m256 w0, w1, w2, w3, w4, w5, w6, w7, w8, bias, lo, hi;
};

/// Outputs [o, o + 8) of one row from its three input rows (zeros for padding rows), clamped.
/// m: the block's load masks (stride 1: columns c0, c0 + dw, c0 + 2dw; stride 2: c0, c0 + 8,
/// c0 + 2, c0 + 10), used only for edge blocks.
template <int kStride, bool kEdge>
QTOOL_AVX2 inline __m256 block(const float* r0, const float* r1, const float* r2, int64_t c0, int64_t dw,
                               const __m256i* m, const Taps& t) {
  // One chain from zero in tap order, then the bias: the roundings of a GEMM over the nine taps
  // (ONNX Runtime's grouped convolution), not a faster split into partial sums.
  __m256 acc;
  if constexpr (kStride == 1) {
    acc = _mm256_mul_ps(t.w0, load8<kEdge>(r0, c0, m[0]));
    acc = _mm256_fmadd_ps(t.w1, load8<kEdge>(r0, c0 + dw, m[1]), acc);
    acc = _mm256_fmadd_ps(t.w2, load8<kEdge>(r0, c0 + 2 * dw, m[2]), acc);
    acc = _mm256_fmadd_ps(t.w3, load8<kEdge>(r1, c0, m[0]), acc);
    acc = _mm256_fmadd_ps(t.w4, load8<kEdge>(r1, c0 + dw, m[1]), acc);
    acc = _mm256_fmadd_ps(t.w5, load8<kEdge>(r1, c0 + 2 * dw, m[2]), acc);
    acc = _mm256_fmadd_ps(t.w6, load8<kEdge>(r2, c0, m[0]), acc);
    acc = _mm256_fmadd_ps(t.w7, load8<kEdge>(r2, c0 + dw, m[1]), acc);
    acc = _mm256_fmadd_ps(t.w8, load8<kEdge>(r2, c0 + 2 * dw, m[2]), acc);
  } else {
    __m256 e0, o0, e2, o2;
    deinterleave<kEdge>(r0, c0, m[0], m[1], &e0, &o0);
    deinterleave<kEdge>(r0, c0 + 2, m[2], m[3], &e2, &o2);
    acc = _mm256_fmadd_ps(t.w2, e2, _mm256_fmadd_ps(t.w1, o0, _mm256_mul_ps(t.w0, e0)));
    deinterleave<kEdge>(r1, c0, m[0], m[1], &e0, &o0);
    deinterleave<kEdge>(r1, c0 + 2, m[2], m[3], &e2, &o2);
    acc = _mm256_fmadd_ps(t.w5, e2, _mm256_fmadd_ps(t.w4, o0, _mm256_fmadd_ps(t.w3, e0, acc)));
    deinterleave<kEdge>(r2, c0, m[0], m[1], &e0, &o0);
    deinterleave<kEdge>(r2, c0 + 2, m[2], m[3], &e2, &o2);
    acc = _mm256_fmadd_ps(t.w8, e2, _mm256_fmadd_ps(t.w7, o0, _mm256_fmadd_ps(t.w6, e0, acc)));
  }
  return _mm256_min_ps(t.hi, _mm256_max_ps(t.lo, _mm256_add_ps(acc, t.bias)));  // NaN passes
}

/// Planes [0, planes) of x (each ih × iw, consecutive) into y (each oh × ow), with their own
/// taps w[9 p ..] and bias[p].
template <int kStride>
QTOOL_AVX2 void planes(const Plane2d& d, int64_t planes, const float* x, const float* w, const float* bias,
                       float* y, float lo, float hi) {
  const int64_t iw = d.iw, ow_n = d.ow, pl = d.pl, dw = d.dw;
  thread_local std::vector<float> zeros;
  if (zeros.size() < static_cast<size_t>(iw + 32)) zeros.assign(static_cast<size_t>(iw + 32), 0.0f);
  // Per block of 8 outputs (o = 0, 8, ...): does it read only columns inside the row (the first
  // tap's column o*s - pl >= 0, the last column loaded < iw), and if not, its load masks (the
  // same for every row and plane). The last block's store is masked when ow is not a multiple of 8.
  const int64_t n_blocks = (ow_n + 7) / 8;
  thread_local std::vector<int32_t> masks;  // 4 masks of 8 lanes per block
  thread_local std::vector<char> edge;
  masks.resize(static_cast<size_t>(n_blocks * 32));
  edge.resize(static_cast<size_t>(n_blocks));
  const int64_t offs[4] = {0, kStride == 1 ? dw : 8, kStride == 1 ? 2 * dw : 2, kStride == 1 ? 2 * dw : 10};
  for (int64_t blk = 0; blk < n_blocks; ++blk) {
    const int64_t c0 = kStride * blk * 8 - pl;
    const int64_t reach = kStride == 1 ? 7 + 2 * dw : 17;
    edge[blk] = c0 < 0 || c0 + reach >= iw;
    for (int q = 0; q < 4; ++q) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(&masks[(blk * 4 + q) * 8]),
                          range_mask(-(c0 + offs[q]), iw - (c0 + offs[q])));
    }
  }
  const bool partial = ow_n % 8 != 0;
  const __m256i store_mask = avx2::lane_mask(ow_n % 8);
  for (int64_t p = 0; p < planes; ++p) {
    const float* xp = x + p * d.ih * iw;
    float* yp = y + p * d.oh * ow_n;
    const float* wp = w + 9 * p;
    const Taps t{_mm256_set1_ps(wp[0]), _mm256_set1_ps(wp[1]), _mm256_set1_ps(wp[2]), _mm256_set1_ps(wp[3]),
                 _mm256_set1_ps(wp[4]), _mm256_set1_ps(wp[5]), _mm256_set1_ps(wp[6]), _mm256_set1_ps(wp[7]),
                 _mm256_set1_ps(wp[8]), _mm256_set1_ps(bias ? bias[p] : 0.0f), _mm256_set1_ps(lo),
                 _mm256_set1_ps(hi)};
    // Two output rows per pass: their blocks are two independent chains the core overlaps.
    for (int64_t oh = 0; oh < d.oh; oh += 2) {
      const int64_t rows = std::min<int64_t>(2, d.oh - oh);
      const float* r[2][3];
      for (int64_t q = 0; q < 2; ++q) {
        for (int kb = 0; kb < 3; ++kb) {
          const int64_t ih = (oh + std::min<int64_t>(q, rows - 1)) * d.sh - d.pt + kb * d.dh;
          r[q][kb] = ih >= 0 && ih < d.ih ? xp + ih * iw : zeros.data();
        }
      }
      float* y0 = yp + oh * ow_n;
      float* y1 = yp + (oh + rows - 1) * ow_n;  // the same row again when only one is left
      for (int64_t blk = 0; blk < n_blocks; ++blk) {
        const int64_t c0 = kStride * blk * 8 - pl;
        __m256 v0, v1;
        if (edge[blk]) {
          const __m256i* mp = reinterpret_cast<const __m256i*>(&masks[blk * 32]);
          const __m256i m[4] = {_mm256_loadu_si256(mp), _mm256_loadu_si256(mp + 1), _mm256_loadu_si256(mp + 2),
                                _mm256_loadu_si256(mp + 3)};
          v0 = block<kStride, true>(r[0][0], r[0][1], r[0][2], c0, dw, m, t);
          v1 = block<kStride, true>(r[1][0], r[1][1], r[1][2], c0, dw, m, t);
        } else {
          v0 = block<kStride, false>(r[0][0], r[0][1], r[0][2], c0, dw, nullptr, t);
          v1 = block<kStride, false>(r[1][0], r[1][1], r[1][2], c0, dw, nullptr, t);
        }
        if (partial && blk == n_blocks - 1) {
          _mm256_maskstore_ps(y0 + blk * 8, store_mask, v0);
          _mm256_maskstore_ps(y1 + blk * 8, store_mask, v1);
        } else {
          _mm256_storeu_ps(y0 + blk * 8, v0);
          _mm256_storeu_ps(y1 + blk * 8, v1);
        }
      }
    }
  }
}

}  // namespace

bool depthwise3x3_avx2(const Plane2d& d, int64_t n_planes, const float* x, const float* w, const float* bias,
                       float* y, const FusedActivation* act) {
  if (!sgemm_direct_available()) return false;
  // ReLU and Clip are a clamp in the kernel; other activations are left to the caller.
  const float inf = std::numeric_limits<float>::infinity();
  float lo = -inf, hi = inf;
  if (act && act->kind == FusedActivation::Kind::kRelu) lo = 0.0f;
  else if (act && act->kind == FusedActivation::Kind::kClip) lo = act->alpha, hi = act->beta;
  else if (act && act->kind != FusedActivation::Kind::kNone) return false;
  if (d.sw == 1) planes<1>(d, n_planes, x, w, bias, y, lo, hi);
  else if (d.sw == 2 && d.dw == 1) planes<2>(d, n_planes, x, w, bias, y, lo, hi);
  else return false;
  return true;
}

#else

bool depthwise3x3_avx2(const Plane2d&, int64_t, const float*, const float*, const float*, float*,
                       const FusedActivation*) {
  return false;
}

#endif

}  // namespace qtool::runtime::nn
