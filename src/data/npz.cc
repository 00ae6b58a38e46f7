// .npz archives (ZIP of .npy members), IDX files and raw token streams.
//
// ZIP layout (APPNOTE 6.3): the End Of Central Directory record (EOCD, signature 0x06054b50)
// at the end points at the central directory, one entry (0x02014b50) per member with its
// method, CRC-32, sizes and the offset of its local header (0x04034b50). The central
// directory is authoritative (local headers may hold zeros and a trailing data descriptor),
// so members are found through it. Sizes or offsets of 0xFFFFFFFF live in the ZIP64 extra
// field (id 0x0001); numpy writes members with force_zip64, so that path matters.
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <optional>

#include "qtool/core/limits.h"
#include "qtool/core/npy.h"
#include "qtool/data/sample_source.h"

namespace qtool::data {

namespace {

uint16_t rd16(std::string_view b, uint64_t o) {
  return static_cast<uint16_t>(static_cast<uint8_t>(b[o]) | (static_cast<uint8_t>(b[o + 1]) << 8));
}
uint32_t rd32(std::string_view b, uint64_t o) { return rd16(b, o) | (static_cast<uint32_t>(rd16(b, o + 2)) << 16); }
uint64_t rd64(std::string_view b, uint64_t o) { return rd32(b, o) | (static_cast<uint64_t>(rd32(b, o + 4)) << 32); }

void wr16(std::string& b, uint16_t v) {
  b.push_back(static_cast<char>(v & 0xff));
  b.push_back(static_cast<char>(v >> 8));
}
void wr32(std::string& b, uint32_t v) {
  wr16(b, static_cast<uint16_t>(v & 0xffff));
  wr16(b, static_cast<uint16_t>(v >> 16));
}

/// True when [off, off + len) lies inside a buffer of `size` bytes (no overflow for any off, len).
bool fits(uint64_t off, uint64_t len, uint64_t size) { return off <= size && len <= size - off; }

/// Deflate cannot expand more than 1032:1 (a 258-byte match costs at least 2 bits), so a member
/// declaring more than csize * 1032 bytes (plus slack for the block headers) is corrupt or hostile.
constexpr uint64_t kMaxDeflateRatio = 1032;
constexpr uint64_t kDeflateSlack = 1024;
/// zlib counts in uInt (32 bits): feed and drain it in chunks of at most 1 GiB.
constexpr uint64_t kZlibChunk = uint64_t{1} << 30;

/// CRC-32 of any number of bytes (zlib's crc32 takes a 32-bit length).
uint32_t crc32_of(const uint8_t* p, uint64_t n, uint32_t crc = 0) {
  while (n > 0) {
    const uInt chunk = static_cast<uInt>(std::min(n, kZlibChunk));
    crc = static_cast<uint32_t>(crc32(crc, p, chunk));
    p += chunk;
    n -= chunk;
  }
  return crc;
}

/// A raw deflate stream inflated piece by piece into caller-owned memory, never past the size the
/// ZIP directory declares: output space is only ever offered up to that size, and finish() fails
/// as soon as the stream would produce one byte more. Sizes are 64-bit; zlib sees <= 1 GiB chunks.
class Inflater {
 public:
  Inflater(std::string_view in, uint64_t declared, const std::string& what)
      : in_(in), declared_(declared), what_(what) {
    if (inflateInit2(&zs_, -MAX_WBITS) != Z_OK) fail(ErrorCode::kInternal, "zlib inflateInit2 failed");
  }
  ~Inflater() { inflateEnd(&zs_); }
  Inflater(const Inflater&) = delete;
  Inflater& operator=(const Inflater&) = delete;

  /// Inflates exactly `n` more bytes into `dst` (produced() + n <= the declared size).
  void read(uint8_t* dst, uint64_t n) {
    QTOOL_ASSERT(n <= declared_ - produced_);
    while (n > 0) {
      const uInt room = static_cast<uInt>(std::min(n, kZlibChunk));
      const uint64_t got = step(dst, room);
      crc_ = crc32_of(dst, got, crc_);
      dst += got;
      n -= got;
      produced_ += got;
      if (ended_ && n > 0) {
        fail(ErrorCode::kInvalidInput,
             "'{}': deflate data ends after {} bytes but the ZIP directory declares {} (file corrupt)", what_,
             produced_, declared_);
      }
    }
  }
  /// Checks that the stream ends exactly at the declared size.
  void finish() {
    while (!ended_) {
      uint8_t extra = 0;
      if (step(&extra, 1) > 0) {
        fail(ErrorCode::kInvalidInput,
             "'{}': deflate data inflates to more than the {} bytes the ZIP directory declares (file corrupt)", what_,
             declared_);
      }
    }
  }
  uint64_t produced() const { return produced_; }
  uint32_t crc() const { return crc_; }

 private:
  // One inflate call with `room` bytes of output space; returns the bytes produced.
  uint64_t step(uint8_t* dst, uInt room) {
    if (zs_.avail_in == 0 && in_pos_ < in_.size()) {
      const uint64_t chunk = std::min<uint64_t>(in_.size() - in_pos_, kZlibChunk);
      zs_.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in_.data() + in_pos_));
      zs_.avail_in = static_cast<uInt>(chunk);
      in_pos_ += chunk;
    }
    const uInt in_before = zs_.avail_in;
    zs_.next_out = dst;
    zs_.avail_out = room;
    const int rc = inflate(&zs_, Z_NO_FLUSH);
    const uint64_t got = room - zs_.avail_out;
    if (rc == Z_STREAM_END) {
      ended_ = true;
    } else if (rc != Z_OK && rc != Z_BUF_ERROR) {
      fail(ErrorCode::kInvalidInput, "'{}': corrupt deflate data (zlib: {})", what_,
           zs_.msg ? zs_.msg : std::to_string(rc));
    } else if (got == 0 && zs_.avail_in == in_before && zs_.avail_in == 0 && in_pos_ == in_.size()) {
      fail(ErrorCode::kInvalidInput,
           "'{}': deflate data is truncated: the stream stops after {} bytes without its end (the ZIP directory "
           "declares {}; file corrupt)",
           what_, produced_, declared_);
    } else if (got == 0 && zs_.avail_in == in_before) {
      fail(ErrorCode::kInvalidInput, "'{}': corrupt deflate data (no progress)", what_);
    }
    return got;
  }

  z_stream zs_{};
  std::string_view in_;
  uint64_t in_pos_ = 0;
  uint64_t declared_;
  uint64_t produced_ = 0;
  uint32_t crc_ = 0;
  bool ended_ = false;
  const std::string& what_;
};

/// One member as the central directory describes it.
struct ZipMember {
  std::string name;       ///< as stored ("x.npy")
  uint16_t method = 0;    ///< 0 stored, 8 deflate
  uint32_t crc = 0;
  uint64_t csize = 0;     ///< bytes in the archive
  uint64_t usize = 0;     ///< declared bytes after inflating
  uint64_t data = 0;      ///< offset of the member's bytes in the archive
};

/// Walks the central directory; checks every offset and size against the archive's real size and
/// each declared uncompressed size against what the member's bytes can hold.
std::vector<ZipMember> zip_members(std::string_view b, const std::string& what) {
  auto bad = [&](const std::string& why) { fail(ErrorCode::kInvalidInput, "'{}' is not a valid .npz: {}", what, why); };
  if (b.size() < 22) bad("too short for a ZIP archive");
  // EOCD: 22 bytes + comment of up to 65535 bytes.
  uint64_t eocd = std::string::npos;
  for (uint64_t o = b.size() - 22 + 1; o-- > 0 && b.size() - o <= 22 + 65535;) {
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
    if (!fits(z64, 56, b.size()) || rd32(b, z64) != 0x06064b50u) bad("broken ZIP64 end record");
    count = rd64(b, z64 + 32);
    cd_off = rd64(b, z64 + 48);
  }
  std::vector<ZipMember> out;
  uint64_t o = cd_off;
  for (uint64_t k = 0; k < count; ++k) {
    // Each entry takes at least 46 bytes, so a hostile count ends here, not in a huge loop.
    if (!fits(o, 46, b.size()) || rd32(b, o) != 0x02014b50u) bad("broken central directory");
    ZipMember m;
    m.method = rd16(b, o + 10);
    m.crc = rd32(b, o + 16);
    m.csize = rd32(b, o + 20);
    m.usize = rd32(b, o + 24);
    const uint16_t nlen = rd16(b, o + 28), xlen = rd16(b, o + 30), clen = rd16(b, o + 32);
    uint64_t loff = rd32(b, o + 42);
    if (!fits(o + 46, uint64_t{nlen} + xlen, b.size())) bad("truncated central directory");
    m.name = std::string(b.substr(o + 46, nlen));
    // ZIP64 extra: present fields in order usize, csize, offset (only those that were 0xFFFFFFFF).
    const uint64_t xend = o + 46 + nlen + xlen;
    for (uint64_t x = o + 46 + nlen; x + 4 <= xend;) {
      const uint16_t id = rd16(b, x), sz = rd16(b, x + 2);
      const uint64_t end = std::min<uint64_t>(x + 4 + sz, xend);
      if (id == 0x0001) {
        uint64_t f = x + 4;
        if (m.usize == 0xffffffffu && f + 8 <= end) m.usize = rd64(b, f), f += 8;
        if (m.csize == 0xffffffffu && f + 8 <= end) m.csize = rd64(b, f), f += 8;
        if (loff == 0xffffffffu && f + 8 <= end) loff = rd64(b, f), f += 8;
      }
      x += 4 + sz;
    }
    o += 46 + uint64_t{nlen} + xlen + clen;
    const std::string mwhat = fmt::format("member '{}'", m.name);
    if (!fits(loff, 30, b.size()) || rd32(b, loff) != 0x04034b50u) bad(mwhat + ": broken local header");
    m.data = loff + 30 + rd16(b, loff + 26) + rd16(b, loff + 28);
    if (!fits(m.data, m.csize, b.size())) {
      bad(fmt::format("{} is truncated: the directory declares {} bytes, the archive holds {} after its header", mwhat,
                      m.csize, m.data > b.size() ? 0 : b.size() - m.data));
    }
    if (m.method == 0 && m.usize != m.csize) {
      bad(fmt::format("{} is stored uncompressed but declares {} bytes unpacked and {} packed", mwhat, m.usize,
                      m.csize));
    }
    if (m.method == 8 && m.usize > m.csize * kMaxDeflateRatio + kDeflateSlack) {
      bad(fmt::format("{} declares {} bytes inflated from {} deflate bytes, more than deflate can expand (at most "
                      "1032:1)",
                      mwhat, m.usize, m.csize));
    }
    if (m.method != 0 && m.method != 8) {
      fail(ErrorCode::kUnsupported, "'{}:{}': ZIP compression method {} (only stored and deflate)", what, m.name,
           m.method);
    }
    out.push_back(std::move(m));
  }
  return out;
}

std::string array_name(std::string name) {
  if (name.size() > 4 && name.compare(name.size() - 4, 4, ".npy") == 0) name.resize(name.size() - 4);
  return name;
}

}  // namespace

void check_sample_bytes(uint64_t bytes, const std::string& what) {
  const uint64_t limit = sample_byte_limit();
  if (bytes > limit) {
    fail(ErrorCode::kInvalidInput,
         "{} needs {} bytes, over the per-sample limit of {} bytes (a quarter of --max-memory)", what, bytes, limit);
  }
}

std::vector<std::pair<std::string, Tensor>> parse_npz(std::string_view b, const std::string& what,
                                                      const NpzHeaderCheck& check) {
  const std::vector<ZipMember> members = zip_members(b, what);
  std::vector<std::string> names;
  for (const auto& m : members) names.push_back(array_name(m.name));
  std::vector<std::pair<std::string, Tensor>> out;
  uint64_t sample_bytes = 0;
  for (size_t k = 0; k < members.size(); ++k) {
    const ZipMember& m = members[k];
    const std::string mwhat = what + ":" + m.name;
    const std::string_view packed = b.substr(m.data, m.csize);
    // The .npy header comes first: parse it from the first bytes and check what it declares
    // (against the member's declared size, the limits and the caller's expectations) before the
    // data is allocated or inflated.
    std::optional<Inflater> inflater;
    std::string prefix;
    if (m.method == 0) {
      prefix = std::string(packed.substr(0, kMaxNpyHeaderBytes));
    } else {
      inflater.emplace(packed, m.usize, mwhat);
      prefix.resize(std::min<uint64_t>(m.usize, kMaxNpyHeaderBytes));
      inflater->read(reinterpret_cast<uint8_t*>(prefix.data()), prefix.size());
    }
    const NpyHeader h = parse_npy_header(prefix, mwhat);
    check_npy_data(h, m.usize - h.data_offset, mwhat);
    if (h.data_bytes != m.usize - h.data_offset) {
      fail(ErrorCode::kInvalidInput,
           "'{}': the member holds {} bytes after its header, but its array ({} of {}) takes {}: not a numpy .npz "
           "member",
           mwhat, m.usize - h.data_offset, shape_str(h.shape), dtype_name(h.dtype), h.data_bytes);
    }
    sample_bytes += h.data_bytes;
    check_sample_bytes(sample_bytes, k == 0 ? fmt::format("'{}'", mwhat)
                                            : fmt::format("'{}' with the {} array(s) before it", mwhat, k));
    if (check) check(names, k, h);

    Tensor t = Tensor::empty(h.dtype, h.shape);
    uint8_t* dst = t.mutable_raw();
    if (m.method == 0) {
      if (crc32_of(reinterpret_cast<const uint8_t*>(packed.data()), packed.size()) != m.crc) {
        fail(ErrorCode::kInvalidInput, "'{}': CRC-32 mismatch (file corrupt)", mwhat);
      }
      if (h.data_bytes) std::memcpy(dst, packed.data() + h.data_offset, h.data_bytes);
    } else {
      const uint64_t have = prefix.size() - h.data_offset;  // data bytes already inflated with the header
      if (have) std::memcpy(dst, prefix.data() + h.data_offset, have);
      inflater->read(dst + have, h.data_bytes - have);
      inflater->finish();
      if (inflater->crc() != m.crc) fail(ErrorCode::kInvalidInput, "'{}': CRC-32 mismatch (file corrupt)", mwhat);
    }
    out.emplace_back(names[k], std::move(t));
  }
  return out;
}

std::vector<std::pair<std::string, Tensor>> read_npz(const std::string& path, const NpzHeaderCheck& check) {
  return parse_npz(read_file(path), path, check);
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
  RegularFile file(path);  // refuses FIFOs and devices before gzdopen could block on them
  const uint64_t file_size = file.size();
  const int fd = file.release();
  gzFile f = gzdopen(fd, "rb");  // reads plain files too
  if (!f) {
    ::close(fd);
    fail(ErrorCode::kIo, "cannot open '{}'", path);
  }
  struct Closer {
    gzFile f;
    ~Closer() { gzclose(f); }
  } closer{f};
  // Reads up to n bytes (n may exceed INT_MAX); returns the count, fails on corrupt gzip data.
  auto read = [&](uint8_t* dst, uint64_t n) {
    uint64_t done = 0;
    while (done < n) {
      const unsigned chunk = static_cast<unsigned>(std::min<uint64_t>(n - done, uint64_t{1} << 30));
      const int r = gzread(f, dst + done, chunk);
      if (r < 0) fail(ErrorCode::kInvalidInput, "'{}': corrupt gzip data", path);
      if (r == 0) break;
      done += static_cast<uint64_t>(r);
    }
    return done;
  };
  uint8_t head[4];
  if (read(head, 4) != 4 || head[0] != 0 || head[1] != 0) fail(ErrorCode::kInvalidInput, "'{}' is not an IDX file", path);
  const int code = head[2];
  const int ndim = head[3];
  DataType dt;
  uint64_t esize;
  switch (code) {
    case 0x08: dt = DataType::kUint8; esize = 1; break;
    case 0x09: dt = DataType::kInt8; esize = 1; break;
    case 0x0B: dt = DataType::kInt16; esize = 2; break;
    case 0x0C: dt = DataType::kInt32; esize = 4; break;
    case 0x0D: dt = DataType::kFloat; esize = 4; break;
    case 0x0E: dt = DataType::kDouble; esize = 8; break;
    default: fail(ErrorCode::kInvalidInput, "'{}': unknown IDX element type 0x{:02x}", path, code);
  }
  std::vector<uint8_t> dims_be(4 * static_cast<size_t>(ndim));
  if (ndim < 1 || read(dims_be.data(), dims_be.size()) != dims_be.size()) {
    fail(ErrorCode::kInvalidInput, "'{}': truncated IDX header", path);
  }
  Shape shape;
  uint64_t numel = 1;
  bool overflow = false;
  for (int i = 0; i < ndim; ++i) {
    const uint8_t* d = &dims_be[4 * static_cast<size_t>(i)];
    const uint64_t v = (uint64_t{d[0]} << 24) | (uint64_t{d[1]} << 16) | (uint64_t{d[2]} << 8) | d[3];
    shape.push_back(static_cast<int64_t>(v));
    if (v != 0 && numel > (uint64_t{1} << 60) / v) overflow = true;  // keeps numel * 8 in range
    numel *= v;
  }
  // The dims are untrusted: compare the bytes they declare with what the file can hold (its size;
  // at most 1032x its size when gzip-compressed) and with the limits, before allocating.
  const uint64_t header = 4 + dims_be.size();
  const bool compressed = gzdirect(f) == 0;
  const uint64_t can_hold =
      compressed ? file_size * 1032 + 1024 : (file_size > header ? file_size - header : 0);
  if (overflow || numel * esize > can_hold) {
    fail(ErrorCode::kInvalidInput,
         "'{}': truncated IDX data: the header declares shape {} of {} ({} bytes) but the {}-byte file {} hold it",
         path, shape_str(shape), dtype_name(dt), overflow ? std::string("too many") : std::to_string(numel * esize),
         file_size, compressed ? "cannot" : "does not");
  }
  check_tensor_size(static_cast<int64_t>(numel), static_cast<double>(esize),
                    fmt::format("'{}': IDX data of shape {}", path, shape_str(shape)), ErrorCode::kInvalidInput);
  Tensor t = Tensor::empty(dt, shape);
  uint8_t* dst = t.mutable_raw();
  const uint64_t got = read(dst, numel * esize);
  if (got < numel * esize) {
    fail(ErrorCode::kInvalidInput, "'{}': truncated IDX data ({} bytes for shape {}, need {})", path, got,
         shape_str(shape), numel * esize);
  }
  if (esize > 1) {  // big-endian elements
    for (uint64_t i = 0; i < numel; ++i) std::reverse(dst + i * esize, dst + (i + 1) * esize);
  }
  return t;
}

std::vector<int32_t> read_token_stream(const std::string& path) {
  const RegularFile f(path);
  if (f.size() % 4 != 0) {
    fail(ErrorCode::kInvalidInput, "'{}' is not an int32 token stream: {} bytes is not a multiple of 4", path,
         f.size());
  }
  check_allocation(f.size(), fmt::format("token stream '{}'", path));
  std::vector<int32_t> out(static_cast<size_t>(f.size() / 4));
  f.read_at(0, out.data(), static_cast<size_t>(f.size()));
  if constexpr (std::endian::native == std::endian::big) {
    for (auto& v : out) v = static_cast<int32_t>(rd32(std::string_view(reinterpret_cast<const char*>(&v), 4), 0));
  }
  return out;
}

}  // namespace qtool::data
