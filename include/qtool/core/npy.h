// NumPy .npy files (format versions 1.0-3.0, little-endian, C order) <-> Tensor.
// Used for `qtool run` inputs/outputs, calibration samples and the ONNX Runtime oracle.
#pragma once

#include <string>
#include <string_view>

#include "qtool/core/tensor.h"

namespace qtool {

/// Parses an in-memory .npy file; `what` names it in errors. Throws kInvalidInput.
Tensor parse_npy(std::string_view bytes, const std::string& what);
/// Reads a .npy file. Throws kIo if it cannot be read, kInvalidInput if it is not valid .npy.
Tensor read_npy(const std::string& path);
/// Serialises a tensor as .npy version 1.0 (float16 as '<f2'; bfloat16 and packed types are refused).
std::string serialize_npy(const Tensor& t);
/// Writes a .npy file atomically (temporary file, then rename).
void write_npy(const std::string& path, const Tensor& t);

/// Reads a whole file into memory. Throws kIo naming the path.
std::string read_file(const std::string& path);
/// Writes `bytes` to `path` atomically: a temporary file in the same folder, fsync, rename.
void write_file_atomic(const std::string& path, std::string_view bytes);

}  // namespace qtool
