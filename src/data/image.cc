// Image decoding (JPEG: libjpeg-turbo, as PIL; PNG: stb_image) and torchvision/PIL-compatible
// preprocessing.
#include "qtool/data/image.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <utility>

#include "qtool/core/npy.h"
#include "qtool/data/sample_source.h"
#include "jpeg_decode.h"

// The one translation unit that compiles stb_image's implementation, for PNG only (JPEG goes to
// libjpeg-turbo: jpeg_decode.h).
#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_PNG
#define STBI_NO_STDIO
#define STBI_FAILURE_USERMSG
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#endif
#include <stb/stb_image.h>
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

namespace qtool::data {

ImagePreprocess image_preset(const std::string& name) {
  ImagePreprocess p;
  p.preset = name;
  if (name == "imagenet" || name == "mobilenetv2-244") {
    p.resize = 256;
    p.crop = name == "imagenet" ? 224 : 244;
    p.scale = 1.0f / 255.0f;
    p.mean = {0.485f, 0.456f, 0.406f};
    p.std = {0.229f, 0.224f, 0.225f};
  } else if (name == "caffe-bgr") {
    p.resize = 256;
    p.crop = 224;
    p.bgr = true;
    p.mean = {104.0f, 117.0f, 123.0f};  // B, G, R
  } else if (name == "mnist-raw" || name == "mnist-pytorch") {
    p.channels = 1;
    p.resize = 28;
    p.crop = 28;
    p.mean = {0.0f};
    p.std = {1.0f};
    if (name == "mnist-pytorch") {
      p.scale = 1.0f / 255.0f;
      p.mean = {0.1307f};
      p.std = {0.3081f};
    }
  } else if (name == "none") {
    // defaults
  } else {
    std::string known;
    for (const auto& n : image_preset_names()) known += (known.empty() ? "" : ", ") + n;
    fail(ErrorCode::kConfig, "unknown preprocessing preset '{}' (known: {})", name, known);
  }
  return p;
}

std::vector<std::string> image_preset_names() {
  return {"imagenet", "mobilenetv2-244", "caffe-bgr", "mnist-raw", "mnist-pytorch", "none"};
}

namespace {

/// PNG chunk lengths checked against the file before stb_image sees it: stb grows its IDAT buffer to
/// the lengths the chunks declare, so a 132-byte PNG whose IDAT claims 1.4 GB made it allocate that
/// (found by fuzz_image). Every chunk (4-byte big-endian length, type, data, CRC) must fit in the
/// file; the walk stops at IEND.
void check_png_chunks(const std::string& bytes, const std::string& what) {
  static const char kSignature[] = "\x89PNG\r\n\x1a\n";
  if (bytes.size() < 8 || bytes.compare(0, 8, kSignature, 8) != 0) return;  // not a PNG: stb says so
  size_t off = 8;
  // Every chunk whose length and type are there is checked, a last one cut short included: stb
  // reads those 8 bytes and grew its buffer to a 537 MB length before finding the data missing
  // (fuzz_image, session 11).
  while (off + 8 <= bytes.size()) {
    const auto* p = reinterpret_cast<const uint8_t*>(bytes.data()) + off;
    const uint64_t len = (uint64_t{p[0]} << 24) | (uint64_t{p[1]} << 16) | (uint64_t{p[2]} << 8) | p[3];
    if (bytes.size() - off < 12 || len > bytes.size() - off - 12) {
      fail(ErrorCode::kInvalidInput, "cannot decode image '{}': PNG chunk at byte {} declares {} bytes, past the end of "
           "the {}-byte file", what, off, len, bytes.size());
    }
    if (std::memcmp(p + 4, "IEND", 4) == 0) return;
    // stb_image copies an empty IDAT through a null buffer (memcpy(NULL, ..., 0), fuzz_image): an
    // empty IDAT carries nothing, and encoders do not write one.
    if (len == 0 && std::memcmp(p + 4, "IDAT", 4) == 0)
      fail(ErrorCode::kInvalidInput, "cannot decode image '{}': empty PNG IDAT chunk at byte {}", what, off);
    off += 12 + static_cast<size_t>(len);
  }
}

}  // namespace

ImageInfo image_info_memory(const std::string& bytes, const std::string& what) {
  QTOOL_CHECK(bytes.size() <= static_cast<size_t>(std::numeric_limits<int>::max()), ErrorCode::kInvalidInput,
              "image '{}' is {} bytes, larger than a JPEG/PNG qtool can decode", what, bytes.size());
  const auto* data = reinterpret_cast<const stbi_uc*>(bytes.data());
  const int len = static_cast<int>(bytes.size());
  ImageInfo info;
  if (detail::is_jpeg(bytes)) {
    const detail::JpegHeader h = detail::jpeg_header(bytes, what);
    info.width = h.width;
    info.height = h.height;
    info.channels = h.color_space == 1 ? 1 : 3;
    QTOOL_CHECK(info.width > 0 && info.height > 0, ErrorCode::kInvalidInput,
                "cannot decode image '{}': header declares {}x{}", what, info.width, info.height);
    return info;
  }
  check_png_chunks(bytes, what);
  if (!stbi_info_from_memory(data, len, &info.width, &info.height, &info.channels)) {
    fail(ErrorCode::kInvalidInput, "cannot decode image '{}': {}", what, stbi_failure_reason());
  }
  info.sixteen_bit = stbi_is_16_bit_from_memory(data, len) != 0;
  QTOOL_CHECK(info.width > 0 && info.height > 0 && info.channels >= 1 && info.channels <= 4, ErrorCode::kInvalidInput,
              "cannot decode image '{}': header declares {}x{} with {} channels", what, info.width, info.height,
              info.channels);
  return info;
}

Image decode_image_memory(const std::string& bytes, const std::string& what, int channels) {
  QTOOL_CHECK(channels == 1 || channels == 3, ErrorCode::kConfig, "images decode to 1 or 3 channels, not {}",
              channels);
  // The header first: stb_image allocates width x height x channels before it decodes a single
  // row, so a 100-byte PNG declaring 100000 x 100000 must be refused here.
  const ImageInfo info = image_info_memory(bytes, what);
  {
    const uint64_t pixels = static_cast<uint64_t>(info.width) * static_cast<uint64_t>(info.height);
    const uint64_t decoded = std::max(info.channels, channels == 1 ? info.channels : 3);
    // stb_image's result (16-bit PNGs are decoded at 16 bits, then converted) plus our copy.
    const uint64_t bytes_needed = pixels * (decoded * (info.sixteen_bit ? 2 : 1) + static_cast<uint64_t>(channels));
    check_sample_bytes(bytes_needed, fmt::format("image '{}' ({}x{}, {} channel(s))", what, info.width, info.height,
                                                 info.channels));
  }
  int w = 0, h = 0, c = 0;
  std::vector<uint8_t> jpeg_rgb;
  stbi_uc* px = nullptr;
  if (detail::is_jpeg(bytes)) {  // libjpeg-turbo: RGB (gray replicated), as PIL's convert("RGB")
    detail::JpegHeader jh;
    jpeg_rgb = detail::decode_jpeg_rgb(bytes, what, &jh, {});
    w = jh.width;
    h = jh.height;
    c = 3;
    px = jpeg_rgb.data();
  } else {
    // Decode to RGB first: gray conversion follows PIL's convert("L") (ITU-R 601-2 luma), not stb's.
    const int want = channels == 1 ? 0 : 3;
    px = stbi_load_from_memory(reinterpret_cast<const stbi_uc*>(bytes.data()), static_cast<int>(bytes.size()), &w,
                               &h, &c, want);
    if (!px) fail(ErrorCode::kInvalidInput, "cannot decode image '{}': {}", what, stbi_failure_reason());
  }
  Image img;
  img.width = w;
  img.height = h;
  img.channels = channels;
  const size_t n = static_cast<size_t>(w) * h;
  img.pixels.resize(n * channels);
  if (channels == 3) {
    std::memcpy(img.pixels.data(), px, n * 3);
  } else if (c == 1 || c == 2) {  // gray or gray+alpha: take the gray plane
    for (size_t i = 0; i < n; ++i) img.pixels[i] = px[i * c];
  } else {  // RGB(A) -> L, PIL's fixed point: (R*19595 + G*38470 + B*7471 + 0x8000) >> 16
    for (size_t i = 0; i < n; ++i) {
      const stbi_uc* p = px + i * c;
      img.pixels[i] = static_cast<uint8_t>((p[0] * 19595u + p[1] * 38470u + p[2] * 7471u + 0x8000u) >> 16);
    }
  }
  if (jpeg_rgb.empty()) stbi_image_free(px);
  return img;
}

Image decode_image(const std::string& path, int channels) {
  return decode_image_memory(read_file(path), path, channels);
}

namespace {

/// torchvision Resize(int): short side -> resize, long side = int(resize * long / short), in 64 bits
/// (a 1 x 100000 image resized to 256 has a long side of 25.6 million).
std::pair<int64_t, int64_t> resized_size(int64_t w, int64_t h, int resize) {
  if (resize <= 0) return {w, h};
  const bool wide = w >= h;
  const int64_t s = wide ? h : w, l = wide ? w : h;
  const int64_t new_l = static_cast<int64_t>(resize) * l / s;
  return wide ? std::pair{new_l, int64_t{resize}} : std::pair{int64_t{resize}, new_l};
}

}  // namespace

Shape preprocessed_shape(int width, int height, const ImagePreprocess& p) {
  auto [w, h] = resized_size(width, height, p.resize);
  if (p.crop > 0) w = h = p.crop;
  const int64_t c = p.channels;
  return p.nhwc ? Shape{1, h, w, c} : Shape{1, c, h, w};
}

namespace {

// PIL's Resample.c, bilinear filter, 8 bits per channel.
constexpr int kPrecisionBits = 32 - 8 - 2;

struct Coeffs {
  int ksize = 0;
  std::vector<int> bounds;   // xmin, count per output pixel
  std::vector<int32_t> kk;   // fixed-point weights, ksize per output pixel
};

double bilinear_filter(double x) {
  if (x < 0.0) x = -x;
  return x < 1.0 ? 1.0 - x : 0.0;
}

// precompute_coeffs + normalize_coeffs_8bpc from PIL (support 1 for bilinear).
Coeffs precompute_coeffs(int in_size, int out_size) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double filterscale = std::max(scale, 1.0);
  const double support = 1.0 * filterscale;
  Coeffs c;
  c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.bounds.resize(2 * static_cast<size_t>(out_size));
  c.kk.assign(static_cast<size_t>(out_size) * c.ksize, 0);
  std::vector<double> k(c.ksize);
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      k[x] = bilinear_filter((x + xmin - center + 0.5) * ss);
      ww += k[x];
    }
    for (int x = 0; x < xmax; ++x) {
      const double w = ww != 0.0 ? k[x] / ww : k[x];
      const double f = w * (1 << kPrecisionBits);
      c.kk[static_cast<size_t>(xx) * c.ksize + x] = static_cast<int32_t>(w < 0 ? -0.5 + f : 0.5 + f);
    }
    c.bounds[2 * xx] = xmin;
    c.bounds[2 * xx + 1] = xmax;
  }
  return c;
}

inline uint8_t clip8(int64_t v) {
  v >>= kPrecisionBits;
  return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

Image resample_horizontal(const Image& in, int out_w) {
  const Coeffs c = precompute_coeffs(in.width, out_w);
  Image out;
  out.width = out_w;
  out.height = in.height;
  out.channels = in.channels;
  out.pixels.resize(static_cast<size_t>(out_w) * in.height * in.channels);
  const int ch = in.channels;
  for (int y = 0; y < in.height; ++y) {
    const uint8_t* row = in.pixels.data() + static_cast<size_t>(y) * in.width * ch;
    uint8_t* orow = out.pixels.data() + static_cast<size_t>(y) * out_w * ch;
    if (ch == 3) {  // RGB: the three channels' sums side by side (the same int32 sums)
      for (int xx = 0; xx < out_w; ++xx) {
        const int xmin = c.bounds[2 * xx], xcnt = c.bounds[2 * xx + 1];
        const int32_t* k = &c.kk[static_cast<size_t>(xx) * c.ksize];
        const uint8_t* px = row + xmin * 3;
        int32_t s0 = 1 << (kPrecisionBits - 1), s1 = s0, s2 = s0;
        for (int x = 0; x < xcnt; ++x) {
          s0 += static_cast<int32_t>(px[3 * x]) * k[x];
          s1 += static_cast<int32_t>(px[3 * x + 1]) * k[x];
          s2 += static_cast<int32_t>(px[3 * x + 2]) * k[x];
        }
        orow[xx * 3] = clip8(s0);
        orow[xx * 3 + 1] = clip8(s1);
        orow[xx * 3 + 2] = clip8(s2);
      }
      continue;
    }
    for (int xx = 0; xx < out_w; ++xx) {
      const int xmin = c.bounds[2 * xx], xcnt = c.bounds[2 * xx + 1];
      const int32_t* k = &c.kk[static_cast<size_t>(xx) * c.ksize];
      for (int b = 0; b < ch; ++b) {
        // int32 as in PIL: bilinear weights are >= 0 and sum to 2^22, so |ss| < 255 * 2^22 + 2^21.
        int32_t ss = 1 << (kPrecisionBits - 1);
        for (int x = 0; x < xcnt; ++x) ss += static_cast<int32_t>(row[(x + xmin) * ch + b]) * k[x];
        orow[xx * ch + b] = clip8(ss);
      }
    }
  }
  return out;
}

Image resample_vertical(const Image& in, int out_h) {
  const Coeffs c = precompute_coeffs(in.height, out_h);
  Image out;
  out.width = in.width;
  out.height = out_h;
  out.channels = in.channels;
  const size_t stride = static_cast<size_t>(in.width) * in.channels;
  out.pixels.resize(stride * out_h);
  std::vector<int32_t> acc;
  for (int yy = 0; yy < out_h; ++yy) {
    const int ymin = c.bounds[2 * yy], ycnt = c.bounds[2 * yy + 1];
    const int32_t* k = &c.kk[static_cast<size_t>(yy) * c.ksize];
    uint8_t* orow = out.pixels.data() + yy * stride;
    // Row by row over the taps (int32 sums as in PIL), so the inner loop runs along the row and
    // vectorizes; the integer sums are the same in any order.
    acc.assign(stride, 1 << (kPrecisionBits - 1));
    for (int y = 0; y < ycnt; ++y) {
      const uint8_t* src = in.pixels.data() + static_cast<size_t>(y + ymin) * stride;
      const int32_t kv = k[y];
      for (size_t i = 0; i < stride; ++i) acc[i] += static_cast<int32_t>(src[i]) * kv;
    }
    for (size_t i = 0; i < stride; ++i) orow[i] = clip8(acc[i]);
  }
  return out;
}

}  // namespace

Image resize_bilinear(const Image& in, int out_w, int out_h) {
  QTOOL_CHECK(out_w > 0 && out_h > 0 && in.width > 0 && in.height > 0, ErrorCode::kInvalidInput,
              "cannot resize a {}x{} image to {}x{}", in.width, in.height, out_w, out_h);
  // PIL: horizontal pass first, then vertical, each only when the size changes.
  Image tmp = out_w != in.width ? resample_horizontal(in, out_w) : in;
  return out_h != in.height ? resample_vertical(tmp, out_h) : tmp;
}

Image crop_image(const Image& in, int x0, int y0, int w, int h) {
  QTOOL_CHECK(x0 >= 0 && y0 >= 0 && w > 0 && h > 0 && x0 + w <= in.width && y0 + h <= in.height,
              ErrorCode::kInvalidInput, "crop {}x{} at ({},{}) does not fit in a {}x{} image", w, h, x0, y0,
              in.width, in.height);
  Image out;
  out.width = w;
  out.height = h;
  out.channels = in.channels;
  out.pixels.resize(static_cast<size_t>(w) * h * in.channels);
  const size_t row_bytes = static_cast<size_t>(w) * in.channels;
  for (int y = 0; y < h; ++y) {
    std::memcpy(out.pixels.data() + y * row_bytes,
                in.pixels.data() + (static_cast<size_t>(y0 + y) * in.width + x0) * in.channels, row_bytes);
  }
  return out;
}

Tensor preprocess_image(const Image& src, const ImagePreprocess& p, const std::string& what) {
  return with_context(fmt::format("while preprocessing image '{}'", what), [&] {
    QTOOL_CHECK(src.channels == p.channels, ErrorCode::kInternal, "image has {} channels, preprocessing wants {}",
                src.channels, p.channels);
    QTOOL_CHECK(p.mean.size() == static_cast<size_t>(p.channels) && p.std.size() == static_cast<size_t>(p.channels),
                ErrorCode::kConfig, "mean and std need {} values each (got {} and {})", p.channels, p.mean.size(),
                p.std.size());
    Image img = src;
    if (p.resize > 0) {
      const auto [nw, nh] = resized_size(img.width, img.height, p.resize);
      if (nw != img.width || nh != img.height) {
        QTOOL_CHECK(nw <= std::numeric_limits<int>::max() && nh <= std::numeric_limits<int>::max(),
                    ErrorCode::kInvalidInput, "resizing '{}' from {}x{} would make it {}x{}", what, img.width,
                    img.height, nw, nh);
        // PIL resizes horizontally first: the intermediate is nw x height, the result nw x nh.
        const uint64_t bytes = static_cast<uint64_t>(nw) * static_cast<uint64_t>(img.height + nh) *
                               static_cast<uint64_t>(img.channels);
        check_sample_bytes(bytes, fmt::format("resizing '{}' from {}x{} to {}x{}", what, img.width, img.height, nw, nh));
        img = resize_bilinear(img, static_cast<int>(nw), static_cast<int>(nh));
      }
    }
    if (p.crop > 0) {
      QTOOL_CHECK(p.crop <= img.width && p.crop <= img.height, ErrorCode::kInvalidInput,
                  "center crop {} is larger than the {}x{} image (after resizing)", p.crop, img.width, img.height);
      // torchvision CenterCrop: int(round((size - crop) / 2.0)), Python rounds half to even.
      const int x0 = static_cast<int>(std::nearbyint((img.width - p.crop) / 2.0));
      const int y0 = static_cast<int>(std::nearbyint((img.height - p.crop) / 2.0));
      img = crop_image(img, x0, y0, p.crop, p.crop);
    }
    const int C = img.channels, H = img.height, W = img.width;
    check_sample_bytes(static_cast<uint64_t>(C) * H * W * sizeof(float),
                       fmt::format("image '{}' as a float32 tensor of [1,{},{},{}]", what, C, H, W));
    Tensor t(DataType::kFloat, p.nhwc ? Shape{1, H, W, C} : Shape{1, C, H, W});
    float* out = t.mutable_data<float>();
    for (int c = 0; c < C; ++c) {
      const int src_c = p.bgr && C == 3 ? 2 - c : c;
      const float scale = p.scale, mean = p.mean[c], sd = p.std[c];
      for (int y = 0; y < H; ++y) {
        for (int x = 0; x < W; ++x) {
          const float v = static_cast<float>(img.pixels[(static_cast<size_t>(y) * W + x) * C + src_c]);
          const size_t o = p.nhwc ? (static_cast<size_t>(y) * W + x) * C + c : (static_cast<size_t>(c) * H + y) * W + x;
          out[o] = (v * scale - mean) / sd;
        }
      }
    }
    return t;
  });
}

}  // namespace qtool::data
