// Internal pieces of the weight-only rewrite shared by src/quant/lowbit_*.cc (not a public header).
#pragma once

#include <map>
#include <cstdint>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "qtool/ir/graph.h"
#include "qtool/quant/gptq.h"
#include "qtool/quant/lowbit.h"
#include "qtool/quant/palette.h"
#include "qtool/quant/sparsity.h"
#include "qtool/quant/weight_quant.h"

namespace qtool::quant::detail {

/// Streaming statistics of one weight layer's input X (last dimension = K channels).
struct InputStats {
  int64_t k = 0;
  bool want_hessian = false;
  /// The channels are on axis 1 (NCHW input of a 1x1 Conv): each pixel of each image is one row.
  bool channel_axis1 = false;
  /// k×k Conv (2-D, group 1): rows are the im2col patches of the input, k = C·kh·kw with patch
  /// element c·kh·kw + ky·kw + kx; geometry {kh, kw, stride_h, stride_w, pad_top, pad_left,
  /// pad_bottom, pad_right, dilation_h, dilation_w}. At most kMaxPatchRows evenly spaced output positions per image.
  std::vector<int64_t> conv_geometry;
  static constexpr int64_t kMaxPatchRows = 256;
  HessianAccumulator hessian;
  std::vector<double> sum_abs;   ///< Σ |x_c|
  std::vector<double> sum_sq;    ///< Σ x_c²
  int64_t rows = 0;              ///< rows seen
  std::vector<float> kept;       ///< up to max rows of X, [kept_rows, k]
  int64_t kept_rows = 0;
  std::vector<float> mean_abs() const;
  std::vector<float> energy() const;
};

}  // namespace qtool::quant::detail

namespace qtool::quant {
/// CalibrationInputs::cache: statistics by the name of the value a layer reads (and, for k×k convs'
/// im2col patches, by the weight's name).
struct CalibrationStatsCache {
  std::map<std::string, detail::InputStats> by_value;
  std::map<std::string, detail::InputStats> patches_by_weight;
};
}  // namespace qtool::quant

namespace qtool::quant::detail {

/// Runs the calibration samples through the executor and fills `stats` (keyed by the input
/// value of the weight layers; each entry's k and want_hessian set by the caller).
/// `extra` adds statistics of values that need more than one view (a value read by a 1x1 and a k×k
/// Conv, e.g. SqueezeNet's squeeze output): each pair's stats are filled from that value too.
void collect_input_stats(const ir::Model& model, const CalibrationInputs& calib, int threads, int64_t max_rows,
                         std::unordered_map<const ir::Value*, InputStats>& stats,
                         const std::vector<std::pair<const ir::Value*, InputStats*>>& extra = {});


// ---- the weight layers of a model (lowbit_targets.cc) ----

enum class Kind { kMatMul, kGemm, kConv, kGather };

/// One weight initializer and how the layers reading it see it.
struct Target {
  ir::Value* weight = nullptr;           ///< removed from the graph once rewritten
  std::string weight_name;
  ir::Node* node = nullptr;             ///< first consumer in node order
  std::vector<ir::Node*> consumers;     ///< every weight-layer consumer
  Kind kind = Kind::kMatMul;
  bool trans_b = false;                 ///< Gemm: B stored as [N, K]
  Shape shape;                          ///< original weight shape
  int64_t rows = 0, cols = 0;           ///< matrix view W [rows, cols]
  int64_t out_channels = 0;             ///< N (conv: M)
  int64_t taps = 1;                     ///< conv kernel elements (kh·kw...)
  bool conv_blocked = false;            ///< conv rows are (m, tap), blocks along input channels
  bool first_last = false;
  const WeightFormat* format = nullptr; ///< nullptr: stays float
  std::string note;
  ir::Value* input = nullptr;           ///< activation input (MatMul/Gemm with transA = 0, 1x1 Conv)
  bool channels_first = false;          ///< 1x1 Conv: input channels on axis 1, W [M, C] acts per pixel
  ir::Value* patch_input = nullptr;     ///< k×k Conv (2-D, group 1): input whose im2col patches give H
  std::vector<int64_t> conv_geometry;   ///< see detail::InputStats::conv_geometry
  std::vector<float> w;                 ///< W [rows, cols] (AWQ scales applied in place)
};

const char* kind_name(Kind k);
/// A depthwise convolution: one input channel per filter, group == output channels.
bool is_depthwise(const Target& t);
/// W [rows, cols] from the initializer in the target's layout (once; drops mapped pages after).
void extract_matrix(Target& t);
/// Finds the weight layers of the main graph, in node order (phase 1).
std::vector<Target> find_targets(ir::Graph& g, int64_t block_size);
/// Chooses each target's format: defaults, first/last and depthwise rules, --layer-bits,
/// exclusions, --plan (phase 2).
void choose_formats(std::vector<Target>& targets, const WeightOnlyConfig& cfg);
/// Folds 1/s of AWQ scales `s` for the layers of `group` reading `x` into x's producer (a norm
/// weight, a previous MatMul's output channels) or an inserted Mul; `where` says which.
void fold_awq_scales(ir::Graph& g, ir::Value* x, const std::vector<Target*>& group, std::span<const float> s,
                     std::vector<Target>& targets, std::string* where);

/// Whether GPTQ (and the Hessian it needs) runs for a layer in `f`: the low-bit integer formats and
/// fp8 (its rounding error is worth compensating too); int8 layers (first/last) are rounded unless
/// cfg.gptq_int8.
inline bool gptq_eligible(const WeightFormat& f, const WeightOnlyConfig& cfg) {
  return f.bits < 8 || is_float_scheme(f.scheme) || (cfg.gptq_int8 && f.scheme == WeightScheme::kInt);
}
/// Whether layers of format `f` store float16 scales under `cfg` (DequantizeLinear below 8 bits).
inline bool wants_fp16_scales(const WeightOnlyConfig& cfg, const WeightFormat& f) {
  return cfg.fp16_scales && f.layout == WeightLayout::kQdq && f.bits < 8;
}

// ---- writing a quantized layer into the graph (lowbit_emit.cc) ----

/// Storage (original layout) index of W element (r, c).
int64_t storage_index(const Target& t, int64_t r, int64_t c);
/// Opset the emitted form of `f` needs (0: no default-domain requirement).
int64_t required_opset(const WeightFormat& f);
/// Rewrites target t as its format's form (DequantizeLinear, MatMulNBits, or the Cast / Gather form
/// with `cast_form` and for fp4), scales as float16 -> Cast when `fp16_scales`; fills L's stored name,
/// scheme, precision and scale statistics. Returns the stored bytes.
int64_t emit_weight(ir::Graph& g, const Target& t, const QuantizedMatrix& q, bool fp16_scales, bool cast_form,
                    WeightOnlyLayer& L);
// ---- compact stored forms expanded by folded ops (compact_emit.cc) ----

/// `values` rounded to float16, as a float16 tensor of `shape` (scales and tables stored in half).
Tensor float16_tensor(const Shape& shape, std::span<const float> values);
/// Bytes emit_codes stores for n codes of `bits` bits.
int64_t code_storage_bytes(int64_t n, int bits);
/// Bytes emit_sparse_levels stores for n levels of which `kept` are not the zero level.
int64_t sparse_storage_bytes(int64_t n, int64_t kept, int bits);
/// Stores codes (0 <= code < 2^bits) in the fewest bytes (uint8, uint4, uint4 + bit planes, bit
/// planes) and returns an int32 value of `shape` decoding them, computed before `first`. Adds the
/// stored bytes to *bytes.
ir::Value* emit_codes(ir::Graph& g, ir::Node* first, std::span<const int32_t> codes, int bits,
                      const Shape& shape, int64_t* bytes);
/// Stores levels sparsely: a bit plane of the levels that are not `zero_level`, and those levels
/// (after one zero level) as packed `dt` (kInt32: as emit_codes of `bits` bits). Returns the int32
/// dense levels of `shape`.
ir::Value* emit_sparse_levels(ir::Graph& g, ir::Node* first, std::span<const int32_t> levels,
                              int32_t zero_level, DataType dt, int bits, const Shape& shape, int64_t* bytes);
/// Rewrites a palettized target: indices (sparse when pruned and smaller) -> + table offset of its
/// group -> Gather on the tables (float16 -> Cast when `fp16_table`). Returns the stored bytes.
int64_t emit_palette(ir::Graph& g, const Target& t, const QuantizedMatrix& q, bool fp16_table, WeightOnlyLayer& L);

/// Adds Y += MatMul(Gather(X, cols, axis=-1), DQ(int8 outlier rows)) after the layer. Returns bytes.
int64_t emit_outliers(ir::Graph& g, const Target& t, const std::vector<int64_t>& cols,
                      const std::vector<float>& w_orig);

// ---- the weight algorithms (weight_algorithms.h; src/quant/algorithms/) ----

/// One layer to quantize: what every algorithm may read.
struct LayerJob {
  const Target& t;                           ///< its W (AWQ-scaled, outlier columns zeroed)
  const QuantSpec& spec;
  const WeightOnlyConfig& cfg;
  const GptqOptions& gptq;                   ///< cfg.gptq, with keep_latent when tuning follows
  const InputStats* stats = nullptr;         ///< statistics of the layer's input, or nullptr
  const InputStats* patch_stats = nullptr;   ///< im2col statistics of a k×k conv, or nullptr
  const std::vector<float>* awq_scales = nullptr;  ///< AWQ scales the input Hessian must be rescaled by
  const std::vector<int64_t>& outlier_columns;     ///< columns carried by the int8 branch
  bool have_hessian = false;                 ///< stats hold a Hessian this layer can use
  /// Weights pruned before quantization ([rows, cols], 1 = held at 0; t.w is already 0 there), or null.
  const std::vector<uint8_t>* pruned = nullptr;
  /// SparseGPT: the GPTQ sweep chooses the mask (needs a Hessian).
  SparsitySpec adaptive;
  /// Some weights are (or will be) exactly 0 by pruning: palettes reserve index 0 for 0.
  bool sparse() const { return pruned != nullptr || adaptive.active(); }
};

/// Per-column importance of a layer's weights: diag of its input Hessian (k×k Conv: of its im2col
/// patches), else the input channels' energy E[x_c²], else empty (uniform).
std::vector<float> column_importance(const LayerJob& job);
/// The palette of a layer for `job` (k-means per group of rows, weighted by column_importance).
QuantizedMatrix quantize_palette_layer(const LayerJob& job, std::span<const float> importance);

/// The layer's input Hessian (of x / s when AWQ scales were folded).
std::vector<double> input_hessian(const LayerJob& job);
/// RTN (clipping search; ternary / binary optimum), rows split over cfg.threads.
QuantizedMatrix quantize_rtn_layer(const LayerJob& job, std::string* label);
/// GPTQ (k×k convs on their im2col Hessian, outlier columns left out); RTN without a Hessian.
QuantizedMatrix quantize_gptq_layer(const LayerJob& job, std::string* label);
/// AWQ's pre-pass (phase 4): per group of low-bit MatMul/Gemm layers sharing an input, the scales
/// that minimize the output error through H, applied to the group's W and folded into the graph.
/// Fills `scales` (by input value) and `where` (by target) for the layers it rescaled.
void awq_prepass(ir::Graph& g, std::vector<Target>& targets, const std::unordered_map<const ir::Value*, InputStats>& stats,
                 const WeightOnlyConfig& cfg, std::unordered_map<const ir::Value*, std::vector<float>>& scales,
                 std::unordered_map<const Target*, std::string>& where);

}  // namespace qtool::quant::detail
