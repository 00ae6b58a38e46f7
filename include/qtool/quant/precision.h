// Typed precision: THE table of weight element types, and the parsed form of every --bits value.
//
// One row per element type (ggml's type_traits is the model). Everything that names a weight
// precision derives from these rows: the --bits / --layer-bits / --bits-first-last /
// --bits-depthwise parser (parse_bits), their --help text (bits_help), the derived table of packed
// weight formats (format.h: weight_formats(), one row per element type x block size x layout), the
// ONNX storage type and opset of the emitted DequantizeLinear, and a test that loops over every row.
// Adding an element type is one row here plus its level rule / packer.
//
// A --bits value is parsed once into a BitsChoice: an element type (int4, uint4, ...), a width
// whose signedness follows --asymmetric ("4", "2"), "float" (leave the layer alone) or "" (inherit:
// "same as --bits", for --bits-first-last / --bits-depthwise). Code downstream compares rows and
// kinds, never strings.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "qtool/core/dtype.h"

namespace qtool::quant {

/// How the integer levels of a block relate to the real weights.
enum class WeightScheme {
  kInt,      ///< uniform grid: w ≈ (q - zp) * scale, q in the range of `bits` (signed or unsigned)
  kTernary,  ///< w ≈ α·t, t ∈ {-1, 0, +1}; threshold and α chosen per block to minimize ‖w - α·t‖²
  kBinary,   ///< w ≈ α·sign(w), α = mean|w| of the block (the L2-optimal α for fixed signs)
  kFloat8,   ///< w ≈ decode(code)·scale, code a FLOAT8E4M3FN byte, scale = amax/448 per block (clipped)
  kFloat4,   ///< w ≈ decode(code)·scale, code a FLOAT4E2M1 nibble, scale = amax/6 per block (clipped)
  kPalette,  ///< w ≈ table[index], 2^bits centroids by weighted k-means per tensor or group of output channels
};

/// Float element codes (fp8, fp4): levels are unsigned codes decoded by a table, not an integer ladder.
constexpr bool is_float_scheme(WeightScheme s) { return s == WeightScheme::kFloat8 || s == WeightScheme::kFloat4; }

/// One row of THE table: a weight element type.
struct ElementType {
  std::string_view name;    ///< "int8", "int4", "uint4", "int2", "uint2", "ternary", "binary"
  std::string_view width;   ///< the width alias shared with its (un)signed twin: "8", "4", "2" ("" none)
  WeightScheme scheme;
  int bits;                 ///< stored bits per weight (ternary and binary are stored on 2 bits)
  bool is_signed;           ///< signed levels (zero point 0) or unsigned levels with zero points
  DataType onnx_type;       ///< element type of the DequantizeLinear input
  int64_t opset;            ///< default-domain opset its per-channel DequantizeLinear needs
  /// Block sizes of the DequantizeLinear form, in --help order (0 = per output channel; -1 = unused).
  /// Palettes: the output channels per table (0 = one table per tensor).
  std::array<int16_t, 5> qdq_blocks;
  /// MatMulNBits form: its name prefix ("mnb4", "mnb4z"; "" = none) and block sizes (-1 = unused).
  std::string_view mnb_name;
  std::array<int16_t, 4> mnb_blocks;
  std::string_view help;    ///< one line for --help
};

/// Every element type, in --help order. Stable: tests loop over it.
std::span<const ElementType> element_types();
/// The row named `name` (not a width alias), or nullptr.
const ElementType* find_element_type(std::string_view name);

/// A --bits / --layer-bits / --bits-first-last / --bits-depthwise value, parsed once.
class BitsChoice {
 public:
  /// "" (inherit).
  BitsChoice() = default;
  /// Parses `text` (throws kConfig naming the valid values): an element type name, a width alias
  /// ("8", "4", "2": signedness from --asymmetric), "float", or "" (inherit).
  BitsChoice(std::string_view text);                  // NOLINT(google-explicit-constructor): parsed at the boundary
  BitsChoice(const char* text) : BitsChoice(std::string_view(text)) {}  // NOLINT
  BitsChoice(const std::string& text) : BitsChoice(std::string_view(text)) {}  // NOLINT

  /// "" (inherit the default bits).
  bool inherits() const { return !is_float_ && type_ == nullptr; }
  /// "float": the layer stays float.
  bool is_float() const { return is_float_; }
  /// 8-bit integers ("8", "int8"): at the top level, the static W8A8 path.
  bool is_int8() const { return type_ != nullptr && type_->scheme == WeightScheme::kInt && type_->bits == 8; }
  /// Ternary or binary (stored as int2, no MatMulNBits form).
  bool is_sign_scheme() const {
    return type_ != nullptr && (type_->scheme == WeightScheme::kTernary || type_->scheme == WeightScheme::kBinary);
  }
  /// A palette (k-means table): no scales, no MatMulNBits form.
  bool is_palette() const { return type_ != nullptr && type_->scheme == WeightScheme::kPalette; }
  /// A float element type (fp8, fp4): no zero points, no MatMulNBits form, no distillation tuning.
  bool is_float_kind() const { return type_ != nullptr && is_float_scheme(type_->scheme); }
  /// The element type, for a given --asymmetric: a width alias picks the signed (symmetric) or the
  /// unsigned twin when one exists. nullptr when inherits() or is_float().
  const ElementType* type(bool symmetric) const;
  /// The row as given (a width alias gives its signed row).
  const ElementType* type() const { return type_; }
  /// Whether the signedness was left to --asymmetric ("4", "2", "8").
  bool width_only() const { return width_only_; }
  /// As the user wrote it (for headlines, settings and messages).
  const std::string& spelled() const { return spelled_; }

  friend bool operator==(const BitsChoice& a, const BitsChoice& b) {
    return a.type_ == b.type_ && a.width_only_ == b.width_only_ && a.is_float_ == b.is_float_;
  }

 private:
  const ElementType* type_ = nullptr;
  bool width_only_ = false;
  bool is_float_ = false;
  std::string spelled_;
};

/// The accepted values, for --help and messages: "8, 4, 2, int8, int4, uint4, ..., ternary, binary[, float]".
std::string bits_values(bool with_float);

}  // namespace qtool::quant
