// The size a file would have compressed with zstd (what an app bundle or an OTA update ships):
// reported beside the file size for outputs whose zeros and repeated levels compress well (pruned
// layers, palettes). Streams the file; nothing is written.
#pragma once

#include <cstdint>
#include <string>

namespace qtool {

/// Bytes of `path` compressed by zstd at `level` (3 = the zstd command's default), one frame.
/// Throws kIo naming the file when it cannot be read, kInternal when zstd fails.
int64_t zstd_compressed_size(const std::string& path, int level = 3);

}  // namespace qtool
