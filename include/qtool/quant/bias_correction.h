// Empirical bias correction of a quantized model (the per-layer form of NNCF's
// FastBiasCorrection; Nagel et al. 2019 "Data-Free Quantization", section 4.2, estimated from data
// instead of from BatchNormalization statistics).
//
// Quantizing a layer's weights and its input adds an error whose mean over the data is not zero:
// E[y_q - y] = E[W_q · Q(x)] - E[W · x] ≠ 0 per output channel, and a biased error in every channel
// shifts the next layer's input distribution (the "biased error" of DFQ, large on depthwise
// layers with few weights per channel). Since the mean is all a bias can hold, the best constant
// correction is the mean error itself:
//   e_c = mean over samples and positions of (y_q - y) on output channel c,   b'_c = b_c - e_c.
//
// How it is measured: the FP32 model runs on the samples with an executor observer; for every
// quantized Conv/Gemm of the quantized model, a probe model holds the layer as quantized (its
// input QuantizeLinear -> DequantizeLinear, its weight and bias DequantizeLinear copied from the
// quantized model). As soon as the observer has the layer's FP32 input(s) and its FP32 output y of
// a sample, the probe runs on the inputs and the per-channel sums of y_q - y are accumulated
// (bounded memory: a few doubles per channel, no tensor kept past the sample). Samples run side by
// side on the threads and their sums are added in sample order (the same result at any thread
// count). Each layer is therefore corrected for its own error given the FP32 input (the upstream
// error is the upstream layers' to correct), so all layers are measured in one pass over the
// samples; this is per-layer rather than sequential correction (NNCF's slower BiasCorrection re-runs
// the corrected model layer by layer), chosen to cost one FP32 pass plus one evaluation of each layer.
//
// Applying e_c: an int32 bias DequantizeLinear(b_q, s_b) gets b_q[c] -= round(e_c / s_b[c]) (the
// scale s_x · s_w[c] is far finer than e_c); a float bias gets b[c] -= e_c (Gemm: / beta); a layer
// without bias gets one: int32 with scale s_x · s_w[c] when its input and weight scales are
// constants (so ONNX Runtime still fuses QLinearConv / QGemm), else float.
// Layers handled: Conv (channel axis 1 of the output) and Gemm with transA = 0 (axis 1). MatMul has
// no bias input and is left alone. Only the main graph is corrected.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "qtool/data/sample_source.h"
#include "qtool/ir/graph.h"

namespace qtool::quant {

/// The per-layer sums of earlier correct_biases calls, keyed by a 128-bit fingerprint of each
/// layer's probe (its quantized Q/DQ cone with the weights, scales and attributes, the FP32 output
/// it is compared with, the inputs it reads) and of the samples used. A cache belongs to one FP32
/// model and one sample source: a layer whose probe did not change since (the guard raised other
/// tensors) is not measured again and gets the same correction, and when no layer changed the FP32
/// pass is skipped.
struct BiasCorrectionCache;
std::shared_ptr<BiasCorrectionCache> make_bias_correction_cache();

/// Knobs of correct_biases.
struct BiasCorrectionOptions {
  /// Samples used (spread evenly over the source); the estimate is a mean, so a few dozen suffice.
  size_t max_samples = 64;
  int threads = 1;
  BiasCorrectionCache* cache = nullptr;  ///< see BiasCorrectionCache; nullptr: measure every layer
};

/// The correction of one layer.
struct LayerBiasCorrection {
  std::string node;               ///< node name (or its output name when unnamed)
  std::vector<double> mean_error; ///< e_c before the correction, per output channel
  double mean_abs_output = 0.0;   ///< mean |y| of the FP32 layer output (scale for e_c)
  bool bias_added = false;        ///< the layer had no bias; one was added
};

/// What correct_biases did.
struct BiasCorrectionResult {
  size_t samples = 0;
  size_t reused = 0;                         ///< layers whose sums came from the cache
  std::vector<LayerBiasCorrection> layers;   ///< corrected layers, in graph order
  std::vector<std::string> skipped;          ///< "node: reason" for quantized layers left alone
  /// Mean over layers of mean_c |e_c| / mean |y| (how biased the layers were), in percent.
  double mean_relative_error_percent() const;
};

/// True if the main graph has a depthwise Conv (group == output channels, one input channel per
/// group). `qtool quantize --bits 8 --per-tensor` corrects biases by default on such models
/// (measured: MobileNetV2 per-tensor top-1 +0.8 points, per-channel +0.2; on SqueezeNet, which has
/// no depthwise conv, it lowered top-1 by 0.8 / 0.4 points; BENCHMARKS.md).
bool has_depthwise_conv(const ir::Model& model);

/// Corrects the biases of the quantized Conv/Gemm layers of `quantized` against `fp32` (the float
/// model it was quantized from: layers are matched by their output tensor name and op type) on
/// `samples`. Throws kInvalidInput for bad samples; layers that cannot be matched are skipped.
BiasCorrectionResult correct_biases(const ir::Model& fp32, ir::Model& quantized, data::SampleSource& samples,
                                    const BiasCorrectionOptions& options = {});

}  // namespace qtool::quant
