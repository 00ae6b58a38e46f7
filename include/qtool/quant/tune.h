// Distillation tuning of a quantized model (qtool quantize --tune-steps N): after RTN / GPTQ / AWQ
// has chosen every layer's grid and levels, the quantized model is trained for a few hundred steps
// on the calibration samples to reproduce the float model's outputs, in the spirit of AutoRound
// (Cheng et al. 2023), EfficientQAT's end-to-end stage (Chen et al. 2024) and BRECQ/QDrop-style
// reconstruction, but end to end through the whole graph.
//
// Parameters, per quantized weight W [rows, cols] with block grids (scale s, zero point z, levels
// [lo, hi]):
//   - a latent weight w (initialised with the values the levels were rounded from: GPTQ's updated
//     weights, or W itself), quantized in the forward pass as ŵ = s·(clamp(round(w/s) + z, lo, hi) − z);
//     its gradient passes straight through the rounding inside the clamp range (STE) and is zero
//     outside it;
//   - a log-scale θ per block, s = s₀·e^θ (rounded to float16 in the forward pass when the scales are
//     stored as float16, so the tuned model is exactly what is written), with the LSQ gradient
//     ∂ŵ/∂s = (q − z) − w/s inside the range and (q − z) outside (Esser et al. 2020);
//   - float vectors the output keeps in float: Conv/Gemm biases and the per-channel weights of
//     Mul/Add nodes (RMSNorm / LayerNorm weights), updated freely.
// Loss, per graph output: the KL divergence KL(p_float ‖ p_quant) of the softmax over the class axis
// for classifier / language-model logits (taken before a final Softmax when there is one), else
// the squared error relative to the float output's energy. The float model's outputs are recomputed
// for each sample (bounded memory). Optimizer: Adam with a cosine learning-rate decay, minibatches
// of `batch` samples drawn by a fixed-seed shuffle. A held-out share of the calibration samples
// measures the loss before tuning and every `eval_every` steps; the parameters with the lowest
// held-out loss are kept, so tuning never returns a model worse on those samples than its start.
// Deterministic: the same inputs and options give the same result, for any thread count.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "qtool/ir/graph.h"
#include "qtool/quant/weight_quant.h"

namespace qtool::quant {

struct CalibrationInputs;  // qtool/quant/lowbit.h

struct TuneOptions {
  int steps = 0;               ///< optimizer steps (0 = no tuning)
  int batch = 16;              ///< calibration samples per step
  double lr = 5e-3;            ///< latent weights, in units of each block's initial scale per step
  double lr_scale = 2e-3;      ///< log-scales
  double lr_float = 1e-3;      ///< float vectors, relative to each vector's initial RMS
  bool tune_weights = true;    ///< latent weights (levels may change)
  bool tune_scales = true;     ///< block scales
  bool tune_float = true;      ///< biases and normalization weights
  double holdout = 0.125;      ///< share of the samples held out for the early-stopping loss (at least 1)
  int eval_every = 25;         ///< steps between held-out evaluations
  std::string loss = "auto";   ///< "auto" | "kl" | "mse"
  /// Weight of the feature-distillation term: the mean over tuned layers of the relative squared
  /// error of each layer's output against the float model's (0 = outputs only).
  double feature_weight = 0.0;
  /// Quant noise (Fan et al. 2021): in each training step this share of the blocks (chosen at
  /// random) is left unquantized, decreasing linearly to 0 at 75% of the steps, which eases the
  /// optimization at ternary/2-bit. Held-out losses and the result are always fully quantized.
  double quant_noise = 0.0;
  /// 1 = end to end. N > 1: stage-wise reconstruction (BRECQ-like): the tuned layers in node order
  /// split into N groups, each tuned for steps/N steps on its own layers' outputs against the float
  /// model's, the groups before it already tuned and fixed; the last group also on the model output.
  int stages = 1;
  /// > 0: each latent weight stays within this many (initial) block scales of its starting value,
  /// so a weight can only move to nearby levels (0.5: only the other rounding direction of its
  /// start, as AutoRound; 0 = unbounded).
  double latent_range = 0.0;
  int threads = 1;             ///< samples of a minibatch run in parallel
  uint64_t seed = 1;           ///< minibatch shuffle
  /// Augmentation of image inputs (4-D float [N, C, H, W], H and W >= 16) in the training steps:
  /// "auto" = a random horizontal flip and a random resized crop (30-100% of the area, aspect 3/4 to
  /// 4/3, bilinear back to H×W) per sample, "none" = the samples as they are. The float model sees
  /// the same augmented input, so every augmented sample comes with its exact target: with a few
  /// hundred images, this is what keeps the tuned model from fitting the calibration images alone.
  std::string augment = "auto";
  /// Probability of mixing a training sample with another one of the calibration set (mixup,
  /// x = λ·x1 + (1−λ)·x2, λ uniform in [0, 1]) after augmentation; float inputs only.
  double mixup = 0.0;
  /// Bytes of loaded samples kept in memory between steps (sources only; 0 = reload every time).
  size_t cache_bytes = size_t{1} << 30;
  /// Calibration samples used (0 = every sample the inputs hold, ignoring
  /// CalibrationInputs::max_samples, which bounds the GPTQ / AWQ statistics pass).
  size_t samples = 0;
};

/// One quantized weight of the model being tuned.
struct TunableWeight {
  const ir::Value* weight = nullptr;   ///< float initializer of the student model (its values are replaced)
  QuantizedMatrix* q = nullptr;        ///< levels and grids, updated in place
  std::vector<float> latent;           ///< [rows, cols] starting values (see the header comment)
  bool fp16_scales = false;            ///< scales are stored (and rounded) as float16
  /// Initializer element of matrix element (r, c).
  std::function<int64_t(int64_t r, int64_t c)> storage_index;
  /// [rows, cols], 1 = pruned: held at exactly 0 (its grid's level of 0) and never tuned; empty = none.
  std::vector<uint8_t> pruned;
};

struct TuneReport {
  int steps = 0;                 ///< steps run
  int best_step = 0;             ///< step whose parameters were kept (0 = the untuned ones)
  double holdout_before = 0.0;   ///< held-out loss before tuning
  double holdout_after = 0.0;    ///< held-out loss of the kept parameters
  double train_first = 0.0;      ///< minibatch loss of the first step
  double train_last = 0.0;       ///< minibatch loss of the last step
  int64_t train_samples = 0, holdout_samples = 0;
  int64_t levels_changed = 0;    ///< weights whose level differs from the start
  int64_t float_params = 0;      ///< float values tuned (biases, norm weights)
  std::string loss;              ///< loss per output, e.g. "kl(logits)"
  double seconds = 0.0;
};

/// Tunes `weights` (and the float vectors described above) of `student`, a float model whose
/// quantized weight initializers are replaced by their fake-quantized values, against `teacher`
/// (the float model before quantization: same inputs, and the values the losses read have the
/// same names). On return every TunableWeight's q holds the kept levels and scales, and the
/// tuned float vectors are written into `student`'s initializers. Throws kConfig without
/// samples, kUnsupported when an op between the parameters and the loss has no gradient.
TuneReport tune_quantized(ir::Model& student, const ir::Model& teacher, std::vector<TunableWeight>& weights,
                          const CalibrationInputs& calib, const TuneOptions& options);

/// The fake-quantized matrix ŵ of `latent` on q's grids with `scales` (one per grid, row-major
/// [rows, k_blocks]); writes the levels into q.levels. Exposed for tests.
void fake_quantize(const std::vector<float>& latent, QuantizedMatrix& q, const std::vector<float>& scales,
                   std::vector<float>& out, std::span<const uint8_t> pruned = {});

}  // namespace qtool::quant
