// Static (calibrated) W8A8 / W8A16 quantization of a whole model: prepare -> calibrate -> place
// Q/DQ, with the mechanics the pipeline's quality guard needs to emit the model again with some
// activations kept in float (the guard itself, which measures the model on held-out samples, is
// pipeline/guard.h: it sits above report/compare.h).
//
// The steps, and why each is there:
//  1. prepare_model: remove_initializer_inputs, upgrade_opset (per-channel DequantizeLinear needs
//     opset 13; 16-bit Q/DQ needs 21), eliminate_identity, fold_constants, fold_batchnorm.
//  2. calibrate_static: with `cle`, cross-layer equalization (passes/cross_layer_equalization.h)
//     of a copy of the prepared model; then calibration of that float model (calib::calibrate with
//     the chosen method, asymmetric ranges for uint8/uint16 activations, symmetric for int8/int16),
//     or ranges from a file matched by tensor name. The result is the float model every emission
//     starts from, with its ranges.
//  3. emit_static: emit_qdq (qdq.h) on a copy of that float model, with a given set of
//     activations kept in float (empty the first time; the guard's choice later);
//  4. correct_static_biases, with `bias_correction`: the per-channel mean error of each quantized
//     Conv/Gemm (measured per layer on FP32 inputs from the calibration samples) is subtracted from
//     its bias (quant/bias_correction.h).
// quantize_static runs 1-4 once, with nothing kept in float and no guard.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "qtool/calib/ranges.h"
#include "qtool/data/sample_source.h"
#include "qtool/ir/graph.h"
#include "qtool/quant/bias_correction.h"
#include "qtool/quant/qdq.h"

namespace qtool::quant {

/// Options of the static path (the CLI maps its flags onto these).
struct StaticQuantConfig {
  QdqOptions qdq;
  std::string method = "minmax";     ///< calibration range method (calib::range_methods())
  double percentile = 99.999;        ///< for method "percentile"
  /// Ranges read from a file instead of calibrating (matched by tensor name; others stay float).
  const calib::RangesFile* ranges = nullptr;
  /// Cross-layer equalization of Conv pairs before calibration (passes/cross_layer_equalization.h).
  bool cle = false;
  /// With cle: replace Clip(0, 6) by Relu inside equalizable pairs, as DFQ does (changes the float model).
  bool cle_replace_relu6 = false;
  /// Empirical per-layer bias correction after Q/DQ placement (quant/bias_correction.h).
  bool bias_correction = false;
  size_t bias_correction_samples = 64;  ///< calibration samples the correction averages over
  /// int8 weights by GPTQ on the calibration samples (pipeline/static_path.cc; needs per-channel
  /// weights without reduce_range or cle), else rounded to nearest.
  bool gptq_int8 = false;
  int threads = 1;
};

/// The float model every emission starts from, with its calibrated ranges.
struct CalibratedModel {
  /// The prepared model, or with cle its equalized copy (which the int8 weights approximate).
  ir::Model float_model;
  RangeMap ranges;                   ///< keyed by float_model's values
  /// The observed min/max of each calibrated tensor when the method's ranges differ from them
  /// (entropy, percentile, mse clip), for tensors whose clipping ruins the output; else empty.
  RangeMap observed;
  /// With cle: the equalized float weights (initializer name -> tensor, float, >= 16 elements),
  /// which the int8 weights approximate (the input model's weights no longer match them).
  std::map<std::string, Tensor> equalized_weights;
  std::vector<std::string> actions;  ///< CLE and ranges-file notes
  /// Bias correction's per-layer sums on the calibration samples: an emission that changes a few
  /// tensors measures only the layers those touch (quant/bias_correction.h).
  std::shared_ptr<BiasCorrectionCache> bias_cache = make_bias_correction_cache();
};

/// A Q/DQ model emitted from a CalibratedModel.
struct StaticEmission {
  ir::Model model;
  QdqSummary qdq;
  size_t body_weights = 0;  ///< weights inside If/Loop/Scan bodies stored as int8 (quantize_body_weights)
  bool float_bodies = false;  ///< the bodies' activations were left float (TensorChoices::float_bodies)
};

/// What quantize_static did.
struct StaticQuantResult {
  QdqSummary qdq;
  int64_t calib_samples = 0;
  std::vector<std::string> actions;      ///< CLE / ranges / bias-correction / subgraph notes
  /// With cle: the equalized float weights (see CalibratedModel).
  std::map<std::string, Tensor> equalized_weights;
};

/// The pre-quantization passes (see the header comment); `target_opset` is 13 for 8-bit and 21
/// for 16-bit activations. Returns the number of rewrites.
size_t prepare_model(ir::Model& model, int64_t target_opset);

/// Step 2: equalizes (cle) a copy of `prepared` and calibrates it on `calib` (or takes
/// config.ranges). Throws kConfig for bad options (cle with a ranges file, no samples and no
/// ranges), kInvalidInput for bad samples.
CalibratedModel calibrate_static(const ir::Model& prepared, data::SampleSource& calib, const StaticQuantConfig& config);

/// Per-tensor decisions of the guard (or a plan) for an emission, by tensor name.
struct TensorChoices {
  std::set<std::string> keep_float;  ///< stay float (in addition to config.qdq's own exclusions)
  std::set<std::string> wide;        ///< quantized at 16 bits with their Q/DQ groups
  std::set<std::string> observed;    ///< the observed min/max instead of the method's range
  /// Activations inside If/Loop/Scan bodies stay float (QdqOptions::subgraphs off): the guard's
  /// choice when quantizing them costs the target (pipeline/guard.h, step 1b). Not a per-tensor
  /// choice (empty() and size() count the sets only).
  bool float_bodies = false;
  bool empty() const { return keep_float.empty() && wide.empty() && observed.empty(); }
  size_t size() const { return keep_float.size() + wide.size() + observed.size(); }
};

/// Step 3: places Q/DQ on a copy of the calibrated float model with the per-tensor `choices`
/// (a copy with 16-bit tensors is upgraded to opset 21 first).
StaticEmission emit_static(const CalibratedModel& calibrated, const TensorChoices& choices,
                           const StaticQuantConfig& config);

/// Step 4: with config.bias_correction, corrects the biases of `emitted` against the calibrated
/// float model on up to config.bias_correction_samples of `calib`, and returns what it did for
/// the actions (`what` names the model in it, e.g. " (model with float tensors)"); "" when off.
std::string correct_static_biases(const CalibratedModel& calibrated, ir::Model& emitted, data::SampleSource& calib,
                                  const StaticQuantConfig& config, const std::string& what = "");

/// Stores the weights of Conv, ConvTranspose, Gemm, MatMul, LSTM, GRU and RNN nodes inside
/// If/Loop/Scan bodies (initializers or Constant nodes, at least 64 elements) as int8, symmetric
/// per output channel, read through a DequantizeLinear in the body (the node then runs in float
/// on the dequantized weight, in ONNX Runtime as in qtool): the weights of the body nodes that
/// emit_qdq left in float (a body without calibrated values, or a node whose input stays float).
/// Returns the number of weights stored. emit_static calls it on every emission.
/// `main_graph_ops`: op types whose weights are stored so in the main graph too (the dynamic path
/// passes those it does not rewrite). `cast_form`: Cast(int8 levels) · scales instead of the
/// DequantizeLinear: constants ONNX Runtime folds when it loads the model, so the node runs at
/// float speed on a prepacked weight (with a DequantizeLinear in front, ONNX Runtime's Conv runs
/// 2× slower than FP32 on MobileNetV2; the file is the same size).
size_t quantize_body_weights(ir::Model& model, bool reduce_range, const std::set<std::string>& main_graph_ops = {},
                             bool cast_form = false);

/// Removes the float initializers nothing reads any more (not graph inputs or outputs), in `g` and
/// every body below it: a body that quantized the weights it reads from its parent, or folded the
/// slices of them it reads, leaves the parent's float copies unread.
void remove_unread_float_initializers(ir::Graph& g);

/// The note for quantizable nodes inside If/Loop/Scan bodies: how many were quantized with their
/// activations, or (bodies left float) how many weights went to int8 and why; "" when there are
/// none.
std::string subgraph_note(const StaticEmission& emission);

/// Quantizes `model` (already prepared) in place: calibrates on all of `samples` and emits with
/// nothing kept in float (steps 2-4, no guard; pipeline/guard.h adds the guard).
StaticQuantResult quantize_static(ir::Model& model, data::SampleSource& samples, const StaticQuantConfig& config);

/// Ranges by value identity from a ranges file (matched by tensor name in the main graph).
RangeMap ranges_for_model(const ir::Model& model, const calib::RangesFile& file);

}  // namespace qtool::quant
