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

/// A read-only, private mapping of a file. Never writes to the file.
class MappedFile final : public Buffer {
 public:
  /// Maps `path` read-only. Throws kIo naming the file if it is missing, a directory or unmappable.
  /// An empty file gives an empty buffer (data() may be nullptr, size() 0).
  static std::shared_ptr<MappedFile> open(const std::string& path);
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
