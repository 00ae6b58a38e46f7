// ONNX <-> IR. The only stage that includes protobuf or ONNX headers.
#pragma once

#include <string>
#include <string_view>

#include "qtool/ir/graph.h"

namespace qtool::onnx_io {

struct LoadOptions {
  /// Resolve external data (memory-mapped, read-only). Off: tensors with external data stay undefined.
  bool load_external_data = true;
  /// Fill value types from libonnx's shape inference (opsets up to 17; newer ones keep what the model states).
  bool infer_shapes = true;
};

/// Loads an ONNX model file. Throws kIo (missing/unreadable), kInvalidModel (not ONNX, truncated,
/// cycle, dangling input, bad external data) or kUnsupported, always naming the file, node and tensor.
ir::Model load_model(const std::string& path, const LoadOptions& options = {});

/// Parses a serialized ModelProto; `base_dir` resolves external data; `what` names it in errors.
ir::Model parse_model(std::string_view bytes, const std::string& what, const std::string& base_dir,
                      const LoadOptions& options = {});

struct SaveOptions {
  enum class ExternalData {
    kAuto,    ///< inline, unless the serialized model would pass protobuf's 2 GB limit
    kAlways,  ///< tensors of at least `external_threshold` bytes go to the external file
    kNever,   ///< always inline (fails beyond 2 GB)
  };
  ExternalData external_data = ExternalData::kAuto;
  /// File name (relative, beside the model) for external data; default "<model file name>.data".
  std::string external_file;
  size_t external_threshold = 1024;
  /// kAuto switches to external data when the tensor bytes exceed this (protobuf's 2 GB limit minus
  /// room for the graph). Lower it only in tests.
  size_t auto_external_limit = (size_t{1} << 31) - (size_t{1} << 28);
};

/// Saves atomically (temporary file + rename; the external data file likewise). Refuses to write
/// over the file the model was loaded from (model.source_path) or its external data.
void save_model(const ir::Model& model, const std::string& path, const SaveOptions& options = {});

/// Serializes to an in-memory ModelProto with all tensors inline.
std::string serialize_model(const ir::Model& model);

/// Reads a TensorProto file (test_data_set_*/input_0.pb); returns the tensor, sets *name if given.
Tensor load_tensor_pb(const std::string& path, std::string* name = nullptr);
/// Writes a TensorProto file atomically.
void save_tensor_pb(const std::string& path, const Tensor& t, const std::string& name = "");

}  // namespace qtool::onnx_io
