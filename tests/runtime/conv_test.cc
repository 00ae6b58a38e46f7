// Conv / ConvTranspose against hand-computed values and a naive direct convolution.
#include <gtest/gtest.h>

#include "nn_test_util.h"

namespace qtool::testing {
namespace {

/// Direct 2-D convolution reference (NCHW, groups, strides, dilations, explicit pads).
std::vector<float> naive_conv2d(const std::vector<float>& x, Shape xs, const std::vector<float>& w, Shape ws,
                                const std::vector<float>& b, int64_t group, std::array<int64_t, 2> s,
                                std::array<int64_t, 2> d, std::array<int64_t, 4> p, Shape* ys) {
  const int64_t n = xs[0], c = xs[1], h = xs[2], wd = xs[3], m = ws[0], kh = ws[2], kw = ws[3];
  const int64_t oh = (h + p[0] + p[2] - ((kh - 1) * d[0] + 1)) / s[0] + 1;
  const int64_t ow = (wd + p[1] + p[3] - ((kw - 1) * d[1] + 1)) / s[1] + 1;
  *ys = {n, m, oh, ow};
  const int64_t cg = c / group, mg = m / group;
  std::vector<float> y(static_cast<size_t>(n * m * oh * ow));
  for (int64_t in = 0; in < n; ++in)
    for (int64_t om = 0; om < m; ++om)
      for (int64_t y0 = 0; y0 < oh; ++y0)
        for (int64_t x0 = 0; x0 < ow; ++x0) {
          double acc = b.empty() ? 0.0 : b[om];
          const int64_t g = om / mg;
          for (int64_t ci = 0; ci < cg; ++ci)
            for (int64_t a = 0; a < kh; ++a)
              for (int64_t bb = 0; bb < kw; ++bb) {
                const int64_t iy = y0 * s[0] - p[0] + a * d[0], ix = x0 * s[1] - p[1] + bb * d[1];
                if (iy < 0 || iy >= h || ix < 0 || ix >= wd) continue;
                acc += double(x[((in * c + g * cg + ci) * h + iy) * wd + ix]) * w[((om * cg + ci) * kh + a) * kw + bb];
              }
          y[((in * m + om) * oh + y0) * ow + x0] = static_cast<float>(acc);
        }
  return y;
}

TEST(ConvKernel, HandComputed2x2) {
  Tensor x = ft({1, 1, 3, 3}, {1, 2, 3, 4, 5, 6, 7, 8, 9});
  Tensor w = ft({1, 1, 2, 2}, {1, 1, 1, 1});
  auto y = run_node({.op = "Conv", .inputs = {x, w, ft({1}, {0.5f})}});
  EXPECT_EQ(y[0].shape(), (Shape{1, 1, 2, 2}));
  EXPECT_VALUES_NEAR(y[0], (std::vector<float>{12.5f, 16.5f, 24.5f, 28.5f}), 1e-5);
}

TEST(ConvKernel, SameUpperStride2) {
  // 4x4 input, 3x3 ones kernel, stride 2, SAME_UPPER: out 2x2, total pad 1 -> pad end only.
  std::vector<float> xv(16);
  for (int i = 0; i < 16; ++i) xv[i] = static_cast<float>(i);
  auto y = run_node({.op = "Conv", .inputs = {ft({1, 1, 4, 4}, xv), ft({1, 1, 3, 3}, std::vector<float>(9, 1.0f))},
                     .attrs = {as("auto_pad", "SAME_UPPER"), ais("strides", {2, 2})}});
  ASSERT_EQ(y[0].shape(), (Shape{1, 1, 2, 2}));
  // windows rows {0,1,2} cols {0,1,2}: 45; rows{0..2} cols{2,3}: 2+3+6+7+10+11=39; rows{2,3} cols{0..2}: 8+9+10+12+13+14=66; rows{2,3} cols{2,3}: 10+11+14+15=50
  EXPECT_VALUES_NEAR(y[0], (std::vector<float>{45, 39, 66, 50}), 1e-4);
  auto yl = run_node({.op = "Conv", .inputs = {ft({1, 1, 4, 4}, xv), ft({1, 1, 3, 3}, std::vector<float>(9, 1.0f))},
                      .attrs = {as("auto_pad", "SAME_LOWER"), ais("strides", {2, 2})}});
  // pad begin 1: windows rows {-1,0,1} cols {-1,0,1} = 0+1+4+5=10; cols{1,2,3}: 1+2+3+5+6+7=24; rows{1,2,3} cols{-1..1}: 4+5+8+9+12+13=51; 5+6+7+9+10+11+13+14+15=90
  EXPECT_VALUES_NEAR(yl[0], (std::vector<float>{10, 24, 51, 90}), 1e-4);
}

struct ConvCase {
  Shape xs, ws;
  int64_t group;
  std::array<int64_t, 2> s, d;
  std::array<int64_t, 4> p;
  int threads;
};

TEST(ConvKernel, MatchesNaiveAcrossGroupsStridesDilations) {
  const ConvCase cases[] = {
      {{2, 4, 9, 8}, {6, 4, 3, 3}, 1, {1, 1}, {1, 1}, {1, 1, 1, 1}, 1},
      {{1, 4, 11, 10}, {6, 2, 3, 2}, 2, {2, 1}, {2, 1}, {0, 1, 2, 0}, 2},
      {{1, 6, 12, 12}, {6, 1, 3, 3}, 6, {1, 1}, {1, 1}, {1, 1, 1, 1}, 2},   // depthwise
      {{2, 3, 10, 9}, {6, 1, 3, 3}, 3, {2, 2}, {1, 2}, {1, 2, 0, 1}, 1},    // channel multiplier 2
      {{1, 8, 7, 7}, {16, 8, 1, 1}, 1, {1, 1}, {1, 1}, {0, 0, 0, 0}, 2},   // pointwise
      {{1, 3, 40, 40}, {8, 3, 3, 3}, 1, {1, 1}, {1, 1}, {1, 1, 1, 1}, 2},  // several column tiles
  };
  uint32_t seed = 10;
  for (const ConvCase& c : cases) {
    std::vector<float> x = rnd(shape_numel(c.xs), seed++), w = rnd(shape_numel(c.ws), seed++), b = rnd(c.ws[0], seed++);
    Shape ys;
    std::vector<float> want = naive_conv2d(x, c.xs, w, c.ws, b, c.group, c.s, c.d, c.p, &ys);
    auto y = run_node({.op = "Conv", .inputs = {ft(c.xs, x), ft(c.ws, w), ft({c.ws[0]}, b)},
                       .attrs = {ai("group", c.group), ais("strides", {c.s[0], c.s[1]}),
                                 ais("dilations", {c.d[0], c.d[1]}), ais("pads", {c.p[0], c.p[1], c.p[2], c.p[3]})},
                       .threads = c.threads});
    ASSERT_EQ(y[0].shape(), ys);
    EXPECT_VALUES_NEAR(y[0], want, 1e-4);
  }
}

TEST(ConvKernel, DepthwiseSweepMatchesNaive) {
  // The AVX2 depthwise 3x3 kernel (where the CPU has AVX2) reads unpadded planes and masks the
  // windows that cross an edge: every plane width around the 8-lane blocks (1..17, 31), both
  // strides, dilation 2, asymmetric pads, odd heights (its two-row passes) and several planes.
  uint32_t seed = 100;
  for (int64_t w : {1, 2, 5, 7, 8, 9, 15, 16, 17, 31}) {
    for (int64_t st : {1, 2}) {
      for (int64_t dil : {1, 2}) {
        if (st == 2 && dil == 2 && w < 5) continue;
        for (std::array<int64_t, 4> p : {std::array<int64_t, 4>{1, 1, 1, 1}, {0, 0, 0, 0}, {2, 0, 1, 2}}) {
          const int64_t h = w % 2 ? w : w + 1, c = 5;
          if (h + p[0] + p[2] < 2 * dil + 1 || w + p[1] + p[3] < 2 * dil + 1) continue;
          const Shape xs = {2, c, h, w}, ws = {c, 1, 3, 3};
          std::vector<float> x = rnd(shape_numel(xs), seed++), wt = rnd(shape_numel(ws), seed++), b = rnd(c, seed++);
          Shape ys;
          const std::vector<float> want = naive_conv2d(x, xs, wt, ws, b, c, {st, st}, {dil, dil}, p, &ys);
          auto y = run_node({.op = "Conv", .inputs = {ft(xs, x), ft(ws, wt), ft({c}, b)},
                             .attrs = {ai("group", c), ais("strides", {st, st}), ais("dilations", {dil, dil}),
                                       ais("pads", {p[0], p[1], p[2], p[3]})},
                             .threads = 2});
          SCOPED_TRACE("w " + std::to_string(w) + " stride " + std::to_string(st) + " dilation " + std::to_string(dil) +
                       " pads " + std::to_string(p[0]) + std::to_string(p[1]) + std::to_string(p[2]) +
                       std::to_string(p[3]));
          ASSERT_EQ(y[0].shape(), ys);
          EXPECT_VALUES_NEAR(y[0], want, 1e-5);
        }
      }
    }
  }
}

TEST(ConvKernel, GemmShapesAroundTheTilesMatchNaive) {
  // The direct GEMM's 6-row panels, 16-column strips, 256-step chunks of k (summed from zero and
  // added to C) and bias epilogue: output channels 1..13, spatial sizes off the 16-column grid,
  // input channels up to 300 (k beyond one chunk, for 1x1 and im2col 3x3).
  uint32_t seed = 200;
  for (int64_t m : {1, 5, 6, 7, 13}) {
    for (int64_t cin : {3, 40, 300}) {
      for (int64_t k : {1, 3}) {
        const Shape xs = {1, cin, 5, 7}, ws = {m, cin, k, k};
        std::vector<float> x = rnd(shape_numel(xs), seed++), wt = rnd(shape_numel(ws), seed++), b = rnd(m, seed++);
        const std::array<int64_t, 4> p = k == 3 ? std::array<int64_t, 4>{1, 1, 1, 1} : std::array<int64_t, 4>{0, 0, 0, 0};
        Shape ys;
        const std::vector<float> want = naive_conv2d(x, xs, wt, ws, b, 1, {1, 1}, {1, 1}, p, &ys);
        auto y = run_node({.op = "Conv", .inputs = {ft(xs, x), ft(ws, wt), ft({m}, b)},
                           .attrs = {ais("pads", {p[0], p[1], p[2], p[3]})}});
        SCOPED_TRACE("m " + std::to_string(m) + " cin " + std::to_string(cin) + " k " + std::to_string(k));
        ASSERT_EQ(y[0].shape(), ys);
        EXPECT_VALUES_NEAR(y[0], want, 2e-4);
      }
    }
  }
}

TEST(ConvKernel, Conv1dAnd3d) {
  // 1-D: x [1,1,5] = 1..5, w [1,1,3] = [1,0,-1], pads 1 -> [-2,-2,-2,-2,4]
  auto y = run_node({.op = "Conv", .inputs = {ft({1, 1, 5}, {1, 2, 3, 4, 5}), ft({1, 1, 3}, {1, 0, -1})},
                     .attrs = {ais("pads", {1, 1})}});
  EXPECT_VALUES_NEAR(y[0], (std::vector<float>{-2, -2, -2, -2, 4}), 1e-5);
  // 3-D: 2x2x2 ones kernel over a 3x3x3 ramp: each output = sum of a 2x2x2 cube.
  std::vector<float> xv(27);
  for (int i = 0; i < 27; ++i) xv[i] = static_cast<float>(i);
  auto y3 = run_node({.op = "Conv", .inputs = {ft({1, 1, 3, 3, 3}, xv), ft({1, 1, 2, 2, 2}, std::vector<float>(8, 1))}});
  ASSERT_EQ(y3[0].shape(), (Shape{1, 1, 2, 2, 2}));
  // cube at origin: 0+1+3+4+9+10+12+13 = 52; each +1 in w adds 8, +1 in h adds 24, +1 in d adds 72
  EXPECT_VALUES_NEAR(y3[0], (std::vector<float>{52, 60, 76, 84, 124, 132, 148, 156}), 1e-4);
}

TEST(ConvKernel, NegativePadsAreRefusedNotReadOutOfBounds) {
  // Depthwise (group = C) and ordinary convs: pads < 0 would index before the input plane.
  for (int64_t group : {2, 1}) {
    const Shape ws = group == 2 ? Shape{2, 1, 3, 3} : Shape{2, 2, 3, 3};
    try {
      run_node({.op = "Conv", .inputs = {ft({1, 2, 5, 5}, std::vector<float>(50, 1)), ft(ws, std::vector<float>(ws[1] * 18, 1))},
                .attrs = {ai("group", group), ais("pads", {-1, 0, 0, 1})}});
      ADD_FAILURE() << "negative pads accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidModel);
      EXPECT_NE(std::string(e.what()).find("pads must be non-negative (got -1)"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("Conv"), std::string::npos) << e.what();
    }
  }
}

TEST(ConvTransposeKernel, StrideOneAndTwo) {
  Tensor x = ft({1, 1, 2, 2}, {1, 2, 3, 4});
  Tensor w = ft({1, 1, 2, 2}, {1, 1, 1, 1});
  auto y = run_node({.op = "ConvTranspose", .inputs = {x, w}});
  ASSERT_EQ(y[0].shape(), (Shape{1, 1, 3, 3}));
  EXPECT_VALUES_NEAR(y[0], (std::vector<float>{1, 3, 2, 4, 10, 6, 3, 7, 4}), 1e-5);
  auto y2 = run_node({.op = "ConvTranspose", .inputs = {x, w, ft({1}, {1})}, .attrs = {ais("strides", {2, 2})}});
  ASSERT_EQ(y2[0].shape(), (Shape{1, 1, 4, 4}));
  EXPECT_VALUES_NEAR(y2[0], (std::vector<float>{2, 2, 3, 3, 2, 2, 3, 3, 4, 4, 5, 5, 4, 4, 5, 5}), 1e-5);
}

TEST(ConvTransposeKernel, OutputPaddingPadsAndOutputShape) {
  Tensor x = ft({1, 1, 2, 2}, {1, 2, 3, 4});
  Tensor w = ft({1, 1, 2, 2}, {1, 1, 1, 1});
  // stride 2 + output_padding 1 -> 5x5 with a zero last row/col.
  auto y = run_node({.op = "ConvTranspose", .inputs = {x, w},
                     .attrs = {ais("strides", {2, 2}), ais("output_padding", {1, 1})}});
  ASSERT_EQ(y[0].shape(), (Shape{1, 1, 5, 5}));
  EXPECT_EQ(fv(y[0])[4], 0.0f);
  EXPECT_EQ(fv(y[0])[24], 0.0f);
  EXPECT_EQ(fv(y[0])[18], 4.0f);
  // pads 1 on every side of the 4x4 stride-2 result keeps the centre 2x2: [[2,3],[4,5]] without bias.
  auto yp = run_node({.op = "ConvTranspose", .inputs = {x, w}, .attrs = {ais("strides", {2, 2}), ais("pads", {1, 1, 1, 1})}});
  ASSERT_EQ(yp[0].shape(), (Shape{1, 1, 2, 2}));
  EXPECT_VALUES_NEAR(yp[0], (std::vector<float>{1, 2, 3, 4}), 1e-5);
  // output_shape 4x4 equals the plain stride-2 result.
  auto yo = run_node({.op = "ConvTranspose", .inputs = {x, w}, .attrs = {ais("strides", {2, 2}), ais("output_shape", {4, 4})}});
  ASSERT_EQ(yo[0].shape(), (Shape{1, 1, 4, 4}));
  EXPECT_VALUES_NEAR(yo[0], (std::vector<float>{1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4}), 1e-5);
}

TEST(ConvTransposeKernel, GroupsMatchPerGroupRuns) {
  // group 2: each group is an independent ConvTranspose.
  std::vector<float> xv = rnd(2 * 3 * 3, 5), wv = rnd(2 * 2 * 2 * 2, 6);
  auto y = run_node({.op = "ConvTranspose", .inputs = {ft({1, 2, 3, 3}, xv), ft({2, 2, 2, 2}, wv)}, .attrs = {ai("group", 2)}});
  ASSERT_EQ(y[0].shape(), (Shape{1, 4, 4, 4}));
  for (int g = 0; g < 2; ++g) {
    std::vector<float> xg(xv.begin() + g * 9, xv.begin() + g * 9 + 9), wg(wv.begin() + g * 8, wv.begin() + g * 8 + 8);
    auto yg = run_node({.op = "ConvTranspose", .inputs = {ft({1, 1, 3, 3}, xg), ft({1, 2, 2, 2}, wg)}});
    std::vector<float> all = fv(y[0]), part = fv(yg[0]);
    for (int i = 0; i < 32; ++i) EXPECT_NEAR(all[g * 32 + i], part[i], 1e-5);
  }
}

}  // namespace
}  // namespace qtool::testing
