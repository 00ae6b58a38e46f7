// The budget search's entry point for the weight-only path (src/pipeline); not a public header.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "internal.h"
#include "qtool/quant/lowbit.h"

namespace qtool::pipeline::detail {

/// Held-out samples each (layer, form) is measured on (at most).
inline constexpr size_t kBudgetSamples = 16;

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
