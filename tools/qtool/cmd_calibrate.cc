// qtool calibrate MODEL --calib PATH [--method M] [--samples N] [--preprocess P] -o ranges.json
//
// Runs calibration samples through the reference executor with streaming observers and writes
// the per-tensor ranges (schema: include/qtool/calib/ranges.h) for `qtool quantize --ranges`.
#include <spdlog/spdlog.h>

#include <cstdio>
#include <memory>

#include "commands.h"
#include "qtool/calib/calibrate.h"
#include "qtool/core/error.h"
#include "qtool/data/sample_source.h"
#include "qtool/onnx_io/onnx_io.h"

namespace qtool::cli {
namespace {

struct CalibrateArgs {
  std::string model, calib, output;
  std::string method = "minmax";
  size_t samples = 0;
  bool shuffle = false;
  uint64_t seed = 0;
  std::string split = "all";
  std::string list_file;
  bool repeat_ok = false;
  std::string preprocess;
  int resize = -1, crop = -1;
  std::string channel_order;  // "", rgb, bgr
  float scale = -1.0f;
  std::vector<float> mean, std;
  std::string layout;  // "", nchw, nhwc
  int64_t seq_len = 0;
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
  const std::vector<data::InputSpec> specs = data::input_specs(model);

  data::SourceOptions so;
  so.image = data::image_preset(a.preprocess.empty() ? "none" : a.preprocess);
  if (a.preprocess.empty()) so.image.preset.clear();
  if (a.resize >= 0) so.image.resize = a.resize;
  if (a.crop >= 0) so.image.crop = a.crop;
  if (!a.channel_order.empty()) so.image.bgr = a.channel_order == "bgr";
  if (a.scale > 0) so.image.scale = a.scale;
  if (!a.mean.empty()) so.image.mean = a.mean;
  if (!a.std.empty()) so.image.std = a.std;
  if (!a.layout.empty()) so.image.nhwc = a.layout == "nhwc";
  so.seq_len = a.seq_len;

  auto base = data::open_sample_source(a.calib, specs, so);
  if ((base->kind() == "JPEG/PNG images") && a.preprocess.empty() && a.resize < 0 && a.crop < 0) {
    spdlog::warn("images without --preprocess are fed as raw 0..255 RGB at their own size; torchvision models want "
                 "--preprocess imagenet (or mobilenetv2-244), Caffe models --preprocess caffe-bgr");
  }
  data::SelectOptions sel;
  sel.split = a.split;
  sel.list_file = a.list_file;
  sel.shuffle = a.shuffle;
  sel.seed = a.seed;
  sel.samples = a.samples;
  sel.repeat_ok = a.repeat_ok;
  auto samples = data::select_samples(base, sel);
  spdlog::info("calibrating '{}' on {} samples ({}, '{}'), method {}", a.model, samples->size(), base->kind(), a.calib,
               a.method);

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
  cc.source = a.calib;
  cc.preprocess = so.image.preset;
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
  cmd->add_option("--calib", a->calib,
                  "samples: folder of .npy/.npz/images/.i32, test_data_set_* folders, per-input sub-folders, an IDX "
                  "file")
      ->required();
  cmd->add_option("-o,--output", a->output, "ranges JSON to write")->required();
  std::vector<std::string> methods;
  for (const auto& m : calib::range_methods()) methods.push_back(m.name);
  cmd->add_option("--method", a->method, "range method")->check(CLI::IsMember(methods))->capture_default_str();
  cmd->add_option("--samples", a->samples, "number of samples (0 = all, capped at 1000)")->capture_default_str();
  cmd->add_flag("--shuffle", a->shuffle, "shuffle the samples (seeded) before taking --samples");
  cmd->add_option("--seed", a->seed, "shuffle seed")->capture_default_str();
  cmd->add_option("--split", a->split,
                  "all | even | odd positions of the sorted sample list (shared data: even = calibration half)")
      ->check(CLI::IsMember({"all", "even", "odd"}))
      ->capture_default_str();
  cmd->add_option("--list", a->list_file, "text file naming the samples to use, one per line");
  cmd->add_flag("--repeat-ok", a->repeat_ok, "allow --samples above the number available by cycling (benchmarks)");
  cmd->add_option("--preprocess", a->preprocess, "image preset")->check(CLI::IsMember(data::image_preset_names()));
  cmd->add_option("--resize", a->resize, "image: resize the short side to N (overrides the preset; 0 = none)");
  cmd->add_option("--crop", a->crop, "image: center crop N x N (overrides the preset; 0 = none)");
  cmd->add_option("--channel-order", a->channel_order, "image: rgb | bgr")->check(CLI::IsMember({"rgb", "bgr"}));
  cmd->add_option("--scale", a->scale, "image: multiply 0..255 pixels by this first (e.g. 0.00392156862745098)");
  cmd->add_option("--mean", a->mean, "image: per-channel mean, after scale")->delimiter(',');
  cmd->add_option("--std", a->std, "image: per-channel std")->delimiter(',');
  cmd->add_option("--layout", a->layout, "image: nchw | nhwc")->check(CLI::IsMember({"nchw", "nhwc"}));
  cmd->add_option("--seq-len", a->seq_len, "token streams (.i32): tokens per sample (default: the model's fixed length)");
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
  cmd->add_option("--threads", a->threads, "executor threads")->check(CLI::Range(1, 256))->capture_default_str();
  cmd->add_flag("--no-progress", a->no_progress, "no progress bar or progress lines");
  cmd->callback([a] { run_calibrate(*a); });
}

}  // namespace qtool::cli
