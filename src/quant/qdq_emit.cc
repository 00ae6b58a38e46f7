// The QDQ emitter: decides which tensors are quantized, with which shared scales, and rewrites
// the graph (see qdq.h for the placement rules).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>

#include <fmt/format.h>

#include "qdq_ops.h"
#include "qtool/quant/format.h"
#include "qtool/quant/lowbit.h"
#include "qtool/quant/qdq.h"

namespace qtool::quant {
namespace {

// A Relu/Clip that may be folded into the integer op producing its input.
struct Fold {
  ir::Value* y = nullptr;  // producer output
  ir::Node* act = nullptr;
  ir::Value* z = nullptr;  // activation output
  float lo = -std::numeric_limits<float>::infinity();
  float hi = std::numeric_limits<float>::infinity();
  bool active = true;
};

bool is_float(const ir::Value* v) {
  return v != nullptr && (v->type().elem_type == DataType::kFloat || v->type().elem_type == DataType::kUndefined);
}

const Tensor* float_const(const ir::Value* v) {
  if (v == nullptr) return nullptr;
  const Tensor* t = v->initializer();
  return (t && t->dtype() == DataType::kFloat) ? t : nullptr;
}

// Bounds of a Relu or Clip whose bounds are constants; false otherwise.
bool activation_bounds(const ir::Node& a, float* lo, float* hi) {
  *lo = -std::numeric_limits<float>::infinity();
  *hi = std::numeric_limits<float>::infinity();
  if (a.op_type() == "Relu") {
    *lo = 0.0f;
    return true;
  }
  if (a.op_type() != "Clip") return false;
  for (int i : {1, 2}) {
    const ir::Value* v = a.input(i);
    if (v == nullptr) continue;
    const Tensor* t = v->initializer();
    if (t == nullptr || t->numel() != 1) return false;
    (i == 1 ? *lo : *hi) = static_cast<float>(t->get_as_double(0));
  }
  return true;
}

// Q(act(x)) == Q(x) for every x: Q(lo) is qmin and Q(hi) is qmax.
bool activation_redundant(const Fold& f, QParams p, DataType type) {
  int64_t qmin = 0, qmax = 0;
  dtype_int_range(type, &qmin, &qmax);
  const bool lo_ok = std::isinf(f.lo) ? true : quantize_value(f.lo, p, type) == qmin;
  const bool hi_ok = std::isinf(f.hi) ? true : quantize_value(f.hi, p, type) == qmax;
  // Strict margins: a bound exactly half a step inside might round either way under another
  // runtime's rounding of x / s.
  const double lo_margin = (qmin - p.zero_point + 0.5) * static_cast<double>(p.scale) - (std::isinf(f.lo) ? 0 : f.lo);
  const double hi_margin = (std::isinf(f.hi) ? 0 : f.hi) - (qmax - p.zero_point - 0.5) * static_cast<double>(p.scale);
  return lo_ok && hi_ok && (std::isinf(f.lo) || lo_margin > 1e-6 * p.scale) &&
         (std::isinf(f.hi) || hi_margin > 1e-6 * p.scale);
}

Tensor make_int_tensor(DataType type, const Shape& shape, const std::vector<int32_t>& v) {
  Tensor t(type, shape);
  for (size_t i = 0; i < v.size(); ++i) {
    switch (type) {
      case DataType::kUint8: t.mutable_data<uint8_t>()[i] = static_cast<uint8_t>(v[i]); break;
      case DataType::kInt8: t.mutable_data<int8_t>()[i] = static_cast<int8_t>(v[i]); break;
      case DataType::kUint16: t.mutable_data<uint16_t>()[i] = static_cast<uint16_t>(v[i]); break;
      case DataType::kInt16: t.mutable_data<int16_t>()[i] = static_cast<int16_t>(v[i]); break;
      case DataType::kInt32: t.mutable_data<int32_t>()[i] = v[i]; break;
      default: fail(ErrorCode::kUnsupported, "zero point of type {}", dtype_name(type));
    }
  }
  return t;
}

void set_type(ir::Value* v, DataType dt, const ir::Value* like) {
  if (like) v->type() = like->type();
  v->type().elem_type = dt;
}

class Emitter {
 public:
  /// `g` is the main graph, or (body) an If/Loop/Scan body: its activations are quantized alike
  /// (by name in the options and in activation_params: sibling branches may share a name, and one
  /// choice then covers both; only one of them runs per sample), and its weights may be its
  /// enclosing graphs' initializers.
  Emitter(ir::Model& model, ir::Graph& g, const RangeMap& ranges, const QdqOptions& options, bool body)
      : model_(model), g_(g), ranges_(ranges), opt_(options), body_(body) {}

  QdqSummary run() {
    check_options();
    collect_candidates();
    plan_folds();
    for (int iter = 0; iter < 8; ++iter) {
      build_groups();
      bool changed = false;
      for (Fold& f : folds_) {
        if (!f.active) continue;
        const QParams p = params_of(f.y);
        if (!quantized_.count(f.y) || !activation_redundant(f, p, type_of(f.y))) {
          f.active = false;
          changed = true;
        }
      }
      if (!changed) break;
    }
    apply_folds();
    rewrite();
    const int64_t need = (dtype_bits(opt_.activation_type) == 16 || !wide_roots_.empty() || int4_weights_ > 0) ? 21 : 13;
    if (model_.opset("") < need) model_.set_opset("", need);
    summary_.int4_weights = int4_weights_;
    model_.ir_version = std::max<int64_t>(model_.ir_version, need >= 21 ? 10 : 7);
    g_.topo_sort();
    return std::move(summary_);
  }

 private:
  void check_options() {
    const DataType t = opt_.activation_type;
    QTOOL_CHECK(t == DataType::kUint8 || t == DataType::kInt8 || t == DataType::kUint16 || t == DataType::kInt16,
                ErrorCode::kConfig, "activation type {} is not supported (uint8, int8, uint16, int16)", dtype_name(t));
    QTOOL_CHECK(opt_.weight_type == DataType::kInt8 || opt_.weight_type == DataType::kUint8, ErrorCode::kConfig,
                "static quantization stores weights as int8 or uint8 (got {})", dtype_name(opt_.weight_type));
    QTOOL_CHECK(opt_.wide_names.empty() || dtype_bits(t) == 8, ErrorCode::kConfig,
                "16-bit tensors in a model whose activations are already {}", dtype_name(t));
  }

  /// The 16-bit twin of the 8-bit activation type.
  DataType wide_type() const { return opt_.activation_type == DataType::kInt8 ? DataType::kInt16 : DataType::kUint16; }
  /// The integer type of v's Q/DQ group.
  DataType type_of(const ir::Value* v) { return wide_roots_.count(find(v)) ? wide_type() : opt_.activation_type; }

  bool has_range(const ir::Value* v) const { return ranges_.count(v) != 0; }

  /// A constant this graph may quantize: its own, or an enclosing graph's (a body's weights).
  bool in_scope(const ir::Value* v) const {
    for (const ir::Graph* s = &g_; s != nullptr; s = s->parent())
      if (v->owner() == s) return true;
    return false;
  }

  /// An activation of this graph, or (in a body) one it reads from an enclosing graph: quantized
  /// by a Q/DQ pair inside the body, for the body's readers (ONNX Runtime fuses per graph).
  bool quantizable_activation(const ir::Value* v) const {
    return v != nullptr && in_scope(v) && !v->is_initializer() && is_float(v) && has_range(v) &&
           !opt_.keep_float.count(v) && !opt_.keep_float_names.count(v->name());
  }

  void collect_candidates() {
    for (const auto& n : g_.nodes()) {
      if (!n->domain().empty()) continue;
      const OpRule* r = find_op_rule(n->op_type());
      if (r == nullptr) continue;
      if (opt_.exclude_nodes.count(n->name()) || opt_.exclude_op_types.count(n->op_type())) {
        summary_.float_nodes.push_back(fmt::format("{}: excluded by option", n->describe()));
        continue;
      }
      rule_[n.get()] = r;
    }
  }

  std::vector<int> act_inputs(const ir::Node& n, const OpRule& r) const {
    std::vector<int> idx;
    if (r.all_inputs) {
      for (size_t i = 0; i < n.inputs().size(); ++i) idx.push_back(static_cast<int>(i));
    } else {
      idx = r.act_inputs;
    }
    // A non-constant "weight" (MatMul of two activations) is an activation too.
    if (r.weight_input >= 0 && n.input(r.weight_input) && !float_const(n.input(r.weight_input))) idx.push_back(r.weight_input);
    return idx;
  }

  void plan_folds() {
    if (!opt_.fold_activations) return;
    for (auto& [n, r] : rule_) {
      if (r->output != OutputMode::kOwn || n->op_type() == "Relu" || n->op_type() == "Clip") continue;
      ir::Value* y = n->output(0);
      if (y == nullptr || y->is_graph_output() || y->uses().size() != 1) continue;
      ir::Node* a = y->uses()[0].node;
      if (a->owner() != &g_ || y->uses()[0].index != 0 || !rule_.count(a)) continue;
      Fold f;
      if (!activation_bounds(*a, &f.lo, &f.hi)) continue;
      ir::Value* z = a->output(0);
      if (z == nullptr || z->is_graph_output() || !has_range(z) || opt_.keep_float.count(z)) continue;
      // A subgraph (If/Loop body) reading z would read y after the fold: unquantized and without the
      // activation applied (Q/DQ is only placed for readers in this graph).
      if (std::any_of(z->uses().begin(), z->uses().end(), [&](const ir::Use& u) { return u.node->owner() != &g_; }))
        continue;
      f.y = y;
      f.act = a;
      f.z = z;
      folds_.push_back(f);
    }
  }

  // ---- union-find over values ----
  const ir::Value* canon(const ir::Value* v) const {
    auto it = alias_.find(v);
    return it == alias_.end() ? v : it->second;
  }
  const ir::Value* find(const ir::Value* v) {
    v = canon(v);
    auto it = parent_.find(v);
    if (it == parent_.end() || it->second == v) return v;
    const ir::Value* root = find(it->second);
    parent_[v] = root;
    return root;
  }
  void unite(const ir::Value* a, const ir::Value* b) {
    a = find(a);
    b = find(b);
    if (a != b) parent_[b] = a;
  }

  Range range_of(const ir::Value* v) const {
    // A folded producer output takes the activation's range.
    for (const Fold& f : folds_)
      if (f.active && f.y == v) return ranges_.at(f.z);
    return ranges_.at(v);
  }

  void build_groups() {
    alias_.clear();
    parent_.clear();
    quantized_.clear();
    group_range_.clear();
    for (const Fold& f : folds_)
      if (f.active) alias_[f.z] = f.y;
    // Pass 1: activation inputs and own outputs.
    auto mark = [&](const ir::Value* v) {
      v = canon(v);
      if (quantizable_activation(v)) {
        quantized_.insert(v);
        parent_.emplace(v, v);
      }
    };
    std::vector<ir::Node*> order = g_.topo_order();
    for (ir::Node* n : order) {
      auto it = rule_.find(n);
      if (it == rule_.end() || is_folded_act(n)) continue;
      const OpRule& r = *it->second;
      for (int i : act_inputs(*n, r))
        if (ir::Value* v = n->input(i); v && !float_const(v)) mark(v);
      if (r.output == OutputMode::kOwn || r.output == OutputMode::kShared) {
        for (ir::Value* o : n->outputs())
          if (o && !o->is_graph_output()) mark(o);
      }
    }
    // Pass 2 (in topological order, so chains of shape ops propagate): same-as-input outputs.
    for (ir::Node* n : order) {
      auto it = rule_.find(n);
      if (it == rule_.end() || is_folded_act(n)) continue;
      const OpRule& r = *it->second;
      if (r.output == OutputMode::kSameAsInput) {
        const ir::Value* in = n->input(0) ? canon(n->input(0)) : nullptr;
        if (in == nullptr || !quantized_.count(in)) continue;
        for (ir::Value* o : n->outputs()) {
          if (o == nullptr || o->is_graph_output() || !is_float(o)) continue;
          quantized_.insert(o);
          parent_.emplace(o, o);
          unite(in, o);
        }
      } else if (r.output == OutputMode::kShared) {
        const ir::Value* out = n->output(0);
        if (out == nullptr || !quantized_.count(canon(out))) continue;
        bool all = true;
        for (ir::Value* v : n->inputs()) all &= v != nullptr && quantized_.count(canon(v)) != 0;
        if (!all) continue;  // a float or constant input: the node cannot run in integer anyway
        for (ir::Value* v : n->inputs()) unite(out, v);
      }
    }
    wide_roots_.clear();
    for (const ir::Value* v : quantized_)
      if (opt_.wide_names.count(v->name())) wide_roots_.insert(find(v));
    for (const Fold& f : folds_)  // a folded activation's name stands for its producer's output
      if (f.active && opt_.wide_names.count(f.z->name()) && quantized_.count(f.y)) wide_roots_.insert(find(f.y));
    for (const ir::Value* v : quantized_) {
      const Range r = has_range(v) || is_fold_target(v) ? range_of(v) : Range{0.0f, 0.0f};
      const ir::Value* root = find(v);
      auto [git, inserted] = group_range_.emplace(root, r);
      if (!inserted) {
        git->second.min = std::min(git->second.min, r.min);
        git->second.max = std::max(git->second.max, r.max);
      }
    }
  }

  bool is_folded_act(const ir::Node* n) const {
    for (const Fold& f : folds_)
      if (f.active && f.act == n) return true;
    return false;
  }
  bool is_fold_target(const ir::Value* v) const {
    for (const Fold& f : folds_)
      if (f.active && f.y == v) return true;
    return false;
  }

  QParams params_of(const ir::Value* v) {
    const ir::Value* root = find(v);
    auto it = group_range_.find(root);
    const Range r = it == group_range_.end() ? Range{} : it->second;
    return compute_qparams(r, type_of(v), opt_.activation_symmetric);
  }

  void apply_folds() {
    std::vector<std::pair<const ir::Value*, QParams>> keep;
    for (Fold& f : folds_) {
      if (!f.active) continue;
      g_.replace_all_uses(f.z, f.y);
      ir::Node* a = f.act;
      rule_.erase(a);
      g_.remove_node(a);
      ++summary_.folded_activations;
    }
  }

  // ---- rewriting ----
  ir::Value* add_init(const std::string& base, Tensor t) {
    const DataType dt = t.dtype();
    ir::Value* v = g_.add_initializer(g_.unique_name(base), std::move(t));
    v->type().elem_type = dt;
    return v;
  }

  // Q -> DQ after v; every consumer in this graph (but the Q itself and excluded nodes) reads the DQ.
  void quantize_activation(ir::Value* v) {
    const QParams p = params_of(v);
    const DataType type = type_of(v);
    ir::Value* scale = add_init(v->name() + "_scale", Tensor::scalar<float>(p.scale));
    ir::Value* zp = add_init(v->name() + "_zero_point", make_int_tensor(type, {}, {p.zero_point}));
    ir::Node* q = g_.add_node("QuantizeLinear", {v, scale, zp}, {g_.unique_name(v->name() + "_QuantizeLinear_Output")},
                              g_.unique_name(v->name() + "_QuantizeLinear"));
    set_type(q->output(0), type, v);
    ir::Node* dq = g_.add_node("DequantizeLinear", {q->output(0), scale, zp},
                               {g_.unique_name(v->name() + "_DequantizeLinear_Output")},
                               g_.unique_name(v->name() + "_DequantizeLinear"));
    set_type(dq->output(0), DataType::kFloat, v);
    const std::vector<ir::Use> uses = v->uses();
    for (const ir::Use& u : uses) {
      if (u.node == q || u.node->owner() != &g_) continue;
      if (opt_.exclude_nodes.count(u.node->name()) || opt_.exclude_op_types.count(u.node->op_type())) continue;
      u.node->set_input(u.index, dq->output(0));
    }
    dq_of_[v] = dq->output(0);
    ++summary_.quantized_activations;
    summary_.body_activations += body_;
    summary_.activation_params[v->name()] = p;
    if (type != opt_.activation_type) summary_.wide_activations.insert(v->name());
  }

  // Constant operand of Add/Mul quantized like an activation (own per-tensor range).
  ir::Value* quantize_constant_as_activation(ir::Value* c, DataType type) {
    const auto key = std::make_pair(static_cast<const ir::Value*>(c), type);
    if (auto it = const_dq_.find(key); it != const_dq_.end()) return it->second;
    const Tensor& t = *c->initializer();
    Range r{std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity()};
    for (int64_t i = 0; i < t.numel(); ++i) {
      const float x = t.data<float>()[i];
      r.min = std::min(r.min, x);
      r.max = std::max(r.max, x);
    }
    if (t.numel() == 0) r = Range{};
    const QParams p = compute_qparams(r, type, opt_.activation_symmetric);
    std::vector<int32_t> q(t.numel());
    for (int64_t i = 0; i < t.numel(); ++i) q[i] = quantize_value(t.data<float>()[i], p, type);
    ir::Value* qv = add_init(c->name() + "_quantized", make_int_tensor(type, t.shape(), q));
    ir::Value* scale = add_init(c->name() + "_scale", Tensor::scalar<float>(p.scale));
    ir::Value* zp = add_init(c->name() + "_zero_point", make_int_tensor(type, {}, {p.zero_point}));
    ir::Node* dq = g_.add_node("DequantizeLinear", {qv, scale, zp}, {g_.unique_name(c->name() + "_DequantizeLinear_Output")},
                               g_.unique_name(c->name() + "_DequantizeLinear"));
    set_type(dq->output(0), DataType::kFloat, c);
    const_dq_[key] = dq->output(0);
    return dq->output(0);
  }

  struct WeightDq {
    ir::Value* out = nullptr;
    std::vector<float> scales;
  };

  /// The storage type of n's weight: opt_.weight_type, except under opt_.saturation_safe an int8
  /// weight of a node whose GEMM may saturate in ONNX Runtime on x86 CPUs without VNNI becomes
  /// uint8 (same levels, zero point 128; exact u8u8 kernels): a Conv (not depthwise), MatMul or
  /// Gemm whose input x is quantized at an 8-bit unsigned type with a non-zero zero point. Such an
  /// input sits near 128 at its float zero and often well above it, where a pair of products with
  /// two large same-sign weights exceeds int16 (VPMADDUBSW); an input with zero point 0 (a Relu
  /// output) reaches the upper half of its range rarely.
  DataType weight_type_for(const ir::Node* n, const ir::Value* x) {
    if (!opt_.saturation_safe || opt_.weight_type != DataType::kInt8 || opt_.reduce_range) return opt_.weight_type;
    if (type_of(x) != DataType::kUint8 || params_of(x).zero_point == 0) return opt_.weight_type;
    const std::string& op = n->op_type();
    if (op == "Conv") {
      const int64_t group = n->attr_int("group", 1);
      const ir::Value* w = n->input(1);
      const Tensor* wt = w ? float_const(w) : nullptr;
      // Depthwise (one input channel per group): ONNX Runtime's direct kernel accumulates in int32.
      if (group > 1 && wt && wt->rank() >= 2 && wt->dim(1) == 1) return opt_.weight_type;
      return DataType::kUint8;
    }
    if (op == "MatMul" || op == "Gemm") return DataType::kUint8;
    return opt_.weight_type;
  }

  /// The bits of n's weight w: QdqOptions::weight_bits (last matching rule), else 8.
  int weight_bits_for(const ir::Node* n, const ir::Value* w) const {
    int bits = 8;
    for (const auto& [pattern, b] : opt_.weight_bits)
      if (glob_match(pattern, n->name()) || glob_match(pattern, w->name())) bits = b;
    return bits;
  }

  /// QdqOptions::weight_scales of w when they fit its channels along `axis`, else null.
  const std::vector<float>* grid_scales(const ir::Value* w, bool per_channel, int64_t axis) const {
    const auto it = opt_.weight_scales.find(w->name());
    if (it == opt_.weight_scales.end() || !per_channel || opt_.reduce_range) return nullptr;
    const Tensor& t = *w->initializer();
    const int64_t a = axis < 0 ? axis + static_cast<int64_t>(t.rank()) : axis;
    if (a < 0 || a >= static_cast<int64_t>(t.rank()) ||
        t.dim(static_cast<int>(a)) != static_cast<int64_t>(it->second.size()))
      return nullptr;
    return &it->second;
  }

  WeightDq quantize_weight_input(ir::Value* w, int64_t axis, DataType type, int bits = 8) {
    if (bits == 4) type = DataType::kInt8;  // |level| <= 8: no u8s8 pair of products can saturate
    const auto key = std::make_tuple(static_cast<const ir::Value*>(w), axis, type, bits);
    if (auto it = weight_dq_.find(key); it != weight_dq_.end()) return it->second;
    const bool per_channel = opt_.per_channel && axis >= 0;
    QuantizedWeight qw = bits == 4 ? quantize_weight4(*w->initializer(), per_channel ? axis : -1)
                                   : quantize_weight(*w->initializer(), per_channel, axis, type, opt_.reduce_range,
                                                     grid_scales(w, per_channel, axis));
    ir::Value* qv = nullptr;
    if (bits == 4) {  // packed int4 levels -> Cast(to=int8) -> the int8 DequantizeLinear
      const int8_t* l = qw.values.data<int8_t>();
      const std::vector<int32_t> levels(l, l + qw.values.numel());
      Tensor packed = Tensor::empty(DataType::kInt4, qw.values.shape());
      const std::vector<uint8_t> bytes = pack_onnx(levels, 4);
      std::memcpy(packed.mutable_raw(), bytes.data(), bytes.size());
      ir::Value* q4 = add_init(w->name() + "_quantized", std::move(packed));
      ir::Node* cast = g_.add_node("Cast", {q4}, {g_.unique_name(w->name() + "_levels")},
                                   g_.unique_name(w->name() + "_Cast"));
      cast->set_attr(ir::Attribute::make_int("to", static_cast<int64_t>(DataType::kInt8)));
      set_type(cast->output(0), DataType::kInt8, w);
      qv = cast->output(0);
      ++int4_weights_;
    } else {
      qv = add_init(w->name() + "_quantized", qw.values);
    }
    const Shape sshape = per_channel ? Shape{static_cast<int64_t>(qw.scales.size())} : Shape{};
    ir::Value* scale = add_init(w->name() + "_scale", Tensor::from_vector<float>(sshape, qw.scales));
    ir::Value* zp = opt_.omit_zero_points && qw.zero_point == 0
                        ? nullptr
                        : add_init(w->name() + "_zero_point",
                                   make_int_tensor(type, sshape,
                                                   std::vector<int32_t>(qw.scales.size(), qw.zero_point)));
    std::vector<ir::Value*> dq_in = {qv, scale};
    if (zp) dq_in.push_back(zp);
    ir::Node* dq = g_.add_node("DequantizeLinear", dq_in, {g_.unique_name(w->name() + "_DequantizeLinear_Output")},
                               g_.unique_name(w->name() + "_DequantizeLinear"));
    if (per_channel) dq->set_attr(ir::Attribute::make_int("axis", qw.axis));
    set_type(dq->output(0), DataType::kFloat, w);
    WeightDq r{dq->output(0), qw.scales};
    weight_dq_[key] = r;
    ++summary_.quantized_weights;
    return r;
  }

  void rewrite() {
    // Activations first (so that nodes' inputs become DQ outputs), in a stable order.
    std::vector<ir::Value*> acts;
    for (ir::Node* n : g_.topo_order()) {
      for (ir::Value* v : n->inputs())
        if (v && quantized_.count(v) && !dq_of_.count(v) && std::find(acts.begin(), acts.end(), v) == acts.end())
          acts.push_back(v);
      for (ir::Value* v : n->outputs())
        if (v && quantized_.count(v) && std::find(acts.begin(), acts.end(), v) == acts.end()) acts.push_back(v);
    }
    for (ir::Value* v : g_.inputs())
      if (quantized_.count(v) && std::find(acts.begin(), acts.end(), v) == acts.end()) acts.push_back(v);
    for (ir::Value* v : acts) quantize_activation(v);

    // Weights, biases and constant operands of the quantized nodes.
    std::vector<ir::Node*> nodes;
    for (const auto& [n, r] : rule_) nodes.push_back(n);
    std::sort(nodes.begin(), nodes.end(), [&](ir::Node* a, ir::Node* b) { return order_index(a) < order_index(b); });
    for (ir::Node* n : nodes) {
      const OpRule& r = *rule_.at(n);
      with_context(fmt::format("while quantizing node {}", n->describe()), [&] { quantize_node(n, r); });
    }
    // Original float weights nobody reads any more.
    g_.eliminate_dead_nodes();
  }

  size_t order_index(const ir::Node* n) const {
    for (size_t i = 0; i < g_.nodes().size(); ++i)
      if (g_.nodes()[i].get() == n) return i;
    return 0;
  }

  // The DQ output feeding input i of n, if that input is a quantized activation.
  const ir::Value* quantized_source(const ir::Node* n, int i) const {
    const ir::Value* v = n->input(i);
    if (v == nullptr || v->producer() == nullptr || v->producer()->op_type() != "DequantizeLinear") return nullptr;
    const ir::Value* q = v->producer()->input(0);
    if (q == nullptr || q->producer() == nullptr || q->producer()->op_type() != "QuantizeLinear") return nullptr;
    return q->producer()->input(0);
  }

  void quantize_node(ir::Node* n, const OpRule& r) {
    bool any = false;
    const ir::Value* x = quantized_source(n, 0);
    if (r.weight_input >= 0 && x != nullptr) {
      ir::Value* w = n->input(r.weight_input);
      if (const Tensor* wt = float_const(w); wt && in_scope(w) && !opt_.keep_float.count(w)) {
        const int64_t axis = r.weight_axis ? r.weight_axis(*n, *wt) : -1;
        WeightDq wdq = quantize_weight_input(w, axis, weight_type_for(n, x), weight_bits_for(n, w));
        n->set_input(r.weight_input, wdq.out);
        any = true;
        ir::Value* b = r.bias_input >= 0 ? n->input(r.bias_input) : nullptr;
        const Tensor* bt = float_const(b);
        const int64_t channels = static_cast<int64_t>(wdq.scales.size());
        const bool gemm_ok = n->op_type() != "Gemm" ||
                             (n->attr_float("alpha", 1.0f) == 1.0f && n->attr_float("beta", 1.0f) == 1.0f);
        if (opt_.quantize_bias && bt && bt->rank() == 1 && gemm_ok && in_scope(b) &&
            (channels == 1 || bt->numel() == channels)) {
          const QParams px = params_of(x);
          Tensor qb = quantize_bias(*bt, px.scale, wdq.scales);
          std::vector<float> bscales;
          for (int64_t c = 0; c < bt->numel(); ++c) bscales.push_back(px.scale * wdq.scales[channels == 1 ? 0 : c]);
          const bool per_channel = channels > 1;
          const Shape sshape = per_channel ? Shape{bt->numel()} : Shape{};
          if (!per_channel) bscales.resize(1);
          const std::string base = b->name() + "_" + (n->name().empty() ? n->output(0)->name() : n->name());
          ir::Value* qv = add_init(base + "_quantized", std::move(qb));
          ir::Value* scale = add_init(base + "_scale", Tensor::from_vector<float>(sshape, bscales));
          ir::Value* zp = opt_.omit_zero_points
                              ? nullptr
                              : add_init(base + "_zero_point", make_int_tensor(DataType::kInt32, sshape,
                                                                               std::vector<int32_t>(bscales.size(), 0)));
          std::vector<ir::Value*> dq_in = {qv, scale};
          if (zp) dq_in.push_back(zp);
          ir::Node* dq = g_.add_node("DequantizeLinear", dq_in, {g_.unique_name(base + "_DequantizeLinear_Output")},
                                     g_.unique_name(base + "_DequantizeLinear"));
          if (per_channel) dq->set_attr(ir::Attribute::make_int("axis", 0));
          set_type(dq->output(0), DataType::kFloat, b);
          n->set_input(r.bias_input, dq->output(0));
          ++summary_.quantized_biases;
        }
      }
    }
    if (r.constants_as_activations) {
      bool other_quantized = false;
      DataType type = opt_.activation_type;  // 16-bit when a quantized input is
      for (size_t i = 0; i < n->inputs().size(); ++i) {
        if (const ir::Value* src = quantized_source(n, static_cast<int>(i))) {
          other_quantized = true;
          if (type_of(src) != opt_.activation_type) type = type_of(src);
        }
      }
      if (other_quantized) {
        for (size_t i = 0; i < n->inputs().size(); ++i) {
          ir::Value* c = n->input(i);
          if (float_const(c) && in_scope(c) && !opt_.keep_float.count(c)) {
            n->set_input(i, quantize_constant_as_activation(c, type));
            any = true;
          }
        }
      }
    }
    for (size_t i = 0; i < n->inputs().size(); ++i) any |= quantized_source(n, static_cast<int>(i)) != nullptr;
    if (any) {
      ++summary_.quantized_nodes;
    } else {
      summary_.float_nodes.push_back(fmt::format("{}: no calibrated float input", n->describe()));
    }
  }

  ir::Model& model_;
  ir::Graph& g_;
  const RangeMap& ranges_;
  const QdqOptions& opt_;
  bool body_ = false;
  QdqSummary summary_;
  std::map<ir::Node*, const OpRule*> rule_;
  std::vector<Fold> folds_;
  std::unordered_map<const ir::Value*, const ir::Value*> alias_, parent_;
  std::set<const ir::Value*> quantized_;
  std::unordered_map<const ir::Value*, Range> group_range_;
  std::unordered_map<const ir::Value*, ir::Value*> dq_of_;
  std::map<std::pair<const ir::Value*, DataType>, ir::Value*> const_dq_;
  std::set<const ir::Value*> wide_roots_;  ///< union-find roots of the 16-bit groups
  std::map<std::tuple<const ir::Value*, int64_t, DataType, int>, WeightDq> weight_dq_;
  size_t int4_weights_ = 0;  ///< weights written with 4-bit levels (the model needs opset 21)
};

/// Emits Q/DQ in every body below `g` (depth first, in node order), adding the counts to `sum`.
void emit_bodies(ir::Model& model, ir::Graph& g, const RangeMap& ranges, const QdqOptions& options, QdqSummary& sum) {
  std::vector<ir::Graph*> bodies;
  for (const auto& n : g.nodes())
    for (ir::Graph* b : n->subgraphs()) bodies.push_back(b);
  for (ir::Graph* b : bodies) {
    const bool calibrated = std::any_of(b->nodes().begin(), b->nodes().end(), [&](const auto& n) {
      return std::any_of(n->outputs().begin(), n->outputs().end(), [&](const ir::Value* o) { return o && ranges.count(o); });
    });
    // Only a body with a node that runs in integer (a Conv, ConvTranspose, Gemm or MatMul) gains
    // from Q/DQ; around data movement alone (an LSTM's Unsqueeze/Squeeze/Gather plumbing) they cost
    // time, and ONNX Runtime 1.30 crashes on some of them (Silero op15's decoder body).
    const bool computes = std::any_of(b->nodes().begin(), b->nodes().end(), [](const auto& n) {
      const OpRule* r = n->domain().empty() ? find_op_rule(n->op_type()) : nullptr;
      return r != nullptr && r->weight_input >= 0;
    });
    if (calibrated && computes) {
      const QdqSummary s = Emitter(model, *b, ranges, options, true).run();
      sum.quantized_nodes += s.quantized_nodes;
      sum.quantized_activations += s.quantized_activations;
      sum.body_activations += s.body_activations;
      sum.body_nodes += s.quantized_nodes;
      sum.quantized_weights += s.quantized_weights;
      sum.int4_weights += s.int4_weights;
      sum.quantized_biases += s.quantized_biases;
      sum.folded_activations += s.folded_activations;
      sum.activation_params.insert(s.activation_params.begin(), s.activation_params.end());
      sum.wide_activations.insert(s.wide_activations.begin(), s.wide_activations.end());
    }
    emit_bodies(model, *b, ranges, options, sum);
  }
}

}  // namespace

QdqSummary emit_qdq(ir::Model& model, const RangeMap& ranges, const QdqOptions& options) {
  QdqSummary sum = Emitter(model, *model.graph, ranges, options, false).run();
  if (options.subgraphs) emit_bodies(model, *model.graph, ranges, options, sum);
  return sum;
}

}  // namespace qtool::quant
