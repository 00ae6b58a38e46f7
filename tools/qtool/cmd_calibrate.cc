// qtool calibrate MODEL --calib PATH [--method M] [--samples N] [--preprocess P] -o ranges.json
//
// Runs calibration samples through the reference executor with streaming observers and writes
// the per-tensor ranges (schema: include/qtool/calib/ranges.h) for `qtool quantize --ranges`.
#include <spdlog/spdlog.h>

#include <cstdio>
#include <memory>

#include "commands.h"
#include "qtool/core/output_file.h"
#include "sample_options.h"
#include "qtool/calib/calibrate.h"
#include "qtool/core/error.h"
#include "qtool/data/sample_source.h"
#include "qtool/onnx_io/onnx_io.h"

namespace qtool::cli {
namespace {

struct CalibrateArgs {
  std::string model, output;
  SampleArgs data;
  std::string method = "minmax";
  size_t batch_size = 1;
  int bits = 8;
  bool asymmetric = false;
  double percentile = 99.999;
  int bins = 4096;
  int channel_axis = -1;
  int threads = 1;
  bool no_progress = false;
};

void run_calibrate(const CalibrateArgs& a) {
  ir::Model model = with_context(fmt::format("while loading '{}'", a.model), [&] { return onnx_io::load_model(a.model); });
  check_output_path(a.output, "-o");  // before any work: never over the model (core/output_file.h)
  auto samples = open_samples(a.data, model, "--calib");
  spdlog::info("calibrating '{}' on {} samples ({}, '{}'), method {}", a.model, samples->size(), samples->kind(),
               a.data.path, a.method);

  calib::CalibConfig cc;
  cc.method = a.method;
  cc.range.bits = a.bits;
  cc.range.symmetric = !a.asymmetric;
  cc.range.percentile = a.percentile;
  cc.observe.bins = a.bins;
  cc.observe.channel_axis = a.channel_axis;
  cc.run.batch_size = a.batch_size;
  cc.run.progress = !a.no_progress;
  cc.threads = a.threads;
  cc.source = a.data.path;
  cc.preprocess = a.data.preprocess;
  calib::CalibrationResult r = calib::calibrate(model, *samples, cc);
  calib::save_ranges(a.output, r.ranges);
  std::printf("wrote ranges of %zu tensors to %s (method %s, %zu samples, %.1f s, %.1f samples/s)\n",
              r.ranges.tensors.size(), a.output.c_str(), a.method.c_str(), r.run.samples, r.run.seconds,
              r.run.samples_per_second());
}

}  // namespace

void add_calibrate_command(CLI::App& app) {
  auto a = std::make_shared<CalibrateArgs>();
  auto* cmd = app.add_subcommand("calibrate", "compute activation ranges from calibration samples (ranges JSON)");
  cmd->add_option("model", a->model, "ONNX model file")->required();
  add_sample_options(*cmd, a->data, "--calib",
                     "samples: folder of .npy/.npz/images/.i32, test_data_set_* folders, per-input sub-folders, an "
                     "IDX file");
  cmd->get_option("--calib")->required();
  cmd->add_option("-o,--output", a->output, "ranges JSON to write")->required();
  std::vector<std::string> methods;
  for (const auto& m : calib::range_methods()) methods.push_back(m.name);
  cmd->add_option("--method", a->method, "range method")->check(CLI::IsMember(methods))->capture_default_str();
  cmd->add_option("--batch-size", a->batch_size, "samples per run when the batch dimension is dynamic")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  cmd->add_option("--bits", a->bits, "target activation bits")->check(CLI::Range(2, 16))->capture_default_str();
  cmd->add_flag("--asymmetric", a->asymmetric, "asymmetric ranges (default symmetric)");
  cmd->add_option("--percentile", a->percentile, "percentile method: percentage of values kept")
      ->check(CLI::Range(50.0, 100.0))
      ->capture_default_str();
  cmd->add_option("--bins", a->bins, "histogram bins per tensor")->check(CLI::Range(16, 1 << 20))->capture_default_str();
  cmd->add_option("--channel-axis", a->channel_axis, "per-channel statistics axis (-1 = auto)")->capture_default_str();
  cmd->add_option("--threads", a->threads,
                  "threads: with at least twice as many samples, that many samples run side by side (one "
                  "single-threaded executor each; the same ranges), else intra-op threads")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  cmd->add_flag("--no-progress", a->no_progress, "no progress bar or progress lines");
  cmd->callback([a] { run_calibrate(*a); });
}

}  // namespace qtool::cli
