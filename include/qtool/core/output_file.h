// Writing outputs safely: never over an input, never half-written, nothing left behind.
//
// Files are compared by identity (device and inode, after resolving symlinks), never by path text:
// `-o m.onnx`, `-o ./m.onnx`, an absolute path, a symlink or a hard link to the model all name the
// same file. Every file a run reads from (the model, its external data, a ranges or config file)
// is registered with protect_input() as it is opened; check_output_path() refuses an output that is
// one of them before any work starts, and AtomicFile::commit() checks again just before the rename
// (so no path, however it was reached, can replace an input).
//
// AtomicFile writes to a temporary file beside the target (O_EXCL, mode 0644), fsyncs it and
// renames it into place; its destructor removes the temporary file if commit() was not reached
// (an error, or Ctrl-C unwinding as Error(kInterrupted)); it is also registered with
// core/interrupt.h so that a second Ctrl-C, which exits at once, removes it too.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace qtool {

/// A file's identity: device and inode of what the path resolves to.
struct FileId {
  uint64_t dev = 0;
  uint64_t ino = 0;
  bool operator==(const FileId&) const = default;
};

/// The identity of what `path` resolves to (symlinks followed); nullopt when it does not exist.
std::optional<FileId> file_id(const std::string& path);
/// True when both paths exist and resolve to the same file.
bool same_file(const std::string& a, const std::string& b);

/// Registers `path` (if it exists) as an input of this run: no output may replace it.
void protect_input(const std::string& path);
/// Forgets every protected input (tests; each experiment setting reloads its model).
void clear_protected_inputs();
/// The protected input that `path` resolves to, or "" when it is none.
std::string protected_input_at(const std::string& path);

/// Checks an output path before the work starts: refuses (kConfig, naming `option` and the path) an
/// output that is a protected input, an existing directory, or in a folder that does not exist.
void check_output_path(const std::string& path, std::string_view option);
/// Refuses two outputs of one run that name the same file (kConfig, naming both options).
void check_distinct_outputs(const std::string& a, std::string_view option_a, const std::string& b,
                            std::string_view option_b);

/// A temporary file beside `final_path`, renamed into place by commit(); removed otherwise.
class AtomicFile {
 public:
  explicit AtomicFile(std::string final_path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  int fd() const { return fd_; }
  const std::string& final_path() const { return final_; }
  /// Writes all bytes (EINTR retried). Throws kIo naming the final path.
  void write_all(const void* data, size_t n);
  /// fsync + close: durable, not yet visible under the final name.
  void finish();
  /// Renames into place; refuses (kConfig) when the final path resolves to a protected input.
  void commit();

 private:
  std::string final_, tmp_;
  int fd_ = -1;
  int slot_ = -1;
  bool committed_ = false;
};

}  // namespace qtool
