// Quantized kernels against hand-computed values (ONNX operator doc examples where they exist).
#include <gtest/gtest.h>

#include <limits>

#include <cmath>

#include <algorithm>

#include <fmt/format.h>

#include "nn_test_util.h"

namespace qtool::testing {
namespace {

std::vector<int32_t> iv(const Tensor& t) {
  std::vector<int32_t> v;
  for (int64_t i = 0; i < t.numel(); ++i) v.push_back(static_cast<int32_t>(t.get_as_double(i)));
  return v;
}

TEST(QuantizeLinearKernel, RoundHalfToEvenAndSaturate) {
  Tensor x = ft({6}, {2.5f, 3.5f, -2.5f, 300.0f, -300.0f, 0.4f});
  auto y = run_node({.op = "QuantizeLinear", .inputs = {x, Tensor::scalar<float>(1.0f), Tensor::scalar<int8_t>(0)}, .opset = 13});
  EXPECT_EQ(y[0].dtype(), DataType::kInt8);
  EXPECT_EQ(iv(y[0]), (std::vector<int32_t>{2, 4, -2, 127, -128, 0}));
  // Default output is uint8 (zero point omitted).
  auto u = run_node({.op = "QuantizeLinear", .inputs = {ft({3}, {-1, 1, 2}), Tensor::scalar<float>(0.5f)}, .opset = 13});
  EXPECT_EQ(u[0].dtype(), DataType::kUint8);
  EXPECT_EQ(iv(u[0]), (std::vector<int32_t>{0, 2, 4}));
}

TEST(QuantizeLinearKernel, VectorRunsMatchScalarRoundingForEveryType) {
  // The AVX2 runs (8 lanes and a tail, per tensor and per axis with 19 values per channel) against
  // the scalar definition: nearbyint(x / scale) + zp, NaN -> 0, saturated; then DequantizeLinear
  // back: (q - zp) * scale. Values sit on .5 boundaries, beyond the range and at NaN.
  std::vector<float> xv;
  for (int i = 0; i < 2 * 3 * 19; ++i) xv.push_back(0.25f * static_cast<float>(i - 60) + (i % 7 == 0 ? 0.125f : 0.0f));
  xv[5] = std::numeric_limits<float>::quiet_NaN();
  xv[6] = 1e9f;
  xv[7] = -1e9f;
  const Tensor x = ft({2, 3, 19}, xv);
  const std::vector<float> scales = {0.5f, 0.25f, 2.0f};
  auto check = [&](auto zp_value, int per_axis) {
    using T = decltype(zp_value);
    const float lo = static_cast<float>(std::numeric_limits<T>::min()), hi = static_cast<float>(std::numeric_limits<T>::max());
    Tensor scale = per_axis ? ft({3}, scales) : Tensor::scalar<float>(0.5f);
    Tensor zp = per_axis ? Tensor::from_vector<T>({3}, {zp_value, T(0), zp_value}) : Tensor::scalar<T>(zp_value);
    auto q = run_node({.op = "QuantizeLinear", .inputs = {x, scale, zp}, .attrs = {ai("axis", 1)}, .opset = 21});
    auto d = run_node({.op = "DequantizeLinear", .inputs = {q[0], scale, zp}, .attrs = {ai("axis", 1)}, .opset = 21});
    for (int64_t i = 0; i < x.numel(); ++i) {
      const int64_t c = (i / 19) % 3;
      const float s = per_axis ? scales[c] : 0.5f;
      const int32_t z = per_axis ? (c == 1 ? 0 : zp_value) : zp_value;
      const float r = std::nearbyint(xv[i] / s) + static_cast<float>(z);
      const int32_t want = std::isnan(r) ? 0 : static_cast<int32_t>(std::clamp(r, lo, hi));
      ASSERT_EQ(static_cast<int32_t>(q[0].get_as_double(i)), want) << i << " " << dtype_name(q[0].dtype()) << " axis " << per_axis;
      ASSERT_EQ(d[0].data<float>()[i], static_cast<float>(want - z) * s) << i;
    }
  };
  for (int per_axis : {0, 1}) {
    check(uint8_t{128}, per_axis);
    check(int8_t{-3}, per_axis);
    check(uint16_t{30000}, per_axis);
    check(int16_t{7}, per_axis);
  }
}

TEST(QuantizeLinearKernel, PerAxisAndBlockedAndInt4Packing) {
  Tensor x = ft({2, 4}, {1, 2, 3, 4, 10, 20, 30, 40});
  auto pa = run_node({.op = "QuantizeLinear", .inputs = {x, ft({2}, {1, 10}), Tensor::from_vector<int8_t>({2}, {0, 1})},
                      .attrs = {ai("axis", 0)}, .opset = 13});
  EXPECT_EQ(iv(pa[0]), (std::vector<int32_t>{1, 2, 3, 4, 2, 3, 4, 5}));
  // Blocked along axis 1 with block 2: scales [2, 2].
  auto bl = run_node({.op = "QuantizeLinear", .inputs = {x, ft({2, 2}, {1, 2, 10, 20})},
                      .attrs = {ai("axis", 1), ai("block_size", 2), ai("output_dtype", static_cast<int64_t>(DataType::kInt8))},
                      .opset = 21});
  EXPECT_EQ(bl[0].dtype(), DataType::kInt8);
  EXPECT_EQ(iv(bl[0]), (std::vector<int32_t>{1, 2, 2, 2, 1, 2, 2, 2}));
  // int4: saturates to [-8, 7] and packs two per byte, first element in the low nibble.
  Tensor zp4(DataType::kInt4, {});
  auto q4 = run_node({.op = "QuantizeLinear", .inputs = {ft({3}, {-9, 7, 3}), Tensor::scalar<float>(1.0f), zp4}, .opset = 21});
  EXPECT_EQ(q4[0].dtype(), DataType::kInt4);
  EXPECT_EQ(iv(q4[0]), (std::vector<int32_t>{-8, 7, 3}));
  EXPECT_EQ(q4[0].raw()[0], 0x78);
  EXPECT_EQ(q4[0].raw()[1], 0x03);
  Tensor zp2(DataType::kUint2, {});
  auto q2 = run_node({.op = "QuantizeLinear", .inputs = {ft({5}, {0, 1, 2, 3, 9}), Tensor::scalar<float>(1.0f), zp2}, .opset = 21});
  EXPECT_EQ(iv(q2[0]), (std::vector<int32_t>{0, 1, 2, 3, 3}));
  EXPECT_EQ(q2[0].raw()[0], 0xE4);
}

TEST(DequantizeLinearKernel, PerTensorPerAxisBlockedInt32AndPacked) {
  auto d = run_node({.op = "DequantizeLinear", .inputs = {Tensor::from_vector<uint8_t>({3}, {0, 128, 255}),
                                                          Tensor::scalar<float>(2.0f), Tensor::scalar<uint8_t>(128)},
                     .opset = 13});
  EXPECT_VALUES_NEAR(d[0], (std::vector<float>{-256, 0, 254}), 0);
  auto pa = run_node({.op = "DequantizeLinear", .inputs = {Tensor::from_vector<int8_t>({2, 2}, {1, 2, 3, 4}), ft({2}, {1, 0.5f})},
                      .attrs = {ai("axis", 1)}, .opset = 13});
  EXPECT_VALUES_NEAR(pa[0], (std::vector<float>{1, 1, 3, 2}), 0);
  auto bl = run_node({.op = "DequantizeLinear",
                      .inputs = {Tensor::from_vector<int16_t>({1, 3}, {100, 200, 300}), ft({1, 2}, {0.5f, 2.0f})},
                      .attrs = {ai("axis", 1), ai("block_size", 2)}, .opset = 21});
  EXPECT_VALUES_NEAR(bl[0], (std::vector<float>{50, 100, 600}), 0);
  auto i32 = run_node({.op = "DequantizeLinear", .inputs = {Tensor::from_vector<int32_t>({2}, {-1000, 7}), Tensor::scalar<float>(0.25f)},
                       .opset = 13});
  EXPECT_VALUES_NEAR(i32[0], (std::vector<float>{-250, 1.75f}), 0);
  Tensor q4(DataType::kInt4, {3});
  packed_set(q4.mutable_raw(), 0, 4, -8);
  packed_set(q4.mutable_raw(), 1, 4, 7);
  packed_set(q4.mutable_raw(), 2, 4, -1);
  Tensor z4(DataType::kInt4, {});
  packed_set(z4.mutable_raw(), 0, 4, -1);
  auto d4 = run_node({.op = "DequantizeLinear", .inputs = {q4, Tensor::scalar<float>(0.5f), z4}, .opset = 21});
  EXPECT_VALUES_NEAR(d4[0], (std::vector<float>{-3.5f, 4, 0}), 0);
}

TEST(DynamicQuantizeLinearKernel, OnnxDocExample) {
  auto y = run_node({.op = "DynamicQuantizeLinear", .inputs = {ft({6}, {0, 2, -3, -2.5f, 1.34f, 0.5f})}, .outputs = 3, .opset = 11});
  EXPECT_EQ(iv(y[0]), (std::vector<int32_t>{153, 255, 0, 26, 221, 179}));
  EXPECT_NEAR(fv(y[1])[0], 5.0f / 255.0f, 1e-7);
  EXPECT_EQ(iv(y[2]), (std::vector<int32_t>{153}));
}

TEST(MatMulIntegerKernel, OnnxDocExample) {
  Tensor a = Tensor::from_vector<uint8_t>({4, 3}, {11, 7, 3, 10, 6, 2, 9, 5, 1, 8, 4, 0});
  Tensor b = Tensor::from_vector<uint8_t>({3, 2}, {1, 4, 2, 5, 3, 6});
  auto y = run_node({.op = "MatMulInteger", .inputs = {a, b, Tensor::scalar<uint8_t>(12), Tensor::scalar<uint8_t>(0)}, .opset = 10});
  EXPECT_EQ(y[0].dtype(), DataType::kInt32);
  EXPECT_EQ(iv(y[0]), (std::vector<int32_t>{-38, -83, -44, -98, -50, -113, -56, -128}));
}

TEST(QLinearMatMulKernel, OnnxDocExample) {
  Tensor a = Tensor::from_vector<uint8_t>({2, 4}, {208, 236, 0, 238, 3, 214, 255, 29});
  Tensor b = Tensor::from_vector<uint8_t>({4, 3}, {152, 51, 244, 60, 26, 255, 0, 127, 246, 127, 254, 247});
  auto y = run_node({.op = "QLinearMatMul",
                     .inputs = {a, Tensor::scalar<float>(0.0066f), Tensor::scalar<uint8_t>(113), b,
                                Tensor::scalar<float>(0.00705f), Tensor::scalar<uint8_t>(114),
                                Tensor::scalar<float>(0.0107f), Tensor::scalar<uint8_t>(118)},
                     .opset = 10});
  EXPECT_EQ(iv(y[0]), (std::vector<int32_t>{168, 115, 255, 1, 66, 151}));
}

TEST(ConvIntegerKernel, ZeroPointAndPadding) {
  // x - 1 = [[1,2],[3,4]] padded by 1 (zero after the zero point), 2x2 ones kernel -> 3x3 box sums.
  Tensor x = Tensor::from_vector<uint8_t>({1, 1, 2, 2}, {2, 3, 4, 5});
  Tensor w = Tensor::from_vector<uint8_t>({1, 1, 2, 2}, {1, 1, 1, 1});
  auto y = run_node({.op = "ConvInteger", .inputs = {x, w, Tensor::scalar<uint8_t>(1)}, .attrs = {ais("pads", {1, 1, 1, 1})},
                     .opset = 10});
  EXPECT_EQ(y[0].dtype(), DataType::kInt32);
  EXPECT_EQ(iv(y[0]), (std::vector<int32_t>{1, 3, 2, 4, 10, 6, 3, 7, 4}));
}

TEST(QLinearConvKernel, PerChannelScalesAndBias) {
  // x = [1,2,3,4] (scale 1, zp 0), two 1x1 filters with weights 1 and 2 (scales 0.5 and 1, zp 0),
  // bias [2, 0]; y_scale 1, y_zp 10 -> ch0: 0.5*(x + 2) + 10, ch1: 2x + 10.
  Tensor x = Tensor::from_vector<uint8_t>({1, 1, 2, 2}, {1, 2, 3, 4});
  Tensor w = Tensor::from_vector<int8_t>({2, 1, 1, 1}, {1, 2});
  auto y = run_node({.op = "QLinearConv",
                     .inputs = {x, Tensor::scalar<float>(1.0f), Tensor::scalar<uint8_t>(0), w, ft({2}, {0.5f, 1.0f}),
                                Tensor::from_vector<int8_t>({2}, {0, 0}), Tensor::scalar<float>(1.0f),
                                Tensor::scalar<uint8_t>(10), Tensor::from_vector<int32_t>({2}, {2, 0})},
                     .opset = 10});
  // ch0: 0.5*3=1.5->2, 0.5*4=2, 0.5*5=2.5->2, 0.5*6=3 (+10)
  EXPECT_EQ(iv(y[0]), (std::vector<int32_t>{12, 12, 12, 13, 12, 14, 16, 18}));
}

TEST(MatMulNBitsKernel, FourBitDefaultAndPackedZeroPoints) {
  // K = 4 (one block of 16 with zero padding), N = 2. Codes for row 0: 0..3, row 1: 15,14,13,12.
  const int64_t k = 4, n = 2, block = 16;
  Tensor b(DataType::kUint8, {n, 1, 8});
  uint8_t* bp = b.mutable_raw();
  for (int i = 0; i < 4; ++i) {
    packed_set(bp, i, 4, i);
    packed_set(bp + 8, i, 4, 15 - i);
  }
  Tensor a = ft({1, 4}, {1, 1, 1, 1});
  Tensor scales = ft({2}, {0.5f, 2.0f});
  auto y = run_node({.op = "MatMulNBits", .inputs = {a, b, scales},
                     .attrs = {ai("K", k), ai("N", n), ai("bits", 4), ai("block_size", block)}, .domain = "com.microsoft"});
  // row 0: (0+1+2+3 - 4*8) * 0.5 = -13; row 1: (15+14+13+12 - 32) * 2 = 44
  EXPECT_EQ(y[0].shape(), (Shape{1, 2}));
  EXPECT_VALUES_NEAR(y[0], (std::vector<float>{-13, 44}), 1e-5);
  // Packed zero points: row 0 zp 0, row 1 zp 15 (one byte per row: ceil(1 * 4 / 8)).
  auto yz = run_node({.op = "MatMulNBits", .inputs = {a, b, scales, Tensor::from_vector<uint8_t>({2}, {0, 15})},
                      .attrs = {ai("K", k), ai("N", n), ai("bits", 4), ai("block_size", block)}, .domain = "com.microsoft"});
  EXPECT_VALUES_NEAR(yz[0], (std::vector<float>{3, -12}), 1e-5);
}

TEST(MatMulNBitsKernel, AccuracyLevel4QuantizesAPerBlockAsOnnxRuntime) {
  // K = 32 (one block), N = 1, every 4-bit code 9 (w = (9 - 8) · 1 = 1): y = the sum of A as the
  // kernel sees it. accuracy_level 4: A to int8 with scale max|a| / 127 = 1 here, codes rounded half
  // to even: 127 + 0 (0.4) + 2 (1.5) + 2 (2.5) = 131; level 0 keeps 131.4. A second block-row with
  // max|a| = 254 (scale 2): 254 + 2·round(1.4 / 2 = 0.7 -> 1) = 256 where the float sum is 255.4.
  const int64_t k = 32, n = 1;
  Tensor b(DataType::kUint8, {n, 1, 16});
  for (int i = 0; i < 32; ++i) packed_set(b.mutable_raw(), i, 4, 9);
  std::vector<float> av(64, 0.0f);
  av[0] = 127.0f, av[1] = 0.4f, av[2] = 1.5f, av[3] = 2.5f;
  av[32] = 254.0f, av[33] = 1.4f;
  const Tensor a = ft({2, 32}, av), scales = ft({1}, {1.0f});
  for (int64_t bits : {4, 8}) {
    Tensor bb = b;
    if (bits == 8) {
      bb = Tensor(DataType::kUint8, {n, 1, 32});
      for (int i = 0; i < 32; ++i) bb.mutable_raw()[i] = 129;  // 8-bit zero point 128: w = 1
    }
    auto level = [&](int64_t l) {
      return run_node({.op = "MatMulNBits", .inputs = {a, bb, scales},
                       .attrs = {ai("K", k), ai("N", n), ai("bits", bits), ai("block_size", 32), ai("accuracy_level", l)},
                       .domain = "com.microsoft"})[0];
    };
    SCOPED_TRACE(fmt::format("{} bits", bits));
    EXPECT_VALUES_NEAR(level(4), (std::vector<float>{131, 256}), 1e-4);
    EXPECT_VALUES_NEAR(level(0), (std::vector<float>{131.4f, 255.4f}), 1e-4);
  }
}

TEST(MatMulNBitsKernel, TwoAndEightBitsWithFloatZeroPointsAndBias) {
  const int64_t k = 3, n = 1, block = 16;
  Tensor b2(DataType::kUint8, {n, 1, 4});
  packed_set(b2.mutable_raw(), 0, 2, 3);
  packed_set(b2.mutable_raw(), 1, 2, 0);
  packed_set(b2.mutable_raw(), 2, 2, 2);
  Tensor a = ft({2, 3}, {1, 2, 3, 1, 0, 0});
  auto y2 = run_node({.op = "MatMulNBits", .inputs = {a, b2, ft({1}, {1.0f}), ft({1}, {1.5f}), Tensor(), ft({1}, {100})},
                      .attrs = {ai("K", k), ai("N", n), ai("bits", 2), ai("block_size", block)}, .domain = "com.microsoft"});
  // deq = [1.5, -1.5, 0.5]; rows: 1.5 - 3 + 1.5 = 0 (+100), 1.5 (+100)
  EXPECT_VALUES_NEAR(y2[0], (std::vector<float>{100, 101.5f}), 1e-5);
  Tensor b8(DataType::kUint8, {n, 1, 16});
  b8.mutable_raw()[0] = 130;
  b8.mutable_raw()[1] = 120;
  b8.mutable_raw()[2] = 128;
  auto y8 = run_node({.op = "MatMulNBits", .inputs = {a, b8, ft({1}, {0.5f})},
                      .attrs = {ai("K", k), ai("N", n), ai("bits", 8), ai("block_size", block)}, .domain = "com.microsoft"});
  // deq = [1, -4, 0] -> rows: 1 - 8 = -7, 1
  EXPECT_VALUES_NEAR(y8[0], (std::vector<float>{-7, 1}), 1e-5);
}

TEST(QLinearAddKernel, BroadcastAndRequantize) {
  // A = (10,20) -> (0, 5); B = 4 broadcast; C scale 0.25: (0 + 4) / 0.25 = 16, (5 + 4) / 0.25 = 36.
  auto y = run_node({.op = "QLinearAdd",
                     .inputs = {Tensor::from_vector<uint8_t>({2}, {10, 20}), Tensor::scalar<float>(0.5f), Tensor::scalar<uint8_t>(10),
                                Tensor::from_vector<uint8_t>({1}, {4}), Tensor::scalar<float>(1.0f), Tensor::scalar<uint8_t>(0),
                                Tensor::scalar<float>(0.25f), Tensor::scalar<uint8_t>(0)},
                     .domain = "com.microsoft"});
  EXPECT_EQ(y[0].dtype(), DataType::kUint8);
  EXPECT_EQ(iv(y[0]), (std::vector<int32_t>{16, 36}));
}

TEST(QLinearAddKernel, RoundsLikeOnnxRuntime) {
  // ONNX Runtime's 8-bit QLinearAdd (x86) computes fma(a, ra, fma(b, rb, F)) with ra = sa/sc,
  // rb = sb/sc, F = zc - (ra*za + rb*zb), in float. Here that gives 212.5 -> 212 (ties to even)
  // where the textbook (sa(a-za) + sb(b-zb))/sc + zc rounds to 213, and folding a one-element b
  // into F unfused (F + b*rb) gives 212.50002 -> 213; qtool must give ONNX Runtime's 212.
  // ONNX Runtime 1.30 gives 212 for vector + vector, vector + one element and one element + vector.
  const Tensor sa = Tensor::scalar<float>(0.056282595f), za = Tensor::scalar<uint8_t>(112);
  const Tensor sb = Tensor::scalar<float>(0.03669841f), zb = Tensor::scalar<uint8_t>(244);
  const Tensor sc = Tensor::scalar<float>(0.11528973f), zc = Tensor::scalar<uint8_t>(234);
  const Tensor a2 = Tensor::from_vector<uint8_t>({2}, {81, 81}), b2 = Tensor::from_vector<uint8_t>({2}, {224, 224});
  const Tensor b1 = Tensor::from_vector<uint8_t>({1}, {224});
  auto vv = run_node({.op = "QLinearAdd", .inputs = {a2, sa, za, b2, sb, zb, sc, zc}, .domain = "com.microsoft"});
  EXPECT_EQ(iv(vv[0]), (std::vector<int32_t>{212, 212}));
  auto vs = run_node({.op = "QLinearAdd", .inputs = {a2, sa, za, b1, sb, zb, sc, zc}, .domain = "com.microsoft"});
  EXPECT_EQ(iv(vs[0]), (std::vector<int32_t>{212, 212}));
  auto sv = run_node({.op = "QLinearAdd", .inputs = {b1, sb, zb, a2, sa, za, sc, zc}, .domain = "com.microsoft"});
  EXPECT_EQ(iv(sv[0]), (std::vector<int32_t>{212, 212}));
}

TEST(QLinearGlobalAveragePoolKernel, NchwAndNhwc) {
  // ch0: sum 10 - 2*4 = 2, * 0.5/(0.25*4) = 1 -> 1 + 1 = 2; ch1: (41 - 8) * 0.5 = 16.5 -> 16 (even) + 1 = 17.
  const std::vector<Tensor> q = {Tensor::scalar<float>(0.5f), Tensor::scalar<uint8_t>(2), Tensor::scalar<float>(0.25f),
                                 Tensor::scalar<uint8_t>(1)};
  auto nchw = run_node({.op = "QLinearGlobalAveragePool",
                        .inputs = {Tensor::from_vector<uint8_t>({1, 2, 2, 2}, {1, 2, 3, 4, 10, 10, 10, 11}), q[0], q[1], q[2], q[3]},
                        .domain = "com.microsoft"});
  EXPECT_EQ(nchw[0].shape(), (Shape{1, 2, 1, 1}));
  EXPECT_EQ(iv(nchw[0]), (std::vector<int32_t>{2, 17}));
  auto nhwc = run_node({.op = "QLinearGlobalAveragePool",
                        .inputs = {Tensor::from_vector<uint8_t>({1, 2, 2, 2}, {1, 10, 2, 10, 3, 10, 4, 11}), q[0], q[1], q[2], q[3]},
                        .attrs = {ai("channels_last", 1)}, .domain = "com.microsoft"});
  EXPECT_EQ(nhwc[0].shape(), (Shape{1, 1, 1, 2}));
  EXPECT_EQ(iv(nhwc[0]), (std::vector<int32_t>{2, 17}));
}

TEST(QLinearConcatKernel, RequantizesInputsToOutputParams) {
  auto y = run_node({.op = "QLinearConcat",
                     .inputs = {Tensor::scalar<float>(1.0f), Tensor::scalar<uint8_t>(0),
                                Tensor::from_vector<uint8_t>({1, 2}, {1, 2}), Tensor::scalar<float>(1.0f), Tensor::scalar<uint8_t>(0),
                                Tensor::from_vector<uint8_t>({1, 1}, {10}), Tensor::scalar<float>(0.5f), Tensor::scalar<uint8_t>(4)},
                     .attrs = {ai("axis", 1)}, .domain = "com.microsoft"});
  EXPECT_EQ(y[0].shape(), (Shape{1, 3}));
  EXPECT_EQ(iv(y[0]), (std::vector<int32_t>{1, 2, 3}));
}

TEST(QGemmKernel, Int32BiasRequantizedAndFloatOutput) {
  // (A - 1) = [2, 4]; B = [[1,2],[3,4]]; acc = [14, 20] + C [1, -1] = [15, 19]; * 0.5 -> 7.5, 9.5
  std::vector<Tensor> in = {Tensor::from_vector<uint8_t>({1, 2}, {3, 5}), Tensor::scalar<float>(0.5f), Tensor::scalar<uint8_t>(1),
                            Tensor::from_vector<int8_t>({2, 2}, {1, 2, 3, 4}), Tensor::scalar<float>(1.0f), Tensor::scalar<int8_t>(0),
                            Tensor::from_vector<int32_t>({2}, {1, -1})};
  auto f = run_node({.op = "QGemm", .inputs = in, .domain = "com.microsoft"});
  EXPECT_VALUES_NEAR(f[0], (std::vector<float>{7.5f, 9.5f}), 1e-6);
  in.push_back(Tensor::scalar<float>(1.0f));
  in.push_back(Tensor::scalar<uint8_t>(0));
  auto q = run_node({.op = "QGemm", .inputs = in, .domain = "com.microsoft"});
  EXPECT_EQ(iv(q[0]), (std::vector<int32_t>{8, 10}));  // ties to even
}

}  // namespace
}  // namespace qtool::testing
