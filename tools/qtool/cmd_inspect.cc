// qtool inspect MODEL [--json]: what is in an ONNX model, and whether it is already quantized.
//
// Human-readable tables go to stdout by default; --json prints exactly one JSON document on stdout
// (logs stay on stderr). JSON schema (all keys always present; "" is the default ai.onnx domain):
//
// {
//   "file": "path/model.onnx", "file_bytes": 26454,
//   "ir_version": 3, "opsets": [{"domain": "", "version": 8}],
//   "producer": {"name": "CNTK", "version": "2.5.1"}, "model_version": 1, "graph_name": "...",
//   "metadata": {"key": "value", ...},
//   "inputs":  [{"name": "Input3", "dtype": "float32", "shape": [1, 1, 28, 28]}],  // runtime inputs only
//   "outputs": [{"name": "...", "dtype": "...", "shape": [1, "batch", null]}],
//        // shape: integers for fixed dims, strings for symbolic dims, null for unknown dims;
//        // "shape": null when the rank is unknown; "dtype": "unknown" when not stated or inferred
//   "nodes": {"total": 12, "main_graph": 12},          // total includes nodes inside subgraphs
//   "op_histogram": {"Conv": 2, "com.microsoft.MatMulNBits": 4},  // all graphs, keys domain-qualified
//                                                                   // for non-default domains
//   "parameters": {                                     // initializers (all graphs) + Constant node tensors
//     "count": 5994, "bytes": 23976, "initializers": 8, "constant_tensors": 0, "external_bytes": 0,
//     "by_dtype": {"float32": {"tensors": 8, "count": 5994, "bytes": 23976}}
//   },
//   "largest_tensors": [                                // top 10 by bytes, then name
//     {"name": "...", "dtype": "float32", "shape": [16, 4, 4, 10], "count": 2560, "bytes": 10240,
//      "kind": "initializer" | "constant", "graph": "main graph name or subgraph name"}
//   ],
//   "subgraphs": {"count": 2, "list": [{"node": "If_0", "op_type": "If", "attribute": "then_branch",
//                                        "graph": "then", "nodes": 7, "depth": 1}]},
//   "functions": [{"domain": "local", "name": "Twice"}],
//   "quantization": {
//     "quantized": true,                     // any of the formats below is present
//     "formats": ["qdq", "qoperator", "integer", "matmul_nbits", "cast", "table"],   // which ones are present
//     "quantize_linear": 10, "dequantize_linear": 12,
//     "qdq_pairs": 10,                       // QuantizeLinear outputs read by a DequantizeLinear
//                                            // (directly or through Cast/Identity)
//     "qdq_bits": {"uint8": 20, "int8": 2},  // Q/DQ nodes by quantized dtype (zero point / input dtype)
//     "qdq_bit_widths": {"8": 22},           // the same nodes by bit width of that dtype
//     "dequantized_weights": 2,              // DequantizeLinear reading an initializer
//     "cast_weights": 0,                     // integer initializers read through Cast(to=float)
//                                            // (weight levels of --format cast / --mode dynamic)
//     "table_weights": 0,                    // weights decoded by a Gather on a float table from
//                                            // constants only (palettes, fp4 codes)
//     "sparse_weights": 0,                   // weights expanded from a bit mask and the kept levels (pruned)
//     "weight_bits": {"int8": 2},            // dtype of the dequantized and cast weights
//     "matmul_nbits": [{"bits": 4, "block_size": 32, "count": 36}],
//     "qlinear_ops": {"QLinearConv": 3},     // QLinear* operators (QOperator format)
//     "integer_ops": {"MatMulInteger": 1}    // MatMulInteger, ConvInteger, DynamicQuantizeLinear,
//                                            // DynamicQuantizeMatMul, DynamicQuantizeLSTM
//   }
// }
#include <algorithm>
#include <filesystem>
#include <iostream>
#include <map>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "qtool/core/error.h"
#include "qtool/onnx_io/onnx_io.h"

namespace qtool::cli {
namespace {

using nlohmann::json;
using ordered_json = nlohmann::ordered_json;

json shape_json(const ir::TypeInfo& t) {
  if (!t.has_shape) return nullptr;
  json s = json::array();
  for (const auto& d : t.dims) {
    if (d.known()) s.push_back(d.value);
    else if (!d.param.empty()) s.push_back(d.param);
    else s.push_back(nullptr);
  }
  return s;
}

std::string shape_text(const json& s) {
  if (s.is_null()) return "?";
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) {
    if (i) out += ",";
    out += s[i].is_null() ? std::string("?") : s[i].is_string() ? s[i].get<std::string>() : s[i].dump();
  }
  return out + "]";
}

std::string dtype_text(DataType t) { return t == DataType::kUndefined ? "unknown" : std::string(dtype_name(t)); }

ordered_json value_json(const ir::Value& v) {
  ordered_json j;
  j["name"] = v.name();
  j["dtype"] = dtype_text(v.type().elem_type);
  j["shape"] = shape_json(v.type());
  return j;
}

// Dtype of a value: its constant data, else what the model (or shape inference) states.
DataType value_dtype(const ir::Value* v) {
  if (!v) return DataType::kUndefined;
  if (v->is_initializer() && v->initializer()->defined()) return v->initializer()->dtype();
  if (v->is_initializer()) return v->type().elem_type;
  if (const ir::Node* p = v->producer(); p && p->op_type() == "Constant" && p->domain().empty()) {
    if (const ir::Attribute* a = p->find_attr("value"); a && !a->tensors.empty()) return a->tensors[0].dtype();
  }
  return v->type().elem_type;
}

struct TensorEntry {
  std::string name, kind, graph;
  const Tensor* t;
};

struct Stats {
  std::map<std::string, int64_t> ops;
  size_t total_nodes = 0;
  std::vector<TensorEntry> tensors;
  ordered_json subgraphs = ordered_json::array();
  // quantization
  int64_t q = 0, dq = 0, pairs = 0, dq_weights = 0, cast_weights = 0;
  int64_t table_weights = 0, sparse_weights = 0;  ///< weights decoded by a Gather on a table; pruned (bit mask)
  std::map<std::string, int64_t> qdq_bits, weight_bits, qlinear, integer;
  std::map<std::pair<int64_t, int64_t>, int64_t> nbits;
};

/// True when v is computed from constants only (initializers through any ops, up to `depth` hops);
/// sets *sparse when a CumSum is on the way (the bit-mask expansion of a pruned weight).
bool constant_only(const ir::Value* v, int depth, bool* sparse) {
  if (!v) return false;
  if (v->is_initializer()) return !v->is_graph_input();
  const ir::Node* p = v->producer();
  if (!p || depth == 0 || v->is_graph_input()) return false;
  if (p->op_type() == "CumSum") *sparse = true;
  if (p->op_type() == "Constant") return true;
  for (const ir::Value* in : p->inputs())
    if (in && !constant_only(in, depth - 1, sparse)) return false;
  return true;
}

/// A float table: a float initializer, or a float16 one read through Cast.
bool float_table(const ir::Value* v) {
  if (!v) return false;
  if (v->is_initializer()) return v->initializer()->dtype() == DataType::kFloat;
  const ir::Node* p = v->producer();
  return p && p->op_type() == "Cast" && p->input(0) && p->input(0)->is_initializer() &&
         p->input(0)->initializer()->dtype() == DataType::kFloat16;
}

void walk(const ir::Graph& g, int depth, Stats& s) {
  const std::string gname = g.name().empty() ? (depth == 0 ? "main" : "(unnamed)") : g.name();
  for (const ir::Value* v : g.initializers()) s.tensors.push_back({v->name(), "initializer", gname, v->initializer()});
  for (const auto& n : g.nodes()) {
    ++s.total_nodes;
    const std::string key = n->domain().empty() ? n->op_type() : n->domain() + "." + n->op_type();
    ++s.ops[key];
    const std::string& op = n->op_type();
    const bool onnx_domain = n->domain().empty();
    const bool ms_domain = n->domain() == "com.microsoft";
    if (op == "Constant" && onnx_domain) {
      if (const ir::Attribute* a = n->find_attr("value"); a && !a->tensors.empty()) {
        const ir::Value* out = n->output(0);
        s.tensors.push_back({out ? out->name() : n->name(), "constant", gname, &a->tensors[0]});
      }
    }
    if ((onnx_domain || ms_domain) && op == "QuantizeLinear") {
      ++s.q;
      DataType qt = value_dtype(n->input(2));
      if (qt == DataType::kUndefined) qt = value_dtype(n->output(0));
      if (qt == DataType::kUndefined && n->has_attr("output_dtype")) qt = static_cast<DataType>(n->attr_int("output_dtype", 0));
      if (qt == DataType::kUndefined) qt = DataType::kUint8;  // ONNX default without a zero point
      ++s.qdq_bits[std::string(dtype_name(qt))];
      // A pair is a Q output read by a DQ, possibly through Cast/Identity (PyTorch exports Q -> Cast -> DQ).
      std::vector<const ir::Value*> frontier{n->output(0)};
      for (int hop = 0; hop < 4 && !frontier.empty(); ++hop) {
        std::vector<const ir::Value*> next;
        for (const ir::Value* v : frontier) {
          if (!v) continue;
          for (const ir::Use& u : v->uses()) {
            if (u.node->op_type() == "DequantizeLinear" && u.index == 0) ++s.pairs;
            else if (u.node->op_type() == "Cast" || u.node->op_type() == "Identity") next.push_back(u.node->output(0));
          }
        }
        frontier = std::move(next);
      }
    } else if ((onnx_domain || ms_domain) && op == "DequantizeLinear") {
      ++s.dq;
      const ir::Value* x = n->input(0);
      DataType qt = value_dtype(x);
      if (qt == DataType::kUndefined) qt = value_dtype(n->input(2));
      ++s.qdq_bits[dtype_text(qt)];
      if (x && x->is_initializer()) {
        ++s.dq_weights;
        ++s.weight_bits[dtype_text(qt)];
      }
    } else if (ms_domain && op == "MatMulNBits") {
      ++s.nbits[{n->attr_int("bits", 4), n->attr_int("block_size", 0)}];
    } else if (op.rfind("QLinear", 0) == 0) {
      ++s.qlinear[op];
    } else if (op == "MatMulInteger" || op == "ConvInteger" || op == "DynamicQuantizeLinear" ||
               op == "MatMulIntegerToFloat" || op == "DynamicQuantizeMatMul" || op == "DynamicQuantizeLSTM") {
      ++s.integer[op];
    } else if (onnx_domain && op == "Gather" && float_table(n->input(0))) {
      // Weight indices decoded by a Gather on a table (palettes, fp4 codes), computed from constants
      // only (an embedding's indices come from a graph input): folded by ONNX Runtime at load.
      bool sparse = false;
      if (constant_only(n->input(1), 24, &sparse)) {
        ++s.table_weights;
        s.sparse_weights += sparse;
      }
    } else if (onnx_domain && op == "Cast" && n->input(0) && !n->input(0)->is_initializer() &&
               n->attr_int("to", 0) == static_cast<int64_t>(DataType::kFloat)) {
      // Integer levels of a pruned layer expanded from a bit mask (CumSum -> Gather) and read through Cast.
      bool sparse = false;
      if (constant_only(n->input(0), 24, &sparse) && sparse) {
        ++s.cast_weights;
        ++s.sparse_weights;
      }
    } else if (onnx_domain && op == "Cast" && n->input(0) && n->input(0)->is_initializer() &&
               n->attr_int("to", 0) == static_cast<int64_t>(DataType::kFloat)) {
      // Weight levels read through Cast (-> Sub) -> Mul by their scales: qtool's --format cast and the
      // Conv/LSTM weights of --mode dynamic (constants ONNX Runtime folds when it loads the model).
      const DataType dt = value_dtype(n->input(0));
      if (dtype_is_integer(dt) && dtype_bits(dt) <= 8) {
        ++s.cast_weights;
        ++s.weight_bits[dtype_text(dt)];
      }
    }
    for (const auto& a : n->attributes()) {
      for (const auto& sg : a.graphs) {
        ordered_json e;
        e["node"] = n->name().empty() ? n->describe() : n->name();
        e["op_type"] = op;
        e["attribute"] = a.name;
        e["graph"] = sg->name();
        e["nodes"] = sg->num_nodes();
        e["depth"] = depth + 1;
        s.subgraphs.push_back(e);
        walk(*sg, depth + 1, s);
      }
    }
  }
}

ordered_json inspect_json(const ir::Model& m, const std::string& path) {
  ordered_json j;
  j["file"] = path;
  std::error_code ec;
  j["file_bytes"] = std::filesystem::file_size(path, ec);
  j["ir_version"] = m.ir_version;
  j["opsets"] = ordered_json::array();
  for (const auto& o : m.opset_imports) j["opsets"].push_back({{"domain", o.domain}, {"version", o.version}});
  j["producer"] = {{"name", m.producer_name}, {"version", m.producer_version}};
  j["model_version"] = m.model_version;
  j["graph_name"] = m.graph->name();
  j["metadata"] = ordered_json::object();
  for (const auto& [k, v] : m.metadata_props) j["metadata"][k] = v;
  j["inputs"] = ordered_json::array();
  for (const ir::Value* v : m.graph->runtime_inputs()) j["inputs"].push_back(value_json(*v));
  j["outputs"] = ordered_json::array();
  for (const ir::Value* v : m.graph->outputs()) j["outputs"].push_back(value_json(*v));

  Stats s;
  walk(*m.graph, 0, s);
  j["nodes"] = {{"total", s.total_nodes}, {"main_graph", m.graph->num_nodes()}};
  j["op_histogram"] = ordered_json::object();
  for (const auto& [k, v] : s.ops) j["op_histogram"][k] = v;

  int64_t count = 0, bytes = 0, ext_bytes = 0, inits = 0, consts = 0;
  std::map<std::string, std::array<int64_t, 3>> by;
  for (const auto& e : s.tensors) {
    if (!e.t->defined()) continue;
    const std::string dt(dtype_name(e.t->dtype()));
    const int64_t b = static_cast<int64_t>(e.t->nbytes());
    count += e.t->numel();
    bytes += b;
    ext_bytes += e.t->is_mapped() ? b : 0;
    (e.kind == "initializer" ? inits : consts)++;
    auto& x = by[dt];
    x[0] += 1;
    x[1] += e.t->numel();
    x[2] += b;
  }
  ordered_json p;
  p["count"] = count;
  p["bytes"] = bytes;
  p["initializers"] = inits;
  p["constant_tensors"] = consts;
  p["external_bytes"] = ext_bytes;
  p["by_dtype"] = ordered_json::object();
  for (const auto& [dt, x] : by) p["by_dtype"][dt] = {{"tensors", x[0]}, {"count", x[1]}, {"bytes", x[2]}};
  j["parameters"] = p;

  std::vector<const TensorEntry*> order;
  for (const auto& e : s.tensors) {
    if (e.t->defined()) order.push_back(&e);
  }
  std::stable_sort(order.begin(), order.end(), [](const TensorEntry* a, const TensorEntry* b) {
    if (a->t->nbytes() != b->t->nbytes()) return a->t->nbytes() > b->t->nbytes();
    return a->name < b->name;
  });
  j["largest_tensors"] = ordered_json::array();
  for (size_t i = 0; i < order.size() && i < 10; ++i) {
    const TensorEntry& e = *order[i];
    ordered_json t;
    t["name"] = e.name;
    t["dtype"] = std::string(dtype_name(e.t->dtype()));
    t["shape"] = e.t->shape();
    t["count"] = e.t->numel();
    t["bytes"] = e.t->nbytes();
    t["kind"] = e.kind;
    t["graph"] = e.graph;
    j["largest_tensors"].push_back(t);
  }
  j["subgraphs"] = {{"count", s.subgraphs.size()}, {"list", s.subgraphs}};
  j["functions"] = ordered_json::array();
  for (const auto& [d, n] : m.function_ids) j["functions"].push_back({{"domain", d}, {"name", n}});

  ordered_json q;
  ordered_json formats = ordered_json::array();
  if (s.q + s.dq > 0) formats.push_back("qdq");
  if (!s.qlinear.empty()) formats.push_back("qoperator");
  if (!s.integer.empty()) formats.push_back("integer");
  if (!s.nbits.empty()) formats.push_back("matmul_nbits");
  if (s.cast_weights > 0) formats.push_back("cast");
  if (s.table_weights > 0) formats.push_back("table");
  q["quantized"] = !formats.empty();
  q["formats"] = formats;
  q["quantize_linear"] = s.q;
  q["dequantize_linear"] = s.dq;
  q["qdq_pairs"] = s.pairs;
  q["qdq_bits"] = s.qdq_bits;
  std::map<std::string, int64_t> widths;
  for (const auto& [dt, c] : s.qdq_bits) {
    for (int v = 0; v <= 26; ++v) {
      if (dtype_name(static_cast<DataType>(v)) == dt) widths[std::to_string(dtype_bits(static_cast<DataType>(v)))] += c;
    }
  }
  q["qdq_bit_widths"] = widths;
  q["dequantized_weights"] = s.dq_weights;
  q["cast_weights"] = s.cast_weights;
  q["table_weights"] = s.table_weights;
  q["sparse_weights"] = s.sparse_weights;
  q["weight_bits"] = s.weight_bits;
  q["matmul_nbits"] = ordered_json::array();
  for (const auto& [k, c] : s.nbits) q["matmul_nbits"].push_back({{"bits", k.first}, {"block_size", k.second}, {"count", c}});
  q["qlinear_ops"] = s.qlinear;
  q["integer_ops"] = s.integer;
  j["quantization"] = q;
  return j;
}

std::string human_bytes(int64_t b) {
  if (b >= (int64_t{1} << 30)) return fmt::format("{:.2f} GiB", static_cast<double>(b) / (1 << 30));
  if (b >= (int64_t{1} << 20)) return fmt::format("{:.2f} MiB", static_cast<double>(b) / (1 << 20));
  if (b >= 1024) return fmt::format("{:.1f} KiB", static_cast<double>(b) / 1024);
  return fmt::format("{} B", b);
}

void print_human(const ordered_json& j) {
  std::string out;
  auto line = [&](const std::string& s) { out += s + "\n"; };
  line(fmt::format("model      {} ({})", j["file"].get<std::string>(), human_bytes(j["file_bytes"].get<int64_t>())));
  std::string ops;
  for (const auto& o : j["opsets"]) {
    if (!ops.empty()) ops += ", ";
    const std::string d = o["domain"].get<std::string>();
    ops += fmt::format("{} {}", d.empty() ? "ai.onnx" : d, o["version"].get<int64_t>());
  }
  line(fmt::format("ir         {}    opsets: {}", j["ir_version"].get<int64_t>(), ops));
  line(fmt::format("producer   {} {}", j["producer"]["name"].get<std::string>(),
                   j["producer"]["version"].get<std::string>()));
  for (const char* io : {"inputs", "outputs"}) {
    line(fmt::format("\n{}:", io));
    for (const auto& v : j[io]) {
      line(fmt::format("  {:<32} {:<9} {}", v["name"].get<std::string>(), v["dtype"].get<std::string>(),
                       shape_text(v["shape"])));
    }
  }
  line(fmt::format("\nnodes: {} ({} in the main graph)", j["nodes"]["total"].get<int64_t>(),
                   j["nodes"]["main_graph"].get<int64_t>()));
  std::vector<std::pair<std::string, int64_t>> hist;
  for (const auto& [k, v] : j["op_histogram"].items()) hist.emplace_back(k, v.get<int64_t>());
  std::stable_sort(hist.begin(), hist.end(), [](auto& a, auto& b) { return a.second > b.second; });
  for (const auto& [k, v] : hist) line(fmt::format("  {:<32} {:>6}", k, v));
  const auto& p = j["parameters"];
  line(fmt::format("\nparameters: {} in {} ({} initializers, {} constant tensors{})", p["count"].get<int64_t>(),
                   human_bytes(p["bytes"].get<int64_t>()), p["initializers"].get<int64_t>(),
                   p["constant_tensors"].get<int64_t>(),
                   p["external_bytes"].get<int64_t>() > 0
                       ? fmt::format(", {} external", human_bytes(p["external_bytes"].get<int64_t>()))
                       : std::string()));
  for (const auto& [dt, x] : p["by_dtype"].items()) {
    line(fmt::format("  {:<10} {:>6} tensors {:>14} values {:>12}", dt, x["tensors"].get<int64_t>(),
                     x["count"].get<int64_t>(), human_bytes(x["bytes"].get<int64_t>())));
  }
  line("\nlargest tensors:");
  for (const auto& t : j["largest_tensors"]) {
    line(fmt::format("  {:<40} {:<8} {:<20} {:>12}  {}", t["name"].get<std::string>(), t["dtype"].get<std::string>(),
                     shape_text(t["shape"]), human_bytes(t["bytes"].get<int64_t>()), t["kind"].get<std::string>()));
  }
  line(fmt::format("\nsubgraphs: {}", j["subgraphs"]["count"].get<int64_t>()));
  for (const auto& sg : j["subgraphs"]["list"]) {
    line(fmt::format("  {}{} {}.{} -> '{}' ({} nodes)", std::string(2 * (sg["depth"].get<int>() - 1), ' '),
                     sg["op_type"].get<std::string>(), sg["node"].get<std::string>(), sg["attribute"].get<std::string>(),
                     sg["graph"].get<std::string>(), sg["nodes"].get<int64_t>()));
  }
  if (!j["functions"].empty()) {
    line(fmt::format("\nmodel-local functions: {}", j["functions"].size()));
    for (const auto& f : j["functions"]) {
      line(fmt::format("  {}.{}", f["domain"].get<std::string>(), f["name"].get<std::string>()));
    }
  }
  const auto& q = j["quantization"];
  if (!q["quantized"].get<bool>()) {
    line("\nquantization: none (floating point model)");
  } else {
    std::string formats;
    for (const auto& f : q["formats"]) formats += (formats.empty() ? "" : ", ") + f.get<std::string>();
    line(fmt::format("\nquantization: {}", formats));
    if (q["quantize_linear"].get<int64_t>() + q["dequantize_linear"].get<int64_t>() > 0) {
      std::string bits;
      for (const auto& [k, v] : q["qdq_bits"].items()) bits += fmt::format(" {}:{}", k, v.get<int64_t>());
      line(fmt::format("  QuantizeLinear {}, DequantizeLinear {}, Q->DQ pairs {}, dequantized weights {}; dtypes{}",
                       q["quantize_linear"].get<int64_t>(), q["dequantize_linear"].get<int64_t>(),
                       q["qdq_pairs"].get<int64_t>(), q["dequantized_weights"].get<int64_t>(), bits));
    }
    for (const auto& e : q["matmul_nbits"]) {
      line(fmt::format("  MatMulNBits bits={} block_size={}: {}", e["bits"].get<int64_t>(),
                       e["block_size"].get<int64_t>(), e["count"].get<int64_t>()));
    }
    for (const char* k : {"qlinear_ops", "integer_ops"}) {
      for (const auto& [op, c] : q[k].items()) line(fmt::format("  {}: {}", op, c.get<int64_t>()));
    }
    if (q["cast_weights"].get<int64_t>() > 0) {
      std::string bits;
      for (const auto& [k, v] : q["weight_bits"].items()) bits += fmt::format(" {}:{}", k, v.get<int64_t>());
      line(fmt::format("  weight levels read through Cast: {}; weight dtypes{}", q["cast_weights"].get<int64_t>(), bits));
    }
    if (q["table_weights"].get<int64_t>() > 0)
      line(fmt::format("  weights decoded by a Gather on a table (palettes, fp4): {}", q["table_weights"].get<int64_t>()));
    if (q["sparse_weights"].get<int64_t>() > 0)
      line(fmt::format("  pruned weights expanded from a bit mask and the kept levels: {}", q["sparse_weights"].get<int64_t>()));
  }
  std::cout << out << std::flush;
}

}  // namespace

void add_inspect_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("inspect", "summarise an ONNX model: I/O, ops, parameters, quantization");
  auto path = std::make_shared<std::string>();
  auto as_json = std::make_shared<bool>(false);
  cmd->add_option("model", *path, "ONNX model file")->required();
  cmd->add_flag("--json", *as_json, "print one JSON document on stdout (schema: tools/qtool/cmd_inspect.cc)");
  cmd->callback([path, as_json] {
    const ir::Model m = onnx_io::load_model(*path);
    const ordered_json j = inspect_json(m, *path);
    if (*as_json) {
      std::cout << j.dump(2) << "\n" << std::flush;
    } else {
      print_human(j);
    }
  });
}

}  // namespace qtool::cli
