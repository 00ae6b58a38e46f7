// qtool quantize MODEL --bits 8 --calib DIR -o OUT [options]
//
// --bits 8 (default): static W8A8 (or W8A16) quantization in QDQ form (quant/static_quant.h):
// prepare passes, calibration, Q/DQ placement the way ONNX Runtime fuses it, and the quality
// guard on held-out calibration samples. --bits below 8: weight-only low-bit quantization
// (quant/lowbit.h apply_weight_only). Results go to stdout, logs to stderr; a violated --max-drop
// exits with exit_code::kQualityGate (3) after the report is printed.
#include <chrono>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <optional>
#include <sstream>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "commands.h"
#include "qtool/calib/ranges.h"
#include "qtool/core/error.h"
#include "qtool/data/sample_source.h"
#include "qtool/onnx_io/onnx_io.h"
#include "qtool/quant/lowbit.h"
#include "qtool/quant/static_quant.h"

namespace qtool::cli {
namespace {

struct QuantizeArgs {
  std::string model_path, out_path, calib_path, ranges_path;
  std::string bits = "8";
  std::string method = "minmax";
  double percentile = 99.999;
  bool per_tensor = false;
  std::string activation_type = "uint8";
  int activation_bits = 8;
  std::string format = "qdq";
  std::string exclude_nodes, exclude_op_types, op_types, keep_fp;
  bool cle = false, bias_correction = false, no_guard = false;
  std::optional<double> max_drop;
  size_t samples = 0;
  std::string preprocess, split = "all";
  uint64_t seed = 0;
  bool shuffle = false;
  int threads = 1;
  int64_t block_size = 32;
  int64_t seq_len = 0;
  std::string weight_algorithm = "rtn";
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
  data::SourceOptions so;
  if (!a.preprocess.empty()) so.image = data::image_preset(a.preprocess);
  so.seq_len = a.seq_len;
  auto source = data::open_sample_source(a.calib_path, data::input_specs(model), so);
  data::SelectOptions sel;
  sel.split = a.split;
  sel.samples = a.samples;
  sel.shuffle = a.shuffle;
  sel.seed = a.seed;
  return data::select_samples(source, sel);
}

int64_t file_size(const std::string& p) {
  std::error_code ec;
  const auto s = std::filesystem::file_size(p, ec);
  return ec ? 0 : static_cast<int64_t>(s);
}

void run_weight_only(const QuantizeArgs& a, ir::Model& model) {
  quant::WeightOnlyConfig cfg;
  cfg.bits = a.bits;
  cfg.block_size = a.block_size;
  cfg.algorithm = quant::parse_weight_algorithm(a.weight_algorithm);
  cfg.exclude = split_list(a.exclude_nodes);
  cfg.threads = a.threads;
  std::shared_ptr<data::SelectedSource> samples;
  quant::CalibrationInputs calib;
  if (!a.calib_path.empty()) {
    samples = open_samples(a, model);
    calib.source = samples.get();
  }
  const quant::WeightOnlyReport rep = quant::apply_weight_only(model, cfg, a.calib_path.empty() ? nullptr : &calib);
  for (const auto& w : rep.warnings) spdlog::warn("{}", w);
  std::cout << fmt::format("weight-only {}: {} layers, weights {} -> {} bytes\n", a.bits, rep.layers.size(),
                           rep.float_weight_bytes, rep.quant_weight_bytes);
}

int run_quantize(const QuantizeArgs& a) {
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  ir::Model model = onnx_io::load_model(a.model_path);
  const std::string source_path = model.source_path;

  if (a.bits != "8" && a.bits != "int8") {
    run_weight_only(a, model);
    onnx_io::save_model(model, a.out_path);
    std::cout << fmt::format("wrote {} ({} bytes, {:.1f}% of {})\n", a.out_path, file_size(a.out_path),
                             100.0 * file_size(a.out_path) / std::max<int64_t>(1, file_size(a.model_path)),
                             a.model_path);
    return exit_code::kOk;
  }

  QTOOL_CHECK(a.format == "qdq", ErrorCode::kUnsupported,
              "--format {} is not implemented yet (only qdq); ONNX Runtime fuses QDQ into the same QLinear kernels",
              a.format);
  QTOOL_CHECK(a.activation_bits == 8 || a.activation_bits == 16, ErrorCode::kConfig,
              "--activation-bits must be 8 or 16, got {}", a.activation_bits);
  QTOOL_CHECK(a.activation_type == "uint8" || a.activation_type == "int8", ErrorCode::kConfig,
              "--activation-type must be uint8 or int8, got '{}'", a.activation_type);
  QTOOL_CHECK(!a.cle && !a.bias_correction, ErrorCode::kUnsupported,
              "--cle and --bias-correction are not implemented yet (the default pipeline already meets issue 5's "
              "accuracy bars on the shared models without them)");
  QTOOL_CHECK(!a.calib_path.empty() || !a.ranges_path.empty(), ErrorCode::kConfig,
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
  cfg.bias_correction = a.bias_correction;
  cfg.threads = a.threads;

  const int64_t target_opset = a.activation_bits == 16 ? 21 : 13;
  const size_t rewrites = quant::prepare_model(model, target_opset);
  spdlog::info("prepared '{}': {} rewrites, opset {}", a.model_path, rewrites, model.opset(""));
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
  if (!a.calib_path.empty()) {
    samples = open_samples(a, model);
    spdlog::info("calibration data: {} samples from '{}' ({})", samples->size(), a.calib_path, samples->kind());
  } else {
    cfg.guard = false;
    empty = std::make_unique<data::SelectedSource>(nullptr, std::vector<size_t>{});
  }
  data::SampleSource& src = samples ? static_cast<data::SampleSource&>(*samples) : *empty;
  const quant::StaticQuantResult res = quant::quantize_static(model, src, cfg);
  model.source_path.clear();
  onnx_io::save_model(model, a.out_path);

  const int64_t in_bytes = file_size(a.model_path), out_bytes = file_size(a.out_path);
  std::cout << fmt::format("quantized {} -> {}: W8A{} QDQ ({}, {} activations), {} nodes quantized, "
                           "{} weights, {} biases, {} Relu/Clip folded\n",
                           a.model_path, a.out_path, a.activation_bits, a.method,
                           dtype_name(cfg.qdq.activation_type), res.qdq.quantized_nodes, res.qdq.quantized_weights,
                           res.qdq.quantized_biases, res.qdq.folded_activations);
  std::cout << fmt::format("size: {} -> {} bytes ({:.1f}%)\n", in_bytes, out_bytes,
                           in_bytes > 0 ? 100.0 * out_bytes / in_bytes : 0.0);
  for (const auto& o : res.outputs) {
    std::cout << fmt::format("output '{}': SQNR {:.1f} dB", o.name, o.sqnr_db);
    if (o.top1_agreement >= 0) std::cout << fmt::format(", top-1 agreement with FP32 {:.2f}%", 100.0 * o.top1_agreement);
    std::cout << fmt::format(" ({} held-out samples, calibrated on {})\n", o.samples, res.calib_samples);
  }
  for (const auto& s : res.actions) std::cout << "guard: " << s << "\n";
  for (const auto& w : res.warnings) spdlog::warn("{}", w);
  spdlog::info("done in {:.1f} s", std::chrono::duration<double>(clock::now() - t0).count());
  if (a.max_drop) {
    const double agree = res.min_top1_agreement();
    QTOOL_CHECK(agree >= 0 || !res.outputs.empty(), ErrorCode::kConfig,
                "--max-drop needs the quality guard (calibration data) to measure agreement");
    const double drop = agree >= 0 ? 100.0 * (1.0 - agree) : 0.0;
    if (drop > *a.max_drop || res.looks_broken) {
      throw Error(ErrorCode::kQualityGate,
                  fmt::format("quality gate failed: top-1 agreement drop {:.2f} points (limit --max-drop {:.2f}){}", drop,
                              *a.max_drop, res.looks_broken ? "; the model looks broken" : ""));
    }
  }
  return exit_code::kOk;
}

}  // namespace

void add_quantize_command(CLI::App& app) {
  auto a = std::make_shared<QuantizeArgs>();
  CLI::App* cmd = app.add_subcommand("quantize", "post-training quantization (static INT8 QDQ, or low-bit weights)");
  cmd->add_option("model", a->model_path, "FP32 ONNX model")->required()->check(CLI::ExistingFile);
  cmd->add_option("-o,--output", a->out_path, "output model path")->required();
  cmd->add_option("--bits", a->bits, "weight bits: 8 (static W8A8), or 4, 2, ternary, binary (weight-only)");
  cmd->add_option("--calib", a->calib_path, "calibration data (folder or file, see qtool calibrate)");
  cmd->add_option("--method", a->method, "range method: minmax, percentile, entropy, mse");
  cmd->add_option("--percentile", a->percentile, "percentile kept by --method percentile");
  cmd->add_option("--ranges", a->ranges_path, "ranges.json from qtool calibrate (skips calibration)");
  cmd->add_flag("--per-tensor", a->per_tensor, "one weight scale per tensor instead of per output channel");
  cmd->add_option("--activation-type", a->activation_type, "uint8 (asymmetric, default) or int8 (symmetric)");
  cmd->add_option("--activation-bits", a->activation_bits, "8 or 16 (A16W8: uint16/int16 Q/DQ, opset 21)");
  cmd->add_option("--format", a->format, "qdq (default) or qoperator");
  cmd->add_option("--exclude-nodes", a->exclude_nodes, "comma-separated node names left in float");
  cmd->add_option("--exclude-op-types", a->exclude_op_types, "comma-separated op types left in float");
  cmd->add_option("--op-types", a->op_types, "quantize only these op types (e.g. MatMul)");
  cmd->add_option("--keep-fp", a->keep_fp, "comma-separated tensor names kept in float");
  cmd->add_flag("--cle", a->cle, "cross-layer equalization (not implemented yet)");
  cmd->add_flag("--bias-correction", a->bias_correction, "bias correction (not implemented yet)");
  cmd->add_flag("--no-guard", a->no_guard, "skip the quality guard on held-out samples");
  cmd->add_option("--max-drop", a->max_drop, "fail (exit 3) if top-1 agreement with FP32 drops more than P points");
  cmd->add_option("--samples", a->samples, "number of calibration samples (default all, capped at 1000)");
  cmd->add_option("--calib-split", a->split, "all, even or odd positions of the sorted samples");
  cmd->add_option("--preprocess", a->preprocess, "image preprocessing preset (imagenet, caffe-bgr, mnist-raw, ...)");
  cmd->add_option("--seq-len", a->seq_len, "token streams (.i32): tokens per calibration sequence");
  cmd->add_option("--seed", a->seed, "seed for shuffling the samples");
  cmd->add_flag("--shuffle", a->shuffle, "shuffle the samples (seeded) before taking --samples");
  cmd->add_option("--threads", a->threads, "executor threads");
  cmd->add_option("--block-size", a->block_size, "weight-only: block size (0 = per channel)");
  cmd->add_option("--weight-algorithm", a->weight_algorithm, "weight-only: rtn, gptq or awq");
  cmd->callback([a] { run_quantize(*a); });
}

}  // namespace qtool::cli
