// INT8 (and 16-bit) static quantization in QDQ form: quantization parameters, weight and bias
// quantization, and the emitter that places QuantizeLinear/DequantizeLinear pairs in a float
// model the way ONNX Runtime's QDQ graph transformers fuse them into integer kernels.
//
// Placement follows ONNX Runtime's quantization tool (onnxruntime/python/tools/quantization,
// registry.py: QDQRegistry) and its QDQ selectors (core/optimizer/qdq_transformer/selectors_actions):
//   - Conv, ConvTranspose, Gemm, MatMul: DQ on the activation input, int8 per-channel DQ on the
//     constant weight, int32 DQ on the bias (scale s_x·s_w[c], zero point 0), Q->DQ on the output
//     -> QLinearConv / QGemm / QLinearMatMul;
//   - Add, Mul, AveragePool, GlobalAveragePool, Sigmoid, LeakyRelu, Relu, Clip: every float input
//     and the output get their own Q->DQ -> QLinearAdd / QLinearMul / QLinearAveragePool ...;
//   - MaxPool, Reshape, Transpose, Squeeze, Unsqueeze, Flatten, Resize, Slice, Gather, Split,
//     DepthToSpace, SpaceToDepth, Expand, Tile: the output shares the scale and zero point of
//     input 0, so that ONNX Runtime drops the Q/DQ pair around them and runs them on 8-bit data;
//   - Concat: all inputs and the output share one scale (the union of their ranges), so the
//     concatenation is exact in the integer domain.
//   - Conv/Gemm/MatMul/Add/... followed by Relu or Clip(lo, hi): when the activation's
//     quantization makes it redundant (Q(act(x)) == Q(x) for every x: the range is taken from
//     the activation's output and the dequantized grid lies within [lo, hi], e.g. uint8 with
//     zero point 0 for Relu) the activation is removed and nothing is placed between the two
//     (the runtime fuses the clamp into the integer op); otherwise they get Q/DQ between them,
//     as ONNX Runtime's tool does.
// Each quantized tensor gets exactly one Q->DQ pair; every consumer in the same graph reads the
// DQ output. Graph outputs keep their float values (the node producing one still reads
// quantized inputs; ONNX Runtime runs QGemm / MatMulIntegerToFloat with a float output).
//
// Math (affine quantization, ONNX QuantizeLinear): q = saturate(round_half_even(x / s) + z),
// x' = (q - z) · s. Asymmetric over [qmin, qmax]: r_lo = min(min, 0), r_hi = max(max, 0),
// s = (r_hi - r_lo) / (qmax - qmin), z = round(qmin - r_lo / s) clamped. Symmetric:
// s = max(|min|, |max|) / ((qmax - qmin) / 2), z = 0 (signed) or (qmax + qmin + 1) / 2 (unsigned).
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "qtool/core/tensor.h"
#include "qtool/ir/graph.h"

namespace qtool::quant {

/// A float interval observed for one tensor (calibration result).
struct Range {
  float min = 0.0f;
  float max = 0.0f;
};

/// Ranges keyed by IR value identity (never by name), as the calibration observers produce them.
using RangeMap = std::unordered_map<const ir::Value*, Range>;

/// Scale and zero point of one tensor or one channel.
struct QParams {
  float scale = 1.0f;
  int32_t zero_point = 0;
};

/// Parameters that map `r` onto the integer type `type` (kUint8, kInt8, kUint16, kInt16, ...).
/// A degenerate range (min == max == 0) gets scale 1 so that the model stays valid.
QParams compute_qparams(Range r, DataType type, bool symmetric);

/// Quantizes x with p into a value of `type`'s range (ONNX QuantizeLinear rounding: half to even).
int32_t quantize_value(float x, QParams p, DataType type);

/// A weight quantized symmetrically (zero points 0) per tensor or per slice along `axis`.
struct QuantizedWeight {
  Tensor values;               ///< int8 (or the requested type), same shape as the float weight
  std::vector<float> scales;   ///< one per slice along axis, or one
  int64_t axis = -1;           ///< -1: per tensor
  int32_t zero_point = 0;      ///< 0 for int8; 128 for uint8 (the same symmetric levels, offset)
};

/// Symmetric quantization of a float weight: s_c = max|W_c| / qmax (qmax = 127 for int8; 63 with
/// `reduce_range`: 7-bit levels in [-64, 63]), per slice along `axis` (negative counts from the
/// end; pass per_channel = false for one scale). `type` kUint8 stores the same levels plus 128,
/// zero point 128 (ONNX Runtime's u8u8 kernels, exact on every CPU).
/// `scales` (one per slice along axis), when given, replaces max|W_c| / qmax: weights already on
/// that grid (GPTQ's) keep their levels exactly.
QuantizedWeight quantize_weight(const Tensor& w, bool per_channel, int64_t axis, DataType type = DataType::kInt8,
                                bool reduce_range = false, const std::vector<float>* scales = nullptr);

/// 4-bit symmetric levels in [-8, 7] per slice along `axis` (stored int8; W4A8): each slice's scale
/// is the one of {max|W_c|/k, k = 1..8} ∪ {r·max|W_c|/7, r = 1, 0.975, ..., 0.5} with the least
/// squared error (weights already on a 4-bit grid, as GPTQ leaves them, are reproduced exactly).
QuantizedWeight quantize_weight4(const Tensor& w, int64_t axis);

/// FNV-1a over a float tensor's shape and bytes: finds equal weights (the branches of an If often
/// hold equal copies) so that their quantized form is stored once; callers compare the contents too.
uint64_t content_hash(const Tensor& t);

/// Bias quantization for integer accumulation: b_q[c] = round(b[c] / (s_x · s_w[c])), int32,
/// zero point 0. `w_scales` holds one scale per output channel or a single scale. Values beyond
/// int32 saturate (they would only arise for a degenerate input scale).
Tensor quantize_bias(const Tensor& b, float input_scale, const std::vector<float>& w_scales);

/// How the emitter quantizes.
struct QdqOptions {
  DataType activation_type = DataType::kUint8;  ///< kUint8, kInt8, kUint16, kInt16
  bool activation_symmetric = false;            ///< true for --activation-type int8
  DataType weight_type = DataType::kInt8;
  /// 7-bit weight levels ([-64, 63]): ONNX Runtime's u8s8 kernels on x86 CPUs without VNNI
  /// (AVX2's VPMADDUBSW) saturate a pair of 8-bit products at int16; with |w| <= 63,
  /// 2·255·63 < 32767 cannot saturate, so those CPUs compute the model exactly (ONNX Runtime's
  /// quantizer recommends reduce_range there). Costs one bit of weight resolution.
  bool reduce_range = false;
  /// int8 weights of the nodes whose integer GEMM can saturate on those CPUs are stored as uint8
  /// instead (the same levels + 128, zero point 128): ONNX Runtime then runs its u8u8 kernels,
  /// exact on every CPU, without giving up the eighth bit. These are the Conv (not depthwise),
  /// MatMul and Gemm nodes whose input is uint8 with a non-zero zero point (see the emitter).
  bool saturation_safe = true;
  bool per_channel = true;                       ///< weights per output channel
  bool quantize_bias = true;                     ///< int32 bias DQ for Conv/Gemm
  std::set<std::string> exclude_nodes;           ///< node names left in float
  std::set<std::string> exclude_op_types;        ///< op types left in float
  /// Tensors (by value identity) that must stay float; the quality guard fills it.
  std::set<const ir::Value*> keep_float;
  /// Same, by tensor name (for decisions made on another copy of the model).
  std::set<std::string> keep_float_names;
  /// Tensors (by name) quantized at the 16-bit twin of an 8-bit activation_type (uint8 -> uint16,
  /// int8 -> int16): the whole Q/DQ group (shared scale) of each one is widened. Any widened
  /// tensor raises the model to opset 21; the groups ONNX Runtime cannot fuse (a 16-bit input or
  /// output) run in float there, the others stay integer.
  std::set<std::string> wide_names;
  /// Leave out the all-zero zero-point inputs of weight (int8) and bias (int32) DequantizeLinear
  /// nodes: optional in ONNX (zero of x's type is assumed) and 18 KB + 72 KB on MobileNetV2.
  bool omit_zero_points = true;
  /// W4A8: the weights stored with 4-bit levels, as (glob over the consuming node's name or the
  /// weight's name, bits 4 or 8) rules, later rules winning. A 4-bit weight (per output channel,
  /// quantize_weight4) is a packed int4 initializer read through Cast(to=int8) by the usual int8
  /// DequantizeLinear: ONNX Runtime folds the Cast at load and fuses DQ -> Conv -> Q into
  /// QLinearConv as for 8 bits, so the model runs at INT8 speed from a 4-bit file. Needs opset 21.
  std::vector<std::pair<std::string, int>> weight_bits;
  /// 8-bit weights whose values already lie on a symmetric per-output-channel grid (the static
  /// path's GPTQ weights), by initializer name: their channel scales, used instead of
  /// max|W_c| / 127 so that the levels are reproduced exactly (a channel whose largest level is
  /// below 127 would otherwise be rounded again onto another grid). Per-channel emission only.
  std::map<std::string, std::vector<float>> weight_scales;
  /// Remove Relu/Clip made redundant by the output quantization (see the header comment).
  bool fold_activations = true;
  /// Also place Q/DQ inside If/Loop/Scan bodies, on the body values `ranges` holds (calibrated
  /// with calib::ObserverOptions::subgraphs), with the weights and biases the body's nodes read
  /// (its own or an enclosing graph's). The name options apply there too (a name two sibling
  /// branches share names both). A body value without a range (a branch the samples never took)
  /// stays float.
  bool subgraphs = true;
};

/// What the emitter did.
struct QdqSummary {
  size_t quantized_nodes = 0;       ///< nodes whose inputs/weights were quantized
  size_t quantized_activations = 0; ///< Q->DQ pairs placed on activations
  size_t quantized_weights = 0;     ///< weights stored as integers
  size_t int4_weights = 0;          ///< of those, stored with 4-bit levels (QdqOptions::weight_bits)
  size_t quantized_biases = 0;      ///< biases stored as int32
  size_t folded_activations = 0;    ///< Relu/Clip removed
  std::vector<std::string> float_nodes;  ///< quantizable nodes left in float, with the reason
  /// Per-tensor parameters chosen for activations (value name after emission -> params).
  std::unordered_map<std::string, QParams> activation_params;
  /// The activations quantized at 16 bits because of QdqOptions::wide_names (whole groups).
  std::set<std::string> wide_activations;
  /// Of the counts above, inside If/Loop/Scan bodies.
  size_t body_activations = 0, body_nodes = 0;
};

/// True if qtool knows how to place Q/DQ for this op type (the op table of qdq_ops.cc).
bool is_quantizable_op(const std::string& op_type);

/// Places Q/DQ pairs in the main graph of `model` (see the header comment), and with
/// options.subgraphs in the If/Loop/Scan bodies that hold a Conv, ConvTranspose, Gemm or MatMul.
/// `ranges` must hold a range for every activation that is to be quantized (values without one
/// stay float). Raises
/// the default-domain opset to 13 (21 for 16-bit activation types); the model must already be at
/// an opset whose ops are compatible (run passes::upgrade_opset first). Throws kUnsupported for
/// bad option combinations, naming them.
QdqSummary emit_qdq(ir::Model& model, const RangeMap& ranges, const QdqOptions& options);

}  // namespace qtool::quant
