// JPEG decoding with libjpeg-turbo (see jpeg_decode.h).
//
// Why libjpeg-turbo and not stb_image for JPEG: it is the decoder PIL uses (so decoded pixels are
// the ones torchvision preprocessing sees), it is fuzzed continuously upstream, and Debian's
// stb_image (2022-09) writes past its Huffman size table on a DHT segment whose counts sum above
// 256, which qtool's fuzzer found in minutes (tests/fuzz/fuzz_image).
//
// Errors: libjpeg reports fatal errors through error_exit, which must not return; it longjmps back
// to decode(), where nothing with a destructor lives between setjmp and the libjpeg calls.
#include "jpeg_decode.h"

#include <csetjmp>
#include <cstdio>
#include <cstring>

#include <jpeglib.h>
#include <jerror.h>

#include "qtool/core/error.h"

namespace qtool::data::detail {
namespace {

/// Progressive JPEGs can hold thousands of scans, each a full pass over the image (a CPU bomb from a
/// small file): refused past this many, as libjpeg-turbo's documentation recommends.
constexpr int kMaxScans = 500;

struct ErrorManager {
  jpeg_error_mgr pub;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

extern "C" void on_error(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<ErrorManager*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  std::longjmp(err->jump, 1);
}

// Warnings (extraneous bytes, ...) are ignored, as PIL does, except a premature end of the data:
// PIL refuses a truncated image, and decoding one would fill a declared 16-megapixel frame from a
// 2 KB file (a CPU bomb fuzz_image found).
extern "C" void on_message(j_common_ptr cinfo, int level) {
  if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) {
    auto* err = reinterpret_cast<ErrorManager*>(cinfo->err);
    std::snprintf(err->message, sizeof err->message, "the file is truncated (premature end of the JPEG data)");
    std::longjmp(err->jump, 1);
  }
}

extern "C" void on_progress(j_common_ptr cinfo) {
  auto* d = reinterpret_cast<j_decompress_ptr>(cinfo);
  if (d->is_decompressor && d->input_scan_number > kMaxScans) {
    auto* err = reinterpret_cast<ErrorManager*>(cinfo->err);
    std::snprintf(err->message, sizeof err->message, "more than %d progressive scans", kMaxScans);
    std::longjmp(err->jump, 1);
  }
}

/// Header only (info) or header and pixels (out != nullptr, sized by `reserve` once the header is
/// known). Returns false with `message` set on a libjpeg error. Plain C data only in this frame.
bool run(const uint8_t* data, size_t size, JpegHeader* header, uint8_t* (*reserve)(void*, const JpegHeader&),
         void* ctx, char* message) {
  jpeg_decompress_struct cinfo;
  ErrorManager err;
  jpeg_progress_mgr progress;
  std::memset(&cinfo, 0, sizeof cinfo);
  cinfo.err = jpeg_std_error(&err.pub);
  err.pub.error_exit = on_error;
  err.pub.emit_message = on_message;
  err.message[0] = '\0';
  if (setjmp(err.jump)) {
    std::strncpy(message, err.message, JMSG_LENGTH_MAX);
    jpeg_destroy_decompress(&cinfo);
    return false;
  }
  jpeg_create_decompress(&cinfo);
  progress.progress_monitor = on_progress;
  cinfo.progress = &progress;
  jpeg_mem_src(&cinfo, data, static_cast<unsigned long>(size));
  jpeg_read_header(&cinfo, TRUE);
  header->width = static_cast<int>(cinfo.image_width);
  header->height = static_cast<int>(cinfo.image_height);
  header->components = cinfo.num_components;
  header->color_space = cinfo.jpeg_color_space == JCS_GRAYSCALE ? 1
                        : cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK ? 4
                                                                                                    : 3;
  if (reserve && header->color_space != 4) {
    cinfo.out_color_space = JCS_RGB;  // gray is replicated, as PIL's convert("RGB")
    cinfo.dct_method = JDCT_ISLOW;    // PIL's default
    uint8_t* out = reserve(ctx, *header);
    if (out) {
      jpeg_start_decompress(&cinfo);
      const size_t stride = static_cast<size_t>(cinfo.output_width) * 3;
      while (cinfo.output_scanline < cinfo.output_height) {
        JSAMPROW row = out + static_cast<size_t>(cinfo.output_scanline) * stride;
        jpeg_read_scanlines(&cinfo, &row, 1);
      }
      jpeg_finish_decompress(&cinfo);
    }
  }
  jpeg_destroy_decompress(&cinfo);
  return true;
}

}  // namespace

bool is_jpeg(const std::string& bytes) {
  return bytes.size() >= 3 && static_cast<uint8_t>(bytes[0]) == 0xFF && static_cast<uint8_t>(bytes[1]) == 0xD8 &&
         static_cast<uint8_t>(bytes[2]) == 0xFF;
}

JpegHeader jpeg_header(const std::string& bytes, const std::string& what) {
  JpegHeader h;
  char message[JMSG_LENGTH_MAX] = {0};
  if (!run(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), &h, nullptr, nullptr, message))
    fail(ErrorCode::kInvalidInput, "cannot decode image '{}': {}", what, message);
  return h;
}

std::vector<uint8_t> decode_jpeg_rgb(const std::string& bytes, const std::string& what, JpegHeader* header,
                                     const std::function<void(const JpegHeader&)>& check) {
  struct Ctx {
    std::vector<uint8_t>* pixels;
    const std::function<void(const JpegHeader&)>* check;
    std::string error;
  };
  std::vector<uint8_t> pixels;
  Ctx ctx{&pixels, &check, {}};
  auto reserve = [](void* p, const JpegHeader& h) -> uint8_t* {
    auto* c = static_cast<Ctx*>(p);
    try {  // the limits check throws qtool::Error: caught here, never thrown through libjpeg
      if (*c->check) (*c->check)(h);
      c->pixels->resize(static_cast<size_t>(h.width) * static_cast<size_t>(h.height) * 3);
    } catch (const std::exception& e) {
      c->error = e.what();
      return nullptr;
    }
    return c->pixels->data();
  };
  char message[JMSG_LENGTH_MAX] = {0};
  if (!run(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), header, reserve, &ctx, message))
    fail(ErrorCode::kInvalidInput, "cannot decode image '{}': {}", what, message);
  if (!ctx.error.empty()) throw Error(ErrorCode::kInvalidInput, ctx.error);
  if (header->color_space == 4)
    fail(ErrorCode::kUnsupported, "cannot decode image '{}': CMYK/YCCK JPEGs are not supported; convert it to RGB",
         what);
  return pixels;
}

}  // namespace qtool::data::detail
