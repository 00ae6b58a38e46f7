// core/hash.h
#include "qtool/core/hash.h"

#include <cstring>

namespace qtool {

uint64_t hash_bytes(const uint8_t* p, size_t n, uint64_t h) {
  constexpr uint64_t kMul = 0x9e3779b97f4a7c15ull;
  uint64_t lane[4] = {h, h ^ 0x517cc1b727220a95ull, h ^ 0x2545f4914f6cdd1dull, h ^ 0x94d049bb133111ebull};
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    for (int k = 0; k < 4; ++k) {
      uint64_t w;
      std::memcpy(&w, p + i + 8 * k, 8);
      lane[k] = (lane[k] ^ w) * kMul;
      lane[k] ^= lane[k] >> 29;
    }
  }
  uint64_t out = n;
  for (int k = 0; k < 4; ++k) {
    out = (out ^ lane[k]) * kMul;
    out ^= out >> 32;
  }
  for (; i < n; ++i) out = (out ^ p[i]) * 0x100000001b3ull;
  return out;
}

}  // namespace qtool
