// Weight algorithms: how the levels of one weight layer are chosen (RTN, GPTQ, AWQ, ...).
//
// One registry, like calib/methods.h: weight_algorithms() is built once from the one list in
// src/quant/weight_algorithms.cc, and each algorithm lives in its own file under
// src/quant/algorithms/ (rtn.cc, gptq.cc, awq.cc, awq_gptq.cc), which registers its row: what it
// needs (calibration statistics, the AWQ pre-pass, GPTQ's Hessians) and the function that
// quantizes one layer. apply_weight_only (lowbit.h) reads nothing else about an algorithm, and
// --weight-algorithm's values and --help come from the rows. Adding an algorithm touches one new
// file, one enum value and one line in that list.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "qtool/quant/lowbit.h"
#include "qtool/quant/weight_quant.h"

namespace qtool::quant {
namespace detail {
struct LayerJob;  // one layer to quantize (src/quant/lowbit_internal.h)
}  // namespace detail

/// Chooses one layer's levels; sets `label` to the method used, for the report ("gptq", "rtn", ...).
using LayerQuantizeFn = QuantizedMatrix (*)(const detail::LayerJob& job, std::string* label);

/// A registered weight algorithm.
struct WeightAlgorithmInfo {
  WeightAlgorithm id;
  std::string_view name;    ///< --weight-algorithm value
  std::string_view help;    ///< a few words for --help
  bool needs_calibration;   ///< reads statistics of the layers' inputs (--calib)
  bool awq_scales;          ///< AWQ pre-pass: per-input-channel scales searched and folded first
  bool gptq;                ///< GPTQ error compensation (input Hessians, im2col Hessians of k×k convs)
  LayerQuantizeFn quantize;
};

/// The algorithms, in registration order.
const std::vector<WeightAlgorithmInfo>& weight_algorithms();
/// The row of `id`.
const WeightAlgorithmInfo& weight_algorithm(WeightAlgorithm id);
/// "rtn (...), gptq (...), ..." for --help.
std::string weight_algorithms_help();

// Registration (one function per algorithm file; called from the list in weight_algorithms.cc).
void register_rtn(std::vector<WeightAlgorithmInfo>& algorithms);
void register_gptq(std::vector<WeightAlgorithmInfo>& algorithms);
void register_awq(std::vector<WeightAlgorithmInfo>& algorithms);
void register_awq_gptq(std::vector<WeightAlgorithmInfo>& algorithms);

}  // namespace qtool::quant
