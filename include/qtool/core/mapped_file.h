// A read-only memory mapping of a whole file, usable as tensor storage.
//
// External tensor data (ONNX data_location = EXTERNAL) and large model files are mapped rather than
// read: the kernel pages bytes in on demand and shares them with the page cache, so loading a 2 GB
// model costs address space, not 2 GB of heap. Tensors keep the mapping alive through their
// shared_ptr<Buffer>; mutable_data() is nullptr, so Tensor's copy-on-write copies before any write.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "qtool/core/tensor.h"

namespace qtool {

/// What a non-regular file is, for error messages ("a directory", "a FIFO (named pipe)", "a device",
/// "a socket", "not a regular file"), from its st_mode.
const char* non_regular_file_kind(unsigned mode);

/// A read-only, private mapping of a file. Never writes to the file.
class MappedFile final : public Buffer {
 public:
  /// How strictly open() treats the path.
  struct Policy {
    /// Refuse a symlink as the last component (O_NOFOLLOW): for files named by an untrusted model.
    bool no_follow = false;
    /// Refuse a file with more than one hard link (a hard link can reach outside the folder).
    bool single_link = false;
  };
  /// Maps `path` read-only. Throws kIo naming the file if it is missing, not a regular file (a
  /// directory, FIFO, socket or device: opened with O_NONBLOCK, so a FIFO never blocks) or
  /// unmappable. An empty file gives an empty buffer (data() may be nullptr, size() 0).
  static std::shared_ptr<MappedFile> open(const std::string& path) { return open(path, Policy{}); }
  static std::shared_ptr<MappedFile> open(const std::string& path, const Policy& policy);
  ~MappedFile() override;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const override { return data_; }
  /// Always nullptr: the mapping is read-only.
  uint8_t* mutable_data() override { return nullptr; }
  size_t size() const override { return size_; }
  /// The path it was opened with.
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  std::string path_;
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace qtool
