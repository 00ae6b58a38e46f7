// qtool sensitivity MODEL --calib DIR [--eval-samples N] [--precisions LIST] [--json] [--html FILE]
//
// For every quantizable layer, the model's output quality on held-out samples when only that
// layer is quantized at each candidate precision, with its byte cost (pipeline/sensitivity.h).
#include <cstdio>
#include <iostream>
#include <memory>

#include "commands.h"
#include "qtool/calib/methods.h"
#include "qtool/core/npy.h"
#include "qtool/core/output_file.h"
#include "qtool/pipeline/sensitivity.h"
#include "sample_options.h"

namespace qtool::cli {
namespace {

struct SensitivityArgs {
  pipeline::SensitivityJob job;
  std::string precisions = "W8A8,W8A16,W4A32,float";
  std::string activation_type = "uint8";
  std::string html, output;
  size_t rows = 30;
  bool json = false;
};

void run_sensitivity_command(SensitivityArgs& a) {
  if (!a.html.empty()) check_output_path(a.html, "--html");
  if (!a.output.empty()) check_output_path(a.output, "-o");
  a.job.options.precisions = pipeline::parse_layer_precisions(a.precisions);
  a.job.activation_type = a.activation_type == "int8" ? DataType::kInt8 : DataType::kUint8;
  const pipeline::SensitivityRun run = pipeline::run_sensitivity(a.job);
  const std::string json = pipeline::sensitivity_to_json(run).dump(2) + "\n";
  if (!a.output.empty()) write_file_atomic(a.output, json);
  if (!a.html.empty()) write_file_atomic(a.html, pipeline::sensitivity_html(run));
  if (a.json) {
    std::cout << json;
  } else {
    std::cout << pipeline::sensitivity_table(run, a.rows);
  }
}

}  // namespace

void add_sensitivity_command(CLI::App& app) {
  auto a = std::make_shared<SensitivityArgs>();
  auto* cmd = app.add_subcommand(
      "sensitivity", "per-layer sensitivity: output quality with one layer quantized at each precision (ranked)");
  cmd->add_option("model", a->job.model_path, "ONNX model file")->required();
  add_sample_options(*cmd, a->job.data, "--calib",
                     "samples: the last part is held out (as quantize's guard does), the rest calibrates");
  cmd->get_option("--calib")->required();
  cmd->add_option("--eval-samples", a->job.options.samples, "held-out samples each candidate runs on")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  cmd->add_option("--precisions", a->precisions, "candidates, comma-separated: W8A8, W8A16, W4A32, float")
      ->capture_default_str();
  std::vector<std::string> methods;
  for (const auto& m : calib::range_methods()) methods.push_back(m.name);
  cmd->add_option("--method", a->job.method, "range method of the 8-bit activations")
      ->check(CLI::IsMember(methods))
      ->capture_default_str();
  cmd->add_option("--percentile", a->job.percentile, "percentile method: percentage of values kept")
      ->check(CLI::Range(50.0, 100.0))
      ->capture_default_str();
  cmd->add_option("--activation-type", a->activation_type, "8-bit activation type")
      ->check(CLI::IsMember({"uint8", "int8"}))
      ->capture_default_str();
  cmd->add_option("--threads", a->job.options.threads, "threads (candidates run in parallel)")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  cmd->add_option("--rows", a->rows, "layers in the printed table (0 = all)")->capture_default_str();
  cmd->add_flag("--json", a->json, "print the JSON document (schema qtool.sensitivity) instead of the table");
  cmd->add_option("-o,--output", a->output, "also write the JSON document to this file");
  cmd->add_option("--html", a->html, "write an HTML page with a chart of every layer's candidates");
  cmd->callback([a] { run_sensitivity_command(*a); });
}

}  // namespace qtool::cli
