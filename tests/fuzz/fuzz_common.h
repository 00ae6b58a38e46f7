// Shared by the libFuzzer targets in tests/fuzz (issue 19).
//
// The contract every target checks: for any input bytes, a reader either returns or throws
// qtool::Error with a user-facing code. Everything else is a finding, and libFuzzer saves the input:
//  - a crash, an AddressSanitizer or UBSan report, a leak, a timeout, an allocation over
//    -malloc_limit_mb / -rss_limit_mb (what an unchecked size from a file header leads to);
//  - any other exception escaping the reader (std::out_of_range, std::bad_alloc, a third-party
//    library's exception): run_one() prints its type and aborts;
//  - qtool::Error with code kInternal, which qtool documents as "a bug in qtool, never a property
//    of user input" (core/error.h): a QTOOL_ASSERT that bad input can reach.
#pragma once

#include <cxxabi.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <system_error>
#include <typeinfo>

#include "qtool/core/error.h"
#include "qtool/core/limits.h"

namespace qtool::fuzz {

/// Low resource limits, so that a size read from the input is refused by qtool's own checks
/// (check_allocation / check_tensor_size) long before libFuzzer's -rss_limit_mb=1024: an input that
/// still gets past them to a huge allocation is a finding, not a slow run. Default 256 MiB.
inline void set_fuzz_limits(uint64_t max_memory_bytes = uint64_t{256} << 20) {
  ResourceLimits l;
  l.max_memory_bytes = max_memory_bytes;
  l.max_tensor_elements = int64_t{1} << 26;  // 64 Mi elements
  l.max_loop_iterations = 10000;
  set_resource_limits(l);
}

/// Runs one input through `fn` and enforces the contract above.
template <typename Fn>
void run_one(Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    if (e.code() == ErrorCode::kInternal) {
      std::fprintf(stderr, "FINDING: qtool::Error kInternal (a bug by qtool's own definition): %s\n", e.what());
      std::abort();
    }
  } catch (const std::exception& e) {
    int status = 0;
    char* type = abi::__cxa_demangle(typeid(e).name(), nullptr, nullptr, &status);
    std::fprintf(stderr, "FINDING: uncaught %s (not qtool::Error): %s\n", type ? type : typeid(e).name(), e.what());
    std::abort();
  }
}

/// A private folder for this process (/dev/shm, else the system temp folder), removed at exit.
/// Per process, so that concurrent fuzzers (-jobs, CI) never share files.
inline const std::string& scratch_dir() {
  // A pointer (trivially destructible, never freed) so that the atexit handler still sees the path.
  static const std::string* dir = [] {
    namespace fs = std::filesystem;
    std::error_code ec;
    const fs::path root = fs::is_directory("/dev/shm", ec) ? fs::path("/dev/shm") : fs::temp_directory_path();
    const fs::path d = root / ("qtool-fuzz-" + std::to_string(::getpid()));
    fs::create_directories(d);
    std::atexit([] {
      std::error_code ignored;
      fs::remove_all(scratch_dir(), ignored);
    });
    return new std::string(d.string());
  }();
  return *dir;
}

/// Writes `bytes` to scratch_dir()/name (for readers that take only a path) and returns the path.
inline std::string write_scratch_file(const std::string& name, std::string_view bytes) {
  const std::string path = scratch_dir() + "/" + name;
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  f.close();
  if (!f) {
    std::fprintf(stderr, "fuzz harness: cannot write %s\n", path.c_str());
    std::abort();
  }
  return path;
}

}  // namespace qtool::fuzz
