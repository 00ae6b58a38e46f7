// qtool compare FP32.onnx QUANT.onnx --data DIR [--labels FILE] [--samples N] [--json]
//               [--max-drop P] [--min-sqnr DB] [--min-agreement F]
//
// Runs both models on the same samples (qtool's executor), prints output and per-layer drift, and
// enforces CI quality gates: a violated gate exits with exit_code::kQualityGate (3) after the
// report is printed; bad input exits with kBadInput (2).
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <optional>

#include <spdlog/spdlog.h>

#include "commands.h"
#include "sample_options.h"
#include "qtool/core/error.h"
#include "qtool/core/npy.h"
#include "qtool/data/sample_source.h"
#include "qtool/onnx_io/onnx_io.h"
#include "qtool/report/compare.h"

namespace qtool::cli {
namespace {

struct CompareArgs {
  std::string fp32_path, quant_path, labels_path;
  SampleArgs data;
  std::string dump_inputs;
  bool json = false;
  bool no_layers = false;
  int worst = 10;
  int threads = 1;
  std::string qdq = "fuse";
  std::optional<double> max_drop, min_sqnr, min_agreement;
};

/// Writes a sample's (preprocessed) inputs as .npy: DIR/<sample stem>.npy for single-input models,
/// DIR/<input name>/<sample stem>.npy otherwise, so another runtime can be checked on exactly the
/// tensors qtool compared on.
void dump_sample(const std::string& dir, const report::CompareSample& s) {
  namespace fs = std::filesystem;
  const std::string stem = fs::path(s.name).stem().string();
  for (const auto& [name, tensor] : s.inputs) {
    fs::path folder = s.inputs.size() == 1 ? fs::path(dir) : fs::path(dir) / name;
    std::error_code ec;
    fs::create_directories(folder, ec);
    QTOOL_CHECK(!ec, ErrorCode::kIo, "cannot create '{}': {}", folder.string(), ec.message());
    write_npy((folder / (stem + ".npy")).string(), tensor);
  }
}

void run_compare(const CompareArgs& a) {
  using namespace std::chrono;
  const auto t0 = steady_clock::now();
  const ir::Model fp32 = onnx_io::load_model(a.fp32_path);
  const ir::Model quant = onnx_io::load_model(a.quant_path);

  // Gates are checked for usability before the (possibly long) run.
  QTOOL_CHECK(!a.max_drop || !a.labels_path.empty(), ErrorCode::kConfig,
              "--max-drop compares accuracy and needs --labels FILE");
  QTOOL_CHECK(!a.min_agreement || (*a.min_agreement >= 0.0 && *a.min_agreement <= 1.0), ErrorCode::kConfig,
              "--min-agreement is a fraction in [0, 1] (e.g. 0.99), got {}", a.min_agreement.value_or(0));

  QTOOL_CHECK(!a.max_drop || (*a.max_drop >= 0.0 && *a.max_drop <= 100.0), ErrorCode::kConfig,
              "--max-drop is a number of accuracy points in [0, 100], got {}", a.max_drop.value_or(0));
  if (!a.dump_inputs.empty()) {
    std::error_code ec;
    QTOOL_CHECK(!std::filesystem::exists(a.dump_inputs, ec) || std::filesystem::is_directory(a.dump_inputs, ec),
                ErrorCode::kConfig, "--dump-inputs '{}' exists and is not a folder", a.dump_inputs);
  }
  auto selected = open_samples(a.data, fp32, "--data");
  std::map<std::string, int64_t> labels;
  if (!a.labels_path.empty()) labels = report::read_labels(a.labels_path);

  spdlog::info("comparing on {} samples from '{}' ({})", selected->size(), a.data.path, selected->kind());
  size_t next_index = 0;
  int64_t row_index = 0;
  const report::SampleProvider provider = [&](report::CompareSample& s) {
    if (next_index >= selected->size()) return false;
    const size_t i = next_index++;
    s.inputs = selected->load(i);
    s.name = selected->describe(i);
    if (!a.dump_inputs.empty()) dump_sample(a.dump_inputs, s);
    int64_t rows = 1;
    if (!s.inputs.empty()) {
      const Tensor& first = s.inputs.begin()->second;
      if (first.rank() > 0) rows = std::max<int64_t>(1, first.dim(0));
    }
    if (!labels.empty()) {
      for (int64_t r = 0; r < rows; ++r)
        s.labels.push_back(rows == 1 ? report::lookup_label(labels, s.name, row_index)
                                     : report::lookup_label(labels, "", row_index + r));
    }
    row_index += rows;
    if ((i + 1) % 100 == 0) spdlog::info("{} / {} samples", i + 1, selected->size());
    return true;
  };

  report::CompareOptions options;
  options.per_layer = !a.no_layers;
  options.worst_layers = a.worst;
  options.threads = a.threads;
  options.fuse_qdq = a.qdq == "fuse";
  const report::CompareResult result = report::compare_models(fp32, quant, provider, options);

  if (!labels.empty()) {
    int64_t labelled = 0;
    for (const auto& o : result.outputs) labelled = std::max(labelled, o.classes.labeled_rows());
    if (labelled == 0)
      spdlog::warn("no sample matched a label in '{}' (labels are matched by file name, else by order)",
                   a.labels_path);
    else if (labelled < result.samples)
      spdlog::warn("only {} of {} samples have a label in '{}'", labelled, result.samples, a.labels_path);
  }

  report::Gates gates;
  gates.max_drop_points = a.max_drop;
  gates.min_sqnr_db = a.min_sqnr;
  gates.min_agreement = a.min_agreement;
  const auto gate_results = report::check_gates(result, gates);

  if (a.json) {
    std::cout << report::compare_to_json(result, gate_results, a.fp32_path, a.quant_path).dump(2) << "\n";
  } else {
    std::cout << report::format_compare_text(result, gate_results, a.worst);
  }
  std::cout.flush();
  spdlog::info("compared in {:.2f} s", duration<double>(steady_clock::now() - t0).count());

  std::string failed;
  for (const auto& g : gate_results)
    if (!g.passed) {
      if (!failed.empty()) failed += "; ";
      failed += g.message;
    }
  if (!failed.empty()) throw Error(ErrorCode::kQualityGate, "quality gate failed: " + failed);
}

}  // namespace

void add_compare_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "compare",
      "compare a quantized model with its FP32 original on real samples: SQNR, cosine, errors, top-k agreement, "
      "accuracy, per-layer drift; quality gates for CI (exit code 3 when one fails)");
  auto a = std::make_shared<CompareArgs>();
  cmd->add_option("fp32", a->fp32_path, "the FP32 (reference) model")->required();
  cmd->add_option("quantized", a->quant_path, "the quantized model")->required();
  add_sample_options(*cmd, a->data, "--data",
                     "samples: a folder of .npy/.npz/.pb files, test_data_set_* folders, images, or one file");
  cmd->get_option("--data")->required();
  cmd->add_option("--labels", a->labels_path,
                  "class labels: CSV with a file column and an integer label/class_index column, one label "
                  "per line in sample order, or an integer .npy");
  cmd->add_option("--threads", a->threads, "threads: samples run side by side, one single-threaded executor pair each")->check(CLI::Range(1, 256));
  cmd->add_option("--qdq", a->qdq,
                  "how the quantized model's QDQ groups run: fuse (default: as the integer kernels ONNX Runtime fuses "
                  "them into, QLinearConv, QLinearAdd, ...) or float (as written: dequantize, float op, quantize)")
      ->check(CLI::IsMember({"fuse", "float"}));
  cmd->add_option("--dump-inputs", a->dump_inputs,
                  "also write each sample's model inputs (after preprocessing) as .npy into this folder, to "
                  "check another runtime on the same tensors");
  cmd->add_flag("--json", a->json, "print one JSON document (schema qtool.compare) on stdout");
  cmd->add_flag("--no-layers", a->no_layers, "skip per-layer drift (faster, less memory)");
  cmd->add_option("--worst", a->worst, "how many layers the text report lists")->check(CLI::Range(0, 100000));
  cmd->add_option("--max-drop", a->max_drop, "gate: accuracy drop in points at most P (needs --labels)");
  cmd->add_option("--min-sqnr", a->min_sqnr, "gate: every output's SQNR at least DB");
  cmd->add_option("--min-agreement", a->min_agreement, "gate: top-1 agreement at least F (0..1)");
  cmd->callback([a] { run_compare(*a); });
}

}  // namespace qtool::cli
