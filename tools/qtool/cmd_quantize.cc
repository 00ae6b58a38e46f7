// qtool quantize MODEL --bits 8 --calib DIR -o OUT [options]
//
// Parses the options into a typed pipeline::QuantizeJob (make_job), runs it (pipeline/quantize.h:
// static W8A8 / W8A16 QDQ for --bits 8, weight-only low-bit otherwise) and prints the summary table
// of report/report.h (or, with --json, the report JSON); a violated --max-drop exits with
// exit_code::kQualityGate (3) after the report is printed. --config experiment.json runs a list of
// settings (report/experiments.h), each parsed by the same option definitions (add_quantize_options
// on a fresh CLI::App) and run by the same quantize_once().
#include <algorithm>
#include <iostream>
#include <map>
#include <optional>
#include <tuple>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "commands.h"
#include "path_options.h"
#include "qtool/core/npy.h"
#include "qtool/core/output_file.h"
#include "qtool/core/strings.h"
#include "sample_options.h"
#include "qtool/core/error.h"
#include "qtool/pipeline/ladder.h"
#include "qtool/pipeline/quantize.h"
#include "qtool/quant/lowbit.h"
#include "qtool/quant/plan.h"
#include "qtool/quant/precision.h"
#include "qtool/quant/weight_algorithms.h"
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
  bool reduce_range = false;
  std::string activation_type = "uint8";
  std::string weight_type = "auto";
  std::string mode = "static";  ///< --mode: static or dynamic
  std::string ladder;           ///< --ladder 8,4,2: one variant per entry under -o DIR
  int activation_bits = 8;
  std::string format = "qdq";
  std::string exclude_nodes, exclude_op_types, op_types, keep_fp;
  bool cle = false, bias_correction = false, no_guard = false;
  bool cle_relu6 = false;  ///< --cle-relu6: replace Clip(0, 6) by Relu so CLE can cross it
  bool no_bias_correction = false;  ///< --no-bias-correction: not even the depthwise default
  std::optional<double> max_drop;
  double min_sqnr = 20.0, min_agreement = 0.97;  ///< the static path's quality floor
  bool min_sqnr_given = false;  ///< --min-sqnr on the command line (weight-only: the quality target)
  double min_iou = 0.9;                           ///< ... for one-channel probability maps
  double max_nll_increase = 1.0;                 ///< percent, for next-token logits
  std::string metric = "auto";                   ///< how the floor judges outputs
  bool force = false;
  int threads = 1;
  int64_t block_size = 32;
  std::string weight_algorithm = "auto";   ///< weight-only: auto = the measured default (pipeline)
  bool asymmetric = false;                ///< weight-only: unsigned levels with zero points
  bool symmetric = false;                 ///< weight-only: signed levels, no zero points
  bool tune_given = false;                ///< --tune-steps was given (else the default applies)
  double outlier_fraction = 0.0;          ///< weight-only: input channels kept at int8
  std::string bits_first_last = "8";      ///< weight-only: first/last layers
  std::string layer_bits;                 ///< weight-only: 'pattern=bits,...'
  std::string scale_type = "float16";     ///< weight-only: stored scale type below 8 bits
  std::string bits_depthwise = "8";       ///< weight-only: depthwise conv bits ('same' = like --bits)
  quant::TuneOptions tune{.threads = 0};  ///< weight-only: distillation tuning (--tune-*)
  bool gptq_act_order = false;            ///< weight-only: GPTQ columns by decreasing H_jj
  bool sequential = false;                ///< weight-only: statistics re-collected from the partly quantized model
  double gptq_damp = 0.01;                ///< weight-only: GPTQ dampening (fraction of mean diag H)
  bool no_tune_weights = false, no_tune_scales = false, no_tune_float = false;
  int palette = 0;                        ///< weight-only: --palette BITS (= --bits palBITS)
  int64_t palette_group = 0;              ///< weight-only: output channels per palette table (0 = per tensor)
  int64_t palette_block = -1;             ///< weight-only: palette values scaled per block of K (0 = no scales; -1 = auto)
  std::string sparsity;                   ///< weight-only: --sparsity 0.5 | 50% | 2:4
  std::string sparsity_method = "auto";   ///< weight-only: auto | magnitude | wanda | sparsegpt
  std::string target_size;                ///< weight-only: --target-size BYTES|PCT (a budget search)
  double target_bpw = 0.0;                ///< weight-only: --target-bpw B (0 = none)
  bool keep_int8_speed = false;           ///< --keep-int8-speed: the budget on the static path (W4/W8 A8)
  std::string report_path;  ///< --report: .json or .html
  std::string plan_path;    ///< --plan: per-layer formats (weight-only)
  std::string plan_out;     ///< --plan-out: write the plan the run carried out
  std::string config_path;  ///< --config: batch experiments
  bool json = false;        ///< --json: print the report JSON instead of the table
};

/// --bits 8 / int8: the static W8A8 path (precision.h parses the value; kConfig if unknown), unless
/// pruned (--sparsity: int8 weights, float activations) or palettized.
bool is_static(const QuantizeArgs& a) {
  return quant::BitsChoice(a.bits).is_int8() && a.mode != "dynamic" && !quant::SparsitySpec::parse(a.sparsity).active() &&
         a.palette == 0 && ((a.target_size.empty() && a.target_bpw <= 0) || a.keep_int8_speed);
}
/// --bits 8 --mode dynamic.
bool is_dynamic(const QuantizeArgs& a) { return quant::BitsChoice(a.bits).is_int8() && a.mode == "dynamic"; }
QuantizePath path_of(const QuantizeArgs& a) {
  return is_static(a) ? QuantizePath::kStatic : is_dynamic(a) ? QuantizePath::kDynamic : QuantizePath::kWeightOnly;
}

/// The options of a run as given, for QuantizeReport::settings.
std::map<std::string, std::string> settings_of(const QuantizeArgs& a) {
  std::map<std::string, std::string> m{{"bits", a.bits}, {"mode", a.mode}};
  if (is_dynamic(a)) {
    m["weight-type"] = a.weight_type == "int8" ? "int8" : "uint8";
    m["per-channel"] = a.per_tensor ? "false" : "true";
  }
  if (!a.data.path.empty()) m["calib"] = a.data.path;
  if (!a.ranges_path.empty()) m["ranges"] = a.ranges_path;
  if (is_static(a)) {
    m["method"] = a.method;
    m["activation-type"] = a.activation_type;
    m["activation-bits"] = std::to_string(a.activation_bits);
    m["per-channel"] = a.per_tensor ? "false" : "true";
    if (a.reduce_range) m["reduce-range"] = "true";
    m["guard"] = a.no_guard ? "false" : "true";
    m["cle"] = a.cle ? (a.cle_relu6 ? "true (ReLU6 -> Relu)" : "true") : "false";
    m["weight-algorithm"] = a.weight_algorithm != "auto" ? a.weight_algorithm
                                                         : "auto (gptq with 16-bit activations and --calib, else rtn)";
    m["bias-correction"] = a.no_bias_correction ? "false" : a.bias_correction ? "true" : "auto (on for models with depthwise convs)";
  } else if (is_dynamic(a)) {
    m["guard"] = a.no_guard ? "false" : "true";
  } else {
    m["block-size"] = std::to_string(a.block_size);
    if (a.palette > 0) m["palette-group"] = std::to_string(a.palette_group);
    if (a.palette > 0 && a.palette_block >= 0) m["palette-block"] = std::to_string(a.palette_block);
    if (!a.sparsity.empty()) {
      m["sparsity"] = a.sparsity;
      m["sparsity-method"] = a.sparsity_method;
    }
    m["weight-algorithm"] = a.weight_algorithm;
    if (a.gptq_act_order) m["gptq-act-order"] = "true";
    if (a.sequential) m["sequential"] = "true";
    if (a.gptq_damp != 0.01) m["gptq-damp"] = fmt::format("{}", a.gptq_damp);
    m["format"] = a.format;
    if (a.asymmetric || a.symmetric) m[a.asymmetric ? "asymmetric" : "symmetric"] = "true";
    if (a.outlier_fraction > 0) m["outlier-fraction"] = fmt::format("{}", a.outlier_fraction);
    m["bits-first-last"] = a.bits_first_last;
    if (!a.layer_bits.empty()) m["layer-bits"] = a.layer_bits;
    m["scale-type"] = a.scale_type;
    m["bits-depthwise"] = a.bits_depthwise;
    if (a.tune.steps > 0) {
      m["tune-steps"] = std::to_string(a.tune.steps);
      m["tune-batch"] = std::to_string(a.tune.batch);
      for (const auto& [k, v] : {std::pair{"tune-lr", a.tune.lr}, {"tune-scale-lr", a.tune.lr_scale}, {"tune-float-lr", a.tune.lr_float}})
        m[k] = fmt::format("{}", v);
      std::tie(m["tune-loss"], m["tune-augment"]) = std::tie(a.tune.loss, a.tune.augment);
      if (a.tune.mixup > 0) m["tune-mixup"] = fmt::format("{}", a.tune.mixup);
      if (a.tune.feature_weight > 0) m["tune-features"] = fmt::format("{}", a.tune.feature_weight);
      if (a.tune.stages > 1) m["tune-stages"] = std::to_string(a.tune.stages);
      if (a.tune.latent_range > 0) m["tune-range"] = fmt::format("{}", a.tune.latent_range);
      if (a.tune.quant_noise > 0) m["tune-quant-noise"] = fmt::format("{}", a.tune.quant_noise);
      const std::string what = std::string(a.no_tune_weights ? "" : ",weights") + (a.no_tune_scales ? "" : ",scales") +
                               (a.no_tune_float ? "" : ",float");
      m["tune"] = what.empty() ? "nothing" : what.substr(1);
    }
  }
  if (!a.target_size.empty()) m["target-size"] = a.target_size;
  if (a.target_bpw > 0) m["target-bpw"] = fmt::format("{}", a.target_bpw);
  if (a.keep_int8_speed) m["keep-int8-speed"] = "true";
  if (a.data.samples > 0) m["samples"] = std::to_string(a.data.samples);
  if (!a.data.preprocess.empty()) m["preprocess"] = a.data.preprocess;
  if (!a.exclude_nodes.empty()) m["exclude-nodes"] = a.exclude_nodes;
  if (!a.exclude_op_types.empty()) m["exclude-op-types"] = a.exclude_op_types;
  if (!a.op_types.empty()) m["op-types"] = a.op_types;
  if (!a.keep_fp.empty()) m["keep-fp"] = a.keep_fp;
  return m;
}

/// Refuses options that do not apply to the path --bits chose (kConfig, naming the option).
void check_options_apply(const CLI::App& cmd, const QuantizeArgs& a) { check_path_options(cmd, path_of(a), a.bits); }

/// The typed job for one run: every string option parsed and checked here, once.
pipeline::QuantizeJob make_job(const QuantizeArgs& a) {
  pipeline::QuantizeJob job;
  job.model_path = a.model_path;
  job.out_path = a.out_path;
  job.report_path = a.report_path;
  job.ranges_path = a.ranges_path;
  job.plan_path = a.plan_path;
  job.plan_out = a.plan_out;
  job.data = a.data;
  job.bits = quant::BitsChoice(a.bits);
  QTOOL_CHECK(a.target_size.empty() || a.target_bpw <= 0, ErrorCode::kConfig,
              "--target-size and --target-bpw are two budgets: give one");
  if (!a.target_size.empty()) job.budget = pipeline::parse_target_size(a.target_size);
  if (a.target_bpw > 0) job.budget = pipeline::target_bits_per_weight(a.target_bpw);
  QTOOL_CHECK(!a.keep_int8_speed || job.budget.active(), ErrorCode::kConfig,
              "--keep-int8-speed applies to a size budget (--target-size or --target-bpw)");
  QTOOL_CHECK(!a.keep_int8_speed || quant::BitsChoice(a.bits).is_int8(), ErrorCode::kConfig,
              "--keep-int8-speed plans int8 / int4 weights with 8-bit activations: it goes with --bits 8 (the default), "
              "not --bits {}", a.bits);
  job.keep_int8_speed = a.keep_int8_speed;
  if (a.palette > 0) {
    QTOOL_CHECK(a.bits == "8", ErrorCode::kConfig, "--palette {} replaces --bits (it is --bits pal{}); give one of them",
                a.palette, a.palette);
    job.bits = quant::BitsChoice(fmt::format("pal{}", a.palette));
  }
  job.guard = !a.no_guard;
  job.per_layer_eval = a.json || !a.report_path.empty();
  job.max_drop = a.max_drop;
  job.floor_sqnr_db = a.min_sqnr;
  if (a.min_sqnr_given) job.min_sqnr = a.min_sqnr;
  job.floor_lm_nll_increase = a.max_nll_increase / 100.0;
  job.floor_metric = pipeline::parse_output_metric(a.metric);
  job.floor_agreement = a.min_agreement;
  job.floor_mask_iou = a.min_iou;
  job.force = a.force;
  job.threads = a.threads;
  job.exclude_nodes = split_list(a.exclude_nodes);
  job.keep_fp = split_list(a.keep_fp);
  job.settings = settings_of(a);
  if (is_dynamic(a)) {
    QTOOL_CHECK(a.format == "qdq", ErrorCode::kConfig,
                "--format {} does not apply to --mode dynamic (DynamicQuantizeLinear + MatMulInteger/ConvInteger)",
                a.format);
    job.dynamic = true;
    quant::DynamicOptions& d = job.dynamic_cfg;
    d.weight_type = a.weight_type == "int8" ? DataType::kInt8 : DataType::kUint8;
    d.per_channel = !a.per_tensor;
    if (!a.op_types.empty()) {
      d.op_types.clear();
      for (const auto& x : split_list(a.op_types)) d.op_types.insert(x);
    }
    return job;
  }
  if (is_static(a)) {
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
    quant::StaticQuantConfig& cfg = job.static_cfg;
    const bool is_signed = a.activation_type == "int8";
    cfg.qdq.activation_type = a.activation_bits == 16 ? (is_signed ? DataType::kInt16 : DataType::kUint16)
                                                      : (is_signed ? DataType::kInt8 : DataType::kUint8);
    cfg.qdq.activation_symmetric = is_signed;
    cfg.qdq.per_channel = !a.per_tensor;
    cfg.qdq.reduce_range = a.reduce_range;
    cfg.qdq.weight_type = a.weight_type == "uint8" ? DataType::kUint8 : DataType::kInt8;
    cfg.qdq.saturation_safe = a.weight_type == "auto";
    for (const auto& x : job.exclude_nodes) cfg.qdq.exclude_nodes.insert(x);
    for (const auto& x : split_list(a.exclude_op_types)) cfg.qdq.exclude_op_types.insert(x);
    for (const auto& x : job.keep_fp) cfg.qdq.keep_float_names.insert(x);
    // W4A8: --layer-bits 'PATTERN=4' stores those weights with 4-bit levels (8 = the default).
    if (!a.layer_bits.empty())
      for (const quant::LayerBitsRule& r : quant::parse_layer_bits(a.layer_bits)) {
        const quant::ElementType* t = r.bits.type();
        const bool int_type = t && t->scheme == quant::WeightScheme::kInt && t->is_signed;
        QTOOL_CHECK(int_type && (t->bits == 4 || t->bits == 8), ErrorCode::kConfig,
                    "--layer-bits {}={}: with --bits 8 (static W8A8) a layer's weights are 4 (W4A8: int4 levels "
                    "read as int8, INT8 speed) or 8 bits",
                    r.pattern, r.bits.spelled());
        cfg.qdq.weight_bits.emplace_back(r.pattern, static_cast<int>(t->bits));
      }
    cfg.method = a.method;
    cfg.percentile = a.percentile;
    cfg.cle = a.cle;
    cfg.cle_replace_relu6 = a.cle_relu6;
    if (a.no_bias_correction) job.bias_correction = false;
    else if (a.bias_correction) job.bias_correction = true;
    job.op_types = split_list(a.op_types);
    job.activation_bits = a.activation_bits;
    job.qoperator = a.format == "qoperator";
    if (a.weight_algorithm != "auto") job.algorithm = quant::parse_weight_algorithm(a.weight_algorithm);
    return job;
  }
  quant::WeightOnlyConfig& cfg = job.weight_cfg;
  cfg.bits = job.bits;
  cfg.block_size = a.block_size;
  cfg.palette_group = a.palette_group;
  // Default: palettes of 4 bits or fewer get scales per block of 32 or tables per 4 output channels,
  // whichever the held-out samples judge better (-1 = that choice, pipeline/weight_only_path.cc; a table
  // alone cannot follow each block's range: stories260K +3.6% / +0.7% NLL scaled, +12.3% / +3.4% per
  // tensor); from 5 bits on scales per block of 32 or one bare table per tensor (pal6: MobileNetV2
  // 24.6 against 22.2 dB held out, top-1 -0.4 against -0.8 points). BENCHMARKS.md "Palettes and pruning".
  const int pal_bits = job.bits.is_palette() ? job.bits.type()->bits : 0;
  cfg.palette_block = a.palette_block >= 0 ? a.palette_block : (pal_bits > 0 && a.palette_group == 0 ? -1 : 0);
  QTOOL_CHECK(a.palette_group == 0 || a.palette_block <= 0, ErrorCode::kConfig,
              "--palette-group and --palette-block exclude each other (tables per group of output channels, or one "
              "table of values scaled per block of input channels)");
  // Options of a palette or of pruning are refused, not ignored, when the run has none.
  const auto is_pal = [](const std::string& b) { return !b.empty() && b != "same" && quant::BitsChoice(b).is_palette(); };
  bool any_palette = job.bits.is_palette() || is_pal(a.bits_first_last) || is_pal(a.bits_depthwise);
  if (!a.layer_bits.empty())
    for (const quant::LayerBitsRule& r : quant::parse_layer_bits(a.layer_bits)) any_palette = any_palette || r.bits.is_palette();
  QTOOL_CHECK(any_palette || (a.palette_group == 0 && a.palette_block < 0), ErrorCode::kConfig,
              "--palette-group and --palette-block apply to palettes (--palette, or --bits/--layer-bits pal1..pal8)");
  cfg.sparsity = quant::SparsitySpec::parse(a.sparsity);
  QTOOL_CHECK(cfg.sparsity.active() || a.sparsity_method == "auto", ErrorCode::kConfig,
              "--sparsity-method applies with --sparsity");
  if (a.sparsity_method == "auto")  // SparseGPT needs the layers' input Hessians (calibration data)
    cfg.sparsity_method = a.data.path.empty() ? quant::SparsityMethod::kMagnitude : quant::SparsityMethod::kSparseGpt;
  else
    cfg.sparsity_method = quant::parse_sparsity_method(a.sparsity_method);
  QTOOL_CHECK(cfg.sparsity_method == quant::SparsityMethod::kMagnitude || !cfg.sparsity.active() || !a.data.path.empty(),
              ErrorCode::kConfig, "--sparsity-method {} needs calibration data (--calib)", a.sparsity_method);
  if (a.weight_algorithm != "auto") job.algorithm = cfg.algorithm = quant::parse_weight_algorithm(a.weight_algorithm);
  QTOOL_CHECK(!(a.asymmetric && a.symmetric), ErrorCode::kConfig, "--asymmetric and --symmetric exclude each other");
  if (a.asymmetric || a.symmetric) job.symmetric = a.symmetric;
  if (const quant::ElementType* t = job.bits.type(); t && !job.bits.width_only()) {  // a row, not a width alias
    QTOOL_CHECK(!(a.asymmetric && t->is_signed), ErrorCode::kConfig,
                "--asymmetric: --bits {} has no zero points{}", t->name,
                t->width.empty() ? "" : fmt::format(" (use --bits {} --asymmetric, or the unsigned row)", t->width));
    QTOOL_CHECK(!(a.symmetric && !t->is_signed), ErrorCode::kConfig,
                "--symmetric: --bits {} stores zero points (use --bits {} --symmetric)", t->name, t->width);
  }
  job.tune_given = a.tune_given;
  cfg.exclude = job.exclude_nodes;
  QTOOL_CHECK(a.format == "qdq" || a.format == "matmulnbits" || a.format == "cast", ErrorCode::kConfig,
              "--format {} is not valid with --bits {}: use qdq (DequantizeLinear), matmulnbits or cast "
              "(Cast/Mul dequantization that ONNX Runtime folds at load)",
              a.format, a.bits);
  cfg.format = a.format == "matmulnbits" ? quant::WeightLayout::kMatMulNBits : quant::WeightLayout::kQdq;
  if (a.mode == "dynamic") {  // weights below 8 bits, activations quantized on the fly: MatMulNBits accuracy_level 4
    QTOOL_CHECK(a.format == "qdq" || a.format == "matmulnbits", ErrorCode::kConfig,
                "--mode dynamic with --bits {} writes MatMul weights as MatMulNBits (accuracy_level 4); --format {} "
                "does not apply",
                a.bits, a.format);
    cfg.format = quant::WeightLayout::kMatMulNBits;
    job.matmulnbits_accuracy_level = 4;
  }
  cfg.cast_dequant = a.format == "cast";
  cfg.symmetric = !a.asymmetric;  // the pipeline's default when neither flag was given
  QTOOL_CHECK(a.outlier_fraction >= 0.0 && a.outlier_fraction < 0.5, ErrorCode::kConfig,
              "--outlier-fraction {} is out of range [0, 0.5)", a.outlier_fraction);
  cfg.outlier_fraction = a.outlier_fraction;
  cfg.bits_first_last = a.bits_first_last == "same" ? "" : a.bits_first_last;
  QTOOL_CHECK(a.scale_type == "float16" || a.scale_type == "float32", ErrorCode::kConfig,
              "--scale-type must be float16 or float32, got '{}'", a.scale_type);
  cfg.fp16_scales = a.scale_type == "float16";
  cfg.bits_depthwise = a.bits_depthwise == "same" ? "" : a.bits_depthwise;
  if (!a.layer_bits.empty()) cfg.layer_bits = quant::parse_layer_bits(a.layer_bits);
  cfg.tune = a.tune;
  cfg.gptq.act_order = a.gptq_act_order;
  cfg.sequential = a.sequential;
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
  return job;
}

/// One quantize run with parsed options (pipeline::quantize): prints nothing to stdout.
pipeline::QuantizeOutcome quantize_once(const QuantizeArgs& a) { return pipeline::quantize(make_job(a)); }

void print_outcome(const QuantizeArgs& a, const pipeline::QuantizeOutcome& out) {
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
  cmd.add_flag("--reduce-range", a.reduce_range,
               "7-bit weights: exact in ONNX Runtime on x86 CPUs without VNNI, whose u8s8 kernels saturate 8-bit ones");
  cmd.add_option("--activation-type", a.activation_type, "uint8 (asymmetric, default) or int8 (symmetric)");
  cmd.add_option("--mode", a.mode,
                 "static (default: calibrated activation ranges) or dynamic (with --bits 8: int8 weights, activations "
                 "quantized on the fly by DynamicQuantizeLinear; no --calib needed, and with it the floor is judged on "
                 "the samples)")
      ->check(CLI::IsMember({"static", "dynamic"}));
  cmd.add_option("--ladder", a.ladder,
                 "a precision ladder: one variant per --bits value (e.g. 8,4,2), each with the other options, written "
                 "to -o DIR as <model>.<w8|w4|...>.onnx with DIR/ladder.json (file, size, bits per weight, measured "
                 "quality of each) for an app to pick from at run time");
  cmd.add_option("--weight-type", a.weight_type,
                 "static path: auto (default: int8, but uint8 for the Conv/MatMul/Gemm weights whose input has a non-zero "
                 "zero point, so ONNX Runtime is exact on x86 CPUs without VNNI), int8, or uint8 (the same symmetric levels "
                 "+ 128, zero point 128); --mode dynamic: auto = uint8 (exact u8u8 kernels), or int8 (MatMul/Gemm only: "
                 "ConvInteger and DynamicQuantizeLSTM keep uint8)")
      ->check(CLI::IsMember({"auto", "int8", "uint8"}));
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
  cmd.add_option("--min-sqnr", a.min_sqnr,
                 "static and dynamic paths: quality floor, output SQNR in dB for outputs that are not classifiers "
                 "(default 20); below it precision is raised (static: observed ranges, 16 bits, float; dynamic: nodes "
                 "kept in float), then exit 3 with no model. Weight-only: a quality target, the smallest plan of the "
                 "budget search's forms (int8, 4-bit, 2-bit, palettes, float; within --target-size / --target-bpw "
                 "when given) whose output SQNR on held-out samples reaches it; exit 3 when none does")
      ->check(CLI::Range(-1000.0, 1000.0));
  cmd.add_option("--min-iou", a.min_iou,
                 "static and dynamic paths: quality floor for a one-channel probability map (text, saliency, binary "
                 "segmentation): IoU of its masks thresholded at 0.5 (default 0.9)")
      ->check(CLI::Range(0.0, 1.0));
  cmd.add_option("--min-agreement", a.min_agreement,
                 "static and dynamic paths: quality floor, top-1 agreement with FP32 (fraction) for classifier outputs "
                 "(default 0.97)")
      ->check(CLI::Range(0.0, 1.0));
  cmd.add_option("--max-nll-increase", a.max_nll_increase,
                 "static and dynamic paths: quality floor for next-token logits of a token model: the NLL increase on the model's "
                 "own predictions (KL / entropy) in percent (default 1)")
      ->check(CLI::Range(0.0, 1000.0));
  cmd.add_option("--metric", a.metric,
                 "static and dynamic paths: how the quality floor judges outputs: auto (by output kind), agreement, sqnr, nll, iou "
                 "(a one-channel probability map: IoU of its masks at 0.5, at least --min-iou)")
      ->check(CLI::IsMember({"auto", "agreement", "sqnr", "nll", "iou"}));
  cmd.add_flag("--force", a.force, "write the model even when it stays below the quality floor or looks broken (still exit 3)");
  cmd.add_option("--max-drop", a.max_drop, "fail (exit 3) if top-1 agreement with FP32 drops more than P points")
      ->check(CLI::Range(0.0, 100.0));
  cmd.add_option("--target-size", a.target_size,
                 "weight-only: the file must fit this size: bytes (1500000, 1.5MB, 800KiB) or a percentage of the FP32 "
                 "file (15%); every layer's forms (int8, 4-bit, 2-bit, palettes, float) are measured on held-out "
                 "samples and the plan with the best predicted quality that fits is written (needs --calib)");
  cmd.add_option("--target-bpw", a.target_bpw,
                 "weight-only: average stored bits per weight over the quantizable weights, scales included (a budget "
                 "search as --target-size)")
      ->check(CLI::Range(0.5, 32.0));
  cmd.add_flag("--keep-int8-speed", a.keep_int8_speed,
               "with --target-size / --target-bpw: plan int8 or int4 weights (4-bit levels read as int8) with 8-bit "
               "activations on the static path, so the model keeps ONNX Runtime's INT8 kernels");
  cmd.add_option("--threads", a.threads, "executor threads")->check(CLI::Range(1, 256));
  cmd.add_option("--block-size", a.block_size, "weight-only: block size (0 = per channel)")->check(CLI::Range(0, 65536));
  cmd.add_option("--palette", a.palette,
                 "weight-only: palettize the weights: each one an index into a table of 2^BITS values found by "
                 "k-means (weighted by the input channels' energy with --calib), BITS 1-8; the same as --bits palBITS")
      ->check(CLI::Range(1, 8));
  cmd.add_option("--palette-group", a.palette_group,
                 "palettes: output channels sharing one table: 1, 4, 8 or 16, or 0 = no groups (the default; see --palette-block)")
      ->check(CLI::IsMember({0, 1, 4, 8, 16}));
  cmd.add_option("--palette-block", a.palette_block,
                 "palettes: one table per tensor of values scaled by a float16 scale per block of 16, 32, 64 or 128 "
                 "input channels (a learned non-uniform grid, like NF4 fitted to the layer), or 0 = no scales; default "
                 "without --palette-group: block 32 or (4 bits or fewer) tables per 4 output channels / (5 bits and more) "
                 "one bare table per tensor, whichever the held-out calibration samples judge better (block 32 without "
                 "--calib)")
      ->check(CLI::IsMember({0, 16, 32, 64, 128}));
  cmd.add_option("--sparsity", a.sparsity,
                 "weight-only: prune before quantizing: a fraction of zeros per layer (0.5 or 50%) or N:M (2:4: at most "
                 "2 non-zeros in every 4 weights along the input channels); every quantized layer but the first and last, "
                 "depthwise convs and embeddings; pruned layers are stored as a bit mask plus the kept levels where "
                 "smaller. With --bits 8: int8 weights, float activations");
  cmd.add_option("--sparsity-method", a.sparsity_method,
                 "pruning: auto (default: sparsegpt with --calib, else magnitude), magnitude, wanda (|w|·‖x‖ per output "
                 "row) or sparsegpt (mask chosen in the GPTQ sweep, errors compensated)")
      ->check(CLI::IsMember({"auto", "magnitude", "wanda", "sparsegpt"}));
  cmd.add_option("--weight-algorithm,--algorithm", a.weight_algorithm,
                 "weight-only: auto (default: with --calib GPTQ, or RTN + tuning for token models; without, RTN), " +
                     quant::weight_algorithms_help() +
                     "; static --bits 8: rtn or gptq (int8 weights per output channel fitted through the calibration "
                     "samples' input Hessians: slower, better where 16-bit activations leave the weights' error in "
                     "front); default: gptq with 16-bit activations (also the quality floor's 16-bit run), else rtn");
  cmd.add_flag("--gptq-act-order", a.gptq_act_order, "weight-only GPTQ: quantize columns by decreasing activation energy (act order)");
  cmd.add_flag("--sequential", a.sequential,
               "weight-only GPTQ/AWQ/SparseGPT/Wanda: layers in order, each one's input statistics re-collected from "
               "the model whose earlier layers are already quantized and pruned (one calibration pass per layer input)");
  cmd.add_option("--gptq-damp", a.gptq_damp, "weight-only GPTQ: dampening, a fraction of the mean Hessian diagonal (default 0.01)");
  cmd.add_flag("--asymmetric", a.asymmetric,
               "weight-only: unsigned levels with zero points (the default with --calib; without, symmetric)");
  cmd.add_flag("--symmetric", a.symmetric, "weight-only: signed levels without zero points");
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
  a.tune_given = app.count("--tune-steps") > 0;
  a.min_sqnr_given = app.count("--min-sqnr") > 0;
  with_context(fmt::format("setting '{}'", setting.name), [&] { check_options_apply(app, a); });
  return a;
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
        pipeline::QuantizeOutcome out = quantize_once(a);
        if (!base.json) std::cout << fmt::format("== {} ==\n{}", setting.name, report::format_summary_table(out.report));
        if (out.gate_failure) throw *out.gate_failure;
        return report::setting_metrics(out.report);
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

/// The ladder's variants: the run's options with --bits set to each entry.
std::vector<QuantizeArgs> ladder_variants(const QuantizeArgs& a) {
  std::vector<QuantizeArgs> out;
  for (const std::string& b : split_list(a.ladder)) {
    QuantizeArgs v = a;
    v.bits = b;
    v.ladder.clear();
    v.out_path = pipeline::ladder_output_path(a.out_path, a.model_path, pipeline::ladder_rung_name(b));
    v.report_path.clear();
    v.json = false;
    out.push_back(std::move(v));
  }
  QTOOL_CHECK(!out.empty(), ErrorCode::kConfig, "--ladder needs a comma-separated list of --bits values, e.g. 8,4,2");
  return out;
}

int run_ladder(const QuantizeArgs& a) {
  QTOOL_CHECK(a.config_path.empty() && a.report_path.empty() && a.plan_path.empty() && a.plan_out.empty(),
              ErrorCode::kConfig, "--ladder writes its variants and ladder.json under -o DIR: --config, --report, "
                                  "--plan and --plan-out do not apply");
  QTOOL_CHECK(!a.out_path.empty(), ErrorCode::kConfig, "--ladder needs -o DIR (the folder for the variants)");
  protect_input(a.model_path);
  std::vector<pipeline::LadderRung> rungs;
  for (const QuantizeArgs& v : ladder_variants(a))
    rungs.push_back({pipeline::ladder_rung_name(v.bits), v.bits, make_job(v)});
  const pipeline::LadderOutcome out = pipeline::run_ladder(a.model_path, a.out_path, std::move(rungs));
  if (a.json) {
    std::cout << out.manifest.dump(2) << "\n";
  } else {
    for (const auto& v : out.manifest["variants"])
      std::cout << fmt::format("{:10} {:8} {:>14} {:>8}  {}\n", v["name"].get<std::string>(),
                               v.value("status", std::string("?")),
                               v.contains("size_bytes") ? fmt::format("{} B", v["size_bytes"].get<int64_t>()) : "-",
                               v.contains("bits_per_weight") ? fmt::format("{:.2f} bpw", v["bits_per_weight"].get<double>()) : "",
                               v.value("error", v.value("precision", std::string())));
    std::cout << fmt::format("manifest: {}\n", out.manifest_path);
  }
  std::cout.flush();
  if (out.failed > 0)
    throw Error(ErrorCode::kQualityGate,
                fmt::format("{} of {} ladder variants failed and were not written (see {})", out.failed,
                            out.manifest["variants"].size(), out.manifest_path));
  return exit_code::kOk;
}

int run_quantize(const QuantizeArgs& a) {
  if (!a.config_path.empty()) return run_config(a);
  if (!a.ladder.empty()) return run_ladder(a);
  pipeline::QuantizeOutcome out = quantize_once(a);
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
    if (cmd->count("--plan") && !cmd->count("--bits")) a->bits = quant::plan_default_bits(a->plan_path);
    a->tune_given = cmd->count("--tune-steps") > 0;
    a->min_sqnr_given = cmd->count("--min-sqnr") > 0;
    if (a->ladder.empty()) {
      check_options_apply(*cmd, *a);
    } else {  // every rung's path must accept the options given
      for (const QuantizeArgs& v : ladder_variants(*a))
        with_context(fmt::format("--ladder rung --bits {}", v.bits), [&] {
          check_options_apply(*cmd, v);
          // On a weight-only rung --min-sqnr would search a mixed plan, not the rung's bits.
          QTOOL_CHECK(!a->min_sqnr_given || path_of(v) != QuantizePath::kWeightOnly, ErrorCode::kConfig,
                      "--min-sqnr on a weight-only rung would write a mixed plan instead of {}-bit weights: give "
                      "--min-sqnr without --ladder",
                      v.bits);
        });
    }
    run_quantize(*a);
  });
}

}  // namespace qtool::cli
