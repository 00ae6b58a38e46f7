// The direct SGEMM for the shapes of convolutions and MatMuls (issue 18): C = A·op(B) (+ C) + bias
// per row, then a fused activation, A row-major, B row-major or transposed (nn::DirectB). Written
// with AVX2 + FMA intrinsics in functions compiled for that target (the portable build runs them
// only on CPUs that have both; nn::sgemm_direct_available()).
//
// Why not Eigen here: Eigen packs both operands on every call, zero-fills C before a `=` product
// and knows nothing of the bias and the activation that follow, which together cost about as much
// as the arithmetic on the thin products of CNNs (K = 16..96 or N = 49..196). This kernel:
// - reads the weights (A) in place: no per-call repacking of the weights, and no per-executor copy
//   to keep in step with them (six rows broadcast one value each per step of k);
// - packs a block of B (up to 256 rows × about 96 KB of columns, in strips of 16 columns,
//   zero-padded) that every 6-row panel of A then walks; an im2col tile is read in place;
// - keeps a 6×16 tile of C in 12 registers across a chunk of 256 steps of k, summed from zero, and
//   stores it once: added to C after the first chunk, with the bias and the activation after the
//   last (MLAS's roundings).
// The summation order of every C element is fixed (k ascending, in chunks of 256), whatever the
// thread split, so results do not depend on the thread count.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "avx2_util.h"
#include "nn_util.h"

namespace qtool::runtime::nn {

#if QTOOL_AVX2_KERNELS
namespace {

constexpr int kMr = 6;         // rows of A per micro-tile
constexpr int kNr = 16;        // columns of B per micro-tile (two 8-float vectors)
constexpr int64_t kKc = 256;   // rows of B per packed strip (16 KB)
constexpr int64_t kBlockFloats = 24576;  // a packed block of B: kc × nc floats, about 96 KB

using avx2::activate;
using avx2::lane_mask;
using avx2::VecAct;

/// One R×16 tile of C (R <= 6): the sum over kc steps of a[r*lda + p] * bp[p*16 + 0..16) (the
/// packed strip bp), accumulated from zero, then stored as C = sum (`first`) or C = C + sum; on the
/// `last` chunk of k the bias (optional) is added and the activation applied. cols < 16 stores
/// only the first cols columns. The roundings are those of ONNX Runtime's MLAS convolution:
/// per chunk of 256 steps, a sum from zero added to C, then the bias.
template <int R>
QTOOL_AVX2 void micro_tile(int64_t kc, const float* a, int64_t lda, const float* bp, int64_t ldbp, float* c,
                           int64_t ldc, int64_t cols, bool first, const float* bias, bool last, const VecAct& act) {
  __m256 c0[R], c1[R];
  const __m256i m0 = lane_mask(std::min<int64_t>(cols, 8)), m1 = lane_mask(std::max<int64_t>(cols - 8, 0));
  const bool full = cols == kNr;
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) c0[r] = c1[r] = _mm256_setzero_ps();
  const float* ar[kMr];
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) ar[r] = a + r * lda;
#pragma GCC unroll 4
  for (int64_t p = 0; p < kc; ++p) {
    const __m256 b0 = _mm256_loadu_ps(bp + p * ldbp), b1 = _mm256_loadu_ps(bp + p * ldbp + 8);
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      const __m256 av = _mm256_broadcast_ss(ar[r] + p);
      c0[r] = _mm256_fmadd_ps(av, b0, c0[r]);
      c1[r] = _mm256_fmadd_ps(av, b1, c1[r]);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) {
    float* cr = c + r * ldc;
    if (!first) {
      c0[r] = _mm256_add_ps(full ? _mm256_loadu_ps(cr) : _mm256_maskload_ps(cr, m0), c0[r]);
      c1[r] = _mm256_add_ps(full ? _mm256_loadu_ps(cr + 8) : _mm256_maskload_ps(cr + 8, m1), c1[r]);
    }
    if (last) {
      if (bias) {
        const __m256 bv = _mm256_set1_ps(bias[r]);
        c0[r] = _mm256_add_ps(c0[r], bv);
        c1[r] = _mm256_add_ps(c1[r], bv);
      }
      c0[r] = activate(c0[r], act);
      c1[r] = activate(c1[r], act);
    }
    if (full) {
      _mm256_storeu_ps(cr, c0[r]);
      _mm256_storeu_ps(cr + 8, c1[r]);
    } else {
      _mm256_maskstore_ps(cr, m0, c0[r]);
      _mm256_maskstore_ps(cr + 8, m1, c1[r]);
    }
  }
}

using TileFn = void (*)(int64_t, const float*, int64_t, const float*, int64_t, float*, int64_t, int64_t, bool,
                        const float*, bool, const VecAct&);
constexpr TileFn kTiles[kMr + 1] = {nullptr,         micro_tile<1>, micro_tile<2>, micro_tile<3>,
                                    micro_tile<4>,   micro_tile<5>, micro_tile<6>};

/// Copies rows [0, kc) × columns [0, cols) of B into a kc × 16 strip, zero-padding columns.
QTOOL_AVX2 void pack_strip(const float* b, int64_t ldb, int64_t kc, int64_t cols, float* bp) {
  if (cols == kNr) {
    for (int64_t p = 0; p < kc; ++p) {
      _mm256_store_ps(bp + p * kNr, _mm256_loadu_ps(b + p * ldb));
      _mm256_store_ps(bp + p * kNr + 8, _mm256_loadu_ps(b + p * ldb + 8));
    }
    return;
  }
  const __m256i m0 = lane_mask(std::min<int64_t>(cols, 8)), m1 = lane_mask(std::max<int64_t>(cols - 8, 0));
  for (int64_t p = 0; p < kc; ++p) {
    _mm256_store_ps(bp + p * kNr, _mm256_maskload_ps(b + p * ldb, m0));
    _mm256_store_ps(bp + p * kNr + 8, _mm256_maskload_ps(b + p * ldb + 8, m1));
  }
}

/// The same strip from B stored transposed ([n, k] with row stride ldb: column j of op(B) is row j
/// of b): bp[p*16 + jj] = b[jj*ldb + p], zero-padding columns.
void pack_strip_t(const float* b, int64_t ldb, int64_t kc, int64_t cols, float* bp) {
  for (int64_t jj = 0; jj < kNr; ++jj) {
    if (jj < cols) {
      const float* src = b + jj * ldb;
      for (int64_t p = 0; p < kc; ++p) bp[p * kNr + jj] = src[p];
    } else {
      for (int64_t p = 0; p < kc; ++p) bp[p * kNr + jj] = 0.0f;
    }
  }
}

/// Loop order: k in chunks of kKc; columns in blocks of nc (the block of B, packed into strips of
/// 16, about 96 KB); then each 6-row panel of A walks the block's strips, so C is written along 6
/// rows at a time (a few sequential streams) and the panel's A stays in L1. kRowsPadded: B's rows
/// can be read up to n rounded up to 16 and are read in place (an im2col tile already in cache).
void serial(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, DirectB layout,
            bool accumulate, float* c, int64_t ldc, const float* bias, const VecAct& act) {
  const bool b_padded = layout == DirectB::kRowsPadded;
  thread_local std::vector<float> storage;
  for (int64_t k0 = 0; k0 < k; k0 += kKc) {
    const int64_t kc = std::min(kKc, k - k0);
    const bool first = k0 == 0 && !accumulate, last = k0 + kc == k;
    const int64_t nc = std::max<int64_t>(kNr, std::min<int64_t>((n + kNr - 1) / kNr * kNr, kBlockFloats / kc / kNr * kNr));
    float* packed = nullptr;
    if (!b_padded) {
      if (storage.size() < static_cast<size_t>(kc * nc + 16)) storage.resize(static_cast<size_t>(kc * nc + 16));
      // 64-byte aligned start.
      packed = storage.data() + ((64 - reinterpret_cast<uintptr_t>(storage.data()) % 64) % 64) / sizeof(float);
    }
    for (int64_t j0 = 0; j0 < n; j0 += nc) {
      const int64_t ncols = std::min(nc, n - j0);
      if (!b_padded) {
        for (int64_t j = 0; j < ncols; j += kNr) {
          if (layout == DirectB::kTransposed) {
            pack_strip_t(b + (j0 + j) * ldb + k0, ldb, kc, std::min<int64_t>(kNr, ncols - j), packed + j * kc);
          } else {
            pack_strip(b + k0 * ldb + j0 + j, ldb, kc, std::min<int64_t>(kNr, ncols - j), packed + j * kc);
          }
        }
      }
      for (int64_t i = 0; i < m; i += kMr) {
        const int rows = static_cast<int>(std::min<int64_t>(kMr, m - i));
        const TileFn tile = kTiles[rows];
        for (int64_t j = 0; j < ncols; j += kNr) {
          const float* bs = b_padded ? b + k0 * ldb + j0 + j : packed + j * kc;
          tile(kc, a + i * lda + k0, lda, bs, b_padded ? ldb : kNr, c + i * ldc + j0 + j, ldc,
               std::min<int64_t>(kNr, ncols - j), first, bias && last ? bias + i : nullptr, last, act);
        }
      }
    }
  }
}

}  // namespace

bool sgemm_direct_available() {
  // QTOOL_NO_AVX2_KERNELS=1 runs the portable kernels instead (before/after measurements).
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                         std::getenv("QTOOL_NO_AVX2_KERNELS") == nullptr;
  return ok;
}

void sgemm_direct(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
                  bool accumulate, float* c, int64_t ldc, const float* bias, const FusedActivation* act,
                  ThreadPool* pool, DirectB layout) {
  if (m <= 0 || n <= 0) return;
  const VecAct va = VecAct::of(act);
  if (k == 0) {
    // No products: C = (C or 0) + bias, with the activation.
    for (int64_t i = 0; i < m; ++i) {
      float* row = c + i * ldc;
      if (!accumulate) std::fill(row, row + n, 0.0f);
      if (bias) for (int64_t j = 0; j < n; ++j) row[j] += bias[i];
      if (act) act->apply(row, n);
    }
    return;
  }
  const int threads = pool ? pool->threads() : 1;
  const double flops = static_cast<double>(m) * n * k;
  if (threads <= 1 || flops < 64.0 * 64 * 64) {
    serial(m, n, k, a, lda, b, ldb, layout, accumulate, c, ldc, bias, va);
    return;
  }
  // Split the larger output dimension into one block per thread, in whole micro-tiles.
  if (n >= m) {
    const int64_t grain = std::max<int64_t>(kNr, ((n + threads - 1) / threads + kNr - 1) / kNr * kNr);
    pool->parallel_for(n, grain, [&](int64_t j0, int64_t j1) {
      serial(m, j1 - j0, k, a, lda, layout == DirectB::kTransposed ? b + j0 * ldb : b + j0, ldb, layout, accumulate, c + j0, ldc, bias, va);
    });
  } else {
    const int64_t grain = std::max<int64_t>(kMr, ((m + threads - 1) / threads + kMr - 1) / kMr * kMr);
    pool->parallel_for(m, grain, [&](int64_t i0, int64_t i1) {
      serial(i1 - i0, n, k, a + i0 * lda, lda, b, ldb, layout, accumulate, c + i0 * ldc, ldc, bias ? bias + i0 : nullptr, va);
    });
  }
}

#else

bool sgemm_direct_available() { return false; }

void sgemm_direct(int64_t, int64_t, int64_t, const float*, int64_t, const float*, int64_t, bool, float*, int64_t,
                  const float*, const FusedActivation*, ThreadPool*, DirectB) {
  fail(ErrorCode::kInternal, "sgemm_direct: not built for this target");
}

#endif

}  // namespace qtool::runtime::nn
