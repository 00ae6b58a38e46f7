#include "nn_util.h"

#include <algorithm>
#include <cstdlib>

// GCC 12 reports -Wmaybe-uninitialized inside its own AVX-512 intrinsics when Eigen is built
// with -march=native (QTOOL_NATIVE); the warning is a known false positive of the headers.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <Eigen/Core>

namespace qtool::runtime::nn {

Tensor float_input(const KernelContext& ctx, size_t i) {
  const Tensor& t = ctx.input(i);
  if (t.dtype() == DataType::kFloat) return t;
  if (!dtype_is_float(t.dtype()) && !dtype_is_integer(t.dtype()) && t.dtype() != DataType::kBool) {
    bad_node(ctx, "input {} has dtype {}, expected a numeric tensor", i, dtype_name(t.dtype()));
  }
  return t.to_float();
}

Tensor to_dtype_like(Tensor t, DataType like) {
  if (like == DataType::kFloat || t.dtype() == like) return t;
  if (dtype_is_float(like) || (dtype_is_integer(like) && !dtype_is_packed(like))) return t.cast(like);
  return t;
}

int64_t normalize_axis(const KernelContext& ctx, int64_t axis, int64_t rank) {
  if (axis < -rank || axis >= std::max<int64_t>(rank, 1)) bad_node(ctx, "axis {} out of range for rank {}", axis, rank);
  return axis < 0 ? axis + rank : axis;
}

Shape WindowGeometry::out_shape() const {
  Shape s;
  for (int i = 3 - spatial; i < 3; ++i) s.push_back(out[i]);
  return s;
}

namespace {
/// bad_node() for callers without a KernelContext: the same "<node>: <message>" wording.
template <typename... Args>
[[noreturn]] void bad_window(const ir::Node& node, fmt::format_string<Args...> f, Args&&... args) {
  fail(ErrorCode::kInvalidModel, "{}: {}", node.describe(), fmt::format(f, std::forward<Args>(args)...));
}
}  // namespace

WindowGeometry window_geometry(const KernelContext& ctx, const Shape& x_shape, const std::vector<int64_t>& kernel,
                               bool allow_ceil) {
  return window_geometry(ctx.node(), x_shape, kernel, allow_ceil);
}

WindowGeometry window_geometry(const ir::Node& node, const Shape& x_shape, const std::vector<int64_t>& kernel,
                               bool allow_ceil) {
  WindowGeometry g;
  if (x_shape.size() < 3 || x_shape.size() > 5) {
    bad_window(node, "input rank {} not supported (expected [N, C, d1..d3])", x_shape.size());
  }
  const int sp = static_cast<int>(x_shape.size()) - 2;
  g.spatial = sp;
  std::vector<int64_t> ks = node.attr_ints("kernel_shape", kernel);
  if (static_cast<int>(ks.size()) != sp) bad_window(node, "kernel_shape has {} dims, input has {} spatial dims", ks.size(), sp);
  std::vector<int64_t> strides = node.attr_ints("strides", std::vector<int64_t>(sp, 1));
  std::vector<int64_t> dil = node.attr_ints("dilations", std::vector<int64_t>(sp, 1));
  std::vector<int64_t> pads = node.attr_ints("pads", std::vector<int64_t>(2 * sp, 0));
  if (static_cast<int>(strides.size()) != sp || static_cast<int>(dil.size()) != sp ||
      static_cast<int>(pads.size()) != 2 * sp) {
    bad_window(node, "strides/dilations/pads do not match {} spatial dims", sp);
  }
  for (int64_t v : pads) {
    if (v < 0) bad_window(node, "pads must be non-negative (got {})", v);
  }
  const std::string auto_pad = node.attr_string("auto_pad", "NOTSET");
  const bool ceil_mode = allow_ceil && node.attr_int("ceil_mode", 0) != 0;
  const int off = 3 - sp;
  for (int i = 0; i < sp; ++i) {
    const int j = off + i;
    g.in[j] = x_shape[2 + i];
    g.kernel[j] = ks[i];
    g.stride[j] = strides[i];
    g.dilation[j] = dil[i];
    if (ks[i] <= 0 || strides[i] <= 0 || dil[i] <= 0) bad_window(node, "kernel, stride and dilation must be positive");
    const int64_t ek = (ks[i] - 1) * dil[i] + 1;
    if (auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER") {
      g.out[j] = (g.in[j] + strides[i] - 1) / strides[i];
      const int64_t total = std::max<int64_t>(0, (g.out[j] - 1) * strides[i] + ek - g.in[j]);
      g.pad_begin[j] = auto_pad == "SAME_UPPER" ? total / 2 : total - total / 2;
      g.pad_end[j] = total - g.pad_begin[j];
      continue;
    }
    if (auto_pad == "VALID") {
      g.pad_begin[j] = g.pad_end[j] = 0;
    } else if (auto_pad == "NOTSET" || auto_pad.empty()) {
      g.pad_begin[j] = pads[i];
      g.pad_end[j] = pads[sp + i];
    } else {
      bad_window(node, "unknown auto_pad '{}'", auto_pad);
    }
    const int64_t span = g.in[j] + g.pad_begin[j] + g.pad_end[j] - ek;
    if (span < 0) bad_window(node, "window {} larger than padded input {}", ek, g.in[j] + g.pad_begin[j] + g.pad_end[j]);
    if (ceil_mode) {
      g.out[j] = (span + strides[i] - 1) / strides[i] + 1;
      // The last window must start inside the input or the left padding (PyTorch/ORT rule).
      if ((g.out[j] - 1) * strides[i] >= g.in[j] + g.pad_begin[j]) --g.out[j];
    } else {
      g.out[j] = span / strides[i] + 1;
    }
  }
  return g;
}

namespace {
using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstMap = Eigen::Map<const RowMat, 0, Eigen::OuterStride<>>;
using MutMap = Eigen::Map<RowMat, 0, Eigen::OuterStride<>>;

/// True when the portable build runs Eigen's AVX-512 GEMM here.
bool avx512_gemm() {
#if QTOOL_HAVE_AVX2_GEMM
  static const bool use_avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                                 __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
                                 __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                                 std::getenv("QTOOL_NO_AVX512") == nullptr;
  return use_avx512;
#else
  return false;
#endif
}

void sgemm_serial(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                  const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
#if QTOOL_HAVE_AVX2_GEMM
  // Portable build on an AVX-512 / AVX2 machine: the wider kernels are about 4x / 2x as fast.
  if (avx512_gemm()) {
    sgemm_avx512_serial(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  static const bool use_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (use_avx2) {
    sgemm_avx2_serial(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
#endif
  MutMap C(c, m, n, Eigen::OuterStride<>(ldc));
  if (k == 0) {
    if (beta == 0.0f) C.setZero();
    else C *= beta;
    return;
  }
  ConstMap A(a, ta ? k : m, ta ? m : k, Eigen::OuterStride<>(lda));
  ConstMap B(b, tb ? n : k, tb ? k : n, Eigen::OuterStride<>(ldb));
  auto run = [&](const auto& opa, const auto& opb) {
    if (beta == 0.0f) {
      if (alpha == 1.0f) C.noalias() = opa * opb;
      else C.noalias() = alpha * (opa * opb);
    } else {
      if (beta != 1.0f) C *= beta;
      if (alpha == 1.0f) C.noalias() += opa * opb;
      else C.noalias() += alpha * (opa * opb);
    }
  };
  if (!ta && !tb) run(A, B);
  else if (ta && !tb) run(A.transpose(), B);
  else if (!ta && tb) run(A, B.transpose());
  else run(A.transpose(), B.transpose());
}
}  // namespace

void sgemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
           const float* b, int64_t ldb, float beta, float* c, int64_t ldc, ThreadPool* pool) {
  if (m <= 0 || n <= 0) return;
  // A not transposed, alpha 1, beta 0 or 1 (MatMul, Gemm with or without C), at least a few rows
  // (a single row is a matrix-vector product, Eigen's GEMV): the direct AVX2 GEMM, which rounds
  // as ONNX Runtime's MLAS does. AVX-512 machines keep Eigen's AVX-512 build.
  if (!ta && alpha == 1.0f && (beta == 0.0f || beta == 1.0f) && m >= 4 && k > 0 && sgemm_direct_available() &&
      !avx512_gemm()) {
    sgemm_direct(m, n, k, a, lda, b, ldb, beta == 1.0f, c, ldc, nullptr, nullptr, pool,
                 tb ? DirectB::kTransposed : DirectB::kRows);
    return;
  }
  const int threads = pool ? pool->threads() : 1;
  const double flops = static_cast<double>(m) * n * k;
  if (threads <= 1 || flops < 64.0 * 64 * 64) {
    sgemm_serial(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  // Split the larger output dimension into one block per thread (aligned to 16 columns or 4 rows
  // so that every block keeps whole SIMD panels).
  if (n >= m) {
    const int64_t grain = std::max<int64_t>(16, ((n + threads - 1) / threads + 15) / 16 * 16);
    pool->parallel_for(n, grain, [&](int64_t j0, int64_t j1) {
      sgemm_serial(ta, tb, m, j1 - j0, k, alpha, a, lda, tb ? b + j0 * ldb : b + j0, ldb, beta, c + j0, ldc);
    });
  } else {
    const int64_t grain = std::max<int64_t>(4, ((m + threads - 1) / threads + 3) / 4 * 4);
    pool->parallel_for(m, grain, [&](int64_t i0, int64_t i1) {
      sgemm_serial(ta, tb, i1 - i0, n, k, alpha, ta ? a + i0 : a + i0 * lda, lda, b, ldb, beta, c + i0 * ldc, ldc);
    });
  }
}

void dgemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const double* a, int64_t lda, const double* b,
           int64_t ldb, double* c, int64_t ldc) {
  using RowMatD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using CMap = Eigen::Map<const RowMatD, 0, Eigen::OuterStride<>>;
  Eigen::Map<RowMatD, 0, Eigen::OuterStride<>> C(c, m, n, Eigen::OuterStride<>(ldc));
  if (m <= 0 || n <= 0) return;
  if (k == 0) {
    C.setZero();
    return;
  }
  CMap A(a, ta ? k : m, ta ? m : k, Eigen::OuterStride<>(lda));
  CMap B(b, tb ? n : k, tb ? k : n, Eigen::OuterStride<>(ldb));
  if (!ta && !tb) C.noalias() = A * B;
  else if (ta && !tb) C.noalias() = A.transpose() * B;
  else if (!ta && tb) C.noalias() = A * B.transpose();
  else C.noalias() = A.transpose() * B.transpose();
}

Shape broadcast_shapes(const KernelContext& ctx, const Shape& a, const Shape& b) {
  const size_t r = std::max(a.size(), b.size());
  Shape out(r, 1);
  for (size_t i = 0; i < r; ++i) {
    const int64_t da = i < r - a.size() ? 1 : a[i - (r - a.size())];
    const int64_t db = i < r - b.size() ? 1 : b[i - (r - b.size())];
    if (da != db && da != 1 && db != 1) {
      bad_node(ctx, "shapes {} and {} cannot be broadcast", shape_str(a), shape_str(b));
    }
    out[i] = da == 1 ? db : da;
  }
  return out;
}

}  // namespace qtool::runtime::nn

namespace qtool::runtime {

void gemm_f32(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
              const float* b, int64_t ldb, float beta, float* c, int64_t ldc, ThreadPool* pool) {
  nn::sgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, pool);
}

}  // namespace qtool::runtime
