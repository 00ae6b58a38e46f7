// Output and per-layer drift of a quantized model against its FP32 original.
//
// Both models run on qtool's executor on the same samples, one sample at a time; metrics are
// accumulated in running sums, so memory holds one sample's tensors, never all outputs.
//
// Metrics, for a reference r (FP32) and a test t (quantized), summed over every element of every
// sample (not averaged per sample, so one bad sample cannot hide in a mean of dB values):
//   SQNR (dB)  = 10 * log10( sum r^2 / sum (r - t)^2 )        (+inf when t == r exactly)
//   cosine     = sum r*t / sqrt( sum r^2 * sum t^2 )
//   max / mean absolute error = max |r - t|, sum |r - t| / count
// For classifier-like outputs ([N,C] or [N,C,1,1], C >= 2), each row is one prediction:
//   top-1 agreement = fraction of rows where argmax t == argmax r
//   top-5 agreement = fraction of rows where argmax r is among the 5 largest entries of t
//                     (the quantized model's top-5 accuracy with the FP32 prediction as the label)
// With labels: accuracy of each model (argmax == label) and the drop in points (FP32 - quantized).
//
// Non-finite values: a pair whose reference is NaN/inf says nothing about quantization and is
// left out (counted in non_finite()). A NaN/inf in the quantized output where the reference is
// finite means the quantized model is broken: it counts as maximal error (SQNR -inf, cosine 0,
// errors +inf; a row holding a NaN disagrees), so such an output never looks fine. A figure that
// was not measured (no element, no classifier row, no label) is NaN.
//
// This is the one comparison of qtool: `qtool compare`, the held-out evaluation of `qtool
// quantize` and the static path's quality guard (pipeline/guard.h) all use it.
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "qtool/core/tensor.h"
#include "qtool/ir/graph.h"
#include "qtool/report/report.h"

namespace qtool::report {

/// Version of the `qtool compare --json` document ("major.minor"; minor bumps only add fields).
inline constexpr const char* kCompareSchemaVersion = "1.1";  // 1.1: outputs[].mask_iou

/// Running sums for SQNR, cosine and absolute errors of one tensor stream (reference vs test).
/// O(1) memory; add() may be called any number of times with tensors of any (equal) size.
class ErrorAccumulator {
 public:
  /// Adds n element pairs. ref and test must have n elements each. A pair with a non-finite
  /// reference is skipped; a non-finite test value with a finite reference makes the stream broken.
  void add(const float* ref, const float* test, int64_t n);
  /// Adds two float tensors of the same element count (other dtypes are converted to float).
  /// Throws kInvalidInput naming `what` if the element counts differ.
  void add(const Tensor& ref, const Tensor& test, const std::string& what);
  /// Merges another accumulator's sums into this one.
  void merge(const ErrorAccumulator& other);

  /// Element pairs measured: those with a finite reference (broken ones included).
  int64_t count() const { return count_; }
  /// 10*log10(sum r^2 / sum e^2); +inf if sum e^2 == 0; -inf if broken; NaN if nothing was measured.
  double sqnr_db() const;
  /// sum r*t / sqrt(sum r^2 sum t^2); 1 when both are all zero; 0 if broken; NaN if nothing was measured.
  double cosine() const;
  /// max |r - t|; +inf if broken; NaN if nothing was measured.
  double max_abs() const;
  /// sum |r - t| / count; +inf if broken; NaN if nothing was measured.
  double mean_abs() const;
  /// Element pairs that held a NaN or infinity on either side (none of them is in the sums).
  int64_t non_finite() const { return non_finite_; }
  /// Of those, the pairs with a finite reference and a non-finite test value: the test is broken.
  int64_t broken() const { return broken_; }

 private:
  int64_t count_ = 0;
  int64_t non_finite_ = 0;
  int64_t broken_ = 0;
  double sum_rr_ = 0.0, sum_tt_ = 0.0, sum_rt_ = 0.0, sum_ee_ = 0.0, sum_abs_ = 0.0, max_abs_ = 0.0;
};

/// Top-k agreement and label accuracy of classifier rows.
class ClassifierAccumulator {
 public:
  /// Adds `rows` predictions of `classes` scores each (row-major). `labels` is empty or holds one
  /// label per row (a negative label means "unknown": the row counts for agreement only). A row
  /// whose reference holds a NaN is skipped; a test row holding a NaN counts as wrong.
  void add(const float* ref, const float* test, int64_t rows, int64_t classes, const std::vector<int64_t>& labels);

  int64_t rows() const { return rows_; }
  double top1_agreement() const;  ///< NaN when no rows
  double top5_agreement() const;  ///< NaN when no rows (k = min(5, classes))
  int64_t labeled_rows() const { return labeled_; }
  double accuracy_ref() const;    ///< NaN when no labeled rows
  double accuracy_test() const;   ///< NaN when no labeled rows
  /// Mean over rows of KL(p_ref ‖ p_test) in nats: rows that are already distributions (entries in
  /// [0, 1] summing to 1 within 1e-3, on both sides) are taken as given, other rows (logits) go
  /// through a softmax. NaN when no rows; +inf when a test row has NaN or puts 0 where FP32 does not.
  double mean_kl() const;

 private:
  int64_t rows_ = 0, top1_ = 0, top5_ = 0, labeled_ = 0, correct_ref_ = 0, correct_test_ = 0;
  double kl_sum_ = 0.0;
};

/// True for [N,C] or [N,C,1,1] with C >= 2 (one score vector per row).
bool is_classifier_shape(const Shape& shape);

/// One sample: input tensors by name, a display name (file), and its labels (one per batch row, may
/// be empty). The provider returns false when there are no more samples.
struct CompareSample {
  std::map<std::string, Tensor> inputs;
  std::string name;
  std::vector<int64_t> labels;
};
using SampleProvider = std::function<bool(CompareSample& sample)>;

/// The reference model's outputs of a fixed sequence of samples, kept between comparisons against
/// several quantized models (the quality guard's rounds): sample i's outputs are taken from here
/// instead of running the reference when present, stored when absent, until `max_bytes` (then the
/// cache empties itself and stays off).
struct ReferenceCache {
  std::vector<std::vector<Tensor>> outputs;
  size_t bytes = 0;
  size_t max_bytes = size_t{256} << 20;
  bool overflow = false;
};

struct CompareOptions {
  int64_t max_samples = 0;   ///< 0: all the provider gives
  bool per_layer = true;     ///< match intermediate tensors by name and rank them
  int worst_layers = 10;     ///< how many layers the text report lists
  int threads = 1;           ///< executor threads
  /// Run the quantized model's QDQ groups as the integer kernels ONNX Runtime fuses them into
  /// (passes::fuse_qdq_to_qoperator), so that its outputs and accuracy are ONNX Runtime's; false
  /// runs the QDQ graph as written (dequantize, float op, quantize).
  bool fuse_qdq = true;
  /// Reference outputs kept between calls on the same samples (used only without per_layer).
  ReferenceCache* reference_cache = nullptr;
};

/// Metrics of one graph output.
struct OutputComparison {
  std::string name;
  Shape shape;               ///< of the last sample
  ErrorAccumulator error;
  /// Every sample so far gave classifier-shaped outputs of equal shapes on both sides.
  bool classifier = false;
  ClassifierAccumulator classes;
  int64_t samples = 0;       ///< samples added
  /// Per-channel signal and noise along axis 1 and the last axis (channels of a detector head, a
  /// concatenation of scores and coordinates) where they hold at most kMaxChannels; dropped when a
  /// sample's shape differs.
  struct ChannelStats {
    int64_t axis = 0;
    std::vector<double> signal, noise;
  };
  std::vector<ChannelStats> channel_stats;
  static constexpr int64_t kMaxChannels = 4096;
  /// Set by the caller before the first sample when the model reads only integer inputs (token
  /// ids): a [B, T, V] output with V >= 32 is then judged as next-token logits.
  bool token_model = false;
  /// Set by the caller before the first sample when the output has the shape of one of the
  /// model's float inputs and the model reads more than one input: a recurrent state that a
  /// stream feeds back at the next step (Silero VAD's stateN for state).
  bool recurrent_state = false;
  /// Over every position of such logits: Σ KL(softmax(ref) ‖ softmax(test)) and Σ H(softmax(ref)).
  double lm_kl = 0.0, lm_entropy = 0.0;
  int64_t lm_positions = 0;
  /// Dense probability map: every sample gave a reference output of rank >= 3 with one channel of
  /// at least 16 positions ([N, 1, H, W] or [N, 1, L]: a text, saliency or binary segmentation
  /// map) and values in [0, 1]. Its masks thresholded at 0.5 are compared: intersection and union
  /// counted over all samples. An image-like output in [0, 1] (many mid-range values) is not one.
  bool prob_map = false;
  int64_t mask_intersection = 0, mask_union = 0;
  int64_t map_values = 0, map_mid_values = 0;  ///< reference values, and those in (0.1, 0.9)
  /// IoU of the thresholded masks (FP32 vs quantized); NaN when the output is not a dense
  /// probability map, when more than 20% of its FP32 values lie in (0.1, 0.9) (not a map of
  /// decisions but of intensities), or when neither side marks any position.
  double mask_iou() const;
  /// The relative NLL increase on the model's own next-token distribution: Σ KL / Σ H (the
  /// expected cross-entropy of the test model minus the reference's, over the reference's); NaN
  /// when the output is not next-token logits.
  double lm_nll_increase() const;

  /// The lower SQNR (dB) of two families of channels along an axis whose channels' FP32 RMS fall
  /// into two families at least two decades apart (the widest gap between sorted levels), e.g. 0..1
  /// scores concatenated with 0..1000 box coordinates, where the whole tensor's SQNR only sees the
  /// coordinates. NaN when no axis has such a gap (the whole-tensor SQNR then says it all).
  double channel_group_sqnr_db() const;

  /// Adds one sample's pair of output tensors (any dtype, converted to float): the error sums,
  /// and the classifier rows while the output stays classifier-like. `labels` as
  /// ClassifierAccumulator::add. Throws kInvalidInput when the element counts differ.
  void add(const Tensor& ref, const Tensor& test, const std::vector<int64_t>& labels = {});

 private:
  void add_lm_positions(const Tensor& ref, const Tensor& test);
};

/// Drift of one intermediate tensor present in both models under the same name.
struct LayerDrift {
  std::string tensor;        ///< value name
  std::string node;          ///< producing node in the quantized model
  std::string op_type;
  ErrorAccumulator error;
  /// dB lost at this layer: (lowest SQNR among its matched inputs, capped at 120 dB; model inputs
  /// and weights count as exact) minus its own SQNR (capped likewise).
  double sqnr_loss_db = 0.0;
  /// The noise this layer adds, as an SQNR: -10*log10(NSR_out - NSR_in) with NSR = 10^(-SQNR/10)
  /// (relative noise power; NSR_in of its noisiest matched input). It is the SQNR the layer would
  /// have if it were the only source of error; layers are ranked by it, lowest first, because
  /// relative noise adds up through a network while dB differences saturate near exact layers.
  /// +inf when the layer adds no noise.
  double added_noise_db = std::numeric_limits<double>::infinity();
};

struct CompareResult {
  int64_t samples = 0;
  std::vector<OutputComparison> outputs;
  /// Sorted by added_noise_db, lowest (most noise added) first; empty when per_layer is off or
  /// nothing matched.
  std::vector<LayerDrift> layers;
  int64_t matched_tensors = 0;
};

/// Runs `fp32` and `quantized` on each sample from `next` and accumulates the metrics above.
/// Outputs are matched by position; both models must have the same number of outputs (else
/// kInvalidInput). Errors name the sample.
CompareResult compare_models(const ir::Model& fp32, const ir::Model& quantized, const SampleProvider& next,
                             const CompareOptions& options = {});

/// Quality gates; a field left empty is not checked.
struct Gates {
  std::optional<double> max_drop_points;  ///< accuracy drop (FP32 - quantized, points) <= this
  std::optional<double> min_sqnr_db;      ///< every output's SQNR >= this
  std::optional<double> min_agreement;    ///< every classifier output's top-1 agreement >= this (0..1)
};
/// One gate's verdict.
struct GateResult {
  std::string gate;      ///< "max-drop", "min-sqnr", "min-agreement"
  std::string output;    ///< which output it was checked on
  double threshold = 0.0;
  double value = 0.0;
  bool passed = true;
  std::string message;   ///< "top-1 agreement 0.952 < 0.990 on 'logits'"
};
/// Evaluates the gates. A gate that cannot be evaluated (max-drop without labels, min-agreement
/// without a classifier output) throws kConfig: a CI gate that silently passes would be worse.
std::vector<GateResult> check_gates(const CompareResult& result, const Gates& gates);

/// The human-readable report (ends with a newline).
std::string format_compare_text(const CompareResult& result, const std::vector<GateResult>& gates,
                                int worst_layers = 10);

/// The `--json` document: schema "qtool.compare", version kCompareSchemaVersion (README.md, "qtool compare --json schema").
nlohmann::json compare_to_json(const CompareResult& result, const std::vector<GateResult>& gates,
                               const std::string& fp32_path, const std::string& quantized_path);

/// The held-out summary that QuantizeReport::outputs takes.
std::vector<OutputQuality> to_output_quality(const CompareResult& result);

/// Reads a labels file for `qtool compare --labels`:
///  - .npy of integers: labels in sample order;
///  - text/CSV: one label per line in sample order, or "name,label" lines; with a header row, the
///    key column is the first named file/filename/image/name/path and the label column the first
///    named class_index/label/class/target whose values are all integers.
/// Returns (key -> label) with keys being file names without folder and extension, or "#<i>" for
/// order-based files. Throws kIo / kInvalidInput naming the file and line.
std::map<std::string, int64_t> read_labels(const std::string& path);

/// The label of sample `index` named `name` (file name; folder and extension are ignored), or -1.
int64_t lookup_label(const std::map<std::string, int64_t>& labels, const std::string& name, int64_t index);

}  // namespace qtool::report
