// QDQ groups -> ONNX Runtime's QOperator ops (see qdq_to_qoperator.h).
//
// Each rewrite turns the group's QuantizeLinear node into the fused op in place: it keeps the
// Q node's output value (so consumers, graph outputs and names are untouched) and its position
// (after every input of the group), takes new inputs and the float op's attributes. The float op
// and the DequantizeLinear nodes nothing reads any more are then removed as dead code.
#include "qtool/passes/qdq_to_qoperator.h"

#include <algorithm>
#include <unordered_map>

#include "qtool/passes/eliminate_identity.h"

namespace qtool::passes {
namespace {

bool is_8bit(DataType t) { return t == DataType::kUint8 || t == DataType::kInt8; }

const Tensor* constant(const ir::Value* v) { return v ? v->initializer() : nullptr; }

/// Element 0 of a constant as float / int.
float scalar_f(const ir::Value* v) { return static_cast<float>(constant(v)->get_as_double(0)); }
int32_t scalar_i(const ir::Value* v) { return v ? static_cast<int32_t>(constant(v)->get_as_double(0)) : 0; }

/// A QuantizeLinear / DequantizeLinear node with constant per-tensor-or-per-axis float scale,
/// constant (or absent) zero point and no blocking: the only kind ONNX Runtime fuses.
bool plain_qdq(const ir::Node* n, const char* op) {
  if (!n || n->op_type() != op || !n->domain().empty()) return false;
  if (n->attr_int("block_size", 0) != 0) return false;
  const Tensor* s = constant(n->input(1));
  if (!s || s->dtype() != DataType::kFloat) return false;
  if (n->input(2) && !constant(n->input(2))) return false;
  return true;
}

bool per_tensor(const ir::Node* n) {
  return constant(n->input(1))->numel() == 1 && (!n->input(2) || constant(n->input(2))->numel() == 1);
}

/// The integer type a DequantizeLinear reads (from its constant input or zero point).
DataType dq_int_type(const ir::Node* dq) {
  if (const Tensor* x = constant(dq->input(0))) return x->dtype();
  if (const Tensor* z = constant(dq->input(2))) return z->dtype();
  return dq->input(0)->type().elem_type;
}

/// The DequantizeLinear producing `v` when it is a fusable 8-bit one, else nullptr.
ir::Node* dq_of(const ir::Value* v) {
  ir::Node* n = v ? v->producer() : nullptr;
  if (!plain_qdq(n, "DequantizeLinear") || !is_8bit(dq_int_type(n))) return nullptr;
  return n;
}

/// An activation DQ: per-tensor, 8-bit, zero point given (so its type is known).
ir::Node* activation_dq(const ir::Value* v) {
  ir::Node* n = dq_of(v);
  return n && per_tensor(n) && n->input(2) && !constant(n->input(0)) ? n : nullptr;
}

/// The QuantizeLinear that alone reads `y` (a per-tensor 8-bit one with its zero point), else nullptr.
ir::Node* sole_q(const ir::Value* y) {
  if (!y || y->is_graph_output() || y->uses().size() != 1 || y->uses()[0].index != 0) return nullptr;
  ir::Node* q = y->uses()[0].node;
  if (!plain_qdq(q, "QuantizeLinear") || !per_tensor(q) || !q->input(2)) return nullptr;
  if (!is_8bit(constant(q->input(2))->dtype())) return nullptr;
  return q;
}

/// Output type of a Q node (its zero point's).
DataType q_type(const ir::Node* q) { return constant(q->input(2))->dtype(); }

std::vector<ir::Attribute> clone_attrs(const ir::Node* n) {
  std::vector<ir::Attribute> a;
  for (const ir::Attribute& x : n->attributes()) a.push_back(x.clone());
  return a;
}

class Fuser {
 public:
  Fuser(ir::Graph& g, QOperatorReport& report, bool record_aliases)
      : g_(g), report_(report), record_aliases_(record_aliases) {}

  void run() {
    drop_relu_before_q();
    std::vector<ir::Node*> order = g_.topo_order();
    for (ir::Node* n : order) {
      if (!n->domain().empty()) continue;
      const std::string& op = n->op_type();
      if (op == "Conv") fuse_conv(n);
      else if (op == "MatMul") fuse_matmul(n);
      else if (op == "Add") fuse_add(n);
      else if (op == "GlobalAveragePool") fuse_gap(n);
      else if (op == "Concat") fuse_concat(n);
      else if (is_data_movement(n)) drop_qdq(n);
    }
    if (report_.rewrites > 0) g_.eliminate_dead_nodes();
  }

  bool emitted_ms() const { return emitted_ms_; }

 private:
  /// Ops whose DQ -> op -> Q ONNX Runtime removes when Q and DQ share parameters: they only move,
  /// select or compare values, so they run on the integers as they are.
  static bool is_data_movement(const ir::Node* n) {
    static const char* const kOps[] = {"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "MaxPool",
                                       "Slice", "Gather", "Expand", "Tile", "SpaceToDepth", "DepthToSpace"};
    return std::any_of(std::begin(kOps), std::end(kOps), [&](const char* o) { return n->op_type() == o; });
  }

  /// ONNX Runtime's ReluQuantFusion: Relu -> QuantizeLinear whose zero point is its type's lowest
  /// value (uint8 0, int8 -128) quantizes every negative input to that zero point with or without
  /// the Relu, so the Relu goes and the op before it can fuse with the Q (PyTorch's QDQ exports
  /// keep Conv -> Relu -> Q). Exact: the same integers either way.
  void drop_relu_before_q() {
    std::vector<ir::Node*> relus;
    for (const auto& n : g_.nodes()) {
      if (n->domain().empty() && n->op_type() == "Relu" && n->input(0) && n->output(0)) relus.push_back(n.get());
    }
    for (ir::Node* relu : relus) {
      ir::Node* q = sole_q(relu->output(0));
      if (!q) continue;
      const Tensor* zp = constant(q->input(2));
      const double lowest = zp->dtype() == DataType::kInt8 ? -128.0 : 0.0;
      if (zp->get_as_double(0) != lowest) continue;
      q->set_input(0, relu->input(0));
      g_.remove_node(relu);
      ++report_.fused["dropped Relu before Q"];
    }
  }

  /// A zero point for an integer input that has none (QLinear* ops require one).
  ir::Value* zero_of(DataType t) {
    auto it = zeros_.find(t);
    if (it != zeros_.end()) return it->second;
    const std::string name = g_.unique_name(t == DataType::kInt8 ? "qoperator_zero_point_int8" : "qoperator_zero_point_uint8");
    ir::Value* v = t == DataType::kInt8 ? g_.add_initializer(name, Tensor::scalar<int8_t>(0))
                                        : g_.add_initializer(name, Tensor::scalar<uint8_t>(0));
    zeros_[t] = v;
    return v;
  }

  ir::Value* zp_or_zero(const ir::Node* qdq, DataType t) { return qdq->input(2) ? qdq->input(2) : zero_of(t); }

  /// Turns Q into `op` reading `inputs`, with `attrs`; records the alias and the count.
  void morph(ir::Node* q, const std::string& op, const std::string& domain, const std::vector<ir::Value*>& inputs,
             std::vector<ir::Attribute> attrs, const ir::Node* origin, const std::string& label) {
    if (record_aliases_) {
      report_.aliases.push_back({q->output(0)->name(), q->input(0)->name(), origin->name(), origin->op_type(),
                                 scalar_f(q->input(1)), scalar_i(q->input(2))});
    }
    for (size_t i = 0; i < inputs.size(); ++i) q->set_input(i, inputs[i]);
    q->truncate_inputs(inputs.size());
    q->set_op_type(op);
    q->set_domain(domain);
    q->mutable_attributes() = std::move(attrs);
    if (!origin->name().empty()) q->set_name(origin->name() + "_quant");
    if (domain == "com.microsoft") emitted_ms_ = true;
    ++report_.rewrites;
    ++report_.fused[label];
  }

  void fuse_conv(ir::Node* conv) {
    ir::Node* q = sole_q(conv->output(0));
    ir::Node* xdq = activation_dq(conv->input(0));
    ir::Node* wdq = dq_of(conv->input(1));
    if (!q || !xdq || !wdq || !constant(wdq->input(0))) return;
    const DataType xt = dq_int_type(xdq), wt = dq_int_type(wdq);
    if (q_type(q) != xt) return;
    // Weights: per tensor or per output channel (axis 0).
    if (!per_tensor(wdq) && wdq->attr_int("axis", 1) != 0) return;
    ir::Value* bias = nullptr;
    if (ir::Value* b = conv->input(2)) {
      ir::Node* bdq = b->producer();
      if (!plain_qdq(bdq, "DequantizeLinear") || !constant(bdq->input(0)) ||
          constant(bdq->input(0))->dtype() != DataType::kInt32)
        return;
      if (bdq->input(2)) {
        const Tensor* z = constant(bdq->input(2));
        for (int64_t i = 0; i < z->numel(); ++i)
          if (z->get_as_double(i) != 0.0) return;
      }
      bias = bdq->input(0);
    }
    std::vector<ir::Value*> in = {xdq->input(0), xdq->input(1), xdq->input(2), wdq->input(0), wdq->input(1),
                                  zp_or_zero(wdq, wt),  q->input(1),   q->input(2)};
    if (bias) in.push_back(bias);
    morph(q, "QLinearConv", "", in, clone_attrs(conv), conv, "QLinearConv");
  }

  void fuse_matmul(ir::Node* mm) {
    ir::Node* q = sole_q(mm->output(0));
    ir::Node* adq = activation_dq(mm->input(0));
    ir::Node* bdq = dq_of(mm->input(1));
    if (!q || !adq || !bdq) return;
    const DataType at = dq_int_type(adq), bt = dq_int_type(bdq);
    if (q_type(q) != at) return;
    if (!per_tensor(bdq)) {
      // Per output column of a constant 2-D B only.
      const Tensor* b = constant(bdq->input(0));
      if (!b || b->rank() != 2 || bdq->attr_int("axis", 1) != 1) return;
    }
    std::vector<ir::Value*> in = {adq->input(0), adq->input(1), adq->input(2), bdq->input(0),
                                  bdq->input(1), zp_or_zero(bdq, bt), q->input(1), q->input(2)};
    morph(q, "QLinearMatMul", "", in, {}, mm, "QLinearMatMul");
  }

  void fuse_add(ir::Node* add) {
    ir::Node* q = sole_q(add->output(0));
    ir::Node* adq = activation_dq(add->input(0));
    ir::Node* bdq = activation_dq(add->input(1));
    if (!q || !adq || !bdq) return;
    const DataType t = q_type(q);
    if (dq_int_type(adq) != t || dq_int_type(bdq) != t) return;
    std::vector<ir::Value*> in = {adq->input(0), adq->input(1), adq->input(2), bdq->input(0),
                                  bdq->input(1), bdq->input(2), q->input(1),   q->input(2)};
    morph(q, "QLinearAdd", "com.microsoft", in, {}, add, "QLinearAdd");
  }

  void fuse_gap(ir::Node* gap) {
    ir::Node* q = sole_q(gap->output(0));
    ir::Node* xdq = activation_dq(gap->input(0));
    if (!q || !xdq || dq_int_type(xdq) != q_type(q)) return;
    std::vector<ir::Attribute> attrs;
    attrs.push_back(ir::Attribute::make_int("channels_last", 0));
    morph(q, "QLinearGlobalAveragePool", "com.microsoft", {xdq->input(0), xdq->input(1), xdq->input(2), q->input(1), q->input(2)},
          std::move(attrs), gap, "QLinearGlobalAveragePool");
  }

  void fuse_concat(ir::Node* cat) {
    ir::Node* q = sole_q(cat->output(0));
    if (!q || cat->inputs().empty()) return;
    std::vector<ir::Value*> in = {q->input(1), q->input(2)};
    for (ir::Value* x : cat->inputs()) {
      ir::Node* dq = activation_dq(x);
      if (!dq || dq_int_type(dq) != q_type(q)) return;
      in.insert(in.end(), {dq->input(0), dq->input(1), dq->input(2)});
    }
    morph(q, "QLinearConcat", "com.microsoft", in, clone_attrs(cat), cat, "QLinearConcat");
  }

  void drop_qdq(ir::Node* op) {
    ir::Node* q = sole_q(op->output(0));
    ir::Node* dq = activation_dq(op->input(0));
    if (!q || !dq || dq_int_type(dq) != q_type(q)) return;
    if (scalar_f(dq->input(1)) != scalar_f(q->input(1)) || scalar_i(dq->input(2)) != scalar_i(q->input(2))) return;
    if (op->op_type() == "MaxPool" && op->outputs().size() > 1 && op->output(1)) return;  // Indices
    std::vector<ir::Value*> in(op->inputs().begin(), op->inputs().end());
    in[0] = dq->input(0);
    morph(q, op->op_type(), "", in, clone_attrs(op), op, "dropped Q/DQ");
  }

  ir::Graph& g_;
  QOperatorReport& report_;
  bool record_aliases_;
  bool emitted_ms_ = false;
  std::unordered_map<DataType, ir::Value*> zeros_;
};

}  // namespace

QOperatorReport fuse_qdq_to_qoperator(ir::Model& model) {
  QOperatorReport report;
  // ONNX Runtime's level-1 optimizations run first: Identity nodes (on weights in PyTorch's QDQ
  // exports) and Casts to the same type (between its Q and DQ) would otherwise hide the groups.
  eliminate_identity(model);
  bool ms = false;
  for_each_graph(*model.graph, [&](ir::Graph& g) {
    Fuser f(g, report, &g == model.graph.get());
    f.run();
    ms = ms || f.emitted_ms();
    return size_t{0};
  });
  if (ms && model.opset("com.microsoft") == 0) model.set_opset("com.microsoft", 1);
  return report;
}

size_t qdq_to_qoperator(ir::Model& model, const PassOptions&) { return fuse_qdq_to_qoperator(model).rewrites; }

}  // namespace qtool::passes
