// Normalization kernels against hand-computed values.
#include <gtest/gtest.h>

#include <cmath>

#include "nn_test_util.h"

namespace qtool::testing {
namespace {

TEST(BatchNormKernel, InferencePerChannel) {
  auto y = run_node({.op = "BatchNormalization",
                     .inputs = {ft({1, 2, 1, 2}, {1, 2, 3, 4}), ft({2}, {1, 2}), ft({2}, {0, 1}), ft({2}, {1, 3}), ft({2}, {4, 1})},
                     .attrs = {af("epsilon", 0.0f)}, .opset = 15});
  EXPECT_VALUES_NEAR(y[0], (std::vector<float>{0, 0.5f, 1, 3}), 1e-6);
  EXPECT_THROW(run_node({.op = "BatchNormalization",
                         .inputs = {ft({1, 2}, {1, 2}), ft({2}, {1, 2}), ft({2}, {0, 1}), ft({2}, {1, 3}), ft({2}, {4, 1})},
                         .attrs = {ai("training_mode", 1)}, .opset = 15}),
               Error);
}

TEST(LayerNormKernel, NormalizesTrailingDimsWithOptionalOutputs) {
  auto y = run_node({.op = "LayerNormalization",
                     .inputs = {ft({2, 2}, {1, 3, 2, 6}), ft({2}, {1, 2}), ft({2}, {0.5f, 0})},
                     .attrs = {af("epsilon", 0.0f)}, .outputs = 3});
  EXPECT_VALUES_NEAR(y[0], (std::vector<float>{-0.5f, 2, -0.5f, 2}), 1e-6);
  EXPECT_EQ(y[1].shape(), (Shape{2, 1}));
  EXPECT_VALUES_NEAR(y[1], (std::vector<float>{2, 4}), 1e-6);
  EXPECT_VALUES_NEAR(y[2], (std::vector<float>{1, 0.5f}), 1e-6);
  // axis 0 normalizes over everything.
  auto y0 = run_node({.op = "LayerNormalization", .inputs = {ft({2, 1}, {0, 2}), ft({2, 1}, {1, 1})},
                      .attrs = {ai("axis", 0), af("epsilon", 0.0f)}});
  EXPECT_VALUES_NEAR(y0[0], (std::vector<float>{-1, 1}), 1e-6);
}

TEST(InstanceNormKernel, PerPlane) {
  auto y = run_node({.op = "InstanceNormalization",
                     .inputs = {ft({1, 2, 2}, {0, 2, 5, 5}), ft({2}, {3, 1}), ft({2}, {1, 7})},
                     .attrs = {af("epsilon", 0.0f)}});
  // plane 0: [-1, 1]*3 + 1; plane 1: constant -> 0 * (1/sqrt(0 + 0) = inf) is NaN in theory; use eps below
  EXPECT_NEAR(fv(y[0])[0], -2.0f, 1e-5);
  EXPECT_NEAR(fv(y[0])[1], 4.0f, 1e-5);
  auto y2 = run_node({.op = "InstanceNormalization", .inputs = {ft({1, 1, 2}, {5, 5}), ft({1}, {1}), ft({1}, {7})}});
  EXPECT_VALUES_NEAR(y2[0], (std::vector<float>{7, 7}), 1e-5);
}

TEST(GroupNormKernel, Opset18PerGroupAnd21PerChannel) {
  Tensor x = ft({1, 4, 1}, {1, 2, 3, 4});
  auto y18 = run_node({.op = "GroupNormalization", .inputs = {x, ft({2}, {1, 2}), ft({2}, {0, 10})},
                       .attrs = {ai("num_groups", 2), af("epsilon", 0.0f)}, .opset = 18});
  EXPECT_VALUES_NEAR(y18[0], (std::vector<float>{-1, 1, 8, 12}), 1e-5);
  auto y21 = run_node({.op = "GroupNormalization", .inputs = {x, ft({4}, {1, 2, 3, 4}), ft({4}, {0, 0, 0, 1})},
                       .attrs = {ai("num_groups", 2), af("epsilon", 0.0f)}, .opset = 21});
  EXPECT_VALUES_NEAR(y21[0], (std::vector<float>{-1, 2, -3, 5}), 1e-5);
}

TEST(LpNormKernel, L1AndL2) {
  auto l1 = run_node({.op = "LpNormalization", .inputs = {ft({1, 2}, {1, 3})}, .attrs = {ai("p", 1)}});
  EXPECT_VALUES_NEAR(l1[0], (std::vector<float>{0.25f, 0.75f}), 1e-6);
  auto l2 = run_node({.op = "LpNormalization", .inputs = {ft({2, 2}, {3, 1, 4, 0})}, .attrs = {ai("axis", 0)}});
  EXPECT_VALUES_NEAR(l2[0], (std::vector<float>{0.6f, 1, 0.8f, 0}), 1e-6);
}

}  // namespace
}  // namespace qtool::testing
