// AVX-512 build of the serial SGEMM core for portable builds (x86-64-v2 baseline) running on CPUs
// with AVX-512 F/DQ/VL/BW: nn::sgemm picks it at run time before the AVX2 one. Eigen's AVX-512
// kernel multiplies 16 floats per instruction; on this project's AMD EPYC machines it ran the
// shared models' GEMM shapes at 150-180 GFLOP/s against 95-110 for the AVX2 build (BENCHMARKS.md).
//
// Safety is the same as gemm_avx2.cc: standard headers first under the default target, Eigen
// compiled in a renamed namespace (qtool_eigen_avx512), feature macros defined by hand because
// `#pragma GCC target` does not define them in C++, and the function is only called after
// __builtin_cpu_supports has confirmed every feature.
#include "gemm_isa_std_headers.inc"
#include "nn_util.h"

#if QTOOL_HAVE_AVX2_GEMM
#if defined(__x86_64__) && !defined(__AVX512F__)
#include <immintrin.h>
#pragma GCC push_options
#pragma GCC target("avx,avx2,fma,avx512f,avx512dq,avx512vl,avx512bw")
#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
#define __AVX512F__ 1
#define __AVX512DQ__ 1
#define __AVX512VL__ 1
#define __AVX512BW__ 1
#define Eigen qtool_eigen_avx512
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <Eigen/Core>
#pragma GCC diagnostic pop

#define QTOOL_GEMM_FN sgemm_avx512_serial
#include "gemm_isa_body.inc"
#undef QTOOL_GEMM_FN

#undef Eigen
#pragma GCC pop_options
#endif
#endif
