// Softmax family and Gelu against hand-computed values.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "nn_test_util.h"

namespace qtool::testing {
namespace {

TEST(SoftmaxKernel, Opset11CoercesTo2dOpset13UsesOneAxis) {
  Tensor x = ft({1, 2, 2}, {1, 2, 3, 4});
  const double s = std::exp(1) + std::exp(2) + std::exp(3) + std::exp(4);
  auto y11 = run_node({.op = "Softmax", .inputs = {x}, .attrs = {ai("axis", 1)}, .opset = 11});
  EXPECT_VALUES_NEAR(y11[0], (std::vector<float>{float(std::exp(1) / s), float(std::exp(2) / s), float(std::exp(3) / s),
                                                  float(std::exp(4) / s)}), 1e-6);
  auto y13 = run_node({.op = "Softmax", .inputs = {x}, .attrs = {ai("axis", 1)}, .opset = 13});
  const float lo = float(1 / (1 + std::exp(2.0))), hi = float(std::exp(2.0) / (1 + std::exp(2.0)));
  EXPECT_VALUES_NEAR(y13[0], (std::vector<float>{lo, lo, hi, hi}), 1e-6);
  // Default axis: 1 before 13 (whole row here), -1 from 13.
  auto d13 = run_node({.op = "Softmax", .inputs = {ft({2, 2}, {0, 0, 1, 1})}, .opset = 13});
  EXPECT_VALUES_NEAR(d13[0], (std::vector<float>{0.5f, 0.5f, 0.5f, 0.5f}), 1e-6);
}

TEST(SoftmaxKernel, MaskedEntriesAreExactZerosAndSmallOnesSurvive) {
  // -inf (masked attention) and entries > 87 below the maximum give exact 0 (no denormals); an
  // entry 80 below the maximum still gets its tiny normal weight; the row still sums to 1.
  const float inf = std::numeric_limits<float>::infinity();
  auto y = run_node({.op = "Softmax", .inputs = {ft({1, 5}, {1, -inf, -100, -79, 0})}, .opset = 13});
  const double s = std::exp(1.0) + std::exp(-79.0) + 1.0;
  const float* p = y[0].data<float>();
  EXPECT_NEAR(p[0], std::exp(1.0) / s, 1e-6);
  EXPECT_EQ(p[1], 0.0f);
  EXPECT_EQ(p[2], 0.0f);
  EXPECT_GT(p[3], 0.0f);
  EXPECT_NEAR(p[3] / (std::exp(-79.0) / s), 1.0, 1e-3);
  EXPECT_NEAR(p[4], 1.0 / s, 1e-6);
  // A fully masked row stays uniform, as before.
  auto m = run_node({.op = "Softmax", .inputs = {ft({1, 2}, {-inf, -inf})}, .opset = 13});
  EXPECT_VALUES_NEAR(m[0], (std::vector<float>{0.5f, 0.5f}), 0);
}

TEST(SoftmaxKernel, RowLengthsAroundTheLanesMatchDouble) {
  // The AVX2 row (8 lanes and a masked tail): lengths 1..33, masked (-inf) entries, an all -inf
  // row (uniform) and large magnitudes, against exp in double.
  const float ninf = -std::numeric_limits<float>::infinity();
  uint32_t seed = 500;
  for (int64_t len = 1; len <= 33; ++len) {
    std::vector<float> x = rnd(3 * len, seed++);
    for (int64_t i = 0; i < len; ++i) {
      x[i] *= 40.0f;                     // row 0: spread over ±40
      if (i % 3 == 1) x[len + i] = ninf;  // row 1: masked entries
      x[2 * len + i] = ninf;             // row 2: all masked
    }
    auto y = run_node({.op = "Softmax", .inputs = {ft({3, len}, x)}, .attrs = {ai("axis", -1)}, .opset = 13});
    std::vector<float> want;
    for (int r = 0; r < 3; ++r) {
      const float* row = x.data() + r * len;
      float mx = ninf;
      for (int64_t i = 0; i < len; ++i) mx = std::max(mx, row[i]);
      double sum = 0;
      std::vector<double> e(static_cast<size_t>(len));
      for (int64_t i = 0; i < len; ++i) sum += e[i] = std::isinf(mx) ? 1.0 : std::exp(double(row[i]) - mx);
      for (int64_t i = 0; i < len; ++i) want.push_back(static_cast<float>(e[i] / sum));
    }
    SCOPED_TRACE("len " + std::to_string(len));
    EXPECT_VALUES_NEAR(y[0], want, 2e-7);
    for (int64_t i = 0; i < len; ++i) {
      if (i % 3 == 1) EXPECT_EQ(y[0].data<float>()[len + i], 0.0f);  // exact zeros, no denormals
    }
  }
}

TEST(SoftmaxKernel, WholeMaskedBlocksAreExactZeros) {
  // A causal-attention row: whole blocks of eight -inf (and a block of entries more than 87 below
  // the maximum) are written as zeros without the polynomial; the rest as in double.
  const float ninf = -std::numeric_limits<float>::infinity();
  std::vector<float> x = rnd(64, 77);
  for (int64_t i = 0; i < 8; ++i) x[i] = -100.0f + x[i];  // block 0: far below the maximum
  for (int64_t i = 21; i < 64; ++i) x[i] = ninf;         // the mask from position 21 on
  auto y = run_node({.op = "Softmax", .inputs = {ft({1, 64}, x)}, .attrs = {ai("axis", -1)}, .opset = 13});
  float mx = ninf;
  for (float v : x) mx = std::max(mx, v);
  double sum = 0;
  for (float v : x) sum += std::exp(double(v) - mx);
  const float* got = y[0].data<float>();
  for (int64_t i = 0; i < 64; ++i) {
    if (i < 8 || i >= 21) EXPECT_EQ(got[i], 0.0f) << i;
    else EXPECT_NEAR(got[i], std::exp(double(x[i]) - mx) / sum, 2e-7) << i;
  }
}

TEST(SoftmaxKernel, LogSoftmaxAndHardmax) {
  auto l = run_node({.op = "LogSoftmax", .inputs = {ft({1, 2}, {0, 0})}, .opset = 13});
  EXPECT_VALUES_NEAR(l[0], (std::vector<float>{float(-std::log(2.0)), float(-std::log(2.0))}), 1e-6);
  auto big = run_node({.op = "LogSoftmax", .inputs = {ft({1, 2}, {1000, 0})}, .opset = 13});
  EXPECT_VALUES_NEAR(big[0], (std::vector<float>{0, -1000}), 1e-3);
  auto h = run_node({.op = "Hardmax", .inputs = {ft({1, 4}, {1, 3, 3, 2})}, .opset = 13});
  EXPECT_VALUES_NEAR(h[0], (std::vector<float>{0, 1, 0, 0}), 0);
  auto h11 = run_node({.op = "Hardmax", .inputs = {ft({2, 2}, {1, 2, 5, 0})}, .attrs = {ai("axis", 0)}, .opset = 11});
  EXPECT_VALUES_NEAR(h11[0], (std::vector<float>{0, 0, 1, 0}), 0);
}

TEST(GeluKernel, ExactAndTanh) {
  auto e = run_node({.op = "Gelu", .inputs = {ft({3}, {-1, 0, 1})}, .opset = 20});
  EXPECT_VALUES_NEAR(e[0], (std::vector<float>{-0.15865525f, 0.0f, 0.84134475f}), 1e-6);
  auto t = run_node({.op = "Gelu", .inputs = {ft({1}, {1})}, .attrs = {as("approximate", "tanh")}, .opset = 20});
  EXPECT_VALUES_NEAR(t[0], (std::vector<float>{0.84119199f}), 1e-6);
}

}  // namespace
}  // namespace qtool::testing
