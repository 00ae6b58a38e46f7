// JPEG decoding with libjpeg-turbo, the decoder PIL uses (internal to the data stage).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace qtool::data::detail {

struct JpegHeader {
  int width = 0, height = 0;
  int components = 0;   ///< as stored
  int color_space = 3;  ///< 1 gray, 3 YCbCr/RGB, 4 CMYK/YCCK
};

/// Starts with the JPEG SOI marker.
bool is_jpeg(const std::string& bytes);
/// The header only (no pixel memory). Throws kInvalidInput naming `what`.
JpegHeader jpeg_header(const std::string& bytes, const std::string& what);
/// RGB pixels (HWC, gray replicated) with libjpeg's ISLOW DCT and fancy upsampling, as PIL decodes.
/// `check` sees the header before any pixel memory is allocated and may throw (resource limits).
/// Throws kInvalidInput naming `what` for a corrupt file, kUnsupported for CMYK.
std::vector<uint8_t> decode_jpeg_rgb(const std::string& bytes, const std::string& what, JpegHeader* header,
                                     const std::function<void(const JpegHeader&)>& check);

}  // namespace qtool::data::detail
