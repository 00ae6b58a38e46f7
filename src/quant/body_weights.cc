// Weights inside If/Loop/Scan bodies stored as int8 (static_quant.h: quantize_body_weights).
#include <algorithm>
#include <functional>
#include <map>
#include <optional>
#include <set>

#include <fmt/format.h>

#include "qtool/quant/static_quant.h"

namespace qtool::quant {
namespace {

/// The float constant a value holds: an initializer, or a Constant node's "value" tensor.
const Tensor* float_constant(const ir::Value* v) {
  if (v == nullptr) return nullptr;
  const Tensor* t = v->initializer();
  if (t == nullptr && v->producer() && v->producer()->op_type() == "Constant" && v->producer()->domain().empty()) {
    const ir::Attribute* a = v->producer()->find_attr("value");
    if (a && a->type == ir::AttrType::kTensor && !a->tensors.empty()) t = &a->tensors[0];
  }
  return t && t->dtype() == DataType::kFloat ? t : nullptr;
}

/// The weight inputs of an op and the output-channel axis of each (-1: per tensor).
std::vector<std::pair<int, int64_t>> weight_inputs(const ir::Node& n) {
  const std::string& op = n.op_type();
  if (!n.domain().empty()) return {};
  auto rank = [&](int i) { const Tensor* t = float_constant(n.input(i)); return t ? t->rank() : 0; };
  if (op == "Conv") return {{1, 0}};
  if (op == "ConvTranspose") return {{1, n.attr_int("group", 1) == 1 ? 1 : -1}};
  if (op == "Gemm") return {{1, n.attr_int("transB", 0) ? 0 : 1}};
  if (op == "MatMul") return {{1, rank(1) == 2 ? 1 : -1}};
  if (op == "LSTM" || op == "GRU" || op == "RNN") return {{1, 1}, {2, 1}};  // W, R: [directions, gates·hidden, in]
  return {};
}

/// A weight's float values: a constant, or a constant seen through Identity / Unsqueeze (exporters
/// unsqueeze LSTM weights to [directions, 4·hidden, in] in the graph).
struct Resolved {
  Tensor tensor;
  std::vector<ir::Node*> chain;      ///< the Identity / Unsqueeze nodes between (consumer side first)
  ir::Value* root = nullptr;         ///< the constant value
};

std::optional<Resolved> resolve(ir::Value* v) {
  if (const Tensor* t = float_constant(v)) return Resolved{*t, {}, v};
  ir::Node* p = v ? v->producer() : nullptr;
  if (p == nullptr || !p->domain().empty() || v->uses().size() != 1) return std::nullopt;
  if (p->op_type() != "Identity" && p->op_type() != "Unsqueeze") return std::nullopt;
  std::optional<Resolved> r = resolve(p->input(0));
  if (!r) return std::nullopt;
  if (p->op_type() == "Unsqueeze") {
    std::vector<int64_t> axes = p->attr_ints("axes");
    if (p->input(1)) {
      const Tensor* a = p->input(1)->initializer();
      if (a == nullptr) return std::nullopt;
      axes.clear();
      for (int64_t i = 0; i < a->numel(); ++i) axes.push_back(static_cast<int64_t>(a->get_as_double(i)));
    }
    const int64_t rank = static_cast<int64_t>(r->tensor.rank() + axes.size());
    std::vector<bool> unit(static_cast<size_t>(rank), false);
    for (int64_t a : axes) {
      if (a < 0) a += rank;
      if (a < 0 || a >= rank) return std::nullopt;
      unit[static_cast<size_t>(a)] = true;
    }
    Shape shape;
    size_t k = 0;
    for (int64_t d = 0; d < rank; ++d) shape.push_back(unit[static_cast<size_t>(d)] ? 1 : r->tensor.shape()[k++]);
    r->tensor = r->tensor.reshaped(shape);
  }
  r->chain.insert(r->chain.begin(), p);
  return r;
}

class BodyWeights {
 public:
  BodyWeights(bool reduce_range, const std::set<std::string>& main_ops, bool cast_form)
      : reduce_range_(reduce_range), main_ops_(main_ops), cast_form_(cast_form) {}

  size_t run(ir::Graph& main) {
    main_ = &main;
    visit(main, false);
    // What the float weights came from, now unread: the Identity/Unsqueeze chains, Constant nodes
    // and initializers (consumer side first, so that each is unread when its turn comes).
    for (ir::Node* n : dead_nodes_) {
      bool unread = true;
      for (const ir::Value* o : n->outputs()) unread &= o == nullptr || (o->uses().empty() && !o->is_graph_output());
      if (unread) n->owner()->remove_node(n);
    }
    for (ir::Value* v : dead_values_)
      if (v->producer() == nullptr && v->uses().empty() && !v->is_graph_output() && !v->is_graph_input())
        v->owner()->remove_initializer(v);
    if (count_ > 0) remove_unread_float_initializers(main);
    return count_;
  }

 private:
  void visit(ir::Graph& g, bool body) {
    std::vector<ir::Node*> nodes;
    for (const auto& n : g.nodes()) nodes.push_back(n.get());
    bool changed = false;
    for (ir::Node* n : nodes) {
      if (body || main_ops_.count(n->op_type())) {
        for (const auto& [index, axis] : weight_inputs(*n)) {
          ir::Value* w = n->input(index);
          const std::optional<Resolved> r = resolve(w);
          if (!r || r->tensor.numel() < kMinElements) continue;
          // A MatMul's int8 weight lives in its own graph: ONNX Runtime rewrites DQ -> MatMul into
          // MatMulNBits at load and then looks the weight up in the MatMul's graph only (1.30:
          // "Missing required weight" for one read from the parent).
          n->set_input(index, dequantized(g, w, *r, axis, body && n->op_type() == "MatMul" ? &g : main_));
          changed = true;
        }
      }
      for (ir::Graph* sub : n->subgraphs()) visit(*sub, true);
    }
    if (changed) g.topo_sort();
  }

  /// DequantizeLinear in `g` of the int8 copy of `w`'s values. The int8 copies live in `home` (the
  /// main graph, which every body reads as outer scope, or `g` itself), once per distinct content
  /// there: the branches of an If often fold the same weights (an LSTM export's gates) to equal
  /// tensors.
  ir::Value* dequantized(ir::Graph& g, ir::Value* w, const Resolved& r, int64_t axis, ir::Graph* home) {
    const Tensor& t = r.tensor;
    const bool per_channel = axis >= 0 && axis < static_cast<int64_t>(t.rank()) && t.shape()[axis] > 1;
    const int64_t key_axis = per_channel ? axis : -1;
    const Stored* found = nullptr;
    const uint64_t h = content_hash(t);
    for (auto [it, end] = stored_.equal_range(h); it != end; ++it)
      if (it->second.home == home && it->second.axis == key_axis && it->second.source.shape() == t.shape() &&
          std::equal(t.data<float>(), t.data<float>() + t.numel(), it->second.source.data<float>()))
        found = &it->second;
    if (found == nullptr) {
      const QuantizedWeight q = quantize_weight(t, per_channel, axis, DataType::kInt8, reduce_range_);
      ir::Value* values = home->add_initializer(home->unique_name(w->name() + "_quantized"), q.values);
      Shape sshape = per_channel ? Shape{static_cast<int64_t>(q.scales.size())} : Shape{};
      // The cast form multiplies by the scales with broadcasting: [C, 1, ...] for a channel axis.
      if (cast_form_ && per_channel)
        for (size_t d = static_cast<size_t>(axis) + 1; d < t.rank(); ++d) sshape.push_back(1);
      ir::Value* scale = home->add_initializer(home->unique_name(w->name() + "_scale"), Tensor::from_vector<float>(sshape, q.scales));
      found = &stored_.emplace(h, Stored{values, scale, key_axis, t, home})->second;
      ++count_;
    }
    for (ir::Node* n : r.chain) remember(dead_nodes_, n);
    if (r.root->producer()) remember(dead_nodes_, r.root->producer());
    remember(dead_values_, r.root);
    ir::Node* dq = nullptr;
    if (cast_form_) {  // levels -> Cast -> Mul(scales): constants ONNX Runtime folds when it loads the model
      ir::Node* cast = g.add_node("Cast", {found->values}, {g.unique_name(w->name() + "_levels_float")},
                                  g.unique_name(w->name() + "_Cast"));
      cast->set_attr(ir::Attribute::make_int("to", static_cast<int64_t>(DataType::kFloat)));
      cast->output(0)->type().elem_type = DataType::kFloat;
      dq = g.add_node("Mul", {cast->output(0), found->scale}, {g.unique_name(w->name() + "_dequantized")},
                      g.unique_name(w->name() + "_scale_Mul"));
    } else {
      dq = g.add_node("DequantizeLinear", {found->values, found->scale},
                      {g.unique_name(w->name() + "_DequantizeLinear_Output")}, g.unique_name(w->name() + "_DequantizeLinear"));
      if (found->axis >= 0) dq->set_attr(ir::Attribute::make_int("axis", found->axis));
    }
    dq->output(0)->type() = w->type();
    dq->output(0)->type().elem_type = DataType::kFloat;
    return dq->output(0);
  }


  template <typename T>
  static void remember(std::vector<T*>& list, T* x) {
    if (std::find(list.begin(), list.end(), x) == list.end()) list.push_back(x);
  }

  static constexpr int64_t kMinElements = 64;  ///< smaller weights stay float (scales would cost more)
  struct Stored {
    ir::Value* values;
    ir::Value* scale;
    int64_t axis;
    Tensor source;  ///< the float values (to tell equal contents from a hash collision)
    ir::Graph* home;  ///< the graph holding the int8 copy
  };
  bool reduce_range_;
  const std::set<std::string>& main_ops_;
  bool cast_form_;
  ir::Graph* main_ = nullptr;
  size_t count_ = 0;
  std::multimap<uint64_t, Stored> stored_;
  std::vector<ir::Node*> dead_nodes_;
  std::vector<ir::Value*> dead_values_;
};

}  // namespace

void remove_unread_float_initializers(ir::Graph& g) {
  std::vector<ir::Value*> unread;
  for (ir::Value* v : g.initializers())
    if (v->uses().empty() && !v->is_graph_output() && !v->is_graph_input() && v->initializer()->dtype() == DataType::kFloat)
      unread.push_back(v);
  for (ir::Value* v : unread) g.remove_initializer(v);
  for (const auto& n : g.nodes())
    for (ir::Graph* sub : n->subgraphs()) remove_unread_float_initializers(*sub);
}

size_t quantize_body_weights(ir::Model& model, bool reduce_range, const std::set<std::string>& main_graph_ops,
                             bool cast_form) {
  return BodyWeights(reduce_range, main_graph_ops, cast_form).run(*model.graph);
}

}  // namespace qtool::quant
