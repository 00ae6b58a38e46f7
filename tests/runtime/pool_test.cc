// Pooling kernels against hand-computed values.
#include <gtest/gtest.h>

#include <limits>

#include "nn_test_util.h"

namespace qtool::testing {
namespace {

std::vector<float> ramp(int n) {
  std::vector<float> v(n);
  for (int i = 0; i < n; ++i) v[i] = static_cast<float>(i);
  return v;
}

TEST(MaxPoolKernel, ValuesAndIndicesBothStorageOrders) {
  auto y = run_node({.op = "MaxPool", .inputs = {ft({1, 1, 4, 4}, ramp(16))},
                     .attrs = {ais("kernel_shape", {2, 2}), ais("strides", {2, 2})}, .outputs = 2, .opset = 12});
  EXPECT_VALUES_NEAR(y[0], (std::vector<float>{5, 7, 13, 15}), 0);
  EXPECT_VALUES_NEAR(y[1], (std::vector<float>{5, 7, 13, 15}), 0);
  EXPECT_EQ(y[1].dtype(), DataType::kInt64);
  auto yc = run_node({.op = "MaxPool", .inputs = {ft({1, 1, 4, 4}, ramp(16))},
                      .attrs = {ais("kernel_shape", {2, 2}), ais("strides", {2, 2}), ai("storage_order", 1)},
                      .outputs = 2, .opset = 12});
  EXPECT_VALUES_NEAR(yc[1], (std::vector<float>{5, 13, 7, 15}), 0);
  // Indices include the (n, c) plane offset.
  auto y2 = run_node({.op = "MaxPool", .inputs = {ft({1, 2, 2, 2}, ramp(8))}, .attrs = {ais("kernel_shape", {2, 2})},
                      .outputs = 2, .opset = 12});
  EXPECT_VALUES_NEAR(y2[1], (std::vector<float>{3, 7}), 0);
}

TEST(MaxPoolKernel, CeilModeDilationAndPads) {
  auto y = run_node({.op = "MaxPool", .inputs = {ft({1, 1, 5, 5}, ramp(25))},
                     .attrs = {ais("kernel_shape", {2, 2}), ais("strides", {2, 2}), ai("ceil_mode", 1)}, .opset = 12});
  ASSERT_EQ(y[0].shape(), (Shape{1, 1, 3, 3}));
  EXPECT_VALUES_NEAR(y[0], (std::vector<float>{6, 8, 9, 16, 18, 19, 21, 23, 24}), 0);
  auto yd = run_node({.op = "MaxPool", .inputs = {ft({1, 1, 4, 4}, ramp(16))},
                      .attrs = {ais("kernel_shape", {2, 2}), ais("dilations", {2, 2})}, .opset = 12});
  EXPECT_VALUES_NEAR(yd[0], (std::vector<float>{10, 11, 14, 15}), 0);
  // Negative input with padding: padded positions never win.
  auto yp = run_node({.op = "MaxPool", .inputs = {ft({1, 1, 1, 2}, {-3, -5})},
                      .attrs = {ais("kernel_shape", {1, 3}), ais("pads", {0, 1, 0, 1})}, .opset = 12});
  EXPECT_VALUES_NEAR(yp[0], (std::vector<float>{-3, -3}), 0);
}

TEST(MaxPoolKernel, SweepMatchesNaive) {
  // The AVX2 MaxPool (values only, float) around its 8-lane blocks: widths 1..19, kernels 2..3,
  // strides 1..3, pads and ceil mode, against a direct maximum over the window.
  uint32_t seed = 300;
  for (int64_t w : {1, 3, 7, 8, 9, 16, 17, 19}) {
    for (int64_t k : {2, 3}) {
      for (int64_t st : {1, 2, 3}) {
        for (int64_t pad : {0, 1}) {
          for (int64_t ceil : {0, 1}) {
            if (w + 2 * pad < k || pad >= k) continue;
            const int64_t h = 5;
            const std::vector<float> x = rnd(2 * 3 * h * w, seed++);
            auto out_len = [&](int64_t in) {
              const int64_t span = in + 2 * pad - k;
              int64_t o = ceil ? (span + st - 1) / st + 1 : span / st + 1;
              if (ceil && (o - 1) * st >= in + pad) --o;
              return o;
            };
            const int64_t oh = out_len(h), ow = out_len(w);
            std::vector<float> want;
            for (int64_t pl = 0; pl < 6; ++pl)
              for (int64_t y0 = 0; y0 < oh; ++y0)
                for (int64_t x0 = 0; x0 < ow; ++x0) {
                  float m = std::numeric_limits<float>::lowest();
                  for (int64_t a = 0; a < k; ++a)
                    for (int64_t b = 0; b < k; ++b) {
                      const int64_t iy = y0 * st - pad + a, ix = x0 * st - pad + b;
                      if (iy >= 0 && iy < h && ix >= 0 && ix < w) m = std::max(m, x[(pl * h + iy) * w + ix]);
                    }
                  want.push_back(m);
                }
            auto y = run_node({.op = "MaxPool", .inputs = {ft({2, 3, h, w}, x)},
                               .attrs = {ais("kernel_shape", {k, k}), ais("strides", {st, st}),
                                         ais("pads", {pad, pad, pad, pad}), ai("ceil_mode", ceil)},
                               .opset = 12, .threads = 2});
            SCOPED_TRACE("w " + std::to_string(w) + " k " + std::to_string(k) + " stride " + std::to_string(st) +
                         " pad " + std::to_string(pad) + " ceil " + std::to_string(ceil));
            ASSERT_EQ(y[0].shape(), (Shape{2, 3, oh, ow}));
            EXPECT_VALUES_NEAR(y[0], want, 0);
          }
        }
      }
    }
  }
}

TEST(MaxPoolKernel, Int8Input) {
  Tensor x = Tensor::from_vector<int8_t>({1, 1, 1, 4}, {-1, 7, -8, 3});
  auto y = run_node({.op = "MaxPool", .inputs = {x}, .attrs = {ais("kernel_shape", {1, 2}), ais("strides", {1, 2})}, .opset = 12});
  EXPECT_EQ(y[0].dtype(), DataType::kInt8);
  EXPECT_VALUES_NEAR(y[0], (std::vector<float>{7, 3}), 0);
}

TEST(AveragePoolKernel, CountIncludePad) {
  std::vector<float> x = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  auto y = run_node({.op = "AveragePool", .inputs = {ft({1, 1, 3, 3}, x)},
                     .attrs = {ais("kernel_shape", {3, 3}), ais("pads", {1, 1, 1, 1})}});
  // corner (1+2+4+5)/4 = 3; edge (1+2+3+4+5+6)/6 = 3.5; centre 5
  EXPECT_VALUES_NEAR(y[0], (std::vector<float>{3, 3.5f, 4, 4.5f, 5, 5.5f, 6, 6.5f, 7}), 1e-5);
  auto yi = run_node({.op = "AveragePool", .inputs = {ft({1, 1, 3, 3}, x)},
                      .attrs = {ais("kernel_shape", {3, 3}), ais("pads", {1, 1, 1, 1}), ai("count_include_pad", 1)}});
  EXPECT_NEAR(fv(yi[0])[0], 12.0f / 9.0f, 1e-5);
  EXPECT_NEAR(fv(yi[0])[4], 5.0f, 1e-5);
}

TEST(AveragePoolKernel, CeilModeDividesByValidCount) {
  // 1x3 input, k2 s2 ceil: windows [0,1] and [2] -> 0.5 and 2.
  auto y = run_node({.op = "AveragePool", .inputs = {ft({1, 1, 1, 3}, {0, 1, 2})},
                     .attrs = {ais("kernel_shape", {1, 2}), ais("strides", {1, 2}), ai("ceil_mode", 1)}});
  EXPECT_VALUES_NEAR(y[0], (std::vector<float>{0.5f, 2.0f}), 1e-6);
}

TEST(GlobalPoolKernels, AverageMaxLp) {
  Tensor x = ft({1, 2, 2, 2}, {1, 2, 3, 4, -1, -2, -3, 5});
  auto a = run_node({.op = "GlobalAveragePool", .inputs = {x}});
  EXPECT_EQ(a[0].shape(), (Shape{1, 2, 1, 1}));
  EXPECT_VALUES_NEAR(a[0], (std::vector<float>{2.5f, -0.25f}), 1e-6);
  auto m = run_node({.op = "GlobalMaxPool", .inputs = {x}});
  EXPECT_VALUES_NEAR(m[0], (std::vector<float>{4, 5}), 0);
  auto l = run_node({.op = "GlobalLpPool", .inputs = {ft({1, 1, 2}, {3, 4})}});
  EXPECT_VALUES_NEAR(l[0], (std::vector<float>{5}), 1e-5);
  auto lp = run_node({.op = "LpPool", .inputs = {ft({1, 1, 4}, {3, 4, 6, 8})}, .attrs = {ais("kernel_shape", {2}), ais("strides", {2})}});
  EXPECT_VALUES_NEAR(lp[0], (std::vector<float>{5, 10}), 1e-5);
}

}  // namespace
}  // namespace qtool::testing
