#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <vector>

#include "qtool/core/dtype.h"
#include "qtool/core/error.h"
#include "qtool/core/npy.h"
#include "qtool/core/tensor.h"
#include "test_util.h"

namespace qtool {
namespace {

TEST(DType, PackedRoundTrip4And2Bit) {
  uint8_t buf[4] = {0, 0, 0, 0};
  const int32_t vals4[] = {-8, 7, -1, 3, 0, -5};
  for (int i = 0; i < 6; ++i) packed_set(buf, i, 4, vals4[i]);
  // First element in the low nibble: -8 -> 0x8, 7 -> 0x7 => byte 0x78.
  EXPECT_EQ(buf[0], 0x78);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(packed_get(buf, i, 4, true), vals4[i]);
  uint8_t b2 = 0;
  const int32_t vals2[] = {-2, 1, -1, 0};
  for (int i = 0; i < 4; ++i) packed_set(&b2, i, 2, vals2[i]);
  // -2 -> 0b10 (bits 0-1), 1 -> 0b01 (bits 2-3), -1 -> 0b11 (bits 4-5), 0 -> 0b00.
  EXPECT_EQ(b2, 0b00110110);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(packed_get(&b2, i, 2, true), vals2[i]);
  EXPECT_EQ(packed_get(&b2, 0, 2, false), 2);
}

TEST(DType, RangesAndSizes) {
  int64_t lo, hi;
  dtype_int_range(DataType::kInt4, &lo, &hi);
  EXPECT_EQ(lo, -8);
  EXPECT_EQ(hi, 7);
  dtype_int_range(DataType::kUint2, &lo, &hi);
  EXPECT_EQ(lo, 0);
  EXPECT_EQ(hi, 3);
  EXPECT_EQ(dtype_storage_bytes(DataType::kInt4, 5), 3u);
  EXPECT_EQ(dtype_storage_bytes(DataType::kInt2, 5), 2u);
  EXPECT_EQ(dtype_storage_bytes(DataType::kFloat, 5), 20u);
  EXPECT_EQ(static_cast<int>(DataType::kInt2), 26);
}

TEST(DType, HalfConversions) {
  EXPECT_EQ(float_to_half(1.0f), 0x3c00);
  EXPECT_EQ(float_to_half(-2.0f), 0xc000);
  EXPECT_EQ(float_to_half(65504.0f), 0x7bff);
  EXPECT_EQ(float_to_half(1e6f), 0x7c00);
  EXPECT_EQ(float_to_half(5.9604645e-08f), 0x0001);  // smallest subnormal
  EXPECT_FLOAT_EQ(half_to_float(0x3555), 0.333251953125f);
  EXPECT_FLOAT_EQ(half_to_float(0x0001), 5.9604645e-08f);
  for (uint32_t h = 0; h < 0x7c00; h += 7) EXPECT_EQ(float_to_half(half_to_float(h)), h) << h;
  EXPECT_EQ(float_to_bf16(1.0f), 0x3f80);
  EXPECT_FLOAT_EQ(bf16_to_float(0x4049), 3.140625f);
}

TEST(Error, ContextReadsOutermostFirst) {
  try {
    with_context("while loading 'm.onnx'", [] {
      with_context("in node 'Conv_1' (Conv)", [] { fail(ErrorCode::kInvalidModel, "bad weight '{}'", "W"); });
    });
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "while loading 'm.onnx': in node 'Conv_1' (Conv): bad weight 'W'");
    EXPECT_EQ(exit_code_for(e.code()), exit_code::kBadInput);
  }
  EXPECT_EQ(exit_code_for(ErrorCode::kInternal), 1);
  EXPECT_EQ(exit_code_for(ErrorCode::kQualityGate), 3);
}

TEST(Tensor, CopyOnWriteProtectsSharedStorage) {
  Tensor a = Tensor::from_vector<float>({2, 2}, {1, 2, 3, 4});
  Tensor b = a.reshaped({4});
  b.mutable_data<float>()[0] = 42;
  EXPECT_EQ(a.data<float>()[0], 1.0f);
  EXPECT_EQ(b.data<float>()[0], 42.0f);
  EXPECT_THROW(a.reshaped({3}), Error);
}

TEST(Tensor, CastSaturatesPackedAndTruncatesFloats) {
  Tensor f = Tensor::from_vector<float>({4}, {-9.7f, 2.9f, 7.5f, -0.5f});
  Tensor i4 = f.cast(DataType::kInt4);
  EXPECT_EQ(i4.get_as_double(0), -8);
  EXPECT_EQ(i4.get_as_double(1), 2);
  EXPECT_EQ(i4.get_as_double(2), 7);
  EXPECT_EQ(i4.get_as_double(3), 0);
  Tensor h = f.cast(DataType::kFloat16);
  EXPECT_NEAR(h.get_as_double(1), 2.9, 2e-3);
}

TEST(Npy, RoundTripAndErrors) {
  testing::TempDir dir;
  Tensor t = Tensor::from_vector<int64_t>({2, 3}, {1, -2, 3, 4, 5, 1LL << 40});
  write_npy(dir.file("a.npy"), t);
  Tensor r = read_npy(dir.file("a.npy"));
  EXPECT_TRUE(tensors_equal(t, r));
  std::string bytes = read_file(dir.file("a.npy"));
  EXPECT_EQ(bytes.size() % 64, 48u % 64 == 0 ? 0u : bytes.size() % 64);  // header padded to 64
  EXPECT_EQ((bytes.size() - 48) % 64, 0u);
  write_file_atomic(dir.file("b.npy"), bytes.substr(0, bytes.size() - 5));
  try {
    read_npy(dir.file("b.npy"));
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("truncated"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("b.npy"), std::string::npos) << e.what();
  }
  EXPECT_THROW(read_npy(dir.file("missing.npy")), Error);
}

/// Hands out buffers from make_heap_buffer of its own (outside any source) and counts them.
class CountingSource : public BufferSource {
 public:
  std::shared_ptr<Buffer> allocate(size_t bytes) override {
    ++calls;
    if (bytes < 100) return nullptr;  // falls back to the plain heap
    ScopedBufferSource none(nullptr);
    auto b = make_heap_buffer(bytes, false);
    std::memset(b->mutable_data(), 0xAB, bytes);  // garbage that zero_fill must clear
    handed.push_back(b->data());
    return b;
  }
  int calls = 0;
  std::vector<const uint8_t*> handed;
};

TEST(BufferSource, ScopedSourceServesMakeHeapBufferAndRestores) {
  CountingSource outer, inner;
  {
    ScopedBufferSource a(&outer);
    auto b1 = make_heap_buffer(400, true);
    ASSERT_EQ(outer.calls, 1);
    ASSERT_EQ(outer.handed.size(), 1u);
    EXPECT_EQ(b1->data(), outer.handed[0]);
    for (size_t i = 0; i < 400; ++i) ASSERT_EQ(b1->data()[i], 0) << i;  // zero_fill honoured
    {
      ScopedBufferSource b(&inner);
      Tensor t(DataType::kFloat, {50});  // 200 bytes, through make_heap_buffer
      EXPECT_EQ(inner.calls, 1);
      EXPECT_EQ(t.data<float>()[49], 0.0f);
    }
    make_heap_buffer(10, true);  // the source declines small blocks: plain heap
    EXPECT_EQ(outer.calls, 2);
    EXPECT_EQ(outer.handed.size(), 1u);
  }
  make_heap_buffer(400, true);  // uninstalled
  EXPECT_EQ(outer.calls, 2);
  EXPECT_EQ(inner.calls, 1);
}

}  // namespace
}  // namespace qtool
