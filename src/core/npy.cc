#include "qtool/core/npy.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <limits>

#include "qtool/core/limits.h"
#include "qtool/core/mapped_file.h"
#include "qtool/core/output_file.h"

namespace qtool {

namespace {
struct NpyType {
  const char* descr;
  DataType dtype;
};
constexpr NpyType kNpyTypes[] = {
    {"<f4", DataType::kFloat},  {"<f8", DataType::kDouble}, {"<f2", DataType::kFloat16},
    {"|i1", DataType::kInt8},   {"|u1", DataType::kUint8},  {"|b1", DataType::kBool},
    {"<i2", DataType::kInt16},  {"<u2", DataType::kUint16}, {"<i4", DataType::kInt32},
    {"<u4", DataType::kUint32}, {"<i8", DataType::kInt64},  {"<u8", DataType::kUint64},
};

std::string dict_value(std::string_view header, std::string_view key, const std::string& what) {
  std::string k(1, '\'');
  k.append(key);
  k.push_back('\'');
  size_t p = header.find(k);
  if (p == std::string_view::npos) fail(ErrorCode::kInvalidInput, "'{}': .npy header lacks '{}'", what, key);
  p = header.find(':', p + k.size());
  if (p == std::string_view::npos) fail(ErrorCode::kInvalidInput, "'{}': malformed .npy header", what);
  ++p;
  while (p < header.size() && header[p] == ' ') ++p;
  size_t e = p;
  if (p < header.size() && header[p] == '(') {
    e = header.find(')', p);
    if (e == std::string_view::npos) fail(ErrorCode::kInvalidInput, "'{}': malformed .npy shape", what);
    return std::string(header.substr(p, e - p + 1));
  }
  if (p < header.size() && header[p] == '\'') {
    e = header.find('\'', p + 1);
    if (e == std::string_view::npos) fail(ErrorCode::kInvalidInput, "'{}': malformed .npy header", what);
    return std::string(header.substr(p + 1, e - p - 1));
  }
  while (e < header.size() && header[e] != ',' && header[e] != '}') ++e;
  return std::string(header.substr(p, e - p));
}

/// Bytes per element of the .npy dtypes (all whole bytes).
uint64_t npy_element_bytes(DataType dt) { return static_cast<uint64_t>(dtype_bits(dt) / 8); }

std::string npy_what(const NpyHeader& h) {
  return fmt::format("shape {} of {}", shape_str(h.shape), dtype_name(h.dtype));
}


}  // namespace

NpyHeader parse_npy_header(std::string_view bytes, const std::string& what) {
  if (bytes.size() < 6 || bytes.substr(0, 6) != "\x93NUMPY") {
    fail(ErrorCode::kInvalidInput, "'{}': not a .npy file (bad magic)", what);
  }
  QTOOL_CHECK(bytes.size() >= 10, ErrorCode::kInvalidInput, "'{}': truncated .npy header ({} bytes)", what,
              bytes.size());
  const int major = static_cast<uint8_t>(bytes[6]);
  size_t header_len, header_start;
  if (major == 1) {
    header_len = static_cast<uint8_t>(bytes[8]) | (static_cast<size_t>(static_cast<uint8_t>(bytes[9])) << 8);
    header_start = 10;
  } else if (major == 2 || major == 3) {
    QTOOL_CHECK(bytes.size() >= 12, ErrorCode::kInvalidInput, "'{}': truncated .npy header ({} bytes)", what,
                bytes.size());
    header_len = 0;
    for (int i = 0; i < 4; ++i) header_len |= static_cast<size_t>(static_cast<uint8_t>(bytes[8 + i])) << (8 * i);
    header_start = 12;
  } else {
    fail(ErrorCode::kInvalidInput, "'{}': unsupported .npy version {}", what, major);
  }
  QTOOL_CHECK(header_len <= kMaxNpyHeaderBytes - header_start, ErrorCode::kInvalidInput,
              "'{}': .npy header of {} bytes is too long (at most {})", what, header_len,
              kMaxNpyHeaderBytes - header_start);
  QTOOL_CHECK(header_start + header_len <= bytes.size(), ErrorCode::kInvalidInput,
              "'{}': truncated .npy header (declares {} bytes, {} present)", what, header_len,
              bytes.size() - header_start);
  const std::string_view header = bytes.substr(header_start, header_len);
  const std::string descr = dict_value(header, "descr", what);
  const std::string fortran = dict_value(header, "fortran_order", what);
  const std::string shape_s = dict_value(header, "shape", what);
  QTOOL_CHECK(fortran.find("False") != std::string::npos, ErrorCode::kInvalidInput,
              "'{}': Fortran-order .npy arrays are not supported; save with np.ascontiguousarray", what);
  NpyHeader h;
  for (const auto& t : kNpyTypes) {
    std::string d = descr;
    if (d.size() == 3 && d[0] == '=') d[0] = '<';
    if (d == t.descr || (d.size() == 3 && d[0] == '<' && std::string("|") + d.substr(1) == t.descr)) h.dtype = t.dtype;
  }
  QTOOL_CHECK(h.dtype != DataType::kUndefined, ErrorCode::kInvalidInput, "'{}': unsupported .npy dtype '{}'", what,
              descr);
  QTOOL_CHECK(shape_s.size() >= 2 && shape_s.front() == '(' && shape_s.back() == ')', ErrorCode::kInvalidInput,
              "'{}': bad .npy shape '{}'", what, shape_s);
  {
    const std::string s = shape_s.substr(1, shape_s.size() - 2);
    size_t p = 0;
    while (p < s.size()) {
      while (p < s.size() && (s[p] == ' ' || s[p] == ',')) ++p;
      if (p >= s.size()) break;
      size_t e = p;
      while (e < s.size() && s[e] != ',') ++e;
      std::string tok = s.substr(p, e - p);
      while (!tok.empty() && tok.back() == ' ') tok.pop_back();
      if (!tok.empty() && tok.back() == 'L') tok.pop_back();  // Python 2 longs: (3L, 4L)
      int64_t d = 0;
      const auto [ptr, ec] = std::from_chars(tok.data(), tok.data() + tok.size(), d);
      if (ec != std::errc() || ptr != tok.data() + tok.size()) {
        fail(ErrorCode::kInvalidInput, "'{}': bad .npy shape '{}'", what, shape_s);
      }
      QTOOL_CHECK(d >= 0, ErrorCode::kInvalidInput, "'{}': negative dimension in .npy shape '{}'", what, shape_s);
      h.shape.push_back(d);
      p = e;
    }
  }
  h.numel = 1;
  for (int64_t d : h.shape) {
    if (d != 0 && h.numel > std::numeric_limits<int64_t>::max() / d) {
      fail(ErrorCode::kInvalidInput, "'{}': .npy shape {} has too many elements", what, shape_s);
    }
    h.numel *= d;
  }
  const uint64_t esize = npy_element_bytes(h.dtype);
  QTOOL_CHECK(static_cast<uint64_t>(h.numel) <= std::numeric_limits<uint64_t>::max() / esize,
              ErrorCode::kInvalidInput, "'{}': .npy shape {} has too many elements", what, shape_s);
  h.data_bytes = static_cast<uint64_t>(h.numel) * esize;
  h.data_offset = header_start + header_len;
  return h;
}

void check_npy_data(const NpyHeader& h, uint64_t available, const std::string& what) {
  if (h.data_bytes > available) {
    fail(ErrorCode::kInvalidInput,
         "'{}': .npy data is truncated: the header declares {} ({} bytes) but only {} bytes of data are present",
         what, npy_what(h), h.data_bytes, available);
  }
  check_tensor_size(h.numel, static_cast<double>(npy_element_bytes(h.dtype)),
                    fmt::format("'{}': .npy array of {}", what, npy_what(h)), ErrorCode::kInvalidInput);
}

NpyHeader read_npy_header(const std::string& path) {
  const RegularFile f(path);
  const NpyHeader h = parse_npy_header(f.read_prefix(kMaxNpyHeaderBytes), path);
  check_npy_data(h, f.size() - h.data_offset, path);
  return h;
}

Tensor parse_npy(std::string_view bytes, const std::string& what) {
  const NpyHeader h = parse_npy_header(bytes, what);
  check_npy_data(h, bytes.size() - h.data_offset, what);
  Tensor t = Tensor::empty(h.dtype, h.shape);
  if (h.data_bytes) std::memcpy(t.mutable_raw(), bytes.data() + h.data_offset, h.data_bytes);
  return t;
}

Tensor read_npy(const std::string& path) {
  const RegularFile f(path);
  const NpyHeader h = parse_npy_header(f.read_prefix(kMaxNpyHeaderBytes), path);
  check_npy_data(h, f.size() - h.data_offset, path);
  Tensor t = Tensor::empty(h.dtype, h.shape);
  if (h.data_bytes) f.read_at(h.data_offset, t.mutable_raw(), h.data_bytes);
  return t;
}

std::string serialize_npy(const Tensor& t) {
  const char* descr = nullptr;
  for (const auto& x : kNpyTypes) {
    if (x.dtype == t.dtype()) descr = x.descr;
  }
  QTOOL_CHECK(descr != nullptr, ErrorCode::kUnsupported, "cannot write a {} tensor as .npy", dtype_name(t.dtype()));
  std::string shape = "(";
  for (size_t i = 0; i < t.rank(); ++i) shape += std::to_string(t.shape()[i]) + (t.rank() == 1 ? "," : i + 1 < t.rank() ? ", " : "");
  shape += ")";
  std::string header = fmt::format("{{'descr': '{}', 'fortran_order': False, 'shape': {}, }}", descr, shape);
  const size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::string out = "\x93NUMPY";
  out += '\x01';
  out += '\x00';
  out += static_cast<char>(header.size() & 0xff);
  out += static_cast<char>((header.size() >> 8) & 0xff);
  out += header;
  out.append(reinterpret_cast<const char*>(t.raw()), t.nbytes());
  return out;
}

void write_npy(const std::string& path, const Tensor& t) { write_file_atomic(path, serialize_npy(t)); }

RegularFile::RegularFile(const std::string& path) : path_(path) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
  fd_ = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd_ < 0) fail(ErrorCode::kIo, "cannot open '{}': {}", path, std::strerror(errno));
  struct stat st {};
  if (::fstat(fd_, &st) != 0) {
    const int err = errno;
    ::close(fd_);
    fail(ErrorCode::kIo, "cannot stat '{}': {}", path, std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd_);
    if (S_ISDIR(st.st_mode)) fail(ErrorCode::kIo, "'{}' is a directory, not a file", path);
    fail(ErrorCode::kIo, "'{}' is {}; only regular files can be read", path, non_regular_file_kind(st.st_mode));
  }
  size_ = static_cast<uint64_t>(st.st_size);
}

RegularFile::~RegularFile() {
  if (fd_ >= 0) ::close(fd_);
}

void RegularFile::read_at(uint64_t offset, void* dst, size_t n) const {
  auto* out = static_cast<char*>(dst);
  while (n > 0) {
    const size_t chunk = std::min<size_t>(n, size_t{1} << 30);
    const ssize_t r = ::pread(fd_, out, chunk, static_cast<off_t>(offset));
    if (r < 0) {
      if (errno == EINTR) continue;
      fail(ErrorCode::kIo, "cannot read '{}': {}", path_, std::strerror(errno));
    }
    if (r == 0) fail(ErrorCode::kIo, "cannot read '{}': the file is shorter than expected (did it change?)", path_);
    out += r;
    offset += static_cast<uint64_t>(r);
    n -= static_cast<size_t>(r);
  }
}

std::string RegularFile::read_prefix(size_t max_bytes) const {
  std::string s(static_cast<size_t>(std::min<uint64_t>(size_, max_bytes)), '\0');
  read_at(0, s.data(), s.size());
  return s;
}

int RegularFile::release() {
  const int fd = fd_;
  fd_ = -1;
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags >= 0) ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  return fd;
}

std::string read_file(const std::string& path) {
  const RegularFile f(path);
  check_allocation(f.size(), fmt::format("reading '{}'", path));
  std::string s(static_cast<size_t>(f.size()), '\0');
  f.read_at(0, s.data(), s.size());
  return s;
}

void write_file_atomic(const std::string& path, std::string_view bytes) {
  // core/output_file.h: temporary file beside the target, removed on error or Ctrl-C, never
  // renamed over a protected input.
  AtomicFile f(path);
  f.write_all(bytes.data(), bytes.size());
  f.commit();
}

}  // namespace qtool
