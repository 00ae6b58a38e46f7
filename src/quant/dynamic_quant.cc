// Dynamic quantization: see include/qtool/quant/dynamic.h.
#include "qtool/quant/dynamic.h"

#include <algorithm>
#include <map>

#include <fmt/format.h>

#include "qtool/core/error.h"
#include "qtool/quant/lowbit.h"
#include "qtool/quant/qdq.h"

namespace qtool::quant {
namespace {

/// The float constant v holds: an initializer of g or of a graph g is nested in (outer scope), or
/// a Constant node's value.
const Tensor* float_initializer(const ir::Graph& g, const ir::Value* v) {
  if (v == nullptr) return nullptr;
  bool visible = false;
  for (const ir::Graph* a = &g; a && !visible; a = a->parent()) visible = v->owner() == a;
  if (!visible) return nullptr;
  const Tensor* t = v->initializer();
  if (t == nullptr && v->producer() && v->producer()->op_type() == "Constant" && v->producer()->domain().empty()) {
    const ir::Attribute* a = v->producer()->find_attr("value");
    if (a && a->type == ir::AttrType::kTensor && !a->tensors.empty()) t = &a->tensors[0];
  }
  return t && t->dtype() == DataType::kFloat ? t : nullptr;
}

bool is_float_value(const ir::Value* v) {
  return v && (v->type().elem_type == DataType::kFloat || v->type().elem_type == DataType::kUndefined);
}

Tensor transpose2d(const Tensor& w) {
  const int64_t r = w.dim(0), c = w.dim(1);
  std::vector<float> out(static_cast<size_t>(r * c));
  const float* x = w.data<float>();
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < c; ++j) out[static_cast<size_t>(j * r + i)] = x[i * c + j];
  return Tensor::from_vector<float>({c, r}, out);
}

class DynamicEmitter {
 public:
  DynamicEmitter(ir::Model& model, const DynamicOptions& o) : model_(model), main_(*model.graph), opt_(o) {}

  DynamicSummary run() {
    QTOOL_CHECK(opt_.weight_type == DataType::kUint8 || opt_.weight_type == DataType::kInt8, ErrorCode::kConfig,
                "dynamic quantization stores weights as uint8 or int8 (got {})", dtype_name(opt_.weight_type));
    for (const std::string& op : opt_.op_types)
      QTOOL_CHECK(op == "MatMul" || op == "Gemm" || op == "Conv" || op == "Gather" || op == "LSTM", ErrorCode::kConfig,
                  "dynamic quantization rewrites MatMul, Gemm, Gather, LSTM and Conv, not '{}'", op);
    visit(main_);
    if (s_.rewritten() > 0) {
      if (model_.opset("") < 11) model_.set_opset("", 11);
      sweep(main_);
    }
    return std::move(s_);
  }

 private:
  /// Rewrites the chosen nodes of graph g, then those of its If/Loop/Scan bodies.
  void visit(ir::Graph& g) {
    g_ = &g;
    dql_.clear();  // a quantized activation is shared within its graph only
    for (ir::Node* n : g.topo_order()) {
      if (!opt_.op_types.count(n->op_type()) || !n->domain().empty()) continue;
      if (excluded(*n)) {
        s_.float_nodes.push_back(fmt::format("{}: excluded", n->describe()));
        continue;
      }
      const std::string why = n->op_type() == "Conv"     ? rewrite_conv(n)
                              : n->op_type() == "Gather" ? rewrite_gather(n)
                              : n->op_type() == "LSTM"   ? rewrite_lstm(n)
                                                         : rewrite_matmul(n);
      if (!why.empty()) s_.float_nodes.push_back(fmt::format("{}: {}", n->describe(), why));
    }
    std::vector<ir::Graph*> bodies;
    for (const auto& n : g.nodes())
      for (ir::Graph* sub : n->subgraphs()) bodies.push_back(sub);
    for (ir::Graph* sub : bodies) visit(*sub);
    g_ = &g;
  }

  /// Dead nodes (the float weights' Constant nodes) and unread initializers, bodies first.
  static void sweep(ir::Graph& g) {
    for (const auto& n : g.nodes())
      for (ir::Graph* sub : n->subgraphs()) sweep(*sub);
    g.eliminate_dead_nodes();
  }

  bool excluded(const ir::Node& n) const {
    if (n.output(0) && opt_.exclude_outputs.count(n.output(0)->name())) return true;
    for (const std::string& p : opt_.exclude_nodes)
      if (p == n.name() || glob_match(p, n.name())) return true;
    return false;
  }

  /// Records a rewritten node: its name (or output when unnamed) and its output (a unique key).
  void rewritten(const ir::Node* n) {
    const std::string out = n->output(0) ? n->output(0)->name() : "";
    s_.quantized_nodes.push_back(n->name().empty() ? out : n->name());
    s_.quantized_outputs.push_back(out);
  }

  ir::Value* add_init(const std::string& base, Tensor t) {
    const DataType dt = t.dtype();
    ir::Value* v = main_.add_initializer(main_.unique_name(base), std::move(t));
    v->type().elem_type = dt;
    return v;
  }

  ir::Node* add_before(ir::Node* pos, const std::string& op, const std::vector<ir::Value*>& in,
                       const std::vector<std::pair<std::string, DataType>>& outs) {
    std::vector<std::string> names;
    for (const auto& o : outs) names.push_back(g_->unique_name(o.first));
    ir::Node* n = g_->insert_node_before(pos, op, in, names, g_->unique_name(outs[0].first + "_" + op));
    for (size_t i = 0; i < outs.size(); ++i) n->output(i)->type().elem_type = outs[i].second;
    return n;
  }

  /// The DynamicQuantizeLinear outputs of activation `a` (placed once, before its first reader).
  const std::vector<ir::Value*>& quantized(ir::Value* a, ir::Node* first_reader) {
    auto it = dql_.find(a);
    if (it != dql_.end()) return it->second;
    const std::string base = a->name();
    ir::Node* q = add_before(first_reader, "DynamicQuantizeLinear", {a},
                             {{base + "_quantized", DataType::kUint8},
                              {base + "_scale", DataType::kFloat},
                              {base + "_zero_point", DataType::kUint8}});
    q->output(0)->type().has_shape = a->type().has_shape;
    q->output(0)->type().dims = a->type().dims;
    for (int i : {1, 2}) q->output(i)->type().has_shape = true;  // scalars
    ++s_.quantize_nodes;
    return dql_[a] = {q->output(0), q->output(1), q->output(2)};
  }

  struct QWeight {
    ir::Value* levels = nullptr;
    ir::Value* zero_point = nullptr;
    std::vector<float> scales;
  };

  /// w quantized per slice along `axis` (per tensor when !per_channel), stored once per
  /// (weight, layout) in `type`.
  QWeight weight(const ir::Node* n, const std::string& base, const Tensor& w, int64_t axis, DataType type) {
    const uint64_t h = content_hash(w);
    for (auto [it, end] = weights_.equal_range(h); it != end; ++it)
      if (it->second.axis == axis && it->second.type == type && it->second.source.shape() == w.shape() &&
          std::equal(w.data<float>(), w.data<float>() + w.numel(), it->second.source.data<float>()))
        return it->second.q;
    const QuantizedWeight qw = quantize_weight(w, opt_.per_channel, axis, type);
    QWeight r;
    r.scales = qw.scales;
    r.levels = add_init(base + "_quantized", qw.values);
    Tensor zp(type, {});
    if (type == DataType::kUint8) zp.mutable_data<uint8_t>()[0] = static_cast<uint8_t>(qw.zero_point);
    else zp.mutable_data<int8_t>()[0] = 0;
    r.zero_point = add_init(base + "_zero_point", std::move(zp));
    s_.float_weight_bytes += static_cast<int64_t>(w.nbytes());
    const int64_t bytes = static_cast<int64_t>(qw.values.nbytes() + qw.scales.size() * sizeof(float) + 1);
    s_.quant_weight_bytes += bytes;
    DynamicLayer l;
    l.node = n->name();
    l.op_type = n->op_type();
    l.weight = base;
    l.precision = dtype_name(type);
    l.scheme = opt_.per_channel ? fmt::format("per-channel(axis={})", axis) : std::string("per-tensor");
    l.params = w.numel();
    l.bytes = bytes;
    s_.layers.push_back(std::move(l));
    weights_.emplace(h, Stored{r, axis, type, w});
    return r;
  }

  /// Turns n into the last op of its rewrite (so its output keeps its name and consumers).
  static void become(ir::Node* n, const std::string& op, ir::Value* a, ir::Value* b) {
    n->set_op_type(op);
    n->mutable_attributes().clear();
    n->truncate_inputs(0);
    n->set_input(0, a);
    n->set_input(1, b);
  }

  /// n becomes Add(y, bias), or (no bias) the final Mul itself: it takes that Mul's inputs, and
  /// the Mul goes.
  void finish(ir::Node* n, ir::Value* y, ir::Value* bias) {
    if (bias) {
      become(n, "Add", y, bias);
      return;
    }
    ir::Node* m = y->producer();
    ir::Value* x0 = m->input(0);
    ir::Value* x1 = m->input(1);
    become(n, "Mul", x0, x1);
    g_->remove_node(m);
  }

  /// y_int32 -> float, times s_a · s_w (per channel, shaped `scale_shape`).
  ir::Value* rescale(ir::Node* n, ir::Value* acc, ir::Value* s_a, const QWeight& w, const Shape& scale_shape,
                     float alpha) {
    const std::string base = n->output(0)->name();
    ir::Node* cast = add_before(n, "Cast", {acc}, {{base + "_float", DataType::kFloat}});
    cast->set_attr(ir::Attribute::make_int("to", static_cast<int64_t>(DataType::kFloat)));
    std::vector<float> s = w.scales;
    for (float& x : s) x *= alpha;
    ir::Value* sw = add_init(base + "_weight_scale", s.size() == 1 ? Tensor::scalar<float>(s[0])
                                                                    : Tensor::from_vector<float>(scale_shape, s));
    ir::Node* scale = add_before(n, "Mul", {s_a, sw}, {{base + "_scale", DataType::kFloat}});
    return add_before(n, "Mul", {cast->output(0), scale->output(0)}, {{base + "_rescaled", DataType::kFloat}})
        ->output(0);
  }

  std::string rewrite_matmul(ir::Node* n) {
    const bool gemm = n->op_type() == "Gemm";
    ir::Value* a = n->input(0);
    ir::Value* wv = n->input(1);
    if (!is_float_value(a)) return "input is not float";
    const Tensor* w = float_initializer(*g_, wv);
    if (w == nullptr) return "weight is not a float initializer";
    if (w->rank() != 2) return fmt::format("weight of rank {} (2 expected)", w->rank());
    if (w->numel() < opt_.min_weight_elements) return fmt::format("weight of {} elements", w->numel());
    if (gemm && n->attr_int("transA", 0) != 0) return "Gemm with transA";
    const bool trans_b = gemm && n->attr_int("transB", 0) != 0;
    const float alpha = gemm ? n->attr_float("alpha", 1.0f) : 1.0f;
    const float beta = gemm ? n->attr_float("beta", 1.0f) : 1.0f;
    ir::Value* c = gemm ? n->input(2) : nullptr;
    const Tensor* ct = c ? float_initializer(*g_, c) : nullptr;
    if (c && !ct && beta != 1.0f) return "Gemm with a computed bias and beta != 1";
    if (c && !ct && !is_float_value(c)) return "Gemm bias is not float";
    // Weight as [K, N], one scale per column N.
    const Tensor wkn = trans_b ? transpose2d(*w) : *w;
    const QWeight qw = weight(n, wv->name(), wkn, 1, opt_.weight_type);
    const int64_t cols = wkn.dim(1);
    const auto& q = quantized(a, n);
    ir::Node* mm = add_before(n, "MatMulInteger", {q[0], qw.levels, q[2], qw.zero_point},
                              {{n->output(0)->name() + "_int32", DataType::kInt32}});
    ir::Value* y = rescale(n, mm->output(0), q[1], qw, Shape{cols}, alpha);
    if (c && ct && beta != 1.0f) {
      Tensor scaled(DataType::kFloat, ct->shape());
      for (int64_t i = 0; i < ct->numel(); ++i) scaled.mutable_data<float>()[i] = beta * ct->data<float>()[i];
      c = add_init(c->name() + "_beta", std::move(scaled));
    }
    finish(n, y, c);
    ++(gemm ? s_.gemms : s_.matmuls);
    rewritten(n);
    return "";
  }

  /// An embedding table: Gather(T[V, D], ids) -> Cast(Gather(Tq, ids)) · Gather(s[V, 1], ids), int8
  /// symmetric per row. Only the rows read are converted (a DequantizeLinear of the whole table
  /// would expand all V rows on every run).
  std::string rewrite_gather(ir::Node* n) {
    ir::Value* tv = n->input(0);
    ir::Value* ids = n->input(1);
    const Tensor* t = float_initializer(*g_, tv);
    if (t == nullptr) return "table is not a float initializer";
    if (t->rank() != 2 || n->attr_int("axis", 0) != 0) return "not a rank-2 table gathered along axis 0";
    if (t->numel() < opt_.min_weight_elements) return fmt::format("table of {} elements", t->numel());
    const QWeight qw = weight(n, tv->name(), *t, 0, DataType::kInt8);
    const std::string base = n->output(0)->name();
    ir::Node* rows = add_before(n, "Gather", {qw.levels, ids}, {{base + "_levels", DataType::kInt8}});
    ir::Node* cast = add_before(n, "Cast", {rows->output(0)}, {{base + "_float", DataType::kFloat}});
    cast->set_attr(ir::Attribute::make_int("to", static_cast<int64_t>(DataType::kFloat)));
    const int64_t v = t->dim(0);
    ir::Value* sv = add_init(tv->name() + "_row_scale",
                             qw.scales.size() == 1 ? Tensor::scalar<float>(qw.scales[0])
                                                   : Tensor::from_vector<float>({v, 1}, qw.scales));
    ir::Value* scale = sv;
    if (qw.scales.size() > 1) scale = add_before(n, "Gather", {sv, ids}, {{base + "_scale", DataType::kFloat}})->output(0);
    become(n, "Mul", cast->output(0), scale);
    ++s_.gathers;
    rewritten(n);
    return "";
  }

  struct LstmWeight {
    ir::Value* levels = nullptr;
    ir::Value* scale = nullptr;
    ir::Value* zero_point = nullptr;
    Tensor source;
  };

  /// An LSTM weight w [dirs, gh, k] as DynamicQuantizeLSTM takes it: [dirs, k, gh] uint8 levels, zero
  /// point 128 (ONNX Runtime wants one zero point value; uint8 keeps its u8u8 kernels exact, so
  /// --weight-type int8 does not apply here), one scale per (direction, gate column) or per
  /// direction; stored once per content.
  const LstmWeight& lstm_weight(const ir::Node* n, const std::string& base, const Tensor& w) {
    const uint64_t h = content_hash(w);
    for (auto [it, end] = lstm_weights_.equal_range(h); it != end; ++it)
      if (it->second.source.shape() == w.shape() &&
          std::equal(w.data<float>(), w.data<float>() + w.numel(), it->second.source.data<float>()))
        return it->second;
    const int64_t dirs = w.dim(0), gh = w.dim(1), k = w.dim(2);
    Tensor levels(DataType::kUint8, {dirs, k, gh});
    std::vector<float> sc;
    for (int64_t d = 0; d < dirs; ++d) {
      std::vector<float> slice(static_cast<size_t>(k * gh));  // [k, gh] of direction d
      for (int64_t r = 0; r < gh; ++r)
        for (int64_t c = 0; c < k; ++c) slice[c * gh + r] = w.data<float>()[(d * gh + r) * k + c];
      const QuantizedWeight qw =
          quantize_weight(Tensor::from_vector<float>({k, gh}, slice), opt_.per_channel, 1, DataType::kUint8);
      std::copy(qw.values.data<uint8_t>(), qw.values.data<uint8_t>() + k * gh, levels.mutable_data<uint8_t>() + d * k * gh);
      sc.insert(sc.end(), qw.scales.begin(), qw.scales.end());
    }
    LstmWeight r;
    r.source = w;
    r.levels = add_init(base + "_quantized", levels);
    // One scale per (direction, gate column), or per direction with --per-tensor; zero points alike.
    const Shape sshape = opt_.per_channel ? Shape{dirs, gh} : Shape{dirs};
    r.scale = add_init(base + "_scale", Tensor::from_vector<float>(sshape, sc));
    Tensor zp(DataType::kUint8, sshape);
    std::fill(zp.mutable_raw(), zp.mutable_raw() + zp.numel(), uint8_t{128});
    r.zero_point = add_init(base + "_zero_point", std::move(zp));
    const int64_t bytes = w.numel() + 5 * static_cast<int64_t>(sc.size());
    s_.float_weight_bytes += static_cast<int64_t>(w.nbytes());
    s_.quant_weight_bytes += bytes;
    DynamicLayer l;
    l.node = n->name();
    l.op_type = "LSTM";
    l.weight = base;
    l.precision = "uint8";
    l.scheme = opt_.per_channel ? "per-channel(gate column)" : "per-tensor (per direction)";
    l.params = w.numel();
    l.bytes = bytes;
    s_.layers.push_back(std::move(l));
    return lstm_weights_.emplace(h, std::move(r))->second;
  }

  /// LSTM -> com.microsoft DynamicQuantizeLSTM: W [dirs, 4H, in] and R [dirs, 4H, H] transposed to
  /// [dirs, in, 4H] / [dirs, H, 4H], uint8 with zero point 128 (ONNX Runtime wants one zero point per
  /// tensor), one scale per gate column; X and H are quantized on the fly by the runtime.
  std::string rewrite_lstm(ir::Node* n) {
    if (n->attr_int("layout", 0) != 0) return "layout 1";
    if (!is_float_value(n->input(0))) return "input is not float";
    std::vector<ir::Value*> in(12, nullptr);
    for (size_t i = 0; i < std::min<size_t>(8, n->inputs().size()); ++i) in[i] = n->input(i);
    const std::string base = n->name().empty() ? n->output(0)->name() : n->name();
    for (int j : {0, 1}) {
      const Tensor* w = float_initializer(*g_, n->input(1 + j));
      if (w == nullptr || w->rank() != 3) return fmt::format("{} is not a float constant of rank 3", j == 0 ? "W" : "R");
    }
    for (int j : {0, 1}) {
      const Tensor& w = *float_initializer(*g_, n->input(1 + j));
      const LstmWeight& q = lstm_weight(n, base + (j == 0 ? "_W" : "_R"), w);
      in[1 + j] = q.levels;
      in[8 + 2 * j] = q.scale;
      in[9 + 2 * j] = q.zero_point;
    }
    while (!in.empty() && in.back() == nullptr) in.pop_back();
    n->truncate_inputs(0);
    for (size_t i = 0; i < in.size(); ++i) n->set_input(i, in[i]);
    n->set_op_type("DynamicQuantizeLSTM");
    n->set_domain("com.microsoft");
    n->remove_attr("layout");
    if (model_.opset("com.microsoft") < 1) model_.set_opset("com.microsoft", 1);
    ++s_.lstms;
    rewritten(n);
    return "";
  }

  std::string rewrite_conv(ir::Node* n) {
    ir::Value* x = n->input(0);
    ir::Value* wv = n->input(1);
    if (!is_float_value(x)) return "input is not float";
    const Tensor* w = float_initializer(*g_, wv);
    if (w == nullptr) return "weight is not a float initializer";
    if (w->rank() < 3) return fmt::format("weight of rank {} (3 or more expected)", w->rank());
    if (w->numel() < opt_.min_weight_elements) return fmt::format("weight of {} elements", w->numel());
    ir::Value* b = n->input(2);
    const Tensor* bt = b ? float_initializer(*g_, b) : nullptr;
    if (b && !bt) return "bias is not a float initializer";
    if (bt && bt->numel() != w->dim(0)) return fmt::format("bias of {} values for {} output channels", bt->numel(), w->dim(0));
    // ONNX Runtime's CPU ConvInteger takes uint8 weights only.
    const QWeight qw = weight(n, wv->name(), *w, 0, DataType::kUint8);
    const int64_t channels = w->dim(0);
    const auto& q = quantized(x, n);
    ir::Node* conv = add_before(n, "ConvInteger", {q[0], qw.levels, q[2], qw.zero_point},
                                {{n->output(0)->name() + "_int32", DataType::kInt32}});
    for (const ir::Attribute& at : n->attributes()) conv->set_attr(at.clone());
    Shape cshape{channels};
    for (size_t d = 2; d < w->rank(); ++d) cshape.push_back(1);
    ir::Value* y = rescale(n, conv->output(0), q[1], qw, cshape, 1.0f);
    ir::Value* bias = nullptr;
    if (bt)
      bias = add_init(b->name() + "_reshaped",
                      Tensor::from_vector<float>(cshape, std::vector<float>(bt->data<float>(), bt->data<float>() + bt->numel())));
    finish(n, y, bias);
    ++s_.convs;
    rewritten(n);
    return "";
  }

  struct Stored {
    QWeight q;
    int64_t axis;
    DataType type;
    Tensor source;  ///< the float values (to tell equal contents from a hash collision)
  };
  ir::Model& model_;
  ir::Graph& main_;   ///< holds every quantized weight (bodies read them as outer scope)
  ir::Graph* g_ = nullptr;  ///< the graph being rewritten
  const DynamicOptions& opt_;
  DynamicSummary s_;
  std::map<const ir::Value*, std::vector<ir::Value*>> dql_;
  std::multimap<uint64_t, Stored> weights_;
  std::multimap<uint64_t, LstmWeight> lstm_weights_;
};

}  // namespace

DynamicSummary emit_dynamic(ir::Model& model, const DynamicOptions& options) {
  return DynamicEmitter(model, options).run();
}

}  // namespace qtool::quant
