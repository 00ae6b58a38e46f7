// Weight-only low-bit quantization of a whole model (qtool quantize --bits 4|2|ternary|binary).
//
// Given: a model whose MatMul / Gemm / Conv nodes read constant weight initializers.
// Execute: for each such node not excluded, quantize its weight under the format chosen for it
//   (config default, mixed-precision first/last rule, --layer-bits overrides), with RTN, GPTQ or
//   AWQ, and rewrite the graph:
//   - kQdq: the weight initializer becomes a packed int4/uint4/int2/uint2/int8 initializer read by
//     a DequantizeLinear (blocked: `block_size` attribute on the reduction axis; per channel: `axis`
//     on the output-channel axis) whose output feeds the original op unchanged; below 8 bits its
//     scales are a float16 initializer -> Cast(to=float) -> the DequantizeLinear's scale (fp16_scales);
//   - kMatMulNBits: a MatMul with a 2-D constant weight becomes com.microsoft.MatMulNBits
//     (other ops in the same model fall back to kQdq);
//   - outliers (outlier_fraction > 0, MatMul/Gemm): the most salient input channels are kept in
//     int8 as a second small MatMul on Gather(X, channels, axis=-1), added to the low-bit output;
//   - AWQ: the per-input-channel scale is folded into the producer of the input (a Mul by a
//     constant, e.g. the RMSNorm weight; a MatMul's output channels; a Mul whose other operand is
//     such a MatMul), else a Mul by 1/s is inserted before the consumers.
//   GPTQ needs the Hessian H = Σ x xᵀ of each layer's input, streamed from the calibration run:
//   the activation rows of a MatMul/Gemm, the pixels of a 1x1 Conv's input, the im2col patches of a
//   k×k Conv (group 1; its blocks of input channels at one kernel tap are GPTQ column groups).
//   Depthwise convs default to int8 (bits_depthwise).
//   The embedding table of a Gather (token ids -> rows) is quantized to int8 per row when
//   `quantize_embedding` (it is a "first layer": bits_first_last applies, and below 8 bits it stays
//   int8). The default-domain opset is raised to what the output needs (21 for int4/uint4 and
//   blocked DQ, 25 for int2/uint2) when the model's ops allow it; otherwise kUnsupported names the op.
// Result: a model that computes approximately the same function, with a report of what was done.
// Deterministic: the same model and config give byte-identical output. Weights shared by several
// nodes are quantized once.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "qtool/core/tensor.h"
#include "qtool/ir/graph.h"
#include "qtool/quant/awq.h"
#include "qtool/quant/format.h"
#include "qtool/quant/gptq.h"
#include "qtool/quant/precision.h"
#include "qtool/quant/sparsity.h"
#include "qtool/quant/tune.h"

namespace qtool::data {
class SampleSource;  // qtool/data/sample_source.h
}  // namespace qtool::data

namespace qtool::quant {

/// kAwqGptq: AWQ's per-input-channel scales first (folded as for kAwq), then GPTQ on the rescaled
/// weights with the rescaled Hessian.
enum class WeightAlgorithm { kRtn, kGptq, kAwq, kAwqGptq };
/// "rtn" | "gptq" | "awq" | "awq+gptq"; throws kConfig otherwise.
WeightAlgorithm parse_weight_algorithm(std::string_view s);
std::string_view weight_algorithm_name(WeightAlgorithm a);

/// One --layer-bits rule: nodes whose name or weight-initializer name matches the glob `pattern`
/// ('*' any run, '?' one char) get `bits` (any precision.h value; "float" = leave alone).
struct LayerBitsRule {
  std::string pattern;
  BitsChoice bits;
};
/// Parses 'lm_head=8,*.down_proj=4' (comma-separated pattern=bits); throws kConfig on a malformed item.
std::vector<LayerBitsRule> parse_layer_bits(std::string_view spec);
/// Glob match ('*', '?').
bool glob_match(std::string_view pattern, std::string_view text);

/// One layer of a plan read from a plan file (plan.h): the format its weight gets (nullptr = float)
/// and why.
struct PlannedLayer {
  const WeightFormat* format = nullptr;
  std::string reason;
};
/// Weight initializer name -> planned layer (--plan). A plan overrides the rules for every weight it
/// names; weights it does not name keep the rules' choice.
using LayerPlanMap = std::map<std::string, PlannedLayer>;

struct WeightOnlyConfig {
  BitsChoice bits = "4";             ///< the default precision (precision.h: "4", "int4", "ternary", ...)
  int64_t block_size = 32;           ///< 0 = per output channel
  bool symmetric = true;             ///< false: unsigned levels with zero points
  WeightLayout format = WeightLayout::kQdq;
  WeightAlgorithm algorithm = WeightAlgorithm::kRtn;
  double outlier_fraction = 0.0;     ///< fraction of input channels kept in int8 beside the low-bit weights
  /// Bits for the first and last layers (first Conv/MatMul/Gemm on the input path, the classifier or
  /// lm_head producing a graph output, the embedding Gather). "" = same as `bits`.
  BitsChoice bits_first_last = "8";
  /// Bits for depthwise convolutions (group == output channels, one input channel per filter): few
  /// parameters (MobileNetV2: 2% of the weights) but each output channel rests on only kh·kw
  /// weights, so low-bit rounding hurts them most. "" = same as `bits`. --layer-bits overrides.
  BitsChoice bits_depthwise = "8";
  std::vector<LayerBitsRule> layer_bits;   ///< later rules win
  std::vector<std::string> exclude;        ///< node or weight names / globs left in float
  LayerPlanMap plan;                       ///< --plan: per-weight formats that override the rules
  /// Palettes (pal1..pal8): output channels sharing one table (0 = one table per tensor; 1, 4, 8, 16).
  int64_t palette_group = 0;
  /// Palettes: one table per tensor of values scaled by a float16 scale per block of K (16, 32, 64,
  /// 128; 0 = no scales). Excludes palette_group. -1 (quantize jobs only): chosen by measurement in
  /// pipeline/weight_only_path.cc (block 32 or groups of 4); apply_weight_only needs a value >= 0.
  int64_t palette_block = 0;
  /// Pruning before / with quantization (sparsity.h) of every quantized layer except the first and
  /// last, depthwise convolutions and embedding tables. Pruned weights are exactly 0 and stored
  /// sparsely (a bit mask plus the kept levels, expanded by ops ONNX Runtime folds at load) where
  /// that is smaller than the dense levels.
  SparsitySpec sparsity;
  /// kSparseGpt needs calibration data (the layers' input Hessians); a layer without one is pruned
  /// by Wanda's score when its input statistics exist, else by magnitude (noted in its report).
  SparsityMethod sparsity_method = SparsityMethod::kSparseGpt;
  /// Weight initializer names never pruned (the weight-only precision raise adds the layers it raises).
  std::vector<std::string> keep_dense;
  bool quantize_embedding = true;          ///< Gather tables -> int8 per row DQ (below 8 bits only as below)
  /// Embedding tables take the rules' integer bits per row (int4, uint2, ...) instead of int8 (the
  /// budget search measures them; a plan may name such a format for a table in any run).
  bool embedding_low_bits = false;
  int clip_steps = 20;                     ///< RTN clipping search steps (0 = plain min/max)
  /// Store the scales of DequantizeLinear weights below 8 bits as float16 (a float16 initializer read
  /// through Cast(to=float) into the DequantizeLinear's scale input; the dequantized weight stays
  /// float32 and ONNX Runtime folds the Cast at load time). Halves the scale overhead: int4 blocks of
  /// 32 cost 4.5 bits per weight instead of 5.0. Levels are chosen for the rounded scale (no extra
  /// error beyond float16's 2^-11 relative step). A layer whose scales fall outside float16's normal
  /// range keeps float32 scales (noted in its report). MatMulNBits and int8 layers keep float32.
  bool fp16_scales = true;
  /// kQdq layers written as Cast(levels) [-> Sub(zero points)] -> Mul(scales) on constants instead of
  /// DequantizeLinear (--format cast): the same stored bytes (a short last block padded), which ONNX
  /// Runtime constant-folds at load, so the model runs at float32 speed (float32 weights in memory);
  /// ONNX Runtime keeps DequantizeLinear unfolded and dequantizes Conv weights on every run.
  bool cast_dequant = false;
  /// GPTQ / AWQ: quantize layers in node order and re-collect the calibration statistics of each
  /// layer's input from the model whose earlier layers are already quantized (one calibration pass
  /// per distinct layer input), so later layers see, and compensate, the earlier layers' error.
  /// Off (default): one pass on the float model. Measured on stories260K INT4 block 32 GPTQ it was
  /// worse (wizard_of_oz +1.79% vs +1.14% NLL; BENCHMARKS.md), so it is opt-in.
  bool sequential = false;
  GptqOptions gptq;
  AwqOptions awq;
  /// Distillation tuning after the algorithm (tune.h); steps = 0: off. threads <= 0: `threads`.
  TuneOptions tune{.threads = 0};
  int64_t max_calib_rows = 4096;           ///< activation rows kept per layer for AWQ / outlier search
  int threads = 1;                         ///< threads for the calibration pass and for RTN (rows split across threads)
  /// Also return each quantized weight's dequantized values (WeightOnlyLayer::dequantized), in the
  /// weight's own layout: what the layer computes with once written (the budget search measures
  /// each layer's candidates with them on the float model).
  bool keep_dequantized = false;
  /// GPTQ (and SparseGPT) also on the int8 layers (per output channel), not only below 8 bits. The
  /// static path sets it: its int8 weights then compensate each other's rounding through the input
  /// Hessian (SqueezeNet's output 28.6 -> 34.8 dB with float activations; BENCHMARKS.md). Off for
  /// weight-only runs, whose int8 layers are the first/last/depthwise ones.
  bool gptq_int8 = false;
};

/// Calibration inputs for GPTQ / AWQ / activation-weighted outliers: samples (graph input name ->
/// tensor) run through runtime::Executor with an observer on the weight layers' inputs. Activations
/// are streamed: per layer only H (K×K), mean |x| and at most max_calib_rows rows are kept.
struct CalibrationStatsCache;  // lowbit_internal.h
struct CalibrationInputs {
  std::vector<std::map<std::string, Tensor>> samples;  ///< in-memory samples (used when source is null)
  data::SampleSource* source = nullptr;                ///< or samples loaded one at a time from here
  size_t max_samples = 0;                              ///< 0 = all of them
  /// Statistics of the layers' inputs kept between runs on copies of one model with the same
  /// samples (by value and weight name): a run that finds every statistic it needs there skips its
  /// calibration pass (the budget search quantizes the model once per form). make_stats_cache().
  std::shared_ptr<CalibrationStatsCache> cache;
};
/// An empty cache for CalibrationInputs::cache.
std::shared_ptr<CalibrationStatsCache> make_stats_cache();

/// What happened to one weight.
struct WeightOnlyLayer {
  std::string node;           ///< first node reading the weight (its name, or "<output Y>" when unnamed)
  std::string output;         ///< that node's first output (names unnamed nodes' layers in drift reports)
  std::string op_type;
  std::string weight;         ///< initializer name
  std::string format;         ///< WeightFormat::name, or "float" when skipped
  std::string algorithm;      ///< rtn / gptq / awq / optimal-ternary / binary
  int64_t rows = 0, cols = 0; ///< N output channels, K reduction
  int64_t outlier_columns = 0;
  double bits_per_weight = 32.0;  ///< stored bits incl. scales, zero points and outlier columns
  std::string scale_type;         ///< "float16" or "float" (empty when not quantized)
  double weight_rel_mse = 0.0;    ///< ‖W - Q‖² / ‖W‖²
  std::string note;               ///< why it was skipped / kept at 8 bits / folded where
  double sparsity = 0.0;          ///< fraction of weights that are exactly 0 in the output
  std::string pruning;            ///< "sparsegpt 2:4", "magnitude 0.5", ... ("" = not pruned)
  bool sparse_storage = false;    ///< stored as a bit mask plus the kept levels
  // What was written, for the report (which is built from these records, not re-read from the graph):
  std::string stored;             ///< initializer holding the stored levels ("<weight>_quantized")
  std::string precision;          ///< the element type row ("int4", "fp4", "ternary"; MatMulNBits "uint4")
  std::string scheme;             ///< "per-channel(axis=0)", "block(32, axis=1)", "matmulnbits(block 32)"
  bool symmetric = true;          ///< no zero points stored
  int64_t bytes = 0;              ///< stored bytes (levels, scales, zero points, tables; not the outlier branch)
  int64_t scale_count = 0;        ///< scales stored, and their range and mean
  double scale_min = 0.0, scale_max = 0.0, scale_mean = 0.0;
  /// WeightOnlyConfig::keep_dequantized: the weight's values as written (outlier columns exact), in
  /// the initializer's shape; empty otherwise.
  Tensor dequantized;
  /// With keep_dequantized, for a per-output-channel integer format: each output channel's scale
  /// (symmetric: `dequantized` = level × scale), so that another writer reproduces the levels.
  std::vector<float> channel_scales;
};

struct WeightOnlyReport {
  std::vector<WeightOnlyLayer> layers;
  int64_t opset = 0;                  ///< default-domain opset of the output
  int64_t float_weight_bytes = 0;     ///< bytes of the quantized weights before (fp32)
  int64_t quant_weight_bytes = 0;     ///< bytes after (levels + scales + zero points + outliers)
  /// Bits per weight over the layers at the main (non first/last) format, all storage included.
  double main_bits_per_weight = 0.0;
  std::vector<std::string> warnings;
  TuneReport tune;                    ///< what tuning did (steps == 0 when it did not run)
};

/// Quantizes the model's weights in place (see the header comment). `calib` is required for
/// kGptq and kAwq (kConfig otherwise) and used for activation-weighted outliers when given.
WeightOnlyReport apply_weight_only(ir::Model& model, const WeightOnlyConfig& config,
                                   const CalibrationInputs* calib = nullptr);

}  // namespace qtool::quant
