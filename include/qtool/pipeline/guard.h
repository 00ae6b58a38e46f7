// The static path's quality guard: checks the quantized model against FP32 on held-out samples
// and, when it is below the quality floor, raises the precision of the tensors that cost the
// most quality until the floor holds.
//
// Given the prepared FP32 model (the reference), the calibrated float model the quantizer emits
// from (quant::CalibratedModel; with CLE the equalized copy) and its first emission:
//  1. both models run on the held-out samples through report::compare_models (the one comparison,
//     QDQ groups fused as ONNX Runtime runs them); each output is judged by the metric that fits
//     it (QualityFloor below). A NaN/inf in the quantized output counts as maximal error;
//  1b. below the target with activations quantized inside If/Loop/Scan bodies, the same choices
//     with the bodies in float are judged on the same rows and kept when they meet the target or
//     score 1 dB higher (again after step 4 when the rounds end below the target);
//  2. below the floor, the sensitivity probe (pipeline/sensitivity.h): every quantized activation
//     (body ones too) alone is fake-quantized on the float model (everything else float); its
//     score is the lowest output SQNR. A tensor that a Reshape/Transpose/MaxPool moves unchanged from one with the same
//     parameters is scored with it; each such group is screened on one held-out sample, and the
//     48 noisiest again on probe_samples. Its noise power
//     10^(-score/10) ranks it, and the noise of the tensors not raised is taken as additive: the
//     first round raises the fewest noisiest tensors whose removal brings the predicted output
//     SQNR to the floor + 6 dB;
//  3. each tensor raised takes the cheapest step that alone scores at least floor + 10 dB:
//     its observed min/max at 8 bits (only when the range method clipped it, as entropy,
//     percentile and mse do, and un-clipping gains 6 dB alone), 16 bits over the observed range
//     (its whole Q/DQ group; ONNX Runtime runs the groups
//     with a 16-bit side in float), or float (with the quantized inputs of a float Add/Mul, which
//     ONNX Runtime runs in float anyway);
//  4. the model is emitted again with those choices, bias-corrected and compared as in 1; below
//     the floor, the next round raises twice as many tensors (at most max_rounds, and never more
//     than all; when all are raised and it still misses, those at 8 bits go to 16 bits once, then
//     the 16-bit ones that score lowest alone at 16 bits are kept in float, 1, 1, 2, 4, ... more
//     per round: many tensors each fine alone at 16 bits can still add up below the floor); the
//     best emission is kept (the first one that meets the floor, else the highest lowest output
//     SQNR);
//  5. the model kept looks broken when a classifier output agrees on < 50% of rows or an output's
//     SQNR is < 5 dB; the result then carries a warning. The static path then tries 16-bit
//     activations everywhere and fails with exit 3 when even that is below the floor.
#pragma once

#include <cstddef>
#include <set>
#include <string>
#include <vector>

#include "qtool/data/sample_source.h"
#include "qtool/ir/graph.h"
#include "qtool/quant/static_quant.h"
#include "qtool/report/compare.h"
#include "qtool/report/report.h"

namespace qtool::pipeline {

/// The quality floor of a static model (README "Quality floor"): each output judged by the metric
/// that fits it: a classifier-like output ([N,C] or [N,C,1,1]) by its top-1 agreement with FP32,
/// any other output (dense maps, detector heads, regression, recurrent state) by its SQNR, and
/// a tensor whose channels fall into families of very different magnitudes (scores beside box
/// coordinates) by the SQNR of each family.
/// How the floor judges outputs (`--metric`): kAuto picks per output as QualityFloor says; the
/// others force one metric wherever it applies: kAgreement judges every classifier-shaped output by
/// top-1 agreement (even with channel families), kSqnr judges every output by SQNR alone (a
/// probability map that looks like [N, C]), kNll judges next-token logits by their NLL increase;
/// outputs the forced metric does not apply to are judged by SQNR.
enum class OutputMetric { kAuto, kAgreement, kSqnr, kNll, kIou };
/// "auto", "agreement", "sqnr", "nll".
const char* output_metric_name(OutputMetric m);
/// The metric a name gives; throws kConfig naming the choices.
OutputMetric parse_output_metric(const std::string& name);

struct QualityFloor {
  double min_sqnr_db = 20.0;
  double min_top1_agreement = 0.97;
  /// A classifier's scores also need this SQNR: a few dozen agreeing rows cannot hide scores
  /// distorted beyond use (a 3 dB logit SQNR agreed on all 16 rows of a digits CNN).
  double min_classifier_sqnr_db = 10.0;
  /// Next-token logits of a token model ([B, T, V] of a model reading only integers) are judged
  /// by the NLL increase on the model's own predictions (report::OutputComparison::lm_nll_increase)
  /// as well as by SQNR.
  double max_lm_nll_increase = 0.01;
  OutputMetric metric = OutputMetric::kAuto;
  /// A recurrent state (report::OutputComparison::recurrent_state) needs min_sqnr_db plus this
  /// (0 for the floor itself; the guard aims higher, GuardOptions::state_target_extra_db).
  double state_extra_db = 0.0;
  /// A dense probability map (report::OutputComparison::mask_iou: [N, 1, H, W] with FP32 values in
  /// [0, 1], mostly near 0 or 1, such as a text or binary segmentation map) is judged by the IoU of its masks
  /// thresholded at 0.5; its SQNR is not held against it (a text detector's map at 12 dB kept its
  /// masks at IoU 0.92). A map whose masks are empty on both sides falls back to SQNR.
  double min_mask_iou = 0.9;
};

/// How the guard splits the samples and when it acts.
struct GuardOptions {
  double holdout_fraction = 0.1;     ///< part of the samples held out for the guard
  size_t min_holdout = 16;           ///< fewest held-out samples (else all samples serve both roles)
  QualityFloor floor;                ///< below it the guard raises precision
  size_t probe_samples = 4;          ///< held-out samples the noisiest tensors are scored on
  size_t max_rounds = 6;             ///< emissions with raised tensors at most
  bool search = true;                ///< false: only measure (a --plan run: the plan decides)
  /// A classifier that meets the floor with disagreements is judged again on up to 150 rows, the
  /// held-out ones then calibration samples (false when the two sets are the same samples).
  bool extend_with_calib = true;
  /// The guard raises tensors until a recurrent state also beats the floor by this much: fed back
  /// at every step of a stream, its error compounds (Silero VAD op15 with its state at 31 dB on
  /// single steps kept 97.2% of its streaming speech decisions; at 39 dB, 99.7%). A target, not
  /// the floor: when no round reaches it, the best model that meets the floor is kept.
  double state_target_extra_db = 15.0;
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
  quant::TensorChoices choices;       ///< the tensors raised in the model kept
  std::vector<std::string> actions;   ///< probe decisions, in order
  std::vector<std::string> warnings;  ///< "THE QUANTIZED MODEL LOOKS BROKEN ..."
  bool looks_broken = false;
  /// Where the guard's time went: its comparisons, the probe, each round's emission (with bias
  /// correction) and comparison, in order ("quantize: guard: ..." rows of the report's timings).
  std::vector<report::Timing> timings;
  /// Lowest top-1 agreement over classifier-like outputs (fraction), NaN when there is none.
  double min_top1_agreement() const;
};

/// Runs the guard (see the header comment) on `emitted`, the first emission of `calibrated`
/// with `choices` (a plan's, else none), already bias-corrected; replaces it by the emission
/// with raised tensors when that is kept. `calib` is what a new emission is bias-corrected on.
/// Needs a non-empty `held_out`.
GuardResult run_guard(const ir::Model& reference, const quant::CalibratedModel& calibrated,
                      const quant::StaticQuantConfig& config, data::SampleSource& calib, data::SampleSource& held_out,
                      quant::StaticEmission& emitted, const GuardOptions& options = {},
                      const quant::TensorChoices& choices = {});

/// The guard's single figure for a comparison, lower is worse: the lowest output SQNR in dB (an
/// output with nothing measured counts as exact).
double worst_output_sqnr(const report::CompareResult& result);
/// True when every output of `result` meets `floor`; otherwise `why` names the outputs below it.
bool meets_floor(const report::CompareResult& result, const QualityFloor& floor, std::string* why);

/// True when the model looks broken (step 5).
bool looks_broken(const report::CompareResult& result);
/// "name: SQNR 21.3 dB, top-1 agreement 98.0%; ..." for the log and the actions.
std::string describe_outputs(const report::CompareResult& result);

}  // namespace qtool::pipeline
