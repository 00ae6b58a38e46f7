// Gradients of the shape family against finite differences (grad_check.h), over the opset
// variants of each op; plus exact values for Gather's scatter-add and Expand's sums, and the
// refusal of non-constant Pad.
#include <gtest/gtest.h>

#include <limits>

#include "grad_check.h"
#include "grad_direct.h"

namespace qtool::testing {
namespace {

const Tensor kX = ft({2, 3, 4}, rnd(24, 90));

TEST(GradShape, ReshapeAttributeAndInputVariants) {
  check_gradients(GradCheck{.node = {.op = "Reshape", .inputs = {kX}, .attrs = {ais("shape", {4, 6})}, .opset = 1}});
  check_gradients(GradCheck{.node = {.op = "Reshape", .inputs = {kX, ints64({3}, {0, -1, 2})}, .opset = 5}, .wrt = {0}});
  check_gradients(GradCheck{.node = {.op = "Reshape", .inputs = {kX, ints64({2}, {-1, 8})}, .opset = 14}, .wrt = {0}});
}

TEST(GradShape, FlattenSqueezeUnsqueeze) {
  check_gradients(GradCheck{.node = {.op = "Flatten", .inputs = {kX}, .attrs = {ai("axis", 2)}, .opset = 13}});
  check_gradients(GradCheck{.node = {.op = "Flatten", .inputs = {kX}, .opset = 9}});
  const Tensor x = ft({2, 1, 3, 1}, rnd(6, 91));
  // Squeeze: axes attribute (11), axes input (13), all unit dims when absent.
  check_gradients(GradCheck{.node = {.op = "Squeeze", .inputs = {x}, .attrs = {ais("axes", {1, -1})}, .opset = 11}});
  check_gradients(GradCheck{.node = {.op = "Squeeze", .inputs = {x, ints64({1}, {1})}, .opset = 13}, .wrt = {0}});
  check_gradients(GradCheck{.node = {.op = "Squeeze", .inputs = {x}, .opset = 13}});
  // Unsqueeze: axes attribute (11), axes input with a negative axis (13).
  check_gradients(GradCheck{.node = {.op = "Unsqueeze", .inputs = {kX}, .attrs = {ais("axes", {0, 3})}, .opset = 11}});
  check_gradients(GradCheck{.node = {.op = "Unsqueeze", .inputs = {kX, ints64({2}, {1, -1})}, .opset = 13}, .wrt = {0}});
}

TEST(GradShape, TransposeExplicitAndDefaultPerm) {
  check_gradients(GradCheck{.node = {.op = "Transpose", .inputs = {kX}, .attrs = {ais("perm", {1, 2, 0})}}});
  check_gradients(GradCheck{.node = {.op = "Transpose", .inputs = {kX}, .attrs = {ais("perm", {2, 0, 1})}}});
  check_gradients(GradCheck{.node = {.op = "Transpose", .inputs = {kX}}});
  check_gradients(GradCheck{
      .node = {.op = "Transpose", .inputs = {ft({2, 3, 2, 2}, rnd(24, 92))}, .attrs = {ais("perm", {0, 2, 3, 1})}}});
}

TEST(GradShape, ConcatAlongEachAxis) {
  const Tensor a = ft({2, 1, 4}, rnd(8, 93)), b = ft({2, 3, 4}, rnd(24, 94)), c = ft({2, 2, 4}, rnd(16, 95));
  check_gradients(GradCheck{.node = {.op = "Concat", .inputs = {a, b, c}, .attrs = {ai("axis", 1)}, .opset = 13}});
  check_gradients(GradCheck{.node = {.op = "Concat", .inputs = {a, b, c}, .attrs = {ai("axis", -2)}, .opset = 13},
                            .wrt = {1}});
  check_gradients(GradCheck{.node = {.op = "Concat", .inputs = {b, kX}, .attrs = {ai("axis", 0)}, .opset = 4}});
  check_gradients(GradCheck{.node = {.op = "Concat", .inputs = {b, kX}, .attrs = {ai("axis", 2)}, .opset = 11}});
}

TEST(GradShape, SliceAttributesAtOpset9) {
  const Tensor x = ft({4, 5, 3}, rnd(60, 96));
  check_gradients(GradCheck{.node = {.op = "Slice",
                                     .inputs = {x},
                                     .attrs = {ais("starts", {1, -4}), ais("ends", {3, 100}), ais("axes", {0, 1})},
                                     .opset = 9}});
  // No axes: starts/ends apply to the leading axes.
  check_gradients(GradCheck{
      .node = {.op = "Slice", .inputs = {x}, .attrs = {ais("starts", {0, 1}), ais("ends", {-1, 4})}, .opset = 9}});
}

TEST(GradShape, SliceInputsWithStepsAndClampingAtOpset13) {
  const Tensor x = ft({4, 5, 3}, rnd(60, 97));
  constexpr int64_t kMin = std::numeric_limits<int64_t>::min(), kMax = std::numeric_limits<int64_t>::max();
  // Negative steps, an out-of-range start clamped to dim-1 and an end of INT64_MIN (to the front).
  check_gradients(GradCheck{.node = {.op = "Slice",
                                     .inputs = {x, ints64({2}, {10, -1}), ints64({2}, {kMin, 0}), ints64({2}, {1, 2}),
                                                ints64({2}, {-2, -1})},
                                     .opset = 13},
                            .wrt = {0}});
  // Positive step 2 with an end past the dim, and a negative axis.
  check_gradients(GradCheck{.node = {.op = "Slice",
                                     .inputs = {x, ints64({2}, {1, 0}), ints64({2}, {kMax, -1}), ints64({2}, {1, -1}),
                                                ints64({2}, {2, 1})},
                                     .opset = 13},
                            .wrt = {0}});
  // Opset 10 inputs without axes or steps; and an empty slice (all-zero gradient).
  check_gradients(GradCheck{
      .node = {.op = "Slice", .inputs = {x, ints64({1}, {1}), ints64({1}, {3})}, .opset = 10}, .wrt = {0}});
  check_gradients(GradCheck{
      .node = {.op = "Slice", .inputs = {x, ints64({1}, {3}), ints64({1}, {1}), ints64({1}, {0})}, .opset = 13},
      .wrt = {0}});
}

TEST(GradShape, SliceScattersIntoZerosExactly) {
  // x[4:0:-2] of [0..5] reads x[4], x[2]; the gradient lands there.
  const auto d = node_gradients(
      {.op = "Slice", .inputs = {ft({6}, {0, 1, 2, 3, 4, 5}), ints64({1}, {4}), ints64({1}, {0}), ints64({1}, {0}),
                                 ints64({1}, {-2})},
       .opset = 13},
      {0}, {ft({2}, {7, 9})});
  EXPECT_VALUES_NEAR(d[0], (std::vector<float>{0, 0, 9, 0, 7, 0}), 0.0f);
}

TEST(GradShape, SplitVariantsAndOutputsWithoutGradient) {
  const Tensor x = ft({2, 6, 2}, rnd(24, 98));
  // Opset 11: split attribute; 13: split input; equal parts; 18: num_outputs with an uneven last part.
  check_gradients(GradCheck{
      .node = {.op = "Split", .inputs = {x}, .attrs = {ai("axis", 1), ais("split", {1, 2, 3})}, .outputs = 3, .opset = 11}});
  check_gradients(GradCheck{
      .node = {.op = "Split", .inputs = {x, ints64({2}, {4, 2})}, .attrs = {ai("axis", 1)}, .outputs = 2, .opset = 13},
      .wrt = {0}});
  check_gradients(GradCheck{.node = {.op = "Split", .inputs = {x}, .attrs = {ai("axis", -1)}, .outputs = 2, .opset = 13}});
  check_gradients(GradCheck{.node = {.op = "Split",
                                    .inputs = {ft({7, 2}, rnd(14, 99))},
                                    .attrs = {ai("axis", 0), ai("num_outputs", 3)},
                                    .outputs = 3,
                                    .opset = 18}});
  // Only outputs 0 and 2 carry the loss: output 1's slice gets zeros.
  check_gradients(GradCheck{
      .node = {.op = "Split", .inputs = {x}, .attrs = {ai("axis", 1), ais("split", {1, 2, 3})}, .outputs = 3, .opset = 11},
      .loss_outputs = {0, 2}});
  const auto d = node_gradients({.op = "Split", .inputs = {ft({4}, {1, 2, 3, 4})}, .outputs = 2, .opset = 13}, {0},
                                {Tensor(), ft({2}, {5, 6})});
  EXPECT_VALUES_NEAR(d[0], (std::vector<float>{0, 0, 5, 6}), 0.0f);
}

TEST(GradShape, ExpandSumsOverTheBroadcast) {
  check_gradients(GradCheck{.node = {.op = "Expand", .inputs = {ft({3, 1}, rnd(3, 100)), ints64({3}, {2, 3, 4})}},
                            .wrt = {0}});
  check_gradients(GradCheck{.node = {.op = "Expand", .inputs = {kX, ints64({2}, {3, 1})}}, .wrt = {0}});
  // Exact: [2] -> [3, 2] sums the columns.
  const auto d = node_gradients({.op = "Expand", .inputs = {ft({2}, {0, 0}), ints64({2}, {3, 2})}}, {0},
                                {ft({3, 2}, {1, 2, 3, 4, 5, 6})});
  EXPECT_VALUES_NEAR(d[0], (std::vector<float>{9, 12}), 0.0f);
}

TEST(GradShape, GatherAxis0And1WithRepeatedAndNegativeIndices) {
  const Tensor x = ft({4, 3, 2}, rnd(24, 101));
  check_gradients(GradCheck{.node = {.op = "Gather", .inputs = {x, ints64({5}, {0, 2, 0, -1, 2})}, .opset = 13},
                            .wrt = {0}});
  check_gradients(GradCheck{
      .node = {.op = "Gather", .inputs = {x, ints64({2, 2}, {1, -1, 1, 0})}, .attrs = {ai("axis", 1)}, .opset = 13},
      .wrt = {0}});
  check_gradients(GradCheck{
      .node = {.op = "Gather", .inputs = {x, ints64({3}, {-1, 1, -1})}, .attrs = {ai("axis", -1)}, .opset = 11},
      .wrt = {0}});
  // A scalar index drops the axis; int32 indices.
  check_gradients(GradCheck{.node = {.op = "Gather", .inputs = {x, ints64({}, {-2})}, .opset = 1}, .wrt = {0}});
  check_gradients(GradCheck{
      .node = {.op = "Gather", .inputs = {x, Tensor::from_vector<int32_t>({3}, {3, 3, 1})}, .opset = 13}, .wrt = {0}});
}

TEST(GradShape, GatherScatterAddsRepeatedRows) {
  // Rows 0, 2, 0, -1 (= 2) of a [3, 2] table: row 0 gets g0 + g2, row 2 gets g1 + g3, row 1 nothing.
  const auto d = node_gradients({.op = "Gather", .inputs = {ft({3, 2}, {0, 0, 0, 0, 0, 0}), ints64({4}, {0, 2, 0, -1})}},
                                {0}, {ft({4, 2}, {1, 2, 3, 4, 5, 6, 7, 8})});
  ASSERT_EQ(d[0].shape(), (Shape{3, 2}));
  EXPECT_VALUES_NEAR(d[0], (std::vector<float>{6, 8, 0, 0, 10, 12}), 0.0f);
  // Axis 1 of a [2, 3] table with indices [2, 2]: column 2 gets both.
  const auto e = node_gradients(
      {.op = "Gather", .inputs = {ft({2, 3}, {0, 0, 0, 0, 0, 0}), ints64({2}, {2, -1})}, .attrs = {ai("axis", 1)}}, {0},
      {ft({2, 2}, {1, 2, 3, 4})});
  EXPECT_VALUES_NEAR(e[0], (std::vector<float>{0, 0, 3, 0, 0, 7}), 0.0f);
}

TEST(GradShape, TileSumsOverTheRepeats) {
  check_gradients(GradCheck{.node = {.op = "Tile", .inputs = {ft({2, 3}, rnd(6, 102)), ints64({2}, {2, 3})}}, .wrt = {0}});
  check_gradients(GradCheck{.node = {.op = "Tile", .inputs = {kX, ints64({3}, {1, 2, 1})}}, .wrt = {0}});
  const auto d = node_gradients({.op = "Tile", .inputs = {ft({2}, {0, 0}), ints64({1}, {3})}}, {0},
                                {ft({6}, {1, 2, 3, 4, 5, 6})});
  EXPECT_VALUES_NEAR(d[0], (std::vector<float>{9, 12}), 0.0f);
}

TEST(GradShape, PadConstantVariants) {
  const Tensor x = ft({2, 3}, rnd(6, 103));
  // Opset 2: pads attribute; opset 11: pads input and a constant value that is differentiated too;
  // negative pads crop; opset 18: axes input.
  check_gradients(GradCheck{.node = {.op = "Pad", .inputs = {x}, .attrs = {ais("pads", {1, 0, 0, 2})}, .opset = 2}});
  check_gradients(
      GradCheck{.node = {.op = "Pad", .inputs = {x, ints64({4}, {0, 1, 2, 1}), ft({}, {0.5f})}, .opset = 11}, .wrt = {0, 2}});
  check_gradients(
      GradCheck{.node = {.op = "Pad", .inputs = {x, ints64({4}, {-1, 2, 1, -1})}, .opset = 13}, .wrt = {0}});
  check_gradients(GradCheck{
      .node = {.op = "Pad", .inputs = {kX, ints64({2}, {1, 2}), ft({1}, {0.25f}), ints64({1}, {-1})}, .opset = 18},
      .wrt = {0, 2}});
  // Exact: [1, 2] padded by one on each side: dx is the centre of g, d(value) the rest.
  const auto d = node_gradients({.op = "Pad", .inputs = {ft({2}, {0, 0}), ints64({2}, {1, 1}), ft({}, {0})}, .opset = 13},
                                {0, 2}, {ft({4}, {1, 2, 4, 8})});
  EXPECT_VALUES_NEAR(d[0], (std::vector<float>{2, 4}), 0.0f);
  EXPECT_VALUES_NEAR(d[1], (std::vector<float>{9}), 0.0f);
}

TEST(GradShape, PadOtherModesAreRefusedNamingTheNode) {
  const NodeRun pad{.op = "Pad",
                    .inputs = {ft({2, 3}, rnd(6, 104)), ints64({4}, {0, 1, 0, 1})},
                    .attrs = {as("mode", "reflect")},
                    .opset = 13};
  try {
    node_gradients(pad, {0}, {ft({2, 5}, rnd(10, 105))});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("node0"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("reflect"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace qtool::testing
