// cross_layer_equalization: equalizes the per-channel weight ranges of consecutive convolutions
// (Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and Bias Correction",
// section 4.1; the same rescaling as AIMET's and NNCF's CLE).
//
// Given:   y = Conv1(x, W1[, b1]) -> h (a chain of zero or more positively homogeneous,
//          channel-wise ops: Relu, LeakyRelu, MaxPool, AveragePool, Clip(0, +inf)) -> z, and every
//          use of z is input 0 of a Conv (Conv2a, Conv2b, ...) with a constant weight W2. W1, b1
//          and each W2 are float32 initializers read by nothing else; y and the chain's outputs
//          are read by nothing else and are not graph outputs.
// Execute: for each channel i of y, with r1_i = max|W1[i, ...]| (output channel i of Conv1) and
//          r2_i = max over the consumers of max|W2[o, i', ...]| (every weight that reads input
//          channel i: i' = i mod C/group, o in i's group; a depthwise consumer has one row per
//          channel), s_i = sqrt(r1_i · r2_i) / r2_i = sqrt(r1_i / r2_i), and
//            W1[i, ...] /= s_i,  b1[i] /= s_i,  W2[o, i', ...] *= s_i.
//          Since f(x / s) = f(x) / s for s > 0 and every op f of the chain, z' = z / s_i on
//          channel i and Conv2 sees W2 · s_i · z / s_i: outputs are unchanged (float rounding
//          aside). Afterwards r1_i = r2_i = sqrt(r1_i · r2_i). A Conv that is Conv2 of one pair
//          and Conv1 of the next takes both scalings; all pairs are rescaled in turn until no
//          s_i moves by more than `tolerance` (or max_iterations).
// Result:  same function, per-channel weight ranges equalized across each pair, which makes
//          per-tensor weight quantization (and the activation ranges it shapes) far less lossy on
//          depthwise-separable networks.
// Clip(0, 6) (ReLU6) is not homogeneous (min(x/s, 6) != min(x, 6)/s), so a chain holding one is
// skipped, unless `replace_relu6` is set: then, as in the DFQ paper, each such Clip inside an
// equalized chain is replaced by Relu first. That changes the float model (activations above 6 are
// no longer clipped) and is reported in CleResult::relu6_replaced.
// Runs after fold_batchnorm (so BatchNormalization is already in W/b) and before calibration.
// Rewrites only the given graph and its subgraphs; a pattern that does not match is skipped.
#pragma once

#include <cstddef>

#include "qtool/passes/pass.h"

namespace qtool::passes {

/// Knobs of cross_layer_equalization.
struct CleOptions {
  int max_iterations = 100;
  /// Stop when every scale of an iteration satisfies |s_i - 1| < tolerance.
  double tolerance = 1e-4;
  /// Replace Clip(0, 6) by Relu inside equalizable chains (changes the float model; see above).
  bool replace_relu6 = false;
};

/// What cross_layer_equalization did.
struct CleResult {
  size_t pairs = 0;            ///< Conv1 -> consumers groups equalized
  size_t depthwise_pairs = 0;  ///< of which Conv1 or a consumer is depthwise (group == channels)
  size_t relu6_replaced = 0;   ///< Clip(0, 6) nodes turned into Relu (replace_relu6 only)
  size_t skipped_relu6 = 0;    ///< chains left alone because of a Clip(0, 6) (replace_relu6 off)
  int iterations = 0;          ///< rescaling rounds until convergence
};

/// Equalizes every matching pair in `model` (see the header comment).
CleResult equalize_cross_layer(ir::Model& model, const CleOptions& options = {});

/// The registered pass form (default CleOptions); returns the number of pairs equalized.
size_t cross_layer_equalization(ir::Model& model, const PassOptions& options = {});

}  // namespace qtool::passes
