// NumPy .npy files (format versions 1.0-3.0, little-endian, C order) <-> Tensor, and reading
// user files safely.
// Used for `qtool run` inputs/outputs, calibration samples and the ONNX Runtime oracle.
//
// Every size a .npy header declares is untrusted: it is checked against the bytes really present
// and against the resource limits (core/limits.h) before anything is allocated, so a 100-byte file
// that declares 4e15 bytes is a clear kInvalidInput error naming the file, never an out-of-memory.
// Files are opened as RegularFile: FIFOs, devices and directories fail at once with kIo instead of
// blocking.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "qtool/core/tensor.h"

namespace qtool {

/// A regular file opened for reading.
///
/// The path is opened with O_NONBLOCK (so that opening a FIFO with no writer does not block) and
/// fstat must say S_ISREG; anything else (FIFO, socket, device, directory) is refused with kIo
/// naming the path. The size is the file's real size, the yardstick for every size the file declares.
class RegularFile {
 public:
  /// Opens `path`. Throws kIo naming the path if it is missing, unreadable or not a regular file.
  explicit RegularFile(const std::string& path);
  ~RegularFile();
  RegularFile(const RegularFile&) = delete;
  RegularFile& operator=(const RegularFile&) = delete;

  /// Size in bytes when opened.
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }
  /// Reads exactly `n` bytes at `offset` into `dst`. Throws kIo if the file is shorter (it shrank
  /// since it was opened) or cannot be read.
  void read_at(uint64_t offset, void* dst, size_t n) const;
  /// Reads up to `max_bytes` from the start (all of a shorter file).
  std::string read_prefix(size_t max_bytes) const;
  /// Gives up ownership of the descriptor (now blocking again, e.g. for gzdopen); the caller closes it.
  int release();

 private:
  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

/// What a .npy header declares: element type, shape and where the data starts.
struct NpyHeader {
  DataType dtype = DataType::kUndefined;
  Shape shape;
  int64_t numel = 0;         ///< product of the dims (overflow-checked)
  uint64_t data_offset = 0;  ///< bytes of magic, version and header before the data
  uint64_t data_bytes = 0;   ///< numel * element size: what the data must hold
};

/// Longest .npy header accepted, magic and length fields included: numpy writes the types qtool
/// reads with headers of well under 1 KiB, so anything longer is not a file qtool can read.
inline constexpr size_t kMaxNpyHeaderBytes = 12 + 65535;

/// Parses the header at the start of `bytes`, which must hold the whole header (the data may be
/// missing: readers parse the header from a prefix and check data_bytes before reading the rest).
/// Throws kInvalidInput naming `what`: bad magic, truncated or over-long header, unsupported dtype or
/// Fortran order, negative dims, an element count or byte size that overflows.
NpyHeader parse_npy_header(std::string_view bytes, const std::string& what);
/// Checks what a header declares before its data is allocated: `available` bytes must follow the
/// header ("truncated" otherwise), and the array must fit max_tensor_elements and max_memory_bytes
/// (core/limits.h). Throws kInvalidInput naming `what`.
void check_npy_data(const NpyHeader& header, uint64_t available, const std::string& what);
/// Reads only the header of the .npy file `path` and checks it against the file's size and the
/// limits (check_npy_data). Throws kIo (not a regular file, unreadable) or kInvalidInput.
NpyHeader read_npy_header(const std::string& path);

/// Parses an in-memory .npy file; `what` names it in errors. Throws kInvalidInput (also when the
/// header declares more data than `bytes` holds, or more than the limits allow).
Tensor parse_npy(std::string_view bytes, const std::string& what);
/// Reads a .npy file: header first, checked against the file size and limits, then the data straight
/// into the tensor. Throws kIo if it cannot be read or is not a regular file, kInvalidInput if it is
/// not valid .npy.
Tensor read_npy(const std::string& path);
/// Serialises a tensor as .npy version 1.0 (float16 as '<f2'; bfloat16 and packed types are refused).
std::string serialize_npy(const Tensor& t);
/// Writes a .npy file atomically (temporary file, then rename).
void write_npy(const std::string& path, const Tensor& t);

/// Reads a whole regular file into memory. Throws kIo naming the path (also for FIFOs, devices and
/// directories), kInvalidInput if the file is larger than max_memory_bytes.
std::string read_file(const std::string& path);
/// Writes `bytes` to `path` atomically: a temporary file in the same folder, fsync, rename.
void write_file_atomic(const std::string& path, std::string_view bytes);

}  // namespace qtool
