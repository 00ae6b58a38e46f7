// Private helpers shared by the NN kernel families (conv, gemm, pool, norm, rnn, resize,
// quantized): float input access, axis normalisation, convolution/pooling geometry and the
// multithreaded row-major SGEMM every heavy kernel goes through.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "qtool/core/error.h"
#include "qtool/core/tensor.h"
#include "qtool/runtime/kernel.h"

namespace qtool::runtime::nn {

/// Throws kInvalidModel with the node named first.
template <typename... Args>
[[noreturn]] void bad_node(const KernelContext& ctx, fmt::format_string<Args...> f, Args&&... args) {
  fail(ErrorCode::kInvalidModel, "{}: {}", ctx.node().describe(), fmt::format(f, std::forward<Args>(args)...));
}

/// Input i as float32: shared storage when it already is float32, else converted
/// (float16/bfloat16/double/ints), so kernels compute in float32 whatever the model stores.
Tensor float_input(const KernelContext& ctx, size_t i);

/// Converts a float32 result back to the node's input type: float16/bfloat16/double, or an
/// integer type for ops like MatMul/Gemm on int32/int64 (exact while |values| < 2^24).
Tensor to_dtype_like(Tensor t, DataType like);

/// axis in [-rank, rank) -> [0, rank); throws naming the node otherwise.
int64_t normalize_axis(const KernelContext& ctx, int64_t axis, int64_t rank);

/// Geometry of a convolution or pooling window over N spatial dims (1..3), padded to 3-D with
/// leading unit dims so that one loop nest serves Conv1d/2d/3d.
struct WindowGeometry {
  int spatial = 0;                ///< number of spatial dims in the model (1..3)
  int64_t in[3] = {1, 1, 1};      ///< input spatial size (D, H, W)
  int64_t out[3] = {1, 1, 1};     ///< output spatial size
  int64_t kernel[3] = {1, 1, 1};
  int64_t stride[3] = {1, 1, 1};
  int64_t dilation[3] = {1, 1, 1};
  int64_t pad_begin[3] = {0, 0, 0};
  int64_t pad_end[3] = {0, 0, 0};
  int64_t in_size() const { return in[0] * in[1] * in[2]; }
  int64_t out_size() const { return out[0] * out[1] * out[2]; }
  int64_t kernel_size() const { return kernel[0] * kernel[1] * kernel[2]; }
  /// Output spatial shape as the model sees it (spatial dims only).
  Shape out_shape() const;
};

/// Computes the window geometry from the node's attributes (kernel_shape, strides, dilations,
/// pads, auto_pad, ceil_mode when `allow_ceil`) for an input of shape [N, C, spatial...].
/// `kernel` gives the kernel shape when the attribute is absent (Conv infers it from W).
/// Output size per dim: floor_or_ceil((in + pb + pe - ((k-1)*d + 1)) / s) + 1; SAME_* pads
/// so that out = ceil(in / s) with the odd pad at the end (UPPER) or the beginning (LOWER).
WindowGeometry window_geometry(const KernelContext& ctx, const Shape& x_shape, const std::vector<int64_t>& kernel,
                               bool allow_ceil);
/// The same from the node alone (gradient functions have no KernelContext); errors are
/// kInvalidModel naming the node, worded as above.
WindowGeometry window_geometry(const ir::Node& node, const Shape& x_shape, const std::vector<int64_t>& kernel,
                               bool allow_ceil);

/// [lo, hi) of the output positions o (of `out`) whose input index o*s - p + kd lies in [0, in):
/// the valid span of one kernel tap (kd = tap * dilation) along one spatial dim.
inline void valid_range(int64_t out, int64_t in, int64_t s, int64_t p, int64_t kd, int64_t* lo, int64_t* hi) {
  // o*s >= p - kd  and  o*s <= in - 1 + p - kd
  const int64_t a = p - kd;
  *lo = a <= 0 ? 0 : (a + s - 1) / s;
  const int64_t b = in - 1 + p - kd;
  *hi = b < 0 ? 0 : std::min(out, b / s + 1);
  if (*lo > *hi) *lo = *hi;
}

/// Writes columns [j0, j1) of the im2col matrix of `cin_g` channel planes of `x` (rows =
/// cin_g * kernel_size in (channel, kd, kh, kw) order, row stride j1 - j0 or `ld`) into `col`:
/// col[(c, k)][j] = x[c][pos(j) * stride - pad + k * dilation], 0 in the padding.
/// Instantiated for float and double (conv.cc).
/// `ld` > 0 sets another row stride (>= j1 - j0; the columns beyond are left as they are).
template <typename T>
void im2col_tile(const T* x, const WindowGeometry& g, int64_t cin_g, int64_t j0, int64_t j1, T* col, int64_t ld = 0);

/// The adjoint of im2col_tile: dx[c][pos(j) * stride - pad + k * dilation] += col[(c, k)][j]
/// for the columns [j0, j1) (padding positions dropped). `dx` must be initialised.
template <typename T>
void col2im_tile(const T* col, const WindowGeometry& g, int64_t cin_g, int64_t j0, int64_t j1, T* dx);

/// Row-major C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C (beta == 0 overwrites C, so C
/// may be uninitialised). lda/ldb/ldc are row strides of the stored matrices. Runs on
/// `pool` (split over the larger of M and N) when the product is big enough, else inline.
void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
           const float* b, int64_t ldb, float beta, float* c, int64_t ldc, ThreadPool* pool);

/// True when sgemm_direct can run here (an x86-64 CPU with AVX2 and FMA).
bool sgemm_direct_available();

/// How sgemm_direct reads B: row-major [K, N] (packed per block of columns), row-major with every
/// row readable up to N rounded up to 16 columns (read in place; the extra columns are computed
/// but never stored), or stored transposed as [N, K] (op(B) = B^T, packed per block).
enum class DirectB { kRows, kRowsPadded, kTransposed };

/// Row-major C[M,N] = A[M,K] · op(B)[K,N] (+ C when `accumulate`) + bias[row] (optional, M
/// values), then `act` (optional) on every element: the conv/MatMul GEMM with its epilogue fused,
/// A read in place (no packing of the weights), C written once (sgemm_direct.cc). Only when
/// sgemm_direct_available(); split over `pool` like sgemm.
void sgemm_direct(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
                  bool accumulate, float* c, int64_t ldc, const float* bias, const FusedActivation* act,
                  ThreadPool* pool, DirectB layout = DirectB::kRows);

/// The geometry of a 2-D window over one plane (depthwise conv, pooling): input ih × iw, output
/// oh × ow, kernel kh × kw, strides, dilations and the leading pads (the trailing ones follow
/// from the sizes).
struct Plane2d {
  int64_t ih = 0, iw = 0, oh = 0, ow = 0, kh = 3, kw = 3, sh = 1, sw = 1, dh = 1, dw = 1, pt = 0, pl = 0;
};

/// The last two spatial dims of `g` as a Plane2d.
inline Plane2d plane2d_of(const WindowGeometry& g) {
  Plane2d d;
  d.ih = g.in[1];
  d.iw = g.in[2];
  d.oh = g.out[1];
  d.ow = g.out[2];
  d.kh = g.kernel[1];
  d.kw = g.kernel[2];
  d.sh = g.stride[1];
  d.sw = g.stride[2];
  d.dh = g.dilation[1];
  d.dw = g.dilation[2];
  d.pt = g.pad_begin[1];
  d.pl = g.pad_begin[2];
  return d;
}

/// o[i] = c[i] ? x[i * sx] : y[i * sy] over 4-byte elements (sx, sy in {0, 1}; bools are 0/1
/// bytes) with AVX2 (elementwise_avx2.cc). False (nothing written) when the CPU lacks AVX2.
bool where4_avx2(const bool* c, const uint32_t* x, int64_t sx, const uint32_t* y, int64_t sy, uint32_t* o, int64_t n);

/// y[i] = saturate(nearbyint(x[i] / scale) + zp) into `out` (uint8, int8, uint16 or int16) with
/// AVX2 (elementwise_avx2.cc), the portable kernel's roundings. False (nothing written) for other
/// types or without AVX2.
bool quantize_run_avx2(const float* x, int64_t n, float scale, int32_t zp, DataType out, void* y);
/// y[i] = float(x[i] - zp) * scale for 8/16-bit levels `in` with AVX2. False as above.
bool dequantize_run_avx2(const void* x, DataType in, int64_t n, float scale, int32_t zp, float* y);

/// Softmax of one contiguous row in place with AVX2 (softmax_avx2.cc): exp(x - max) / sum, with
/// entries more than 87 below the maximum as exact 0 and an all -inf row uniform. False (nothing
/// done) when the CPU lacks AVX2/FMA.
bool softmax_row_avx2(float* r, int64_t len);

/// MaxPool of `n_planes` consecutive planes (no dilation; stride 1 or 2 along the width) with
/// AVX2 (pool_avx2.cc): y = the max over the window's positions inside the plane (NaN inputs are
/// skipped, as the portable kernel does). False (nothing written) when the CPU lacks AVX2 or the
/// geometry is not covered.
bool maxpool2d_avx2(const Plane2d& d, int64_t n_planes, const float* x, float* y);

/// Depthwise 3×3 of `n_planes` consecutive unpadded planes x (each with its taps w[9p..9p+9) and
/// bias[p], bias optional) with AVX2 (depthwise_avx2.cc): y[oh][ow] = act(bias + sum w[kb][kc] *
/// x[oh*sh - pt + kb*dh][ow*sw - pl + kc*dw]), zero outside the plane. False (nothing written)
/// when the CPU lacks AVX2/FMA, for stride > 2 or a dilated stride 2, or an activation other
/// than ReLU/Clip.
bool depthwise3x3_avx2(const Plane2d& d, int64_t n_planes, const float* x, const float* w, const float* bias,
                       float* y, const FusedActivation* act);

#if defined(__x86_64__) && !defined(__AVX2__) && defined(__GNUC__) && !defined(__clang__)
#define QTOOL_HAVE_AVX2_GEMM 1
/// sgemm's serial core compiled for AVX2 + FMA (gemm_avx2.cc); only called when the CPU has both.
void sgemm_avx2_serial(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                       int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);
/// The same core compiled for AVX-512 F/DQ/VL/BW (gemm_avx512.cc); only called when the CPU has them.
void sgemm_avx512_serial(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                         int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);
#else
#define QTOOL_HAVE_AVX2_GEMM 0
#endif

/// Numpy-style broadcast of two shapes; throws naming the node if incompatible.
Shape broadcast_shapes(const KernelContext& ctx, const Shape& a, const Shape& b);

/// Element strides of a batch shape `s` right-aligned into `rank` broadcast dimensions: row-major
/// strides, 0 for dimensions of size 1 (broadcast) and for the missing leading ones.
inline std::vector<int64_t> broadcast_strides(const Shape& s, size_t rank) {
  std::vector<int64_t> st(rank, 0);
  int64_t acc = 1;
  for (size_t i = 0; i < s.size(); ++i) {
    const size_t d = s.size() - 1 - i, o = rank - 1 - i;
    st[o] = s[d] == 1 ? 0 : acc;
    acc *= s[d];
  }
  return st;
}

}  // namespace qtool::runtime::nn

namespace qtool::runtime::nn {

/// Row-major double GEMM (serial), used by the integer kernels whose int32 accumulators must be
/// exact: every int8/int16 product sum below 2^53 is exact in double.
void dgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const double* a, int64_t lda, const double* b,
           int64_t ldb, double* c, int64_t ldc);

/// Convolution forward over N-D NCHW data: y[N, M, out...] = conv(x[N, C, in...], w[M, C/group, k...]) + bias[M]
/// (bias may be null). Depthwise (C/group == 1) runs a direct kernel; everything else runs
/// im2col tiles + GEMM, split across `pool`. T is float (model compute) or double (exact integer convs).
/// `act` (float only; may be null) is applied to each output tile right after its bias, while the
/// tile is still in cache (Conv + activation fusion).
template <typename T>
void conv_forward(const T* x, const Shape& x_shape, const T* w, const Shape& w_shape, const T* bias, int64_t group,
                  const WindowGeometry& g, T* y, ThreadPool* pool, const FusedActivation* act = nullptr);

}  // namespace qtool::runtime::nn
