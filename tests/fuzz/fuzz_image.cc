// libFuzzer target: JPEG/PNG decoding (stb_image) and the torchvision-style preprocessing
// (resize, center crop, channel order, normalization, layout), as a folder of calibration images
// goes through them: decode_image_memory(bytes, what, p.channels), then preprocess_image(img, p).
//
// Input: two option bytes, then the image file's bytes (make_corpus.sh prefixes its seeds).
//   byte 0, bits 0-2: 0-5 = the preset image_preset_names()[k] (imagenet, mobilenetv2-244,
//                     caffe-bgr, mnist-raw, mnist-pytorch, none); 6-7 = custom, from the bits below
//           bit 3:    custom: grayscale (1 channel) instead of RGB
//           bit 4:    custom: BGR channel order
//           bit 5:    NHWC layout instead of NCHW (presets too)
//   byte 1:           custom: resize = byte1 % 64 (0 = keep the size), crop = (byte1 / 64) * 12
#include <string>

#include "fuzz_common.h"
#include "qtool/data/image.h"

namespace {

std::vector<std::string> g_presets;

qtool::data::ImagePreprocess options_from(uint8_t b0, uint8_t b1) {
  const size_t mode = b0 & 7u;
  qtool::data::ImagePreprocess p;
  if (mode < g_presets.size()) {
    p = qtool::data::image_preset(g_presets[mode]);
  } else {
    p.channels = (b0 & 8u) ? 1 : 3;
    p.bgr = (b0 & 16u) != 0;
    p.resize = b1 % 64;
    p.crop = (b1 / 64) * 12;
    p.scale = 1.0f / 255.0f;
    p.mean.assign(static_cast<size_t>(p.channels), 0.5f);
    p.std.assign(static_cast<size_t>(p.channels), 0.25f);
  }
  p.nhwc = (b0 & 32u) != 0;
  return p;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // 16 MiB, so a sample (a quarter: 4 MiB) is at most ~1.4 Mpixel RGB: an image the limit admits
  // is decoded and resized for real, and at 256 MiB (a 21-Mpixel image under ASan per input) the
  // run fell to ~15 inputs/s. The limit checks themselves are the same code at any size.
  qtool::fuzz::set_fuzz_limits(uint64_t{16} << 20);
  g_presets = qtool::data::image_preset_names();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  qtool::fuzz::run_one([&] {
    const qtool::data::ImagePreprocess p = options_from(data[0], data[1]);
    const std::string bytes(reinterpret_cast<const char*>(data) + 2, size - 2);
    const qtool::data::Image img = qtool::data::decode_image_memory(bytes, "fuzz-image", p.channels);
    (void)qtool::data::preprocess_image(img, p, "fuzz-image");
  });
  return 0;
}
