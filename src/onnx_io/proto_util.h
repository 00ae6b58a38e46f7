// Private to onnx_io: conversions between ONNX protobuf messages and qtool's IR types.
// Nothing outside src/onnx_io includes this file (only onnx_io may see protobuf/ONNX headers).
#pragma once

#include <map>
#include <memory>
#include <string>

#include <onnx/onnx_pb.h>

#include "qtool/core/mapped_file.h"
#include "qtool/core/tensor.h"
#include "qtool/ir/graph.h"

namespace qtool::onnx_io::detail {

/// Resolves TensorProto external data against the model's folder, mapping each data file once.
class ExternalData {
 public:
  ExternalData(std::string base_dir, bool enabled) : base_dir_(std::move(base_dir)), enabled_(enabled) {}
  /// Returns a tensor viewing the mapped bytes of `tp`'s external data (undefined tensor when disabled).
  /// Throws kInvalidModel for locations escaping the model folder or malformed keys, kIo for missing or
  /// too-short files; always naming the tensor and the file.
  Tensor load(const onnx::TensorProto& tp, DataType dtype, const Shape& shape);

 private:
  std::string base_dir_;
  bool enabled_;
  std::map<std::string, std::shared_ptr<MappedFile>> files_;
};

/// Checks that an external data location is a relative path that stays inside the model folder and
/// returns it normalised. Throws kInvalidModel naming the tensor otherwise.
std::string checked_location(const std::string& location, const std::string& tensor_name);

/// TensorProto -> Tensor, for every storage form (raw_data, typed fields, packed sub-byte types,
/// external data). May move raw_data out of `tp` (zero copy). Throws naming the tensor.
Tensor tensor_from_proto(onnx::TensorProto& tp, ExternalData* ext);

/// Tensor -> TensorProto with the data inline (raw_data, or string_data for strings).
void tensor_to_proto(const Tensor& t, const std::string& name, onnx::TensorProto* tp);

/// Expands a SparseTensorProto's (values, indices) into a dense tensor of its dims.
Tensor densify(const Tensor& values, const Tensor& indices, const Shape& dims, const std::string& name);

/// TypeProto <-> TypeInfo (non-tensor types are kept serialized in opaque_type).
ir::TypeInfo type_from_proto(const onnx::TypeProto& tp);
void type_to_proto(const ir::TypeInfo& t, onnx::TypeProto* tp);

}  // namespace qtool::onnx_io::detail
