// Gradients of the elementwise family against finite differences (grad_check.h), plus exact
// values for the broadcasting Pow and for the kinks.
#include <gtest/gtest.h>

#include <cmath>

#include "grad_check.h"
#include "grad_direct.h"

namespace qtool::testing {
namespace {

const Shape kShape{2, 3, 4};
constexpr int64_t kN = 24;

/// Finite-difference check of a one-input op on x (and any extra non-differentiated inputs).
void check_unary(const char* op, std::vector<float> x, std::vector<AttrSpec> attrs = {}, int64_t opset = 17) {
  SCOPED_TRACE(op);
  check_gradients(GradCheck{.node = {.op = op, .inputs = {ft(kShape, std::move(x))}, .attrs = std::move(attrs),
                                     .opset = opset},
                            .wrt = {0}});
}

TEST(GradElementwise, ReluLeakyReluAbsAwayFromTheKink) {
  check_unary("Relu", away_from(kN, 1, -2, 2, {0}));
  check_unary("Relu", away_from(kN, 2, -2, 2, {0}), {}, 6);
  check_unary("LeakyRelu", away_from(kN, 3, -2, 2, {0}));
  check_unary("LeakyRelu", away_from(kN, 4, -2, 2, {0}), {af("alpha", 0.3f)});
  check_unary("Abs", away_from(kN, 5, -2, 2, {0}));
}

TEST(GradElementwise, SmoothActivations) {
  check_unary("Sigmoid", away_from(kN, 6, -3, 3, {}));
  check_unary("Tanh", away_from(kN, 7, -2, 2, {}));
  check_unary("Exp", away_from(kN, 8, -2, 2, {}));
  check_unary("Neg", away_from(kN, 9, -2, 2, {}));
  check_unary("Erf", away_from(kN, 10, -2, 2, {}));
  check_unary("Softplus", away_from(kN, 11, -3, 3, {}));
}

TEST(GradElementwise, SqrtLogReciprocalOnTheirDomain) {
  check_unary("Sqrt", away_from(kN, 12, 0.5f, 3, {}));
  check_unary("Log", away_from(kN, 13, 0.5f, 3, {}));
  check_unary("Reciprocal", away_from(kN, 14, -2, 2, {0}, 0.5f));
}

TEST(GradElementwise, HardSigmoidHardSwishAwayFromTheirKinks) {
  // HardSigmoid(0.2, 0.5) bends at x = ±2.5; with alpha 0.5, beta 0.25 at -0.5 and 1.5.
  check_unary("HardSigmoid", away_from(kN, 15, -4, 4, {-2.5f, 2.5f}));
  check_unary("HardSigmoid", away_from(kN, 16, -2, 3, {-0.5f, 1.5f}), {af("alpha", 0.5f), af("beta", 0.25f)});
  check_unary("HardSwish", away_from(kN, 17, -5, 5, {-3.0f, 3.0f}), {}, 14);
}

TEST(GradElementwise, GeluExactAndTanhApproximation) {
  check_unary("Gelu", away_from(kN, 18, -3, 3, {}), {}, 20);
  check_unary("Gelu", away_from(kN, 19, -3, 3, {}), {as("approximate", "tanh")}, 20);
}

TEST(GradElementwise, LargeInputsOnAPoolMatchTheClosedForm) {
  // 70000 elements: above the parallel grain. Sigmoid' = y(1 − y), Relu' = [x > 0].
  const int64_t n = 70000;
  const Tensor x = ft({n}, rnd(n, 30));
  const Tensor g = ft({n}, rnd(n, 31));
  for (int threads : {1, 3}) {
    SCOPED_TRACE(threads);
    const auto s = node_gradients({.op = "Sigmoid", .inputs = {x}, .threads = threads}, {0}, {g});
    const auto r = node_gradients({.op = "Relu", .inputs = {x}, .threads = threads}, {0}, {g});
    for (int64_t i = 0; i < n; ++i) {
      const float xv = x.data<float>()[i], gv = g.data<float>()[i];
      const double y = 1.0 / (1.0 + std::exp(-static_cast<double>(xv)));
      ASSERT_NEAR(s[0].data<float>()[i], gv * y * (1 - y), 1e-6) << i;
      ASSERT_EQ(r[0].data<float>()[i], xv > 0 ? gv : 0.0f) << i;
    }
  }
}

TEST(GradElementwise, ClipAttributesBeforeOpset11) {
  check_unary("Clip", away_from(kN, 20, -2, 2, {-0.5f, 0.7f}), {af("min", -0.5f), af("max", 0.7f)}, 6);
  // Only a lower bound.
  check_unary("Clip", away_from(kN, 21, -2, 2, {-0.5f}), {af("min", -0.5f)}, 6);
}

TEST(GradElementwise, ClipInputsFromOpset11) {
  const Tensor x = ft(kShape, away_from(kN, 22, -2, 2, {-0.5f, 0.7f}));
  check_gradients(GradCheck{
      .node = {.op = "Clip", .inputs = {x, Tensor::scalar<float>(-0.5f), Tensor::scalar<float>(0.7f)}, .opset = 11},
      .wrt = {0}});
  // Min omitted, max given (opset 13).
  check_gradients(GradCheck{
      .node = {.op = "Clip", .inputs = {x, Tensor(), Tensor::scalar<float>(0.7f)}, .opset = 13}, .wrt = {0}});
  // Neither bound: identity.
  check_gradients(GradCheck{.node = {.op = "Clip", .inputs = {x}, .opset = 13}, .wrt = {0}});
}

TEST(GradElementwise, ClipPassesTheGradientOnlyStrictlyInside) {
  const Tensor x = ft({5}, {-2.0f, -0.4f, 0.0f, 0.6f, 2.0f});
  const Tensor g = ft({5}, {1, 2, 3, 4, 5});
  const auto d = node_gradients(
      {.op = "Clip", .inputs = {x, Tensor::scalar<float>(-0.5f), Tensor::scalar<float>(0.7f)}, .opset = 13}, {0},
      {g});
  EXPECT_VALUES_NEAR(d[0], (std::vector<float>{0, 2, 3, 4, 0}), 0.0f);
}

TEST(GradElementwise, IdentityDropoutAndFloatCast) {
  const std::vector<float> x = away_from(kN, 23, -2, 2, {});
  check_unary("Identity", x);
  check_unary("Identity", x, {}, 13);
  check_unary("Cast", x, {ai("to", 1)}, 13);
  check_unary("Cast", x, {ai("to", 1)}, 6);
  // Dropout with its mask output (bool, no gradient), attribute ratio before 12, input from 12.
  check_gradients(GradCheck{
      .node = {.op = "Dropout", .inputs = {ft(kShape, x)}, .attrs = {af("ratio", 0.3f)}, .outputs = 2, .opset = 10},
      .wrt = {0}});
  check_gradients(GradCheck{.node = {.op = "Dropout",
                                     .inputs = {ft(kShape, x), Tensor::scalar<float>(0.3f)},
                                     .outputs = 2,
                                     .opset = 13},
                            .wrt = {0}});
}

TEST(GradElementwise, IdentityPassesTheSeedThroughExactly) {
  const Tensor g = ft({2, 2}, {1.5f, -2.0f, 3.25f, 0.0f});
  for (const char* op : {"Identity", "Dropout"}) {
    SCOPED_TRACE(op);
    const auto d = node_gradients({.op = op, .inputs = {ft({2, 2}, {9, 8, 7, 6})}, .opset = 13}, {0}, {g});
    EXPECT_VALUES_NEAR(d[0], (std::vector<float>{1.5f, -2.0f, 3.25f, 0.0f}), 0.0f);
  }
}

TEST(GradElementwise, CastToAnotherTypeEndsTheGradientPath) {
  // float -> int64 and float -> double outputs are not float32: no gradient reaches the input.
  const std::vector<float> x = away_from(kN, 24, -3, 3, {});
  check_unary("Cast", x, {ai("to", 7)}, 13);
  check_unary("Cast", x, {ai("to", 11)}, 13);
  const auto d = node_gradients({.op = "Cast", .inputs = {ft({2}, {1.5f, 2.5f})}, .attrs = {ai("to", 11)}, .opset = 13},
                                {0}, {Tensor()});
  EXPECT_VALUES_NEAR(d[0], (std::vector<float>{0, 0}), 0.0f);
}

TEST(GradElementwise, PowBroadcastBaseAndExponent) {
  const Tensor a = ft(kShape, away_from(kN, 25, 0.5f, 2.0f, {}));
  // Same shape, [3,1] and [1] exponents, and a base broadcast against a larger exponent.
  check_gradients(GradCheck{.node = {.op = "Pow", .inputs = {a, ft(kShape, away_from(kN, 26, -2, 2, {}))}}});
  check_gradients(GradCheck{.node = {.op = "Pow", .inputs = {a, ft({3, 1}, {-1.5f, 0.5f, 2.5f})}}});
  check_gradients(GradCheck{.node = {.op = "Pow", .inputs = {a, ft({1}, {1.7f})}}});
  check_gradients(GradCheck{.node = {.op = "Pow", .inputs = {ft({3, 1}, {0.6f, 1.3f, 1.9f}), ft(kShape, rnd(kN, 27))}}});
  // Exponent 2 (the forward's Square path).
  check_gradients(GradCheck{.node = {.op = "Pow", .inputs = {a, ft({}, {2.0f})}}, .wrt = {0}});
}

TEST(GradElementwise, PowNegativeBaseIntegerExponentAndLegacyBroadcast) {
  // Negative bases with an int64 exponent (opset 12+: the exponent has its own type).
  const Tensor a = ft(kShape, away_from(kN, 28, -2, 2, {0}));
  check_gradients(GradCheck{.node = {.op = "Pow", .inputs = {a, ints64({1}, {3})}, .opset = 13}, .wrt = {0}});
  // Negative bases with a float exponent 2: only the base is differentiable there.
  check_gradients(GradCheck{.node = {.op = "Pow", .inputs = {a, ft({1}, {2.0f})}, .opset = 13}, .wrt = {0}});
  // Opset 6: B of shape [3] aligned to A's axis 1.
  const Tensor pos = ft(kShape, away_from(kN, 29, 0.5f, 2.0f, {}));
  check_gradients(GradCheck{.node = {.op = "Pow",
                                     .inputs = {pos, ft({3}, {0.5f, 1.5f, -1.0f})},
                                     .attrs = {ai("broadcast", 1), ai("axis", 1)},
                                     .opset = 6}});
}

TEST(GradElementwise, PowExactValuesWithAScalarExponentShapedOne) {
  // y = a^b, b of shape [1]: da = g·b·a^(b−1), db = Σ g·a^b·ln a over a > 0 only.
  const Tensor a = ft({2, 2}, {1.0f, 2.0f, 3.0f, -2.0f});
  const Tensor g = ft({2, 2}, {1.0f, 2.0f, -1.0f, 0.5f});
  const auto d = node_gradients({.op = "Pow", .inputs = {a, ft({1}, {2.0f})}}, {0, 1}, {g});
  ASSERT_EQ(d[1].shape(), (Shape{1}));
  EXPECT_VALUES_NEAR(d[0], (std::vector<float>{2.0f, 8.0f, -6.0f, -2.0f}), 1e-6f);
  const float db = 2.0f * 4.0f * std::log(2.0f) - 9.0f * std::log(3.0f);  // a = 1 adds 0, a = -2 is skipped
  EXPECT_VALUES_NEAR(d[1], (std::vector<float>{db}), 1e-5f);
}

}  // namespace
}  // namespace qtool::testing
