// Element types, numbered exactly as ONNX's TensorProto.DataType so that the
// integer round-trips through any protobuf version. ONNX 1.12's headers stop at
// BFLOAT16 (16); the 8-bit float, 4-bit and 2-bit types are defined here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace qtool {

enum class DataType : int32_t {
  kUndefined = 0,
  kFloat = 1,
  kUint8 = 2,
  kInt8 = 3,
  kUint16 = 4,
  kInt16 = 5,
  kInt32 = 6,
  kInt64 = 7,
  kString = 8,
  kBool = 9,
  kFloat16 = 10,
  kDouble = 11,
  kUint32 = 12,
  kUint64 = 13,
  kComplex64 = 14,
  kComplex128 = 15,
  kBFloat16 = 16,
  kFloat8E4M3FN = 17,
  kFloat8E4M3FNUZ = 18,
  kFloat8E5M2 = 19,
  kFloat8E5M2FNUZ = 20,
  kUint4 = 21,  ///< packed two per byte, first element in the low nibble
  kInt4 = 22,   ///< packed two per byte, first element in the low nibble
  kFloat4E2M1 = 23,
  kFloat8E8M0 = 24,
  kUint2 = 25,  ///< packed four per byte, first element in the lowest bits
  kInt2 = 26,   ///< packed four per byte, first element in the lowest bits
};

/// "float32", "int4", ... (ONNX-style lower-case names, used in messages and JSON).
std::string_view dtype_name(DataType t);
/// True if the integer is a DataType value qtool knows.
bool dtype_is_known(int32_t value);
/// Bits per element: 32 for float, 4 for int4, 2 for int2, 1 byte*8 for bool; 0 for string/undefined.
int dtype_bits(DataType t);
/// True for the sub-byte packed types (int4/uint4/int2/uint2/float4).
inline bool dtype_is_packed(DataType t) { return dtype_bits(t) > 0 && dtype_bits(t) < 8; }
/// Bytes needed to store n elements of t (packed types round up to whole bytes).
size_t dtype_storage_bytes(DataType t, int64_t n);
bool dtype_is_float(DataType t);    ///< float16/bfloat16/float/double (not float8)
bool dtype_is_integer(DataType t);  ///< any signed or unsigned integer type incl. packed ones
bool dtype_is_signed(DataType t);   ///< signed integer types
/// Range [lo, hi] of an integer type (e.g. int4: -8..7, uint2: 0..3).
void dtype_int_range(DataType t, int64_t* lo, int64_t* hi);

/// IEEE half <-> float, round-to-nearest-even.
float half_to_float(uint16_t h);
/// FLOAT8E4M3FN (ONNX type 17: 1 sign, 4 exponent bits with bias 7, 3 mantissa bits, no infinities,
/// NaN = S.1111.111, largest finite ±448, subnormals m/8·2^-6) -> float. Exact.
float float8e4m3fn_to_float(uint8_t code);
/// float -> the nearest FLOAT8E4M3FN code, ties to the even code, saturating at ±448 (ONNX's
/// saturate=1 cast); NaN -> 0x7F.
uint8_t float_to_float8e4m3fn(float f);
/// FLOAT4E2M1 (ONNX type 23: 1 sign, 2 exponent bits with bias 1, 1 mantissa bit, no infinities or
/// NaN; magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6) code in the low 4 bits -> float. Exact.
float float4e2m1_to_float(uint8_t code);
/// float -> the nearest FLOAT4E2M1 code (0..15), ties to the even code, saturating at ±6 (ONNX's
/// saturate=1 cast); NaN -> +6 as ONNX's reference cast saturates it (there is no NaN code).
uint8_t float_to_float4e2m1(float f);
uint16_t float_to_half(float f);
/// bfloat16 <-> float, round-to-nearest-even.
inline float bf16_to_float(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint16_t float_to_bf16(float f);

/// Reads element i of a packed sub-byte array of `bits` (2 or 4) bits; sign-extends if is_signed.
inline int32_t packed_get(const uint8_t* data, int64_t i, int bits, bool is_signed) {
  const int per_byte = 8 / bits;
  const int shift = static_cast<int>(i % per_byte) * bits;
  const uint32_t mask = (1u << bits) - 1u;
  int32_t v = static_cast<int32_t>((data[i / per_byte] >> shift) & mask);
  if (is_signed && (v & (1 << (bits - 1)))) v -= (1 << bits);
  return v;
}

/// Writes element i of a packed sub-byte array (value is truncated to `bits` bits).
inline void packed_set(uint8_t* data, int64_t i, int bits, int32_t value) {
  const int per_byte = 8 / bits;
  const int shift = static_cast<int>(i % per_byte) * bits;
  const uint32_t mask = (1u << bits) - 1u;
  uint8_t& b = data[i / per_byte];
  b = static_cast<uint8_t>((b & ~(mask << shift)) | ((static_cast<uint32_t>(value) & mask) << shift));
}

}  // namespace qtool
