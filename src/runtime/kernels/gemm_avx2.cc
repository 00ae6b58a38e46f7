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
#include "gemm_isa_std_headers.inc"
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

#define QTOOL_GEMM_FN sgemm_avx2_serial
#include "gemm_isa_body.inc"
#undef QTOOL_GEMM_FN

#undef Eigen
#pragma GCC pop_options
#endif
#endif
