// AVX2 + FMA build of the serial SGEMM core, for portable builds (x86-64-v2 baseline) running on
// CPUs that have AVX2: nn::sgemm picks it at run time (__builtin_cpu_supports), which roughly
// doubles GEMM throughput over the SSE code Eigen generates for the baseline.
//
// How it stays safe on CPUs without AVX2: every standard header Eigen needs is included first,
// under the default target, so no shared inline function is compiled for AVX2 here; Eigen itself
// is compiled inside a renamed namespace (`#define Eigen qtool_eigen_avx2`, as TensorFlow Lite
// does), so its template instantiations never collide with the baseline ones elsewhere.
// `#pragma GCC target` does not define __AVX2__/__FMA__ in C++, so they are defined by hand for
// Eigen's feature detection.
#include <algorithm>
#include <array>
#include <atomic>
#include <cassert>
#include <cerrno>
#include <cfloat>
#include <climits>
#include <cmath>
#include <complex>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iosfwd>
#include <iostream>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <sstream>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "nn_util.h"

#if QTOOL_HAVE_AVX2_GEMM
#if defined(__x86_64__) && !defined(__AVX2__)
#include <immintrin.h>
#pragma GCC push_options
#pragma GCC target("avx,avx2,fma")
#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1
#define Eigen qtool_eigen_avx2
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <Eigen/Core>
#pragma GCC diagnostic pop

namespace qtool::runtime::nn {

void sgemm_avx2_serial(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                       const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using ConstMap = Eigen::Map<const RowMat, 0, Eigen::OuterStride<>>;
  using MutMap = Eigen::Map<RowMat, 0, Eigen::OuterStride<>>;
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

}  // namespace qtool::runtime::nn

#undef Eigen
#pragma GCC pop_options
#endif
#endif
