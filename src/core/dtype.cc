#include "qtool/core/dtype.h"
#include <limits>
#include <array>
#include <algorithm>

#include <cmath>

namespace qtool {

std::string_view dtype_name(DataType t) {
  switch (t) {
    case DataType::kUndefined: return "undefined";
    case DataType::kFloat: return "float32";
    case DataType::kUint8: return "uint8";
    case DataType::kInt8: return "int8";
    case DataType::kUint16: return "uint16";
    case DataType::kInt16: return "int16";
    case DataType::kInt32: return "int32";
    case DataType::kInt64: return "int64";
    case DataType::kString: return "string";
    case DataType::kBool: return "bool";
    case DataType::kFloat16: return "float16";
    case DataType::kDouble: return "float64";
    case DataType::kUint32: return "uint32";
    case DataType::kUint64: return "uint64";
    case DataType::kComplex64: return "complex64";
    case DataType::kComplex128: return "complex128";
    case DataType::kBFloat16: return "bfloat16";
    case DataType::kFloat8E4M3FN: return "float8e4m3fn";
    case DataType::kFloat8E4M3FNUZ: return "float8e4m3fnuz";
    case DataType::kFloat8E5M2: return "float8e5m2";
    case DataType::kFloat8E5M2FNUZ: return "float8e5m2fnuz";
    case DataType::kUint4: return "uint4";
    case DataType::kInt4: return "int4";
    case DataType::kFloat4E2M1: return "float4e2m1";
    case DataType::kFloat8E8M0: return "float8e8m0";
    case DataType::kUint2: return "uint2";
    case DataType::kInt2: return "int2";
  }
  return "unknown";
}

bool dtype_is_known(int32_t v) { return v >= 0 && v <= 26; }

int dtype_bits(DataType t) {
  switch (t) {
    case DataType::kFloat: case DataType::kInt32: case DataType::kUint32: return 32;
    case DataType::kUint8: case DataType::kInt8: case DataType::kBool:
    case DataType::kFloat8E4M3FN: case DataType::kFloat8E4M3FNUZ: case DataType::kFloat8E5M2:
    case DataType::kFloat8E5M2FNUZ: case DataType::kFloat8E8M0: return 8;
    case DataType::kUint16: case DataType::kInt16: case DataType::kFloat16: case DataType::kBFloat16: return 16;
    case DataType::kInt64: case DataType::kDouble: case DataType::kUint64: case DataType::kComplex64: return 64;
    case DataType::kComplex128: return 128;
    case DataType::kUint4: case DataType::kInt4: case DataType::kFloat4E2M1: return 4;
    case DataType::kUint2: case DataType::kInt2: return 2;
    case DataType::kString: case DataType::kUndefined: return 0;
  }
  return 0;
}

size_t dtype_storage_bytes(DataType t, int64_t n) {
  const int bits = dtype_bits(t);
  return static_cast<size_t>((n * bits + 7) / 8);
}

bool dtype_is_float(DataType t) {
  return t == DataType::kFloat || t == DataType::kFloat16 || t == DataType::kBFloat16 || t == DataType::kDouble;
}

bool dtype_is_integer(DataType t) {
  switch (t) {
    case DataType::kUint8: case DataType::kInt8: case DataType::kUint16: case DataType::kInt16:
    case DataType::kInt32: case DataType::kInt64: case DataType::kUint32: case DataType::kUint64:
    case DataType::kUint4: case DataType::kInt4: case DataType::kUint2: case DataType::kInt2: return true;
    default: return false;
  }
}

bool dtype_is_signed(DataType t) {
  switch (t) {
    case DataType::kInt8: case DataType::kInt16: case DataType::kInt32: case DataType::kInt64:
    case DataType::kInt4: case DataType::kInt2: return true;
    default: return false;
  }
}

void dtype_int_range(DataType t, int64_t* lo, int64_t* hi) {
  const int bits = dtype_bits(t);
  if (t == DataType::kUint64) { *lo = 0; *hi = INT64_MAX; return; }
  if (t == DataType::kInt64) { *lo = INT64_MIN; *hi = INT64_MAX; return; }
  if (dtype_is_signed(t)) {
    *lo = -(int64_t{1} << (bits - 1));
    *hi = (int64_t{1} << (bits - 1)) - 1;
  } else {
    *lo = 0;
    *hi = (int64_t{1} << bits) - 1;
  }
}

float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do { ++e; mant <<= 1; } while ((mant & 0x400u) == 0);
      bits = sign | static_cast<uint32_t>(127 - 15 - e) << 23 | (mant & 0x3ffu) << 13;
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | (exp + (127 - 15)) << 23 | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t float_to_half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t absx = x & 0x7fffffffu;
  if (absx >= 0x7f800000u) {  // inf or nan
    return static_cast<uint16_t>(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0u));
  }
  if (absx >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf
  if (absx < 0x38800000u) {  // subnormal or zero in half
    // Scale into the subnormal range using float arithmetic (exact RNE).
    float a;
    std::memcpy(&a, &absx, 4);
    const float scaled = a * 16777216.0f;  // 2^24: half subnormal unit is 2^-24
    const uint32_t m = static_cast<uint32_t>(std::nearbyint(scaled));
    return static_cast<uint16_t>(sign | m);
  }
  // Normal: round mantissa from 23 to 10 bits, RNE.
  uint32_t rounded = absx + 0xfffu + ((absx >> 13) & 1u);
  uint32_t h = (rounded >> 13) - ((127 - 15) << 10);
  return static_cast<uint16_t>(sign | h);
}

uint16_t float_to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // quiet NaN
  x += 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}

float float8e4m3fn_to_float(uint8_t code) {
  const int e = (code >> 3) & 0xF, m = code & 7;
  if (e == 15 && m == 7) return std::numeric_limits<float>::quiet_NaN();
  const float v = e == 0 ? std::ldexp(static_cast<float>(m) / 8.0f, -6) : std::ldexp(1.0f + static_cast<float>(m) / 8.0f, e - 7);
  return (code & 0x80) ? -v : v;
}

uint8_t float_to_float8e4m3fn(float f) {
  if (std::isnan(f)) return 0x7F;
  // The 127 finite non-negative codes are increasing in value: nearest by binary search, ties to the
  // even code (the even mantissa), |f| > 448 saturates to 448.
  static const std::array<float, 127> kValues = [] {
    std::array<float, 127> v{};
    for (int c = 0; c < 127; ++c) v[c] = float8e4m3fn_to_float(static_cast<uint8_t>(c));
    return v;
  }();
  const uint8_t sign = std::signbit(f) ? 0x80 : 0;
  const float a = std::fabs(f);
  if (a >= kValues[126]) return sign | 126;
  const auto it = std::upper_bound(kValues.begin(), kValues.end(), a);  // first value > a (exists)
  const int hi = static_cast<int>(it - kValues.begin()), lo = hi - 1;
  const float dlo = a - kValues[lo], dhi = kValues[hi] - a;
  const int c = dlo < dhi ? lo : dhi < dlo ? hi : ((lo & 1) == 0 ? lo : hi);
  return sign | static_cast<uint8_t>(c);
}

float float4e2m1_to_float(uint8_t code) {
  static constexpr float kMagnitude[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  const float v = kMagnitude[code & 7];
  return (code & 8) ? -v : v;
}

uint8_t float_to_float4e2m1(float f) {
  if (std::isnan(f)) return 7;
  // The 8 magnitudes are increasing in code: nearest, ties to the even code (even mantissa bit).
  static constexpr float kMagnitude[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  const uint8_t sign = std::signbit(f) ? 8 : 0;
  const float a = std::fabs(f);
  if (a >= 6.0f) return sign | 7;
  int hi = 1;
  while (kMagnitude[hi] <= a) ++hi;  // first magnitude > a (hi <= 7)
  const int lo = hi - 1;
  const float dlo = a - kMagnitude[lo], dhi = kMagnitude[hi] - a;
  const int c = dlo < dhi ? lo : dhi < dlo ? hi : ((lo & 1) == 0 ? lo : hi);
  return sign | static_cast<uint8_t>(c);
}

}  // namespace qtool
