// .npy headers are untrusted: declared sizes are checked against the bytes present and the limits
// before anything is allocated, and only regular files are read (issue 19).
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>

#include "qtool/core/limits.h"
#include "qtool/core/npy.h"
#include "test_util.h"

namespace qtool {
namespace {

using testing::TempDir;

/// A v1 .npy header declaring `shape` (a Python tuple) of `descr`; numpy pads to 64 bytes, `pad`
/// false keeps it short (the format does not require the padding).
std::string npy_header(const std::string& descr, const std::string& shape, bool pad = true) {
  std::string h = fmt::format("{{'descr': '{}', 'fortran_order': False, 'shape': {}, }}", descr, shape);
  if (pad) h.append((64 - (10 + h.size() + 1) % 64) % 64, ' ');
  h += '\n';
  std::string out("\x93NUMPY\x01\x00", 8);
  out += static_cast<char>(h.size() & 0xff);
  out += static_cast<char>(h.size() >> 8);
  return out + h;
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

struct Outcome {
  bool threw = false;
  ErrorCode code = ErrorCode::kInternal;
  std::string message;
  bool is(ErrorCode c) const { return threw && code == c; }
  bool says(const std::string& s) const { return message.find(s) != std::string::npos; }
};

Outcome capture(const std::function<void()>& fn) {
  Outcome o;
  try {
    fn();
  } catch (const Error& e) {
    o = {true, e.code(), e.what()};
  } catch (const std::exception& e) {
    o = {true, ErrorCode::kInternal, std::string("not a qtool::Error: ") + e.what()};
  }
  return o;
}

/// Peak RSS of this process so far, in bytes.
uint64_t peak_rss() {
  struct rusage ru {};
  ::getrusage(RUSAGE_SELF, &ru);
  return static_cast<uint64_t>(ru.ru_maxrss) * 1024;
}

/// Lowers max_memory_bytes for one test; restores the previous limits on destruction.
class ScopedLimits {
 public:
  explicit ScopedLimits(uint64_t max_memory) : saved_(resource_limits()) {
    ResourceLimits l = saved_;
    l.max_memory_bytes = max_memory;
    set_resource_limits(l);
  }
  ~ScopedLimits() { set_resource_limits(saved_); }

 private:
  ResourceLimits saved_;
};

TEST(NpyBounds, HeaderDeclaring4e15BytesInA100ByteFileIsTruncatedInput) {
  TempDir dir;
  // 1e15 float32 = 4e15 bytes declared; the whole file is 100 bytes.
  const std::string header = npy_header("<f4", "(1000000000000000,)", false);
  std::string bytes = header;
  ASSERT_LT(bytes.size(), 100u);
  bytes.resize(100, '\0');
  write_bytes(dir.file("bomb.npy"), bytes);
  const uint64_t rss_before = peak_rss();
  for (const auto& read : std::vector<std::function<void()>>{
           [&] { read_npy(dir.file("bomb.npy")); },
           [&] { read_npy_header(dir.file("bomb.npy")); },
           [&] { parse_npy(bytes, dir.file("bomb.npy")); },
       }) {
    const Outcome o = capture(read);
    EXPECT_TRUE(o.is(ErrorCode::kInvalidInput)) << o.message;
    EXPECT_TRUE(o.says(fmt::format("'{}'", dir.file("bomb.npy")))) << o.message;
    EXPECT_TRUE(o.says("truncated")) << o.message;
    EXPECT_TRUE(o.says("4000000000000000 bytes")) << o.message;
    EXPECT_TRUE(o.says(fmt::format("only {} bytes of data", 100 - header.size())))
        << o.message;
  }
  EXPECT_LT(peak_rss() - rss_before, uint64_t{200} << 20);
}

TEST(NpyBounds, OverflowingNegativeAndMalformedShapesAreInvalidInput) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"(9223372036854775807, 9223372036854775807)", "too many elements"},  // numel overflows int64
      {"(4611686018427387904,)", "too many elements"},                      // numel * 8 overflows uint64
      {"(-1, 3)", "negative dimension"},
      {"(3x, 2)", "bad .npy shape"},
      {"(99999999999999999999,)", "bad .npy shape"},  // does not fit int64
      {"7", "bad .npy shape"},
  };
  for (const auto& [shape, expected] : cases) {
    const std::string descr = shape == "(4611686018427387904,)" ? "<f8" : "<f4";
    const Outcome o = capture([&, shape = shape] { parse_npy(npy_header(descr, shape) + "abcd", "x.npy"); });
    EXPECT_TRUE(o.is(ErrorCode::kInvalidInput)) << shape << ": " << o.message;
    EXPECT_TRUE(o.says("'x.npy'")) << o.message;
    EXPECT_TRUE(o.says(expected)) << shape << ": " << o.message;
  }
  // A version-2 header claiming 100000 header bytes (numpy writes < 1 KiB for these types).
  std::string v2("\x93NUMPY\x02\x00\xa0\x86\x01\x00", 12);
  v2 += std::string(200, ' ');
  const Outcome o = capture([&] { parse_npy(v2, "long.npy"); });
  EXPECT_TRUE(o.is(ErrorCode::kInvalidInput)) << o.message;
  EXPECT_TRUE(o.says(".npy header of 100000 bytes is too long")) << o.message;
}

TEST(NpyBounds, ArrayOverTheMemoryLimitIsRefusedBeforeAllocating) {
  TempDir dir;
  Tensor t(DataType::kFloat, {1024});
  t.mutable_data<float>()[1023] = 5.0f;
  write_npy(dir.file("a.npy"), t);
  {
    ScopedLimits limits(1024);
    const Outcome o = capture([&] { read_npy(dir.file("a.npy")); });
    EXPECT_TRUE(o.is(ErrorCode::kInvalidInput)) << o.message;
    EXPECT_TRUE(o.says(fmt::format("'{}': .npy array of shape [1024] of float32", dir.file("a.npy")))) << o.message;
    EXPECT_TRUE(o.says("4096 bytes, over the memory limit of 1024 bytes (--max-memory)")) << o.message;
    // read_file itself is bounded too (the file is 4096 + 128 bytes).
    const Outcome f = capture([&] { read_file(dir.file("a.npy")); });
    EXPECT_TRUE(f.is(ErrorCode::kInvalidInput)) << f.message;
    EXPECT_TRUE(f.says("reading '" + dir.file("a.npy") + "' needs 4224 bytes")) << f.message;
  }
  // The limits restored, the same file reads back.
  const Tensor r = read_npy(dir.file("a.npy"));
  EXPECT_EQ(r.data<float>()[1023], 5.0f);
  const NpyHeader h = read_npy_header(dir.file("a.npy"));
  EXPECT_EQ(h.shape, (Shape{1024}));
  EXPECT_EQ(h.data_bytes, 4096u);
  EXPECT_EQ(h.data_offset, 128u);
}

/// Runs `fn` on another thread; if it blocks on the FIFO for 5 s the test fails and a writer
/// opening and closing the FIFO unblocks it (so that a regression fails instead of hanging).
Outcome fast(const std::string& fifo, const std::function<void()>& fn) {
  auto fut = std::async(std::launch::async, [fn] { return capture(fn); });
  if (fut.wait_for(std::chrono::seconds(5)) != std::future_status::ready) {
    ADD_FAILURE() << "reading the FIFO " << fifo << " blocked";
    while (fut.wait_for(std::chrono::milliseconds(50)) != std::future_status::ready) {
      const int fd = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK);
      if (fd >= 0) ::close(fd);
    }
  }
  return fut.get();
}

TEST(NpyBounds, FifosDirectoriesAndDevicesFailFastWithIoErrors) {
  TempDir dir;
  const std::string fifo = dir.file("pipe.npy");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  for (const auto& read : std::vector<std::function<void()>>{
           [&] { read_npy(fifo); }, [&] { read_file(fifo); }, [&] { read_npy_header(fifo); },
           [&] { RegularFile f(fifo); }}) {
    const auto t0 = std::chrono::steady_clock::now();
    const Outcome o = fast(fifo, read);
    EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 1.0);
    EXPECT_TRUE(o.is(ErrorCode::kIo)) << o.message;
    EXPECT_TRUE(o.says(fmt::format("'{}' is a FIFO (named pipe); only regular files can be read", fifo))) << o.message;
  }
  Outcome o = capture([&] { read_npy(dir.path()); });
  EXPECT_TRUE(o.is(ErrorCode::kIo)) << o.message;
  EXPECT_TRUE(o.says(fmt::format("'{}' is a directory, not a file", dir.path()))) << o.message;
  if (std::filesystem::exists("/dev/null")) {
    o = capture([] { read_file("/dev/null"); });
    EXPECT_TRUE(o.is(ErrorCode::kIo)) << o.message;
    EXPECT_TRUE(o.says("'/dev/null' is a character device")) << o.message;
  }
  o = capture([&] { read_file(dir.file("missing.npy")); });
  EXPECT_TRUE(o.is(ErrorCode::kIo)) << o.message;
  EXPECT_TRUE(o.says("cannot open '" + dir.file("missing.npy") + "'")) << o.message;
}

TEST(NpyBounds, RegularFileReadsExactRangesAndRefusesShortReads) {
  TempDir dir;
  write_bytes(dir.file("f.bin"), "0123456789");
  const RegularFile f(dir.file("f.bin"));
  EXPECT_EQ(f.size(), 10u);
  char buf[4] = {};
  f.read_at(3, buf, 4);
  EXPECT_EQ(std::string(buf, 4), "3456");
  EXPECT_EQ(f.read_prefix(4), "0123");
  EXPECT_EQ(f.read_prefix(100), "0123456789");
  const Outcome o = capture([&] { f.read_at(8, buf, 4); });
  EXPECT_TRUE(o.is(ErrorCode::kIo)) << o.message;
  EXPECT_TRUE(o.says("shorter than expected")) << o.message;
  EXPECT_EQ(read_file(dir.file("f.bin")), "0123456789");
}

}  // namespace
}  // namespace qtool
