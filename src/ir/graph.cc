#include "qtool/ir/graph.h"

#include <algorithm>
#include <queue>
#include <unordered_set>

namespace qtool::ir {

// ---------------- Value ----------------

void Value::set_initializer(Tensor t) {
  QTOOL_CHECK(producer_ == nullptr, ErrorCode::kInternal, "value '{}' has a producer and cannot be constant",
              name_);
  const bool was = initializer_.has_value();
  type_.elem_type = t.dtype();
  type_.has_shape = true;
  type_.dims.clear();
  for (int64_t d : t.shape()) type_.dims.push_back(Dim{d, {}});
  initializer_ = std::move(t);
  if (!was && owner_) owner_->initializers_.push_back(this);
}

bool Value::is_graph_output() const {
  if (!owner_) return false;
  const auto& outs = owner_->outputs();
  return std::find(outs.begin(), outs.end(), this) != outs.end();
}

// ---------------- Attribute ----------------

Attribute Attribute::clone() const {
  Attribute a;
  a.name = name;
  a.type = type;
  a.f = f;
  a.i = i;
  a.s = s;
  a.floats = floats;
  a.ints = ints;
  a.strings = strings;
  a.tensors = tensors;
  a.opaque = opaque;
  a.ref_attr_name = ref_attr_name;
  a.doc_string = doc_string;
  for (const auto& g : graphs) a.graphs.push_back(g->clone(g->parent()));
  return a;
}

Attribute Attribute::make_int(std::string name, int64_t v) {
  Attribute a;
  a.name = std::move(name);
  a.type = AttrType::kInt;
  a.i = v;
  return a;
}
Attribute Attribute::make_float(std::string name, float v) {
  Attribute a;
  a.name = std::move(name);
  a.type = AttrType::kFloat;
  a.f = v;
  return a;
}
Attribute Attribute::make_string(std::string name, std::string v) {
  Attribute a;
  a.name = std::move(name);
  a.type = AttrType::kString;
  a.s = std::move(v);
  return a;
}
Attribute Attribute::make_ints(std::string name, std::vector<int64_t> v) {
  Attribute a;
  a.name = std::move(name);
  a.type = AttrType::kInts;
  a.ints = std::move(v);
  return a;
}
Attribute Attribute::make_floats(std::string name, std::vector<float> v) {
  Attribute a;
  a.name = std::move(name);
  a.type = AttrType::kFloats;
  a.floats = std::move(v);
  return a;
}
Attribute Attribute::make_tensor(std::string name, Tensor t) {
  Attribute a;
  a.name = std::move(name);
  a.type = AttrType::kTensor;
  a.tensors.push_back(std::move(t));
  return a;
}

// ---------------- Node ----------------

void Node::set_input(size_t i, Value* v) {
  QTOOL_CHECK(i <= inputs_.size(), ErrorCode::kInternal, "set_input index {} out of range", i);
  if (i == inputs_.size()) {
    inputs_.push_back(nullptr);
  }
  Value* old = inputs_[i];
  if (old) {
    auto& u = old->uses_;
    auto it = std::find(u.begin(), u.end(), Use{this, static_cast<int>(i)});
    if (it != u.end()) u.erase(it);
  }
  inputs_[i] = v;
  if (v) v->uses_.push_back(Use{this, static_cast<int>(i)});
}

void Node::truncate_inputs(size_t n) {
  while (inputs_.size() > n) {
    set_input(inputs_.size() - 1, nullptr);
    inputs_.pop_back();
  }
}

const Attribute* Node::find_attr(std::string_view name) const {
  for (const auto& a : attrs_) {
    if (a.name == name) return &a;
  }
  return nullptr;
}

void Node::set_attr(Attribute a) {
  for (auto& x : attrs_) {
    if (x.name == a.name) {
      x = std::move(a);
      return;
    }
  }
  attrs_.push_back(std::move(a));
}

void Node::remove_attr(std::string_view name) {
  attrs_.erase(std::remove_if(attrs_.begin(), attrs_.end(), [&](const Attribute& a) { return a.name == name; }),
               attrs_.end());
}

int64_t Node::attr_int(std::string_view name, int64_t dflt) const {
  const Attribute* a = find_attr(name);
  return a ? a->i : dflt;
}
float Node::attr_float(std::string_view name, float dflt) const {
  const Attribute* a = find_attr(name);
  return a ? a->f : dflt;
}
std::string Node::attr_string(std::string_view name, const std::string& dflt) const {
  const Attribute* a = find_attr(name);
  return a ? a->s : dflt;
}
std::vector<int64_t> Node::attr_ints(std::string_view name, const std::vector<int64_t>& dflt) const {
  const Attribute* a = find_attr(name);
  return a ? a->ints : dflt;
}
std::vector<float> Node::attr_floats(std::string_view name, const std::vector<float>& dflt) const {
  const Attribute* a = find_attr(name);
  return a ? a->floats : dflt;
}

const Attribute& Node::required_attr(std::string_view name) const {
  const Attribute* a = find_attr(name);
  if (!a) fail(ErrorCode::kInvalidModel, "node {} lacks required attribute '{}'", describe(), name);
  return *a;
}

std::vector<Graph*> Node::subgraphs() const {
  std::vector<Graph*> out;
  for (const auto& a : attrs_) {
    for (const auto& g : a.graphs) out.push_back(g.get());
  }
  return out;
}

std::string Node::describe() const {
  std::string n = name_;
  if (n.empty()) {
    for (Value* v : outputs_) {
      if (v) {
        n = "<output " + v->name() + ">";
        break;
      }
    }
  }
  return fmt::format("'{}' ({}{}{})", n, domain_.empty() ? "" : domain_, domain_.empty() ? "" : ".", op_type_);
}

// ---------------- Graph ----------------

Graph::Graph(std::string name, Graph* parent) : name_(std::move(name)), parent_(parent) {}
Graph::~Graph() = default;

Value* Graph::add_value(const std::string& name) {
  QTOOL_CHECK(by_name_.find(name) == by_name_.end(), ErrorCode::kInvalidModel,
              "tensor name '{}' is defined more than once in graph '{}'", name, name_);
  auto v = std::make_unique<Value>();
  v->name_ = name;
  v->owner_ = this;
  Value* raw = v.get();
  values_.push_back(std::move(v));
  if (!name.empty()) by_name_.emplace(name, raw);
  return raw;
}

Value* Graph::find_value(std::string_view name) const {
  auto it = by_name_.find(std::string(name));
  return it == by_name_.end() ? nullptr : it->second;
}

Value* Graph::lookup(std::string_view name) const {
  for (const Graph* g = this; g; g = g->parent_) {
    if (Value* v = g->find_value(name)) return v;
  }
  return nullptr;
}

Value* Graph::add_initializer(const std::string& name, Tensor t) {
  Value* v = find_value(name);
  if (!v) v = add_value(name);
  QTOOL_CHECK(!v->is_initializer(), ErrorCode::kInvalidModel, "initializer '{}' is defined more than once", name);
  QTOOL_CHECK(v->producer() == nullptr, ErrorCode::kInvalidModel,
              "initializer '{}' has the same name as the output of node {}", name, v->producer()->describe());
  v->set_initializer(std::move(t));
  return v;
}

void Graph::remove_initializer(Value* v) {
  QTOOL_CHECK(v->owner_ == this && v->uses().empty() && !v->is_graph_output(), ErrorCode::kInternal,
              "cannot remove initializer '{}': still in use", v->name());
  initializers_.erase(std::remove(initializers_.begin(), initializers_.end(), v), initializers_.end());
  inputs_.erase(std::remove(inputs_.begin(), inputs_.end(), v), inputs_.end());
  value_infos_.erase(std::remove(value_infos_.begin(), value_infos_.end(), v), value_infos_.end());
  by_name_.erase(v->name());
  values_.erase(std::remove_if(values_.begin(), values_.end(), [&](const auto& p) { return p.get() == v; }),
                values_.end());
}

namespace {

/// True when `g` or a graph nested in it (at any depth) has a value named `name`.
bool used_below(const Graph& g, std::string_view name) {
  if (g.find_value(name)) return true;
  for (const auto& n : g.nodes())
    for (const Graph* sub : n->subgraphs())
      if (used_below(*sub, name)) return true;
  return false;
}

}  // namespace

std::string Graph::unique_name(std::string_view base) {
  const Graph* root = this;
  while (root->parent()) root = root->parent();
  std::string b(base.empty() ? "t" : base);
  if (!used_below(*root, b)) return b;
  for (;;) {
    std::string n = fmt::format("{}_{}", b, ++name_counter_);
    if (!used_below(*root, n)) return n;
  }
}

Value* Graph::add_input(const std::string& name, TypeInfo type) {
  Value* v = find_value(name);
  if (!v) v = add_value(name);
  QTOOL_CHECK(!v->is_graph_input_, ErrorCode::kInvalidModel, "graph input '{}' is listed twice", name);
  v->is_graph_input_ = true;
  if (type.known()) v->type_ = std::move(type);
  inputs_.push_back(v);
  return v;
}

void Graph::add_output(Value* v) { outputs_.push_back(v); }

void Graph::set_output(size_t i, Value* v) { outputs_.at(i) = v; }

std::vector<Value*> Graph::runtime_inputs() const {
  std::vector<Value*> out;
  for (Value* v : inputs_) {
    if (!v->is_initializer()) out.push_back(v);
  }
  return out;
}

void Graph::add_value_info(Value* v) { value_infos_.push_back(v); }

void Graph::attach_outputs(Node* n, const std::vector<std::string>& output_names) {
  for (size_t i = 0; i < output_names.size(); ++i) {
    if (output_names[i].empty()) {
      n->outputs_.push_back(nullptr);
      continue;
    }
    Value* v = find_value(output_names[i]);
    if (v) {
      QTOOL_CHECK(v->producer_ == nullptr && !v->is_initializer() && !v->is_graph_input_, ErrorCode::kInvalidModel,
                  "tensor '{}' is produced by node {} but is already {}", output_names[i], n->describe(),
                  v->producer_ ? "the output of node " + v->producer_->describe()
                               : (v->is_initializer() ? std::string("an initializer") : std::string("a graph input")));
    } else {
      v = add_value(output_names[i]);
    }
    v->producer_ = n;
    v->producer_index_ = static_cast<int>(i);
    n->outputs_.push_back(v);
  }
}

Node* Graph::add_node(const std::string& op_type, const std::vector<Value*>& inputs,
                      const std::vector<std::string>& output_names, const std::string& name,
                      const std::string& domain) {
  return insert_node_before(nullptr, op_type, inputs, output_names, name, domain);
}

Node* Graph::insert_node_before(Node* pos, const std::string& op_type, const std::vector<Value*>& inputs,
                                const std::vector<std::string>& output_names, const std::string& name,
                                const std::string& domain) {
  auto node = std::make_unique<Node>();
  Node* n = node.get();
  n->owner_ = this;
  n->op_type_ = op_type;
  n->name_ = name;
  n->domain_ = (domain == "ai.onnx") ? "" : domain;
  for (Value* v : inputs) n->add_input(v);
  auto it = nodes_.end();
  if (pos) {
    it = std::find_if(nodes_.begin(), nodes_.end(), [&](const auto& p) { return p.get() == pos; });
    QTOOL_CHECK(it != nodes_.end(), ErrorCode::kInternal, "insert position is not in graph '{}'", name_);
  }
  nodes_.insert(it, std::move(node));
  attach_outputs(n, output_names);
  return n;
}

void Graph::remove_node(Node* n) {
  QTOOL_CHECK(n->owner_ == this, ErrorCode::kInternal, "node {} is not in graph '{}'", n->describe(), name_);
  for (Value* v : n->outputs_) {
    if (!v) continue;
    QTOOL_CHECK(v->uses_.empty() && !v->is_graph_output(), ErrorCode::kInternal,
                "cannot remove node {}: output '{}' is still used", n->describe(), v->name());
  }
  for (size_t i = 0; i < n->inputs_.size(); ++i) n->set_input(i, nullptr);
  // Subgraph nodes may read values outside the removed subtree: drop those uses too.
  std::unordered_set<const Graph*> subtree;
  std::vector<Graph*> stack = n->subgraphs();
  std::vector<Graph*> all;
  while (!stack.empty()) {
    Graph* g = stack.back();
    stack.pop_back();
    subtree.insert(g);
    all.push_back(g);
    for (const auto& sn : g->nodes_) {
      for (Graph* sg : sn->subgraphs()) stack.push_back(sg);
    }
  }
  for (Graph* g : all) {
    for (const auto& sn : g->nodes_) {
      for (size_t i = 0; i < sn->inputs_.size(); ++i) {
        if (sn->inputs_[i] && !subtree.count(sn->inputs_[i]->owner_)) sn->set_input(i, nullptr);
      }
    }
  }
  for (Value* v : n->outputs_) {
    if (!v) continue;
    by_name_.erase(v->name());
    value_infos_.erase(std::remove(value_infos_.begin(), value_infos_.end(), v), value_infos_.end());
    values_.erase(std::remove_if(values_.begin(), values_.end(), [&](const auto& p) { return p.get() == v; }),
                  values_.end());
  }
  nodes_.erase(std::remove_if(nodes_.begin(), nodes_.end(), [&](const auto& p) { return p.get() == n; }),
               nodes_.end());
}

void Graph::replace_all_uses(Value* from, Value* to) {
  if (from == to) return;
  const std::vector<Use> uses = from->uses_;
  for (const Use& u : uses) u.node->set_input(static_cast<size_t>(u.index), to);
  for (auto& o : outputs_) {
    if (o == from) o = to;
  }
}

namespace {
// Values read by `g` (and its nested subgraphs) that live outside `g`.
void collect_outer_reads(const Graph& g, std::vector<Value*>& out) {
  for (const auto& n : g.nodes()) {
    for (Value* v : n->inputs()) {
      if (v && v->owner() != &g) out.push_back(v);
    }
    for (Graph* sg : n->subgraphs()) {
      std::vector<Value*> inner;
      collect_outer_reads(*sg, inner);
      for (Value* v : inner) {
        if (v->owner() != &g) out.push_back(v);
      }
    }
  }
}

// Inputs a node depends on within graph `g`: its own inputs plus what its subgraphs read from `g`.
std::vector<Value*> node_deps(const Node& n) {
  std::vector<Value*> deps;
  for (Value* v : n.inputs()) {
    if (v) deps.push_back(v);
  }
  for (Graph* sg : n.subgraphs()) collect_outer_reads(*sg, deps);
  return deps;
}
}  // namespace

size_t Graph::eliminate_dead_nodes() {
  std::unordered_set<const Node*> live;
  std::vector<const Node*> work;
  auto mark = [&](Value* v) {
    if (v && v->owner() == this && v->producer() && live.insert(v->producer()).second) work.push_back(v->producer());
  };
  for (Value* v : outputs_) mark(v);
  for (const auto& n : nodes_) {
    bool has_output = false;
    for (Value* v : n->outputs()) has_output |= v != nullptr;
    if (!has_output && live.insert(n.get()).second) work.push_back(n.get());
  }
  while (!work.empty()) {
    const Node* n = work.back();
    work.pop_back();
    for (Value* v : node_deps(*n)) mark(v);
  }
  size_t removed = 0;
  for (size_t i = nodes_.size(); i-- > 0;) {
    Node* n = nodes_[i].get();
    if (live.count(n)) continue;
    // Detach outputs' uses by dead consumers first (they are removed too, in reverse order).
    bool used = false;
    for (Value* v : n->outputs()) {
      if (v && (!v->uses().empty() || v->is_graph_output())) used = true;
    }
    if (used) continue;  // a dead consumer later in order still reads it; caught on a later sweep
    remove_node(n);
    ++removed;
    i = std::min(i, nodes_.size());
  }
  if (removed) removed += eliminate_dead_nodes();
  // Unused initializers (not graph inputs: those are part of the interface).
  std::vector<Value*> dead_inits;
  for (Value* v : initializers_) {
    if (v->uses().empty() && !v->is_graph_output() && !v->is_graph_input()) dead_inits.push_back(v);
  }
  for (Value* v : dead_inits) remove_initializer(v);
  return removed;
}

std::vector<Node*> Graph::topo_order() const {
  std::unordered_map<const Node*, size_t> index;
  for (size_t i = 0; i < nodes_.size(); ++i) index[nodes_[i].get()] = i;
  std::vector<std::vector<size_t>> consumers(nodes_.size());
  std::vector<size_t> pending(nodes_.size(), 0);
  for (size_t i = 0; i < nodes_.size(); ++i) {
    std::unordered_set<const Node*> seen;
    for (Value* v : node_deps(*nodes_[i])) {
      Node* p = v->producer();
      if (!p || p->owner() != this || !seen.insert(p).second) continue;
      consumers[index[p]].push_back(i);
      ++pending[i];
    }
  }
  // Kahn's algorithm with a min-heap on file position: stable for already-sorted graphs.
  std::priority_queue<size_t, std::vector<size_t>, std::greater<>> ready;
  for (size_t i = 0; i < nodes_.size(); ++i) {
    if (pending[i] == 0) ready.push(i);
  }
  std::vector<Node*> order;
  order.reserve(nodes_.size());
  while (!ready.empty()) {
    size_t i = ready.top();
    ready.pop();
    order.push_back(nodes_[i].get());
    for (size_t c : consumers[i]) {
      if (--pending[c] == 0) ready.push(c);
    }
  }
  if (order.size() != nodes_.size()) {
    for (size_t i = 0; i < nodes_.size(); ++i) {
      if (pending[i] != 0) {
        fail(ErrorCode::kInvalidModel, "graph '{}' has a cycle through node {}", name_, nodes_[i]->describe());
      }
    }
  }
  return order;
}

void Graph::topo_sort() {
  std::vector<Node*> order = topo_order();
  std::unordered_map<const Node*, size_t> pos;
  for (size_t i = 0; i < order.size(); ++i) pos[order[i]] = i;
  std::vector<std::unique_ptr<Node>> sorted(nodes_.size());
  for (auto& n : nodes_) {
    size_t p = pos[n.get()];
    sorted[p] = std::move(n);
  }
  nodes_ = std::move(sorted);
}

void Graph::validate() const {
  for (const auto& n : nodes_) {
    for (Value* v : n->inputs()) {
      if (!v) continue;
      const bool ok = v->producer() != nullptr || v->is_initializer() || v->is_graph_input() || v->owner() != this ||
                      v->type().opaque_type.size() > 0;
      if (!ok) {
        // An outer-scope value must exist in an enclosing graph; a value of this graph needs a source.
        fail(ErrorCode::kInvalidModel,
             "node {} reads tensor '{}', which no node, initializer or graph input provides (graph '{}')",
             n->describe(), v->name(), name_);
      }
    }
    for (Graph* sg : n->subgraphs()) {
      with_context(fmt::format("in subgraph '{}' of node {}", sg->name(), n->describe()), [&] { sg->validate(); });
    }
  }
  for (Value* v : outputs_) {
    QTOOL_CHECK(v != nullptr, ErrorCode::kInvalidModel, "graph '{}' has an empty output", name_);
    const bool ok = v->producer() != nullptr || v->is_initializer() || v->is_graph_input() || v->owner() != this;
    QTOOL_CHECK(ok, ErrorCode::kInvalidModel, "graph output '{}' is not produced by any node (graph '{}')", v->name(),
                name_);
  }
  (void)topo_order();
}

std::unique_ptr<Graph> Graph::clone(Graph* new_parent) const {
  auto g = std::make_unique<Graph>(name_, new_parent);
  g->doc_string_ = doc_string_;
  std::unordered_map<const Value*, Value*> map;
  auto mapped = [&](Value* v) -> Value* {
    if (!v) return nullptr;
    auto it = map.find(v);
    if (it != map.end()) return it->second;
    // Outer-scope value: resolve by name in the new parent chain, else keep the original pointer.
    if (v->owner() != this) {
      if (new_parent) {
        if (Value* o = new_parent->lookup(v->name())) return o;
      }
      return v;
    }
    return nullptr;
  };
  // Values without producers first (inputs, initializers, and values only typed by value_info).
  for (const auto& v : values_) {
    if (v->producer()) continue;
    Value* nv = g->add_value(v->name());
    nv->type_ = v->type_;
    nv->doc_string_ = v->doc_string_;
    nv->is_graph_input_ = v->is_graph_input_;
    map[v.get()] = nv;
  }
  for (Value* v : initializers_) {
    map[v]->initializer_ = *v->initializer_;
    g->initializers_.push_back(map[v]);
  }
  for (Value* v : inputs_) g->inputs_.push_back(map[v]);
  for (const auto& n : nodes_) {
    auto nn = std::make_unique<Node>();
    Node* raw = nn.get();
    raw->owner_ = g.get();
    raw->name_ = n->name_;
    raw->op_type_ = n->op_type_;
    raw->domain_ = n->domain_;
    raw->doc_string_ = n->doc_string_;
    g->nodes_.push_back(std::move(nn));
    std::vector<std::string> outs;
    for (Value* v : n->outputs_) outs.push_back(v ? v->name() : "");
    g->attach_outputs(raw, outs);
    for (size_t i = 0; i < n->outputs_.size(); ++i) {
      if (n->outputs_[i]) {
        map[n->outputs_[i]] = raw->outputs_[i];
        raw->outputs_[i]->type_ = n->outputs_[i]->type_;
        raw->outputs_[i]->doc_string_ = n->outputs_[i]->doc_string_;
      }
    }
  }
  // Inputs after all outputs exist (nodes may be out of order).
  for (size_t k = 0; k < nodes_.size(); ++k) {
    Node* src = nodes_[k].get();
    Node* dst = g->nodes_[k].get();
    for (Value* v : src->inputs_) dst->add_input(mapped(v));
    for (const auto& a : src->attrs_) {
      Attribute c;
      c.name = a.name;
      c.type = a.type;
      c.f = a.f;
      c.i = a.i;
      c.s = a.s;
      c.floats = a.floats;
      c.ints = a.ints;
      c.strings = a.strings;
      c.tensors = a.tensors;
      c.opaque = a.opaque;
      c.ref_attr_name = a.ref_attr_name;
      c.doc_string = a.doc_string;
      for (const auto& sg : a.graphs) c.graphs.push_back(sg->clone(g.get()));
      dst->attrs_.push_back(std::move(c));
    }
  }
  for (Value* v : outputs_) g->outputs_.push_back(mapped(v));
  for (Value* v : value_infos_) {
    if (Value* m = mapped(v)) g->value_infos_.push_back(m);
  }
  g->name_counter_ = name_counter_;
  return g;
}

// ---------------- Model ----------------

int64_t Model::opset(std::string_view domain) const {
  const std::string_view d = domain == "ai.onnx" ? std::string_view() : domain;
  for (const auto& o : opset_imports) {
    const std::string_view od = o.domain == "ai.onnx" ? std::string_view() : std::string_view(o.domain);
    if (od == d) return o.version;
  }
  return 0;
}

void Model::set_opset(std::string_view domain, int64_t version) {
  const std::string_view d = domain == "ai.onnx" ? std::string_view() : domain;
  for (auto& o : opset_imports) {
    const std::string_view od = o.domain == "ai.onnx" ? std::string_view() : std::string_view(o.domain);
    if (od == d) {
      o.version = version;
      return;
    }
  }
  opset_imports.push_back(OpsetImport{std::string(d), version});
}

Model Model::clone() const {
  Model m;
  m.ir_version = ir_version;
  m.opset_imports = opset_imports;
  m.producer_name = producer_name;
  m.producer_version = producer_version;
  m.domain = domain;
  m.doc_string = doc_string;
  m.model_version = model_version;
  m.metadata_props = metadata_props;
  m.graph = graph->clone(nullptr);
  m.sparse_initializers = sparse_initializers;
  m.functions = functions;
  m.function_ids = function_ids;
  m.opaque_extra = opaque_extra;
  m.source_path = source_path;
  return m;
}

}  // namespace qtool::ir
