#include "qtool/passes/fold_constants.h"

#include <set>

#include <fmt/format.h>

#include "qtool/runtime/executor.h"

namespace qtool::passes {
namespace {

const std::set<std::string, std::less<>> kNonFoldable = {
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"};

// The constant value of a Constant node's attribute, or an undefined tensor if it is not one we read.
Tensor constant_attr_value(const ir::Node& n) {
  if (const ir::Attribute* a = n.find_attr("value"); a && !a->tensors.empty()) return a->tensors[0];
  if (const ir::Attribute* a = n.find_attr("value_float")) return Tensor::scalar<float>(a->f);
  if (const ir::Attribute* a = n.find_attr("value_int")) return Tensor::scalar<int64_t>(a->i);
  if (const ir::Attribute* a = n.find_attr("value_floats"))
    return Tensor::from_vector<float>({static_cast<int64_t>(a->floats.size())}, a->floats);
  if (const ir::Attribute* a = n.find_attr("value_ints"))
    return Tensor::from_vector<int64_t>({static_cast<int64_t>(a->ints.size())}, a->ints);
  return {};
}

// Shape(x) for a statically known shape.
Tensor static_shape_value(const ir::Node& n) {
  const ir::Value* x = n.input(0);
  if (x == nullptr || !x->type().has_shape) return {};
  std::vector<int64_t> dims;
  if (const Tensor* t = x->initializer()) {
    dims = t->shape();
  } else {
    for (const ir::Dim& d : x->type().dims) {
      if (!d.known()) return {};
      dims.push_back(d.value);
    }
  }
  const int64_t r = static_cast<int64_t>(dims.size());
  int64_t start = n.attr_int("start", 0), end = n.attr_int("end", r);
  if (start < 0) start += r;
  if (end < 0) end += r;
  start = std::clamp<int64_t>(start, 0, r);
  end = std::clamp<int64_t>(end, start, r);
  std::vector<int64_t> out(dims.begin() + start, dims.begin() + end);
  return Tensor::from_vector<int64_t>({static_cast<int64_t>(out.size())}, out);
}

// Runs `n` alone on its constant inputs.
std::vector<Tensor> evaluate(const ir::Model& model, const ir::Node& n) {
  ir::Model mini;
  mini.ir_version = model.ir_version;
  mini.opset_imports = model.opset_imports;
  ir::Graph& g = *mini.graph;
  std::vector<ir::Value*> ins;
  for (const ir::Value* v : n.inputs()) {
    if (v == nullptr) {
      ins.push_back(nullptr);
      continue;
    }
    ir::Value* c = g.find_value(v->name());
    if (c == nullptr) c = g.add_initializer(v->name(), *v->initializer());
    c->type().elem_type = v->initializer()->dtype();
    ins.push_back(c);
  }
  std::vector<std::string> outs;
  for (const ir::Value* v : n.outputs()) outs.push_back(v ? v->name() : "");
  ir::Node* copy = g.add_node(n.op_type(), ins, outs, n.name(), n.domain());
  for (const ir::Attribute& a : n.attributes()) copy->set_attr(a.clone());
  for (ir::Value* v : copy->outputs())
    if (v) g.add_output(v);
  runtime::Executor ex(mini);
  return ex.run({});
}

/// An initializer of `g` or of a graph enclosing it (a body reading its parent's weights: an LSTM
/// export slices, concatenates and unsqueezes them inside the If branch).
bool is_constant(const ir::Graph& g, const ir::Value* v) {
  if (v == nullptr) return true;
  if (!v->is_initializer() || v->is_graph_input()) return false;
  for (const ir::Graph* s = &g; s != nullptr; s = s->parent())
    if (v->owner() == s) return true;
  return false;
}

size_t run_on_graph(ir::Model& model, ir::Graph& g, const PassOptions& options) {
  size_t folded = 0;
  for (ir::Node* n : g.topo_order()) {
    if (!n->domain().empty() || kNonFoldable.count(n->op_type()) || !n->subgraphs().empty()) continue;
    if (options.fold_only && !options.fold_only(*n)) continue;
    bool any_output = false, output_is_interface = false;
    for (const ir::Value* o : n->outputs()) {
      if (o == nullptr) continue;
      any_output = true;
      output_is_interface |= o->is_graph_output();
    }
    if (!any_output || output_is_interface) continue;
    std::vector<Tensor> results;
    if (n->op_type() == "Constant") {
      Tensor t = constant_attr_value(*n);
      if (!t.defined()) continue;
      results.push_back(std::move(t));
    } else if (n->op_type() == "Shape") {
      Tensor t = static_shape_value(*n);
      if (!t.defined()) continue;
      results.push_back(std::move(t));
    } else {
      if (n->inputs().empty()) continue;
      bool all_const = true;
      int64_t in_elems = 0;
      for (const ir::Value* v : n->inputs()) {
        all_const &= is_constant(g, v);
        if (v && v->initializer()) in_elems += v->initializer()->numel();
      }
      if (!all_const) continue;
      try {
        results = with_context(fmt::format("while folding node {}", n->describe()), [&] { return evaluate(model, *n); });
      } catch (const Error& e) {
        // No kernel or a kernel error on constant data: leave the node to run time.
        (void)e;
        continue;
      }
      int64_t out_elems = 0;
      for (const Tensor& t : results) out_elems += t.defined() ? t.numel() : 0;
      if (out_elems > options.fold_max_elements && out_elems > in_elems) continue;
    }
    // Replace each output by an initializer of the same name.
    std::vector<std::pair<std::string, ir::Value*>> tmp;
    for (size_t i = 0; i < n->outputs().size() && i < results.size(); ++i) {
      ir::Value* o = n->output(i);
      if (o == nullptr) continue;
      if (!results[i].defined()) {
        tmp.clear();
        break;
      }
      ir::Value* c = g.add_initializer(g.unique_name(o->name() + "_folded"), results[i]);
      c->type().elem_type = results[i].dtype();
      tmp.emplace_back(o->name(), c);
    }
    if (tmp.empty()) continue;
    for (auto& [name, c] : tmp) g.replace_all_uses(g.find_value(name), c);
    g.remove_node(n);
    for (auto& [name, c] : tmp) {
      ir::Value* fin = g.add_initializer(name, *c->initializer());
      fin->type() = c->type();
      g.replace_all_uses(c, fin);
      g.remove_initializer(c);
    }
    ++folded;
  }
  if (folded) g.eliminate_dead_nodes();
  return folded;
}

}  // namespace

size_t fold_constants(ir::Model& model, const PassOptions& options) {
  return for_each_graph(*model.graph, [&](ir::Graph& g) { return run_on_graph(model, g, options); });
}

}  // namespace qtool::passes
