// Reports of a `qtool quantize` run: the summary table printed at the end of every run, and the
// `--report report.json` / `--report report.html` files.
//
// The quantize command fills one QuantizeReport as it goes (settings, per-layer choices, timings,
// output quality on held-out data) and hands it to these functions; nothing here runs a model or
// prints. analyze_quantized_weights() derives the per-layer size figures from the emitted model
// itself, so the numbers in the report are what the file really stores (scales and zero points
// included), not what the quantizer intended.
//
// JSON schema: see README.md ("Report JSON schema"); `schema` is
// "qtool.quantize_report" and `schema_version` is kQuantizeReportSchemaVersion. Fields are only
// ever added within one major version.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "qtool/ir/graph.h"

namespace qtool::report {

/// Version of the report JSON document ("major.minor"; minor bumps only add fields).
inline constexpr const char* kQuantizeReportSchemaVersion = "1.5";  // 1.1: "actions"; 1.2: outputs' "mask_iou"; 1.3: layers' "sparsity", "pruning", "sparse_storage"; 1.4: "budget"; 1.5: evaluation "layer_samples"

/// "Not measured" for the double fields below (written as JSON null, shown as "-").
inline constexpr double kNotMeasured = std::numeric_limits<double>::quiet_NaN();

/// Summary statistics of one layer's quantization scales (over channels or blocks).
struct ScaleStats {
  int64_t count = 0;   ///< number of scales (1 per-tensor, C per-channel, C*K/B block-wise)
  double min = 0.0;
  double max = 0.0;
  double mean = 0.0;
};

/// What was done to one weight (or one layer's activations) and what it cost.
struct LayerReport {
  std::string node;        ///< consuming node name (e.g. "Conv_12"), or the weight name if unknown
  std::string op_type;     ///< "Conv", "Gemm", "MatMul", "MatMulNBits", ...
  std::string weight;      ///< the weight initializer's name (FP32 model)
  std::string precision;   ///< "int8", "uint8", "int4", "uint4", "int2", "ternary", "binary", "fp32", "fp16"
  int bits = 32;           ///< storage bits per weight element (before scales)
  std::string scheme;      ///< "per-tensor", "per-channel(axis=0)", "block(32, axis=1)", "matmulnbits(32)", ...
  std::string method;      ///< "rtn", "rtn+clip", "gptq", "awq", "minmax", ... (free text)
  bool symmetric = true;   ///< false when zero points are stored
  int64_t params = 0;      ///< weight elements
  int64_t fp32_bytes = 0;  ///< params * 4
  int64_t bytes = 0;       ///< stored bytes: packed weights + scales + zero points (+ outliers)
  ScaleStats scales;
  /// Weight SQNR in dB: 10*log10(sum w^2 / sum (w - dq(q(w)))^2); NaN when not measured.
  double weight_sqnr_db = kNotMeasured;
  /// SQNR in dB of this layer's output (quantized vs FP32 model) on held-out data; NaN when not measured.
  double output_sqnr_db = kNotMeasured;
  std::string note;        ///< e.g. "kept in float: output SQNR 3 dB when quantized"
  /// Fraction of the weights that are exactly 0 in the output (NaN: not recorded), and how they
  /// were pruned ("sparsegpt 2:4"; "" = not pruned) and whether they are stored as mask + kept levels.
  double sparsity = kNotMeasured;
  std::string pruning;
  bool sparse_storage = false;

  /// Effective bits per weight including scales and zero points: 8 * bytes / params.
  double bits_per_weight() const { return params > 0 ? 8.0 * static_cast<double>(bytes) / params : 0.0; }
};

/// Agreement of one model output, quantized vs FP32, on held-out samples (see report/compare.h).
struct OutputQuality {
  std::string name;
  int64_t samples = 0;
  double sqnr_db = kNotMeasured;     ///< +inf when identical
  double cosine = kNotMeasured;
  double top1_agreement = kNotMeasured;  ///< fraction in [0,1]; NaN for non-classifier outputs
  double top5_agreement = kNotMeasured;
  double mask_iou = kNotMeasured;    ///< a one-channel probability map's mask IoU at 0.5 (schema 1.2)
};

/// Wall time of one phase of the run ("load", "calibrate", "quantize", "evaluate", "save").
struct Timing {
  std::string phase;
  double seconds = 0.0;
};

/// Everything a quantize run reports. Fields left empty/NaN are shown as "-" and written as null.
/// One plan on the size/quality curve the budget search traced (--target-size / --target-bpw).
struct BudgetCurvePoint {
  int64_t weight_bytes = 0;         ///< stored bytes of the searched layers' weights
  double predicted_sqnr_db = 0.0;   ///< from the per-layer noise measured alone (summed)
};

/// What the budget search did (JSON "budget"; an HTML chart of the curve).
struct BudgetSummary {
  std::string target;               ///< as given: "15%", "1500000", "3.0 bits per weight"
  int64_t target_file_bytes = 0;    ///< the file size aimed at (0 for a bits-per-weight target)
  double target_bits_per_weight = 0.0;  ///< 0 for a size target
  int64_t weight_budget_bytes = 0;  ///< the searched layers' byte budget the last solve used
  std::vector<std::string> candidates;  ///< the forms offered to every layer
  size_t measurements = 0;          ///< (layer, form) pairs measured
  size_t samples = 0;               ///< held-out samples each measurement ran on
  std::vector<BudgetCurvePoint> curve;  ///< smallest plan first
  BudgetCurvePoint chosen;
  double bits_per_weight = 0.0;     ///< of the chosen plan, over every searched layer (float ones at 32)
  std::map<std::string, int> layers_by_format;  ///< the chosen plan: format -> layers
  double seconds = 0.0;
};

struct QuantizeReport {
  std::string qtool_version = "0.1.0";
  std::string input_model;      ///< path of the FP32 model
  std::string output_model;     ///< path written
  std::string precision;        ///< headline, e.g. "W4 (block 32) A32", "W8A8 QDQ", "ternary"
  /// The options of the run as given (name -> value), e.g. {"bits":"4","method":"gptq"}.
  std::map<std::string, std::string> settings;
  int64_t fp32_file_bytes = 0;  ///< size of the input model file (0 if unknown)
  int64_t output_file_bytes = 0;///< size of the written model file (0 if unknown)
  int64_t output_zstd_bytes = 0;///< that file compressed by zstd at its default level 3 (0 if unknown)
  std::vector<LayerReport> layers;
  /// Output quality on held-out calibration data; empty when no data was given.
  std::vector<OutputQuality> outputs;
  int64_t eval_samples = 0;     ///< held-out samples behind `outputs`
  int64_t layer_samples = 0;    ///< held-out samples behind the layers' output_sqnr_db (0: not measured)
  std::vector<Timing> timings;
  /// What the pipeline did beyond the plain quantization (CLE, bias correction, tuning, tensors the
  /// quality guard kept in float): text "action: ..." lines, JSON "actions".
  std::vector<std::string> actions;
  std::vector<std::string> warnings;  ///< things the user must know (a broken-looking model, skipped layers)
  std::optional<BudgetSummary> budget;  ///< the budget search, when one ran

  /// Weight elements over all layers.
  int64_t total_params() const;
  /// Bytes of all layers' weights as stored (packed + scales + zero points).
  int64_t total_weight_bytes() const;
  /// 8 * total_weight_bytes / total_params over quantized and float layers alike (32 = nothing quantized).
  double bits_per_weight() const;
  /// output_file_bytes / fp32_file_bytes * 100, or NaN if either size is unknown.
  double size_percent() const;
};

/// Scans a quantized model for weights stored in quantized form and describes each one: every
/// DequantizeLinear whose input is an integer initializer (per-tensor, per-axis or blocked scales;
/// int8/uint8/int4/uint4/int2/uint2), every com.microsoft MatMulNBits (bits, block_size), and
/// every float initializer of >= `min_float_params` elements read by Conv/Gemm/MatMul (reported as
/// "fp32"/"fp16"). Fills node, op_type, weight, precision, bits, scheme, symmetric, params,
/// fp32_bytes, bytes and scales; the error fields stay NaN for the caller to fill. Never throws on
/// unusual graphs: what it cannot classify it leaves out.
std::vector<LayerReport> analyze_quantized_weights(const ir::Model& quantized, int64_t min_float_params = 16);

/// Starts the report of a finished run: paths, file sizes (read from disk; 0 for a missing file),
/// the headline precision, and `layers` from analyze_quantized_weights(quantized). The caller adds
/// settings, per-layer errors, held-out quality (to_output_quality in compare.h), timings, warnings.
/// Sets r.output_file_bytes and r.output_zstd_bytes from the file r.output_model (0 when absent).
void measure_output_file(QuantizeReport& r);

QuantizeReport make_quantize_report(const std::string& input_path, const std::string& output_path,
                                    const ir::Model& quantized, const std::string& precision);

/// The plain-text summary table printed at the end of `qtool quantize` (ends with a newline):
///
///     precision        size                bits/weight  output SQNR  top-1 agree  samples
///     FP32             1,234,567 B (100%)  32.00        -            -            -
///     W4 (block 32)    187,654 B (15.2%)   4.50         31.2 dB      99.0%        100
///
/// followed by the actions and warnings, if any. The caller writes it to stdout.
std::string format_summary_table(const QuantizeReport& report);

/// The report as one JSON document (schema "qtool.quantize_report", version kQuantizeReportSchemaVersion).
/// NaN becomes null; +inf SQNR (identical outputs) becomes null with "identical": true beside it.
nlohmann::json report_to_json(const QuantizeReport& report);

/// The report as one self-contained HTML page: inline CSS and inline SVG charts (per-layer error
/// bars, size breakdown by precision), no scripts, no network access. Text is HTML-escaped.
std::string render_html(const QuantizeReport& report);

/// Writes the report to `path`: HTML if it ends in ".html"/".htm", else JSON (pretty-printed).
/// Atomic (temporary file + rename). Throws kIo naming the path.
void write_report(const QuantizeReport& report, const std::string& path);

}  // namespace qtool::report
