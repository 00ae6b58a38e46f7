// zstd-compressed size of a file (see compressed_size.h).
#include "qtool/core/compressed_size.h"

#include <cstdio>
#include <memory>
#include <vector>

#include <zstd.h>

#include "qtool/core/error.h"

namespace qtool {

int64_t zstd_compressed_size(const std::string& path, int level) {
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  QTOOL_CHECK(f != nullptr, ErrorCode::kIo, "cannot read '{}' to measure its compressed size", path);
  std::unique_ptr<ZSTD_CCtx, size_t (*)(ZSTD_CCtx*)> cctx(ZSTD_createCCtx(), &ZSTD_freeCCtx);
  QTOOL_CHECK(cctx != nullptr, ErrorCode::kInternal, "zstd: cannot create a compression context");
  ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_compressionLevel, level);
  std::vector<char> in(ZSTD_CStreamInSize()), out(ZSTD_CStreamOutSize());
  int64_t total = 0;
  for (bool last = false; !last;) {
    const size_t n = std::fread(in.data(), 1, in.size(), f.get());
    QTOOL_CHECK(!std::ferror(f.get()), ErrorCode::kIo, "error reading '{}'", path);
    last = n < in.size();
    ZSTD_inBuffer ib{in.data(), n, 0};
    for (bool done = false; !done;) {
      ZSTD_outBuffer ob{out.data(), out.size(), 0};
      const size_t rem = ZSTD_compressStream2(cctx.get(), &ob, &ib, last ? ZSTD_e_end : ZSTD_e_continue);
      QTOOL_CHECK(!ZSTD_isError(rem), ErrorCode::kInternal, "zstd: {}", ZSTD_getErrorName(rem));
      total += static_cast<int64_t>(ob.pos);
      done = last ? rem == 0 : ib.pos == ib.size;
    }
  }
  return total;
}

}  // namespace qtool
