#include "qtool/pipeline/samples.h"

#include <spdlog/spdlog.h>

#include "qtool/core/error.h"
#include "qtool/data/image.h"

namespace qtool::pipeline {

bool SampleSpec::has_image_options() const {
  return !preprocess.empty() || resize >= 0 || crop >= 0 || !channel_order.empty() || scale > 0 || !mean.empty() ||
         !std.empty() || !layout.empty();
}

std::shared_ptr<data::SelectedSource> open_samples(const SampleSpec& a, const ir::Model& model,
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

}  // namespace qtool::pipeline
