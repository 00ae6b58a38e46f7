// .npz archives (ZIP of .npy members), IDX files and raw token streams.
//
// ZIP layout (APPNOTE 6.3): the End Of Central Directory record (EOCD, signature 0x06054b50)
// at the end points at the central directory, one entry (0x02014b50) per member with its
// method, CRC-32, sizes and the offset of its local header (0x04034b50). The central
// directory is authoritative (local headers may hold zeros and a trailing data descriptor),
// so members are found through it. Sizes or offsets of 0xFFFFFFFF live in the ZIP64 extra
// field (id 0x0001); numpy writes members with force_zip64, so that path matters.
#include <zlib.h>

#include <cstring>

#include "qtool/core/npy.h"
#include "qtool/data/sample_source.h"

namespace qtool::data {

namespace {

uint16_t rd16(const std::string& b, size_t o) {
  return static_cast<uint16_t>(static_cast<uint8_t>(b[o]) | (static_cast<uint8_t>(b[o + 1]) << 8));
}
uint32_t rd32(const std::string& b, size_t o) { return rd16(b, o) | (static_cast<uint32_t>(rd16(b, o + 2)) << 16); }
uint64_t rd64(const std::string& b, size_t o) { return rd32(b, o) | (static_cast<uint64_t>(rd32(b, o + 4)) << 32); }

void wr16(std::string& b, uint16_t v) {
  b.push_back(static_cast<char>(v & 0xff));
  b.push_back(static_cast<char>(v >> 8));
}
void wr32(std::string& b, uint32_t v) {
  wr16(b, static_cast<uint16_t>(v & 0xffff));
  wr16(b, static_cast<uint16_t>(v >> 16));
}

std::string inflate_raw(const std::string& in, size_t out_size, const std::string& what) {
  std::string out(out_size, '\0');
  z_stream zs{};
  if (inflateInit2(&zs, -MAX_WBITS) != Z_OK) fail(ErrorCode::kInternal, "zlib inflateInit2 failed");
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  zs.avail_in = static_cast<uInt>(in.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(out.size());
  const int rc = inflate(&zs, Z_FINISH);
  const size_t produced = zs.total_out;
  inflateEnd(&zs);
  if (rc != Z_STREAM_END || produced != out_size) {
    fail(ErrorCode::kInvalidInput, "'{}': corrupt deflate data (zlib: {})", what, zs.msg ? zs.msg : std::to_string(rc));
  }
  return out;
}

}  // namespace

std::vector<std::pair<std::string, Tensor>> read_npz(const std::string& path) {
  const std::string b = read_file(path);
  auto bad = [&](const std::string& why) -> void { fail(ErrorCode::kInvalidInput, "'{}' is not a valid .npz: {}", path, why); };
  if (b.size() < 22) bad("too short for a ZIP archive");
  // EOCD: 22 bytes + comment of up to 65535 bytes.
  size_t eocd = std::string::npos;
  for (size_t o = b.size() - 22 + 1; o-- > 0 && b.size() - o <= 22 + 65535;) {
    if (rd32(b, o) == 0x06054b50u) {
      eocd = o;
      break;
    }
  }
  if (eocd == std::string::npos) bad("no ZIP end-of-central-directory record");
  uint64_t count = rd16(b, eocd + 10);
  uint64_t cd_off = rd32(b, eocd + 16);
  if ((count == 0xffff || cd_off == 0xffffffffu) && eocd >= 20 && rd32(b, eocd - 20) == 0x07064b50u) {
    const uint64_t z64 = rd64(b, eocd - 20 + 8);
    if (z64 + 56 > b.size() || rd32(b, z64) != 0x06064b50u) bad("broken ZIP64 end record");
    count = rd64(b, z64 + 32);
    cd_off = rd64(b, z64 + 48);
  }
  std::vector<std::pair<std::string, Tensor>> out;
  size_t o = cd_off;
  for (uint64_t k = 0; k < count; ++k) {
    if (o + 46 > b.size() || rd32(b, o) != 0x02014b50u) bad("broken central directory");
    const uint16_t method = rd16(b, o + 10);
    const uint32_t crc = rd32(b, o + 16);
    uint64_t csize = rd32(b, o + 20), usize = rd32(b, o + 24);
    const uint16_t nlen = rd16(b, o + 28), xlen = rd16(b, o + 30), clen = rd16(b, o + 32);
    uint64_t loff = rd32(b, o + 42);
    if (o + 46 + nlen + xlen > b.size()) bad("truncated central directory");
    std::string name = b.substr(o + 46, nlen);
    // ZIP64 extra: present fields in order usize, csize, offset (only those that were 0xFFFFFFFF).
    for (size_t x = o + 46 + nlen; x + 4 <= o + 46 + nlen + xlen;) {
      const uint16_t id = rd16(b, x), sz = rd16(b, x + 2);
      if (id == 0x0001) {
        size_t f = x + 4;
        if (usize == 0xffffffffu && f + 8 <= x + 4 + sz) usize = rd64(b, f), f += 8;
        if (csize == 0xffffffffu && f + 8 <= x + 4 + sz) csize = rd64(b, f), f += 8;
        if (loff == 0xffffffffu && f + 8 <= x + 4 + sz) loff = rd64(b, f), f += 8;
      }
      x += 4 + sz;
    }
    o += 46 + nlen + xlen + clen;
    if (loff + 30 > b.size() || rd32(b, loff) != 0x04034b50u) bad(fmt::format("member '{}': broken local header", name));
    const size_t data = loff + 30 + rd16(b, loff + 26) + rd16(b, loff + 28);
    if (data + csize > b.size()) bad(fmt::format("member '{}' is truncated", name));
    const std::string what = path + ":" + name;
    std::string bytes;
    if (method == 0) {
      bytes = b.substr(data, csize);
    } else if (method == 8) {
      bytes = inflate_raw(b.substr(data, csize), usize, what);
    } else {
      fail(ErrorCode::kUnsupported, "'{}': ZIP compression method {} (only stored and deflate)", what, method);
    }
    const uint32_t got = static_cast<uint32_t>(
        crc32(0L, reinterpret_cast<const Bytef*>(bytes.data()), static_cast<uInt>(bytes.size())));
    if (got != crc) fail(ErrorCode::kInvalidInput, "'{}': CRC-32 mismatch (file corrupt)", what);
    if (name.size() > 4 && name.compare(name.size() - 4, 4, ".npy") == 0) name.resize(name.size() - 4);
    out.emplace_back(name, parse_npy(bytes, what));
  }
  return out;
}

void write_npz(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& arrays, bool compress) {
  std::string zip, cd;
  for (const auto& [name, t] : arrays) {
    const std::string fname = name + ".npy";
    const std::string raw = serialize_npy(t);
    const uint32_t crc =
        static_cast<uint32_t>(crc32(0L, reinterpret_cast<const Bytef*>(raw.data()), static_cast<uInt>(raw.size())));
    std::string body = raw;
    if (compress) {
      z_stream zs{};
      deflateInit2(&zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -MAX_WBITS, 8, Z_DEFAULT_STRATEGY);
      body.resize(deflateBound(&zs, static_cast<uLong>(raw.size())));
      zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(raw.data()));
      zs.avail_in = static_cast<uInt>(raw.size());
      zs.next_out = reinterpret_cast<Bytef*>(body.data());
      zs.avail_out = static_cast<uInt>(body.size());
      const int rc = deflate(&zs, Z_FINISH);
      body.resize(zs.total_out);
      deflateEnd(&zs);
      QTOOL_CHECK(rc == Z_STREAM_END, ErrorCode::kInternal, "zlib deflate failed ({})", rc);
    }
    QTOOL_CHECK(raw.size() < 0xffffffffu && zip.size() < 0xffffffffu, ErrorCode::kUnsupported,
                "'{}': arrays over 4 GB need ZIP64, which write_npz does not write", path);
    const uint32_t offset = static_cast<uint32_t>(zip.size());
    const uint16_t method = compress ? 8 : 0;
    wr32(zip, 0x04034b50u);
    wr16(zip, 20);
    wr16(zip, 0);
    wr16(zip, method);
    wr16(zip, 0);
    wr16(zip, 0x21);  // DOS time/date: 1980-01-01
    wr32(zip, crc);
    wr32(zip, static_cast<uint32_t>(body.size()));
    wr32(zip, static_cast<uint32_t>(raw.size()));
    wr16(zip, static_cast<uint16_t>(fname.size()));
    wr16(zip, 0);
    zip += fname;
    zip += body;
    wr32(cd, 0x02014b50u);
    wr16(cd, 20);
    wr16(cd, 20);
    wr16(cd, 0);
    wr16(cd, method);
    wr16(cd, 0);
    wr16(cd, 0x21);
    wr32(cd, crc);
    wr32(cd, static_cast<uint32_t>(body.size()));
    wr32(cd, static_cast<uint32_t>(raw.size()));
    wr16(cd, static_cast<uint16_t>(fname.size()));
    wr16(cd, 0);
    wr16(cd, 0);
    wr16(cd, 0);
    wr16(cd, 0);
    wr32(cd, 0);
    wr32(cd, offset);
    cd += fname;
  }
  const uint32_t cd_off = static_cast<uint32_t>(zip.size());
  zip += cd;
  wr32(zip, 0x06054b50u);
  wr16(zip, 0);
  wr16(zip, 0);
  wr16(zip, static_cast<uint16_t>(arrays.size()));
  wr16(zip, static_cast<uint16_t>(arrays.size()));
  wr32(zip, static_cast<uint32_t>(cd.size()));
  wr32(zip, cd_off);
  wr16(zip, 0);
  write_file_atomic(path, zip);
}

Tensor read_idx(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");  // reads plain files too
  if (!f) fail(ErrorCode::kIo, "cannot open '{}'", path);
  std::string b;
  char buf[1 << 16];
  int n;
  while ((n = gzread(f, buf, sizeof buf)) > 0) b.append(buf, static_cast<size_t>(n));
  const bool err = n < 0;
  gzclose(f);
  if (err) fail(ErrorCode::kInvalidInput, "'{}': corrupt gzip data", path);
  auto be32 = [&](size_t o) {
    return (static_cast<uint32_t>(static_cast<uint8_t>(b[o])) << 24) |
           (static_cast<uint32_t>(static_cast<uint8_t>(b[o + 1])) << 16) |
           (static_cast<uint32_t>(static_cast<uint8_t>(b[o + 2])) << 8) | static_cast<uint8_t>(b[o + 3]);
  };
  if (b.size() < 4 || b[0] != 0 || b[1] != 0) fail(ErrorCode::kInvalidInput, "'{}' is not an IDX file", path);
  const int code = static_cast<uint8_t>(b[2]);
  const int ndim = static_cast<uint8_t>(b[3]);
  DataType dt;
  int esize;
  switch (code) {
    case 0x08: dt = DataType::kUint8; esize = 1; break;
    case 0x09: dt = DataType::kInt8; esize = 1; break;
    case 0x0B: dt = DataType::kInt16; esize = 2; break;
    case 0x0C: dt = DataType::kInt32; esize = 4; break;
    case 0x0D: dt = DataType::kFloat; esize = 4; break;
    case 0x0E: dt = DataType::kDouble; esize = 8; break;
    default: fail(ErrorCode::kInvalidInput, "'{}': unknown IDX element type 0x{:02x}", path, code);
  }
  if (ndim < 1 || b.size() < 4 + 4 * static_cast<size_t>(ndim)) fail(ErrorCode::kInvalidInput, "'{}': truncated IDX header", path);
  Shape shape;
  for (int i = 0; i < ndim; ++i) shape.push_back(be32(4 + 4 * static_cast<size_t>(i)));
  Tensor t = Tensor::empty(dt, shape);
  const size_t off = 4 + 4 * static_cast<size_t>(ndim);
  if (b.size() - off < static_cast<size_t>(t.numel()) * esize) {
    fail(ErrorCode::kInvalidInput, "'{}': truncated IDX data ({} bytes for shape {})", path, b.size() - off,
         shape_str(shape));
  }
  uint8_t* dst = t.mutable_raw();
  for (int64_t i = 0; i < t.numel(); ++i) {  // big-endian elements
    for (int k = 0; k < esize; ++k) dst[i * esize + k] = static_cast<uint8_t>(b[off + i * esize + (esize - 1 - k)]);
  }
  return t;
}

std::vector<int32_t> read_token_stream(const std::string& path) {
  const std::string b = read_file(path);
  if (b.size() % 4 != 0) {
    fail(ErrorCode::kInvalidInput, "'{}' is not an int32 token stream: {} bytes is not a multiple of 4", path, b.size());
  }
  std::vector<int32_t> out(b.size() / 4);
  for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<int32_t>(rd32(b, 4 * i));
  return out;
}

}  // namespace qtool::data
