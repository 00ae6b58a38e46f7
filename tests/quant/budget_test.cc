// The budget search's solver (quant/budget.h): the curve, the choice within a budget, the touch-up.
#include "qtool/quant/budget.h"

#include <gtest/gtest.h>

#include "qtool/core/error.h"

namespace qtool::quant {
namespace {

BudgetLayer layer(const std::string& name, std::vector<BudgetCandidate> c) {
  BudgetLayer l;
  l.weight = name;
  l.params = 100;
  l.candidates = std::move(c);
  return l;
}

// Two layers: "a" is sensitive (its 2-bit form costs a lot), "b" is not.
std::vector<BudgetLayer> two_layers() {
  return {layer("a", {{"float", 400, 0.0}, {"int8", 100, 0.001}, {"int4", 50, 0.02}, {"int2", 25, 0.5}}),
          layer("b", {{"float", 400, 0.0}, {"int8", 100, 0.0001}, {"int4", 50, 0.001}, {"int2", 25, 0.01}})};
}

TEST(BudgetSolver, CurveStartsSmallestEndsBestAndNeverGetsWorse) {
  const auto layers = two_layers();
  const std::vector<BudgetPoint> curve = budget_curve(layers);
  ASSERT_GE(curve.size(), 2u);
  EXPECT_EQ(curve.front().bytes, 50);  // both at int2
  EXPECT_DOUBLE_EQ(curve.front().noise, 0.51);
  EXPECT_EQ(curve.back().bytes, 800);  // both float
  EXPECT_DOUBLE_EQ(curve.back().noise, 0.0);
  for (size_t i = 1; i < curve.size(); ++i) {
    EXPECT_GT(curve[i].bytes, curve[i - 1].bytes) << i;
    EXPECT_LT(curve[i].noise, curve[i - 1].noise) << i;
  }
  // The first upgrade is the sensitive layer's: 0.48 noise saved for 25 bytes.
  EXPECT_EQ(curve[1].choice[0], 2u);
  EXPECT_EQ(curve[1].choice[1], 3u);
}

TEST(BudgetSolver, SpendsTheBudgetOnTheSensitiveLayer) {
  const auto layers = two_layers();
  // 150 bytes: a at int8 (100) + b at int4 (50) beats a int4 + b int8 (0.001 + 0.001 vs 0.02 + 0.0001).
  const BudgetPoint p = solve_budget(layers, 150);
  EXPECT_EQ(p.bytes, 150);
  EXPECT_EQ(layers[0].candidates[p.choice[0]].format, "int8");
  EXPECT_EQ(layers[1].candidates[p.choice[1]].format, "int4");
  EXPECT_NEAR(p.noise, 0.002, 1e-12);
  // 75 bytes: a int4 + b int2.
  const BudgetPoint q = solve_budget(layers, 75);
  EXPECT_EQ(layers[0].candidates[q.choice[0]].format, "int4");
  EXPECT_EQ(layers[1].candidates[q.choice[1]].format, "int2");
  // Never over the budget, and more budget never predicts more noise.
  double last = 1e9;
  for (int64_t b = 50; b <= 900; b += 5) {
    const BudgetPoint r = solve_budget(layers, b);
    EXPECT_LE(r.bytes, b);
    EXPECT_LE(r.noise, last + 1e-15) << b;
    last = r.noise;
  }
}

TEST(BudgetSolver, TouchUpUsesBytesTheHullLeaves) {
  // A non-convex layer: its middle form is off the hull, but it fits the bytes left after the curve.
  std::vector<BudgetLayer> layers{
      layer("a", {{"int2", 10, 1.0}, {"int3", 20, 0.9}, {"int8", 40, 0.0}}),
  };
  // The hull goes int2 -> int8 directly (int3 lies above the segment); with 25 bytes only the
  // touch-up reaches int3.
  const BudgetPoint p = solve_budget(layers, 25);
  EXPECT_EQ(layers[0].candidates[p.choice[0]].format, "int3");
  EXPECT_EQ(p.bytes, 20);
}

TEST(BudgetSolver, KnapsackTradesOneLayerDownToRaiseAnother) {
  // The curve upgrades "a" first (0.07 noise per byte against b's 0.05): (30 B, 1.3), then b to
  // (50 B, 0.3). Within 40 bytes the curve stops at 1.3 and no single move fits; "a" small with
  // "b" at int8 is 40 bytes and 1.0: only the knapsack finds it.
  std::vector<BudgetLayer> layers{layer("a", {{"int2", 10, 1.0}, {"int4", 20, 0.3}}),
                                  layer("b", {{"int2", 10, 1.0}, {"int8", 30, 0.0}})};
  const BudgetPoint p = solve_budget(layers, 40);
  EXPECT_EQ(layers[0].candidates[p.choice[0]].format, "int2");
  EXPECT_EQ(layers[1].candidates[p.choice[1]].format, "int8");
  EXPECT_EQ(p.bytes, 40);
  EXPECT_DOUBLE_EQ(p.noise, 1.0);
  // A budget far beyond the table's 8192 cells (units of 2 bytes here) still never overflows it.
  std::vector<BudgetLayer> big;
  for (int i = 0; i < 40; ++i)
    big.push_back(layer("l" + std::to_string(i), {{"int2", 401, 1.0 + i}, {"int4", 803, 0.1}, {"int8", 1605, 0.0}}));
  for (int64_t b : {16040, 16500, 30000, 64200, 64201}) {
    const BudgetPoint r = solve_budget(big, b);
    EXPECT_LE(r.bytes, b) << b;
  }
  EXPECT_DOUBLE_EQ(solve_budget(big, 64200).noise, 0.0);  // every layer at int8: 40 x 1605 bytes
}

TEST(BudgetSolver, TooSmallABudgetNamesTheSmallestPlan) {
  const auto layers = two_layers();
  try {
    solve_budget(layers, 49);
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kConfig);
    EXPECT_NE(std::string(e.what()).find("50 bytes"), std::string::npos) << e.what();
  }
}

TEST(BudgetSolver, DominatedFormsAreNeverChosen) {
  // "bad" is bigger and noisier than "int4": no budget picks it.
  std::vector<BudgetLayer> layers{layer("a", {{"int4", 50, 0.1}, {"bad", 60, 0.2}, {"int8", 100, 0.01}})};
  for (int64_t b = 50; b < 100; ++b) EXPECT_NE(layers[0].candidates[solve_budget(layers, b).choice[0]].format, "bad");
  EXPECT_EQ(budget_curve(layers).size(), 2u);
}

}  // namespace
}  // namespace qtool::quant
