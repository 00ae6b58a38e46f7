// Gradients of Conv: finite-difference checks over strides, pads, dilations, groups, depthwise,
// 1x1, 1-D and 3-D convolutions (with and without bias, single- and multithreaded), exact values
// on a tiny case, requested-only gradients, the error for mismatched channels, and a timing print
// for a MobileNet-sized layer.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdio>

#include "grad_check.h"
#include "grad_test_util.h"

namespace qtool::testing {
namespace {

/// Conv check of X [xs] * W [ws] (+ bias when `bias`) with the given attributes.
GradCheck conv(Shape xs, Shape ws, bool bias, std::vector<AttrSpec> attrs, int threads = 1) {
  GradCheck c;
  c.node.op = "Conv";
  c.node.opset = 11;
  c.node.threads = threads;
  c.node.inputs = {ft(xs, rnd(shape_numel(xs), 11)), ft(ws, rnd(shape_numel(ws), 12))};
  if (bias) c.node.inputs.push_back(ft({ws[0]}, rnd(ws[0], 13)));
  c.node.attrs = std::move(attrs);
  return c;
}

TEST(GradConv, Stride2WithPadsAndBias) {
  check_gradients(conv({2, 3, 7, 7}, {4, 3, 3, 3}, true, {ais("strides", {2, 2}), ais("pads", {1, 1, 1, 1})}));
}

TEST(GradConv, AsymmetricPadsAndStrides) {
  check_gradients(conv({1, 2, 6, 7}, {3, 2, 3, 2}, false, {ais("strides", {2, 3}), ais("pads", {0, 1, 2, 0})}));
}

TEST(GradConv, Dilation2) {
  check_gradients(conv({1, 2, 8, 8}, {3, 2, 3, 3}, false, {ais("dilations", {2, 2}), ais("pads", {2, 2, 2, 2})}));
  check_gradients(conv({2, 2, 9, 9}, {2, 2, 3, 3}, true, {ais("dilations", {2, 1}), ais("strides", {2, 1})}));
}

TEST(GradConv, Group2) {
  check_gradients(conv({2, 4, 6, 6}, {6, 2, 3, 3}, true, {ai("group", 2), ais("pads", {1, 1, 1, 1})}));
}

TEST(GradConv, Depthwise3x3) {
  check_gradients(conv({2, 4, 7, 7}, {4, 1, 3, 3}, true, {ai("group", 4), ais("pads", {1, 1, 1, 1})}));
  // Stride 2 (MobileNetV2's downsampling blocks) and no padding.
  check_gradients(conv({2, 3, 8, 8}, {3, 1, 3, 3}, false, {ai("group", 3), ais("strides", {2, 2}), ais("pads", {1, 1, 1, 1})}));
  check_gradients(conv({1, 3, 6, 6}, {3, 1, 3, 3}, true, {ai("group", 3)}));
  // Stride 3 (the generic strided tap) with dilation.
  check_gradients(conv({1, 2, 9, 9}, {2, 1, 3, 3}, false, {ai("group", 2), ais("strides", {3, 3}), ais("dilations", {2, 2}), ais("pads", {1, 2, 1, 0})}));
}

TEST(GradConv, DepthwiseChannelMultiplier) {
  // group == C with two output channels per input channel: both write dX[:, ic].
  check_gradients(conv({2, 3, 5, 5}, {6, 1, 3, 3}, true, {ai("group", 3), ais("pads", {1, 1, 1, 1})}));
}

TEST(GradConv, Pointwise1x1) {
  check_gradients(conv({2, 5, 4, 4}, {3, 5, 1, 1}, true, {}));
  check_gradients(conv({1, 4, 5, 5}, {6, 4, 1, 1}, false, {ais("strides", {2, 2})}));  // strided: im2col path
  check_gradients(conv({2, 4, 3, 3}, {4, 2, 1, 1}, true, {ai("group", 2)}));
}

TEST(GradConv, SingleInputChannel) {
  // C == 1, group 1: C/group == 1 but not depthwise (one input plane feeds every output).
  check_gradients(conv({2, 1, 6, 6}, {4, 1, 3, 3}, true, {ais("pads", {1, 1, 1, 1})}));
}

TEST(GradConv, OneDimensional) {
  check_gradients(conv({2, 3, 9}, {4, 3, 3}, true, {ais("strides", {2}), ais("pads", {1, 0})}));
  check_gradients(conv({2, 3, 10}, {3, 1, 3}, true, {ai("group", 3), ais("pads", {1, 1}), ais("dilations", {2})}));
}

TEST(GradConv, ThreeDimensional) {
  check_gradients(conv({1, 2, 4, 5, 4}, {3, 2, 2, 3, 2}, true, {ais("pads", {1, 0, 1, 0, 1, 0}), ais("strides", {1, 2, 1})}));
  check_gradients(conv({1, 2, 4, 4, 4}, {2, 1, 3, 3, 3}, true, {ai("group", 2), ais("pads", {1, 1, 1, 1, 1, 1})}));
}

TEST(GradConv, AutoPad) {
  check_gradients(conv({1, 2, 6, 7}, {3, 2, 3, 3}, true, {as("auto_pad", "SAME_UPPER"), ais("strides", {2, 2})}));
  check_gradients(conv({1, 2, 5, 6}, {2, 1, 2, 2}, false, {as("auto_pad", "SAME_LOWER"), ai("group", 2)}));
  check_gradients(conv({1, 2, 5, 5}, {2, 2, 3, 3}, false, {as("auto_pad", "VALID"), ais("pads", {7, 7, 7, 7})}));
}

TEST(GradConv, Multithreaded) {
  // Two threads: 3 images split per image (uneven chunks, dW partials summed), 1 image split
  // inside the GEMMs and im2col, depthwise split over channels.
  check_gradients(conv({3, 4, 6, 6}, {5, 4, 3, 3}, true, {ais("pads", {1, 1, 1, 1})}, 2));
  check_gradients(conv({1, 8, 9, 9}, {16, 8, 3, 3}, true, {ais("pads", {1, 1, 1, 1}), ais("strides", {2, 2})}, 2));
  check_gradients(conv({2, 6, 5, 5}, {6, 1, 3, 3}, true, {ai("group", 6), ais("pads", {1, 1, 1, 1})}, 2));
  check_gradients(conv({4, 4, 3, 3}, {2, 4, 1, 1}, false, {}, 2));
}

TEST(GradConv, OnlyWeightOrOnlyInput) {
  GradCheck w_only = conv({2, 3, 6, 6}, {4, 3, 3, 3}, false, {ais("pads", {1, 1, 1, 1})});
  w_only.wrt = {1};
  check_gradients(w_only);
  GradCheck x_only = conv({2, 4, 6, 6}, {4, 1, 3, 3}, true, {ai("group", 4), ais("pads", {1, 1, 1, 1})});
  x_only.wrt = {0};
  check_gradients(x_only);
}

TEST(GradConv, ExactValues) {
  // X = [[1,2,3],[4,5,6],[7,8,9]], W = 2x2 ones, no padding, dL/dY = 1 on the 2x2 output:
  // dW[i][j] = sum of the window starting at (i, j) = [[12, 16], [24, 28]],
  // dX = number of windows covering each pixel = [[1,2,1],[2,4,2],[1,2,1]], dB = 4.
  NodeRun r{.op = "Conv",
            .inputs = {ft({1, 1, 3, 3}, {1, 2, 3, 4, 5, 6, 7, 8, 9}), ft({1, 1, 2, 2}, {1, 1, 1, 1}), ft({1}, {0.5f})},
            .opset = 11};
  const std::vector<Tensor> g = autodiff_grads(r, {0, 1, 2});
  EXPECT_VALUES_NEAR(g[0], (std::vector<float>{1, 2, 1, 2, 4, 2, 1, 2, 1}), 1e-6f);
  EXPECT_VALUES_NEAR(g[1], (std::vector<float>{12, 16, 24, 28}), 1e-5f);
  EXPECT_VALUES_NEAR(g[2], (std::vector<float>{4}), 1e-6f);
  // The same plane twice as a depthwise conv (group 2), the second channel's weights 2:
  // dX[1] = 2 x the window counts, dW[1] = dW[0] (dY = 1 whatever the weights).
  NodeRun d{.op = "Conv",
            .inputs = {ft({1, 2, 3, 3}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2, 3, 4, 5, 6, 7, 8, 9}),
                       ft({2, 1, 2, 2}, {1, 1, 1, 1, 2, 2, 2, 2})},
            .attrs = {ai("group", 2)},
            .opset = 11};
  const std::vector<Tensor> gd = autodiff_grads(d, {0, 1});
  EXPECT_VALUES_NEAR(gd[0], (std::vector<float>{1, 2, 1, 2, 4, 2, 1, 2, 1, 2, 4, 2, 4, 8, 4, 2, 4, 2}), 1e-6f);
  EXPECT_VALUES_NEAR(gd[1], (std::vector<float>{12, 16, 24, 28, 12, 16, 24, 28}), 1e-5f);
}

TEST(GradConv, OnlyRequestedGradientsAreSet) {
  GradCheck c = conv({1, 2, 4, 4}, {3, 2, 3, 3}, true, {});
  const Tensor dy = ft({1, 3, 2, 2}, rnd(12, 5));
  const std::vector<Tensor> w_only = call_grad_fn(c.node, {Tensor(DataType::kFloat, {1, 3, 2, 2})}, {dy}, {0, 1, 0});
  EXPECT_FALSE(w_only[0].defined());
  EXPECT_FALSE(w_only[2].defined());
  ASSERT_TRUE(w_only[1].defined());
  const std::vector<Tensor> all = call_grad_fn(c.node, {Tensor(DataType::kFloat, {1, 3, 2, 2})}, {dy}, {1, 1, 1});
  EXPECT_VALUES_NEAR(w_only[1], fv(all[1]), 1e-6f);
  // dB = Σ dY over the spatial positions.
  EXPECT_VALUES_NEAR(all[2], (std::vector<float>{fv(dy)[0] + fv(dy)[1] + fv(dy)[2] + fv(dy)[3],
                                                 fv(dy)[4] + fv(dy)[5] + fv(dy)[6] + fv(dy)[7],
                                                 fv(dy)[8] + fv(dy)[9] + fv(dy)[10] + fv(dy)[11]}),
                     1e-5f);
}

/// Expects the Conv gradient of `r` to throw kInvalidModel naming the node.
void expect_invalid_conv(const NodeRun& r, const Shape& ys) {
  try {
    call_grad_fn(r, {Tensor(DataType::kFloat, ys)}, {Tensor(DataType::kFloat, ys)}, {1, 1});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidModel);
    EXPECT_NE(std::string(e.what()).find("node0"), std::string::npos) << e.what();
  }
}

TEST(GradConv, BadShapesAndPadsAreInvalidModel) {
  // W expects 2 input channels per group, X has 3.
  expect_invalid_conv({.op = "Conv", .inputs = {ft({1, 3, 4, 4}, rnd(48, 1)), ft({2, 2, 3, 3}, rnd(36, 2))}, .opset = 11},
                      {1, 2, 2, 2});
  // Negative pads (the depthwise path copies planes into a padded buffer).
  expect_invalid_conv({.op = "Conv",
                       .inputs = {ft({1, 2, 5, 5}, rnd(50, 1)), ft({2, 1, 3, 3}, rnd(18, 2))},
                       .attrs = {ai("group", 2), ais("pads", {-1, -1, 0, 0})},
                       .opset = 11},
                      {1, 2, 2, 3});
}

/// Milliseconds of one backward pass (dX and dW) of a Conv node, best of 5 after a warm-up; the gradients'
/// sums are returned through `sum` so the work cannot be skipped.
double backward_ms(const NodeRun& r, std::vector<int> wrt, double* sum) {
  detail::OneNode m;
  detail::build_one_node(r, m);
  auto tape = detail::one_node_tape(r, m, wrt);
  runtime::Autodiff& ad = *tape;
  const std::vector<Tensor> ys = ad.forward({});
  const std::vector<Tensor> seed = {ft(ys[0].shape(), rnd(ys[0].numel(), 3))};
  ad.backward(seed);  // warm-up (thread pool, buffers)
  double best = 1e30;
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    const std::vector<Tensor> g = ad.backward(seed);
    const auto t1 = std::chrono::steady_clock::now();
    best = std::min(best, std::chrono::duration<double, std::milli>(t1 - t0).count());
    *sum = 0;
    for (const Tensor& t : g)
      for (float v : fv(t)) *sum += v;
  }
  return best;
}

TEST(GradConv, TimingMobileNetSizedLayers) {
  // Not asserted (shared CI machines): printed for the record. The sums are checked to be finite
  // and non-zero so that the timed work is real.
  struct Case {
    const char* name;
    Shape xs, ws;
    std::vector<AttrSpec> attrs;
  };
  const std::vector<Case> cases = {
      {"3x3 conv [1,32,56,56] x [64,32,3,3]", {1, 32, 56, 56}, {64, 32, 3, 3}, {ais("pads", {1, 1, 1, 1})}},
      {"depthwise 3x3 [1,144,56,56]", {1, 144, 56, 56}, {144, 1, 3, 3}, {ai("group", 144), ais("pads", {1, 1, 1, 1})}},
      {"1x1 conv [1,144,56,56] x [24,144,1,1]", {1, 144, 56, 56}, {24, 144, 1, 1}, {}},
      {"3x3 conv, batch 4 [4,32,56,56] x [64,32,3,3]", {4, 32, 56, 56}, {64, 32, 3, 3}, {ais("pads", {1, 1, 1, 1})}},
      {"stem conv [2,3,244,244] x [32,3,3,3] stride 2", {2, 3, 244, 244}, {32, 3, 3, 3},
       {ais("pads", {1, 1, 1, 1}), ais("strides", {2, 2})}},
      {"depthwise 3x3 stride 2 [2,96,122,122]", {2, 96, 122, 122}, {96, 1, 3, 3},
       {ai("group", 96), ais("pads", {1, 1, 1, 1}), ais("strides", {2, 2})}},
  };
  for (const Case& c : cases) {
    for (int threads : {1, 2}) {
      NodeRun r{.op = "Conv",
                .inputs = {ft(c.xs, rnd(shape_numel(c.xs), 1)), ft(c.ws, rnd(shape_numel(c.ws), 2))},
                .attrs = c.attrs,
                .opset = 11,
                .threads = threads};
      double sum = 0;
      const double ms = backward_ms(r, {0, 1}, &sum);
      std::printf("[ timing ] Conv gradient (dX + dW) %s, %d thread(s): %.2f ms\n", c.name, threads, ms);
      EXPECT_TRUE(std::isfinite(sum) && sum != 0.0) << c.name;
    }
  }
}

}  // namespace
}  // namespace qtool::testing
