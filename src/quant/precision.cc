// THE table of weight element types (see precision.h).
#include "qtool/quant/precision.h"

#include <fmt/format.h>

#include "qtool/core/error.h"

namespace qtool::quant {
namespace {

using S = WeightScheme;
constexpr std::array<int16_t, 5> kAllBlocks = {0, 16, 32, 64, 128};
/// Palette groups: output channels sharing one table (0 = one table per tensor).
constexpr std::array<int16_t, 5> kPaletteGroups = {0, 1, 4, 8, 16};
constexpr std::array<int16_t, 4> kNoMnb = {-1, -1, -1, -1};

// clang-format off
/// name, width alias, scheme, bits, signed, ONNX type, opset, DQ blocks, MatMulNBits name and blocks, help.
constexpr std::array<ElementType, 17> kElementTypes = {{
  {"int8",    "8", S::kInt,     8, true,  DataType::kInt8,  13, {0, -1, -1, -1, -1}, "mnb8",  {32, 128, -1, -1},
   "int8 symmetric levels (opset 13; always per output channel)"},
  {"int4",    "4", S::kInt,     4, true,  DataType::kInt4,  21, kAllBlocks,          "mnb4",  {16, 32, 64, 128},
   "int4 symmetric levels (opset 21)"},
  {"uint4",   "4", S::kInt,     4, false, DataType::kUint4, 21, kAllBlocks,          "mnb4z", {16, 32, 64, 128},
   "uint4 levels with zero points (--asymmetric; opset 21)"},
  {"int2",    "2", S::kInt,     2, true,  DataType::kInt2,  25, kAllBlocks,          "mnb2",  {16, 32, 64, 128},
   "int2 symmetric levels (opset 25)"},
  {"uint2",   "2", S::kInt,     2, false, DataType::kUint2, 25, kAllBlocks,          "mnb2z", {32, 128, -1, -1},
   "uint2 levels with zero points (--asymmetric; opset 25)"},
  {"ternary", "",  S::kTernary, 2, true,  DataType::kInt2,  25, kAllBlocks,          "",      {-1, -1, -1, -1},
   "{-a, 0, +a}, threshold and a chosen per block (int2 DequantizeLinear, opset 25)"},
  {"binary",  "",  S::kBinary,  2, true,  DataType::kInt2,  25, kAllBlocks,          "",      {-1, -1, -1, -1},
   "{-a, +a}, a = mean|w| per block (int2 DequantizeLinear, opset 25)"},
  {"fp8",     "",  S::kFloat8,  8, true,  DataType::kFloat8E4M3FN, 19, {0, -1, -1, -1, -1}, "", {-1, -1, -1, -1},
   "FP8 E4M3FN levels, scale = amax/448 (opset 19; always per output channel)"},
  // FLOAT4E2M1 codes stored as uint4 (the same bits) and decoded by Cast -> Gather on the 16-entry
  // E2M1 table -> Mul by the block scales: ONNX Runtime 1.30's CPU provider runs neither
  // DequantizeLinear nor Cast of FLOAT4E2M1 (type 23), and folds this chain when it loads the model.
  {"fp4",     "",  S::kFloat4,  4, true,  DataType::kUint4, 21, kAllBlocks,          "",      {-1, -1, -1, -1},
   "FP4 E2M1 levels, scale = amax/6 per block (NVFP4-style, float16 scales; E2M1 codes as uint4 decoded by a Gather table, opset 21)"},
  // Palettes (k-means clustering): 2^bits centroids per tensor or per group of output channels,
  // levels are indices into the table. Stored as uint8 (8 bits), uint4 (4 bits), bit planes (1-3
  // bits) or uint4 plus bit planes (5-7 bits), expanded by Cast -> Gather on the table, which ONNX
  // Runtime folds when it loads the model. "DQ blocks" are the palette groups.
  {"pal1", "", S::kPalette, 1, true, DataType::kUint8, 13, kPaletteGroups, "", kNoMnb, "1-bit palette (2 centroids)"},
  {"pal2", "", S::kPalette, 2, true, DataType::kUint8, 13, kPaletteGroups, "", kNoMnb, "2-bit palette (4 centroids)"},
  {"pal3", "", S::kPalette, 3, true, DataType::kUint8, 13, kPaletteGroups, "", kNoMnb, "3-bit palette (8 centroids)"},
  {"pal4", "", S::kPalette, 4, true, DataType::kUint4, 21, kPaletteGroups, "", kNoMnb, "4-bit palette (16 centroids, opset 21)"},
  {"pal5", "", S::kPalette, 5, true, DataType::kUint4, 21, kPaletteGroups, "", kNoMnb, "5-bit palette (32 centroids, opset 21)"},
  {"pal6", "", S::kPalette, 6, true, DataType::kUint4, 21, kPaletteGroups, "", kNoMnb, "6-bit palette (64 centroids, opset 21)"},
  {"pal7", "", S::kPalette, 7, true, DataType::kUint4, 21, kPaletteGroups, "", kNoMnb, "7-bit palette (128 centroids, opset 21)"},
  {"pal8", "", S::kPalette, 8, true, DataType::kUint8, 13, kPaletteGroups, "", kNoMnb, "8-bit palette (256 centroids)"},
}};
// clang-format on

}  // namespace

std::span<const ElementType> element_types() { return kElementTypes; }

const ElementType* find_element_type(std::string_view name) {
  for (const auto& t : kElementTypes)
    if (t.name == name) return &t;
  return nullptr;
}

BitsChoice::BitsChoice(std::string_view text) : spelled_(text) {
  if (text.empty()) return;
  if (text == "float") {
    is_float_ = true;
    return;
  }
  for (const auto& t : kElementTypes) {
    if (t.name == text) {
      type_ = &t;
      return;
    }
  }
  for (const auto& t : kElementTypes) {  // a width alias: its signed row; --asymmetric picks the twin
    if (!t.width.empty() && t.width == text && t.is_signed) {
      type_ = &t;
      width_only_ = true;
      return;
    }
  }
  fail(ErrorCode::kConfig, "unknown weight bits '{}' (expected {})", text, bits_values(true));
}

const ElementType* BitsChoice::type(bool symmetric) const {
  if (!type_ || !width_only_ || symmetric) return type_;
  for (const auto& t : kElementTypes)
    if (t.width == type_->width && !t.is_signed) return &t;
  return type_;  // no unsigned twin (8 bits): the signed row
}

std::string bits_values(bool with_float) {
  std::string s;
  for (const auto& t : kElementTypes)
    if (!t.width.empty() && t.is_signed) s += fmt::format("{}{}", s.empty() ? "" : ", ", t.width);
  for (const auto& t : kElementTypes) s += fmt::format(", {}", t.name);
  if (with_float) s += ", float";
  return s;
}

}  // namespace qtool::quant
