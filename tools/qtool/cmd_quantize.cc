// qtool quantize MODEL --bits 8 --calib DIR -o OUT [options]
//
// --bits 8 (default): static W8A8 (or W8A16) quantization in QDQ form (quant/static_quant.h):
// prepare passes, calibration, Q/DQ placement the way ONNX Runtime fuses it, and the quality
// guard on held-out calibration samples. --bits below 8: weight-only low-bit quantization
// (quant/lowbit.h apply_weight_only). Results go to stdout, logs to stderr; a violated --max-drop
// exits with exit_code::kQualityGate (3) after the report is printed.
//
// Every run ends with the summary table of report/report.h on stdout (or, with --json, the report
// JSON); --report FILE writes the same report as JSON or HTML. --config experiment.json runs a list
// of settings (report/experiments.h): each setting's options are parsed by the same option
// definitions (add_quantize_options on a fresh CLI::App) and run by the same quantize_once().
#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <limits>
#include <map>
#include <optional>
#include <sstream>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "commands.h"
#include "qtool/core/npy.h"
#include "qtool/core/output_file.h"
#include "sample_options.h"
#include "qtool/calib/ranges.h"
#include "qtool/core/error.h"
#include "qtool/data/sample_source.h"
#include "qtool/onnx_io/onnx_io.h"
#include "qtool/passes/qdq_to_qoperator.h"
#include "qtool/quant/bias_correction.h"
#include "qtool/quant/lowbit.h"
#include "qtool/quant/plan.h"
#include "qtool/quant/precision.h"
#include "qtool/quant/static_quant.h"
#include "qtool/report/compare.h"
#include "qtool/report/experiments.h"
#include "qtool/report/report.h"

namespace qtool::cli {
namespace {

struct QuantizeArgs {
  std::string model_path, out_path, ranges_path;
  SampleArgs data;  ///< --calib and the sample options shared with calibrate/compare
  std::string bits = "8";
  std::string method = "minmax";
  double percentile = 99.999;
  bool per_tensor = false;
  std::string activation_type = "uint8";
  int activation_bits = 8;
  std::string format = "qdq";
  std::string exclude_nodes, exclude_op_types, op_types, keep_fp;
  bool cle = false, bias_correction = false, no_guard = false;
  bool cle_relu6 = false;  ///< --cle-relu6: replace Clip(0, 6) by Relu so CLE can cross it
  bool no_bias_correction = false;  ///< --no-bias-correction: not even the depthwise default
  std::optional<double> max_drop;
  int threads = 1;
  int64_t block_size = 32;
  std::string weight_algorithm = "rtn";
  bool asymmetric = false;                ///< weight-only: unsigned levels with zero points
  double outlier_fraction = 0.0;          ///< weight-only: input channels kept at int8
  std::string bits_first_last = "8";      ///< weight-only: first/last layers
  std::string layer_bits;                 ///< weight-only: 'pattern=bits,...'
  std::string scale_type = "float16";     ///< weight-only: stored scale type below 8 bits
  std::string bits_depthwise = "8";       ///< weight-only: depthwise conv bits ('same' = like --bits)
  quant::TuneOptions tune{.threads = 0};  ///< weight-only: distillation tuning (--tune-*)
  bool gptq_act_order = false;            ///< weight-only: GPTQ columns by decreasing H_jj
  double gptq_damp = 0.01;                ///< weight-only: GPTQ dampening (fraction of mean diag H)
  bool no_tune_weights = false, no_tune_scales = false, no_tune_float = false;
  std::string report_path;  ///< --report: .json or .html
  std::string plan_path;    ///< --plan: per-layer formats (weight-only)
  std::string plan_out;     ///< --plan-out: write the plan the run carried out
  std::string config_path;  ///< --config: batch experiments
  bool json = false;        ///< --json: print the report JSON instead of the table
};

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t) {
  return std::chrono::duration<double>(clock_type::now() - t).count();
}

/// Whether the static pipeline corrects biases: --bias-correction / --no-bias-correction, else on
/// for models with depthwise convs, where it raised top-1 and agreement with FP32 on the shared
/// models (MobileNetV2 per-tensor +0.8 points; per-channel +0.2 to +0.4 points and agreement +1.0 to
/// +1.4 points; BENCHMARKS.md, quant::has_depthwise_conv) and hurt nowhere it was tried.
bool bias_correction_on(const QuantizeArgs& a, const ir::Model& model) {
  if (a.no_bias_correction) return false;
  return a.bias_correction || quant::has_depthwise_conv(model);
}

/// --bits 8 / int8: the static W8A8 path (precision.h parses the value; kConfig if unknown).
bool is_static(const QuantizeArgs& a) { return quant::BitsChoice(a.bits).is_int8(); }

/// The options of a run as given, for QuantizeReport::settings.
std::map<std::string, std::string> settings_of(const QuantizeArgs& a) {
  std::map<std::string, std::string> m{{"bits", a.bits}};
  if (!a.data.path.empty()) m["calib"] = a.data.path;
  if (!a.ranges_path.empty()) m["ranges"] = a.ranges_path;
  if (is_static(a)) {
    m["method"] = a.method;
    m["activation-type"] = a.activation_type;
    m["activation-bits"] = std::to_string(a.activation_bits);
    m["per-channel"] = a.per_tensor ? "false" : "true";
    m["guard"] = a.no_guard ? "false" : "true";
    m["cle"] = a.cle ? (a.cle_relu6 ? "true (ReLU6 -> Relu)" : "true") : "false";
    m["bias-correction"] = a.no_bias_correction ? "false" : a.bias_correction ? "true" : "auto (on for models with depthwise convs)";
  } else {
    m["block-size"] = std::to_string(a.block_size);
    m["weight-algorithm"] = a.weight_algorithm;
    if (a.gptq_act_order) m["gptq-act-order"] = "true";
    if (a.gptq_damp != 0.01) m["gptq-damp"] = fmt::format("{}", a.gptq_damp);
    m["format"] = a.format;
    if (a.asymmetric) m["asymmetric"] = "true";
    if (a.outlier_fraction > 0) m["outlier-fraction"] = fmt::format("{}", a.outlier_fraction);
    m["bits-first-last"] = a.bits_first_last;
    if (!a.layer_bits.empty()) m["layer-bits"] = a.layer_bits;
    m["scale-type"] = a.scale_type;
    m["bits-depthwise"] = a.bits_depthwise;
    if (a.tune.steps > 0) {
      m["tune-steps"] = std::to_string(a.tune.steps);
      m["tune-batch"] = std::to_string(a.tune.batch);
      m["tune-lr"] = fmt::format("{}", a.tune.lr);
      m["tune-scale-lr"] = fmt::format("{}", a.tune.lr_scale);
      m["tune-float-lr"] = fmt::format("{}", a.tune.lr_float);
      m["tune-loss"] = a.tune.loss;
      m["tune-augment"] = a.tune.augment;
      if (a.tune.mixup > 0) m["tune-mixup"] = fmt::format("{}", a.tune.mixup);
      if (a.tune.feature_weight > 0) m["tune-features"] = fmt::format("{}", a.tune.feature_weight);
      if (a.tune.stages > 1) m["tune-stages"] = std::to_string(a.tune.stages);
      if (a.tune.latent_range > 0) m["tune-range"] = fmt::format("{}", a.tune.latent_range);
      if (a.tune.quant_noise > 0) m["tune-quant-noise"] = fmt::format("{}", a.tune.quant_noise);
      std::string what = a.no_tune_weights ? "" : "weights";
      if (!a.no_tune_scales) what += what.empty() ? "scales" : ",scales";
      if (!a.no_tune_float) what += what.empty() ? "float" : ",float";
      m["tune"] = what.empty() ? "nothing" : what;
    }
  }
  if (a.data.samples > 0) m["samples"] = std::to_string(a.data.samples);
  if (!a.data.preprocess.empty()) m["preprocess"] = a.data.preprocess;
  if (!a.exclude_nodes.empty()) m["exclude-nodes"] = a.exclude_nodes;
  if (!a.exclude_op_types.empty()) m["exclude-op-types"] = a.exclude_op_types;
  if (!a.op_types.empty()) m["op-types"] = a.op_types;
  if (!a.keep_fp.empty()) m["keep-fp"] = a.keep_fp;
  return m;
}

/// What one quantize run produced: the report, and the quality-gate failure (if any) that the
/// caller raises after the report is shown.
struct QuantizeOutcome {
  report::QuantizeReport report;
  std::optional<Error> gate_failure;
};

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

std::shared_ptr<data::SelectedSource> open_samples(const QuantizeArgs& a, const ir::Model& model) {
  return cli::open_samples(a.data, model, "--calib");
}

/// The default bits a plan file was written with (its "bits"), for --plan without --bits.
std::string plan_bits(const std::string& path) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(path));
  } catch (const nlohmann::json::exception& e) {
    fail(ErrorCode::kConfig, "plan '{}' is not valid JSON: {}", path, e.what());
  }
  QTOOL_CHECK(j.is_object() && j.contains("bits") && j["bits"].is_string(), ErrorCode::kConfig,
              "plan '{}' has no \"bits\": give --bits", path);
  return j["bits"].get<std::string>();
}

/// Options that belong to one of the two paths: given on the other, they are refused rather than
/// silently ignored. One row per option.
struct PathOption {
  const char* name;
  bool static_path;  ///< --bits 8 (W8A8 / W8A16 QDQ)
  bool weight_only;  ///< --bits below 8
};
constexpr PathOption kPathOptions[] = {
    {"--method", true, false},           {"--percentile", true, false},       {"--ranges", true, false},
    {"--per-tensor", true, false},       {"--activation-type", true, false},  {"--activation-bits", true, false},
    {"--exclude-op-types", true, false}, {"--op-types", true, false},         {"--keep-fp", true, false},
    {"--cle", true, false},              {"--cle-relu6", true, false},        {"--bias-correction", true, false},
    {"--no-bias-correction", true, false},
    {"--block-size", false, true},       {"--weight-algorithm", false, true}, {"--gptq-act-order", false, true},
    {"--gptq-damp", false, true},        {"--asymmetric", false, true},       {"--outlier-fraction", false, true},
    {"--bits-first-last", false, true},  {"--layer-bits", false, true},       {"--scale-type", false, true},
    {"--bits-depthwise", false, true},   {"--tune-steps", false, true},       {"--tune-batch", false, true},
    {"--tune-lr", false, true},          {"--tune-scale-lr", false, true},    {"--tune-float-lr", false, true},
    {"--tune-loss", false, true},        {"--tune-holdout", false, true},     {"--tune-eval-every", false, true},
    {"--tune-augment", false, true},     {"--tune-features", false, true},    {"--tune-stages", false, true},
    {"--tune-quant-noise", false, true}, {"--tune-range", false, true},       {"--tune-mixup", false, true},
    {"--no-tune-weights", false, true},  {"--no-tune-scales", false, true},   {"--no-tune-float", false, true},
    {"--plan", false, true},             {"--plan-out", false, true},
};

bool has_subgraphs(const ir::Graph& g) {
  for (const auto& n : g.nodes())
    if (!n->subgraphs().empty()) return true;
  return false;
}


/// Refuses options that do not apply to the path --bits chose (kConfig, naming the option).
void check_options_apply(const CLI::App& cmd, const QuantizeArgs& a) {
  const bool st = is_static(a);
  for (const PathOption& o : kPathOptions) {
    if (cmd.count(o.name) == 0 || (st ? o.static_path : o.weight_only)) continue;
    fail(ErrorCode::kConfig, "{} applies to {} quantization, not to --bits {} ({})", o.name,
         o.static_path ? "static W8A8 (--bits 8)" : "weight-only (--bits 4, 2, ternary, binary)", a.bits,
         st ? "static W8A8 QDQ" : "weight-only");
  }
}

/// Refuses --exclude-nodes / --keep-fp names that match nothing in the model (a typo would
/// otherwise quantize what the user meant to keep in float).
void check_names_exist(const QuantizeArgs& a, const ir::Model& model) {
  std::vector<std::string> nodes, values;
  for (const auto& n : model.graph->nodes()) {
    nodes.push_back(n->name());
    for (const ir::Value* v : n->outputs())
      if (v) values.push_back(v->name());
    for (const ir::Value* v : n->inputs())
      if (v) values.push_back(v->name());
  }
  auto matches = [](const std::vector<std::string>& names, const std::string& pattern) {
    for (const auto& n : names)
      if (n == pattern || quant::glob_match(pattern, n)) return true;
    return false;
  };
  for (const auto& x : split_list(a.exclude_nodes)) {
    if (matches(nodes, x) || (!is_static(a) && matches(values, x))) continue;
    fail(ErrorCode::kConfig, "--exclude-nodes: no node of '{}' is named '{}'{}", a.model_path, x,
         is_static(a) ? "" : " (nor is a weight)");
  }
  for (const auto& x : split_list(a.keep_fp))
    QTOOL_CHECK(matches(values, x), ErrorCode::kConfig, "--keep-fp: no tensor of '{}' is named '{}'", a.model_path, x);
}

/// Every file the run writes, checked before any work: never an input, never a folder, never twice.
void check_outputs(const QuantizeArgs& a) {
  if (!a.ranges_path.empty()) protect_input(a.ranges_path);
  if (!a.data.path.empty()) protect_input(a.data.path);
  if (!a.plan_path.empty()) protect_input(a.plan_path);
  check_output_path(a.out_path, "-o");
  if (!a.report_path.empty()) {
    check_output_path(a.report_path, "--report");
    check_distinct_outputs(a.out_path, "-o", a.report_path, "--report");
  }
  if (!a.plan_out.empty()) {
    check_output_path(a.plan_out, "--plan-out");
    check_distinct_outputs(a.out_path, "-o", a.plan_out, "--plan-out");
    check_distinct_outputs(a.report_path, "--report", a.plan_out, "--plan-out");
  }
}

/// Fewest held-out samples for the weight-only evaluation (as the static pipeline's guard).
constexpr size_t kMinHoldout = 8;
/// Larger models are not evaluated after weight-only quantization (it would hold two copies).
constexpr int64_t kMaxEvalModelBytes = int64_t{256} << 20;

int64_t file_size(const std::string& p) {
  std::error_code ec;
  const auto s = std::filesystem::file_size(p, ec);
  return ec ? 0 : static_cast<int64_t>(s);
}

/// The guard's per-output agreement as the report's OutputQuality (SQNR, top-1 agreement).
std::vector<report::OutputQuality> to_quality(const std::vector<quant::OutputAgreement>& agreement) {
  std::vector<report::OutputQuality> out;
  for (const auto& o : agreement) {
    report::OutputQuality q;
    q.name = o.name;
    q.samples = o.samples;
    q.sqnr_db = o.sqnr_db;
    q.top1_agreement = o.top1_agreement >= 0 ? o.top1_agreement : report::kNotMeasured;
    out.push_back(q);
  }
  return out;
}

/// Runs the FP32 and quantized models on `held_out` (report/compare.h, with per-layer drift) and
/// puts the result into the report: outputs (to_output_quality), eval_samples, and each layer's
/// output SQNR (matched by the node that produces the layer's output in the quantized model).
void evaluate_into(report::QuantizeReport& rep, const ir::Model& fp32, const ir::Model& quantized,
                   data::SampleSource& held_out, int threads) {
  size_t next = 0;
  const report::SampleProvider provider = [&](report::CompareSample& s) {
    if (next >= held_out.size()) return false;
    s.inputs = held_out.load(next);
    s.name = held_out.describe(next);
    ++next;
    return true;
  };
  report::CompareOptions options;
  options.threads = threads;
  const report::CompareResult result = report::compare_models(fp32, quantized, provider, options);
  rep.outputs = report::to_output_quality(result);
  rep.eval_samples = result.samples;
  for (auto& l : rep.layers)
    for (const auto& d : result.layers)
      if (d.node == l.node) l.output_sqnr_db = d.error.sqnr_db();
}

/// The float weights of a model by name (Tensor copies share their buffers, so this is cheap),
/// kept to measure the weight error of the static pipeline after it rewrote the model.
std::map<std::string, Tensor> float_weights(const ir::Model& model) {
  std::map<std::string, Tensor> out;
  for (const ir::Value* v : model.graph->initializers()) {
    const Tensor* t = v->initializer();
    if (t && t->dtype() == DataType::kFloat && t->numel() >= 16) out.emplace(v->name(), *t);
  }
  return out;
}

/// Weight SQNR (dB) of each layer stored as DequantizeLinear(integer initializer, scale[, zero
/// point]) with per-tensor or per-axis scales: dequantizes w' = (q - z)·s and compares it with the
/// FP32 initializer it came from (same name, or the name without the "_quantized" suffix):
/// 10·log10(Σw² / Σ(w - w')²). Layers it cannot match (blocked scales, renamed weights) stay NaN.
void fill_weight_sqnr(report::QuantizeReport& rep, const ir::Model& quantized,
                      const std::map<std::string, Tensor>& fp32) {
  for (const auto& n : quantized.graph->nodes()) {
    if (n->op_type() != "DequantizeLinear" || n->attr_int("block_size", 0) != 0) continue;
    const ir::Value* qv = n->input(0);
    const ir::Value* sv = n->input(1);
    const ir::Value* zv = n->input(2);
    if (!qv || !sv || !qv->initializer() || !sv->initializer() || (zv && !zv->initializer())) continue;
    const Tensor& q = *qv->initializer();
    const Tensor& scale = *sv->initializer();
    if (q.dtype() == DataType::kFloat || q.dtype() == DataType::kInt32) continue;  // biases are int32
    std::string name = qv->name();
    auto it = fp32.find(name);
    if (it == fp32.end() && name.ends_with("_quantized")) it = fp32.find(name.substr(0, name.size() - 10));
    if (it == fp32.end() || it->second.numel() != q.numel()) continue;
    const Tensor& w = it->second;
    const int64_t rank = static_cast<int64_t>(q.shape().size());
    int64_t axis = n->attr_int("axis", 1);
    if (axis < 0) axis += rank;
    int64_t inner = 1, channels = 1;
    if (scale.numel() > 1) {
      if (axis < 0 || axis >= rank || q.shape()[axis] != scale.numel()) continue;
      channels = scale.numel();
      for (int64_t d = axis + 1; d < rank; ++d) inner *= q.shape()[d];
    }
    double sum_ww = 0.0, sum_ee = 0.0;
    for (int64_t i = 0; i < q.numel(); ++i) {
      const int64_t c = channels > 1 ? (i / inner) % channels : 0;
      const double z = zv ? zv->initializer()->get_as_double(zv->initializer()->numel() > 1 ? c : 0) : 0.0;
      const double dq = (q.get_as_double(i) - z) * scale.get_as_double(c);
      const double wi = w.get_as_double(i);
      sum_ww += wi * wi;
      sum_ee += (wi - dq) * (wi - dq);
    }
    for (auto& l : rep.layers) {
      if (l.weight != qv->name() || !std::isnan(l.weight_sqnr_db)) continue;
      l.weight_sqnr_db = sum_ee > 0.0 ? 10.0 * std::log10(sum_ww / sum_ee) : std::numeric_limits<double>::infinity();
    }
  }
}

/// Weight SQNR in dB from a relative MSE ‖W - Q‖² / ‖W‖² (10·log10(1 / rel_mse)).
double sqnr_from_rel_mse(double rel_mse) {
  if (!(rel_mse >= 0.0)) return report::kNotMeasured;
  return rel_mse > 0.0 ? -10.0 * std::log10(rel_mse) : std::numeric_limits<double>::infinity();
}

QuantizeOutcome run_weight_only(const QuantizeArgs& a, ir::Model& model, std::vector<report::Timing>& timings) {
  quant::WeightOnlyConfig cfg;
  cfg.bits = a.bits;
  cfg.block_size = a.block_size;
  cfg.algorithm = quant::parse_weight_algorithm(a.weight_algorithm);
  cfg.exclude = split_list(a.exclude_nodes);
  cfg.threads = a.threads;
  QTOOL_CHECK(a.format == "qdq" || a.format == "matmulnbits" || a.format == "cast", ErrorCode::kConfig,
              "--format {} is not valid with --bits {}: use qdq (DequantizeLinear), matmulnbits or cast "
              "(Cast/Mul dequantization that ONNX Runtime folds at load)",
              a.format, a.bits);
  cfg.format = a.format == "matmulnbits" ? quant::WeightLayout::kMatMulNBits : quant::WeightLayout::kQdq;
  cfg.cast_dequant = a.format == "cast";
  cfg.symmetric = !a.asymmetric;
  QTOOL_CHECK(a.outlier_fraction >= 0.0 && a.outlier_fraction < 0.5, ErrorCode::kConfig,
              "--outlier-fraction {} is out of range [0, 0.5)", a.outlier_fraction);
  cfg.outlier_fraction = a.outlier_fraction;
  cfg.bits_first_last = a.bits_first_last == "same" ? "" : a.bits_first_last;
  QTOOL_CHECK(a.scale_type == "float16" || a.scale_type == "float32", ErrorCode::kConfig,
              "--scale-type must be float16 or float32, got '{}'", a.scale_type);
  cfg.fp16_scales = a.scale_type == "float16";
  cfg.bits_depthwise = a.bits_depthwise == "same" ? "" : a.bits_depthwise;
  if (!a.layer_bits.empty()) cfg.layer_bits = quant::parse_layer_bits(a.layer_bits);
  if (!a.plan_path.empty()) cfg.plan = quant::load_plan(a.plan_path);
  cfg.tune = a.tune;
  cfg.gptq.act_order = a.gptq_act_order;
  QTOOL_CHECK(a.gptq_damp > 0 && a.gptq_damp < 1, ErrorCode::kConfig, "--gptq-damp must be in (0, 1), got {}", a.gptq_damp);
  cfg.gptq.percdamp = a.gptq_damp;
  cfg.tune.tune_weights = !a.no_tune_weights;
  cfg.tune.tune_scales = !a.no_tune_scales;
  cfg.tune.tune_float = !a.no_tune_float;
  QTOOL_CHECK(a.tune.steps >= 0 && a.tune.batch > 0 && a.tune.lr >= 0 && a.tune.lr_scale >= 0 && a.tune.lr_float >= 0 &&
                  a.tune.holdout > 0 && a.tune.holdout < 1 && a.tune.eval_every > 0 && a.tune.feature_weight >= 0 &&
                  a.tune.stages >= 1 && a.tune.quant_noise >= 0 && a.tune.quant_noise < 1 && a.tune.latent_range >= 0,
              ErrorCode::kConfig,
              "--tune-steps must be >= 0, --tune-batch, --tune-eval-every and --tune-stages > 0, learning rates "
              "and --tune-features >= 0, --tune-holdout and --tune-quant-noise in [0, 1)");
  QTOOL_CHECK(a.tune.steps == 0 || !a.data.path.empty(), ErrorCode::kConfig, "--tune-steps needs --calib");
  std::shared_ptr<data::SelectedSource> samples, fit_part, held_out;
  quant::CalibrationInputs calib;
  std::optional<ir::Model> fp32;
  std::string eval_note;
  if (!a.data.path.empty()) {
    const auto t = clock_type::now();
    samples = open_samples(a, model);
    // Hold out the last fifth (at least kMinHoldout) of the samples to measure the result on data
    // GPTQ/AWQ did not fit to; with too few samples, all serve both roles (and the report says so).
    const size_t n = samples->size();
    const size_t holdout = std::max(kMinHoldout, n / 5);
    std::vector<size_t> fit_idx, eval_idx;
    // Evaluating needs the FP32 model beside the quantized one: skipped (and nothing held out) for big models.
    const bool evaluate = !a.no_guard && file_size(a.model_path) <= kMaxEvalModelBytes;
    for (size_t i = 0; i < n; ++i)
      (evaluate && n >= 2 * kMinHoldout && i >= n - holdout ? eval_idx : fit_idx).push_back(i);
    if (eval_idx.empty()) {
      eval_idx = fit_idx;
      eval_note = fmt::format("only {} calibration samples: the output quality is measured on the same samples", n);
    }
    fit_part = std::make_shared<data::SelectedSource>(samples, fit_idx);
    held_out = std::make_shared<data::SelectedSource>(samples, eval_idx);
    calib.source = fit_part.get();
    timings.push_back({"calibrate", seconds_since(t)});
    if (evaluate) fp32.emplace(model.clone());
  }
  auto t = clock_type::now();
  const quant::WeightOnlyReport rep = quant::apply_weight_only(model, cfg, a.data.path.empty() ? nullptr : &calib);
  timings.push_back({"quantize", seconds_since(t)});
  const auto quantized = std::count_if(rep.layers.begin(), rep.layers.end(),
                                       [](const quant::WeightOnlyLayer& l) { return l.format != "float"; });
  QTOOL_CHECK(quantized > 0, ErrorCode::kUnsupported,
              "no weight of '{}' was quantized ({} candidate layers, all left in float{}); nothing is written",
              a.model_path, rep.layers.size(),
              has_subgraphs(*model.graph) ? "; weights inside If/Loop/Scan bodies are not quantized yet" : "");
  for (const auto& w : rep.warnings) spdlog::warn("{}", w);
  spdlog::info("weight-only {}: {} layers, weights {} -> {} bytes", a.bits, rep.layers.size(), rep.float_weight_bytes,
               rep.quant_weight_bytes);
  t = clock_type::now();
  model.source_path.clear();
  onnx_io::save_model(model, a.out_path);
  if (!a.plan_out.empty()) write_file_atomic(a.plan_out, quant::plan_to_json(rep, a.bits).dump(2) + "\n");
  timings.push_back({"save", seconds_since(t)});

  const quant::BitsChoice bits(a.bits);
  std::string headline = bits.is_sign_scheme() ? a.bits : "W" + a.bits;
  if (a.block_size > 0 && !bits.is_sign_scheme()) headline += fmt::format(" (block {})", a.block_size);
  headline += " A32";
  QuantizeOutcome out{report::make_quantize_report(a.model_path, a.out_path, model, headline), std::nullopt};
  // Per-layer errors and methods from the quantizer, matched by weight name (the emitted model
  // renames weights, e.g. "conv1.weight_quantized") or consuming node.
  for (auto& l : out.report.layers) {
    for (const auto& w : rep.layers) {
      // Exact names only (the emitters name the stored levels "<weight>_quantized"): a prefix match
      // gave weight "conv1" the row of "conv10_quantized".
      const bool same_weight = !w.weight.empty() && (l.weight == w.weight || l.weight == w.weight + "_quantized");
      if (!w.weight.empty() && l.weight == w.weight + "_outlier_quantized") {  // --outlier-fraction branch
        l.method = "rtn";
        l.note = fmt::format("int8 outlier columns of '{}'", w.weight);
        break;
      }
      if (!same_weight && (w.node.empty() || w.node != l.node)) continue;
      if (w.format != "float") l.weight_sqnr_db = sqnr_from_rel_mse(w.weight_rel_mse);
      l.method = w.algorithm;
      l.note = w.note;
      break;
    }
  }
  out.report.warnings = rep.warnings;
  if (rep.tune.steps > 0) {
    const quant::TuneReport& tr = rep.tune;
    out.report.actions.push_back(fmt::format(
        "tuned {} steps on {} samples ({} held out), loss {}: held-out loss {:.4g} -> {:.4g} (kept step {}), "
        "{} levels changed, {} float values tuned, {:.1f} s",
        tr.steps, tr.train_samples, tr.holdout_samples, tr.loss, tr.holdout_before, tr.holdout_after, tr.best_step,
        tr.levels_changed, tr.float_params, tr.seconds));
    timings.push_back({"tune", tr.seconds});
  }
  if (fp32) {
    t = clock_type::now();
    evaluate_into(out.report, *fp32, model, *held_out, a.threads);
    timings.push_back({"evaluate", seconds_since(t)});
    if (!eval_note.empty()) out.report.warnings.push_back(eval_note);
  }
  if (a.max_drop) {  // the same gate as the static path: top-1 agreement drop on held-out samples
    double agree = 2.0;
    for (const auto& o : out.report.outputs)
      if (!std::isnan(o.top1_agreement)) agree = std::min(agree, o.top1_agreement);
    QTOOL_CHECK(fp32.has_value() && !out.report.outputs.empty(), ErrorCode::kConfig,
                "--max-drop needs the evaluation on held-out calibration samples (--calib, not --no-guard)");
    const double drop = agree <= 1.0 ? 100.0 * (1.0 - agree) : 0.0;
    if (drop > *a.max_drop)
      out.gate_failure.emplace(ErrorCode::kQualityGate,
                               fmt::format("quality gate failed: top-1 agreement drop {:.2f} points (limit --max-drop "
                                           "{:.2f})",
                                           drop, *a.max_drop));
  }
  return out;
}

QuantizeOutcome run_static(const QuantizeArgs& a, ir::Model& model, std::vector<report::Timing>& timings) {
  QTOOL_CHECK(a.format == "qdq" || a.format == "qoperator", ErrorCode::kConfig,
              "--format {} is not valid with --bits 8: use qdq (QuantizeLinear/DequantizeLinear) or qoperator "
              "(QLinearConv, QLinearMatMul, com.microsoft QLinearAdd, ...)",
              a.format);
  QTOOL_CHECK(a.activation_bits == 8 || a.activation_bits == 16, ErrorCode::kConfig,
              "--activation-bits must be 8 or 16, got {}", a.activation_bits);
  QTOOL_CHECK(a.format != "qoperator" || a.activation_bits == 8, ErrorCode::kConfig,
              "--format qoperator needs 8-bit activations (the QLinear ops are 8-bit); use qdq with --activation-bits 16");
  QTOOL_CHECK(a.activation_type == "uint8" || a.activation_type == "int8", ErrorCode::kConfig,
              "--activation-type must be uint8 or int8, got '{}'", a.activation_type);
  QTOOL_CHECK(!a.data.path.empty() || !a.ranges_path.empty(), ErrorCode::kConfig,
              "static quantization needs calibration data (--calib DIR) or --ranges FILE");

  quant::StaticQuantConfig cfg;
  const bool is_signed = a.activation_type == "int8";
  cfg.qdq.activation_type = a.activation_bits == 16 ? (is_signed ? DataType::kInt16 : DataType::kUint16)
                                                    : (is_signed ? DataType::kInt8 : DataType::kUint8);
  cfg.qdq.activation_symmetric = is_signed;
  cfg.qdq.per_channel = !a.per_tensor;
  for (const auto& s : split_list(a.exclude_nodes)) cfg.qdq.exclude_nodes.insert(s);
  for (const auto& s : split_list(a.exclude_op_types)) cfg.qdq.exclude_op_types.insert(s);
  for (const auto& s : split_list(a.keep_fp)) cfg.qdq.keep_float_names.insert(s);
  cfg.method = a.method;
  cfg.percentile = a.percentile;
  cfg.guard = !a.no_guard;
  cfg.cle = a.cle;
  cfg.cle_replace_relu6 = a.cle_relu6;
  cfg.threads = a.threads;

  auto t = clock_type::now();
  const int64_t target_opset = a.activation_bits == 16 ? 21 : 13;
  const size_t rewrites = quant::prepare_model(model, target_opset);
  spdlog::info("prepared '{}': {} rewrites, opset {}", a.model_path, rewrites, model.opset(""));
  cfg.bias_correction = bias_correction_on(a, model);
  if (cfg.bias_correction && !a.bias_correction)
    spdlog::info("bias correction: on by default for models with depthwise convs (--no-bias-correction to skip)");
  if (!a.op_types.empty()) {
    // Quantize only these op types: every other quantizable op type is excluded.
    const auto keep = split_list(a.op_types);
    for (const auto& n : model.graph->nodes())
      if (std::find(keep.begin(), keep.end(), n->op_type()) == keep.end()) cfg.qdq.exclude_op_types.insert(n->op_type());
  }

  std::optional<calib::RangesFile> ranges;
  if (!a.ranges_path.empty()) {
    ranges = calib::load_ranges(a.ranges_path);
    cfg.ranges = &*ranges;
  }
  std::shared_ptr<data::SelectedSource> samples;
  std::unique_ptr<data::SelectedSource> empty;
  if (!a.data.path.empty()) {
    samples = open_samples(a, model);
    spdlog::info("calibration data: {} samples from '{}' ({})", samples->size(), a.data.path, samples->kind());
  } else {
    cfg.guard = false;
    empty = std::make_unique<data::SelectedSource>(nullptr, std::vector<size_t>{});
  }
  data::SampleSource& src = samples ? static_cast<data::SampleSource&>(*samples) : *empty;
  // Per-layer output SQNR is only shown in --report/--json, so the extra held-out run (and the
  // FP32 copy it needs) is only paid for then.
  std::optional<ir::Model> fp32;
  if (samples && cfg.guard && (a.json || !a.report_path.empty()) && file_size(a.model_path) <= kMaxEvalModelBytes)
    fp32.emplace(model.clone());
  const std::map<std::string, Tensor> fp32_weights = float_weights(model);
  // quantize_static runs calibration, Q/DQ placement and the quality guard (the held-out
  // evaluation) in one call, so they are timed together as "quantize".
  const quant::StaticQuantResult res = quant::quantize_static(model, src, cfg);
  timings.push_back({"quantize", seconds_since(t)});
  spdlog::debug("qdq summary: {} nodes, {} activations, {} weights", res.qdq.quantized_nodes,
                res.qdq.quantized_activations, res.qdq.quantized_weights);
  QTOOL_CHECK(res.qdq.quantized_nodes > 0, ErrorCode::kUnsupported,
              "no node of '{}' was quantized (nothing quantizable outside If/Loop/Scan bodies, or everything excluded); "
              "nothing is written",
              a.model_path);
  if (a.format == "qoperator") {
    // The same integer ops ONNX Runtime fuses the QDQ form into, written out (groups it would
    // leave in float stay QDQ).
    const passes::QOperatorReport fused = passes::fuse_qdq_to_qoperator(model);
    std::string what;
    for (const auto& [op, n] : fused.fused) what += fmt::format("{}{} {}", what.empty() ? "" : ", ", n, op);
    spdlog::info("QOperator form: {} groups rewritten ({})", fused.rewrites, what.empty() ? "none" : what);
  }
  t = clock_type::now();
  model.source_path.clear();
  onnx_io::save_model(model, a.out_path);
  timings.push_back({"save", seconds_since(t)});

  spdlog::info("quantized {} -> {}: W8A{} QDQ ({}, {} activations), {} nodes quantized, {} weights, {} biases, "
               "{} Relu/Clip folded",
               a.model_path, a.out_path, a.activation_bits, a.method, dtype_name(cfg.qdq.activation_type),
               res.qdq.quantized_nodes, res.qdq.quantized_weights, res.qdq.quantized_biases,
               res.qdq.folded_activations);
  const std::string headline = fmt::format("W8A{} {}", a.activation_bits, a.format == "qoperator" ? "QOperator" : "QDQ");
  QuantizeOutcome out{report::make_quantize_report(a.model_path, a.out_path, model, headline), std::nullopt};
  for (auto& l : out.report.layers)
    if (l.method.empty() && l.precision != "fp32" && l.precision != "fp16") l.method = a.method;
  fill_weight_sqnr(out.report, model, res.equalized_weights.empty() ? fp32_weights : res.equalized_weights);
  out.report.outputs = to_quality(res.outputs);
  out.report.eval_samples = res.holdout_samples;
  if (fp32 && res.holdout_samples > 0 && static_cast<size_t>(res.holdout_samples) <= samples->size()) {
    // The guard held out the last holdout_samples samples; evaluate per layer on the same ones.
    t = clock_type::now();
    std::vector<size_t> idx;
    for (size_t i = samples->size() - static_cast<size_t>(res.holdout_samples); i < samples->size(); ++i)
      idx.push_back(i);
    data::SelectedSource held_out(samples, idx);
    evaluate_into(out.report, *fp32, model, held_out, a.threads);
    timings.push_back({"evaluate", seconds_since(t)});
  }
  // What the pipeline did beyond the defaults (CLE, bias correction, tensors the guard kept in float, ...).
  for (const auto& s : res.actions) out.report.actions.push_back(s);
  for (const auto& w : res.warnings) {
    spdlog::warn("{}", w);
    out.report.warnings.push_back(w);
  }
  if (a.max_drop) {
    const double agree = res.min_top1_agreement();
    QTOOL_CHECK(agree >= 0 || !res.outputs.empty(), ErrorCode::kConfig,
                "--max-drop needs the quality guard (calibration data) to measure agreement");
    const double drop = agree >= 0 ? 100.0 * (1.0 - agree) : 0.0;
    if (drop > *a.max_drop || res.looks_broken) {
      out.gate_failure.emplace(
          ErrorCode::kQualityGate,
          fmt::format("quality gate failed: top-1 agreement drop {:.2f} points (limit --max-drop {:.2f}){}", drop,
                      *a.max_drop, res.looks_broken ? "; the model looks broken" : ""));
    }
  }
  return out;
}

/// One quantize run with parsed options: load, quantize, save, build the report and write
/// --report. Prints nothing to stdout (the caller decides how to show the report). A failed
/// quality gate is returned, not thrown, so the report is still shown and written first.
QuantizeOutcome quantize_once(const QuantizeArgs& a) {
  QTOOL_CHECK(!a.out_path.empty(), ErrorCode::kConfig, "quantize needs an output path (-o OUT)");
  const auto t0 = clock_type::now();
  std::vector<report::Timing> timings;
  auto t = clock_type::now();
  ir::Model model = onnx_io::load_model(a.model_path);
  timings.push_back({"load", seconds_since(t)});
  check_outputs(a);  // before any work: never over an input (the model was just protected by the loader)
  check_names_exist(a, model);
  QTOOL_CHECK(!a.max_drop || !a.data.path.empty(), ErrorCode::kConfig, "--max-drop needs calibration data (--calib)");
  QuantizeOutcome out =
      is_static(a) ? run_static(a, model, timings) : run_weight_only(a, model, timings);
  out.report.settings = settings_of(a);
  out.report.timings = std::move(timings);
  if (!a.report_path.empty()) report::write_report(out.report, a.report_path);
  spdlog::info("done in {:.1f} s", seconds_since(t0));
  return out;
}

void print_outcome(const QuantizeArgs& a, const QuantizeOutcome& out) {
  if (a.json)
    std::cout << report::report_to_json(out.report).dump(2) << "\n";
  else
    std::cout << report::format_summary_table(out.report);
  std::cout.flush();
}

/// Defines every `qtool quantize` option on `cmd`, writing into `a`. Used for the command itself
/// and for each setting of a --config sweep, so both accept exactly the same options.
void add_quantize_options(CLI::App& cmd, QuantizeArgs& a) {
  cmd.add_option("model", a.model_path, "FP32 ONNX model")->required()->check(CLI::ExistingFile);
  cmd.add_option("-o,--output", a.out_path, "output model path (required unless --config)");
  cmd.add_option("--bits", a.bits,
                 fmt::format("weights: 8 / int8 = static W8A8 (8-bit activations too); any other = weight-only ({}); "
                             "the formats each gives are listed below",
                             quant::bits_values(false)))
      ->check([](const std::string& v) {
        const quant::BitsChoice c(v);
        return c.is_float() || c.inherits() ? std::string("--bits must name a precision, not 'float' or ''") : std::string();
      });
  add_sample_options(cmd, a.data, "--calib", "calibration data (folder or file, see qtool calibrate)");
  cmd.add_option("--method", a.method, "range method: minmax, percentile, entropy, mse");
  cmd.add_option("--percentile", a.percentile, "percentile kept by --method percentile")->check(CLI::Range(50.0, 100.0));
  cmd.add_option("--ranges", a.ranges_path, "ranges.json from qtool calibrate (skips calibration)");
  cmd.add_flag("--per-tensor", a.per_tensor, "one weight scale per tensor instead of per output channel");
  cmd.add_option("--activation-type", a.activation_type, "uint8 (asymmetric, default) or int8 (symmetric)");
  cmd.add_option("--activation-bits", a.activation_bits, "8 or 16 (A16W8: uint16/int16 Q/DQ, opset 21)");
  cmd.add_option("--format", a.format,
                 "qdq (default); with --bits 8 also qoperator (QLinearConv, QLinearMatMul, com.microsoft QLinearAdd, ...); "
                 "with --bits < 8 also matmulnbits (com.microsoft MatMulNBits for MatMul weights) and cast (levels -> "
                 "Cast -> Mul(scales) on constants: the same file size, and ONNX Runtime folds it at load, so it runs "
                 "at float32 speed with float32 weights in memory)");
  cmd.add_option("--exclude-nodes", a.exclude_nodes, "comma-separated node names left in float");
  cmd.add_option("--exclude-op-types", a.exclude_op_types, "comma-separated op types left in float");
  cmd.add_option("--op-types", a.op_types, "quantize only these op types (e.g. MatMul)");
  cmd.add_option("--keep-fp", a.keep_fp, "comma-separated tensor names kept in float");
  cmd.add_flag("--cle", a.cle, "cross-layer equalization of Conv -> Relu -> Conv pairs before calibration");
  cmd.add_flag("--cle-relu6", a.cle_relu6, "with --cle: replace ReLU6 (Clip 0..6) by Relu between equalized convs (DFQ; changes the float model)");
  cmd.add_flag("--bias-correction", a.bias_correction,
               "subtract each quantized Conv/Gemm's mean output error (calibration data) from its bias (default: on "
               "with --per-tensor for models with depthwise convs)");
  cmd.add_flag("--no-bias-correction", a.no_bias_correction, "no bias correction, not even the default for models with depthwise convs");
  cmd.add_flag("--no-guard", a.no_guard, "skip the quality guard (held-out SQNR/agreement; weight-only: the evaluation)");
  cmd.add_option("--max-drop", a.max_drop, "fail (exit 3) if top-1 agreement with FP32 drops more than P points")
      ->check(CLI::Range(0.0, 100.0));
  cmd.add_option("--threads", a.threads, "executor threads")->check(CLI::Range(1, 256));
  cmd.add_option("--block-size", a.block_size, "weight-only: block size (0 = per channel)")->check(CLI::Range(0, 65536));
  cmd.add_option("--weight-algorithm,--algorithm", a.weight_algorithm, "weight-only: rtn, gptq, awq or awq+gptq (AWQ scales, then GPTQ); gptq with --asymmetric is the most accurate 4-bit setting measured");
  cmd.add_flag("--gptq-act-order", a.gptq_act_order, "weight-only GPTQ: quantize columns by decreasing activation energy (act order)");
  cmd.add_option("--gptq-damp", a.gptq_damp, "weight-only GPTQ: dampening, a fraction of the mean Hessian diagonal (default 0.01)");
  cmd.add_flag("--asymmetric", a.asymmetric, "weight-only: unsigned levels with zero points (default symmetric)");
  cmd.add_option("--outlier-fraction", a.outlier_fraction,
                 "weight-only: fraction of the most salient input channels kept at int8 beside the low-bit weights");
  cmd.add_option("--bits-first-last", a.bits_first_last,
                 "weight-only: bits of the first and last layers (default 8; 'same' = like --bits)");
  cmd.add_option("--layer-bits", a.layer_bits,
                 fmt::format("weight-only: per-layer bits by node/weight name glob, e.g. 'lm_head=8,*.down_proj=4' "
                             "(values: {})",
                             quant::bits_values(true)));
  cmd.add_option("--scale-type", a.scale_type,
                 "weight-only: float16 (default: a float16 initializer and a Cast in front of each DequantizeLinear "
                 "scale, 4.5 bits per weight at block 32) or float32 (5.0)");
  cmd.add_option("--bits-depthwise", a.bits_depthwise,
                 "weight-only: bits of depthwise convs (default 8: 2% of MobileNetV2's weights, most of its 4-bit error; "
                 "'same' = like --bits)");
  cmd.add_option("--tune-steps", a.tune.steps,
                 "weight-only: distillation tuning steps after the algorithm (0 = off): latent weights, block scales "
                 "and float biases/norm weights trained to reproduce the FP32 outputs on the calibration samples");
  cmd.add_option("--tune-batch", a.tune.batch, "tuning: calibration samples per step");
  cmd.add_option("--tune-lr", a.tune.lr, "tuning: latent-weight learning rate, in units of each block's scale");
  cmd.add_option("--tune-scale-lr", a.tune.lr_scale, "tuning: log-scale learning rate");
  cmd.add_option("--tune-float-lr", a.tune.lr_float, "tuning: float-vector learning rate, relative to each vector's RMS");
  cmd.add_option("--tune-loss", a.tune.loss, "tuning: auto (KL on classifier/LM logits, else relative MSE), kl or mse");
  cmd.add_option("--tune-holdout", a.tune.holdout, "tuning: share of the samples held out for early stopping");
  cmd.add_option("--tune-eval-every", a.tune.eval_every, "tuning: steps between held-out evaluations");
  cmd.add_option("--tune-augment", a.tune.augment,
                 "tuning: auto (random flips and resized crops of image inputs, the FP32 model seeing the same "
                 "images) or none");
  cmd.add_option("--tune-features", a.tune.feature_weight,
                 "tuning: weight of a feature-distillation term (every tuned layer's output against the FP32 "
                 "model's, relative squared error); helps CNNs whose low-bit outputs start far off");
  cmd.add_option("--tune-stages", a.tune.stages,
                 "tuning: 1 = end to end (default); N > 1 = stage-wise reconstruction, the layers in N groups tuned "
                 "one after the other on their own outputs");
  cmd.add_option("--tune-quant-noise", a.tune.quant_noise,
                 "tuning: share of blocks left unquantized in each training step, decreasing to 0 (quant noise)");
  cmd.add_option("--tune-range", a.tune.latent_range,
                 "tuning: keep each latent weight within R block scales of its start (0 = unbounded; 0.5 = only the "
                 "other rounding direction, as AutoRound)");
  cmd.add_option("--tune-mixup", a.tune.mixup, "tuning: probability of mixing each training sample with another (mixup)");
  cmd.add_flag("--no-tune-weights", a.no_tune_weights, "tuning: keep the levels, tune scales and float vectors only");
  cmd.add_flag("--no-tune-scales", a.no_tune_scales, "tuning: keep the block scales");
  cmd.add_flag("--no-tune-float", a.no_tune_float, "tuning: keep the float biases and normalization weights");
  cmd.add_option("--plan-out", a.plan_out,
                 "weight-only: write the per-layer plan the run carried out (each weight's format and why) as JSON");
  cmd.add_option("--plan", a.plan_path,
                 "weight-only: take each listed weight's format from this plan (from --plan-out, possibly edited; "
                 "--bits defaults to the plan's); the same plan gives the same model byte for byte");
  cmd.add_option("--report", a.report_path, "write the run's report: FILE.json or FILE.html");
  cmd.add_flag("--json", a.json, "print the report JSON instead of the summary table");
  cmd.add_option("--config", a.config_path,
                 "batch experiments: run every setting of this JSON/YAML file (see docs) against MODEL");
}

/// Parses one sweep setting's options with the same definitions as the command.
QuantizeArgs parse_setting(const QuantizeArgs& base, const report::ExperimentSetting& setting) {
  QuantizeArgs a;
  CLI::App app{"qtool quantize (experiment setting)", "quantize"};
  add_quantize_options(app, a);
  std::vector<std::string> args{base.model_path, "-o", setting.output_model};
  for (auto& s : setting.to_args()) args.push_back(std::move(s));
  QTOOL_CHECK(std::find(args.begin(), args.end(), "--config") == args.end(), ErrorCode::kConfig,
              "setting '{}': --config is not allowed inside an experiment", setting.name);
  std::reverse(args.begin(), args.end());  // CLI11 takes the vector in reverse order
  try {
    app.parse(args);
  } catch (const CLI::ParseError& e) {
    throw Error(ErrorCode::kConfig, fmt::format("setting '{}': {}", setting.name, e.what()));
  }
  if (a.threads == 1 && base.threads != 1) a.threads = base.threads;
  with_context(fmt::format("setting '{}'", setting.name), [&] { check_options_apply(app, a); });
  return a;
}

/// Metrics of one setting for the results table.
nlohmann::json metrics_of(const report::QuantizeReport& r) {
  nlohmann::json m;
  m["precision"] = r.precision;
  m["size_bytes"] = r.output_file_bytes;
  const double pct = r.size_percent();
  if (std::isfinite(pct)) m["size_percent"] = std::round(pct * 100.0) / 100.0;
  m["bits_per_weight"] = std::round(r.bits_per_weight() * 1000.0) / 1000.0;
  double sqnr = std::numeric_limits<double>::infinity(), agree = 2.0;
  for (const auto& o : r.outputs) {
    if (!std::isnan(o.sqnr_db)) sqnr = std::min(sqnr, o.sqnr_db);
    if (!std::isnan(o.top1_agreement)) agree = std::min(agree, o.top1_agreement);
  }
  if (!r.outputs.empty() && std::isfinite(sqnr)) m["sqnr_db"] = std::round(sqnr * 100.0) / 100.0;
  if (agree <= 1.0) m["top1_agreement"] = agree;
  return m;
}

int run_config(const QuantizeArgs& base) {
  QTOOL_CHECK(base.out_path.empty() && base.report_path.empty(), ErrorCode::kConfig,
              "--config writes each setting to <output_dir>/<name>.onnx: -o and --report do not apply (a setting may "
              "set its own \"report\")");
  protect_input(base.config_path);
  protect_input(base.model_path);
  const report::ExperimentConfig config = report::load_experiment_config(base.config_path);
  for (const auto& setting : config.settings) {  // before any setting runs: no output over an input
    const std::string input = protected_input_at(setting.output_model);
    QTOOL_CHECK(input.empty(), ErrorCode::kConfig, "setting '{}' would write '{}', which is the input file '{}'",
                setting.name, setting.output_model, input);
  }
  spdlog::info("experiments: {} settings from '{}' -> {}", config.settings.size(), config.path, config.output_dir);
  const report::ExperimentOutcome outcome =
      report::run_experiments(config, [&](const report::ExperimentSetting& setting) {
        spdlog::info("setting '{}'", setting.name);
        const QuantizeArgs a = parse_setting(base, setting);
        QuantizeOutcome out = quantize_once(a);
        if (!base.json) std::cout << fmt::format("== {} ==\n{}", setting.name, report::format_summary_table(out.report));
        if (out.gate_failure) throw *out.gate_failure;
        return metrics_of(out.report);
      });
  if (base.json) {
    std::cout << outcome.rows.dump(2) << "\n";
  } else {
    std::cout << fmt::format("{} settings, {} failed; results: {} and {}\n", outcome.rows.size(), outcome.failed,
                             outcome.csv_path, outcome.json_path);
  }
  std::cout.flush();
  if (outcome.failed > 0)
    throw Error(ErrorCode::kConfig, fmt::format("{} of {} experiment settings failed (see {})", outcome.failed,
                                                outcome.rows.size(), outcome.csv_path));
  return exit_code::kOk;
}

int run_quantize(const QuantizeArgs& a) {
  if (!a.config_path.empty()) return run_config(a);
  QuantizeOutcome out = quantize_once(a);
  print_outcome(a, out);
  if (out.gate_failure) throw *out.gate_failure;
  return exit_code::kOk;
}

}  // namespace

void add_quantize_command(CLI::App& app) {
  auto a = std::make_shared<QuantizeArgs>();
  CLI::App* cmd = app.add_subcommand("quantize", "post-training quantization (static INT8 QDQ, or low-bit weights)");
  add_quantize_options(*cmd, *a);
  cmd->footer("\n" + quant::weight_formats_help());
  cmd->callback([a, cmd] {
    if (cmd->count("--plan") && !cmd->count("--bits")) a->bits = plan_bits(a->plan_path);
    check_options_apply(*cmd, *a);
    run_quantize(*a);
  });
}

}  // namespace qtool::cli
