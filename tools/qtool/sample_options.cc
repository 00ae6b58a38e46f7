#include "sample_options.h"

#include <spdlog/spdlog.h>

#include "qtool/core/error.h"
#include "qtool/data/image.h"

namespace qtool::cli {

bool SampleArgs::has_image_options() const {
  return !preprocess.empty() || resize >= 0 || crop >= 0 || !channel_order.empty() || scale > 0 || !mean.empty() ||
         !std.empty() || !layout.empty();
}

void add_sample_options(CLI::App& cmd, SampleArgs& a, const std::string& path_option, const std::string& path_help) {
  cmd.add_option(path_option, a.path, path_help);
  cmd.add_option("--samples", a.samples, "number of samples (0 = all, capped at 1000)")->check(CLI::NonNegativeNumber);
  cmd.add_flag("--shuffle", a.shuffle, "shuffle the samples (seeded) before taking --samples");
  cmd.add_option("--seed", a.seed, "shuffle seed")->check(CLI::NonNegativeNumber);
  cmd.add_option(path_option == "--calib" ? "--calib-split,--split" : "--split", a.split,
                 "all | even | odd positions of the sorted sample list (shared data: even = calibration half)")
      ->check(CLI::IsMember({"all", "even", "odd"}));
  cmd.add_option("--list", a.list_file, "text file naming the samples to use, one per line");
  cmd.add_flag("--repeat-ok", a.repeat_ok, "allow --samples above the number available by cycling (benchmarks)");
  cmd.add_option("--preprocess", a.preprocess, "image preprocessing preset")->check(CLI::IsMember(data::image_preset_names()));
  cmd.add_option("--resize", a.resize, "image: resize the short side to N (overrides the preset; 0 = none)")
      ->check(CLI::Range(0, 65536));
  cmd.add_option("--crop", a.crop, "image: center crop N x N (overrides the preset; 0 = none)")->check(CLI::Range(0, 65536));
  cmd.add_option("--channel-order", a.channel_order, "image: rgb | bgr")->check(CLI::IsMember({"rgb", "bgr"}));
  cmd.add_option("--scale", a.scale, "image: multiply 0..255 pixels by this first (e.g. 0.00392156862745098)")
      ->check(CLI::PositiveNumber);
  cmd.add_option("--mean", a.mean, "image: per-channel mean, after scale")->delimiter(',');
  cmd.add_option("--std", a.std, "image: per-channel std")->delimiter(',');
  cmd.add_option("--layout", a.layout, "image: nchw | nhwc")->check(CLI::IsMember({"nchw", "nhwc"}));
  cmd.add_option("--seq-len", a.seq_len, "token streams (.i32): tokens per sample (default: the model's fixed length)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 24));
}

std::shared_ptr<data::SelectedSource> open_samples(const SampleArgs& a, const ir::Model& model,
                                                   const std::string& path_option) {
  QTOOL_CHECK(!a.path.empty(), ErrorCode::kConfig, "{} is empty", path_option);
  for (float s : a.std)
    QTOOL_CHECK(s > 0.0f, ErrorCode::kConfig, "--std values must be positive, got {}", s);
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

  auto base = data::open_sample_source(a.path, data::input_specs(model), so);
  const bool images = base->kind() == "JPEG/PNG images" || base->kind() == "IDX images";
  if (a.has_image_options() && !images) {
    fail(ErrorCode::kConfig,
         "image options (--preprocess, --resize, --crop, --channel-order, --scale, --mean, --std, --layout) apply to "
         "JPEG/PNG and IDX images, but '{}' holds {}",
         a.path, base->kind());
  }
  if (a.seq_len > 0 && base->kind().find("token") == std::string::npos) {
    fail(ErrorCode::kConfig, "--seq-len applies to token streams (.i32), but '{}' holds {}", a.path, base->kind());
  }
  if (base->kind() == "JPEG/PNG images" && !a.has_image_options()) {
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
  return data::select_samples(base, sel);
}

}  // namespace qtool::cli
