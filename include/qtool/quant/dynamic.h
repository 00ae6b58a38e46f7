// Dynamic quantization (`qtool quantize --mode dynamic`): int8 weights stored once, activations
// quantized on the fly from their actual range on every run, no calibration data.
//
// Each chosen node is rewritten in standard ONNX ops, the form ONNX Runtime's quantize_dynamic
// writes and its graph optimizer fuses (DynamicQuantizeLinear + MatMulInteger + Cast + Mul + Mul
// -> com.microsoft DynamicQuantizeMatMul / MatMulIntegerToFloat):
//
//   MatMul(A, W[K, N])           ->  a, s_a, z_a = DynamicQuantizeLinear(A)
//   Gemm(A, W, C; transB, alpha)     y = Cast(MatMulInteger(a, Wq[K, N], z_a, z_w)) · (s_a · s_w[N])
//                                    (+ beta·C for Gemm)
//   Conv(X, W, B) (opt-in)       ->  y = Cast(ConvInteger(x, Wq, z_x, z_w)) · (s_x · s_w[C,1,1]) + B[C,1,1]
//   Gather(T[V, D], ids)         ->  y = Cast(Gather(Tq, ids)) · Gather(s[V, 1], ids)   (int8 per row)
//   LSTM(X, W, R, ...)           ->  com.microsoft DynamicQuantizeLSTM (uint8 W/R per gate column)
//
// Weights: symmetric levels per output channel (s_w[c] = max|W_c| / 127). Stored as uint8 with
// zero point 128 (`weight_type` kUint8, the default) they run in ONNX Runtime's u8u8 kernels, exact
// on every CPU; int8 (kInt8, MatMul/Gemm only: ConvInteger and DynamicQuantizeLSTM keep uint8) runs
// the u8s8 kernels, whose AVX2 form (VPMADDUBSW, on x86 CPUs
// without VNNI) saturates pairs of products: DynamicQuantizeLinear's zero point sits anywhere in
// 0..255, so an input near its maximum meets two large weights often. ConvInteger takes uint8
// weights only in ONNX Runtime's CPU provider. One DynamicQuantizeLinear per activation, shared by
// every node that reads it (the q, k and v projections of a block read one).
//
// Nodes inside If/Loop/Scan bodies are rewritten too (Silero VAD's network lives in If branches):
// their weights (initializers of any enclosing graph, or Constant nodes) are stored in the main
// graph, once per distinct content (the branches of an If often hold equal weights).
//
// Not rewritten (left float, with the reason in DynamicSummary::float_nodes): a weight that is not
// a float constant, a batched (rank > 2) MatMul weight, Gemm with transA, a non-constant Gemm bias
// with beta != 1.
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "qtool/core/dtype.h"
#include "qtool/ir/graph.h"

namespace qtool::quant {

struct DynamicOptions {
  DataType weight_type = DataType::kUint8;  ///< kUint8 (zero point 128) or kInt8
  bool per_channel = true;                  ///< one weight scale per output channel
  /// Op types rewritten: MatMul, Gemm, Gather (embedding tables), LSTM (DynamicQuantizeLSTM; default)
  /// and Conv (ConvInteger; opt-in, see the README).
  std::set<std::string> op_types = {"MatMul", "Gemm", "Gather", "LSTM"};
  std::set<std::string> exclude_nodes;      ///< node names left in float (globs allowed)
  /// Nodes left in float by their first output's name (unique even where nodes have no name: the
  /// floor's search uses it).
  std::set<std::string> exclude_outputs;
  /// Weights with fewer elements are left in float (their int8 copy plus a scale saves nothing).
  int64_t min_weight_elements = 16;
};

/// One weight the dynamic rewrite stored (once, at its first reader).
struct DynamicLayer {
  std::string node, op_type, weight;
  std::string precision;  ///< "uint8" or "int8"
  std::string scheme;     ///< "per-channel(axis=1)", ...
  int64_t params = 0;
  int64_t bytes = 0;      ///< levels + scales
};

struct DynamicSummary {
  size_t matmuls = 0, gemms = 0, convs = 0, gathers = 0, lstms = 0;  ///< nodes rewritten, by op type
  size_t quantize_nodes = 0;                 ///< DynamicQuantizeLinear nodes placed
  int64_t float_weight_bytes = 0;            ///< float32 bytes of the weights quantized
  int64_t quant_weight_bytes = 0;            ///< their integer levels + scales
  std::vector<std::string> quantized_nodes;  ///< names (the output's when unnamed), in graph order
  std::vector<std::string> quantized_outputs;  ///< their first outputs' names, in the same order
  std::vector<DynamicLayer> layers;          ///< the weights stored
  std::vector<std::string> float_nodes;      ///< "node (op): reason" for candidates left in float
  size_t rewritten() const { return matmuls + gemms + convs + gathers + lstms; }
};

/// Rewrites the chosen nodes of `model`'s main graph (see the header comment). Raises the
/// default-domain opset to 11 when lower (DynamicQuantizeLinear). Throws kConfig for bad options.
DynamicSummary emit_dynamic(ir::Model& model, const DynamicOptions& options);

}  // namespace qtool::quant
