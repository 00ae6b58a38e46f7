// The table of low-bit weight formats (see format.h) and the helpers it drives.
#include <algorithm>
#include <array>
#include <cmath>

#include <fmt/format.h>

#include "qtool/core/error.h"
#include "qtool/quant/format.h"

namespace qtool::quant {
namespace {

using S = WeightScheme;
using L = WeightLayout;

// clang-format off
/// THE table. name, scheme, bits, signed, symmetric, block, layout, help.
constexpr std::array<WeightFormat, 47> kFormats = {{
  {"int8",        S::kInt, 8, true,  true,   0, L::kQdq, "int8 symmetric per output channel (DQ axis, opset 13)"},
  {"int4",        S::kInt, 4, true,  true,   0, L::kQdq, "int4 symmetric per output channel (DQ axis, opset 21)"},
  {"int4_b16",    S::kInt, 4, true,  true,  16, L::kQdq, "int4 symmetric, blocks of 16 along K (DQ block_size, opset 21)"},
  {"int4_b32",    S::kInt, 4, true,  true,  32, L::kQdq, "int4 symmetric, blocks of 32 along K"},
  {"int4_b64",    S::kInt, 4, true,  true,  64, L::kQdq, "int4 symmetric, blocks of 64 along K"},
  {"int4_b128",   S::kInt, 4, true,  true, 128, L::kQdq, "int4 symmetric, blocks of 128 along K"},
  {"uint4",       S::kInt, 4, false, false,  0, L::kQdq, "uint4 with zero points per output channel (opset 21)"},
  {"uint4_b16",   S::kInt, 4, false, false, 16, L::kQdq, "uint4 with zero points, blocks of 16"},
  {"uint4_b32",   S::kInt, 4, false, false, 32, L::kQdq, "uint4 with zero points, blocks of 32"},
  {"uint4_b64",   S::kInt, 4, false, false, 64, L::kQdq, "uint4 with zero points, blocks of 64"},
  {"uint4_b128",  S::kInt, 4, false, false,128, L::kQdq, "uint4 with zero points, blocks of 128"},
  {"int2",        S::kInt, 2, true,  true,   0, L::kQdq, "int2 symmetric per output channel (DQ, opset 25)"},
  {"int2_b16",    S::kInt, 2, true,  true,  16, L::kQdq, "int2 symmetric, blocks of 16"},
  {"int2_b32",    S::kInt, 2, true,  true,  32, L::kQdq, "int2 symmetric, blocks of 32"},
  {"int2_b64",    S::kInt, 2, true,  true,  64, L::kQdq, "int2 symmetric, blocks of 64"},
  {"int2_b128",   S::kInt, 2, true,  true, 128, L::kQdq, "int2 symmetric, blocks of 128"},
  {"uint2",       S::kInt, 2, false, false,  0, L::kQdq, "uint2 with zero points per output channel (opset 25)"},
  {"uint2_b16",   S::kInt, 2, false, false, 16, L::kQdq, "uint2 with zero points, blocks of 16"},
  {"uint2_b32",   S::kInt, 2, false, false, 32, L::kQdq, "uint2 with zero points, blocks of 32"},
  {"uint2_b64",   S::kInt, 2, false, false, 64, L::kQdq, "uint2 with zero points, blocks of 64"},
  {"uint2_b128",  S::kInt, 2, false, false,128, L::kQdq, "uint2 with zero points, blocks of 128"},
  {"ternary",     S::kTernary, 2, true, true,  0, L::kQdq, "{-a,0,+a} per output channel, optimal threshold (int2 DQ, opset 25)"},
  {"ternary_b16", S::kTernary, 2, true, true, 16, L::kQdq, "{-a,0,+a}, blocks of 16"},
  {"ternary_b32", S::kTernary, 2, true, true, 32, L::kQdq, "{-a,0,+a}, blocks of 32"},
  {"ternary_b64", S::kTernary, 2, true, true, 64, L::kQdq, "{-a,0,+a}, blocks of 64"},
  {"ternary_b128",S::kTernary, 2, true, true,128, L::kQdq, "{-a,0,+a}, blocks of 128"},
  {"binary",      S::kBinary, 2, true, true,   0, L::kQdq, "{-a,+a}, a = mean|w| per output channel (int2 DQ, opset 25)"},
  {"binary_b16",  S::kBinary, 2, true, true,  16, L::kQdq, "{-a,+a}, blocks of 16"},
  {"binary_b32",  S::kBinary, 2, true, true,  32, L::kQdq, "{-a,+a}, blocks of 32"},
  {"binary_b64",  S::kBinary, 2, true, true,  64, L::kQdq, "{-a,+a}, blocks of 64"},
  {"binary_b128", S::kBinary, 2, true, true, 128, L::kQdq, "{-a,+a}, blocks of 128"},
  {"mnb8_b32",    S::kInt, 8, true,  true,  32, L::kMatMulNBits, "MatMulNBits bits=8, blocks of 32, default zero point 128"},
  {"mnb8_b128",   S::kInt, 8, true,  true, 128, L::kMatMulNBits, "MatMulNBits bits=8, blocks of 128"},
  {"mnb4_b16",    S::kInt, 4, true,  true,  16, L::kMatMulNBits, "MatMulNBits bits=4, blocks of 16, default zero point 8"},
  {"mnb4_b32",    S::kInt, 4, true,  true,  32, L::kMatMulNBits, "MatMulNBits bits=4, blocks of 32"},
  {"mnb4_b64",    S::kInt, 4, true,  true,  64, L::kMatMulNBits, "MatMulNBits bits=4, blocks of 64"},
  {"mnb4_b128",   S::kInt, 4, true,  true, 128, L::kMatMulNBits, "MatMulNBits bits=4, blocks of 128"},
  {"mnb4z_b16",   S::kInt, 4, false, false, 16, L::kMatMulNBits, "MatMulNBits bits=4 with packed zero points, blocks of 16"},
  {"mnb4z_b32",   S::kInt, 4, false, false, 32, L::kMatMulNBits, "MatMulNBits bits=4 with packed zero points, blocks of 32"},
  {"mnb4z_b64",   S::kInt, 4, false, false, 64, L::kMatMulNBits, "MatMulNBits bits=4 with packed zero points, blocks of 64"},
  {"mnb4z_b128",  S::kInt, 4, false, false,128, L::kMatMulNBits, "MatMulNBits bits=4 with packed zero points, blocks of 128"},
  {"mnb2_b16",    S::kInt, 2, true,  true,  16, L::kMatMulNBits, "MatMulNBits bits=2, blocks of 16, default zero point 2"},
  {"mnb2_b32",    S::kInt, 2, true,  true,  32, L::kMatMulNBits, "MatMulNBits bits=2, blocks of 32"},
  {"mnb2_b64",    S::kInt, 2, true,  true,  64, L::kMatMulNBits, "MatMulNBits bits=2, blocks of 64"},
  {"mnb2_b128",   S::kInt, 2, true,  true, 128, L::kMatMulNBits, "MatMulNBits bits=2, blocks of 128"},
  {"mnb2z_b32",   S::kInt, 2, false, false, 32, L::kMatMulNBits, "MatMulNBits bits=2 with packed zero points, blocks of 32"},
  {"mnb2z_b128",  S::kInt, 2, false, false,128, L::kMatMulNBits, "MatMulNBits bits=2 with packed zero points, blocks of 128"},
}};
// clang-format on

}  // namespace

DataType WeightFormat::storage_type() const {
  if (layout == WeightLayout::kMatMulNBits) return DataType::kUint8;
  switch (bits) {
    case 8: return is_signed ? DataType::kInt8 : DataType::kUint8;
    case 4: return is_signed ? DataType::kInt4 : DataType::kUint4;
    case 2: return is_signed ? DataType::kInt2 : DataType::kUint2;
    default: break;
  }
  fail(ErrorCode::kInternal, "format '{}' has unsupported bits {}", name, bits);
}

void WeightFormat::level_range(int* lo, int* hi) const {
  if (scheme != WeightScheme::kInt) {
    *lo = -1;
    *hi = 1;
  } else if (is_signed) {
    *lo = -(1 << (bits - 1));
    *hi = (1 << (bits - 1)) - 1;
  } else {
    *lo = 0;
    *hi = (1 << bits) - 1;
  }
}

std::span<const WeightFormat> weight_formats() { return kFormats; }

const WeightFormat* find_weight_format(std::string_view name) {
  for (const auto& f : kFormats)
    if (f.name == name) return &f;
  return nullptr;
}

const WeightFormat& select_weight_format(std::string_view bits, int64_t block_size, bool symmetric,
                                         WeightLayout layout) {
  std::string base;
  bool force_signed = false, force_unsigned = false;
  if (bits == "8" || bits == "int8") base = "8";
  else if (bits == "4") base = "4";
  else if (bits == "int4") { base = "4"; force_signed = true; }
  else if (bits == "uint4") { base = "4"; force_unsigned = true; }
  else if (bits == "2") base = "2";
  else if (bits == "int2") { base = "2"; force_signed = true; }
  else if (bits == "uint2") { base = "2"; force_unsigned = true; }
  else if (bits == "ternary" || bits == "binary") base = std::string(bits);
  else
    fail(ErrorCode::kConfig, "unknown weight bits '{}' (expected 8, 4, 2, ternary, binary, int4, uint4, int2, uint2)",
         bits);
  const bool sym = force_signed ? true : (force_unsigned ? false : symmetric);
  const std::string suffix = block_size > 0 ? fmt::format("_b{}", block_size) : "";
  std::string name;
  if (layout == WeightLayout::kMatMulNBits) {
    if (base == "ternary" || base == "binary")
      fail(ErrorCode::kConfig, "--format matmulnbits supports --bits 2, 4 and 8; {} weights are written as int2 "
                               "DequantizeLinear (use --format qdq)", base);
    if (block_size <= 0)
      fail(ErrorCode::kConfig, "--format matmulnbits needs a block size (16, 32, 64 or 128), not per channel");
    name = fmt::format("mnb{}{}{}", base, sym ? "" : "z", suffix);
  } else if (base == "8") {
    name = "int8";  // int8 is always per output channel: blocks buy nothing at 8 bits
  } else if (base == "ternary" || base == "binary") {
    name = base + suffix;
  } else {
    name = fmt::format("{}{}{}", sym ? "int" : "uint", base, suffix);
  }
  const WeightFormat* f = find_weight_format(name);
  if (!f) {
    std::string valid;
    for (const auto& row : kFormats) valid += fmt::format("{}{}", valid.empty() ? "" : ", ", row.name);
    fail(ErrorCode::kConfig, "no weight format '{}' for bits={} block_size={} {} (formats: {})", name, bits,
         block_size, sym ? "symmetric" : "asymmetric", valid);
  }
  return *f;
}

std::string weight_formats_help() {
  std::string s = "Weight formats (name: bits, block, layout - description):\n";
  for (const auto& f : kFormats) {
    s += fmt::format("  {:<13} {} bit  {:<9} {:<12} {}\n", f.name, f.bits,
                     f.block_size > 0 ? fmt::format("block {}", f.block_size) : "channel",
                     f.layout == WeightLayout::kQdq ? "DQ" : "MatMulNBits", f.help);
  }
  return s;
}

double format_bits_per_weight(const WeightFormat& format, int64_t rows, int64_t cols, int scale_bits) {
  QTOOL_CHECK(rows > 0 && cols > 0, ErrorCode::kInternal, "bits per weight of an empty matrix");
  const int64_t kb = format.block_size > 0 ? (cols + format.block_size - 1) / format.block_size : 1;
  double bits = 0;
  if (format.layout == WeightLayout::kMatMulNBits) {
    bits += static_cast<double>(rows * kb * format.block_size * format.bits);  // padded blobs
    bits += static_cast<double>(rows * kb * 32);                                // fp32 scales
    if (!format.symmetric) bits += static_cast<double>(rows * ((kb * format.bits + 7) / 8) * 8);
  } else {
    bits += static_cast<double>((rows * cols * format.bits + 7) / 8 * 8);
    bits += static_cast<double>(rows * kb * scale_bits);
    if (!format.symmetric) bits += static_cast<double>((rows * kb * format.bits + 7) / 8 * 8);
  }
  return bits / static_cast<double>(rows * cols);
}

}  // namespace qtool::quant
