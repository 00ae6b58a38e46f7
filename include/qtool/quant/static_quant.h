// Static (calibrated) W8A8 / W8A16 quantization of a whole model: prepare -> calibrate -> place
// Q/DQ -> check on held-out data (the quality guard) -> keep broken tensors in float.
//
// The pipeline, and why each step is there:
//  1. prepare_model: remove_initializer_inputs, upgrade_opset (per-channel DequantizeLinear needs
//     opset 13; 16-bit Q/DQ needs 21), eliminate_identity, fold_constants, fold_batchnorm.
//  2. calibration on the prepared model (calib::calibrate with the chosen method, asymmetric
//     ranges for uint8/uint16 activations, symmetric for int8/int16), or ranges from a file
//     matched by tensor name;
//  3. with `cle`: cross-layer equalization (passes/cross_layer_equalization.h) of the prepared
//     model before calibration (the equalized model is calibrated and emitted; the guard compares
//     with the unequalized one);
//  4. emit_qdq (qdq.h); with `bias_correction`: the per-channel mean error of each quantized
//     Conv/Gemm (measured per layer on FP32 inputs from the calibration samples) is subtracted from
//     its bias (quant/bias_correction.h), also on a model the guard emits again;
//  5. the quality guard: the prepared FP32 model and the quantized model run on held-out samples
//     with qtool's executor; per output SQNR and top-1 agreement (classifier-like outputs: the
//     last non-unit axis holds the classes). When agreement or SQNR is poor, per-tensor
//     sensitivity (each quantized activation group alone, fake-quantized in the FP32 model)
//     finds the tensors whose quantization ruins the output; they are kept in float and the
//     model is emitted again. What it did goes into the result's `actions`.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "qtool/calib/ranges.h"
#include "qtool/data/sample_source.h"
#include "qtool/ir/graph.h"
#include "qtool/quant/qdq.h"

namespace qtool::quant {

/// Options of quantize_static (the CLI maps its flags onto these).
struct StaticQuantConfig {
  QdqOptions qdq;
  std::string method = "minmax";     ///< calibration range method (calib::range_methods())
  double percentile = 99.999;        ///< for method "percentile"
  /// Ranges read from a file instead of calibrating (matched by tensor name; others stay float).
  const calib::RangesFile* ranges = nullptr;
  bool guard = true;                 ///< run the quality guard
  double holdout_fraction = 0.1;     ///< part of the samples held out for the guard
  size_t min_holdout = 16;
  /// Guard thresholds that trigger the sensitivity search.
  double min_top1_agreement = 0.9;   ///< fraction
  double min_sqnr_db = 15.0;
  /// Largest number of activation groups the guard may keep in float.
  size_t max_float_groups = 8;
  /// Cross-layer equalization of Conv pairs before calibration (passes/cross_layer_equalization.h).
  bool cle = false;
  /// With cle: replace Clip(0, 6) by Relu inside equalizable pairs, as DFQ does (changes the float model).
  bool cle_replace_relu6 = false;
  /// Empirical per-layer bias correction after Q/DQ placement (quant/bias_correction.h).
  bool bias_correction = false;
  size_t bias_correction_samples = 64;  ///< calibration samples the correction averages over
  int threads = 1;
};

/// Agreement of one output on the held-out samples.
struct OutputAgreement {
  std::string name;
  double sqnr_db = 0.0;              ///< +inf when identical
  double top1_agreement = -1.0;      ///< fraction; < 0 when the output is not classifier-like
  int64_t samples = 0;
};

/// What quantize_static did.
struct StaticQuantResult {
  QdqSummary qdq;
  std::vector<OutputAgreement> outputs;  ///< empty when the guard did not run
  int64_t calib_samples = 0;
  int64_t holdout_samples = 0;
  std::vector<std::string> actions;      ///< guard decisions, CLE/bias-correction notes
  std::vector<std::string> warnings;     ///< things the user must read (poor agreement...)
  /// With cle: the equalized float weights (initializer name -> tensor, float, >= 16 elements),
  /// which the int8 weights approximate (the input model's weights no longer match them).
  std::map<std::string, Tensor> equalized_weights;
  /// True when the guard measured the final model as broken (agreement < 50% or SQNR < 5 dB).
  bool looks_broken = false;
  /// Smallest top-1 agreement over classifier-like outputs (fraction), or -1.
  double min_top1_agreement() const;
};

/// The pre-quantization passes (see the header comment); `target_opset` is 13 for 8-bit and 21
/// for 16-bit activations. Returns the number of rewrites.
size_t prepare_model(ir::Model& model, int64_t target_opset);

/// Quantizes `model` (already prepared) in place. `samples` is the calibration set; the guard
/// holds out its last max(min_holdout, holdout_fraction·n) samples (all samples serve both roles
/// when fewer than 2·min_holdout are given, which the result notes). Throws kConfig for bad
/// options, kInvalidInput for bad samples.
StaticQuantResult quantize_static(ir::Model& model, data::SampleSource& samples, const StaticQuantConfig& config);

/// Runs both models on `samples` and compares their outputs (by position).
std::vector<OutputAgreement> compare_models(const ir::Model& reference, const ir::Model& candidate,
                                            data::SampleSource& samples, int threads = 1);

/// Ranges by value identity from a ranges file (matched by tensor name in the main graph).
RangeMap ranges_for_model(const ir::Model& model, const calib::RangesFile& file);

}  // namespace qtool::quant
