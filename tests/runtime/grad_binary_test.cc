// Gradients of the binary family against finite differences (grad_check.h), over the numpy
// broadcasting patterns, the opset < 7 axis alignment, Where and the variadic ops; plus exact
// values for broadcast reductions and Max/Min ties.
#include <gtest/gtest.h>

#include "grad_check.h"
#include "grad_direct.h"

namespace qtool::testing {
namespace {

/// Shape pairs covering: same shape, [3,1] and [1] against [2,3,4], a broadcast first input, a
/// rank-0 scalar and both inputs broadcast ([4,1] + [1,5]).
struct ShapePair {
  Shape a, b;
};
const std::vector<ShapePair> kPairs = {
    {{2, 3, 4}, {2, 3, 4}}, {{2, 3, 4}, {3, 1}}, {{2, 3, 4}, {1}}, {{3, 1}, {2, 3, 4}},
    {{2, 3, 4}, {}},        {{4, 1}, {1, 5}},    {{2, 1, 4}, {3, 1}}};

/// b values kept in [0.5, 1.5] so Div stays smooth.
Tensor positive(const Shape& s, uint32_t seed) { return ft(s, away_from(shape_numel(s), seed, 0.5f, 1.5f, {})); }

void check_binary(const char* op, bool positive_b) {
  uint32_t seed = 40;
  for (const ShapePair& p : kPairs) {
    SCOPED_TRACE(std::string(op) + " " + shape_str(p.a) + " with " + shape_str(p.b));
    const Tensor a = ft(p.a, rnd(shape_numel(p.a), seed++));
    const Tensor b = positive_b ? positive(p.b, seed++) : ft(p.b, rnd(shape_numel(p.b), seed++));
    check_gradients(GradCheck{.node = {.op = op, .inputs = {a, b}}});
    // Only one input asked for.
    check_gradients(GradCheck{.node = {.op = op, .inputs = {a, b}}, .wrt = {1}});
  }
}

TEST(GradBinary, AddBroadcast) { check_binary("Add", false); }
TEST(GradBinary, SubBroadcast) { check_binary("Sub", false); }
TEST(GradBinary, MulBroadcast) { check_binary("Mul", false); }
TEST(GradBinary, DivBroadcast) { check_binary("Div", true); }

TEST(GradBinary, LegacyAxisBroadcastBeforeOpset7) {
  // Opset 6, broadcast=1, axis=1: B [3] is aligned to A [2,3,4] as [3,1].
  const Tensor a = ft({2, 3, 4}, rnd(24, 60));
  for (const char* op : {"Add", "Sub", "Mul", "Div"}) {
    SCOPED_TRACE(op);
    check_gradients(GradCheck{.node = {.op = op,
                                       .inputs = {a, positive({3}, 61)},
                                       .attrs = {ai("broadcast", 1), ai("axis", 1)},
                                       .opset = 6}});
    // Suffix alignment without an axis, and equal shapes without broadcast.
    check_gradients(GradCheck{
        .node = {.op = op, .inputs = {a, positive({4}, 62)}, .attrs = {ai("broadcast", 1)}, .opset = 6}});
    check_gradients(GradCheck{.node = {.op = op, .inputs = {a, positive({2, 3, 4}, 63)}, .opset = 6}});
  }
}

TEST(GradBinary, AddBroadcastGradientsAreTheRowAndColumnSums) {
  // [4,1] + [1,5] -> [4,5] with g[i][j] = 5i + j: dA[i] = Σ_j g = 25i + 10, dB[j] = Σ_i g = 30 + 4j.
  std::vector<float> gv(20);
  for (int i = 0; i < 20; ++i) gv[i] = static_cast<float>(i);
  const NodeRun add{.op = "Add", .inputs = {ft({4, 1}, {1, 2, 3, 4}), ft({1, 5}, {0, 0, 0, 0, 0})}};
  const auto d = node_gradients(add, {0, 1}, {ft({4, 5}, gv)});
  ASSERT_EQ(d[0].shape(), (Shape{4, 1}));
  ASSERT_EQ(d[1].shape(), (Shape{1, 5}));
  EXPECT_VALUES_NEAR(d[0], (std::vector<float>{10, 35, 60, 85}), 0.0f);
  EXPECT_VALUES_NEAR(d[1], (std::vector<float>{30, 34, 38, 42, 46}), 0.0f);
  // Mul by the same shapes: dA[i] = Σ_j g·b[j], dB[j] = Σ_i g·a[i].
  const NodeRun mul{.op = "Mul", .inputs = {ft({4, 1}, {1, 2, 3, 4}), ft({1, 5}, {1, 0, 0, 0, 2})}};
  const auto m = node_gradients(mul, {0, 1}, {ft({4, 5}, gv)});
  EXPECT_VALUES_NEAR(m[0], (std::vector<float>{0 + 2 * 4, 5 + 2 * 9, 10 + 2 * 14, 15 + 2 * 19}), 0.0f);
  // dB[j] = Σ_i (5i + j)(i + 1) = 5·(0 + 2 + 6 + 12) + j·10 = 100 + 10j.
  EXPECT_VALUES_NEAR(m[1], (std::vector<float>{100, 110, 120, 130, 140}), 0.0f);
  // Sub of a scalar: dB = −Σ g = −190.
  const auto s = node_gradients({.op = "Sub", .inputs = {ft({4, 5}, gv), ft({}, {1})}}, {1}, {ft({4, 5}, gv)});
  EXPECT_VALUES_NEAR(s[0], (std::vector<float>{-190}), 0.0f);
}

TEST(GradBinary, LargeBroadcastOnAPoolMatchesTheClosedForm) {
  // 96 x 700 = 67200 elements: above the parallel grain, with chunk edges inside rows.
  const int64_t rows = 96, cols = 700;
  const Tensor a = ft({rows, cols}, rnd(rows * cols, 110));
  const Tensor b = ft({cols}, rnd(cols, 111));
  const Tensor g = ft({rows, cols}, rnd(rows * cols, 112));
  for (int threads : {1, 4}) {
    SCOPED_TRACE(threads);
    const auto d = node_gradients({.op = "Mul", .inputs = {a, b}, .threads = threads}, {0, 1}, {g});
    const float* da = d[0].data<float>();
    const float* db = d[1].data<float>();
    const float* pa = a.data<float>();
    const float* pb = b.data<float>();
    const float* pg = g.data<float>();
    for (int64_t i = 0; i < rows * cols; ++i) ASSERT_EQ(da[i], pg[i] * pb[i % cols]) << i;
    for (int64_t j = 0; j < cols; ++j) {
      double s = 0;
      for (int64_t i = 0; i < rows; ++i) s += static_cast<double>(pg[i * cols + j]) * pa[i * cols + j];
      ASSERT_NEAR(db[j], s, 1e-4) << j;
    }
  }
}

Tensor bools(Shape s, std::vector<bool> v) { return Tensor::from_vector<bool>(std::move(s), v); }

TEST(GradBinary, WhereRoutesTheGradientByTheCondition) {
  const Tensor x = ft({2, 3, 4}, rnd(24, 70));
  const Tensor y = ft({2, 3, 4}, rnd(24, 71));
  std::vector<bool> c24(24);
  for (int i = 0; i < 24; ++i) c24[i] = (i * 7) % 3 == 0;
  check_gradients(GradCheck{.node = {.op = "Where", .inputs = {bools({2, 3, 4}, c24), x, y}}, .wrt = {1, 2}});
  // Broadcast condition [3,1], x full, y [1]; and x [4] with a full condition.
  check_gradients(GradCheck{.node = {.op = "Where", .inputs = {bools({3, 1}, {true, false, true}), x, ft({1}, {0.3f})}},
                            .wrt = {1, 2}});
  check_gradients(GradCheck{.node = {.op = "Where", .inputs = {bools({2, 3, 4}, c24), ft({4}, rnd(4, 72)), y}},
                            .wrt = {1, 2}});
  // Exact: y [1] collects Σ g over the false positions.
  const auto d = node_gradients({.op = "Where", .inputs = {bools({4}, {true, false, false, true}), ft({4}, {1, 2, 3, 4}),
                                                           ft({1}, {0})}},
                                {1, 2}, {ft({4}, {1, 2, 4, 8})});
  EXPECT_VALUES_NEAR(d[0], (std::vector<float>{1, 0, 0, 8}), 0.0f);
  EXPECT_VALUES_NEAR(d[1], (std::vector<float>{6}), 0.0f);
}

TEST(GradBinary, MaxMinVariadicBroadcastAwayFromTies) {
  // Three inputs [2,3], [3], [1] whose values differ by at least 0.1 wherever they meet.
  const Tensor a = ft({2, 3}, {-0.9f, 0.4f, 1.2f, 0.8f, -0.3f, 0.05f});
  const Tensor b = ft({3}, {0.2f, -0.6f, 0.7f});
  const Tensor c = ft({1}, {0.55f});
  for (const char* op : {"Max", "Min"}) {
    SCOPED_TRACE(op);
    check_gradients(GradCheck{.node = {.op = op, .inputs = {a, b, c}, .opset = 13}});
    check_gradients(GradCheck{.node = {.op = op, .inputs = {a, b}, .opset = 13}, .wrt = {1}});
    check_gradients(GradCheck{.node = {.op = op, .inputs = {a}, .opset = 13}});
    // Opset 6 (same shapes only).
    check_gradients(
        GradCheck{.node = {.op = op, .inputs = {a, ft({2, 3}, {-0.5f, 0.1f, 1.5f, 0.3f, 0.2f, -0.4f})}, .opset = 6}});
  }
}

TEST(GradBinary, MaxMinTiesGoToTheFirstInput) {
  const Tensor x = ft({3}, {1, 2, 3});
  const Tensor g = ft({3}, {1, 10, 100});
  for (const char* op : {"Max", "Min"}) {
    SCOPED_TRACE(op);
    // Inputs z, x, x: x ties with itself everywhere, and z ties with both at position 1.
    const Tensor z = ft({3}, {std::string(op) == "Max" ? 0.0f : 5.0f, 2.0f, std::string(op) == "Max" ? 0.0f : 5.0f});
    const auto d = node_gradients({.op = op, .inputs = {z, x, x}, .opset = 13}, {0, 1, 2}, {g});
    // Position 1: z == x == 2, so z (the first) takes it; elsewhere the first x does.
    EXPECT_VALUES_NEAR(d[0], (std::vector<float>{0, 10, 0}), 0.0f);
    EXPECT_VALUES_NEAR(d[1], (std::vector<float>{1, 0, 100}), 0.0f);
    EXPECT_VALUES_NEAR(d[2], (std::vector<float>{0, 0, 0}), 0.0f);
  }
}

TEST(GradBinary, SumMeanVariadicBroadcast) {
  const Tensor a = ft({2, 3, 4}, rnd(24, 80));
  const Tensor b = ft({3, 1}, rnd(3, 81));
  const Tensor c = ft({1}, rnd(1, 82));
  for (const char* op : {"Sum", "Mean"}) {
    SCOPED_TRACE(op);
    check_gradients(GradCheck{.node = {.op = op, .inputs = {a, b, c}, .opset = 13}});
    check_gradients(GradCheck{.node = {.op = op, .inputs = {a}, .opset = 13}});
    check_gradients(GradCheck{.node = {.op = op, .inputs = {a, ft({2, 3, 4}, rnd(24, 83))}, .opset = 6}});
  }
  // Exact: Mean of three -> each gets g/3 summed over its broadcast dims.
  const auto d = node_gradients({.op = "Mean", .inputs = {ft({2}, {0, 0}), ft({1}, {0}), ft({2}, {0, 0})}, .opset = 13},
                                {0, 1}, {ft({2}, {3, 6})});
  EXPECT_VALUES_NEAR(d[0], (std::vector<float>{1, 2}), 1e-6f);
  EXPECT_VALUES_NEAR(d[1], (std::vector<float>{3}), 1e-6f);
}

}  // namespace
}  // namespace qtool::testing
