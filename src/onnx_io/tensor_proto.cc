// TensorProto <-> Tensor in every storage form ONNX allows.
//
// ONNX stores tensor bytes either in raw_data (little-endian, packed sub-byte types with the first
// element in the low bits), in a typed repeated field, or in an external file. The typed fields are:
//   float_data  : float32 (one per element), complex64 (two per element)
//   int32_data  : int32, int16, uint16, int8, uint8, bool, float16/bfloat16/float8 (bit patterns, one per
//                 element), and the packed 4-bit types (one byte = two elements per entry) and 2-bit
//                 types (one byte = four elements per entry)
//   int64_data  : int64
//   double_data : float64 (one per element), complex128 (two per element)
//   uint64_data : uint32, uint64
//   string_data : string
// Every count is checked against the shape before anything is allocated, so a corrupted file whose
// dims claim terabytes is refused instead of exhausting memory.
#include <sys/stat.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <filesystem>

#include "proto_util.h"
#include "qtool/core/output_file.h"

namespace qtool::onnx_io::detail {
namespace {

/// Owns a std::string moved out of a protobuf message (raw_data) so the tensor needs no copy.
class StringBuffer final : public Buffer {
 public:
  explicit StringBuffer(std::string* s) : s_(s) {}
  const uint8_t* data() const override { return reinterpret_cast<const uint8_t*>(s_->data()); }
  uint8_t* mutable_data() override { return reinterpret_cast<uint8_t*>(s_->data()); }
  size_t size() const override { return s_->size(); }

 private:
  std::unique_ptr<std::string> s_;
};

Shape dims_of(const onnx::TensorProto& tp) {
  Shape s(tp.dims().begin(), tp.dims().end());
  for (int64_t d : s) {
    QTOOL_CHECK(d >= 0, ErrorCode::kInvalidModel, "negative dimension {} in dims {}", d, shape_str(s));
  }
  (void)shape_numel(s);  // throws on overflow
  return s;
}

// Parses a decimal external-data offset/length strictly.
uint64_t parse_u64(const std::string& s, const char* key, const std::string& tensor) {
  uint64_t v = 0;
  const char* end = s.data() + s.size();
  auto [p, ec] = std::from_chars(s.data(), end, v);
  if (s.empty() || ec != std::errc() || p != end) {
    fail(ErrorCode::kInvalidModel, "tensor '{}': external data {} '{}' is not a non-negative integer", tensor, key, s);
  }
  return v;
}

template <typename Field>
void expect_count(const Field& f, int64_t expected, const char* field, const onnx::TensorProto& tp, DataType dt) {
  if (static_cast<int64_t>(f.size()) != expected) {
    fail(ErrorCode::kInvalidModel, "tensor '{}' ({} {}): {} has {} entries, expected {}", tp.name(), dtype_name(dt),
         shape_str(Shape(tp.dims().begin(), tp.dims().end())), field, f.size(), expected);
  }
}

// External data must be a regular file inside the model's folder, reached without symlinks
// (CVE-2022-25882, CVE-2024-27318, CVE-2026-27489): every component of the location is checked with
// lstat (no symlink, to a file or a folder), and the canonical path must lie inside the canonical
// model folder. Throws kInvalidModel for a link or an escape, kIo for a missing file.
void check_inside_model_folder(const std::string& base_dir, const std::string& rel, const std::string& path,
                               const std::string& tensor) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path base = base_dir.empty() ? fs::path(".") : fs::path(base_dir);
  const fs::path base_canon = fs::canonical(base, ec);
  if (ec) fail(ErrorCode::kIo, "tensor '{}': cannot resolve the model's folder '{}': {}", tensor, base.string(), ec.message());
  fs::path cur = base;
  for (const auto& part : fs::path(rel)) {
    cur /= part;
    struct stat st {};
    if (::lstat(cur.c_str(), &st) != 0) {
      fail(ErrorCode::kIo, "tensor '{}': external data file '{}' does not exist", tensor, path);
    }
    if (S_ISLNK(st.st_mode)) {
      fail(ErrorCode::kInvalidModel,
           "tensor '{}': external data location '{}' goes through the symbolic link '{}'; links are refused so that "
           "nothing outside the model's folder is read",
           tensor, rel, cur.string());
    }
  }
  const fs::path canon = fs::canonical(cur, ec);
  if (ec) fail(ErrorCode::kIo, "tensor '{}': cannot resolve external data file '{}': {}", tensor, path, ec.message());
  auto [b, c] = std::mismatch(base_canon.begin(), base_canon.end(), canon.begin(), canon.end());
  if (b != base_canon.end()) {
    fail(ErrorCode::kInvalidModel, "tensor '{}': external data location '{}' resolves to '{}', outside the model's folder '{}'",
         tensor, rel, canon.string(), base_canon.string());
  }
}

}  // namespace

std::string checked_location(const std::string& location, const std::string& tensor_name) {
  namespace fs = std::filesystem;
  if (location.empty()) fail(ErrorCode::kInvalidModel, "tensor '{}': external data has no location", tensor_name);
  if (location.find('\0') != std::string::npos) {
    fail(ErrorCode::kInvalidModel, "tensor '{}': external data location contains a NUL byte", tensor_name);
  }
  const fs::path p(location);
  if (p.is_absolute() || p.has_root_name() || p.has_root_directory()) {
    fail(ErrorCode::kInvalidModel,
         "tensor '{}': external data location '{}' is an absolute path; only files inside the model's folder "
         "are allowed",
         tensor_name, location);
  }
  const fs::path n = p.lexically_normal();
  for (const auto& part : n) {
    if (part == "..") {
      fail(ErrorCode::kInvalidModel, "tensor '{}': external data location '{}' escapes the model's folder",
           tensor_name, location);
    }
  }
  if (n.empty() || n == ".") {
    fail(ErrorCode::kInvalidModel, "tensor '{}': external data location '{}' is not a file", tensor_name, location);
  }
  return n.string();
}

Tensor ExternalData::load(const onnx::TensorProto& tp, DataType dtype, const Shape& shape) {
  std::string location;
  uint64_t offset = 0;
  bool has_length = false;
  uint64_t length = 0;
  for (const auto& kv : tp.external_data()) {
    if (kv.key() == "location") {
      location = kv.value();
    } else if (kv.key() == "offset") {
      offset = parse_u64(kv.value(), "offset", tp.name());
    } else if (kv.key() == "length") {
      length = parse_u64(kv.value(), "length", tp.name());
      has_length = true;
    }
  }
  const std::string rel = checked_location(location, tp.name());
  if (dtype == DataType::kString) {
    fail(ErrorCode::kUnsupported, "tensor '{}': string tensors cannot use external data", tp.name());
  }
  const size_t need = dtype_storage_bytes(dtype, shape_numel(shape));
  if (has_length && length != need) {
    fail(ErrorCode::kInvalidModel, "tensor '{}': external data length {} does not match {} {} ({} bytes)", tp.name(),
         length, dtype_name(dtype), shape_str(shape), need);
  }
  if (!enabled_) return {};
  const std::string path = (std::filesystem::path(base_dir_.empty() ? "." : base_dir_) / rel).string();
  auto it = files_.find(path);
  if (it == files_.end()) {
    check_inside_model_folder(base_dir_, rel, path, tp.name());
    // O_NOFOLLOW and one hard link only: the file cannot be swapped for a link after the check
    // above, nor be a second name of a file outside the folder (onnx 1.21's four layers).
    it = files_.emplace(path, with_context(fmt::format("tensor '{}'", tp.name()), [&] {
                          auto f = MappedFile::open(path, MappedFile::Policy{.no_follow = true, .single_link = true});
                          protect_input(path);
                          return f;
                        })).first;
  }
  const auto& file = it->second;
  if (offset > file->size() || file->size() - offset < need) {
    fail(ErrorCode::kIo,
         "tensor '{}': external data file '{}' is too short: the tensor needs bytes [{}, {}) but the file has {}",
         tp.name(), path, offset, offset + need, file->size());
  }
  return Tensor::wrap(dtype, shape, file, static_cast<size_t>(offset));
}

Tensor tensor_from_proto(onnx::TensorProto& tp, ExternalData* ext) {
  const std::string name = tp.name();
  return with_context(fmt::format("tensor '{}'", name), [&]() -> Tensor {
    const int32_t raw_type = tp.data_type();
    if (!dtype_is_known(raw_type) || raw_type == 0) {
      fail(ErrorCode::kUnsupported, "tensor '{}' has unsupported data type {}", name, raw_type);
    }
    const DataType dt = static_cast<DataType>(raw_type);
    const Shape shape = dims_of(tp);
    const int64_t n = shape_numel(shape);
    if (tp.has_segment()) fail(ErrorCode::kUnsupported, "tensor '{}' is segmented; segments are not supported", name);

    if (tp.data_location() == onnx::TensorProto_DataLocation_EXTERNAL) {
      if (!ext) fail(ErrorCode::kUnsupported, "tensor '{}' uses external data, which is not allowed here", name);
      return ext->load(tp, dt, shape);
    }
    if (dt == DataType::kString) {
      expect_count(tp.string_data(), n, "string_data", tp, dt);
      return Tensor::from_strings(shape, std::vector<std::string>(tp.string_data().begin(), tp.string_data().end()));
    }
    const size_t nbytes = dtype_storage_bytes(dt, n);
    if (tp.has_raw_data()) {
      if (tp.raw_data().size() != nbytes) {
        fail(ErrorCode::kInvalidModel, "tensor '{}': raw_data has {} bytes, but {} {} needs {}", name,
             tp.raw_data().size(), dtype_name(dt), shape_str(shape), nbytes);
      }
      if (nbytes == 0) return Tensor(dt, shape);
      auto buf = std::make_shared<StringBuffer>(tp.release_raw_data());
      return Tensor::wrap(dt, shape, std::move(buf));
    }
    const int bits = dtype_bits(dt);
    // Typed fields. Nothing is allocated before the entry count matches the shape.
    switch (dt) {
      case DataType::kFloat: {
        expect_count(tp.float_data(), n, "float_data", tp, dt);
        Tensor t = Tensor::empty(dt, shape);
        if (n) std::memcpy(t.mutable_raw(), tp.float_data().data(), nbytes);
        return t;
      }
      case DataType::kComplex64: {
        expect_count(tp.float_data(), 2 * n, "float_data", tp, dt);
        Tensor t = Tensor::empty(dt, shape);
        if (n) std::memcpy(t.mutable_raw(), tp.float_data().data(), nbytes);
        return t;
      }
      case DataType::kDouble: {
        expect_count(tp.double_data(), n, "double_data", tp, dt);
        Tensor t = Tensor::empty(dt, shape);
        if (n) std::memcpy(t.mutable_raw(), tp.double_data().data(), nbytes);
        return t;
      }
      case DataType::kComplex128: {
        expect_count(tp.double_data(), 2 * n, "double_data", tp, dt);
        Tensor t = Tensor::empty(dt, shape);
        if (n) std::memcpy(t.mutable_raw(), tp.double_data().data(), nbytes);
        return t;
      }
      case DataType::kInt64: {
        expect_count(tp.int64_data(), n, "int64_data", tp, dt);
        Tensor t = Tensor::empty(dt, shape);
        if (n) std::memcpy(t.mutable_raw(), tp.int64_data().data(), nbytes);
        return t;
      }
      case DataType::kUint64: {
        expect_count(tp.uint64_data(), n, "uint64_data", tp, dt);
        Tensor t = Tensor::empty(dt, shape);
        if (n) std::memcpy(t.mutable_raw(), tp.uint64_data().data(), nbytes);
        return t;
      }
      case DataType::kUint32: {
        expect_count(tp.uint64_data(), n, "uint64_data", tp, dt);
        Tensor t = Tensor::empty(dt, shape);
        auto* out = reinterpret_cast<uint32_t*>(t.mutable_raw());
        for (int64_t i = 0; i < n; ++i) out[i] = static_cast<uint32_t>(tp.uint64_data(static_cast<int>(i)));
        return t;
      }
      case DataType::kInt32: {
        expect_count(tp.int32_data(), n, "int32_data", tp, dt);
        Tensor t = Tensor::empty(dt, shape);
        if (n) std::memcpy(t.mutable_raw(), tp.int32_data().data(), nbytes);
        return t;
      }
      default:
        break;
    }
    if (bits == 16 || bits == 8) {
      // One element per int32_data entry (float16/bfloat16/float8 as their bit patterns).
      expect_count(tp.int32_data(), n, "int32_data", tp, dt);
      Tensor t = Tensor::empty(dt, shape);
      uint8_t* out = t.mutable_raw();
      for (int64_t i = 0; i < n; ++i) {
        const int32_t v = tp.int32_data(static_cast<int>(i));
        if (bits == 16) {
          const uint16_t u = static_cast<uint16_t>(v);
          std::memcpy(out + 2 * i, &u, 2);
        } else {
          out[i] = dt == DataType::kBool ? (v != 0 ? 1 : 0) : static_cast<uint8_t>(v);
        }
      }
      return t;
    }
    if (bits == 4 || bits == 2) {
      // Packed sub-byte types: each int32_data entry holds one byte (2 or 4 elements, first in the low bits).
      expect_count(tp.int32_data(), static_cast<int64_t>(nbytes), "int32_data", tp, dt);
      Tensor t = Tensor::empty(dt, shape);
      uint8_t* out = t.mutable_raw();
      for (size_t i = 0; i < nbytes; ++i) out[i] = static_cast<uint8_t>(tp.int32_data(static_cast<int>(i)));
      // Clear padding bits beyond the last element so equal tensors have equal bytes.
      const int64_t per_byte = 8 / bits;
      for (int64_t i = n; i < static_cast<int64_t>(nbytes) * per_byte; ++i) packed_set(out, i, bits, 0);
      return t;
    }
    fail(ErrorCode::kUnsupported, "tensor '{}': data type {} is not supported in typed fields", name,
         dtype_name(dt));
  });
}

void tensor_to_proto(const Tensor& t, const std::string& name, onnx::TensorProto* tp) {
  tp->set_name(name);
  tp->set_data_type(static_cast<int32_t>(t.dtype()));
  for (int64_t d : t.shape()) tp->add_dims(d);
  if (t.dtype() == DataType::kString) {
    for (const auto& s : t.strings()) tp->add_string_data(s);
    return;
  }
  tp->set_raw_data(reinterpret_cast<const char*>(t.raw()), t.nbytes());
}

Tensor densify(const Tensor& values, const Tensor& indices, const Shape& dims, const std::string& name) {
  return with_context(fmt::format("sparse tensor '{}'", name), [&]() -> Tensor {
    const int64_t total = shape_numel(dims);
    const DataType dt = values.dtype();
    QTOOL_CHECK(dt != DataType::kString, ErrorCode::kUnsupported, "sparse string tensors are not supported");
    QTOOL_CHECK(values.rank() == 1, ErrorCode::kInvalidModel, "values must be 1-D, got {}", shape_str(values.shape()));
    QTOOL_CHECK(indices.dtype() == DataType::kInt64, ErrorCode::kInvalidModel, "indices must be int64, got {}",
                dtype_name(indices.dtype()));
    const int64_t nnz = values.numel();
    const bool linear = indices.rank() == 1;
    QTOOL_CHECK((linear && indices.dim(0) == nnz) ||
                    (indices.rank() == 2 && indices.dim(0) == nnz && indices.dim(1) == static_cast<int64_t>(dims.size())),
                ErrorCode::kInvalidModel, "indices {} do not fit {} values of a rank-{} tensor",
                shape_str(indices.shape()), nnz, dims.size());
    Tensor dense(dt, dims);
    const int64_t* idx = indices.data<int64_t>();
    const int bits = dtype_bits(dt);
    uint8_t* out = dense.mutable_raw();
    const uint8_t* in = values.raw();
    for (int64_t k = 0; k < nnz; ++k) {
      int64_t pos = 0;
      if (linear) {
        pos = idx[k];
      } else {
        for (size_t a = 0; a < dims.size(); ++a) {
          const int64_t c = idx[k * static_cast<int64_t>(dims.size()) + static_cast<int64_t>(a)];
          QTOOL_CHECK(c >= 0 && c < dims[a], ErrorCode::kInvalidModel, "index {} out of range for dim {} of {}", c,
                      a, shape_str(dims));
          pos = pos * dims[a] + c;
        }
      }
      QTOOL_CHECK(pos >= 0 && pos < total, ErrorCode::kInvalidModel, "index {} out of range for {}", pos,
                  shape_str(dims));
      if (bits < 8) {
        packed_set(out, pos, bits, packed_get(in, k, bits, false));
      } else {
        const size_t esz = static_cast<size_t>(bits / 8);
        std::memcpy(out + static_cast<size_t>(pos) * esz, in + static_cast<size_t>(k) * esz, esz);
      }
    }
    return dense;
  });
}

ir::TypeInfo type_from_proto(const onnx::TypeProto& tp) {
  ir::TypeInfo t;
  if (tp.has_tensor_type() && tp.denotation().empty()) {
    const auto& tt = tp.tensor_type();
    if (dtype_is_known(tt.elem_type())) t.elem_type = static_cast<DataType>(tt.elem_type());
    if (tt.has_shape()) {
      t.has_shape = true;
      for (const auto& d : tt.shape().dim()) {
        ir::Dim dim;
        if (d.has_dim_value() && d.dim_value() >= 0) {
          dim.value = d.dim_value();
        } else if (d.has_dim_param()) {
          dim.param = d.dim_param();
        }
        t.dims.push_back(std::move(dim));
      }
    }
  } else if (tp.value_case() != onnx::TypeProto::VALUE_NOT_SET || !tp.denotation().empty()) {
    t.opaque_type = tp.SerializeAsString();
    if (tp.has_tensor_type() && dtype_is_known(tp.tensor_type().elem_type())) {
      t.elem_type = static_cast<DataType>(tp.tensor_type().elem_type());
    }
  }
  return t;
}

void type_to_proto(const ir::TypeInfo& t, onnx::TypeProto* tp) {
  if (!t.opaque_type.empty()) {
    if (tp->ParseFromString(t.opaque_type)) return;
    tp->Clear();
  }
  if (t.elem_type == DataType::kUndefined && !t.has_shape) return;
  auto* tt = tp->mutable_tensor_type();
  tt->set_elem_type(static_cast<int32_t>(t.elem_type));
  if (t.has_shape) {
    auto* s = tt->mutable_shape();
    for (const auto& d : t.dims) {
      auto* pd = s->add_dim();
      if (d.known()) {
        pd->set_dim_value(d.value);
      } else if (!d.param.empty()) {
        pd->set_dim_param(d.param);
      }
    }
  }
}

}  // namespace qtool::onnx_io::detail
