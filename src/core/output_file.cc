#include "qtool/core/output_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <random>
#include <vector>

#include "qtool/core/error.h"
#include "qtool/core/interrupt.h"

namespace qtool {
namespace {

namespace fs = std::filesystem;

struct Protected {
  FileId id;
  std::string path;
};

std::mutex g_mutex;
std::vector<Protected>& protected_files() {
  static std::vector<Protected> v;
  return v;
}

}  // namespace

std::optional<FileId> file_id(const std::string& path) {
  struct stat st {};
  if (path.empty() || ::stat(path.c_str(), &st) != 0) return std::nullopt;
  return FileId{static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino)};
}

bool same_file(const std::string& a, const std::string& b) {
  const auto ia = file_id(a), ib = file_id(b);
  return ia && ib && *ia == *ib;
}

void protect_input(const std::string& path) {
  const auto id = file_id(path);
  if (!id) return;
  std::lock_guard<std::mutex> lock(g_mutex);
  for (const auto& p : protected_files())
    if (p.id == *id) return;
  protected_files().push_back({*id, path});
}

void clear_protected_inputs() {
  std::lock_guard<std::mutex> lock(g_mutex);
  protected_files().clear();
}

std::string protected_input_at(const std::string& path) {
  const auto id = file_id(path);
  if (!id) return "";
  std::lock_guard<std::mutex> lock(g_mutex);
  for (const auto& p : protected_files())
    if (p.id == *id) return p.path;
  return "";
}

void check_output_path(const std::string& path, std::string_view option) {
  if (path.empty()) fail(ErrorCode::kConfig, "{}: the output path is empty", option);
  const std::string input = protected_input_at(path);
  if (!input.empty()) {
    fail(ErrorCode::kConfig, "{} '{}' is the input file '{}'; refusing to overwrite an input (choose another output path)",
         option, path, input);
  }
  std::error_code ec;
  if (fs::is_directory(path, ec)) fail(ErrorCode::kConfig, "{} '{}' is a directory; give a file path", option, path);
  const fs::path p(path);
  const fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
  if (!fs::is_directory(dir, ec)) {
    fail(ErrorCode::kConfig, "{} '{}': the folder '{}' does not exist", option, path, dir.string());
  }
  if (::access(dir.c_str(), W_OK) != 0) {
    fail(ErrorCode::kConfig, "{} '{}': the folder '{}' is not writable", option, path, dir.string());
  }
}

void check_distinct_outputs(const std::string& a, std::string_view option_a, const std::string& b,
                            std::string_view option_b) {
  if (a.empty() || b.empty()) return;
  std::error_code ec1, ec2;
  const auto ca = fs::weakly_canonical(fs::absolute(a), ec1), cb = fs::weakly_canonical(fs::absolute(b), ec2);
  if (same_file(a, b) || (!ec1 && !ec2 && ca == cb)) {
    fail(ErrorCode::kConfig, "{} '{}' and {} '{}' name the same file", option_a, a, option_b, b);
  }
}

AtomicFile::AtomicFile(std::string final_path) : final_(std::move(final_path)) {
  const fs::path target(final_);
  const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  std::random_device rd;
  for (int attempt = 0; attempt < 16 && fd_ < 0; ++attempt) {
    tmp_ = (dir / fmt::format(".{}.tmp{:08x}", target.filename().string(), rd())).string();
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd_ < 0 && errno != EEXIST) break;
  }
  if (fd_ < 0) fail(ErrorCode::kIo, "cannot create a temporary file beside '{}': {}", final_, std::strerror(errno));
  slot_ = register_temp_file(tmp_.c_str());
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(tmp_.c_str());
  unregister_temp_file(slot_);
}

void AtomicFile::write_all(const void* data, size_t n) {
  const char* c = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd_, c, n > (size_t{1} << 30) ? (size_t{1} << 30) : n);
    if (w < 0) {
      if (errno == EINTR) continue;
      fail(ErrorCode::kIo, "cannot write '{}': {}", final_, std::strerror(errno));
    }
    c += w;
    n -= static_cast<size_t>(w);
  }
}

void AtomicFile::finish() {
  if (fd_ < 0) return;
  if (::fsync(fd_) != 0) fail(ErrorCode::kIo, "cannot write '{}': {}", final_, std::strerror(errno));
  const int rc = ::close(fd_);
  fd_ = -1;
  if (rc != 0) fail(ErrorCode::kIo, "cannot write '{}': {}", final_, std::strerror(errno));
}

void AtomicFile::commit() {
  finish();
  const std::string input = protected_input_at(final_);
  if (!input.empty()) {
    fail(ErrorCode::kConfig, "refusing to overwrite '{}', which is the input file '{}'", final_, input);
  }
  check_interrupt(fmt::format("before writing '{}'", final_));
  if (::rename(tmp_.c_str(), final_.c_str()) != 0) {
    fail(ErrorCode::kIo, "cannot move output into place at '{}': {}", final_, std::strerror(errno));
  }
  committed_ = true;
}

}  // namespace qtool
