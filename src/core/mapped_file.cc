#include "qtool/core/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace qtool {

const char* non_regular_file_kind(unsigned mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a regular file";
}

std::shared_ptr<MappedFile> MappedFile::open(const std::string& path, const Policy& policy) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | (policy.no_follow ? O_NOFOLLOW : 0));
  if (fd < 0) {
    const int err = errno;
    if (policy.no_follow && err == ELOOP) fail(ErrorCode::kIo, "'{}' is a symbolic link; refusing to follow it", path);
    fail(ErrorCode::kIo, "cannot open '{}': {}", path, std::strerror(err));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    fail(ErrorCode::kIo, "cannot stat '{}': {}", path, std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(ErrorCode::kIo, "'{}' is {}; only regular files are read", path, non_regular_file_kind(st.st_mode));
  }
  if (policy.single_link && st.st_nlink > 1) {
    ::close(fd);
    fail(ErrorCode::kIo, "'{}' has {} hard links; refusing a file that may be reached from outside the model's folder",
         path, static_cast<unsigned long>(st.st_nlink));
  }
  std::shared_ptr<MappedFile> m(new MappedFile());
  m->path_ = path;
  m->size_ = static_cast<size_t>(st.st_size);
  if (m->size_ > 0) {
    void* p = ::mmap(nullptr, m->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      m->size_ = 0;
      fail(ErrorCode::kIo, "cannot map '{}': {}", path, std::strerror(err));
    }
    m->data_ = static_cast<uint8_t*>(p);
  }
  ::close(fd);  // the mapping stays valid after close
  return m;
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(data_, size_);
}

}  // namespace qtool
