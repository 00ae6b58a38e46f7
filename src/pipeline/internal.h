// Helpers shared by the quantize job's files (src/pipeline); not a public header.
#pragma once

#include <chrono>
#include <map>
#include <string>
#include <vector>

#include "qtool/data/sample_source.h"
#include "qtool/ir/graph.h"
#include "qtool/pipeline/guard.h"
#include "qtool/pipeline/quantize.h"
#include "qtool/quant/static_quant.h"
#include "qtool/report/compare.h"
#include "qtool/report/report.h"

namespace qtool::pipeline::detail {

using clock_type = std::chrono::steady_clock;
inline double seconds_since(clock_type::time_point t) {
  return std::chrono::duration<double>(clock_type::now() - t).count();
}

/// Fewest held-out samples for the weight-only evaluation (the static path's guard has its own
/// rule: GuardOptions, pipeline/guard.h).
inline constexpr size_t kMinHoldout = 8;
/// Larger models are not evaluated after quantization (it would hold two copies).
inline constexpr int64_t kMaxEvalModelBytes = int64_t{256} << 20;

int64_t file_size(const std::string& p);
bool has_subgraphs(const ir::Graph& g);

/// The samples of `source` in order, as report::compare_models takes them (`source` must outlive it).
report::SampleProvider sample_provider(data::SampleSource& source);
/// Runs the FP32 and quantized models on `held_out` (report/compare.h, with per-layer drift) and
/// puts the result into the report: outputs, eval_samples, and each layer's output SQNR (with
/// layer_samples). Returns the comparison (its per-layer drift ranks where the noise enters).
report::CompareResult evaluate_into(report::QuantizeReport& rep, const ir::Model& fp32, const ir::Model& quantized,
                                    data::SampleSource& held_out, int threads);
/// Samples behind the per-layer output SQNR of a report whose outputs were judged already (the
/// guard's comparison): a layer's SQNR sums over every value of the tensor, so a few samples give
/// it to a fraction of a dB, and the whole-model verdict keeps all the held-out samples.
constexpr size_t kLayerEvalSamples = 16;
/// Only each layer's output SQNR (and layer_samples), on the first `max_samples` of `held_out`.
void evaluate_layers_into(report::QuantizeReport& rep, const ir::Model& fp32, const ir::Model& quantized,
                          data::SampleSource& held_out, int threads, size_t max_samples);
/// The float weights of a model by name (copies share their buffers).
std::map<std::string, Tensor> float_weights(const ir::Model& model);
/// Weight SQNR (dB) of each layer stored as DequantizeLinear of an integer initializer.
void fill_weight_sqnr(report::QuantizeReport& rep, const ir::Model& quantized,
                      const std::map<std::string, Tensor>& fp32);
/// Weight SQNR in dB from a relative MSE ‖W - Q‖² / ‖W‖².
double sqnr_from_rel_mse(double rel_mse);

/// The job's quality floor (--min-sqnr, --min-agreement, --max-nll-increase, --metric); a
/// classifier's loose SQNR bound never exceeds --min-sqnr.
QualityFloor floor_of(const QuantizeJob& job);

/// The three paths. Each saves the model and returns the report (without settings and timings).
QuantizeOutcome run_static(const QuantizeJob& job, ir::Model& model, std::vector<report::Timing>& timings);
QuantizeOutcome run_weight_only(const QuantizeJob& job, ir::Model& model, std::vector<report::Timing>& timings);
/// --mode dynamic (quant/dynamic.h): no calibration; judged on the samples when given.
QuantizeOutcome run_dynamic(const QuantizeJob& job, ir::Model& model, std::vector<report::Timing>& timings);

}  // namespace qtool::pipeline::detail
