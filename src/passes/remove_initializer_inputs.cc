#include "qtool/passes/remove_initializer_inputs.h"

#include <algorithm>

namespace qtool::passes {

size_t remove_initializer_inputs(ir::Model& model, const PassOptions&) {
  ir::Graph& g = *model.graph;
  std::vector<ir::Value*> todo;
  for (ir::Value* v : g.inputs())
    if (v->is_initializer() && !v->is_graph_output()) todo.push_back(v);
  for (ir::Value* v : todo) {
    // Graph has no "un-input" call: move the uses to a temporary, drop the value (which also drops
    // it from the inputs), re-create it as a plain initializer and move the uses back.
    const std::string name = v->name();
    const Tensor t = *v->initializer();
    const ir::TypeInfo type = v->type();
    ir::Value* tmp = g.add_initializer(g.unique_name(name + "_tmp"), t);
    g.replace_all_uses(v, tmp);
    g.remove_initializer(v);
    ir::Value* nv = g.add_initializer(name, t);
    nv->type() = type;
    g.replace_all_uses(tmp, nv);
    g.remove_initializer(tmp);
  }
  if (!todo.empty()) model.ir_version = std::max<int64_t>(model.ir_version, 4);
  return todo.size();
}

}  // namespace qtool::passes
