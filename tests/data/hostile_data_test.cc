// Hostile calibration data (issue 19): memory bombs from tiny files, sizes that lie, and files
// that are not regular files. Every bomb is built here, in a temp dir; the ones that would
// allocate gigabytes if a check were missing run in a forked child whose peak RSS is measured.
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <tuple>

#include "qtool/core/limits.h"
#include "qtool/core/npy.h"
#include "qtool/data/image.h"
#include "qtool/data/sample_source.h"
#include "test_util.h"

#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#endif
#include <stb/stb_image_write.h>  // the implementation is compiled in data_test.cc
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

namespace fs = std::filesystem;

namespace qtool::data {
namespace {

using testing::TempDir;

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;
/// What a bomb may add to a process's peak RSS: far below the hundreds of MB (or GB) it declares.
constexpr uint64_t kPeakRssBudget = 200 * kMiB;
/// Zeros in the deflate bombs: 300 MB inflate from about 300 KB.
constexpr uint64_t kBombZeros = 300'000'000;

InputSpec spec(const std::string& name, DataType dt, std::vector<int64_t> dims) {
  InputSpec s;
  s.name = name;
  s.dtype = dt;
  s.has_shape = true;
  for (int64_t d : dims) {
    ir::Dim dim;
    if (d >= 0) dim.value = d; else dim.param = "batch";
    s.dims.push_back(dim);
  }
  return s;
}

/// Lowers the process-wide limits for one test; restores the previous ones on destruction.
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

/// How a call ended: the qtool::Error it threw (code and full message), if any.
struct Outcome {
  bool threw = false;
  int code = -1;  ///< static_cast<int>(ErrorCode), or -2 for another exception
  std::string message;
  uint64_t peak_rss = 0;  ///< the child's peak resident set (in_child only)
  bool is(ErrorCode c) const { return threw && code == static_cast<int>(c); }
  bool says(const std::string& s) const { return message.find(s) != std::string::npos; }
};

Outcome capture(const std::function<void()>& fn) {
  Outcome o;
  try {
    fn();
  } catch (const Error& e) {
    o.threw = true;
    o.code = static_cast<int>(e.code());
    o.message = e.what();
  } catch (const std::exception& e) {
    o.threw = true;
    o.code = -2;
    o.message = e.what();
  }
  return o;
}

/// Runs fn in a forked child and reports how it ended and the child's peak RSS (wait4), so that a
/// missing check shows as gigabytes of RSS, not as a test runner killed for memory.
Outcome in_child(const std::function<void()>& fn) {
  int fds[2];
  if (::pipe(fds) != 0) return {true, -3, "pipe failed"};
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(fds[0]);
    const Outcome o = capture(fn);
    const std::string out = fmt::format("{}\n{}\n{}", o.threw ? 1 : 0, o.code, o.message);
    size_t done = 0;
    while (done < out.size()) {
      const ssize_t w = ::write(fds[1], out.data() + done, out.size() - done);
      if (w <= 0) break;
      done += static_cast<size_t>(w);
    }
    ::_exit(0);
  }
  ::close(fds[1]);
  std::string out;
  char buf[4096];
  ssize_t r;
  while ((r = ::read(fds[0], buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(r));
  ::close(fds[0]);
  int status = 0;
  struct rusage ru {};
  ::wait4(pid, &status, 0, &ru);
  Outcome o;
  const size_t a = out.find('\n'), b = a == std::string::npos ? a : out.find('\n', a + 1);
  if (!WIFEXITED(status) || b == std::string::npos) {
    o.threw = true;
    o.code = -4;
    o.message = fmt::format("child died (status {}): {}", status, out);
  } else {
    o.threw = out.substr(0, a) == "1";
    o.code = std::stoi(out.substr(a + 1, b - a - 1));
    o.message = out.substr(b + 1);
  }
  o.peak_rss = static_cast<uint64_t>(ru.ru_maxrss) * 1024;
  return o;
}

/// Runs a read of the FIFO `fifo` on another thread. A regression that blocks fails the test after
/// 5 s instead of hanging it: a writer then opens and closes the FIFO, and the reader sees EOF.
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

// ---------------------------------------------------------------------------------------------
// Builders: .npy headers, raw deflate, ZIP archives, image headers.

std::string npy_header(const std::string& descr, const std::string& shape) {
  std::string h = fmt::format("{{'descr': '{}', 'fortran_order': False, 'shape': {}, }}", descr, shape);
  h.append((64 - (10 + h.size() + 1) % 64) % 64, ' ');
  h += '\n';
  std::string out("\x93NUMPY\x01\x00", 8);
  out += static_cast<char>(h.size() & 0xff);
  out += static_cast<char>(h.size() >> 8);
  return out + h;
}

/// A raw deflate stream (as in a ZIP member) of `prefix` followed by `zeros` zero bytes, compressed
/// in 1 MiB pieces (Z_RLE: 1029:1 on zeros, ~0.3 s for 300 MB) without holding the zeros in memory.
struct Deflated {
  std::string body;
  uint32_t crc = 0;
  uint64_t size = 0;  ///< uncompressed
};
Deflated deflate_with_zeros(const std::string& prefix, uint64_t zeros) {
  Deflated d;
  z_stream zs{};
  deflateInit2(&zs, 6, Z_DEFLATED, -MAX_WBITS, 8, Z_RLE);
  const std::string zero_block(kMiB, '\0');
  char out[1 << 16];
  auto pump = [&](const char* p, size_t n, int flush) {
    zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(p));
    zs.avail_in = static_cast<uInt>(n);
    do {
      zs.next_out = reinterpret_cast<Bytef*>(out);
      zs.avail_out = sizeof out;
      deflate(&zs, flush);
      d.body.append(out, sizeof out - zs.avail_out);
    } while (zs.avail_out == 0);
    if (n) d.crc = static_cast<uint32_t>(crc32(d.crc, reinterpret_cast<const Bytef*>(p), static_cast<uInt>(n)));
    d.size += n;
  };
  pump(prefix.data(), prefix.size(), Z_NO_FLUSH);
  for (uint64_t left = zeros; left > 0;) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(left, zero_block.size()));
    pump(zero_block.data(), n, Z_NO_FLUSH);
    left -= n;
  }
  pump(nullptr, 0, Z_FINISH);
  deflateEnd(&zs);
  return d;
}

/// One ZIP member with the sizes its directory entry declares (which may lie).
struct ZipEntry {
  std::string name;
  uint16_t method = 8;
  std::string body;      ///< the bytes stored in the archive
  uint32_t crc = 0;
  uint64_t usize = 0;    ///< declared uncompressed size
  uint64_t csize = ~uint64_t{0};  ///< declared compressed size; ~0 = body.size()
  bool zip64 = false;    ///< sizes as 0xFFFFFFFF plus a ZIP64 extra field (as numpy writes)
  uint64_t zip64_offset = 0;  ///< if set: the directory's local-header offset, given in the ZIP64 extra
};

void put16(std::string& b, uint64_t v) {
  b += static_cast<char>(v & 0xff);
  b += static_cast<char>((v >> 8) & 0xff);
}
void put32(std::string& b, uint64_t v) {
  put16(b, v & 0xffff);
  put16(b, (v >> 16) & 0xffff);
}
void put64(std::string& b, uint64_t v) {
  put32(b, v & 0xffffffffu);
  put32(b, v >> 32);
}

std::string make_zip(const std::vector<ZipEntry>& entries) {
  std::string zip, cd;
  for (const auto& e : entries) {
    const uint64_t csize = e.csize == ~uint64_t{0} ? e.body.size() : e.csize;
    std::string extra;
    if (e.zip64) {
      put16(extra, 1);
      put16(extra, e.zip64_offset ? 24 : 16);
      put64(extra, e.usize);
      put64(extra, csize);
      if (e.zip64_offset) put64(extra, e.zip64_offset);
    }
    const uint64_t c32 = e.zip64 ? 0xffffffffu : csize, u32 = e.zip64 ? 0xffffffffu : e.usize;
    const uint64_t offset = zip.size();
    put32(zip, 0x04034b50u);
    put16(zip, 45);
    put16(zip, 0);
    put16(zip, e.method);
    put32(zip, 0x210000);
    put32(zip, e.crc);
    put32(zip, c32);
    put32(zip, u32);
    put16(zip, e.name.size());
    put16(zip, extra.size());
    zip += e.name + extra + e.body;
    put32(cd, 0x02014b50u);
    put16(cd, 45);
    put16(cd, 45);
    put16(cd, 0);
    put16(cd, e.method);
    put32(cd, 0x210000);
    put32(cd, e.crc);
    put32(cd, c32);
    put32(cd, u32);
    put16(cd, e.name.size());
    put16(cd, extra.size());
    put16(cd, 0);
    put16(cd, 0);
    put16(cd, 0);
    put32(cd, 0);
    put32(cd, e.zip64_offset ? 0xffffffffu : offset);
    cd += e.name + extra;
  }
  const uint64_t cd_off = zip.size();
  zip += cd;
  put32(zip, 0x06054b50u);
  put16(zip, 0);
  put16(zip, 0);
  put16(zip, entries.size());
  put16(zip, entries.size());
  put32(zip, cd.size());
  put32(zip, cd_off);
  put16(zip, 0);
  return zip;
}

/// A member whose .npy header declares `shape` of `descr`, followed by `zeros` zero bytes, deflated;
/// the directory declares its true size unless `usize` is given.
ZipEntry deflate_member(const std::string& name, const std::string& descr, const std::string& shape, uint64_t zeros,
                        uint64_t usize = 0) {
  const Deflated d = deflate_with_zeros(npy_header(descr, shape), zeros);
  ZipEntry e;
  e.name = name;
  e.body = d.body;
  e.crc = d.crc;
  e.usize = usize ? usize : d.size;
  return e;
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

/// A sparse file: a .npy header and then `data_bytes` of holes (no disk, no time).
void write_sparse_npy(const std::string& path, const std::string& descr, const std::string& shape,
                      uint64_t data_bytes) {
  const std::string h = npy_header(descr, shape);
  write_bytes(path, h);
  ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(h.size() + data_bytes)), 0);
}

/// A PNG that is only a header: IHDR declaring width x height, 8-bit RGB, then IEND.
std::string png_header(uint32_t width, uint32_t height) {
  auto be32 = [](std::string& b, uint32_t v) {
    for (int s = 24; s >= 0; s -= 8) b += static_cast<char>((v >> s) & 0xff);
  };
  auto chunk = [&](std::string& png, const std::string& type, const std::string& data) {
    be32(png, static_cast<uint32_t>(data.size()));
    const std::string td = type + data;
    png += td;
    be32(png, static_cast<uint32_t>(crc32(0, reinterpret_cast<const Bytef*>(td.data()), static_cast<uInt>(td.size()))));
  };
  std::string png("\x89PNG\r\n\x1a\n", 8), ihdr;
  be32(ihdr, width);
  be32(ihdr, height);
  ihdr += std::string("\x08\x02\x00\x00\x00", 5);
  chunk(png, "IHDR", ihdr);
  chunk(png, "IEND", "");
  return png;
}

/// A JPEG that is only SOI and a baseline SOF0 declaring width x height with 3 components.
std::string jpeg_header(uint16_t width, uint16_t height) {
  std::string j("\xff\xd8\xff\xc0\x00\x11\x08", 7);
  j += static_cast<char>(height >> 8);
  j += static_cast<char>(height & 0xff);
  j += static_cast<char>(width >> 8);
  j += static_cast<char>(width & 0xff);
  j += std::string("\x03\x01\x11\x00\x02\x11\x00\x03\x11\x00", 10);
  // Start of scan (libjpeg reads the header up to it), then the end of the image: no pixel data.
  j += std::string("\xff\xda\x00\x0c\x03\x01\x00\x02\x11\x03\x11\x00\x3f\x00\xff\xd9", 16);
  return j;
}

// ---------------------------------------------------------------------------------------------
// .npz: directories that lie, deflate bombs.

TEST(HostileNpz, DirectoryClaiming3GiBDeflateMemberIsRefusedBeforeInflating) {
  TempDir dir;
  // An honest 16-byte array; the central directory says it inflates to 3 GiB.
  ZipEntry e = deflate_member("x.npy", "<f4", "(4,)", 16);
  e.usize = 3 * kGiB;
  write_bytes(dir.file("tiny.npz"), make_zip({e}));
  EXPECT_LT(fs::file_size(dir.file("tiny.npz")), 1024u);
  const Outcome o = in_child([&] { read_npz(dir.file("tiny.npz")); });
  EXPECT_TRUE(o.is(ErrorCode::kInvalidInput)) << o.code << " " << o.message;
  EXPECT_TRUE(o.says("tiny.npz")) << o.message;
  EXPECT_TRUE(o.says("'x.npy'")) << o.message;
  EXPECT_TRUE(o.says("3221225472")) << o.message;
  EXPECT_TRUE(o.says("1032:1")) << o.message;
  EXPECT_LT(o.peak_rss, kPeakRssBudget);
}

TEST(HostileNpz, DirectoryClaiming3GiBStoredMemberIsRefused) {
  TempDir dir;
  const std::string npy = serialize_npy(Tensor::from_vector<float>({4}, {1, 2, 3, 4}));
  ZipEntry e;
  e.name = "x.npy";
  e.method = 0;
  e.body = npy;
  e.crc = static_cast<uint32_t>(crc32(0, reinterpret_cast<const Bytef*>(npy.data()), static_cast<uInt>(npy.size())));
  // Both sizes claim 3 GiB: the member runs past the end of the 300-byte archive.
  e.usize = e.csize = 3 * kGiB;
  write_bytes(dir.file("stored.npz"), make_zip({e}));
  Outcome o = in_child([&] { read_npz(dir.file("stored.npz")); });
  EXPECT_TRUE(o.is(ErrorCode::kInvalidInput)) << o.message;
  EXPECT_TRUE(o.says("stored.npz")) << o.message;
  EXPECT_TRUE(o.says("'x.npy' is truncated")) << o.message;
  EXPECT_LT(o.peak_rss, kPeakRssBudget);
  // Sizes that disagree for a stored member.
  e.csize = npy.size();
  write_bytes(dir.file("stored.npz"), make_zip({e}));
  o = in_child([&] { read_npz(dir.file("stored.npz")); });
  EXPECT_TRUE(o.is(ErrorCode::kInvalidInput)) << o.message;
  EXPECT_TRUE(o.says("stored uncompressed but declares 3221225472 bytes")) << o.message;
  EXPECT_LT(o.peak_rss, kPeakRssBudget);
  // The honest member reads back.
  e.usize = npy.size();
  write_bytes(dir.file("stored.npz"), make_zip({e}));
  auto arrays = read_npz(dir.file("stored.npz"));
  ASSERT_EQ(arrays.size(), 1u);
  EXPECT_EQ(arrays[0].first, "x");
  EXPECT_EQ(arrays[0].second.data<float>()[3], 4.0f);
}

TEST(HostileNpz, Zip64DirectoryClaiming5GiBIsRefused) {
  TempDir dir;
  ZipEntry e = deflate_member("big.npy", "<f4", "(4,)", 16);
  e.zip64 = true;  // sizes in the ZIP64 extra field, as numpy writes them
  e.usize = 5 * kGiB;
  const std::string zip = make_zip({e});
  const Outcome o = in_child([&] { parse_npz(zip, "mem.npz"); });
  EXPECT_TRUE(o.is(ErrorCode::kInvalidInput)) << o.message;
  EXPECT_TRUE(o.says("'big.npy' declares 5368709120 bytes")) << o.message;
  EXPECT_LT(o.peak_rss, kPeakRssBudget);
  // The same archive with the true size parses (the ZIP64 path itself works).
  e.usize = npy_header("<f4", "(4,)").size() + 16;
  auto arrays = parse_npz(make_zip({e}), "mem.npz");
  ASSERT_EQ(arrays.size(), 1u);
  EXPECT_EQ(arrays[0].second.shape(), (Shape{4}));
}

TEST(HostileNpz, DeflateBombWithHugeShapeIsRefusedFromItsHeader) {
  TempDir dir;
  // 300 MB of zeros behind a header declaring 4e12 bytes; the directory's size is the true 300 MB.
  const ZipEntry e = deflate_member("x.npy", "<f4", "(100000, 100000, 100)", kBombZeros);
  write_bytes(dir.file("bomb.npz"), make_zip({e}));
  EXPECT_LT(fs::file_size(dir.file("bomb.npz")), 400'000u);
  const auto t0 = std::chrono::steady_clock::now();
  const Outcome o = in_child([&] {
    ScopedLimits limits(64 * kMiB);
    read_npz(dir.file("bomb.npz"));
  });
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_TRUE(o.is(ErrorCode::kInvalidInput)) << o.message;
  EXPECT_TRUE(o.says("bomb.npz:x.npy")) << o.message;
  EXPECT_TRUE(o.says("truncated")) << o.message;
  EXPECT_TRUE(o.says("4000000000000 bytes")) << o.message;
  EXPECT_LT(o.peak_rss, kPeakRssBudget);
  EXPECT_LT(seconds, 2.0);  // refused from the header: the 300 MB are never inflated
}

TEST(HostileNpz, HonestMemberOverTheLimitsIsRefusedBeforeInflating) {
  TempDir dir;
  // An honest header: 75e6 float32 = the 300 MB that follow.
  const ZipEntry e = deflate_member("x.npy", "<f4", "(75000000,)", kBombZeros);
  write_bytes(dir.file("big.npz"), make_zip({e}));
  // Over --max-memory itself (64 MiB).
  Outcome o = in_child([&] {
    ScopedLimits limits(64 * kMiB);
    read_npz(dir.file("big.npz"));
  });
  EXPECT_TRUE(o.is(ErrorCode::kInvalidInput)) << o.message;
  EXPECT_TRUE(o.says("big.npz:x.npy")) << o.message;
  EXPECT_TRUE(o.says("over the memory limit of 67108864 bytes")) << o.message;
  EXPECT_LT(o.peak_rss, kPeakRssBudget);
  // Under --max-memory (1 GiB) but over the per-sample quarter of it (256 MiB).
  o = in_child([&] {
    ScopedLimits limits(kGiB);
    read_npz(dir.file("big.npz"));
  });
  EXPECT_TRUE(o.is(ErrorCode::kInvalidInput)) << o.message;
  EXPECT_TRUE(o.says("big.npz:x.npy")) << o.message;
  EXPECT_TRUE(o.says("300000000 bytes, over the per-sample limit of 268435456")) << o.message;
  EXPECT_LT(o.peak_rss, kPeakRssBudget);
  // Within every limit, but not what the model takes: refused from the header, naming the input.
  o = in_child([&] {
    ScopedLimits limits(4 * kGiB);
    open_sample_source(dir.file("big.npz"), {spec("x", DataType::kFloat, {1, 3, 2, 2})}, {})->load(0);
  });
  EXPECT_TRUE(o.is(ErrorCode::kInvalidInput)) << o.message;
  EXPECT_TRUE(o.says("big.npz:x.npy")) << o.message;
  EXPECT_TRUE(o.says("input 'x' expects shape [1,3,2,2] but the sample has shape [75000000]")) << o.message;
  EXPECT_LT(o.peak_rss, kPeakRssBudget);
}

TEST(HostileNpz, StreamInflatingPastTheDeclaredSizeStopsThere) {
  TempDir dir;
  // Header and directory agree on 1000 floats, but the stream goes on for 300 MB.
  const std::string h = npy_header("<f4", "(1000,)");
  const ZipEntry e = deflate_member("x.npy", "<f4", "(1000,)", kBombZeros, h.size() + 4000);
  write_bytes(dir.file("long.npz"), make_zip({e}));
  const Outcome o = in_child([&] { read_npz(dir.file("long.npz")); });
  EXPECT_TRUE(o.is(ErrorCode::kInvalidInput)) << o.message;
  EXPECT_TRUE(o.says("long.npz:x.npy")) << o.message;
  EXPECT_TRUE(o.says(fmt::format("inflates to more than the {} bytes", h.size() + 4000))) << o.message;
  EXPECT_LT(o.peak_rss, kPeakRssBudget);
}

TEST(HostileNpz, StreamEndingBeforeTheDeclaredSizeIsTruncated) {
  TempDir dir;
  // The directory declares 100 bytes more than the deflate stream holds.
  ZipEntry e = deflate_member("y.npy", "|u1", "(4100,)", 4000);
  e.usize += 100;
  write_bytes(dir.file("short.npz"), make_zip({e}));
  const Outcome o = capture([&] { read_npz(dir.file("short.npz")); });
  EXPECT_TRUE(o.is(ErrorCode::kInvalidInput)) << o.message;
  EXPECT_TRUE(o.says("short.npz:y.npy")) << o.message;
  EXPECT_TRUE(o.says(fmt::format("deflate data ends after {} bytes but the ZIP directory declares {}",
                                 npy_header("|u1", "(4100,)").size() + 4000, e.usize)))
      << o.message;
}

TEST(HostileNpz, MemberLongerThanItsArrayIsRefused) {
  TempDir dir;
  // A stored member: an array of 1000 floats followed by 100 stray bytes (numpy never writes that).
  const std::string npy = serialize_npy(Tensor(DataType::kFloat, {1000})) + std::string(100, '\x7f');
  ZipEntry e;
  e.name = "x.npy";
  e.method = 0;
  e.body = npy;
  e.crc = static_cast<uint32_t>(crc32(0, reinterpret_cast<const Bytef*>(npy.data()), static_cast<uInt>(npy.size())));
  e.usize = npy.size();
  write_bytes(dir.file("long.npz"), make_zip({e}));
  const Outcome o = capture([&] { read_npz(dir.file("long.npz")); });
  EXPECT_TRUE(o.is(ErrorCode::kInvalidInput)) << o.message;
  EXPECT_TRUE(o.says("long.npz:x.npy")) << o.message;
  EXPECT_TRUE(o.says("holds 4100 bytes after its header, but its array ([1000] of float32) takes 4000")) << o.message;
}

TEST(HostileNpz, StreamingInflateRoundTripsArraysLargerThanTheHeaderPrefix) {
  TempDir dir;
  // 300000 floats (1.2 MB, > the 64 KiB inflated with the header) and a small int64 array.
  Tensor big(DataType::kFloat, {300000});
  for (int64_t i = 0; i < big.numel(); ++i) big.mutable_data<float>()[i] = static_cast<float>(i % 9973) * 0.5f;
  write_npz(dir.file("ok.npz"), {{"a", big}, {"b", Tensor::from_vector<int64_t>({2}, {-7, 8})}}, true);
  for (const auto& arrays : {read_npz(dir.file("ok.npz")), parse_npz(read_file(dir.file("ok.npz")), "ok")}) {
    ASSERT_EQ(arrays.size(), 2u);
    ASSERT_EQ(arrays[0].second.shape(), (Shape{300000}));
    const float* a = arrays[0].second.data<float>();
    for (int64_t i : {int64_t{0}, int64_t{16383}, int64_t{16384}, int64_t{16385}, int64_t{299999}}) {
      EXPECT_EQ(a[i], static_cast<float>(i % 9973) * 0.5f) << i;
    }
    EXPECT_EQ(arrays[1].second.data<int64_t>()[0], -7);
  }
  // A flipped byte deep in the deflate data: corrupt data or a CRC mismatch, naming the member.
  std::string bytes = read_file(dir.file("ok.npz"));
  bytes[bytes.size() / 3] ^= 0x20;
  const Outcome o = capture([&] { parse_npz(bytes, "flipped.npz"); });
  EXPECT_TRUE(o.is(ErrorCode::kInvalidInput)) << o.message;
  EXPECT_TRUE(o.says("flipped.npz:a.npy")) << o.message;
}

TEST(HostileNpz, GarbageDirectoriesAreCleanErrors) {
  // Offsets and sizes near 2^64 (ZIP64) must not wrap around the bounds checks.
  ZipEntry e = deflate_member("x.npy", "<f4", "(4,)", 16);
  e.zip64 = true;
  e.zip64_offset = ~uint64_t{0} - 15;
  Outcome o = capture([&] { parse_npz(make_zip({e}), "wrap.npz"); });
  EXPECT_TRUE(o.is(ErrorCode::kInvalidInput)) << o.message;
  EXPECT_TRUE(o.says("'wrap.npz' is not a valid .npz: member 'x.npy': broken local header")) << o.message;
  e.zip64_offset = 0;
  e.csize = ~uint64_t{0} - 15;
  o = capture([&] { parse_npz(make_zip({e}), "wrap.npz"); });
  EXPECT_TRUE(o.is(ErrorCode::kInvalidInput)) << o.message;
  EXPECT_TRUE(o.says("member 'x.npy' is truncated")) << o.message;
  // Every byte of a small valid archive overwritten in turn: each result is the right array or an
  // error for bad input (never an internal error, a crash or a std::exception).
  TempDir dir;
  write_npz(dir.file("v.npz"), {{"a", Tensor::from_vector<float>({3}, {1, 2, 3})}}, true);
  const std::string valid = read_file(dir.file("v.npz"));
  int refused = 0;
  for (size_t i = 0; i < valid.size(); ++i) {
    for (const char c : {'\x00', '\xff', static_cast<char>(valid[i] ^ 0x80)}) {
      std::string bad = valid;
      bad[i] = c;
      const Outcome t = capture([&] {
        const auto arrays = parse_npz(bad, "fuzz.npz");
        // (A zeroed entry count leaves a valid empty archive.)
        if (!arrays.empty() &&
            (arrays.size() != 1 || arrays[0].second.numel() != 3 || arrays[0].second.data<float>()[2] != 3.0f)) {
          throw std::runtime_error("wrong array accepted");
        }
      });
      if (t.threw) {
        ++refused;
        EXPECT_TRUE(t.is(ErrorCode::kInvalidInput) || t.is(ErrorCode::kUnsupported)) << i << ": " << t.message;
        EXPECT_TRUE(t.says("fuzz.npz")) << i << ": " << t.message;
      }
    }
  }
  EXPECT_GT(refused, static_cast<int>(valid.size()));  // most corruptions are caught (CRC, sizes, magic)
}

// ---------------------------------------------------------------------------------------------
// .npy samples checked against the model from their header.

TEST(HostileNpy, SampleOfTheWrongShapeIsRefusedFromItsHeader) {
  TempDir dir;
  // 400 MB of holes behind an honest header.
  write_sparse_npy(dir.file("s.npy"), "<f4", "(100000000,)", 400'000'000);
  const Outcome o = in_child([&] {
    open_sample_source(dir.path(), {spec("image", DataType::kFloat, {-1, 3, 2, 2})}, {})->load(0);
  });
  EXPECT_TRUE(o.is(ErrorCode::kInvalidInput)) << o.message;
  EXPECT_TRUE(o.says("s.npy")) << o.message;
  EXPECT_TRUE(o.says("input 'image' expects shape [batch,3,2,2] but the sample has shape [100000000]")) << o.message;
  EXPECT_LT(o.peak_rss, kPeakRssBudget);
  // A model that takes any length: over the per-sample limit (256 MiB of a 1 GiB --max-memory).
  const Outcome o2 = in_child([&] {
    ScopedLimits limits(kGiB);
    open_sample_source(dir.path(), {spec("x", DataType::kFloat, {-1})}, {})->load(0);
  });
  EXPECT_TRUE(o2.is(ErrorCode::kInvalidInput)) << o2.message;
  EXPECT_TRUE(o2.says("s.npy")) << o2.message;
  EXPECT_TRUE(o2.says("over the per-sample limit of 268435456 bytes")) << o2.message;
  EXPECT_LT(o2.peak_rss, kPeakRssBudget);
}

TEST(HostileNpy, StackedSamplesAreCheckedFromTheHeaderAndSplitIntoRows) {
  TempDir dir;
  // [1000,1,3,100,1000] float32 (1.2 GB of holes) for a [1,3,2,2] model: refused when opened.
  write_sparse_npy(dir.file("stack.npy"), "<f4", "(1000, 1, 3, 100, 1000)", uint64_t{1200} * 1000 * 1000);
  const Outcome o = in_child([&] {
    open_sample_source(dir.file("stack.npy"), {spec("x", DataType::kFloat, {1, 3, 2, 2})}, {});
  });
  EXPECT_TRUE(o.is(ErrorCode::kInvalidInput)) << o.message;
  EXPECT_TRUE(o.says("stack.npy")) << o.message;
  EXPECT_TRUE(o.says("input 'x' expects shape [1,3,2,2] but the sample has shape [1,3,100,1000]")) << o.message;
  EXPECT_LT(o.peak_rss, kPeakRssBudget);
  // A real stack: [3,1,2] for a [1,2] model is 3 samples of [1,2], row i holding i*10, i*10+1.
  write_npy(dir.file("rows.npy"), Tensor::from_vector<float>({3, 1, 2}, {0, 1, 10, 11, 20, 21}));
  auto src = open_sample_source(dir.file("rows.npy"), {spec("x", DataType::kFloat, {1, 2})}, {});
  ASSERT_EQ(src->size(), 3u);
  const Tensor t = src->load(2)["x"];
  EXPECT_EQ(t.shape(), (Shape{1, 2}));
  EXPECT_EQ(t.data<float>()[1], 21.0f);
}

// ---------------------------------------------------------------------------------------------
// FIFOs, devices and directories.

TEST(NonRegularFiles, FifosFailFastWithAnIoErrorNamingThePath) {
  TempDir dir;
  const std::vector<std::pair<std::string, std::function<void(const std::string&)>>> readers = {
      {"a.npy", [](const std::string& p) { read_npy(p); }},
      {"b.npy", [](const std::string& p) { read_npy_header(p); }},
      {"c.npz", [](const std::string& p) { read_npz(p); }},
      {"d.png", [](const std::string& p) { decode_image(p); }},
      {"e.i32", [](const std::string& p) { read_token_stream(p); }},
      {"f-idx3-ubyte", [](const std::string& p) { read_idx(p); }},
      {"g.npz", [](const std::string& p) { open_sample_source(p, {spec("x", DataType::kFloat, {1})}, {}); }},
      {"h.npy", [](const std::string& p) { open_sample_source(p, {spec("x", DataType::kFloat, {1})}, {}); }},
      {"i.pb", [](const std::string& p) { open_sample_source(p, {spec("x", DataType::kFloat, {1})}, {}); }},
  };
  for (const auto& [name, read] : readers) {
    const std::string fifo = dir.file(name);
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0) << fifo;
    const auto t0 = std::chrono::steady_clock::now();
    const Outcome o = fast(fifo, [&, read = read] { read(fifo); });
    EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 1.0) << name;
    EXPECT_TRUE(o.is(ErrorCode::kIo)) << name << ": " << o.code << " " << o.message;
    EXPECT_TRUE(o.says(fifo)) << o.message;
    EXPECT_TRUE(o.says("FIFO")) << o.message;
  }
  // In a folder, a FIFO is not a sample file: the folder holds nothing readable (and nothing blocks).
  TempDir only_fifo;
  ASSERT_EQ(::mkfifo(only_fifo.file("s.npz").c_str(), 0600), 0);
  const Outcome o = fast(only_fifo.file("s.npz"), [&] {
    open_sample_source(only_fifo.path(), {spec("x", DataType::kFloat, {1})}, {});
  });
  EXPECT_TRUE(o.is(ErrorCode::kInvalidInput)) << o.message;
  EXPECT_TRUE(o.says("holds no samples")) << o.message;
}

TEST(NonRegularFiles, DirectoriesAndDevicesAreRefused) {
  TempDir dir;
  fs::create_directory(dir.file("d.npz"));
  Outcome o = capture([&] { read_npz(dir.file("d.npz")); });
  EXPECT_TRUE(o.is(ErrorCode::kIo)) << o.message;
  EXPECT_TRUE(o.says("is a directory")) << o.message;
  if (fs::exists("/dev/zero")) {
    o = capture([] { read_npz("/dev/zero"); });
    EXPECT_TRUE(o.is(ErrorCode::kIo)) << o.message;
    EXPECT_TRUE(o.says("'/dev/zero' is a character device")) << o.message;
    o = capture([] { read_idx("/dev/zero"); });
    EXPECT_TRUE(o.is(ErrorCode::kIo)) << o.message;
  }
}

// ---------------------------------------------------------------------------------------------
// Images: huge declared sizes refused from the header.

TEST(HostileImages, PngDeclaring100000x100000IsRefusedNamingTheFile) {
  TempDir dir;
  write_bytes(dir.file("huge.png"), png_header(100000, 100000));
  EXPECT_LT(fs::file_size(dir.file("huge.png")), 100u);
  const Outcome o = in_child([&] { decode_image(dir.file("huge.png")); });
  EXPECT_TRUE(o.is(ErrorCode::kInvalidInput)) << o.message;
  EXPECT_TRUE(o.says("huge.png")) << o.message;
  EXPECT_LT(o.peak_rss, kPeakRssBudget);
  // 16000 x 16000 RGB (768 MB) passes stb_image's own 1 GiB guard; the per-sample limit refuses it.
  write_bytes(dir.file("big.png"), png_header(16000, 16000));
  const Outcome o2 = in_child([&] {
    ScopedLimits limits(kGiB);
    decode_image(dir.file("big.png"));
  });
  EXPECT_TRUE(o2.is(ErrorCode::kInvalidInput)) << o2.message;
  EXPECT_TRUE(o2.says("image '" + dir.file("big.png") + "' (16000x16000, 3 channel(s))")) << o2.message;
  EXPECT_TRUE(o2.says("per-sample limit")) << o2.message;
  EXPECT_LT(o2.peak_rss, kPeakRssBudget);
}

TEST(HostileImages, JpegDeclaringHugeSizesIsRefusedBeforeDecoding) {
  TempDir dir;
  write_bytes(dir.file("huge.jpg"), jpeg_header(65000, 65000));
  Outcome o = in_child([&] { decode_image(dir.file("huge.jpg")); });
  EXPECT_TRUE(o.is(ErrorCode::kInvalidInput)) << o.message;
  EXPECT_TRUE(o.says("huge.jpg")) << o.message;
  EXPECT_TRUE(o.says("65000x65000")) << o.message;
  EXPECT_LT(o.peak_rss, kPeakRssBudget);
  write_bytes(dir.file("big.jpg"), jpeg_header(20000, 20000));
  o = in_child([&] {
    ScopedLimits limits(kGiB);
    decode_image(dir.file("big.jpg"));
  });
  EXPECT_TRUE(o.is(ErrorCode::kInvalidInput)) << o.message;
  EXPECT_TRUE(o.says("big.jpg' (20000x20000, 3 channel(s)) needs")) << o.message;
  EXPECT_LT(o.peak_rss, kPeakRssBudget);
}

TEST(HostileImages, WrongSizeForTheModelIsRefusedFromTheHeader) {
  TempDir dir;
  // Without resize or crop a 16000 x 16000 image cannot feed a 224 x 224 input: the shape check
  // fires before the decoder (whose refusal would say "per-sample limit" instead).
  write_bytes(dir.file("big.png"), png_header(16000, 16000));
  SourceOptions so;
  so.image = image_preset("none");
  const Outcome o = in_child([&] {
    ScopedLimits limits(kGiB);
    open_sample_source(dir.path(), {spec("image", DataType::kFloat, {1, 3, 224, 224})}, so)->load(0);
  });
  EXPECT_TRUE(o.is(ErrorCode::kInvalidInput)) << o.message;
  EXPECT_TRUE(o.says("big.png")) << o.message;
  EXPECT_TRUE(o.says("input 'image' expects shape [1,3,224,224] but the sample has shape [1,3,16000,16000]"))
      << o.message;
  EXPECT_LT(o.peak_rss, kPeakRssBudget);
}

TEST(HostileImages, ResizingAThinImageIsBoundedByTheSampleLimit) {
  TempDir dir;
  // 1 x 20000 gray pixels: resizing its short side to 256 would make it 256 x 5120000 x 3.
  std::vector<uint8_t> px(20000, 128);
  ASSERT_TRUE(stbi_write_png(dir.file("thin.png").c_str(), 1, 20000, 1, px.data(), 1));
  SourceOptions so;
  so.image = image_preset("imagenet");
  const Outcome o = in_child([&] {
    ScopedLimits limits(kGiB);
    preprocess_image(decode_image(dir.file("thin.png")), so.image, dir.file("thin.png"));
  });
  EXPECT_TRUE(o.is(ErrorCode::kInvalidInput)) << o.message;
  EXPECT_TRUE(o.says("resizing '" + dir.file("thin.png") + "' from 1x20000 to 256x5120000")) << o.message;
  EXPECT_LT(o.peak_rss, kPeakRssBudget);
}

// ---------------------------------------------------------------------------------------------
// IDX files and token streams.

TEST(HostileIdx, DimsLargerThanTheFileAreRefused) {
  TempDir dir;
  // [60000,28,28] uint8 declared, 100 bytes present.
  std::string idx = std::string("\0\0\x08\x03", 4) + std::string("\0\0\xea\x60\0\0\0\x1c\0\0\0\x1c", 12);
  write_bytes(dir.file("a-idx3-ubyte"), idx + std::string(100, '\1'));
  Outcome o = in_child([&] { read_idx(dir.file("a-idx3-ubyte")); });
  EXPECT_TRUE(o.is(ErrorCode::kInvalidInput)) << o.message;
  EXPECT_TRUE(o.says("a-idx3-ubyte")) << o.message;
  EXPECT_TRUE(o.says("truncated IDX data")) << o.message;
  EXPECT_TRUE(o.says("[60000,28,28]")) << o.message;
  // Dims whose product overflows 64 bits.
  write_bytes(dir.file("b-idx3-ubyte"), std::string("\0\0\x0e\x03", 4) + std::string(12, '\xff'));
  o = in_child([&] { read_idx(dir.file("b-idx3-ubyte")); });
  EXPECT_TRUE(o.is(ErrorCode::kInvalidInput)) << o.message;
  EXPECT_TRUE(o.says("too many")) << o.message;
  EXPECT_LT(o.peak_rss, kPeakRssBudget);
  // gzip: a 100-byte file cannot inflate to the 1e12 bytes of [1000000,1000,1000].
  std::string huge = std::string("\0\0\x08\x03", 4) + std::string("\0\x0f\x42\x40\0\0\x03\xe8\0\0\x03\xe8", 12);
  gzFile f = gzopen(dir.file("c-idx3-ubyte.gz").c_str(), "wb");
  gzwrite(f, huge.data(), static_cast<unsigned>(huge.size()));
  gzclose(f);
  o = in_child([&] { read_idx(dir.file("c-idx3-ubyte.gz")); });
  EXPECT_TRUE(o.is(ErrorCode::kInvalidInput)) << o.message;
  EXPECT_TRUE(o.says("c-idx3-ubyte.gz")) << o.message;
  EXPECT_TRUE(o.says("1000000000000 bytes")) << o.message;
  EXPECT_LT(o.peak_rss, kPeakRssBudget);
  // A label file (rank 1) is not a source of images: a clear error, not an out-of-range dim.
  write_bytes(dir.file("labels-idx1-ubyte"), std::string("\0\0\x08\x01\0\0\0\x03\x01\x02\x03", 11));
  o = capture([&] {
    open_sample_source(dir.file("labels-idx1-ubyte"), {spec("x", DataType::kFloat, {1, 1, 28, 28})}, {});
  });
  EXPECT_TRUE(o.is(ErrorCode::kInvalidInput)) << o.message;
  EXPECT_TRUE(o.says("not images")) << o.message;
}

TEST(HostileTokens, StreamOverTheMemoryLimitIsRefused) {
  TempDir dir;
  write_bytes(dir.file("t.i32"), std::string(4096, '\1'));
  {
    ScopedLimits limits(1024);
    const Outcome o = capture([&] { read_token_stream(dir.file("t.i32")); });
    EXPECT_TRUE(o.is(ErrorCode::kInvalidInput)) << o.message;
    EXPECT_TRUE(o.says("token stream '" + dir.file("t.i32") + "' needs 4096 bytes")) << o.message;
  }
  const std::vector<int32_t> toks = read_token_stream(dir.file("t.i32"));
  ASSERT_EQ(toks.size(), 1024u);
  EXPECT_EQ(toks[7], 0x01010101);
  // Sequences across two streams (5 and 9 tokens, seq-len 4): 1 + 2 sequences, the third being
  // tokens 4..7 of the second stream.
  TempDir two;
  for (const auto& [name, n, base] : {std::tuple{"a.i32", 5, 0}, std::tuple{"b.i32", 9, 100}}) {
    std::vector<int32_t> t(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) t[static_cast<size_t>(i)] = base + i;
    write_bytes(two.file(name), std::string(reinterpret_cast<const char*>(t.data()), t.size() * 4));
  }
  SourceOptions so;
  so.seq_len = 4;
  auto src = open_sample_source(two.path(), {spec("ids", DataType::kInt64, {1, 4})}, so);
  ASSERT_EQ(src->size(), 3u);
  EXPECT_EQ(src->load(2)["ids"].data<int64_t>()[0], 104);
  EXPECT_EQ(src->load(0)["ids"].data<int64_t>()[3], 3);
  EXPECT_NE(src->describe(2).find("b.i32[tokens 4..8]"), std::string::npos) << src->describe(2);
}

// fuzz_image: a 130-byte PNG whose chunk lengths run past the file made stb_image allocate 1.4 GB
// for its IDAT buffer; the chunk walk before stb refuses it.
TEST(HostileImages, PngChunkLongerThanTheFileIsRefusedBeforeStb) {
  static const unsigned char kPng[] = {
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x1c, 0x00, 0x00, 0x00, 0x1c, 0x08, 0x06, 0x00, 0x00, 0x00, 0x72, 0x0d, 0xdf,
    0x94, 0x54, 0x00, 0x01, 0x85, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0xed, 0xd5, 0x2f, 0xcb, 0xc2,
    0x50, 0x14, 0x06, 0xd0, 0x89, 0x18, 0x2c, 0x82, 0x8a, 0x56, 0x83, 0x43, 0x0c, 0x46, 0xcb, 0xd4,
    0x2d, 0x68, 0x11, 0x64, 0x49, 0x3f, 0xc5, 0xa2, 0x6f, 0xdf, 0x9c, 0x9d, 0x27, 0x47, 0xd0, 0xfb,
    0x20, 0xcf, 0xf3, 0xd8, 0xef, 0xf7, 0xdf, 0x03, 0xeb, 0xf5, 0xfa, 0x1d, 0xb3, 0x87, 0x25, 0x99,
    0x4c, 0x7e, 0x07, 0xd4, 0x34, 0xed, 0xd9, 0xf1, 0xf3, 0xb9, 0x1e, 0x7e, 0x22, 0x57, 0x4c, 0xb9,
    0x3c, 0xf0, 0xf1, 0x27, 0x15, 0xfa, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42,
    0x60, 0x82,
  };
  const std::string bytes(reinterpret_cast<const char*>(kPng), sizeof kPng);
  const Outcome o = in_child([&] { decode_image_memory(bytes, "bomb.png", 3); });
  EXPECT_TRUE(o.is(ErrorCode::kInvalidInput)) << o.message;
  EXPECT_TRUE(o.says("bomb.png")) << o.message;
  EXPECT_TRUE(o.says("past the end")) << o.message;
  EXPECT_LT(o.peak_rss, kPeakRssBudget);
}

// fuzz_image (session 11): the last chunk's length and type are there (8 bytes) but not its data or
// CRC, and the length claims 537 MB: the walk used to stop before a chunk without all 12 bytes of
// framing, and stb_image grew its IDAT buffer to 1 GB before finding the data missing.
TEST(HostileImages, PngLastChunkCutShortIsRefusedBeforeStb) {
  static const unsigned char kPng[] = {
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0xdc, 0x00, 0x00, 0x00, 0x1c, 0x08, 0x00, 0x00, 0x00, 0x01, 0x06, 0x66, 0x80,
    0x48, 0x00, 0x00, 0x00, 0xa6, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x00, 0x0d, 0x00, 0x00,
    0x00, 0x57, 0x66, 0x80, 0x60, 0x18, 0x6e, 0x20, 0x64, 0xe7, 0xfc, 0xe9, 0x36, 0x2a, 0x38, 0x24,
    0xef, 0xfd, 0x03, 0x82, 0x8f, 0xc7, 0xa0, 0x60, 0x95, 0x09, 0x8a, 0xa4, 0x73, 0x91, 0x47, 0xd1,
    0xe2, 0x1e, 0xc7, 0xff, 0x02, 0x95, 0xfc, 0x7a, 0xfa, 0xef, 0x5f, 0x0f, 0xa6, 0x76, 0x41, 0x27,
    0x3e, 0x67, 0x67, 0x67, 0x6b, 0xd1, 0x37, 0xff, 0xb2, 0x70, 0xda, 0x1f, 0xfc, 0xf7, 0xa2, 0x10,
    0x2e, 0x39, 0xb1, 0x97, 0xdb, 0xcd, 0x57, 0x8a, 0x4b, 0x01, 0xe0, 0x8e, 0xf3, 0xec, 0x0f, 0xf0,
    0xbf, 0x82, 0x95, 0x4a, 0x05, 0xc3, 0xe1, 0x10, 0x9d, 0x4e, 0x07, 0xed, 0x76, 0x1b, 0xb9, 0x5c,
    0x0e, 0x2c, 0xcb, 0xd2, 0x03, 0x0d, 0xc3, 0xc0, 0xf9, 0x7c, 0x7e, 0xc8, 0x6e, 0xb7, 0x83, 0xa2,
    0x28, 0x7f, 0xa6, 0xdf, 0xef, 0x23, 0x9d, 0x4e, 0x3b, 0x07, 0x0b, 0x85, 0x02, 0xaa, 0x8e, 0x2a,
    0x8a, 0xc5, 0x22, 0xb9, 0x76, 0xbb, 0x5d, 0x2c, 0x16, 0x0b, 0x02, 0xcf, 0xe7, 0xf3, 0x87, 0x85,
    0x1c, 0x0e, 0x07, 0x2c, 0x97, 0xcb, 0xfb, 0xbd, 0x2c, 0xcb, 0x9f, 0xe9, 0x61, 0x30, 0x18, 0x44,
    0x3e, 0x9f, 0x47, 0x20, 0x10, 0x20, 0x0b, 0x49, 0x44, 0x41, 0x54,
  };
  const std::string bytes(reinterpret_cast<const char*>(kPng), sizeof kPng);
  const Outcome o = in_child([&] { decode_image_memory(bytes, "cut.png", 1); });
  EXPECT_TRUE(o.is(ErrorCode::kInvalidInput)) << o.message;
  EXPECT_TRUE(o.says("cut.png")) << o.message;
  EXPECT_TRUE(o.says("past the end")) << o.message;
  EXPECT_LT(o.peak_rss, kPeakRssBudget);
}

// fuzz_image's findings against Debian's stb_image 2022-09 JPEG decoder (a DHT segment whose counts
// sum above 256 made stbi__build_huffman write past its size table): JPEGs now go to libjpeg-turbo,
// which refuses them with a clear error (or decodes them), never out of bounds.
TEST(HostileImages, FuzzFoundJpegsAreCleanErrors) {
  static const unsigned char kHuffmanOverflow[] = {
    0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10, 0x4a, 0x46, 0x49, 0x46, 0x00, 0x01, 0x01, 0x01, 0x00, 0x64,
    0x00, 0x64, 0x00, 0x00, 0xff, 0xdb, 0x00, 0x43, 0x00, 0x09, 0x06, 0x07, 0x08, 0x07, 0x06, 0x09,
    0x08, 0x07, 0x08, 0x0a, 0x0a, 0x09, 0x0b, 0x0d, 0x16, 0x0f, 0x0d, 0x0c, 0x0c, 0x0d, 0x1b, 0x14,
    0x15, 0x10, 0x16, 0x20, 0x1d, 0x22, 0x22, 0x20, 0x1d, 0x1f, 0x1f, 0x24, 0x28, 0x34, 0x2c, 0x24,
    0x26, 0x31, 0x27, 0x1f, 0x1f, 0x2d, 0x3d, 0x2d, 0x31, 0x35, 0x37, 0x3a, 0x3a, 0x3a, 0x23, 0x2b,
    0x3f, 0x44, 0x3f, 0x38, 0x43, 0x34, 0x39, 0x3a, 0x37, 0xff, 0xdb, 0x00, 0x43, 0x01, 0x0a, 0x0a,
    0x0a, 0x0d, 0x0c, 0x0d, 0x1a, 0x0f, 0x0f, 0x1a, 0x37, 0x25, 0x1f, 0x25, 0x37, 0x37, 0x37, 0x37,
    0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37,
    0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37,
    0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0xff, 0xc0,
    0x00, 0x11, 0x08, 0x00, 0x96, 0x00, 0x6a, 0x03, 0x01, 0x22, 0x00, 0x02, 0x11, 0x01, 0x03, 0x11,
    0x01, 0xff, 0xc4, 0x00, 0x1c, 0x00, 0x00, 0x01, 0x05, 0x01, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x01, 0x03, 0x04, 0x07, 0x05, 0x06, 0x08, 0xff,
    0xc4, 0x00, 0x35, 0x10, 0x00, 0x01, 0x03, 0x02, 0x05, 0x03, 0x01, 0x06, 0x05, 0x03, 0x05, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x02, 0x03, 0x04, 0x11, 0x05, 0x06, 0x12, 0x21, 0x31, 0x13,
    0x41, 0x51, 0x61, 0x14, 0x22, 0x32, 0x71, 0x81, 0x91, 0x07, 0x23, 0x33, 0x42, 0x52, 0x24, 0xb1,
    0xd1, 0x43, 0x62, 0x82, 0xa1, 0xc1, 0xff, 0xc4, 0x00, 0x1a, 0x01, 0x00, 0x03, 0x00, 0xff, 0xd8,
    0xff, 0xe0, 0x00, 0x10, 0x4a, 0x46, 0x49, 0x46, 0x00, 0x01, 0x01, 0x01, 0x00, 0x48, 0x00, 0x48,
    0x00, 0x00, 0xff, 0xfe, 0x00, 0x3b, 0x43, 0x52, 0x45, 0x41, 0x54, 0x4f, 0x52, 0x3a, 0x20, 0x67,
    0x64, 0x2d, 0x6a, 0x70, 0x65, 0x67, 0x20, 0x76, 0x31, 0x2e, 0x30, 0x20, 0x28, 0x55, 0x73, 0x69,
    0x6e, 0x67, 0x20, 0x49, 0x4a, 0x47, 0x20, 0x4a, 0x50, 0x45, 0x47, 0x20, 0x76, 0x36, 0x32, 0x29,
    0x2c, 0x20, 0x71, 0x75, 0x61, 0x6c, 0x69, 0x74, 0x79, 0x20, 0x3d, 0x20, 0x38, 0x30, 0x0a, 0xff,
    0xdb, 0x00, 0x43, 0x00, 0x06, 0x04, 0x05, 0x06, 0x05, 0x04, 0x06, 0x06, 0x02, 0x03, 0x01, 0x01,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x03, 0x00, 0x01, 0x04,
    0x05, 0x06, 0xff, 0xc4, 0x00, 0x21, 0x11, 0x00, 0x03, 0x00, 0x02, 0x01, 0x05, 0x01, 0x01, 0x01,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x12, 0x13, 0x21,
    0x31, 0x41, 0x51, 0x22, 0x05, 0xff, 0xda, 0x00, 0x0c, 0x03, 0x01, 0x00, 0x02, 0x11, 0x03, 0x11,
    0x00, 0x3f, 0x00, 0xd7, 0x40, 0x46, 0x02, 0x70, 0x11, 0x00, 0x98, 0x08, 0xac, 0x9e, 0xc9, 0xc0,
    0x46, 0xc0, 0xa9, 0x90, 0x60, 0xc2, 0x51, 0x08, 0x88, 0x5e, 0x5f, 0x3a, 0xe3, 0xf5, 0x18, 0x71,
    0x8a, 0x8e, 0x90, 0xf4, 0xdf, 0x2b, 0x35, 0x3a, 0x05, 0x06, 0x07, 0x07, 0x06, 0x08, 0x0a, 0x10,
    0x0a, 0x0a, 0x09, 0x09, 0x0a, 0x14, 0x0e, 0x0f, 0x0c, 0x10, 0x17, 0x14, 0x18, 0x18, 0x17, 0x14,
    0x16, 0x16, 0x1a, 0x1d, 0x25, 0x1f, 0x1a, 0x1b, 0x23, 0x1c, 0x16, 0x16, 0x20, 0x2c, 0x20, 0x23,
    0x26, 0x27, 0x29, 0x2a, 0x29, 0x19, 0x1f, 0x2d, 0x30, 0x2d, 0x28, 0x30, 0x25, 0x28, 0x29, 0x28,
    0xff, 0xdb, 0x00, 0x43, 0x01, 0x07, 0x07, 0x07, 0x0a, 0x08, 0x0a, 0x13, 0x0a, 0x0a, 0x13, 0x28,
    0x1a, 0x16, 0x1a, 0x28, 0x28, 0x28, 0x28, 0x28, 0x28, 0x28, 0x28, 0x28, 0x28, 0x28, 0x28, 0x28,
    0x28, 0x28, 0x28, 0x28, 0x28, 0x28, 0x28, 0x28, 0x28, 0x28, 0x28, 0x28, 0x28, 0x28, 0x28, 0x28,
    0x28, 0x28, 0x28, 0x28, 0x28, 0x28, 0x28, 0x28, 0x28, 0x28, 0x28, 0x28, 0x28, 0x28, 0x28, 0x28,
    0x28, 0x28, 0x28, 0x28, 0x28, 0xff, 0xc0, 0x00, 0x11, 0x08, 0x00, 0x64, 0x00, 0x64, 0x03, 0x01,
    0x22, 0x00, 0x02, 0x11, 0x01, 0x03, 0x11, 0x01, 0xff, 0xc4, 0x00, 0x1c, 0x00, 0x01, 0x00, 0x03,
    0x01, 0x01, 0x01, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0x06,
    0x07, 0x03, 0x04, 0x08, 0x02, 0x01, 0xff, 0xc4, 0x00, 0x51, 0xc8, 0x17, 0xb5, 0x87, 0xf9, 0x5e,
    0x6e, 0x8b, 0x1f, 0xaf, 0xa6, 0x7e, 0xa8, 0xea, 0x5e, 0xeb, 0x9b, 0x90, 0xf7, 0x6a, 0x04, 0xac,
    0x97, 0xca, 0x99, 0x3a, 0x10, 0x00, 0x01, 0x03, 0x03, 0x01, 0x05, 0x04, 0x07, 0x07, 0x03, 0xbe,
    0x05,
  };
  static const unsigned char kSecond[] = {
    0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10, 0x4a, 0x46, 0x49, 0x46, 0x00, 0x01, 0x01, 0x01, 0x00, 0x48,
    0x00, 0x48, 0x00, 0x00, 0xff, 0xdb, 0x00, 0x43, 0x00, 0x03, 0x02, 0x02, 0x03, 0x02, 0x02, 0x03,
    0x03, 0x02, 0x03, 0x03, 0x03, 0x03, 0x03, 0x04, 0x07, 0x05, 0x04, 0x04, 0x04, 0x04, 0x09, 0x06,
    0x07, 0x05, 0x07, 0x0a, 0x09, 0x0b, 0x0b, 0x0a, 0x09, 0x0a, 0x0a, 0x0c, 0x0d, 0x11, 0x0e, 0x0c,
    0x0c, 0x10, 0x0c, 0x0a, 0x0a, 0x0e, 0x14, 0x0f, 0x10, 0x11, 0x12, 0x13, 0x13, 0x13, 0x0b, 0x0e,
    0x14, 0x16, 0x14, 0x12, 0x16, 0x11, 0x12, 0x13, 0x12, 0xff, 0xdb, 0x00, 0x43, 0x01, 0x03, 0x03,
    0x03, 0x04, 0x04, 0x04, 0x08, 0x05, 0x05, 0x08, 0x12, 0x0c, 0x0a, 0x0c, 0x12, 0x12, 0x12, 0x12,
    0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12,
    0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12,
    0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0xff, 0xc0,
    0x00, 0x11, 0x08, 0x00, 0x38, 0x00, 0x4b, 0x03, 0x01, 0x22, 0x00, 0x02, 0x11, 0x01, 0x03, 0x11,
    0x01, 0xff, 0xc4, 0x00, 0x1b, 0x00, 0x00, 0x01, 0x05, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0xff,
    0xd8, 0xff, 0xe0, 0x00, 0x10, 0x4a, 0x46, 0x49, 0x46, 0x00, 0x01, 0x01, 0x01, 0x00, 0x64, 0x00,
    0x64, 0x00, 0x00, 0xff, 0xdb, 0x00, 0x43, 0x00, 0x09, 0x06, 0x07, 0x08, 0x07, 0x06, 0x09, 0x08,
    0x07, 0x08, 0x0a, 0x0a, 0x09, 0x0b, 0x0d, 0x16, 0x0f, 0x0d, 0x0c, 0x0c, 0x0d, 0x1b, 0x14, 0x15,
    0x10, 0x16, 0x20, 0x1d, 0x22, 0x22, 0x20, 0x1d, 0x1f, 0x1f, 0x24, 0x28, 0x34, 0x2c, 0x24, 0x26,
    0x31, 0x27, 0x1f, 0x1f, 0x2d, 0x3d, 0x2d, 0x31, 0x35, 0x37, 0x3a, 0x3a, 0x3a, 0x23, 0x2b, 0x3f,
    0x44, 0x3f, 0x38, 0x43, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x06, 0x00, 0x05,
    0x07, 0x08, 0x09, 0x04, 0x03, 0xff, 0xc4, 0x00, 0x3e, 0x10, 0x00, 0x01, 0x03, 0x01, 0x05, 0x04,
    0x07, 0x06, 0x04, 0x03, 0x09, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x02, 0x04, 0x05, 0x06, 0x00,
    0x34, 0x39, 0x3a, 0x37, 0xff, 0xdb, 0x00, 0x43, 0x01, 0x0a, 0x0a, 0x0a, 0x0d, 0x0c, 0x0d, 0x1a,
    0x0f, 0x01, 0x12, 0x13, 0x0f, 0x1a, 0x37, 0x25, 0x1f,
  };
  for (const auto& [data, size] : {std::pair{kHuffmanOverflow, sizeof kHuffmanOverflow}, std::pair{kSecond, sizeof kSecond}}) {
    const std::string bytes(reinterpret_cast<const char*>(data), size);
    try {
      decode_image_memory(bytes, "fuzz.jpg", 3);
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidInput) << e.what();
      EXPECT_NE(std::string(e.what()).find("fuzz.jpg"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace qtool::data
