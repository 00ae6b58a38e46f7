// ir::Model -> ONNX file.
//
// The ModelProto is rebuilt from the IR (all tensors as raw_data; packed sub-byte types as raw_data
// too). Output is deterministic: fields are written in IR order, protobuf serialisation is
// deterministic, and nothing time- or host-dependent is written, so saving the same model twice gives
// identical bytes. Files are written atomically: temporary files in the target folder, fsync, then
// rename (external data first, then the model), so a reader never sees a half-written model. The proto
// is streamed to the file (SerializeToCodedStream on a FileOutputStream), never built as one string.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>
#include <filesystem>
#include <random>
#include <set>

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>

#include "proto_util.h"
#include "qtool/core/npy.h"
#include "qtool/core/output_file.h"
#include "qtool/onnx_io/onnx_io.h"

namespace qtool::onnx_io {
namespace {

namespace fs = std::filesystem;

/// Temporary files renamed into place (core/output_file.h): removed on error or Ctrl-C, and never
/// renamed over a protected input.
using TempFile = AtomicFile;

struct SaveContext {
  TempFile* data = nullptr;   // external data file (nullptr: everything inline)
  std::string data_location;  // as written into the model
  size_t threshold = 0;
  uint64_t offset = 0;
};

void value_info_to_proto(const ir::Value& v, onnx::ValueInfoProto* vi) {
  vi->set_name(v.name());
  detail::type_to_proto(v.type(), vi->mutable_type());
  if (!v.doc_string().empty()) vi->set_doc_string(v.doc_string());
}

void initializer_to_proto(const Tensor& t, const std::string& name, onnx::TensorProto* tp, SaveContext& ctx) {
  if (!t.defined()) {
    fail(ErrorCode::kUnsupported, "initializer '{}' has no data (the model was loaded without its external data)",
         name);
  }
  if (!ctx.data || t.dtype() == DataType::kString || t.nbytes() < ctx.threshold) {
    detail::tensor_to_proto(t, name, tp);
    return;
  }
  // Large tensors start at 4 KiB boundaries (page-aligned for mmap), small ones at 64 bytes.
  const uint64_t align = t.nbytes() >= (64u << 10) ? 4096 : 64;
  const uint64_t start = (ctx.offset + align - 1) / align * align;
  static const char kZeros[4096] = {};
  ctx.data->write_all(kZeros, static_cast<size_t>(start - ctx.offset));
  ctx.data->write_all(t.raw(), t.nbytes());
  ctx.offset = start + t.nbytes();
  tp->set_name(name);
  tp->set_data_type(static_cast<int32_t>(t.dtype()));
  for (int64_t d : t.shape()) tp->add_dims(d);
  tp->set_data_location(onnx::TensorProto_DataLocation_EXTERNAL);
  auto add = [&](const char* k, const std::string& v) {
    auto* e = tp->add_external_data();
    e->set_key(k);
    e->set_value(v);
  };
  add("location", ctx.data_location);
  add("offset", std::to_string(start));
  add("length", std::to_string(t.nbytes()));
}

void graph_to_proto(const ir::Graph& g, onnx::GraphProto* gp, SaveContext& ctx, const ir::Model* main_model);

void attribute_to_proto(const ir::Attribute& a, onnx::AttributeProto* ap, SaveContext& ctx) {
  ap->set_name(a.name);
  ap->set_type(static_cast<onnx::AttributeProto_AttributeType>(a.type));
  if (!a.ref_attr_name.empty()) ap->set_ref_attr_name(a.ref_attr_name);
  if (!a.doc_string.empty()) ap->set_doc_string(a.doc_string);
  switch (a.type) {
    case ir::AttrType::kFloat: ap->set_f(a.f); break;
    case ir::AttrType::kInt: ap->set_i(a.i); break;
    case ir::AttrType::kString: ap->set_s(a.s); break;
    case ir::AttrType::kTensor:
      QTOOL_CHECK(a.tensors.size() == 1, ErrorCode::kInternal, "tensor attribute '{}' holds {} tensors", a.name,
                  a.tensors.size());
      detail::tensor_to_proto(a.tensors[0], "", ap->mutable_t());
      break;
    case ir::AttrType::kGraph:
      QTOOL_CHECK(a.graphs.size() == 1, ErrorCode::kInternal, "graph attribute '{}' holds {} graphs", a.name,
                  a.graphs.size());
      graph_to_proto(*a.graphs[0], ap->mutable_g(), ctx, nullptr);
      break;
    case ir::AttrType::kFloats: for (float f : a.floats) ap->add_floats(f); break;
    case ir::AttrType::kInts: for (int64_t i : a.ints) ap->add_ints(i); break;
    case ir::AttrType::kStrings: for (const auto& s : a.strings) ap->add_strings(s); break;
    case ir::AttrType::kTensors:
      for (const auto& t : a.tensors) detail::tensor_to_proto(t, "", ap->add_tensors());
      break;
    case ir::AttrType::kGraphs:
      for (const auto& sg : a.graphs) graph_to_proto(*sg, ap->add_graphs(), ctx, nullptr);
      break;
    case ir::AttrType::kSparseTensor:
      if (!a.opaque.empty()) ap->mutable_sparse_tensor()->ParseFromString(a.opaque[0]);
      break;
    case ir::AttrType::kSparseTensors:
      for (const auto& s : a.opaque) ap->add_sparse_tensors()->ParseFromString(s);
      break;
    case ir::AttrType::kTypeProto:
      if (!a.opaque.empty()) ap->mutable_tp()->ParseFromString(a.opaque[0]);
      break;
    case ir::AttrType::kTypeProtos:
      for (const auto& s : a.opaque) ap->add_type_protos()->ParseFromString(s);
      break;
    case ir::AttrType::kUndefined: break;
  }
}

void graph_to_proto(const ir::Graph& g, onnx::GraphProto* gp, SaveContext& ctx, const ir::Model* main_model) {
  if (!g.name().empty()) gp->set_name(g.name());
  if (!g.doc_string().empty()) gp->set_doc_string(g.doc_string());
  // Sparse initializers go back as sparse when the graph still holds exactly their dense value.
  std::set<std::string> as_sparse;
  if (main_model) {
    for (const auto& sp : main_model->sparse_initializers) {
      const ir::Value* v = g.find_value(sp.name);
      if (!v || !v->is_initializer() || !v->initializer()->defined()) continue;
      if (!tensors_equal(*v->initializer(), detail::densify(sp.values, sp.indices, sp.dims, sp.name))) continue;
      as_sparse.insert(sp.name);
      auto* sproto = gp->add_sparse_initializer();
      initializer_to_proto(sp.values, sp.name, sproto->mutable_values(), ctx);
      initializer_to_proto(sp.indices, "", sproto->mutable_indices(), ctx);
      for (int64_t d : sp.dims) sproto->add_dims(d);
    }
  }
  for (const ir::Value* v : g.initializers()) {
    if (as_sparse.count(v->name())) continue;
    with_context(fmt::format("in initializer '{}'", v->name()),
                 [&] { initializer_to_proto(*v->initializer(), v->name(), gp->add_initializer(), ctx); });
  }
  for (const ir::Value* v : g.inputs()) value_info_to_proto(*v, gp->add_input());
  for (const auto& n : g.nodes()) {
    auto* np = gp->add_node();
    for (const ir::Value* v : n->inputs()) np->add_input(v ? v->name() : std::string());
    for (const ir::Value* v : n->outputs()) np->add_output(v ? v->name() : std::string());
    if (!n->name().empty()) np->set_name(n->name());
    np->set_op_type(n->op_type());
    if (!n->domain().empty()) np->set_domain(n->domain());
    if (!n->doc_string().empty()) np->set_doc_string(n->doc_string());
    with_context(fmt::format("in node {}", n->describe()), [&] {
      for (const auto& a : n->attributes()) attribute_to_proto(a, np->add_attribute(), ctx);
    });
  }
  for (const ir::Value* v : g.outputs()) value_info_to_proto(*v, gp->add_output());
  for (const ir::Value* v : g.value_infos()) value_info_to_proto(*v, gp->add_value_info());
}

void model_to_proto(const ir::Model& m, onnx::ModelProto* mp, SaveContext& ctx) {
  if (!m.opaque_extra.empty() && !mp->MergeFromString(m.opaque_extra)) {
    fail(ErrorCode::kInternal, "preserved model fields are corrupt");
  }
  mp->set_ir_version(m.ir_version);
  for (const auto& o : m.opset_imports) {
    auto* op = mp->add_opset_import();
    op->set_domain(o.domain);
    op->set_version(o.version);
  }
  if (!m.producer_name.empty()) mp->set_producer_name(m.producer_name);
  if (!m.producer_version.empty()) mp->set_producer_version(m.producer_version);
  if (!m.domain.empty()) mp->set_domain(m.domain);
  if (m.model_version != 0) mp->set_model_version(m.model_version);
  if (!m.doc_string.empty()) mp->set_doc_string(m.doc_string);
  graph_to_proto(*m.graph, mp->mutable_graph(), ctx, &m);
  for (const auto& kv : m.metadata_props) {
    auto* p = mp->add_metadata_props();
    p->set_key(kv.first);
    p->set_value(kv.second);
  }
  for (const auto& f : m.functions) {
    if (!mp->add_functions()->ParseFromString(f)) fail(ErrorCode::kInternal, "preserved function is corrupt");
  }
}

// Total bytes of tensor data in a graph and its subgraphs.
size_t tensor_bytes(const ir::Graph& g) {
  size_t n = 0;
  for (const ir::Value* v : g.initializers()) {
    if (v->initializer()->defined()) n += v->initializer()->nbytes();
  }
  for (const auto& node : g.nodes()) {
    for (const auto& a : node->attributes()) {
      for (const auto& t : a.tensors) n += t.defined() ? t.nbytes() : 0;
      for (const auto& sg : a.graphs) n += tensor_bytes(*sg);
    }
  }
  return n;
}

// Files whose mappings back the model's tensors (external data it was loaded from).
void mapped_sources(const ir::Graph& g, std::set<std::string>& out) {
  auto add = [&](const Tensor& t) {
    if (const auto* mf = dynamic_cast<const MappedFile*>(t.buffer().get())) out.insert(mf->path());
  };
  for (const ir::Value* v : g.initializers()) add(*v->initializer());
  for (const auto& node : g.nodes()) {
    for (const auto& a : node->attributes()) {
      for (const auto& t : a.tensors) add(t);
      for (const auto& sg : a.graphs) mapped_sources(*sg, out);
    }
  }
}

bool same_file(const std::string& a, const std::string& b) {
  std::error_code ec;
  if (fs::exists(a, ec) && fs::exists(b, ec)) return fs::equivalent(a, b, ec) && !ec;
  return fs::weakly_canonical(a, ec) == fs::weakly_canonical(b, ec);
}

void write_proto(const onnx::ModelProto& mp, TempFile& f, const std::string& path) {
  const size_t size = mp.ByteSizeLong();
  if (size > static_cast<size_t>(INT_MAX)) {
    fail(ErrorCode::kUnsupported, "'{}' would be {} bytes, over protobuf's 2 GB limit; save with external data",
         path, size);
  }
  google::protobuf::io::FileOutputStream fos(f.fd());
  {
    google::protobuf::io::CodedOutputStream cos(&fos);
    cos.SetSerializationDeterministic(true);
    mp.SerializeWithCachedSizes(&cos);
    if (cos.HadError()) fail(ErrorCode::kIo, "cannot write '{}'", path);
  }
  if (!fos.Flush()) fail(ErrorCode::kIo, "cannot write '{}': {}", path, std::strerror(fos.GetErrno()));
}

}  // namespace

void save_model(const ir::Model& model, const std::string& path, const SaveOptions& options) {
  with_context(fmt::format("while saving '{}'", path), [&] {
    std::set<std::string> sources;
    if (!model.source_path.empty()) sources.insert(model.source_path);
    mapped_sources(*model.graph, sources);
    for (const auto& s : sources) {
      if (same_file(path, s)) {
        fail(ErrorCode::kConfig, "refusing to overwrite '{}', which the model was loaded from", s);
      }
    }
    bool external = options.external_data == SaveOptions::ExternalData::kAlways;
    size_t threshold = options.external_threshold;
    if (options.external_data == SaveOptions::ExternalData::kAuto && tensor_bytes(*model.graph) > options.auto_external_limit) {
      external = true;
    }
    const fs::path target(path);
    std::unique_ptr<TempFile> data;
    SaveContext ctx;
    std::string data_path;
    if (external) {
      std::string rel = options.external_file.empty() ? target.filename().string() + ".data" : options.external_file;
      rel = detail::checked_location(rel, "(external data file)");
      data_path = ((target.has_parent_path() ? target.parent_path() : fs::path(".")) / rel).string();
      if (same_file(data_path, path)) fail(ErrorCode::kConfig, "the external data file cannot be the model file itself");
      for (const auto& s : sources) {
        if (same_file(data_path, s)) {
          fail(ErrorCode::kConfig, "refusing to overwrite '{}', which the model was loaded from", s);
        }
      }
      data = std::make_unique<TempFile>(data_path);
      ctx.data = data.get();
      ctx.data_location = rel;
      ctx.threshold = threshold;
    }
    onnx::ModelProto mp;
    model_to_proto(model, &mp, ctx);
    TempFile out(path);
    write_proto(mp, out, path);
    out.finish();
    if (data) {
      data->finish();
      data->commit();
    }
    out.commit();
  });
}

std::string serialize_model(const ir::Model& model) {
  onnx::ModelProto mp;
  SaveContext ctx;
  model_to_proto(model, &mp, ctx);
  const size_t size = mp.ByteSizeLong();
  if (size > static_cast<size_t>(INT_MAX)) {
    fail(ErrorCode::kUnsupported, "model would be {} bytes, over protobuf's 2 GB limit", size);
  }
  std::string out;
  {
    google::protobuf::io::StringOutputStream sos(&out);
    google::protobuf::io::CodedOutputStream cos(&sos);
    cos.SetSerializationDeterministic(true);
    mp.SerializeWithCachedSizes(&cos);
  }
  return out;
}

Tensor load_tensor_pb(const std::string& path, std::string* name) {
  return with_context(fmt::format("while reading tensor file '{}'", path), [&]() -> Tensor {
    auto file = MappedFile::open(path);
    if (file->size() > static_cast<size_t>(INT_MAX)) fail(ErrorCode::kUnsupported, "file is larger than 2 GB");
    onnx::TensorProto tp;
    google::protobuf::io::ArrayInputStream ais(file->data(), static_cast<int>(file->size()));
    google::protobuf::io::CodedInputStream cis(&ais);
    cis.SetTotalBytesLimit(INT_MAX);
    if (file->size() == 0 || !tp.ParseFromCodedStream(&cis) || !cis.ConsumedEntireMessage()) {
      fail(ErrorCode::kInvalidInput, "'{}' is not a valid ONNX TensorProto file", path);
    }
    const fs::path p(path);
    detail::ExternalData ext(p.has_parent_path() ? p.parent_path().string() : ".", true);
    if (name) *name = tp.name();
    Tensor t = detail::tensor_from_proto(tp, &ext);
    // Detach from the file mapping: test inputs are small and callers may keep them long.
    return t.is_mapped() ? t.clone() : t;
  });
}

void save_tensor_pb(const std::string& path, const Tensor& t, const std::string& name) {
  onnx::TensorProto tp;
  detail::tensor_to_proto(t, name, &tp);
  std::string bytes;
  {
    google::protobuf::io::StringOutputStream sos(&bytes);
    google::protobuf::io::CodedOutputStream cos(&sos);
    cos.SetSerializationDeterministic(true);
    tp.SerializeToCodedStream(&cos);
  }
  write_file_atomic(path, bytes);
}

}  // namespace qtool::onnx_io
