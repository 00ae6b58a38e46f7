// Gradients of MaxPool, AveragePool, GlobalAveragePool and GlobalMaxPool: finite-difference checks
// (max-style ops on inputs without near-ties) over overlapping windows, pads, ceil_mode,
// dilations and count_include_pad, and exact routing / averaging values on small inputs.
#include <gtest/gtest.h>

#include "grad_check.h"
#include "grad_test_util.h"

namespace qtool::testing {
namespace {

/// Pool check of X [xs]; max-style ops get distinct inputs and a finite-difference step that
/// cannot move an arg-max.
GradCheck pool(const char* op, Shape xs, std::vector<AttrSpec> attrs, int64_t opset = 12, int threads = 1) {
  GradCheck c;
  c.node.op = op;
  c.node.opset = opset;
  c.node.threads = threads;
  c.node.attrs = std::move(attrs);
  const std::string o = op;
  if (o == "MaxPool" || o == "GlobalMaxPool") {
    c.node.inputs = {distinct_values(xs, 21)};
    c.eps = 1e-3f;  // steps <= 0.0049 (|x| <= 4.9) stay below half the 0.05 spacing
  } else {
    c.node.inputs = {ft(xs, rnd(shape_numel(xs), 21))};
  }
  return c;
}

TEST(GradPool, MaxPoolOverlappingWindows) {
  // 3x3 windows with stride 2 overlap: an element that is the maximum of two windows gets both.
  check_gradients(pool("MaxPool", {2, 2, 7, 7}, {ais("kernel_shape", {3, 3}), ais("strides", {2, 2})}));
  check_gradients(pool("MaxPool", {1, 3, 6, 6}, {ais("kernel_shape", {3, 3})}));
}

TEST(GradPool, MaxPoolPads) {
  check_gradients(pool("MaxPool", {2, 2, 6, 5}, {ais("kernel_shape", {3, 3}), ais("pads", {1, 1, 1, 1})}));
  check_gradients(pool("MaxPool", {1, 2, 7, 7},
                       {ais("kernel_shape", {3, 2}), ais("strides", {2, 2}), ais("pads", {1, 0, 0, 1})}));
}

TEST(GradPool, MaxPoolCeilMode) {
  // 7 -> ceil((7 - 2) / 2) + 1 = 4 outputs per dim; the last windows hang over the end.
  GradCheck c = pool("MaxPool", {1, 2, 7, 7}, {ais("kernel_shape", {2, 2}), ais("strides", {2, 2}), ai("ceil_mode", 1)});
  EXPECT_EQ(run_node(c.node)[0].shape(), (Shape{1, 2, 4, 4}));
  check_gradients(c);
  check_gradients(pool("MaxPool", {1, 1, 8, 8},
                       {ais("kernel_shape", {3, 3}), ais("strides", {2, 2}), ais("pads", {1, 1, 1, 1}), ai("ceil_mode", 1)}));
}

TEST(GradPool, MaxPoolDilationsAutoPadAndIndices) {
  check_gradients(pool("MaxPool", {1, 2, 8, 8}, {ais("kernel_shape", {2, 2}), ais("dilations", {2, 2})}));
  check_gradients(pool("MaxPool", {1, 2, 7, 6},
                       {ais("kernel_shape", {3, 3}), ais("strides", {2, 2}), as("auto_pad", "SAME_UPPER")}));
  // With the Indices output: only Y carries the loss (Indices has no gradient).
  GradCheck with_idx = pool("MaxPool", {1, 2, 6, 6}, {ais("kernel_shape", {2, 2}), ais("strides", {2, 2})});
  with_idx.node.outputs = 2;
  with_idx.loss_outputs = {0};
  check_gradients(with_idx);
}

TEST(GradPool, MaxPool1DAnd3D) {
  check_gradients(pool("MaxPool", {2, 3, 9}, {ais("kernel_shape", {3}), ais("strides", {2}), ais("pads", {1, 1})}));
  check_gradients(pool("MaxPool", {1, 2, 4, 5, 4}, {ais("kernel_shape", {2, 3, 2}), ais("strides", {2, 1, 2})}));
}

TEST(GradPool, MaxPoolMultithreaded) {
  check_gradients(pool("MaxPool", {2, 3, 6, 6}, {ais("kernel_shape", {3, 3}), ais("pads", {1, 1, 1, 1})}, 12, 2));
}

TEST(GradPool, MaxPoolRoutesToFirstArgMax) {
  // Two 2x2 windows of [[1, 5, 2, 2], [3, 4, 2, 0]]: the maximum 5 gets dY[0] = 1; the second
  // window ties (2, 2, 2): the first one in scan order, (0, 2), gets dY[1] = 10.
  NodeRun r{.op = "MaxPool",
            .inputs = {ft({1, 1, 2, 4}, {1, 5, 2, 2, 3, 4, 2, 0})},
            .attrs = {ais("kernel_shape", {2, 2}), ais("strides", {2, 2})},
            .opset = 12};
  const std::vector<Tensor> g = autodiff_grads(r, {0}, {ft({1, 1, 1, 2}, {1, 10})});
  EXPECT_VALUES_NEAR(g[0], (std::vector<float>{0, 1, 10, 0, 0, 0, 0, 0}), 0.0f);
}

TEST(GradPool, AveragePoolCountIncludePad) {
  for (int include : {0, 1}) {
    SCOPED_TRACE(include);
    check_gradients(pool("AveragePool", {2, 2, 6, 6},
                         {ais("kernel_shape", {3, 3}), ais("strides", {2, 2}), ais("pads", {1, 1, 1, 1}),
                          ai("count_include_pad", include)}));
    // ceil_mode windows past the end padding count only up to it.
    check_gradients(pool("AveragePool", {1, 2, 6, 6},
                         {ais("kernel_shape", {3, 3}), ais("strides", {2, 2}), ais("pads", {1, 1, 0, 0}),
                          ai("ceil_mode", 1), ai("count_include_pad", include)}));
  }
  check_gradients(pool("AveragePool", {1, 2, 5, 6, 4}, {ais("kernel_shape", {2, 3, 2}), ais("pads", {1, 0, 1, 0, 1, 0})}));
  check_gradients(pool("AveragePool", {2, 2, 9}, {ais("kernel_shape", {4}), ais("strides", {3}), ai("count_include_pad", 1),
                                                  ais("pads", {2, 1})}, 12, 2));
  // Dilated windows (opset 19).
  check_gradients(pool("AveragePool", {1, 1, 7, 7}, {ais("kernel_shape", {2, 2}), ais("dilations", {2, 2})}, 19));
}

TEST(GradPool, AveragePoolExactCounts) {
  // 1x3 input, kernel 2, pads 1 on both sides, stride 2: windows {pad, x0} and {x1, x2}.
  // count_include_pad 0: dX = [dY0, dY1/2, dY1/2]; 1: the first window counts the pad: dY0/2.
  for (int include : {0, 1}) {
    NodeRun r{.op = "AveragePool",
              .inputs = {ft({1, 1, 3}, {1, 2, 3})},
              .attrs = {ais("kernel_shape", {2}), ais("strides", {2}), ais("pads", {1, 1}), ai("count_include_pad", include)},
              .opset = 12};
    const std::vector<Tensor> g = autodiff_grads(r, {0}, {ft({1, 1, 2}, {4, 6})});
    EXPECT_VALUES_NEAR(g[0], (std::vector<float>{include ? 2.0f : 4.0f, 3, 3}), 1e-6f);
  }
}

TEST(GradPool, GlobalPools) {
  check_gradients(pool("GlobalAveragePool", {2, 3, 4, 5}, {}));
  check_gradients(pool("GlobalMaxPool", {2, 3, 4, 5}, {}));
  check_gradients(pool("GlobalAveragePool", {2, 3, 7}, {}, 12, 2));
  // Exact: the mean spreads dY / 4 over the plane, the max routes dY to the first maximum.
  NodeRun avg{.op = "GlobalAveragePool", .inputs = {ft({1, 1, 2, 2}, {1, 9, 9, 3})}, .opset = 12};
  EXPECT_VALUES_NEAR(autodiff_grads(avg, {0}, {ft({1, 1, 1, 1}, {8})})[0], (std::vector<float>{2, 2, 2, 2}), 1e-6f);
  NodeRun mx{.op = "GlobalMaxPool", .inputs = {ft({1, 1, 2, 2}, {1, 9, 9, 3})}, .opset = 12};
  EXPECT_VALUES_NEAR(autodiff_grads(mx, {0}, {ft({1, 1, 1, 1}, {8})})[0], (std::vector<float>{0, 8, 0, 0}), 0.0f);
}

}  // namespace
}  // namespace qtool::testing
