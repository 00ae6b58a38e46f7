// Tensor: a typed, shaped view of a byte buffer.
//
// Storage is shared (std::shared_ptr<Buffer>) so that reshapes, initializers and
// memory-mapped external data are never copied. Writing through mutable_*() is
// copy-on-write: if the buffer is read-only (a file mapping) or shared with another
// tensor, it is first copied, so a kernel can never corrupt a model's weights.
// Sub-byte types (int4/uint4/int2/uint2) are stored packed, first element in the
// lowest bits, exactly as ONNX stores them.
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "qtool/core/dtype.h"
#include "qtool/core/error.h"

namespace qtool {

using Shape = std::vector<int64_t>;

/// Number of elements of a shape (1 for a scalar). Throws kInvalidModel on negative dims or overflow.
int64_t shape_numel(const Shape& shape);
/// "[1,3,224,224]".
std::string shape_str(const Shape& shape);

/// Bytes that a tensor points into. The owner decides the lifetime (heap, mmap).
class Buffer {
 public:
  virtual ~Buffer() = default;
  virtual const uint8_t* data() const = 0;
  /// nullptr for read-only storage such as a file mapping.
  virtual uint8_t* mutable_data() = 0;
  virtual size_t size() const = 0;
};

/// A 64-byte aligned heap allocation. zero_fill=false leaves it uninitialised.
std::shared_ptr<Buffer> make_heap_buffer(size_t bytes, bool zero_fill = true);

/// A source of heap buffers that make_heap_buffer uses on the current thread while installed
/// (see ScopedBufferSource). The executor installs one that recycles the buffers of dead
/// intermediates across runs, so large blocks are not returned to the OS and page-faulted (and
/// zeroed by the kernel) in again on every run. allocate() returns a buffer of at least `bytes`
/// bytes (size() == bytes), 64-byte aligned, uninitialised; it may return nullptr to fall back to
/// a plain heap allocation. A buffer it hands out must stay valid for as long as anyone holds it,
/// independently of the source's own lifetime.
class BufferSource {
 public:
  virtual ~BufferSource() = default;
  virtual std::shared_ptr<Buffer> allocate(size_t bytes) = 0;
};

/// RAII: makes `source` the current thread's BufferSource for make_heap_buffer until destroyed,
/// then restores the previous one (nesting is fine). nullptr uninstalls for the scope.
class ScopedBufferSource {
 public:
  explicit ScopedBufferSource(BufferSource* source);
  ~ScopedBufferSource();
  ScopedBufferSource(const ScopedBufferSource&) = delete;
  ScopedBufferSource& operator=(const ScopedBufferSource&) = delete;

 private:
  BufferSource* previous_;
};

/// Maps the C++ storage type of each DataType (float16/bfloat16 as uint16_t, bool as uint8_t or bool).
template <typename T>
bool storage_type_matches(DataType t) {
  if constexpr (std::is_same_v<T, float>) return t == DataType::kFloat;
  else if constexpr (std::is_same_v<T, double>) return t == DataType::kDouble;
  else if constexpr (std::is_same_v<T, int64_t>) return t == DataType::kInt64;
  else if constexpr (std::is_same_v<T, uint64_t>) return t == DataType::kUint64;
  else if constexpr (std::is_same_v<T, int32_t>) return t == DataType::kInt32;
  else if constexpr (std::is_same_v<T, uint32_t>) return t == DataType::kUint32;
  else if constexpr (std::is_same_v<T, int16_t>) return t == DataType::kInt16;
  else if constexpr (std::is_same_v<T, uint16_t>)
    return t == DataType::kUint16 || t == DataType::kFloat16 || t == DataType::kBFloat16;
  else if constexpr (std::is_same_v<T, int8_t>) return t == DataType::kInt8;
  else if constexpr (std::is_same_v<T, uint8_t>) return dtype_bits(t) <= 8 && t != DataType::kInt8;
  else if constexpr (std::is_same_v<T, bool>) return t == DataType::kBool;
  else return false;
}

/// The DataType whose storage is T (uint16_t -> kUint16, bool -> kBool).
template <typename T>
constexpr DataType dtype_of() {
  if constexpr (std::is_same_v<T, float>) return DataType::kFloat;
  else if constexpr (std::is_same_v<T, double>) return DataType::kDouble;
  else if constexpr (std::is_same_v<T, int64_t>) return DataType::kInt64;
  else if constexpr (std::is_same_v<T, uint64_t>) return DataType::kUint64;
  else if constexpr (std::is_same_v<T, int32_t>) return DataType::kInt32;
  else if constexpr (std::is_same_v<T, uint32_t>) return DataType::kUint32;
  else if constexpr (std::is_same_v<T, int16_t>) return DataType::kInt16;
  else if constexpr (std::is_same_v<T, uint16_t>) return DataType::kUint16;
  else if constexpr (std::is_same_v<T, int8_t>) return DataType::kInt8;
  else if constexpr (std::is_same_v<T, uint8_t>) return DataType::kUint8;
  else if constexpr (std::is_same_v<T, bool>) return DataType::kBool;
  else return DataType::kUndefined;
}

class Tensor {
 public:
  /// An undefined tensor (defined() == false).
  Tensor() = default;
  /// Allocates a zero-filled tensor.
  Tensor(DataType dtype, Shape shape);
  /// Allocates without initialising the bytes (kernels that overwrite every element).
  static Tensor empty(DataType dtype, Shape shape);
  /// Views `buffer` from `offset`; throws kInvalidModel if the buffer is too short.
  static Tensor wrap(DataType dtype, Shape shape, std::shared_ptr<Buffer> buffer, size_t offset = 0);
  /// A string tensor (dtype kString).
  static Tensor from_strings(Shape shape, std::vector<std::string> values);
  /// Copies `values` into a new tensor of dtype_of<T>() (or `dtype` when given, e.g. kFloat16 for uint16_t).
  template <typename T>
  static Tensor from_vector(Shape shape, const std::vector<T>& values, DataType dtype = dtype_of<T>()) {
    Tensor t = empty(dtype, std::move(shape));
    QTOOL_CHECK(static_cast<int64_t>(values.size()) == t.numel(), ErrorCode::kInternal,
                "from_vector: {} values for shape {}", values.size(), shape_str(t.shape()));
    if constexpr (std::is_same_v<T, bool>) {
      for (size_t i = 0; i < values.size(); ++i) t.mutable_raw()[i] = values[i] ? 1 : 0;
    } else if (!values.empty()) {
      std::memcpy(t.mutable_raw(), values.data(), values.size() * sizeof(T));
    }
    return t;
  }
  template <typename T>
  static Tensor scalar(T v) { return from_vector<T>({}, std::vector<T>{v}); }

  bool defined() const { return dtype_ != DataType::kUndefined; }
  DataType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  size_t rank() const { return shape_.size(); }
  /// dim(-1) is the last dimension.
  int64_t dim(int i) const { return shape_.at(i < 0 ? shape_.size() + i : i); }
  int64_t numel() const { return numel_; }
  /// Storage bytes (packed types round up).
  size_t nbytes() const { return dtype_storage_bytes(dtype_, numel_); }

  const uint8_t* raw() const { return buffer_ ? buffer_->data() + offset_ : nullptr; }
  /// Copy-on-write: copies first if the storage is read-only or shared.
  uint8_t* mutable_raw();

  template <typename T>
  const T* data() const {
    QTOOL_CHECK(storage_type_matches<T>(dtype_), ErrorCode::kInternal, "tensor of {} read with the wrong C++ type",
                dtype_name(dtype_));
    return reinterpret_cast<const T*>(raw());
  }
  template <typename T>
  T* mutable_data() {
    QTOOL_CHECK(storage_type_matches<T>(dtype_), ErrorCode::kInternal, "tensor of {} written with the wrong C++ type",
                dtype_name(dtype_));
    return reinterpret_cast<T*>(mutable_raw());
  }
  const std::vector<std::string>& strings() const { return strings_; }
  std::vector<std::string>& mutable_strings() { return strings_; }

  /// Same storage, new shape (numel must match).
  Tensor reshaped(Shape shape) const;
  /// A deep copy with its own heap storage.
  Tensor clone() const;
  /// Element i converted to double (any numeric dtype, packed types unpacked).
  double get_as_double(int64_t i) const;
  /// A float32 copy of any numeric tensor (float16/bfloat16/ints/bool/packed).
  Tensor to_float() const;
  /// Converts to `dtype` with ONNX Cast semantics for numeric types (float->int truncates toward zero,
  /// saturates for the packed types).
  Tensor cast(DataType dtype) const;
  /// True if the storage is a read-only mapping shared with a file (external data).
  bool is_mapped() const { return buffer_ && buffer_->mutable_data() == nullptr; }
  const std::shared_ptr<Buffer>& buffer() const { return buffer_; }
  size_t offset() const { return offset_; }

 private:
  DataType dtype_ = DataType::kUndefined;
  Shape shape_;
  int64_t numel_ = 0;
  std::shared_ptr<Buffer> buffer_;
  size_t offset_ = 0;
  std::vector<std::string> strings_;
};

/// True if both tensors have the same dtype, shape and bytes (strings compared for kString).
bool tensors_equal(const Tensor& a, const Tensor& b);

}  // namespace qtool
