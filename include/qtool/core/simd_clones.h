// QTOOL_SIMD_CLONES: builds a hot function for AVX2 as well as the portable baseline (the default
// build is portable, QTOOL_NATIVE=OFF); the loader picks the AVX2 clone on CPUs that have it (GCC
// and Clang target_clones, through an ifunc). Off under AddressSanitizer (the fuzz build).
#pragma once

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define QTOOL_NO_SIMD_CLONES 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define QTOOL_NO_SIMD_CLONES 1
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(QTOOL_NO_SIMD_CLONES)
#define QTOOL_SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define QTOOL_SIMD_CLONES
#endif
