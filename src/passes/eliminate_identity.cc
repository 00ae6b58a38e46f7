#include "qtool/passes/eliminate_identity.h"

namespace qtool::passes {
namespace {

/// The element type of v when known: its declared type, or a QuantizeLinear's zero-point type.
DataType known_type(const ir::Value* v) {
  if (v->type().elem_type != DataType::kUndefined) return v->type().elem_type;
  if (const Tensor* t = v->initializer()) return t->dtype();
  const ir::Node* p = v->producer();
  if (p && p->domain().empty() && p->op_type() == "QuantizeLinear" && p->outputs().size() >= 1 && p->output(0) == v &&
      p->inputs().size() >= 3 && p->input(2) && p->input(2)->initializer()) {
    return p->input(2)->initializer()->dtype();
  }
  return DataType::kUndefined;
}

bool is_removable(const ir::Node& n) {
  if (!n.domain().empty()) return false;
  if (n.op_type() == "Identity") return n.inputs().size() == 1 && n.input(0) != nullptr;
  if (n.op_type() == "Cast") {
    // A Cast to the type its input already has (PyTorch's QDQ exports put uint8 -> uint8 Casts
    // between every QuantizeLinear and DequantizeLinear; ONNX Runtime drops them too).
    if (n.inputs().size() != 1 || n.input(0) == nullptr) return false;
    const DataType in = known_type(n.input(0));
    return in != DataType::kUndefined && static_cast<int64_t>(in) == n.attr_int("to", -1);
  }
  if (n.op_type() != "Dropout") return false;
  if (n.input(0) == nullptr) return false;
  // The mask output must be unused: it is a real value (all true) we would have to materialise.
  if (n.output(1) != nullptr && (!n.output(1)->uses().empty() || n.output(1)->is_graph_output())) return false;
  // training_mode (opset 12+) must be absent or a constant false.
  if (const ir::Value* tm = n.input(2)) {
    const Tensor* t = tm->initializer();
    if (t == nullptr || t->numel() != 1 || t->get_as_double(0) != 0.0) return false;
  }
  return true;
}

size_t run_on_graph(ir::Graph& g) {
  size_t removed = 0;
  std::vector<ir::Node*> todo;
  for (const auto& n : g.nodes())
    if (is_removable(*n)) todo.push_back(n.get());
  for (ir::Node* n : todo) {
    ir::Value* y = n->output(0);
    ir::Value* x = n->input(0);
    if (y == nullptr || y->is_graph_output()) continue;
    g.replace_all_uses(y, x);
    // Detach the outputs' remaining uses (none) and the node itself.
    g.remove_node(n);
    ++removed;
  }
  return removed;
}

}  // namespace

size_t eliminate_identity(ir::Model& model, const PassOptions&) {
  return for_each_graph(*model.graph, run_on_graph);
}

}  // namespace qtool::passes
