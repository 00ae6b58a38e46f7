// The packed weight formats, derived from THE table of element types (precision.h), and their
// packed storage layouts.
//
// weight_formats() has one row per element type x block size x layout, generated from the element
// type rows (nothing else lists formats): it drives the format footer of --help, plan files (a
// layer's format by name) and a test that loops over every format. A format says how the integer
// levels are chosen (scheme, bits, block size, symmetric or with zero points) and how they are
// written (standard ONNX DequantizeLinear or ONNX Runtime's com.microsoft.MatMulNBits).
//
// Conventions used throughout qtool::quant: a weight matrix W is [rows = N output channels,
// cols = K reduction (input) channels], row-major, and it is quantized in blocks of
// `block_size` consecutive elements along K (block_size == 0: one block per row, i.e. per output
// channel). A block whose K range runs past the end (K not a multiple of the block, e.g.
// stories260K's FFN width 172 with blocks of 32) is a short last block: it has its own scale and
// is padded with the zero level wherever a layout needs whole blocks (MatMulNBits).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "qtool/core/dtype.h"
#include "qtool/quant/precision.h"

namespace qtool::quant {

/// How a quantized weight is written into the ONNX graph.
enum class WeightLayout {
  kQdq,          ///< DequantizeLinear(int4/uint4/int2/uint2/int8 weight, scale[, zp]) -> original op
  kMatMulNBits,  ///< com.microsoft.MatMulNBits (MatMul with a 2-D constant weight only)
};

/// One row of the format table.
struct WeightFormat {
  std::string_view name;    ///< "int4", "int4_b32", "mnb4_b32", "ternary_b64", ...
  const ElementType* type;  ///< the element type row it is derived from
  WeightScheme scheme;
  int bits;                 ///< stored bits per weight (ternary and binary are stored on 2 bits)
  bool is_signed;           ///< levels are signed (int*) or unsigned with a zero point (uint*, MatMulNBits)
  bool symmetric;           ///< no zero points stored (signed: zp = 0; MatMulNBits: default zp 2^(bits-1))
  int64_t block_size;       ///< 0 = per output channel; else elements per block along K (palettes:
                            ///< 0 = no scales; else a float16 scale per block of K, the table per tensor)
  WeightLayout layout;
  std::string_view help;    ///< one line for --help
  int64_t group = 0;        ///< palettes: output channels sharing one table (0 = one table per tensor)
  /// ONNX element type of the stored levels (kInt4, kUint4, kInt2, kUint2, kInt8, or kUint8 for
  /// MatMulNBits blobs).
  DataType storage_type() const;
  /// Integer level range [lo, hi] used by the quantizer (before any MatMulNBits offset).
  void level_range(int* lo, int* hi) const;
};

/// Every format qtool can emit, in --help order. Stable: tests loop over it.
std::span<const WeightFormat> weight_formats();
/// The row named `name`, or nullptr.
const WeightFormat* find_weight_format(std::string_view name);
/// The format for a parsed choice (not float, not inherit): block_size 0 = per channel (int8 is
/// always per channel); `symmetric` picks the twin of a width alias; `layout` selects MatMulNBits
/// variants; a palette takes its group (output channels per table, 0 = per tensor) from `palette_group`
/// and its scale blocks (0 = no scales) from `palette_block`, not `block_size`. Throws kConfig naming
/// the valid choices when no row matches.
const WeightFormat& resolve_weight_format(const BitsChoice& bits, int64_t block_size, bool symmetric,
                                          WeightLayout layout, int64_t palette_group = 0, int64_t palette_block = 0);
/// resolve_weight_format(BitsChoice(bits), ...).
const WeightFormat& select_weight_format(std::string_view bits, int64_t block_size, bool symmetric,
                                         WeightLayout layout);
/// The format table as --help text (one line per row: name, bits, block, layout, what it is).
std::string weight_formats_help();

/// Weight bits per element including the scale and zero point storage, for a [N, K] matrix in
/// `format`: (N*K*bits + N*k_blocks*scale_bits + zero point bits) / (N*K). `scale_bits` is 32 for
/// float scales, 16 for the float16 scales (palettes: the table entries) qtool writes by default for DequantizeLinear weights below
/// 8 bits (MatMulNBits scales are always float: its scale type follows the activations).
double format_bits_per_weight(const WeightFormat& format, int64_t rows, int64_t cols, int scale_bits = 32);

// ---- packing (scalar references and fast paths; tests compare them bit for bit) ----

/// ONNX sub-byte packing (int4/uint4: two per byte; int2/uint2: four per byte), first element in
/// the lowest bits; `levels` are already in the type's range. Scalar reference: one packed_set
/// per element.
std::vector<uint8_t> pack_onnx_reference(std::span<const int32_t> levels, int bits);
/// Same result as pack_onnx_reference, a byte at a time (the path qtool uses).
std::vector<uint8_t> pack_onnx(std::span<const int32_t> levels, int bits);
/// Inverse of pack_onnx: n levels, sign-extended when is_signed.
std::vector<int32_t> unpack_onnx(std::span<const uint8_t> packed, int64_t n, int bits, bool is_signed);

/// MatMulNBits B blob: `levels` is [N, K] row-major unsigned codes in [0, 2^bits); result is
/// uint8 [N, k_blocks, block_size*bits/8], codes low-first along K, the last block padded with
/// `pad_code` (the zero point, so padded weights dequantize to exactly 0). Scalar reference.
std::vector<uint8_t> pack_matmulnbits_reference(std::span<const int32_t> levels, int64_t rows, int64_t cols,
                                                int bits, int64_t block_size, int32_t pad_code);
/// Same result as the reference, a row and a byte at a time.
std::vector<uint8_t> pack_matmulnbits(std::span<const int32_t> levels, int64_t rows, int64_t cols, int bits,
                                      int64_t block_size, int32_t pad_code);
/// Inverse of pack_matmulnbits: [N, K] codes (padding dropped).
std::vector<int32_t> unpack_matmulnbits(std::span<const uint8_t> blob, int64_t rows, int64_t cols, int bits,
                                        int64_t block_size);
/// MatMulNBits zero points: `zps` is [N, k_blocks] codes; result is uint8 [N * ceil(k_blocks*bits/8)],
/// each row's codes packed low-first and the row padded to a whole byte. Scalar reference.
std::vector<uint8_t> pack_matmulnbits_zero_points(std::span<const int32_t> zps, int64_t rows, int64_t k_blocks,
                                                  int bits);

}  // namespace qtool::quant
