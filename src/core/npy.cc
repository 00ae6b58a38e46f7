#include "qtool/core/npy.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

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
  if (p == std::string_view::npos) fail(ErrorCode::kInvalidInput, "{}: .npy header lacks '{}'", what, key);
  p = header.find(':', p + k.size());
  if (p == std::string_view::npos) fail(ErrorCode::kInvalidInput, "{}: malformed .npy header", what);
  ++p;
  while (p < header.size() && header[p] == ' ') ++p;
  size_t e = p;
  if (p < header.size() && header[p] == '(') {
    e = header.find(')', p);
    if (e == std::string_view::npos) fail(ErrorCode::kInvalidInput, "{}: malformed .npy shape", what);
    return std::string(header.substr(p, e - p + 1));
  }
  if (p < header.size() && header[p] == '\'') {
    e = header.find('\'', p + 1);
    if (e == std::string_view::npos) fail(ErrorCode::kInvalidInput, "{}: malformed .npy header", what);
    return std::string(header.substr(p + 1, e - p - 1));
  }
  while (e < header.size() && header[e] != ',' && header[e] != '}') ++e;
  return std::string(header.substr(p, e - p));
}
}  // namespace

Tensor parse_npy(std::string_view bytes, const std::string& what) {
  if (bytes.size() < 10 || bytes.substr(0, 6) != "\x93NUMPY") {
    fail(ErrorCode::kInvalidInput, "{}: not a .npy file (bad magic)", what);
  }
  const int major = static_cast<uint8_t>(bytes[6]);
  size_t header_len, header_start;
  if (major == 1) {
    header_len = static_cast<uint8_t>(bytes[8]) | (static_cast<size_t>(static_cast<uint8_t>(bytes[9])) << 8);
    header_start = 10;
  } else if (major == 2 || major == 3) {
    QTOOL_CHECK(bytes.size() >= 12, ErrorCode::kInvalidInput, "{}: truncated .npy header", what);
    header_len = 0;
    for (int i = 0; i < 4; ++i) header_len |= static_cast<size_t>(static_cast<uint8_t>(bytes[8 + i])) << (8 * i);
    header_start = 12;
  } else {
    fail(ErrorCode::kInvalidInput, "{}: unsupported .npy version {}", what, major);
  }
  QTOOL_CHECK(header_start + header_len <= bytes.size(), ErrorCode::kInvalidInput, "{}: truncated .npy header",
              what);
  const std::string_view header = bytes.substr(header_start, header_len);
  const std::string descr = dict_value(header, "descr", what);
  const std::string fortran = dict_value(header, "fortran_order", what);
  const std::string shape_s = dict_value(header, "shape", what);
  QTOOL_CHECK(fortran.find("False") != std::string::npos, ErrorCode::kInvalidInput,
              "{}: Fortran-order .npy arrays are not supported; save with np.ascontiguousarray", what);
  DataType dt = DataType::kUndefined;
  for (const auto& t : kNpyTypes) {
    std::string d = descr;
    if (d.size() == 3 && d[0] == '=') d[0] = '<';
    if (d == t.descr || (d.size() == 3 && d[0] == '<' && std::string("|") + d.substr(1) == t.descr)) dt = t.dtype;
  }
  QTOOL_CHECK(dt != DataType::kUndefined, ErrorCode::kInvalidInput, "{}: unsupported .npy dtype '{}'", what, descr);
  Shape shape;
  {
    std::string s = shape_s.substr(1, shape_s.size() - 2);
    size_t p = 0;
    while (p < s.size()) {
      while (p < s.size() && (s[p] == ' ' || s[p] == ',')) ++p;
      if (p >= s.size()) break;
      size_t e = p;
      while (e < s.size() && s[e] != ',') ++e;
      std::string tok = s.substr(p, e - p);
      while (!tok.empty() && tok.back() == ' ') tok.pop_back();
      try {
        shape.push_back(std::stoll(tok));
      } catch (const std::exception&) {
        fail(ErrorCode::kInvalidInput, "{}: bad .npy shape '{}'", what, shape_s);
      }
      p = e;
    }
  }
  Tensor t = Tensor::empty(dt, shape);
  const size_t data_start = header_start + header_len;
  QTOOL_CHECK(bytes.size() - data_start >= t.nbytes(), ErrorCode::kInvalidInput,
              "{}: .npy data is truncated ({} bytes for shape {} of {}, need {})", what, bytes.size() - data_start,
              shape_str(shape), dtype_name(dt), t.nbytes());
  if (t.nbytes()) std::memcpy(t.mutable_raw(), bytes.data() + data_start, t.nbytes());
  return t;
}

Tensor read_npy(const std::string& path) { return parse_npy(read_file(path), path); }

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

std::string read_file(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) fail(ErrorCode::kIo, "'{}' is a directory, not a file", path);
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(ErrorCode::kIo, "cannot open '{}': {}", path, std::strerror(errno));
  std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (f.bad()) fail(ErrorCode::kIo, "cannot read '{}'", path);
  return s;
}

void write_file_atomic(const std::string& path, std::string_view bytes) {
  namespace fs = std::filesystem;
  const fs::path target(path);
  const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  std::random_device rd;
  const std::string tmp = (dir / fmt::format(".{}.tmp{:08x}", target.filename().string(), rd())).string();
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) fail(ErrorCode::kIo, "cannot create '{}': {}", tmp, std::strerror(errno));
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t w = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (w < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      fail(ErrorCode::kIo, "cannot write '{}': {}", path, std::strerror(err));
    }
    done += static_cast<size_t>(w);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    ::unlink(tmp.c_str());
    fail(ErrorCode::kIo, "cannot write '{}': {}", path, std::strerror(errno));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    fail(ErrorCode::kIo, "cannot move output into place at '{}': {}", path, std::strerror(err));
  }
}

}  // namespace qtool
