// Images for calibration: decoding (JPEG/PNG via stb_image) and the preprocessing that
// vision models were trained with.
//
// The pipeline is torchvision's (Resize(short side) -> CenterCrop -> ToTensor -> Normalize),
// in this order:
//   1. decode to 8-bit RGB (or grayscale when channels == 1);
//   2. resize so that the short side is `resize` pixels; the long side is
//      floor(resize * long / short), as torchvision computes it. The filter is PIL's
//      antialiased bilinear ("triangle" filter whose support grows with the downscale factor),
//      in PIL's 8-bit fixed-point arithmetic with a horizontal then a vertical pass, each rounded
//      to uint8, so that it reproduces torchvision-on-PIL preprocessing up to JPEG decoder
//      differences (stb_image vs libjpeg: typically +-1..2 levels);
//   3. center crop `crop` x `crop`; offsets round((size - crop) / 2) with round-half-even,
//      like Python's round();
//   4. reorder channels (RGB or BGR);
//   5. value = (pixel * scale - mean[c]) / std[c], float32;
//   6. layout NCHW or NHWC with a leading batch dimension of 1.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "qtool/core/tensor.h"

namespace qtool::data {

/// Preprocessing of one image into a model input. Defaults: no resize, no crop, RGB, 0..255.
struct ImagePreprocess {
  int resize = 0;              ///< short side after resizing; 0 = keep the size
  int crop = 0;                ///< center crop size; 0 = no crop
  int channels = 3;            ///< 3 = colour, 1 = grayscale (ITU-R 601 luma, as PIL's convert("L"))
  bool bgr = false;            ///< channel order BGR (Caffe models) instead of RGB
  float scale = 1.0f;          ///< multiplies the 0..255 pixel first (1/255 for ToTensor)
  std::vector<float> mean{0, 0, 0};  ///< per channel, in the output channel order, after scale
  std::vector<float> std{1, 1, 1};   ///< per channel, in the output channel order
  bool nhwc = false;           ///< layout [1,H,W,C] instead of [1,C,H,W]
  std::string preset;          ///< the preset name it came from ("" if custom), for the ranges file
};

/// A named preset (see image_preset_names()). Throws kConfig naming the known presets.
///  - "imagenet": torchvision ImageNet models: RGB, resize 256, crop 224, /255,
///    mean (0.485,0.456,0.406), std (0.229,0.224,0.225), NCHW.
///  - "mobilenetv2-244": the same with crop 244 (the shared MobileNetV2's input is 244x244).
///  - "caffe-bgr": Caffe/Caffe2 models (the shared SqueezeNet 1.1): BGR, resize 256, crop 224,
///    no scaling, subtract (104,117,123) in B,G,R order.
///  - "mnist-raw": grayscale 28x28, raw 0..255 (ONNX-zoo mnist-8).
///  - "mnist-pytorch": grayscale 28x28, (x/255 - 0.1307)/0.3081 (PyTorch MNIST examples).
///  - "none": decode only: RGB, 0..255, NCHW, no resize or crop.
ImagePreprocess image_preset(const std::string& name);
/// The preset names, for --help and tests.
std::vector<std::string> image_preset_names();

/// A decoded 8-bit image, interleaved (HWC).
struct Image {
  int width = 0, height = 0, channels = 0;
  std::vector<uint8_t> pixels;  ///< height * width * channels
};

/// What an image's header declares, read without decoding the pixels.
struct ImageInfo {
  int width = 0, height = 0;
  int channels = 0;  ///< in the file (1 gray, 2 gray+alpha, 3 RGB, 4 RGBA)
  bool sixteen_bit = false;
};
/// Reads the header of a JPEG or PNG held in memory (stbi_info). Throws kInvalidInput naming `what`
/// if it is not a decodable image.
ImageInfo image_info_memory(const std::string& bytes, const std::string& what);

/// Decodes a JPEG or PNG file to `channels` channels (3 = RGB, 1 = gray). Throws kIo if it cannot be
/// read (or is not a regular file), kInvalidInput naming the file (and stb_image's reason) if it is
/// not a decodable image.
Image decode_image(const std::string& path, int channels = 3);
/// Decodes from memory; `what` names it in errors. The header is read first: an image whose
/// decoding buffers (width x height x channels, stb_image's and ours) would exceed the per-sample
/// limit (data/sample_source.h check_sample_bytes) is refused before any pixel is decoded.
Image decode_image_memory(const std::string& bytes, const std::string& what, int channels = 3);

/// The shape preprocess_image gives a width x height image ([1,C,H,W] or [1,H,W,C]), known from the
/// header alone, so that a source can check it against the model input before decoding.
Shape preprocessed_shape(int width, int height, const ImagePreprocess& p);

/// Resizes to exactly out_w x out_h with PIL's antialiased bilinear filter in 8-bit fixed point
/// (PIL Image.resize(..., BILINEAR) as torchvision's Resize uses it).
Image resize_bilinear(const Image& in, int out_w, int out_h);

/// Crops the rectangle [x0, x0+w) x [y0, y0+h). Throws kInvalidInput if it does not fit.
Image crop_image(const Image& in, int x0, int y0, int w, int h);

/// Applies resize, crop, channel order, scale/mean/std and layout; returns float32 [1,C,H,W] or [1,H,W,C].
/// `what` names the image in errors (e.g. a crop larger than the resized image, or a resize whose
/// result would exceed the per-sample limit: a 1 x 100000 image resized to a short side of 256).
Tensor preprocess_image(const Image& img, const ImagePreprocess& p, const std::string& what);

}  // namespace qtool::data
