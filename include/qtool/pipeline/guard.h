// The static path's quality guard: checks the quantized model against FP32 on held-out samples
// and keeps in float the activations whose quantization ruins it.
//
// Given the prepared FP32 model (the reference), the calibrated float model the quantizer emits
// from (quant::CalibratedModel; with CLE the equalized copy) and its first emission:
//  1. both models run on the held-out samples through report::compare_models (the one comparison,
//     QDQ groups fused as ONNX Runtime runs them): per output SQNR, and top-1 agreement for
//     classifier-like outputs ([N,C] or [N,C,1,1]). A NaN/inf in the quantized output counts as
//     maximal error (SQNR -inf), so a model that produces NaN always looks broken;
//  2. when an output is poor (top-1 agreement < min_top1_agreement or SQNR < min_sqnr_db), the
//     sensitivity probe: each of the kMaxSuspects widest-range quantized activations alone is
//     quantized (every other activation float) and run, unfused, on the first kProbeSamples
//     held-out samples against FP32 outputs computed once; its score is the lowest output SQNR.
//     Wide ranges (a -1e9 mask, mixed scales) are the usual culprits, and the bound keeps the
//     search to a fixed number of runs;
//  3. activations that alone score below min_sqnr_db + 10 dB are kept in float, worst first, at
//     most max_float_groups of them, together with the quantized inputs of a kept Add/Mul (it runs
//     in float in ONNX Runtime anyway, and quantizing its inputs can still ruin it: a power
//     spectrum re² + im² loses its quiet bins); the model is emitted again (and bias-corrected)
//     and kept if its lowest output SQNR is no worse than the first emission's;
//  4. the model kept looks broken when a classifier output agrees on < 50% of rows or an output's
//     SQNR is < 5 dB; the result then carries a warning.
#pragma once

#include <cstddef>
#include <set>
#include <string>
#include <vector>

#include "qtool/data/sample_source.h"
#include "qtool/ir/graph.h"
#include "qtool/quant/static_quant.h"
#include "qtool/report/compare.h"

namespace qtool::pipeline {

/// How the guard splits the samples and when it acts.
struct GuardOptions {
  double holdout_fraction = 0.1;     ///< part of the samples held out for the guard
  size_t min_holdout = 16;           ///< fewest held-out samples (else all samples serve both roles)
  double min_top1_agreement = 0.9;   ///< fraction; below it the sensitivity probe runs
  double min_sqnr_db = 15.0;         ///< below it the sensitivity probe runs
  size_t max_float_groups = 8;       ///< most activations (before Add/Mul partners) kept in float
  bool search = true;                ///< false: only measure (a --plan run: the plan decides)
};

/// Which samples calibrate and which the guard checks on (indices into the run's samples).
struct GuardSplit {
  std::vector<size_t> calib, held_out;
  std::string warning;  ///< set when the guard checks on the calibration samples themselves
};

/// The split of `n` samples: with `guard` and n >= 2·min_holdout, the last
/// min(n/2, max(min_holdout, ceil(holdout_fraction·n))) samples are held out; with fewer, all of
/// them serve both roles (and `warning` says so); without `guard`, all calibrate.
GuardSplit split_for_guard(size_t n, bool guard, const GuardOptions& options = {});

/// What the guard measured and did.
struct GuardResult {
  report::CompareResult comparison;   ///< of the model kept, on the held-out samples (no per-layer)
  std::set<std::string> kept_float;   ///< activations kept in float in the model kept
  std::vector<std::string> actions;   ///< probe decisions, in order
  std::vector<std::string> warnings;  ///< "THE QUANTIZED MODEL LOOKS BROKEN ..."
  bool looks_broken = false;
  /// Lowest top-1 agreement over classifier-like outputs (fraction), NaN when there is none.
  double min_top1_agreement() const;
};

/// Runs the guard (see the header comment) on `emitted`, the first emission of `calibrated`,
/// already bias-corrected; replaces it by the emission with tensors kept in float when that is
/// kept. `calib` is what a new emission is bias-corrected on. Needs a non-empty `held_out`.
GuardResult run_guard(const ir::Model& reference, const quant::CalibratedModel& calibrated,
                      const quant::StaticQuantConfig& config, data::SampleSource& calib, data::SampleSource& held_out,
                      quant::StaticEmission& emitted, const GuardOptions& options = {});

/// The quality floor of a static model (README "Quality floor"): each output judged by the metric
/// that fits it: a classifier-like output ([N,C] or [N,C,1,1]) by its top-1 agreement with FP32,
/// any other output (dense maps, detector heads, regression, recurrent state) by its SQNR.
struct QualityFloor {
  double min_sqnr_db = 20.0;
  double min_top1_agreement = 0.97;
};

/// The guard's single figure for a comparison, lower is worse: the lowest output SQNR in dB (an
/// output with nothing measured counts as exact).
double worst_output_sqnr(const report::CompareResult& result);
/// True when every output of `result` meets `floor`; otherwise `why` names the outputs below it.
bool meets_floor(const report::CompareResult& result, const QualityFloor& floor, std::string* why);

/// True when an output is poor enough for the sensitivity probe (step 2).
bool looks_poor(const report::CompareResult& result, const GuardOptions& options = {});
/// True when the model looks broken (step 4).
bool looks_broken(const report::CompareResult& result);
/// "name: SQNR 21.3 dB, top-1 agreement 98.0%; ..." for the log and the actions.
std::string describe_outputs(const report::CompareResult& result);

}  // namespace qtool::pipeline
