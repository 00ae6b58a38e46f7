// The packed weight formats, derived from the element types (see format.h, precision.h).
#include <algorithm>
#include <cmath>
#include <deque>
#include <vector>

#include <fmt/format.h>

#include "qtool/core/error.h"
#include "qtool/quant/format.h"

namespace qtool::quant {
namespace {

/// The derived rows, built once from element_types(): for each element type its DequantizeLinear
/// rows (one per block size), then for each its MatMulNBits rows. Names and help texts live in
/// `strings` (stable addresses), so WeightFormat can keep string_views.
struct Table {
  std::deque<std::string> strings;
  std::vector<WeightFormat> rows;

  std::string_view keep(std::string s) { return strings.emplace_back(std::move(s)); }

  Table() {
    for (const ElementType& t : element_types()) {
      const bool pal = t.scheme == WeightScheme::kPalette;
      for (int16_t b : t.qdq_blocks) {
        if (b < 0) continue;
        const std::string name = b > 0 ? fmt::format("{}_{}{}", t.name, pal ? "g" : "b", b) : std::string(t.name);
        const std::string help =
            pal ? (b > 0 ? fmt::format("{}, one table per {} output channel{}", t.help, b, b > 1 ? "s" : "")
                         : fmt::format("{}, one table per tensor", t.help))
            : b > 0 ? fmt::format("{}, blocks of {} along K (DQ block_size)", t.help, b)
                    : fmt::format("{}, per output channel (DQ axis)", t.help);
        rows.push_back({keep(name), &t, t.scheme, t.bits, t.is_signed, t.is_signed, pal ? 0 : b, WeightLayout::kQdq,
                        keep(help), pal ? b : 0});
      }
      if (pal)  // one table per tensor of values scaled per block of K (a learned, non-uniform NF4)
        for (int16_t b : {16, 32, 64, 128})
          rows.push_back({keep(fmt::format("{}_b{}", t.name, b)), &t, t.scheme, t.bits, true, true, b,
                          WeightLayout::kQdq,
                          keep(fmt::format("{}, one table per tensor, a float16 scale per block of {} along K", t.help, b)),
                          0});
    }
    for (const ElementType& t : element_types()) {
      for (int16_t b : t.mnb_blocks) {
        if (b < 0 || t.mnb_name.empty()) continue;
        const std::string help = fmt::format("MatMulNBits bits={}{}, blocks of {}", t.bits,
                                             t.is_signed ? fmt::format(", default zero point {}", 1 << (t.bits - 1))
                                                         : std::string(" with packed zero points"),
                                             b);
        rows.push_back({keep(fmt::format("{}_b{}", t.mnb_name, b)), &t, t.scheme, t.bits, t.is_signed, t.is_signed, b,
                        WeightLayout::kMatMulNBits, keep(help), 0});
      }
    }
  }
};

const Table& table() {
  static const Table t;
  return t;
}

}  // namespace

DataType WeightFormat::storage_type() const {
  return layout == WeightLayout::kMatMulNBits ? DataType::kUint8 : type->onnx_type;
}

void WeightFormat::level_range(int* lo, int* hi) const {
  if (scheme == WeightScheme::kPalette) {  // table indices
    *lo = 0;
    *hi = (1 << bits) - 1;
  } else if (is_float_scheme(scheme)) {  // codes
    *lo = 0;
    *hi = scheme == WeightScheme::kFloat8 ? 255 : 15;
  } else if (scheme != WeightScheme::kInt) {
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

std::span<const WeightFormat> weight_formats() { return table().rows; }

const WeightFormat* find_weight_format(std::string_view name) {
  for (const auto& f : table().rows)
    if (f.name == name) return &f;
  return nullptr;
}

const WeightFormat& resolve_weight_format(const BitsChoice& bits, int64_t block_size, bool symmetric,
                                          WeightLayout layout, int64_t palette_group, int64_t palette_block) {
  QTOOL_CHECK(!bits.is_float() && !bits.inherits(), ErrorCode::kInternal, "no weight format for '{}'",
              bits.spelled());
  const ElementType* t = bits.type(symmetric);
  // A width alias asked to be asymmetric with no unsigned twin (8 bits): MatMulNBits has no such
  // row (an error below); DequantizeLinear int8 is always symmetric.
  const bool unsigned_wanted = bits.width_only() && !symmetric;
  std::string name;
  if (t->scheme == WeightScheme::kPalette) {
    if (layout == WeightLayout::kMatMulNBits)
      fail(ErrorCode::kConfig, "--format matmulnbits has no palette form; {} weights are written as table indices "
                               "(use --format qdq)", t->name);
    QTOOL_CHECK(palette_group == 0 || palette_block == 0, ErrorCode::kConfig,
                "a palette has one table per group of output channels or scales per block of K, not both");
    name = palette_group > 0   ? fmt::format("{}_g{}", t->name, palette_group)
           : palette_block > 0 ? fmt::format("{}_b{}", t->name, palette_block)
                               : std::string(t->name);
  } else if (layout == WeightLayout::kMatMulNBits) {
    if (t->scheme != WeightScheme::kInt || t->mnb_name.empty())
      fail(ErrorCode::kConfig, "--format matmulnbits supports --bits 2, 4 and 8; {} weights are written with "
                               "DequantizeLinear (use --format qdq)", t->name);
    if (block_size <= 0)
      fail(ErrorCode::kConfig, "--format matmulnbits needs a block size (16, 32, 64 or 128), not per channel");
    name = fmt::format("{}{}_b{}", t->mnb_name, unsigned_wanted && t->is_signed ? "z" : "", block_size);
  } else if (t->qdq_blocks[1] < 0) {
    name = t->name;  // int8, fp8: always per output channel (blocks buy nothing at 8 bits)
  } else {
    name = block_size > 0 ? fmt::format("{}_b{}", t->name, block_size) : std::string(t->name);
  }
  const WeightFormat* f = find_weight_format(name);
  if (!f) {
    std::string valid;
    for (const auto& row : table().rows) valid += fmt::format("{}{}", valid.empty() ? "" : ", ", row.name);
    fail(ErrorCode::kConfig, "no weight format '{}' for bits={} block_size={} {} (formats: {})", name, bits.spelled(),
         block_size, t->is_signed && !unsigned_wanted ? "symmetric" : "asymmetric", valid);
  }
  return *f;
}

const WeightFormat& select_weight_format(std::string_view bits, int64_t block_size, bool symmetric,
                                         WeightLayout layout) {
  return resolve_weight_format(BitsChoice(bits), block_size, symmetric, layout);
}

std::string weight_formats_help() {
  std::string s = "Weight formats (--plan files name a layer's format; name: bits, block, layout - description):\n";
  for (const auto& f : table().rows) {
    const bool pal = f.scheme == WeightScheme::kPalette;
    s += fmt::format("  {:<13} {} bit  {:<9} {:<12} {}\n", f.name, f.bits,
                     pal ? (f.group > 0        ? fmt::format("group {}", f.group)
                            : f.block_size > 0 ? fmt::format("block {}", f.block_size)
                                               : "tensor")
                     : f.block_size > 0 ? fmt::format("block {}", f.block_size) : "channel",
                     pal ? "Gather" : f.layout == WeightLayout::kQdq ? "DQ" : "MatMulNBits", f.help);
  }
  return s;
}

double format_bits_per_weight(const WeightFormat& format, int64_t rows, int64_t cols, int scale_bits) {
  QTOOL_CHECK(rows > 0 && cols > 0, ErrorCode::kInternal, "bits per weight of an empty matrix");
  if (format.scheme == WeightScheme::kPalette) {  // indices + one table of 2^bits entries per group (+ scales)
    const int64_t groups = format.group > 0 ? (rows + format.group - 1) / format.group : 1;
    const int64_t kb = format.block_size > 0 ? (cols + format.block_size - 1) / format.block_size : 0;
    const double bits = static_cast<double>((rows * cols * format.bits + 7) / 8 * 8) +
                        static_cast<double>(groups * (int64_t{1} << format.bits) * scale_bits) +
                        static_cast<double>(rows * kb * scale_bits);
    return bits / static_cast<double>(rows * cols);
  }
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
