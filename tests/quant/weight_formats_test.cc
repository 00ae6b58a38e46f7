// Format table, packing (bit for bit against the scalar references) and bits per weight.
#include <gtest/gtest.h>

#include <cmath>

#include <random>
#include <set>

#include "qtool/core/error.h"
#include "qtool/quant/format.h"
#include "qtool/quant/weight_quant.h"

namespace qtool::quant {
namespace {

std::vector<int32_t> random_levels(int64_t n, int lo, int hi, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> d(lo, hi);
  std::vector<int32_t> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

TEST(WeightFormats, TableIsConsistentAndNamesUnique) {
  std::set<std::string_view> names;
  for (const auto& f : weight_formats()) {
    EXPECT_TRUE(names.insert(f.name).second) << f.name;
    if (f.scheme == WeightScheme::kPalette) EXPECT_TRUE(f.bits >= 1 && f.bits <= 8) << f.name;
    else EXPECT_TRUE(f.bits == 2 || f.bits == 4 || f.bits == 8) << f.name;
    if (f.layout == WeightLayout::kMatMulNBits) {
      EXPECT_GE(f.block_size, 16) << f.name;
      EXPECT_EQ(f.block_size & (f.block_size - 1), 0) << f.name;
    }
    if (f.scheme == WeightScheme::kTernary || f.scheme == WeightScheme::kBinary) {
      EXPECT_EQ(f.bits, 2) << f.name;
    }
    EXPECT_EQ(find_weight_format(f.name), &f);
    EXPECT_NE(weight_formats_help().find(std::string(f.name)), std::string::npos);
  }
  EXPECT_EQ(find_weight_format("int3"), nullptr);
}

// THE table (precision.h): every element type row parses from its name, derives exactly the format
// rows its block lists name (and no others), and each derived row points back to it.
TEST(ElementTypes, EveryRowParsesAndDerivesItsFormats) {
  size_t derived = 0;
  for (const ElementType& t : element_types()) {
    const BitsChoice c{std::string(t.name)};
    EXPECT_EQ(c.type(), &t) << t.name;
    EXPECT_FALSE(c.width_only()) << t.name;
    EXPECT_EQ(find_element_type(t.name), &t);
    EXPECT_EQ(c.is_int8(), t.scheme == WeightScheme::kInt && t.bits == 8) << t.name;
    EXPECT_EQ(c.is_sign_scheme(), t.scheme == WeightScheme::kTernary || t.scheme == WeightScheme::kBinary) << t.name;
    EXPECT_EQ(c.is_float_kind(), is_float_scheme(t.scheme)) << t.name;
    for (int16_t b : t.qdq_blocks) {
      if (b < 0) continue;
      const bool pal = t.scheme == WeightScheme::kPalette;  // its "blocks" are palette groups
      const WeightFormat& f = resolve_weight_format(c, pal ? 0 : b, t.is_signed, WeightLayout::kQdq, pal ? b : 0);
      EXPECT_EQ(f.type, &t) << f.name;
      EXPECT_EQ(f.storage_type(), t.onnx_type) << f.name;
      EXPECT_EQ(f.block_size, t.bits == 8 || pal ? 0 : b) << f.name;
      EXPECT_EQ(f.group, pal ? b : 0) << f.name;
      EXPECT_EQ(c.is_palette(), pal) << f.name;
      ++derived;
    }
    if (t.scheme == WeightScheme::kPalette)  // one table of values scaled per block of K
      for (int64_t b : {16, 32, 64, 128}) {
        const WeightFormat& f = resolve_weight_format(c, 0, true, WeightLayout::kQdq, 0, b);
        EXPECT_EQ(f.block_size, b) << f.name;
        EXPECT_EQ(f.group, 0) << f.name;
        ++derived;
      }
    for (int16_t b : t.mnb_blocks) {
      if (b < 0) continue;
      const WeightFormat& f = resolve_weight_format(c, b, t.is_signed, WeightLayout::kMatMulNBits);
      EXPECT_EQ(f.type, &t) << f.name;
      EXPECT_EQ(f.storage_type(), DataType::kUint8) << f.name;
      EXPECT_EQ(f.symmetric, t.is_signed) << f.name;
      ++derived;
    }
    if (!t.width.empty()) {  // the width alias: signed twin when symmetric, unsigned twin otherwise
      const BitsChoice w{std::string(t.width)};
      EXPECT_TRUE(w.width_only());
      EXPECT_EQ(w.type(true)->is_signed, true) << t.width;
      EXPECT_EQ(w.type(false)->width, t.width);
    }
    EXPECT_NE(bits_values(false).find(std::string(t.name)), std::string::npos);
  }
  EXPECT_EQ(derived, weight_formats().size());  // nothing but the rows derives formats
  EXPECT_TRUE(BitsChoice("float").is_float());
  EXPECT_TRUE(BitsChoice("").inherits());
  EXPECT_THROW(BitsChoice("3"), Error);
  EXPECT_THROW(BitsChoice("int3"), Error);
}

TEST(WeightFormats, SelectMapsCliChoices) {
  EXPECT_EQ(select_weight_format("4", 32, true, WeightLayout::kQdq).name, "int4_b32");
  EXPECT_EQ(select_weight_format("4", 32, false, WeightLayout::kQdq).name, "uint4_b32");
  EXPECT_EQ(select_weight_format("4", 0, true, WeightLayout::kQdq).name, "int4");
  EXPECT_EQ(select_weight_format("2", 64, false, WeightLayout::kQdq).name, "uint2_b64");
  EXPECT_EQ(select_weight_format("ternary", 0, true, WeightLayout::kQdq).name, "ternary");
  EXPECT_EQ(select_weight_format("8", 32, true, WeightLayout::kQdq).name, "int8");
  EXPECT_EQ(select_weight_format("4", 32, true, WeightLayout::kMatMulNBits).name, "mnb4_b32");
  EXPECT_EQ(select_weight_format("4", 128, false, WeightLayout::kMatMulNBits).name, "mnb4z_b128");
  EXPECT_THROW(select_weight_format("3", 32, true, WeightLayout::kQdq), Error);
  EXPECT_THROW(select_weight_format("4", 0, true, WeightLayout::kMatMulNBits), Error);
  EXPECT_THROW(select_weight_format("4", 48, true, WeightLayout::kQdq), Error);
  // Palettes take their group, not the block size.
  EXPECT_EQ(select_weight_format("pal4", 32, true, WeightLayout::kQdq).name, "pal4");
  EXPECT_EQ(resolve_weight_format(BitsChoice("pal6"), 32, true, WeightLayout::kQdq, 8).name, "pal6_g8");
  EXPECT_THROW(resolve_weight_format(BitsChoice("pal4"), 32, true, WeightLayout::kQdq, 3), Error);
  EXPECT_THROW(select_weight_format("pal4", 32, true, WeightLayout::kMatMulNBits), Error);
  // Indices plus one float16 table of 16 entries per group of 8 rows: 4 + 8·16·16 / (64·256) bits per weight.
  EXPECT_DOUBLE_EQ(format_bits_per_weight(*find_weight_format("pal4_g8"), 64, 256, 16), 4.0 + 0.125);
}

// Every format: pack its levels (odd sizes included) with the fast path and the scalar reference,
// compare bit for bit, and unpack back to the same levels.
TEST(WeightFormats, EveryFormatPacksBitExactAgainstReference) {
  uint32_t seed = 1;
  for (const auto& f : weight_formats()) {
    int lo, hi;
    f.level_range(&lo, &hi);
    for (int64_t cols : {int64_t{172}, int64_t{64}, int64_t{7}}) {
      const int64_t rows = 3;
      if (f.scheme == WeightScheme::kPalette) {
        // Indices are stored by the compact forms (tested bit for bit through the executor in
        // tests/quant/lowbit_rewrite_test.cc); the level range is the table size.
        EXPECT_EQ(lo, 0);
        EXPECT_EQ(hi, (1 << f.bits) - 1);
      } else if (f.layout == WeightLayout::kQdq) {
        const auto lv = random_levels(rows * cols, lo, hi, seed++);
        const auto ref = pack_onnx_reference(lv, f.bits);
        const auto fast = pack_onnx(lv, f.bits);
        ASSERT_EQ(ref, fast) << f.name << " cols " << cols;
        EXPECT_EQ(static_cast<int64_t>(ref.size()), (rows * cols * f.bits + 7) / 8);
        // FP8 / FP4 levels are unsigned codes; the integer formats sign-extend when signed.
        const bool sign_extend = f.is_signed && !is_float_scheme(f.scheme);
        EXPECT_EQ(unpack_onnx(fast, rows * cols, f.bits, sign_extend), lv) << f.name;
      } else {
        // MatMulNBits codes are unsigned: the symmetric levels shifted by 2^(bits-1).
        const int off = f.is_signed ? (1 << (f.bits - 1)) : 0;
        auto lv = random_levels(rows * cols, lo + off, hi + off, seed++);
        const auto ref = pack_matmulnbits_reference(lv, rows, cols, f.bits, f.block_size, off);
        const auto fast = pack_matmulnbits(lv, rows, cols, f.bits, f.block_size, off);
        ASSERT_EQ(ref, fast) << f.name << " cols " << cols;
        const int64_t kb = (cols + f.block_size - 1) / f.block_size;
        EXPECT_EQ(static_cast<int64_t>(fast.size()), rows * kb * f.block_size * f.bits / 8);
        EXPECT_EQ(unpack_matmulnbits(fast, rows, cols, f.bits, f.block_size), lv) << f.name;
      }
    }
  }
}

TEST(WeightFormats, OnnxPackingPutsFirstElementInLowBits) {
  EXPECT_EQ(pack_onnx(std::vector<int32_t>{1, -2}, 4), (std::vector<uint8_t>{0xE1}));
  EXPECT_EQ(pack_onnx(std::vector<int32_t>{1, 2, 3}, 4), (std::vector<uint8_t>{0x21, 0x03}));
  EXPECT_EQ(pack_onnx(std::vector<int32_t>{1, -1, 0, -2, 1}, 2), (std::vector<uint8_t>{0x8D, 0x01}));
}

TEST(WeightFormats, MatMulNBitsLayoutMatchesOrtDocs) {
  // N=2, K=20, block 16, 4 bits: B is [2, 2 blocks, 8 bytes]; row 1's second block holds codes 4..7
  // for k=16..19 and the pad code for k=20..31.
  std::vector<int32_t> lv(2 * 20);
  for (int k = 0; k < 20; ++k) {
    lv[k] = k % 16;
    lv[20 + k] = (k + 1) % 16;
  }
  const auto b = pack_matmulnbits(lv, 2, 20, 4, 16, 8);
  ASSERT_EQ(b.size(), 2u * 2 * 8);
  EXPECT_EQ(b[0], 0x10);        // k=0 low nibble 0, k=1 high nibble 1
  EXPECT_EQ(b[8], 0x10);        // block 1 of row 0: k=16 -> 0, k=17 -> 1
  EXPECT_EQ(b[16 + 8 + 1], 0x43);  // row 1, block 1, byte 1: k=18 -> 3, k=19 -> 4
  EXPECT_EQ(b[16 + 8 + 2], 0x88);  // padding with the zero point 8
  const auto zp = pack_matmulnbits_zero_points(std::vector<int32_t>{1, 2, 3, 4, 5, 6}, 2, 3, 4);
  EXPECT_EQ(zp, (std::vector<uint8_t>{0x21, 0x03, 0x54, 0x06}));  // each row padded to whole bytes
}

TEST(WeightFormats, BitsPerWeightWithinBars) {
  // 4-bit blocks of 32 on K = 64..4096: 4 + 32/32 = 5.0 bits (fp32 scales); ternary block 64: 2.5.
  for (int64_t k : {64, 256, 4096}) {
    EXPECT_LE(format_bits_per_weight(*find_weight_format("int4_b32"), 64, k), 5.0 + 1e-12);
    EXPECT_LE(format_bits_per_weight(*find_weight_format("mnb4_b32"), 64, k), 5.0 + 1e-12);
    EXPECT_LE(format_bits_per_weight(*find_weight_format("ternary_b64"), 64, k), 2.6);
    EXPECT_LE(format_bits_per_weight(*find_weight_format("ternary"), 64, k), 2.6);
  }
  EXPECT_NEAR(format_bits_per_weight(*find_weight_format("int4_b32"), 64, 256), 5.0, 1e-12);
  EXPECT_NEAR(format_bits_per_weight(*find_weight_format("uint4_b32"), 64, 256), 5.125, 1e-12);
  // K = 172 with blocks of 32: 6 blocks, the last one short.
  EXPECT_NEAR(format_bits_per_weight(*find_weight_format("int4_b32"), 64, 172), 4.0 + 6 * 32.0 / 172, 1e-9);
}

TEST(WeightFormats, Float16ScalesMeetTheBitsBars) {
  // float16 scales (qtool's default for DequantizeLinear below 8 bits): 4 + 16/32 = 4.5 at block 32,
  // and K = 172 (6 blocks, the last short) stays under 5.0 too; ternary block 32: 2 + 16/32 = 2.5.
  EXPECT_NEAR(format_bits_per_weight(*find_weight_format("int4_b32"), 64, 256, 16), 4.5, 1e-12);
  EXPECT_NEAR(format_bits_per_weight(*find_weight_format("int4_b32"), 64, 172, 16), 4.0 + 6 * 16.0 / 172, 1e-9);
  EXPECT_LE(format_bits_per_weight(*find_weight_format("int4_b32"), 64, 172, 16), 5.0);
  EXPECT_GT(format_bits_per_weight(*find_weight_format("int4_b32"), 64, 172, 32), 5.0);  // why float16 is needed
  EXPECT_NEAR(format_bits_per_weight(*find_weight_format("uint4_b32"), 64, 172, 16),
              4.0 + 6 * 16.0 / 172 + 6 * 4.0 / 172, 1e-9);
  for (int64_t k : {64, 172, 256}) {
    EXPECT_LE(format_bits_per_weight(*find_weight_format("ternary_b32"), 64, k, 16), 2.6);
    EXPECT_LE(format_bits_per_weight(*find_weight_format("int2_b32"), 64, k, 16), 2.6);
  }
  EXPECT_NEAR(format_bits_per_weight(*find_weight_format("ternary_b32"), 64, 256, 16), 2.5, 1e-12);
}

}  // namespace

// FP8 E4M3FN (the fp8 row): every finite code decodes and re-encodes to itself; nearest rounding with
// ties to the even code, saturation at ±448, NaN; a block grid's levels are the nearest codes of w/s.
TEST(Float8, EveryCodeRoundTripsAndRoundingIsNearestEven) {
  for (int c = 0; c < 256; ++c) {
    const float v = float8e4m3fn_to_float(static_cast<uint8_t>(c));
    if ((c & 0x7F) == 0x7F) {
      EXPECT_TRUE(std::isnan(v)) << c;
      continue;
    }
    EXPECT_EQ(float_to_float8e4m3fn(v), c) << c << " = " << v;
  }
  EXPECT_EQ(float8e4m3fn_to_float(0x38), 1.0f);      // 0.0111.000: 2^(7-7)
  EXPECT_EQ(float8e4m3fn_to_float(0x7E), 448.0f);    // the largest finite value
  EXPECT_EQ(float8e4m3fn_to_float(0x01), 0.001953125f);  // smallest subnormal 2^-9
  EXPECT_EQ(float_to_float8e4m3fn(1.0625f), 0x38);   // halfway 1.0 .. 1.125: ties to the even code
  EXPECT_EQ(float_to_float8e4m3fn(1.1875f), 0x3A);   // halfway 1.125 .. 1.25: the even code 0x3A
  EXPECT_EQ(float_to_float8e4m3fn(1.07f), 0x39);
  EXPECT_EQ(float_to_float8e4m3fn(1e6f), 0x7E);      // saturates
  EXPECT_EQ(float_to_float8e4m3fn(-1e6f), 0xFE);
  EXPECT_EQ(float_to_float8e4m3fn(std::nanf("")), 0x7F);
  const WeightFormat& f = *find_weight_format("fp8");
  EXPECT_EQ(f.storage_type(), DataType::kFloat8E4M3FN);
  EXPECT_EQ(f.block_size, 0);
  EXPECT_EQ(resolve_weight_format(BitsChoice("fp8"), 32, true, WeightLayout::kQdq).name, "fp8");  // per channel
  EXPECT_THROW(resolve_weight_format(BitsChoice("fp8"), 32, true, WeightLayout::kMatMulNBits), Error);
  const std::vector<float> w = {0.5f, -2.0f, 3.3f, 448.0f * 0.01f, 0.0f};
  const QuantSpec spec = QuantSpec::from_format(f);
  const BlockGrid g = find_block_grid(w, spec);
  EXPECT_TRUE(g.float8);
  for (float x : w) {
    const int32_t code = g.quantize(x);
    EXPECT_EQ(code, float_to_float8e4m3fn(x / g.scale));
    EXPECT_NEAR(g.dequantize(code), x, std::fabs(x) / 16 + 1e-6);  // 3 mantissa bits: within 2^-4 relative
  }
}

// FP4 E2M1 (the fp4 row): the 16 codes decode to ±{0, 0.5, 1, 1.5, 2, 3, 4, 6} and re-encode to
// themselves (but -0 -> code 8); halfway values go to the even code; saturation at ±6; a block
// grid's scale maps amax to 6 (or less, by the clipping search) and its levels are the nearest codes.
TEST(Float4, EveryCodeRoundTripsAndRoundingIsNearestEven) {
  const float expected[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  for (int c = 0; c < 16; ++c) {
    const float v = float4e2m1_to_float(static_cast<uint8_t>(c));
    EXPECT_EQ(std::fabs(v), expected[c & 7]) << c;
    EXPECT_EQ(std::signbit(v), c >= 8) << c;
    EXPECT_EQ(float_to_float4e2m1(v), c) << c << " = " << v;
  }
  EXPECT_EQ(float_to_float4e2m1(0.25f), 0);   // halfway 0 .. 0.5: the even code 0
  EXPECT_EQ(float_to_float4e2m1(0.75f), 2);   // halfway 0.5 .. 1: code 2 (1.0, even)
  EXPECT_EQ(float_to_float4e2m1(1.25f), 2);   // halfway 1 .. 1.5: code 2
  EXPECT_EQ(float_to_float4e2m1(1.75f), 4);   // halfway 1.5 .. 2: code 4 (2.0)
  EXPECT_EQ(float_to_float4e2m1(2.5f), 4);    // halfway 2 .. 3: code 4
  EXPECT_EQ(float_to_float4e2m1(3.5f), 6);    // halfway 3 .. 4: code 6 (4.0)
  EXPECT_EQ(float_to_float4e2m1(5.0f), 6);    // halfway 4 .. 6: code 6
  EXPECT_EQ(float_to_float4e2m1(5.1f), 7);
  EXPECT_EQ(float_to_float4e2m1(2.6f), 5);
  EXPECT_EQ(float_to_float4e2m1(100.0f), 7);  // saturates
  EXPECT_EQ(float_to_float4e2m1(-100.0f), 15);
  EXPECT_EQ(float_to_float4e2m1(-0.7f), 9);   // -0.5 is 0.2 away, -1 is 0.3 away: -0.5 = code 8|1
  const WeightFormat& f = *find_weight_format("fp4_b32");
  EXPECT_EQ(f.storage_type(), DataType::kUint4);  // E2M1 bit patterns stored as uint4 codes
  EXPECT_EQ(f.block_size, 32);
  EXPECT_EQ(resolve_weight_format(BitsChoice("fp4"), 16, true, WeightLayout::kQdq).name, "fp4_b16");
  EXPECT_THROW(resolve_weight_format(BitsChoice("fp4"), 32, true, WeightLayout::kMatMulNBits), Error);
  int lo = -1, hi = -1;
  f.level_range(&lo, &hi);
  EXPECT_EQ(lo, 0);
  EXPECT_EQ(hi, 15);
  QuantSpec spec = QuantSpec::from_format(f);
  spec.clip_steps = 0;  // scale = amax / 6 exactly
  const std::vector<float> w = {0.3f, -1.2f, 3.0f, 0.0f, -0.05f};
  const BlockGrid g = find_block_grid(w, spec);
  EXPECT_TRUE(g.float4);
  EXPECT_FLOAT_EQ(g.scale, 0.5f);
  EXPECT_EQ(g.quantize(3.0f), 7);               // 3.0 / 0.5 = 6
  EXPECT_EQ(g.quantize(0.3f), 1);               // 0.6 -> 0.5
  EXPECT_EQ(g.quantize(-1.2f), 8 | 4);          // -2.4 -> -2
  EXPECT_EQ(g.quantize(-0.05f), 8);             // -0.1 -> -0
  EXPECT_FLOAT_EQ(g.dequantize(g.quantize(-1.2f)), -1.0f);
  spec.clip_steps = 20;  // the clipping search never does worse than amax / 6
  const BlockGrid best = find_block_grid(w, spec);
  double e0 = 0, e1 = 0;
  for (float x : w) {
    e0 += std::pow(x - g.dequantize(g.quantize(x)), 2);
    e1 += std::pow(x - best.dequantize(best.quantize(x)), 2);
  }
  EXPECT_LE(e1, e0);
}

}  // namespace qtool::quant
