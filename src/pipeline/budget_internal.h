// The budget search's pieces shared by the weight-only path (budget_search.cc) and the static path's
// --keep-int8-speed (static_path.cc); not a public header.
#pragma once

#include <cmath>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "internal.h"
#include "qtool/pipeline/sensitivity.h"
#include "qtool/pipeline/budget.h"
#include "qtool/quant/budget.h"
#include "qtool/quant/lowbit.h"

namespace qtool::pipeline::detail {

/// Held-out samples each (layer, form) is measured on (at most).
inline constexpr size_t kBudgetSamples = 16;

/// Relative output noise power from the lowest output SQNR (0 when exact, huge when non-finite):
/// the budget search's additive cost.
inline double noise_of(const Quality& q) {
  if (std::isnan(q.sqnr_db) || q.sqnr_db == -std::numeric_limits<double>::infinity()) return 1e6;
  if (q.sqnr_db == std::numeric_limits<double>::infinity()) return 0.0;
  return std::pow(10.0, -q.sqnr_db / 10.0);
}
inline double sqnr_of_noise(double noise) {
  return noise > 0 ? -10.0 * std::log10(noise) : std::numeric_limits<double>::infinity();
}

/// The weights' byte budget of a bits-per-weight target over `params` weights.
int64_t bits_per_weight_budget(const SizeBudget& budget, int64_t params);

/// A file-size target: solves for `target - rest` bytes of weights (`rest`: a first guess of what
/// the rest of the file takes), has `write` write the plan and return the file's size, corrects
/// `rest` by what the file showed, and repeats (at most `attempts` writes) until the file is within
/// the target and above 98% of it, or nothing is left to correct. `keep(p, weight_budget)` is called
/// right after a write whose file fits and is larger than any before (the caller keeps what it
/// wrote). Returns the kept plan; throws kConfig when the target is below what the rest takes or
/// below the smallest plan before any plan fitted.
std::optional<quant::BudgetPoint> fit_file_size(const std::vector<quant::BudgetLayer>& layers, const SizeBudget& budget,
                                                int64_t target, int64_t rest, int attempts,
                                                const std::function<int64_t(const quant::BudgetPoint&)>& write,
                                                const std::function<void(const quant::BudgetPoint&, int64_t)>& keep);

/// Fills the summary's chosen point, bits per weight (over every layer, float ones at 32) and
/// layers per format.
void summarize_choice(report::BudgetSummary& sum, const std::vector<quant::BudgetLayer>& layers,
                      const quant::BudgetPoint& chosen);

struct BudgetSearchInputs {
  const QuantizeJob& job;
  const ir::Model& fp32;               ///< the float model (prepared), never modified
  const quant::WeightOnlyConfig& cfg;  ///< the run's configuration, defaults resolved
  data::SampleSource* held_out = nullptr;
  /// One quantization of a model with a configuration (the path's own, calibration included).
  std::function<quant::WeightOnlyReport(ir::Model&, const quant::WeightOnlyConfig&)> quantize;
};

struct BudgetSearchResult {
  quant::LayerPlanMap plan;                 ///< every searched weight's form ("budget search")
  bool cast_form = false;                   ///< the forms were measured (and must be written) in the Cast form
  report::BudgetSummary summary;
  std::vector<std::string> actions;
  /// The written plan, untuned, when the search already quantized it and nothing is tuned after.
  std::optional<ir::Model> model;
  std::optional<quant::WeightOnlyReport> report;
};

/// Measures every layer at every form of the menu and solves for the job's budget (pipeline/budget.h).
BudgetSearchResult search_budget(const BudgetSearchInputs& in);

}  // namespace qtool::pipeline::detail
