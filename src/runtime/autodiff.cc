// Autodiff: the forward/backward tape (see autodiff.h).
//
// Planning, once: the nodes the seeds depend on (ancestors), the values that depend on a `wrt`
// value (forward closure over float outputs), the values a seed depends on (backward closure),
// and from them the gradient nodes. A forward run keeps every input and output of a gradient
// node; other intermediates are released after their last forward use.
#include "qtool/runtime/autodiff.h"

#include <algorithm>
#include <unordered_set>

#include "qtool/core/error.h"

namespace qtool::runtime {

// ---- GradContext / GradRegistry ----

const Tensor& GradContext::input(size_t i) const {
  if (!has_input(i)) fail(ErrorCode::kInvalidModel, "node {} is missing its input {}", node_.describe(), i);
  return *inputs_[i];
}

const Tensor& GradContext::output(size_t i) const {
  QTOOL_CHECK(i < outputs_.size() && outputs_[i] && outputs_[i]->defined(), ErrorCode::kInternal,
              "gradient of {}: output {} was not kept", node_.describe(), i);
  return *outputs_[i];
}

const Tensor& GradContext::output_grad(size_t i) const {
  QTOOL_CHECK(has_output_grad(i), ErrorCode::kInternal, "gradient of {}: output {} has no gradient",
              node_.describe(), i);
  return *output_grads_[i];
}

void GradContext::set_input_grad(size_t i, Tensor g) {
  if (!wants_input_grad(i)) return;
  QTOOL_CHECK(g.defined() && g.dtype() == DataType::kFloat, ErrorCode::kInternal,
              "gradient of {}: input {} gradient must be float32", node_.describe(), i);
  QTOOL_CHECK(g.shape() == input(i).shape(), ErrorCode::kInternal,
              "gradient of {}: input {} gradient has shape {} but the input has {}", node_.describe(), i,
              shape_str(g.shape()), shape_str(input(i).shape()));
  (*input_grads_)[i] = std::move(g);
}

namespace {
std::string grad_key(std::string_view domain, std::string_view op_type) {
  std::string k(domain == "ai.onnx" ? std::string_view{} : domain);
  k.push_back(':');
  k.append(op_type);
  return k;
}

/// Ops whose outputs never carry a gradient (integer/boolean results, or piecewise-constant
/// functions whose derivative is zero almost everywhere).
bool non_differentiable(const ir::Node& n) {
  static const std::unordered_set<std::string> kOps = {
      "Shape", "Size", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And", "Or", "Xor",
      "ArgMax", "ArgMin", "NonZero", "Range", "ConstantOfShape", "IsNaN", "IsInf", "Sign", "Floor", "Ceil",
      "Round", "EyeLike", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
      "TopK_indices", "QuantizeLinear", "DynamicQuantizeLinear", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor",
      "BitwiseNot", "StringNormalizer", "Constant"};
  return n.domain().empty() && kOps.count(n.op_type()) > 0;
}

bool maybe_float(const ir::Value* v) {
  const DataType t = v->type().elem_type;
  return t == DataType::kUndefined || t == DataType::kFloat;
}
}  // namespace

void GradRegistry::add(std::string_view domain, std::string_view op_type, int since_version, GradFn fn) {
  auto& versions = fns_[grad_key(domain, op_type)];
  auto it = std::find_if(versions.begin(), versions.end(), [&](const auto& p) { return p.first == since_version; });
  if (it != versions.end()) {
    it->second = fn;
  } else {
    versions.emplace_back(since_version, fn);
    std::sort(versions.begin(), versions.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  }
}

GradFn GradRegistry::find(std::string_view domain, std::string_view op_type, int64_t opset) const {
  auto it = fns_.find(grad_key(domain, op_type));
  if (it == fns_.end()) return nullptr;
  GradFn best = nullptr;
  for (const auto& [since, fn] : it->second)
    if (since <= opset) best = fn;
  return best;
}

std::vector<std::string> GradRegistry::ops() const {
  std::vector<std::string> out;
  for (const auto& [k, v] : fns_) out.push_back(k);
  std::sort(out.begin(), out.end());
  return out;
}

const GradRegistry& GradRegistry::global() {
  static const GradRegistry registry = [] {
    GradRegistry r;
    register_all_gradients(r);
    return r;
  }();
  return registry;
}

// ---- reduce_to_shape ----

Tensor reduce_to_shape(const Tensor& g, const Shape& shape) {
  if (g.shape() == shape) return g;
  QTOOL_CHECK(g.dtype() == DataType::kFloat, ErrorCode::kInternal, "reduce_to_shape: float gradients only");
  const size_t rank = g.rank();
  QTOOL_CHECK(shape.size() <= rank, ErrorCode::kInternal, "reduce_to_shape: {} is not broadcast to {}",
              shape_str(shape), shape_str(g.shape()));
  // Target shape right-aligned to the gradient's rank.
  Shape t(rank, 1);
  for (size_t i = 0; i < shape.size(); ++i) t[rank - shape.size() + i] = shape[i];
  for (size_t d = 0; d < rank; ++d)
    QTOOL_CHECK(t[d] == g.dim(static_cast<int>(d)) || t[d] == 1, ErrorCode::kInternal,
                "reduce_to_shape: {} is not broadcast to {}", shape_str(shape), shape_str(g.shape()));
  Tensor out(DataType::kFloat, shape);
  float* o = out.mutable_data<float>();
  const float* src = g.data<float>();
  // Output strides in the gradient's index space (0 on broadcast dims).
  std::vector<int64_t> ost(rank, 0);
  int64_t acc = 1;
  for (size_t i = rank; i-- > 0;) {
    ost[i] = t[i] == 1 ? 0 : acc;
    acc *= t[i];
  }
  const int64_t n = g.numel();
  if (rank == 0) {
    o[0] = src[0];
    return out;
  }
  // Walk the gradient with an index counter; the innermost dim is contiguous.
  std::vector<int64_t> idx(rank, 0);
  const int64_t inner = g.dim(-1), inner_st = ost[rank - 1];
  for (int64_t base = 0; base < n; base += inner) {
    int64_t off = 0;
    for (size_t d = 0; d + 1 < rank; ++d) off += idx[d] * ost[d];
    const float* s = src + base;
    if (inner_st == 0) {
      double sum = 0;
      for (int64_t i = 0; i < inner; ++i) sum += s[i];
      o[off] += static_cast<float>(sum);
    } else {
      for (int64_t i = 0; i < inner; ++i) o[off + i] += s[i];
    }
    for (size_t d = rank - 1; d-- > 0;) {
      if (++idx[d] < g.dim(static_cast<int>(d))) break;
      idx[d] = 0;
    }
  }
  return out;
}

// ---- the tape ----

struct Autodiff::Impl {
  const ir::Model& model;
  AutodiffOptions options;
  ThreadPool pool;
  struct Step {
    const ir::Node* node = nullptr;
    KernelFn kernel = nullptr;
    GradFn grad = nullptr;  // set on gradient nodes
    int64_t opset = 0;
    std::vector<int> inputs, outputs;  // slots (-1 = omitted)
    std::vector<int> release;          // slots dead after this step (forward)
    std::vector<char> wants;           // per input: needs a gradient
  };
  std::unordered_map<const ir::Value*, int> slot_of;
  int num_slots = 0;
  std::vector<std::pair<int, const Tensor*>> constants;
  std::unordered_map<int, Tensor> overrides;  // set_value
  std::vector<std::pair<int, std::string>> graph_inputs;
  std::vector<Step> steps;
  std::vector<size_t> grad_steps;  // indices into steps, topological order
  std::vector<int> wrt_slots, seed_slots;
  std::vector<Tensor> slots;
  std::vector<const ir::Value*> wrt_values;

  int slot(const ir::Value* v) {
    auto [it, inserted] = slot_of.emplace(v, num_slots);
    if (inserted) ++num_slots;
    return it->second;
  }

  Impl(const ir::Model& m, std::vector<const ir::Value*> wrt, std::vector<const ir::Value*> seeds,
       AutodiffOptions o)
      : model(m), options(o), pool(std::max(1, o.threads)), wrt_values(wrt) {
    const ir::Graph& g = *model.graph;
    if (seeds.empty())
      for (const ir::Value* v : g.outputs()) seeds.push_back(v);
    for (const ir::Value* v : g.initializers()) constants.emplace_back(slot(v), v->initializer());
    for (const ir::Value* v : g.inputs()) graph_inputs.emplace_back(slot(v), v->name());
    for (const ir::Value* v : wrt) {
      QTOOL_CHECK(v && v->owner() == &g && (v->is_initializer() || v->is_graph_input()), ErrorCode::kConfig,
                  "autodiff: '{}' is not an initializer or input of the main graph", v ? v->name() : "<null>");
      wrt_slots.push_back(slot(v));
    }
    const std::vector<ir::Node*> order = g.topo_order();
    // Ancestors of the seeds.
    std::unordered_set<const ir::Value*> needed_values(seeds.begin(), seeds.end());
    std::unordered_set<const ir::Node*> needed;
    for (auto it = order.rbegin(); it != order.rend(); ++it) {
      const ir::Node* n = *it;
      bool need = false;
      for (const ir::Value* v : n->outputs()) need = need || (v && needed_values.count(v));
      if (!need) continue;
      needed.insert(n);
      for (const ir::Value* v : n->inputs())
        if (v) needed_values.insert(v);
      // The tape runs the main graph only (no SubgraphRunner for If/Loop/Scan bodies).
      QTOOL_CHECK(n->subgraphs().empty(), ErrorCode::kUnsupported,
                  "autodiff: node {} has subgraphs (If/Loop/Scan), which the gradient tape cannot run",
                  n->describe());
    }
    // Forward closure from wrt.
    std::unordered_set<const ir::Value*> depends(wrt.begin(), wrt.end());
    for (const ir::Node* n : order) {
      if (!needed.count(n) || non_differentiable(*n)) continue;
      bool dep = false;
      for (const ir::Value* v : n->inputs()) dep = dep || (v && depends.count(v));
      if (!dep) continue;
      for (const ir::Value* v : n->outputs())
        if (v && maybe_float(v)) depends.insert(v);
    }
    // Backward closure from the seeds, over dependent values only.
    std::unordered_set<const ir::Value*> reaches(seeds.begin(), seeds.end());
    for (auto it = order.rbegin(); it != order.rend(); ++it) {
      const ir::Node* n = *it;
      if (!needed.count(n)) continue;
      bool r = false;
      for (const ir::Value* v : n->outputs()) r = r || (v && reaches.count(v) && depends.count(v));
      if (!r) continue;
      for (const ir::Value* v : n->inputs())
        if (v && depends.count(v)) reaches.insert(v);
    }
    bool any_seed = false;
    for (const ir::Value* s : seeds) any_seed = any_seed || depends.count(s) > 0;
    QTOOL_CHECK(any_seed, ErrorCode::kConfig, "autodiff: no seed depends on the values to differentiate");
    for (const ir::Value* s : seeds) seed_slots.push_back(slot(s));

    std::vector<int> last_use;
    std::unordered_set<int> keep;
    for (int s : wrt_slots) keep.insert(s);
    for (int s : seed_slots) keep.insert(s);
    for (const ir::Node* n : order) {
      if (!needed.count(n)) continue;
      Step st;
      st.node = n;
      int64_t v = model.opset(n->domain());
      st.opset = v == 0 ? 1 : v;
      st.kernel = KernelRegistry::global().find(n->domain(), n->op_type(), st.opset);
      QTOOL_CHECK(st.kernel, ErrorCode::kUnsupported, "no kernel for node {} at opset {}", n->describe(), st.opset);
      for (const ir::Value* in : n->inputs()) st.inputs.push_back(in ? slot(in) : -1);
      for (const ir::Value* out : n->outputs()) st.outputs.push_back(out ? slot(out) : -1);
      bool on_path = false;
      for (const ir::Value* out : n->outputs()) on_path = on_path || (out && reaches.count(out) && depends.count(out));
      if (on_path) {
        QTOOL_CHECK(n->subgraphs().empty(), ErrorCode::kUnsupported,
                    "autodiff: node {} has subgraphs and lies on a gradient path", n->describe());
        st.grad = GradRegistry::global().find(n->domain(), n->op_type(), st.opset);
        QTOOL_CHECK(st.grad, ErrorCode::kUnsupported,
                    "autodiff: no gradient for node {} (op {}, opset {}), which lies between the tuned "
                    "parameters and the loss",
                    n->describe(), n->op_type(), st.opset);
        for (const ir::Value* in : n->inputs()) st.wants.push_back(in && depends.count(in) ? 1 : 0);
        for (int s : st.inputs)
          if (s >= 0) keep.insert(s);
        for (int s : st.outputs)
          if (s >= 0) keep.insert(s);
        grad_steps.push_back(steps.size());
      }
      steps.push_back(std::move(st));
    }
    // Forward release plan: a slot not kept dies after its last reader among the steps. Nodes with
    // subgraphs may read outer values we cannot see cheaply: nothing is released before them.
    last_use.assign(num_slots, -1);
    int barrier = -1;
    for (size_t i = 0; i < steps.size(); ++i) {
      for (int s : steps[i].inputs)
        if (s >= 0) last_use[s] = static_cast<int>(i);
      if (!steps[i].node->subgraphs().empty()) barrier = static_cast<int>(i);
    }
    std::unordered_set<int> constant_slots;
    for (const auto& c : constants) constant_slots.insert(c.first);
    for (const auto& gi : graph_inputs) constant_slots.insert(gi.first);
    for (int s = 0; s < num_slots; ++s) {
      if (keep.count(s) || constant_slots.count(s) || last_use[s] < 0) continue;
      steps[std::max(last_use[s], barrier)].release.push_back(s);
    }
  }

  std::vector<Tensor> forward(const std::map<std::string, Tensor>& inputs) {
    slots.assign(num_slots, Tensor());
    for (const auto& [s, t] : constants) slots[s] = *t;
    for (const auto& [s, t] : overrides) slots[s] = t;
    for (const auto& [s, name] : graph_inputs) {
      auto it = inputs.find(name);
      if (it != inputs.end()) slots[s] = it->second;
    }
    for (const auto& [name, t] : inputs) {
      bool known = false;
      for (const auto& gi : graph_inputs) known = known || gi.second == name;
      QTOOL_CHECK(known, ErrorCode::kInvalidInput, "the model has no input named '{}'", name);
    }
    std::vector<const Tensor*> ins;
    std::vector<Tensor> outs;
    for (const Step& st : steps) {
      ins.clear();
      for (int s : st.inputs) ins.push_back(s < 0 ? nullptr : &slots[s]);
      outs.assign(st.outputs.size(), Tensor());
      KernelContext ctx(*st.node, st.opset, ins, &outs, &pool, nullptr);
      with_context(fmt::format("in node {} (forward pass for gradients)", st.node->describe()), [&] {
        QTOOL_CHECK(st.node->subgraphs().empty(), ErrorCode::kUnsupported,
                    "autodiff: node {} with subgraphs cannot run on the gradient tape", st.node->describe());
        st.kernel(ctx);
      });
      for (size_t i = 0; i < st.outputs.size(); ++i)
        if (st.outputs[i] >= 0) slots[st.outputs[i]] = std::move(outs[i]);
      for (int s : st.release) slots[s] = Tensor();
    }
    std::vector<Tensor> out;
    for (int s : seed_slots) out.push_back(slots[s]);
    return out;
  }

  static void accumulate(Tensor& into, Tensor g) {
    if (!into.defined()) {
      into = std::move(g);
      return;
    }
    QTOOL_CHECK(into.shape() == g.shape(), ErrorCode::kInternal, "autodiff: gradient shapes {} and {} differ",
                shape_str(into.shape()), shape_str(g.shape()));
    float* a = into.mutable_data<float>();  // copy-on-write when shared
    const float* b = g.data<float>();
    for (int64_t i = 0; i < into.numel(); ++i) a[i] += b[i];
  }

  std::vector<Tensor> backward(const std::vector<Tensor>& seed_grads) {
    QTOOL_CHECK(seed_grads.size() == seed_slots.size(), ErrorCode::kInternal,
                "autodiff: {} seed gradients for {} seeds", seed_grads.size(), seed_slots.size());
    std::vector<Tensor> grads(num_slots);
    for (size_t i = 0; i < seed_slots.size(); ++i) {
      if (!seed_grads[i].defined()) continue;
      const Tensor& v = slots[seed_slots[i]];
      QTOOL_CHECK(seed_grads[i].dtype() == DataType::kFloat && seed_grads[i].shape() == v.shape(),
                  ErrorCode::kInternal, "autodiff: seed {} gradient has shape {}, its value {}", i,
                  shape_str(seed_grads[i].shape()), shape_str(v.shape()));
      accumulate(grads[seed_slots[i]], seed_grads[i]);
    }
    std::vector<const Tensor*> ins, outs, ogs;
    std::vector<Tensor> igs;
    for (size_t k = grad_steps.size(); k-- > 0;) {
      const Step& st = steps[grad_steps[k]];
      ogs.clear();
      bool any = false;
      for (int s : st.outputs) {
        const Tensor* g = s >= 0 && grads[s].defined() ? &grads[s] : nullptr;
        // Non-float outputs carry no gradient.
        if (g && slots[s].dtype() != DataType::kFloat) g = nullptr;
        ogs.push_back(g);
        any = any || g;
      }
      if (!any) continue;
      ins.clear();
      outs.clear();
      for (int s : st.inputs) ins.push_back(s < 0 ? nullptr : &slots[s]);
      for (int s : st.outputs) outs.push_back(s < 0 ? nullptr : &slots[s]);
      std::vector<char> wants = st.wants;
      for (size_t i = 0; i < wants.size(); ++i)
        if (wants[i] && (!ins[i] || ins[i]->dtype() != DataType::kFloat)) wants[i] = 0;
      igs.assign(st.inputs.size(), Tensor());
      GradContext ctx(*st.node, st.opset, ins, outs, ogs, wants, &igs, &pool);
      with_context(fmt::format("in the gradient of node {}", st.node->describe()), [&] { st.grad(ctx); });
      for (size_t i = 0; i < st.inputs.size(); ++i)
        if (igs[i].defined() && st.inputs[i] >= 0) accumulate(grads[st.inputs[i]], std::move(igs[i]));
      // Output gradients are complete and consumed: free them, unless they are requested.
      for (int s : st.outputs)
        if (s >= 0 && std::find(wrt_slots.begin(), wrt_slots.end(), s) == wrt_slots.end()) grads[s] = Tensor();
    }
    std::vector<Tensor> out;
    for (size_t i = 0; i < wrt_slots.size(); ++i) {
      Tensor g = grads[wrt_slots[i]];
      const Tensor& v = slots[wrt_slots[i]];
      if (!g.defined()) g = Tensor(DataType::kFloat, v.defined() ? v.shape() : Shape{});
      out.push_back(std::move(g));
    }
    return out;
  }
};

Autodiff::Autodiff(const ir::Model& model, std::vector<const ir::Value*> wrt, std::vector<const ir::Value*> seeds,
                   AutodiffOptions options)
    : impl_(std::make_unique<Impl>(model, std::move(wrt), std::move(seeds), options)) {}

Autodiff::~Autodiff() = default;

void Autodiff::set_value(const ir::Value* v, Tensor t) {
  auto it = impl_->slot_of.find(v);
  QTOOL_CHECK(it != impl_->slot_of.end() && v->is_initializer(), ErrorCode::kConfig,
              "autodiff: '{}' is not an initializer of the model", v ? v->name() : "<null>");
  const Tensor* cur = v->initializer();
  QTOOL_CHECK(t.dtype() == cur->dtype() && t.shape() == cur->shape(), ErrorCode::kInternal,
              "autodiff: value for '{}' has {} {} but the initializer is {} {}", v->name(), dtype_name(t.dtype()),
              shape_str(t.shape()), dtype_name(cur->dtype()), shape_str(cur->shape()));
  impl_->overrides[it->second] = std::move(t);
}

std::vector<Tensor> Autodiff::forward(const std::map<std::string, Tensor>& inputs) { return impl_->forward(inputs); }

std::vector<Tensor> Autodiff::backward(const std::vector<Tensor>& seed_grads) { return impl_->backward(seed_grads); }

std::vector<const ir::Node*> Autodiff::grad_nodes() const {
  std::vector<const ir::Node*> out;
  for (size_t i : impl_->grad_steps) out.push_back(impl_->steps[i].node);
  return out;
}

size_t Autodiff::tape_bytes() const {
  std::unordered_set<const Buffer*> seen;
  size_t total = 0;
  for (const Tensor& t : impl_->slots)
    if (t.buffer() && !t.is_mapped() && seen.insert(t.buffer().get()).second) total += t.buffer()->size();
  return total;
}

}  // namespace qtool::runtime
