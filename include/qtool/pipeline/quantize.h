// The quantize job: the one place that orders the stages for `qtool quantize`.
//
// Given a typed job (the CLI parsed and validated every option into it), quantize() loads the model,
// checks every output path and every name the options mention before any work, opens and splits
// the samples, runs the static W8A8 path (prepare, calibrate, place Q/DQ, guard) or the weight-only
// path (plan, GPTQ/AWQ/RTN, tuning), saves the model (and the plan), evaluates it on held-out
// samples, builds the report and applies the quality gate the same way on both paths. It prints
// nothing to stdout; a failed gate is returned, not thrown, so the caller shows the report first.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "qtool/core/error.h"
#include "qtool/pipeline/budget.h"
#include "qtool/pipeline/guard.h"
#include "qtool/pipeline/samples.h"
#include "qtool/quant/dynamic.h"
#include "qtool/quant/lowbit.h"
#include "qtool/quant/precision.h"
#include "qtool/quant/static_quant.h"
#include "qtool/report/report.h"

namespace qtool::pipeline {

/// Every option of one quantize run, typed.
struct QuantizeJob {
  std::string model_path, out_path;
  std::string report_path;  ///< "" = no --report file
  std::string ranges_path;  ///< static: ranges from `qtool calibrate` instead of calibrating
  std::string plan_path;    ///< weight-only: --plan
  std::string plan_out;     ///< weight-only: --plan-out
  SampleSpec data;          ///< --calib and the sample options (data.path "" = no samples)
  quant::BitsChoice bits;   ///< --bits; is_int8() = the static path

  // Static path (--bits 8).
  quant::StaticQuantConfig static_cfg;  ///< activation type, per channel, exclusions, method, CLE
  std::optional<bool> bias_correction;  ///< nullopt: on for models with depthwise convs
  std::vector<std::string> op_types;    ///< quantize only these op types ("" = all)
  int activation_bits = 8;
  bool qoperator = false;               ///< --format qoperator

  // Dynamic path (--mode dynamic with --bits 8): quant/dynamic.h.
  bool dynamic = false;
  quant::DynamicOptions dynamic_cfg;

  // Weight-only path.
  quant::WeightOnlyConfig weight_cfg;   ///< formats, algorithm, rules, tuning (plan loaded from plan_path)
  /// Left to the defaults when not given (run_weight_only: by what the model is and whether
  /// calibration data was given; README "Defaults"): the algorithm, zero points, and tuning steps.
  std::optional<quant::WeightAlgorithm> algorithm;
  std::optional<bool> symmetric;
  bool tune_given = false;
  /// --bits < 8 --mode dynamic: MatMul weights as MatMulNBits with this accuracy_level (4: ONNX
  /// Runtime quantizes A to int8 per block on the fly and runs integer dot products); 0 = unset.
  int64_t matmulnbits_accuracy_level = 0;
  /// --target-size / --target-bpw: the per-layer plan is searched to fit it (pipeline/budget.h).
  SizeBudget budget;
  /// --keep-int8-speed: the budget is met on the static path with int8 / int4 weights (W4A8 read as
  /// int8) and 8-bit activations, so the model keeps ONNX Runtime's INT8 kernels.
  bool keep_int8_speed = false;

  bool guard = true;                    ///< held-out quality check / evaluation
  bool per_layer_eval = false;          ///< also per-layer output SQNR (for --json / --report)
  std::optional<double> max_drop;       ///< gate: top-1 agreement drop in points
  /// --min-sqnr given on the weight-only path: the smallest plan of the budget search's forms (within
  /// the size budget when there is one) whose lowest output SQNR on held-out samples reaches it (else
  /// the budget's plan, or the least-noise one, and exit 3).
  std::optional<double> min_sqnr;
  /// The static path's quality floor (guard.h): below it precision is raised (16-bit activations);
  /// when even that cannot reach it the run exits 3 and writes no model unless `force`.
  double floor_sqnr_db = 20.0;          ///< --min-sqnr: every non-classifier output
  double floor_lm_nll_increase = 0.01;  ///< --max-nll-increase / 100: next-token logits of a token model
  OutputMetric floor_metric = OutputMetric::kAuto;  ///< --metric
  double floor_agreement = 0.97;        ///< --min-agreement: every classifier output's top-1 agreement
  double floor_mask_iou = 0.9;          ///< --min-iou: a one-channel probability map's mask IoU
  bool force = false;                   ///< --force: write the model even below the floor
  int threads = 1;
  std::vector<std::string> exclude_nodes, keep_fp;  ///< as given, to check that they name something
  std::map<std::string, std::string> settings;      ///< the options as given, for the report

  /// The static W8A8 path: --bits 8 without pruning or a size budget (those are weight-only).
  bool static_path() const {
    return bits.is_int8() && !dynamic && !weight_cfg.sparsity.active() && (!budget.active() || keep_int8_speed);
  }
};

/// What one run produced: the report, and the quality-gate failure (if any).
struct QuantizeOutcome {
  report::QuantizeReport report;
  std::optional<Error> gate_failure;
};

/// Runs the job (see the header comment). Throws Error for bad input and options.
QuantizeOutcome quantize(const QuantizeJob& job);

}  // namespace qtool::pipeline
