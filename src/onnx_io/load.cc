// ONNX file -> ir::Model.
//
// Loading runs in four steps:
//   1. parse the ModelProto (CodedInputStream with a 2 GB limit: protobuf's default 64 MB would refuse
//      large inline models);
//   2. optionally run libonnx shape inference on a copy whose large raw_data buffers were set aside
//      (inference only needs dims and small shape tensors, and copying weights would double memory);
//   3. build the IR graph by graph: initializers and inputs, then every node with its outputs, then the
//      node inputs (files may be unsorted, so inputs resolve only once every producer exists), then
//      attributes (subgraphs resolve outer-scope names through Graph::lookup), then outputs and
//      value_info;
//   4. fill types the model did not state from shape inference, validate (cycles, dangling inputs) and
//      sort every graph topologically.
// Every problem a file can have becomes a qtool::Error naming the file, node and tensor.
#include <climits>
#include <filesystem>
#include <unordered_map>

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <onnx/shape_inference/implementation.h>
#include <spdlog/spdlog.h>

#include "proto_util.h"
#include "qtool/core/output_file.h"
#include "qtool/onnx_io/onnx_io.h"

namespace qtool::onnx_io {
namespace {

using detail::ExternalData;

std::string normal_domain(const std::string& d) { return d == "ai.onnx" ? std::string() : d; }

struct LoadContext {
  ExternalData* ext = nullptr;
  ir::Model* model = nullptr;
  int depth = 0;
};

void graph_from_proto(onnx::GraphProto& gp, ir::Graph& g, LoadContext& ctx);

ir::Attribute attribute_from_proto(onnx::AttributeProto& ap, ir::Graph& g, LoadContext& ctx) {
  ir::Attribute a;
  a.name = ap.name();
  a.ref_attr_name = ap.ref_attr_name();
  a.doc_string = ap.doc_string();
  int32_t type = ap.type();
  if (type == 0) {  // IR < 2 files leave the type out: infer it from the field that is set
    if (ap.has_f()) type = 1;
    else if (ap.has_i()) type = 2;
    else if (ap.has_s()) type = 3;
    else if (ap.has_t()) type = 4;
    else if (ap.has_g()) type = 5;
    else if (ap.floats_size()) type = 6;
    else if (ap.ints_size()) type = 7;
    else if (ap.strings_size()) type = 8;
    else if (ap.tensors_size()) type = 9;
    else if (ap.graphs_size()) type = 10;
  }
  if (type < 1 || type > 14) {
    fail(ErrorCode::kInvalidModel, "attribute '{}' has invalid type {}", ap.name(), type);
  }
  a.type = static_cast<ir::AttrType>(type);
  auto sub = [&](onnx::GraphProto& sgp) {
    QTOOL_CHECK(ctx.depth < 64, ErrorCode::kInvalidModel, "subgraphs nested deeper than 64 levels");
    auto sg = std::make_unique<ir::Graph>(sgp.name(), &g);
    ++ctx.depth;
    with_context(fmt::format("in subgraph '{}' (attribute '{}')", sgp.name(), ap.name()),
                 [&] { graph_from_proto(sgp, *sg, ctx); });
    --ctx.depth;
    a.graphs.push_back(std::move(sg));
  };
  switch (a.type) {
    case ir::AttrType::kFloat: a.f = ap.f(); break;
    case ir::AttrType::kInt: a.i = ap.i(); break;
    case ir::AttrType::kString: a.s = ap.s(); break;
    case ir::AttrType::kTensor: a.tensors.push_back(detail::tensor_from_proto(*ap.mutable_t(), ctx.ext)); break;
    case ir::AttrType::kGraph: sub(*ap.mutable_g()); break;
    case ir::AttrType::kFloats: a.floats.assign(ap.floats().begin(), ap.floats().end()); break;
    case ir::AttrType::kInts: a.ints.assign(ap.ints().begin(), ap.ints().end()); break;
    case ir::AttrType::kStrings: a.strings.assign(ap.strings().begin(), ap.strings().end()); break;
    case ir::AttrType::kTensors:
      for (auto& t : *ap.mutable_tensors()) a.tensors.push_back(detail::tensor_from_proto(t, ctx.ext));
      break;
    case ir::AttrType::kGraphs:
      for (auto& sg : *ap.mutable_graphs()) sub(sg);
      break;
    case ir::AttrType::kSparseTensor: a.opaque.push_back(ap.sparse_tensor().SerializeAsString()); break;
    case ir::AttrType::kSparseTensors:
      for (const auto& st : ap.sparse_tensors()) a.opaque.push_back(st.SerializeAsString());
      break;
    case ir::AttrType::kTypeProto: a.opaque.push_back(ap.tp().SerializeAsString()); break;
    case ir::AttrType::kTypeProtos:
      for (const auto& tp : ap.type_protos()) a.opaque.push_back(tp.SerializeAsString());
      break;
    case ir::AttrType::kUndefined: break;
  }
  return a;
}

Tensor sparse_from_proto(onnx::SparseTensorProto& sp, LoadContext& ctx, ir::SparseInitializer* keep) {
  Tensor values = detail::tensor_from_proto(*sp.mutable_values(), ctx.ext);
  Tensor indices = detail::tensor_from_proto(*sp.mutable_indices(), ctx.ext);
  Shape dims(sp.dims().begin(), sp.dims().end());
  const std::string& name = sp.values().name();
  QTOOL_CHECK(!name.empty(), ErrorCode::kInvalidModel, "sparse initializer without a name");
  QTOOL_CHECK(values.defined() && indices.defined(), ErrorCode::kUnsupported,
              "sparse initializer '{}' uses external data that was not loaded", name);
  Tensor dense = detail::densify(values, indices, dims, name);
  if (keep) {
    keep->name = name;
    keep->values = std::move(values);
    keep->indices = std::move(indices);
    keep->dims = std::move(dims);
  }
  return dense;
}

void graph_from_proto(onnx::GraphProto& gp, ir::Graph& g, LoadContext& ctx) {
  g.set_name(gp.name());
  g.set_doc_string(gp.doc_string());
  for (auto& tp : *gp.mutable_initializer()) {
    QTOOL_CHECK(!tp.name().empty(), ErrorCode::kInvalidModel, "graph '{}' has an initializer without a name",
                gp.name());
    const std::string name = tp.name();
    Tensor t = detail::tensor_from_proto(tp, ctx.ext);
    if (!t.defined()) {
      // External data not loaded (LoadOptions::load_external_data = false): an initializer holding an
      // undefined tensor, typed from the proto.
      ir::Value* v = g.add_initializer(name, Tensor());
      v->type().elem_type = static_cast<DataType>(tp.data_type());
      v->type().has_shape = true;
      for (int64_t d : tp.dims()) v->type().dims.push_back(ir::Dim{d, {}});
      continue;
    }
    g.add_initializer(name, std::move(t));
  }
  for (auto& sp : *gp.mutable_sparse_initializer()) {
    ir::SparseInitializer keep;
    const bool main = g.parent() == nullptr && ctx.depth == 0;
    Tensor dense = with_context(fmt::format("in sparse initializer '{}'", sp.values().name()),
                                [&] { return sparse_from_proto(sp, ctx, main ? &keep : nullptr); });
    g.add_initializer(keep.name.empty() ? sp.values().name() : keep.name, std::move(dense));
    if (main) ctx.model->sparse_initializers.push_back(std::move(keep));
  }
  for (const auto& vi : gp.input()) {
    QTOOL_CHECK(!vi.name().empty(), ErrorCode::kInvalidModel, "graph '{}' has an input without a name", gp.name());
    ir::Value* v = g.add_input(vi.name(), detail::type_from_proto(vi.type()));
    if (v->is_initializer() && v->initializer()->defined()) {
      // IR-3 style: the initializer's own dtype and dims are authoritative.
      const Tensor* t = v->initializer();
      v->type().elem_type = t->dtype();
      v->type().has_shape = true;
      v->type().dims.clear();
      for (int64_t d : t->shape()) v->type().dims.push_back(ir::Dim{d, {}});
    }
    v->set_doc_string(vi.doc_string());
  }
  // Pass 1: every node and its outputs, so that pass 2 can resolve inputs in any file order.
  std::vector<ir::Node*> nodes;
  nodes.reserve(static_cast<size_t>(gp.node_size()));
  for (auto& np : *gp.mutable_node()) {
    std::vector<std::string> outs(np.output().begin(), np.output().end());
    ir::Node* n = with_context(fmt::format("in node '{}' ({})", np.name(), np.op_type()), [&] {
      QTOOL_CHECK(!np.op_type().empty(), ErrorCode::kInvalidModel, "node has no op_type");
      return g.add_node(np.op_type(), {}, outs, np.name(), normal_domain(np.domain()));
    });
    n->set_doc_string(np.doc_string());
    nodes.push_back(n);
  }
  // Pass 2: inputs (this graph first, then enclosing graphs).
  for (int k = 0; k < gp.node_size(); ++k) {
    ir::Node* n = nodes[static_cast<size_t>(k)];
    for (const auto& in : gp.node(k).input()) {
      if (in.empty()) {
        n->add_input(nullptr);
        continue;
      }
      ir::Value* v = g.lookup(in);
      if (!v) {
        fail(ErrorCode::kInvalidModel,
             "node {} reads tensor '{}', which no node, initializer or graph input provides (graph '{}')",
             n->describe(), in, gp.name());
      }
      n->add_input(v);
    }
  }
  // Pass 3: attributes; subgraphs see every value of this graph.
  for (int k = 0; k < gp.node_size(); ++k) {
    ir::Node* n = nodes[static_cast<size_t>(k)];
    with_context(fmt::format("in node {}", n->describe()), [&] {
      for (auto& ap : *gp.mutable_node(k)->mutable_attribute()) {
        QTOOL_CHECK(!n->has_attr(ap.name()), ErrorCode::kInvalidModel, "attribute '{}' is given twice", ap.name());
        n->mutable_attributes().push_back(attribute_from_proto(ap, g, ctx));
      }
    });
  }
  for (const auto& vi : gp.output()) {
    ir::Value* v = g.lookup(vi.name());
    if (!v) {
      fail(ErrorCode::kInvalidModel, "graph output '{}' is not produced by any node, initializer or input (graph '{}')",
           vi.name(), gp.name());
    }
    ir::TypeInfo t = detail::type_from_proto(vi.type());
    if (v->owner() == &g && !v->is_initializer() && t.known()) v->type() = std::move(t);
    if (v->owner() == &g && v->doc_string().empty()) v->set_doc_string(vi.doc_string());
    g.add_output(v);
  }
  for (const auto& vi : gp.value_info()) {
    ir::Value* v = g.find_value(vi.name());
    if (!v) {
      spdlog::debug("value_info '{}' names no tensor of graph '{}'; dropped", vi.name(), gp.name());
      continue;
    }
    ir::TypeInfo t = detail::type_from_proto(vi.type());
    if (!v->is_initializer() && t.known()) v->type() = std::move(t);
    if (v->doc_string().empty()) v->set_doc_string(vi.doc_string());
    g.add_value_info(v);
  }
}

// Fills value types the model left out from an inferred copy of the graph proto (same node order).
void apply_inferred(const onnx::GraphProto& gp, ir::Graph& g) {
  auto apply = [&](const onnx::ValueInfoProto& vi) {
    ir::Value* v = g.find_value(vi.name());
    if (!v || v->is_initializer()) return;
    ir::TypeInfo t = detail::type_from_proto(vi.type());
    if (!t.known()) return;
    ir::TypeInfo& cur = v->type();
    if (!cur.known()) {
      cur = std::move(t);
    } else if (!cur.has_shape && t.has_shape && cur.elem_type == t.elem_type && cur.opaque_type.empty()) {
      cur.has_shape = true;
      cur.dims = std::move(t.dims);
    }
  };
  for (const auto& vi : gp.value_info()) apply(vi);
  for (const auto& vi : gp.output()) apply(vi);
  if (static_cast<size_t>(gp.node_size()) != g.num_nodes()) return;
  for (int k = 0; k < gp.node_size(); ++k) {
    ir::Node* n = g.nodes()[static_cast<size_t>(k)].get();
    for (const auto& ap : gp.node(k).attribute()) {
      const ir::Attribute* a = n->find_attr(ap.name());
      if (!a) continue;
      if (ap.has_g() && a->graphs.size() == 1) apply_inferred(ap.g(), *a->graphs[0]);
      for (int i = 0; i < ap.graphs_size() && static_cast<size_t>(i) < a->graphs.size(); ++i) {
        apply_inferred(ap.graphs(i), *a->graphs[static_cast<size_t>(i)]);
      }
    }
  }
}

void sort_all(ir::Graph& g) {
  g.topo_sort();
  for (const auto& n : g.nodes()) {
    for (ir::Graph* sg : n->subgraphs()) sort_all(*sg);
  }
}

// libonnx 1.12 only knows "" as the default domain: spell "ai.onnx" that way in the inference copy.
void normalize_domains(onnx::GraphProto* gp) {
  for (auto& n : *gp->mutable_node()) {
    if (n.domain() == "ai.onnx") n.clear_domain();
    for (auto& a : *n.mutable_attribute()) {
      if (a.has_g()) normalize_domains(a.mutable_g());
      for (auto& g : *a.mutable_graphs()) normalize_domains(&g);
    }
  }
}

// Runs libonnx shape inference on a copy of `mp` without its large raw_data buffers.
std::unique_ptr<onnx::ModelProto> inferred_copy(onnx::ModelProto& mp, const std::string& what) {
  constexpr size_t kSetAside = 4096;
  std::vector<std::pair<onnx::TensorProto*, std::string>> aside;
  for (auto& tp : *mp.mutable_graph()->mutable_initializer()) {
    if (tp.raw_data().size() >= kSetAside) {
      aside.emplace_back(&tp, std::string());
      aside.back().second.swap(*tp.mutable_raw_data());
    }
  }
  auto copy = std::make_unique<onnx::ModelProto>(mp);
  for (auto& [tp, s] : aside) tp->mutable_raw_data()->swap(s);
  normalize_domains(copy->mutable_graph());
  for (auto& o : *copy->mutable_opset_import()) {
    if (o.domain() == "ai.onnx") o.clear_domain();
  }
  try {
    onnx::shape_inference::InferShapes(*copy);
  } catch (const std::exception& e) {
    spdlog::warn("shape inference failed for '{}' (types stay as the model states them): {}", what, e.what());
    return nullptr;
  }
  return copy;
}

/// ONNX's shape inference for convolutions and pooling indexes X's and W's dims and the
/// kernel_shape/strides/dilations/pads lists by each other's lengths without checking them: a
/// fuzzed model with a rank-10 weight on a rank-4 input crashed inside libonnx. Such nodes (ranks
/// that differ, too few dims, lists of the wrong length) make the loader skip ONNX's inference;
/// qtool's own checks then name the node. Subgraphs are checked too.
bool window_ops_consistent(const onnx::GraphProto& g, std::unordered_map<std::string, int>& rank) {
  for (const auto& vi : g.input())
    if (vi.type().has_tensor_type() && vi.type().tensor_type().has_shape())
      rank[vi.name()] = vi.type().tensor_type().shape().dim_size();
  for (const auto& vi : g.value_info())
    if (vi.type().has_tensor_type() && vi.type().tensor_type().has_shape())
      rank[vi.name()] = vi.type().tensor_type().shape().dim_size();
  for (const auto& t : g.initializer()) rank[t.name()] = t.dims_size();
  static const std::unordered_map<std::string, int> kWeightInput = {
      {"Conv", 1}, {"ConvTranspose", 1}, {"ConvInteger", 1}, {"QLinearConv", 3},
      {"MaxPool", -1}, {"AveragePool", -1}, {"LpPool", -1}};
  for (const auto& n : g.node()) {
    for (const auto& a : n.attribute()) {
      if (a.has_g() && !window_ops_consistent(a.g(), rank)) return false;
      for (const auto& sg : a.graphs())
        if (!window_ops_consistent(sg, rank)) return false;
    }
    if (!normal_domain(n.domain()).empty()) continue;
    const auto it = kWeightInput.find(n.op_type());
    if (it == kWeightInput.end()) continue;
    auto rank_of = [&](int i) {
      if (i < 0 || i >= n.input_size()) return -1;
      const auto r = rank.find(n.input(i));
      return r == rank.end() ? -1 : r->second;
    };
    const int rx = rank_of(0), rw = rank_of(it->second);
    if (rx >= 0 && rw >= 0 && rx != rw) return false;
    const int r = rx >= 0 ? rx : rw;
    if (r < 0) continue;
    if (r < 3) return false;
    const int spatial = r - 2;
    for (const auto& a : n.attribute()) {
      if ((a.name() == "kernel_shape" || a.name() == "strides" || a.name() == "dilations" ||
           a.name() == "output_padding") && a.ints_size() != spatial)
        return false;
      if (a.name() == "output_shape" && a.ints_size() != spatial && a.ints_size() != r) return false;
      if (a.name() == "pads" && a.ints_size() != 2 * spatial) return false;
    }
  }
  return true;
}

bool inference_supported(const onnx::ModelProto& mp) {
  if (mp.has_graph()) {
    std::unordered_map<std::string, int> rank;
    if (!window_ops_consistent(mp.graph(), rank)) {
      spdlog::debug("ONNX shape inference skipped: a convolution or pooling node has inconsistent ranks or lists");
      return false;
    }
  }
  for (const auto& o : mp.opset_import()) {
    const std::string d = normal_domain(o.domain());
    if (d.empty() && o.version() > 17) return false;
    if (d == "ai.onnx.ml" && o.version() > 3) return false;
  }
  return true;
}

ir::Model model_from_proto(onnx::ModelProto& mp, const std::string& what, const std::string& base_dir,
                           const LoadOptions& options) {
  if (!mp.has_graph() || !mp.has_ir_version()) {
    fail(ErrorCode::kInvalidModel, "'{}' is not an ONNX model (no {})", what,
         mp.has_graph() ? "ir_version" : "graph");
  }
  if (mp.ir_version() < 3) {
    fail(ErrorCode::kUnsupported, "'{}' has IR version {}; qtool reads IR version 3 and newer", what,
         mp.ir_version());
  }
  ir::Model m;
  m.ir_version = mp.ir_version();
  for (const auto& o : mp.opset_import()) {
    const std::string d = normal_domain(o.domain());
    if (m.opset(d) != 0) fail(ErrorCode::kInvalidModel, "opset domain '{}' is imported twice", d);
    m.opset_imports.push_back(ir::OpsetImport{d, o.version()});
  }
  const int64_t opset = m.opset("");
  if (opset != 0 && (opset < 7 || opset > 25)) {
    spdlog::warn("'{}' imports ai.onnx opset {}; qtool is tested with opsets 7 to 25", what, opset);
  }
  m.producer_name = mp.producer_name();
  m.producer_version = mp.producer_version();
  m.domain = mp.domain();
  m.doc_string = mp.doc_string();
  m.model_version = mp.model_version();
  for (const auto& kv : mp.metadata_props()) m.metadata_props.emplace_back(kv.key(), kv.value());
  for (const auto& f : mp.functions()) {
    m.functions.push_back(f.SerializeAsString());
    m.function_ids.emplace_back(f.domain(), f.name());
  }

  std::unique_ptr<onnx::ModelProto> inferred;
  if (options.infer_shapes && inference_supported(mp)) inferred = inferred_copy(mp, what);

  ExternalData ext(base_dir, options.load_external_data);
  LoadContext ctx{&ext, &m, 0};
  m.graph = std::make_unique<ir::Graph>(mp.graph().name());
  graph_from_proto(*mp.mutable_graph(), *m.graph, ctx);
  if (inferred) apply_inferred(inferred->graph(), *m.graph);
  m.graph->validate();
  sort_all(*m.graph);

  // Whatever qtool does not interpret (training_info, unknown fields) travels as opaque bytes.
  mp.clear_graph();
  mp.clear_functions();
  mp.clear_opset_import();
  mp.clear_metadata_props();
  mp.clear_ir_version();
  mp.clear_producer_name();
  mp.clear_producer_version();
  mp.clear_domain();
  mp.clear_model_version();
  mp.clear_doc_string();
  m.opaque_extra = mp.SerializeAsString();
  return m;
}

}  // namespace

ir::Model parse_model(std::string_view bytes, const std::string& what, const std::string& base_dir,
                      const LoadOptions& options) {
  return with_context(fmt::format("while loading '{}'", what), [&]() -> ir::Model {
    if (bytes.size() > static_cast<size_t>(INT_MAX)) {
      fail(ErrorCode::kUnsupported, "'{}' is larger than 2 GB; protobuf cannot parse it (use external data)", what);
    }
    onnx::ModelProto mp;
    google::protobuf::io::ArrayInputStream ais(bytes.data(), static_cast<int>(bytes.size()));
    google::protobuf::io::CodedInputStream cis(&ais);
    cis.SetTotalBytesLimit(INT_MAX);
    if (bytes.empty() || !mp.ParseFromCodedStream(&cis) || !cis.ConsumedEntireMessage()) {
      fail(ErrorCode::kInvalidModel, "not a valid ONNX model (protobuf parsing failed: {})",
           bytes.empty() ? "empty file" : "truncated, corrupt or not a protobuf");
    }
    return model_from_proto(mp, what, base_dir, options);
  });
}

ir::Model load_model(const std::string& path, const LoadOptions& options) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(path, ec)) {
    Error e(ErrorCode::kIo, fmt::format("model file '{}' does not exist", path));
    throw e;
  }
  auto file = with_context(fmt::format("while loading '{}'", path), [&] { return MappedFile::open(path); });
  const fs::path p(path);
  std::string base = p.has_parent_path() ? p.parent_path().string() : std::string(".");
  std::string_view bytes(reinterpret_cast<const char*>(file->data()), file->size());
  ir::Model m = parse_model(bytes, path, base, options);
  m.source_path = path;
  protect_input(path);  // no output of this run may replace it (core/output_file.h)
  return m;
}

}  // namespace qtool::onnx_io
