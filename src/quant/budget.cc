// The budget search's solver (quant/budget.h).
#include "qtool/quant/budget.h"

#include <algorithm>
#include <limits>
#include <numeric>
#include <optional>

#include "qtool/core/error.h"

namespace qtool::quant {
namespace {

/// A layer's lower convex hull of (bytes, noise): candidate indices, bytes ascending, noise
/// strictly descending, slopes increasing (each step saves less noise per byte than the last).
std::vector<size_t> lower_hull(const BudgetLayer& layer) {
  std::vector<size_t> order(layer.candidates.size());
  std::iota(order.begin(), order.end(), size_t{0});
  const auto& c = layer.candidates;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return c[a].bytes != c[b].bytes ? c[a].bytes < c[b].bytes : c[a].noise < c[b].noise;
  });
  std::vector<size_t> hull;
  for (size_t i : order) {
    if (!hull.empty() && c[i].noise >= c[hull.back()].noise) continue;  // dominated by a smaller one
    // Drop the last point while it lies on or above the segment from the one before it to this one.
    while (hull.size() >= 2) {
      const auto& p0 = c[hull[hull.size() - 2]];
      const auto& p1 = c[hull.back()];
      const double cross = static_cast<double>(p1.bytes - p0.bytes) * (c[i].noise - p0.noise) -
                           (p1.noise - p0.noise) * static_cast<double>(c[i].bytes - p0.bytes);
      if (cross > 0) break;  // p1 strictly below the segment: keep it
      hull.pop_back();
    }
    hull.push_back(i);
  }
  return hull;
}

/// The smallest candidate of each layer (least noise among equally small ones).
std::vector<size_t> smallest_choice(const std::vector<BudgetLayer>& layers) {
  std::vector<size_t> choice;
  for (const BudgetLayer& l : layers) {
    QTOOL_CHECK(!l.candidates.empty(), ErrorCode::kInternal, "budget: layer '{}' has no candidate", l.weight);
    choice.push_back(lower_hull(l).front());
  }
  return choice;
}

/// Noise saved per byte added by moving from candidate a to b.
double efficiency(const BudgetCandidate& a, const BudgetCandidate& b) {
  const double db = static_cast<double>(b.bytes - a.bytes);
  return db > 0 ? (a.noise - b.noise) / db : (a.noise > b.noise ? 1e300 : 0.0);
}

/// Byte units of the knapsack's table: its capacity axis has at most this many cells.
constexpr int64_t kKnapsackCells = 8192;

/// The multiple-choice knapsack: one candidate per layer, the least total noise within `budget`
/// bytes, exact on a grid of byte units (budget / kKnapsackCells, at least 1), each candidate's
/// bytes rounded up to whole units so that the plan it gives always fits. nullopt when the rounding
/// leaves no plan within the budget.
std::optional<BudgetPoint> knapsack(const std::vector<BudgetLayer>& layers, int64_t budget) {
  const int64_t unit = std::max<int64_t>(1, (budget + kKnapsackCells - 1) / kKnapsackCells);
  const int64_t cap = budget / unit;
  constexpr double kNone = std::numeric_limits<double>::infinity();
  // best[c]: the least noise of the layers so far within c units; pick[i][c]: layer i's candidate there.
  std::vector<double> best(static_cast<size_t>(cap + 1), 0.0), next(best.size());
  std::vector<std::vector<uint16_t>> pick(layers.size(), std::vector<uint16_t>(best.size(), 0));
  for (size_t i = 0; i < layers.size(); ++i) {
    const auto& cands = layers[i].candidates;
    QTOOL_CHECK(cands.size() < 65536, ErrorCode::kInternal, "budget: {} candidates", cands.size());
    std::fill(next.begin(), next.end(), kNone);
    for (size_t k = 0; k < cands.size(); ++k) {
      const int64_t w = (cands[k].bytes + unit - 1) / unit;
      for (int64_t c = w; c <= cap; ++c) {
        const double v = best[static_cast<size_t>(c - w)] + cands[k].noise;
        if (v < next[static_cast<size_t>(c)]) {
          next[static_cast<size_t>(c)] = v;
          pick[i][static_cast<size_t>(c)] = static_cast<uint16_t>(k);
        }
      }
    }
    best.swap(next);
  }
  if (!(best[static_cast<size_t>(cap)] < kNone)) return std::nullopt;
  std::vector<size_t> choice(layers.size());
  int64_t c = cap;
  for (size_t i = layers.size(); i-- > 0;) {
    choice[i] = pick[i][static_cast<size_t>(c)];
    c -= (layers[i].candidates[choice[i]].bytes + unit - 1) / unit;
  }
  return budget_point(layers, std::move(choice));
}

}  // namespace

BudgetPoint budget_point(const std::vector<BudgetLayer>& layers, std::vector<size_t> choice) {
  BudgetPoint p;
  for (size_t i = 0; i < layers.size(); ++i) {
    const BudgetCandidate& c = layers[i].candidates.at(choice.at(i));
    p.bytes += c.bytes;
    p.noise += c.noise;
  }
  p.choice = std::move(choice);
  return p;
}

std::vector<BudgetPoint> budget_curve(const std::vector<BudgetLayer>& layers) {
  struct Step {
    size_t layer, to;
    double eff;
  };
  std::vector<Step> steps;
  for (size_t i = 0; i < layers.size(); ++i) {
    const std::vector<size_t> hull = lower_hull(layers[i]);
    for (size_t k = 1; k < hull.size(); ++k)
      steps.push_back({i, hull[k], efficiency(layers[i].candidates[hull[k - 1]], layers[i].candidates[hull[k]])});
  }
  // The most noise saved per byte first; within a layer the hull's slopes already decrease, and the
  // stable order keeps a layer's steps in hull order when two of its slopes tie.
  std::stable_sort(steps.begin(), steps.end(), [](const Step& a, const Step& b) { return a.eff > b.eff; });
  std::vector<size_t> choice = smallest_choice(layers);
  std::vector<BudgetPoint> curve{budget_point(layers, choice)};
  for (const Step& s : steps) {
    choice[s.layer] = s.to;
    curve.push_back(budget_point(layers, choice));
  }
  return curve;
}

BudgetPoint solve_budget(const std::vector<BudgetLayer>& layers, int64_t budget) {
  const std::vector<BudgetPoint> curve = budget_curve(layers);
  QTOOL_CHECK(curve.front().bytes <= budget, ErrorCode::kConfig,
              "the size budget ({} bytes of weights) is below the smallest plan qtool can write ({} bytes of "
              "weights, every layer at its smallest form)",
              budget, curve.front().bytes);
  BudgetPoint best = curve.front();
  for (const BudgetPoint& p : curve)
    if (p.bytes <= budget && p.noise <= best.noise) best = p;
  // The exact solution on a grid of byte units: it may trade one layer down to raise another,
  // which no point of the curve does (a 4-layer CNN left 10% of its budget unused on the curve).
  if (const std::optional<BudgetPoint> k = knapsack(layers, budget); k && k->bytes <= budget && k->noise < best.noise)
    best = *k;
  // Touch-up: single-layer moves that fit in the bytes left, most noise saved first.
  for (;;) {
    const int64_t left = budget - best.bytes;
    double gain = 0.0;
    size_t layer = 0, to = 0;
    for (size_t i = 0; i < layers.size(); ++i) {
      const BudgetCandidate& now = layers[i].candidates[best.choice[i]];
      for (size_t k = 0; k < layers[i].candidates.size(); ++k) {
        const BudgetCandidate& c = layers[i].candidates[k];
        if (c.bytes - now.bytes > left || now.noise - c.noise <= gain) continue;
        gain = now.noise - c.noise;
        layer = i;
        to = k;
      }
    }
    if (gain <= 0.0) break;
    std::vector<size_t> choice = best.choice;
    choice[layer] = to;
    best = budget_point(layers, std::move(choice));
  }
  return best;
}

}  // namespace qtool::quant
