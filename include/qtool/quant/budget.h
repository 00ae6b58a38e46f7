// Mixed precision under a size budget: the solver of the budget search (qtool quantize
// --target-size / --target-bpw).
//
// Given: layers, each with candidate forms of its weight (a format row or float), each candidate
//   with its stored bytes and its measured cost: the output noise the model shows on held-out
//   samples when only that layer takes that form (pipeline/budget_search.cc measures it; here it
//   is just a number, lower is better, assumed additive across layers: independent rounding noise
//   adds in power to first order).
// Execute:
//   - budget_curve: the Pareto curve of (total bytes, total predicted noise). Every layer starts at
//     its smallest candidate; upgrades along each layer's lower convex hull are taken in order of
//     noise saved per byte added (the Lagrangian solutions: for every λ, each layer at
//     argmin noise + λ·bytes), one curve point per upgrade.
//   - solve_budget: the better of the curve's last point within the budget and the exact
//     multiple-choice knapsack (least total noise, one candidate per layer) on a grid of at most
//     8192 byte units (candidates' bytes rounded up, so its plan fits); then a touch-up: while any
//     single layer's move to another candidate (on the hull or off it) fits in the bytes left and
//     lowers the noise, the move that lowers it most is made.
// Result: deterministic choices (ties broken by layer order, then candidate order).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace qtool::quant {

struct BudgetCandidate {
  std::string format;  ///< a weight format row name, or "float"
  int64_t bytes = 0;   ///< stored bytes of the weight in this form (levels, scales, zero points, tables)
  double noise = 0.0;  ///< measured cost (relative output noise power); 0 for float
};

struct BudgetLayer {
  std::string weight;  ///< initializer name
  int64_t params = 0;
  std::vector<BudgetCandidate> candidates;  ///< at least one
};

/// One plan: a candidate index per layer, and its totals.
struct BudgetPoint {
  std::vector<size_t> choice;
  int64_t bytes = 0;
  double noise = 0.0;
};

/// The plan of `layers` given by `choice`, with its totals.
BudgetPoint budget_point(const std::vector<BudgetLayer>& layers, std::vector<size_t> choice);

/// The Pareto curve, smallest plan first, largest (every layer at its least-noise candidate) last.
std::vector<BudgetPoint> budget_curve(const std::vector<BudgetLayer>& layers);

/// The least-noise plan found within `budget` bytes (see above). Throws kConfig when even the
/// smallest plan is larger than the budget (the message gives the smallest size).
BudgetPoint solve_budget(const std::vector<BudgetLayer>& layers, int64_t budget);

}  // namespace qtool::quant
