// Per-layer and per-tensor sensitivity: how much of the model's output quality one layer (or one
// activation) costs at a given precision, measured on held-out samples with everything else float.
//
// The measurement is a simulation of the emitted model, not a new emission per candidate: the
// float model (the one the static quantizer emitted from) runs on the executor with
//  - the layer's weight replaced by its quantized values: the int8 weight exactly as the 8-bit
//    emission stored it (read back from its DequantizeLinear), or symmetric int4 blocks of 32
//    along the input dimension (round to nearest, scale max|w|/7), and
//  - the layer's activations (the quantized tensors it reads and writes) fake-quantized as they
//    arrive (runtime::Observer::replace) with the emission's own scale and zero point, or at
//    16 bits with the 16-bit parameters of the same range,
// and its outputs are compared with the FP32 outputs (computed once) by report::OutputComparison:
// the score is the lowest output SQNR (whole tensor, or the worse family of channels of a tensor
// that concatenates channels of very different magnitudes), and top-1 agreement for classifier
// outputs. Jobs run in parallel, one model copy and executor per thread.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "qtool/data/sample_source.h"
#include "qtool/ir/graph.h"
#include "qtool/pipeline/samples.h"
#include "qtool/quant/qdq.h"

namespace qtool::pipeline {

/// A candidate precision of one layer.
enum class LayerPrecision { kW8A8, kW8A16, kW4A32, kFloat };

/// "W8A8", "W8A16", "W4A32" (int4 weights, block 32, float activations), "float".
const char* layer_precision_name(LayerPrecision p);
/// The precisions a name list like "W8A8,W8A16,W4A32,float" names; throws kConfig for an unknown one.
std::vector<LayerPrecision> parse_layer_precisions(const std::string& list);

/// A model's output quality with one change: the score the search ranks by.
struct Quality {
  double sqnr_db = 0.0;          ///< lowest output SQNR (+inf: exact)
  double top1_agreement = 0.0;   ///< lowest over classifier outputs (fraction); NaN when there is none
};

/// One candidate of one layer.
struct CandidateScore {
  LayerPrecision precision = LayerPrecision::kFloat;
  Quality quality;
  int64_t bytes = 0;  ///< the layer's weight bytes at this precision, scales included (0 without a weight)
};

/// One quantizable layer (a node of the float model that the 8-bit emission quantized).
struct LayerSensitivity {
  std::string node, op_type;
  std::string weight;                    ///< its constant weight ("" for Add, Concat, pools, ...)
  int64_t weight_elements = 0;
  std::vector<std::string> activations;  ///< quantized tensors it reads and writes
  std::vector<CandidateScore> candidates;
  /// The candidate with precision p, or nullptr when it does not apply (W4A32 without a weight).
  const CandidateScore* find(LayerPrecision p) const;
};

struct SensitivityOptions {
  std::vector<LayerPrecision> precisions = {LayerPrecision::kW8A8, LayerPrecision::kW8A16, LayerPrecision::kW4A32,
                                            LayerPrecision::kFloat};
  size_t samples = 16;  ///< held-out samples each candidate runs on (at most the source's size)
  int threads = 1;
};

struct SensitivityResult {
  /// Ranked: the layer whose first candidate (W8A8 by default) loses the most first.
  std::vector<LayerSensitivity> layers;
  /// Every layer at W8A8 together (the simulated 8-bit model), for scale.
  Quality whole_model;
  std::vector<std::string> outputs;  ///< the model's outputs, in order
  size_t samples = 0;
  size_t runs = 0;                   ///< model runs made (candidates x samples)
};

/// The 8-bit quantization of a float model as the probe simulates it: the float model the static
/// emission started from, and that emission (its activation parameters and int8 weights).
struct EmissionView {
  const ir::Model* float_model = nullptr;
  const ir::Model* emitted = nullptr;
  const quant::QdqSummary* qdq = nullptr;
  DataType activation_type = DataType::kUint8;  ///< the emission's 8-bit type
  bool symmetric = false;
};

/// The table of `qtool sensitivity`: every layer of the emission at each precision.
SensitivityResult measure_layer_sensitivity(const EmissionView& view, data::SampleSource& held_out,
                                            const SensitivityOptions& options = {});

/// One activation fake-quantized with given parameters.
struct FakeQuantTensor {
  std::string name;
  quant::QParams params;
  DataType type = DataType::kUint8;
};

/// The guard's probe: the quality of `float_model` with only `each[i]` fake-quantized (everything
/// else float), on the first `samples` held-out samples; one entry per tensor.
std::vector<Quality> score_alone(const ir::Model& float_model, const std::vector<FakeQuantTensor>& each,
                                 data::SampleSource& held_out, size_t samples, int threads);

/// Weights replaced in one simulated model: initializer name -> the values it computes with.
using WeightSwap = std::vector<std::pair<std::string, Tensor>>;
/// The quality of `float_model` with only `swaps[i]`'s weights replaced (everything else float), on
/// the first `samples` held-out samples; one entry per swap (the budget search's per-layer costs).
std::vector<Quality> score_weight_swaps(const ir::Model& float_model, const std::vector<WeightSwap>& swaps,
                                        data::SampleSource& held_out, size_t samples, int threads);

/// `qtool sensitivity MODEL --calib DATA`: prepare (opset 13), split the samples as the quantize
/// guard does (the last part held out), calibrate on the rest, emit at 8 bits, and measure.
struct SensitivityJob {
  std::string model_path;
  SampleSpec data;
  std::string method = "minmax";        ///< range method of the 8-bit emission
  double percentile = 99.999;
  DataType activation_type = DataType::kUint8;
  SensitivityOptions options;
};

/// What `qtool sensitivity` measured, with the costs.
struct SensitivityRun {
  std::string model_path;
  SensitivityResult result;
  size_t calib_samples = 0, held_out_samples = 0;
  double calibrate_seconds = 0.0, measure_seconds = 0.0;
  int64_t fp32_weight_bytes = 0;  ///< the quantizable layers' weights at FP32
};

SensitivityRun run_sensitivity(const SensitivityJob& job);
/// The run as JSON (schema "qtool.sensitivity"), the ranked text table (at most `rows` layers,
/// 0 = all) and a self-contained HTML page with a chart of every layer's candidates.
nlohmann::json sensitivity_to_json(const SensitivityRun& run);
std::string sensitivity_table(const SensitivityRun& run, size_t rows = 0);
std::string sensitivity_html(const SensitivityRun& run);

/// The 16-bit twin of an 8-bit activation type (uint8 -> uint16, int8 -> int16).
DataType wide_activation_type(DataType type8);
/// The 16-bit parameters of the range an 8-bit tensor's parameters cover.
quant::QParams widen_params(quant::QParams p, DataType type8, bool symmetric);

}  // namespace qtool::pipeline
