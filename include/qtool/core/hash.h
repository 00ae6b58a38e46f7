// A fast 64-bit hash of bytes, for in-process identity checks (duplicate samples, cache keys of
// one run); never stored in a file, so it may change between versions.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace qtool {

/// A 64-bit hash of n bytes continuing from h: four independent lanes of 8-byte words, each
/// xor-multiply-xorshift mixed, so that a 700 KB image costs about 0.1 ms rather than a byte-wise
/// FNV's 1.2 ms.
uint64_t hash_bytes(const uint8_t* p, size_t n, uint64_t h);

/// hash_bytes of a string's bytes.
inline uint64_t hash_string(std::string_view s, uint64_t h) {
  return hash_bytes(reinterpret_cast<const uint8_t*>(s.data()), s.size(), h);
}

/// hash_bytes of a value's object representation (integers and floats).
template <typename T>
uint64_t hash_value(const T& v, uint64_t h) {
  return hash_bytes(reinterpret_cast<const uint8_t*>(&v), sizeof(T), h);
}

}  // namespace qtool
