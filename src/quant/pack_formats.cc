// Packing of quantized levels into ONNX sub-byte tensors and MatMulNBits blobs.
// Each layout has a plain scalar reference (one element at a time through packed_set) and the
// byte-at-a-time path qtool uses; tests compare the two bit for bit.
#include <cstring>

#include "qtool/core/error.h"
#include "qtool/quant/format.h"

namespace qtool::quant {
namespace {

void check_bits(int bits) {
  QTOOL_CHECK(bits == 2 || bits == 4 || bits == 8, ErrorCode::kInternal, "packing {} bits", bits);
}

}  // namespace

std::vector<uint8_t> pack_onnx_reference(std::span<const int32_t> levels, int bits) {
  check_bits(bits);
  const int64_t n = static_cast<int64_t>(levels.size());
  std::vector<uint8_t> out((n * bits + 7) / 8, 0);
  if (bits == 8) {
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<uint8_t>(levels[i]);
    return out;
  }
  for (int64_t i = 0; i < n; ++i) packed_set(out.data(), i, bits, levels[i]);
  return out;
}

std::vector<uint8_t> pack_onnx(std::span<const int32_t> levels, int bits) {
  check_bits(bits);
  const int64_t n = static_cast<int64_t>(levels.size());
  const int per = 8 / bits;
  const uint32_t mask = (1u << bits) - 1u;
  std::vector<uint8_t> out((n * bits + 7) / 8);
  const int64_t full = n / per;
  const int32_t* src = levels.data();
  for (int64_t b = 0; b < full; ++b, src += per) {
    uint32_t byte = 0;
    for (int j = 0; j < per; ++j) byte |= (static_cast<uint32_t>(src[j]) & mask) << (j * bits);
    out[b] = static_cast<uint8_t>(byte);
  }
  if (full * per < n) {
    uint32_t byte = 0;
    for (int64_t j = 0; full * per + j < n; ++j)
      byte |= (static_cast<uint32_t>(src[j]) & mask) << (j * bits);
    out[full] = static_cast<uint8_t>(byte);
  }
  return out;
}

std::vector<int32_t> unpack_onnx(std::span<const uint8_t> packed, int64_t n, int bits, bool is_signed) {
  check_bits(bits);
  QTOOL_CHECK(static_cast<int64_t>(packed.size()) * 8 >= n * bits, ErrorCode::kInternal,
              "unpack: {} bytes for {} elements of {} bits", packed.size(), n, bits);
  std::vector<int32_t> out(n);
  for (int64_t i = 0; i < n; ++i) {
    if (bits == 8) out[i] = is_signed ? static_cast<int8_t>(packed[i]) : packed[i];
    else out[i] = packed_get(packed.data(), i, bits, is_signed);
  }
  return out;
}

std::vector<uint8_t> pack_matmulnbits_reference(std::span<const int32_t> levels, int64_t rows, int64_t cols,
                                                int bits, int64_t block_size, int32_t pad_code) {
  check_bits(bits);
  QTOOL_CHECK(block_size > 0 && block_size * bits % 8 == 0, ErrorCode::kInternal, "MatMulNBits block {}",
              block_size);
  QTOOL_CHECK(static_cast<int64_t>(levels.size()) == rows * cols, ErrorCode::kInternal, "MatMulNBits levels");
  const int64_t kb = (cols + block_size - 1) / block_size;
  const int64_t blob = block_size * bits / 8;
  std::vector<uint8_t> out(rows * kb * blob, 0);
  for (int64_t r = 0; r < rows; ++r) {
    uint8_t* row = out.data() + r * kb * blob;
    for (int64_t k = 0; k < kb * block_size; ++k) {
      const int32_t code = k < cols ? levels[r * cols + k] : pad_code;
      if (bits == 8) row[k] = static_cast<uint8_t>(code);
      else packed_set(row, k, bits, code);  // element k of the row: block k/bs, byte (k%bs)*bits/8
    }
  }
  return out;
}

std::vector<uint8_t> pack_matmulnbits(std::span<const int32_t> levels, int64_t rows, int64_t cols, int bits,
                                      int64_t block_size, int32_t pad_code) {
  check_bits(bits);
  QTOOL_CHECK(block_size > 0 && block_size * bits % 8 == 0, ErrorCode::kInternal, "MatMulNBits block {}",
              block_size);
  QTOOL_CHECK(static_cast<int64_t>(levels.size()) == rows * cols, ErrorCode::kInternal, "MatMulNBits levels");
  const int64_t kb = (cols + block_size - 1) / block_size;
  const int64_t padded = kb * block_size;
  const int64_t row_bytes = padded * bits / 8;
  std::vector<uint8_t> out(rows * row_bytes);
  std::vector<int32_t> row_codes(padded, pad_code);
  for (int64_t r = 0; r < rows; ++r) {
    std::memcpy(row_codes.data(), levels.data() + r * cols, cols * sizeof(int32_t));
    std::vector<uint8_t> packed = pack_onnx(row_codes, bits);
    std::memcpy(out.data() + r * row_bytes, packed.data(), row_bytes);
  }
  return out;
}

std::vector<int32_t> unpack_matmulnbits(std::span<const uint8_t> blob, int64_t rows, int64_t cols, int bits,
                                        int64_t block_size) {
  check_bits(bits);
  const int64_t kb = (cols + block_size - 1) / block_size;
  const int64_t row_bytes = kb * block_size * bits / 8;
  QTOOL_CHECK(static_cast<int64_t>(blob.size()) == rows * row_bytes, ErrorCode::kInternal, "MatMulNBits blob size");
  std::vector<int32_t> out(rows * cols);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < cols; ++k)
      out[r * cols + k] = bits == 8 ? blob[r * row_bytes + k] : packed_get(blob.data() + r * row_bytes, k, bits, false);
  return out;
}

std::vector<uint8_t> pack_matmulnbits_zero_points(std::span<const int32_t> zps, int64_t rows, int64_t k_blocks,
                                                  int bits) {
  check_bits(bits);
  QTOOL_CHECK(static_cast<int64_t>(zps.size()) == rows * k_blocks, ErrorCode::kInternal, "zero points size");
  const int64_t row_bytes = (k_blocks * bits + 7) / 8;
  std::vector<uint8_t> out(rows * row_bytes, 0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t b = 0; b < k_blocks; ++b) {
      if (bits == 8) out[r * row_bytes + b] = static_cast<uint8_t>(zps[r * k_blocks + b]);
      else packed_set(out.data() + r * row_bytes, b, bits, zps[r * k_blocks + b]);
    }
  return out;
}

}  // namespace qtool::quant
