#include "qtool/core/tensor.h"

#include <algorithm>

#include "qtool/core/limits.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>

namespace qtool {

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    QTOOL_CHECK(d >= 0, ErrorCode::kInvalidModel, "negative dimension {} in shape {}", d, shape_str(shape));
    if (d != 0 && n > std::numeric_limits<int64_t>::max() / d) {
      fail(ErrorCode::kInvalidModel, "shape {} has too many elements", shape_str(shape));
    }
    n *= d;
  }
  return n;
}

std::string shape_str(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ",";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

namespace {
class HeapBuffer final : public Buffer {
 public:
  explicit HeapBuffer(size_t n, bool zero) : size_(n) {
    const size_t alloc = ((n == 0 ? 1 : n) + 63) / 64 * 64;
    data_ = static_cast<uint8_t*>(std::aligned_alloc(64, alloc));
    if (!data_) throw std::bad_alloc();
    if (zero) std::memset(data_, 0, alloc);
  }
  ~HeapBuffer() override { std::free(data_); }
  HeapBuffer(const HeapBuffer&) = delete;
  HeapBuffer& operator=(const HeapBuffer&) = delete;
  const uint8_t* data() const override { return data_; }
  uint8_t* mutable_data() override { return data_; }
  size_t size() const override { return size_; }

 private:
  uint8_t* data_ = nullptr;
  size_t size_;
};
}  // namespace

namespace {
thread_local BufferSource* t_buffer_source = nullptr;
}  // namespace

ScopedBufferSource::ScopedBufferSource(BufferSource* source) : previous_(t_buffer_source) {
  t_buffer_source = source;
}
ScopedBufferSource::~ScopedBufferSource() { t_buffer_source = previous_; }

std::shared_ptr<Buffer> make_heap_buffer(size_t bytes, bool zero_fill) {
  if (BufferSource* source = t_buffer_source) {
    if (auto buffer = source->allocate(bytes)) {
      if (zero_fill && bytes > 0) std::memset(buffer->mutable_data(), 0, bytes);
      return buffer;
    }
  }
  return std::make_shared<HeapBuffer>(bytes, zero_fill);
}

Tensor::Tensor(DataType dtype, Shape shape) : dtype_(dtype), shape_(std::move(shape)) {
  numel_ = shape_numel(shape_);
  if (dtype_ == DataType::kString) {
    strings_.resize(numel_);
  } else {
    buffer_ = make_heap_buffer(nbytes(), true);
  }
}

Tensor Tensor::empty(DataType dtype, Shape shape) {
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  t.numel_ = shape_numel(t.shape_);
  // Shapes come from the model (Expand, ConstantOfShape, Tile, Resize...) or the user's files:
  // refuse what exceeds the resource limits (core/limits.h) before allocating; the executor adds
  // the node to the message.
  const ResourceLimits& limits = resource_limits();
  if (t.numel_ > limits.max_tensor_elements || (dtype != DataType::kString && t.nbytes() > limits.max_memory_bytes)) {
    check_tensor_size(t.numel_, dtype == DataType::kString ? 32.0 : static_cast<double>(t.nbytes()) / std::max<int64_t>(t.numel_, 1),
                      fmt::format("a {} tensor of shape {}", dtype_name(dtype), shape_str(t.shape_)), ErrorCode::kInvalidModel);
  }
  if (dtype == DataType::kString) {
    t.strings_.resize(t.numel_);
  } else {
    t.buffer_ = make_heap_buffer(t.nbytes(), false);
  }
  return t;
}

Tensor Tensor::wrap(DataType dtype, Shape shape, std::shared_ptr<Buffer> buffer, size_t offset) {
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  t.numel_ = shape_numel(t.shape_);
  QTOOL_CHECK(buffer != nullptr, ErrorCode::kInternal, "wrap: null buffer");
  QTOOL_CHECK(offset <= buffer->size() && buffer->size() - offset >= t.nbytes(), ErrorCode::kInvalidModel,
              "tensor of {} {} needs {} bytes but only {} are available", dtype_name(dtype), shape_str(t.shape_),
              t.nbytes(), buffer->size() >= offset ? buffer->size() - offset : 0);
  t.buffer_ = std::move(buffer);
  t.offset_ = offset;
  return t;
}

Tensor Tensor::from_strings(Shape shape, std::vector<std::string> values) {
  Tensor t;
  t.dtype_ = DataType::kString;
  t.shape_ = std::move(shape);
  t.numel_ = shape_numel(t.shape_);
  QTOOL_CHECK(static_cast<int64_t>(values.size()) == t.numel_, ErrorCode::kInvalidModel,
              "string tensor has {} values for shape {}", values.size(), shape_str(t.shape_));
  t.strings_ = std::move(values);
  return t;
}

uint8_t* Tensor::mutable_raw() {
  if (!buffer_) return nullptr;
  if (buffer_->mutable_data() == nullptr || buffer_.use_count() > 1) {
    auto copy = make_heap_buffer(nbytes(), false);
    std::memcpy(copy->mutable_data(), raw(), nbytes());
    buffer_ = std::move(copy);
    offset_ = 0;
  }
  return buffer_->mutable_data() + offset_;
}

Tensor Tensor::reshaped(Shape shape) const {
  Tensor t = *this;
  const int64_t n = shape_numel(shape);
  QTOOL_CHECK(n == numel_, ErrorCode::kInvalidModel, "cannot reshape {} ({} elements) to {}", shape_str(shape_),
              numel_, shape_str(shape));
  t.shape_ = std::move(shape);
  return t;
}

Tensor Tensor::clone() const {
  if (!defined()) return {};
  if (dtype_ == DataType::kString) return from_strings(shape_, strings_);
  Tensor t = empty(dtype_, shape_);
  if (nbytes()) std::memcpy(t.buffer_->mutable_data(), raw(), nbytes());
  return t;
}

double Tensor::get_as_double(int64_t i) const {
  const uint8_t* p = raw();
  switch (dtype_) {
    case DataType::kFloat: return reinterpret_cast<const float*>(p)[i];
    case DataType::kDouble: return reinterpret_cast<const double*>(p)[i];
    case DataType::kFloat16: return half_to_float(reinterpret_cast<const uint16_t*>(p)[i]);
    case DataType::kBFloat16: return bf16_to_float(reinterpret_cast<const uint16_t*>(p)[i]);
    case DataType::kInt8: return reinterpret_cast<const int8_t*>(p)[i];
    case DataType::kUint8: return p[i];
    case DataType::kBool: return p[i] ? 1.0 : 0.0;
    case DataType::kInt16: return reinterpret_cast<const int16_t*>(p)[i];
    case DataType::kUint16: return reinterpret_cast<const uint16_t*>(p)[i];
    case DataType::kInt32: return reinterpret_cast<const int32_t*>(p)[i];
    case DataType::kUint32: return reinterpret_cast<const uint32_t*>(p)[i];
    case DataType::kInt64: return static_cast<double>(reinterpret_cast<const int64_t*>(p)[i]);
    case DataType::kUint64: return static_cast<double>(reinterpret_cast<const uint64_t*>(p)[i]);
    case DataType::kInt4: return packed_get(p, i, 4, true);
    case DataType::kUint4: return packed_get(p, i, 4, false);
    case DataType::kInt2: return packed_get(p, i, 2, true);
    case DataType::kUint2: return packed_get(p, i, 2, false);
    case DataType::kFloat8E4M3FN: return float8e4m3fn_to_float(p[i]);
    default:
      fail(ErrorCode::kUnsupported, "cannot read elements of a {} tensor as numbers", dtype_name(dtype_));
  }
}

Tensor Tensor::to_float() const {
  if (dtype_ == DataType::kFloat) return *this;
  Tensor out = empty(DataType::kFloat, shape_);
  float* o = out.mutable_data<float>();
  for (int64_t i = 0; i < numel_; ++i) o[i] = static_cast<float>(get_as_double(i));
  return out;
}

namespace {
template <typename T>
void store_int(Tensor& out, int64_t i, double v) {
  out.mutable_data<T>()[i] = static_cast<T>(v);
}
}  // namespace

Tensor Tensor::cast(DataType to) const {
  if (to == dtype_) return *this;
  QTOOL_CHECK(dtype_ != DataType::kString && to != DataType::kString, ErrorCode::kUnsupported,
              "cast between {} and {} is not supported", dtype_name(dtype_), dtype_name(to));
  Tensor out(to, shape_);
  uint8_t* o = out.mutable_raw();
  for (int64_t i = 0; i < numel_; ++i) {
    double v = get_as_double(i);
    if (dtype_is_integer(to) && std::isfinite(v)) v = std::trunc(v);
    switch (to) {
      case DataType::kFloat: reinterpret_cast<float*>(o)[i] = static_cast<float>(v); break;
      case DataType::kDouble: reinterpret_cast<double*>(o)[i] = v; break;
      case DataType::kFloat16: reinterpret_cast<uint16_t*>(o)[i] = float_to_half(static_cast<float>(v)); break;
      case DataType::kBFloat16: reinterpret_cast<uint16_t*>(o)[i] = float_to_bf16(static_cast<float>(v)); break;
      case DataType::kBool: o[i] = v != 0.0 ? 1 : 0; break;
      case DataType::kInt8: reinterpret_cast<int8_t*>(o)[i] = static_cast<int8_t>(static_cast<int64_t>(v)); break;
      case DataType::kUint8: o[i] = static_cast<uint8_t>(static_cast<int64_t>(v)); break;
      case DataType::kInt16: reinterpret_cast<int16_t*>(o)[i] = static_cast<int16_t>(static_cast<int64_t>(v)); break;
      case DataType::kUint16: reinterpret_cast<uint16_t*>(o)[i] = static_cast<uint16_t>(static_cast<int64_t>(v)); break;
      case DataType::kInt32: reinterpret_cast<int32_t*>(o)[i] = static_cast<int32_t>(static_cast<int64_t>(v)); break;
      case DataType::kUint32: reinterpret_cast<uint32_t*>(o)[i] = static_cast<uint32_t>(static_cast<int64_t>(v)); break;
      case DataType::kInt64: reinterpret_cast<int64_t*>(o)[i] = static_cast<int64_t>(v); break;
      case DataType::kUint64: reinterpret_cast<uint64_t*>(o)[i] = static_cast<uint64_t>(v); break;
      case DataType::kInt4: case DataType::kUint4: case DataType::kInt2: case DataType::kUint2: {
        int64_t lo, hi;
        dtype_int_range(to, &lo, &hi);
        const double c = std::min<double>(std::max<double>(v, lo), hi);
        packed_set(o, i, dtype_bits(to), static_cast<int32_t>(c));
        break;
      }
      default:
        fail(ErrorCode::kUnsupported, "cast to {} is not supported", dtype_name(to));
    }
  }
  return out;
}

bool tensors_equal(const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype() || a.shape() != b.shape()) return false;
  if (a.dtype() == DataType::kString) return a.strings() == b.strings();
  return a.nbytes() == 0 || std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

}  // namespace qtool
