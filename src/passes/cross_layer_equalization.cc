#include "qtool/passes/cross_layer_equalization.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

namespace qtool::passes {
namespace {

// A float32 initializer of this graph that only `n` reads (so rescaling it changes nothing else).
bool private_float_const(const ir::Graph& g, const ir::Value* v, const ir::Node* n) {
  if (v == nullptr || v->owner() != &g || v->initializer() == nullptr) return false;
  if (v->initializer()->dtype() != DataType::kFloat || v->is_graph_input() || v->is_graph_output()) return false;
  return v->uses().size() == 1 && v->uses()[0].node == n;
}

// A Conv with a private float weight of rank >= 3 whose group divides both channel counts.
bool equalizable_conv(const ir::Graph& g, const ir::Node* n) {
  if (n->op_type() != "Conv" || !n->domain().empty() || n->owner() != &g) return false;
  const ir::Value* w = n->input(1);
  if (!private_float_const(g, w, n) || w->initializer()->rank() < 3) return false;
  const int64_t group = n->attr_int("group", 1);
  const Tensor& t = *w->initializer();
  if (group < 1 || t.dim(0) % group != 0) return false;
  const ir::Value* b = n->input(2);
  if (b != nullptr && (!private_float_const(g, b, n) || b->initializer()->numel() != t.dim(0))) return false;
  return true;
}

// Bounds of a Clip (inputs from opset 11, attributes before); false when not constant.
bool clip_bounds(const ir::Node& n, double* lo, double* hi) {
  *lo = -std::numeric_limits<double>::infinity();
  *hi = std::numeric_limits<double>::infinity();
  if (n.inputs().size() > 1) {
    for (size_t i : {size_t{1}, size_t{2}}) {
      const ir::Value* v = n.input(i);
      if (v == nullptr) continue;
      const Tensor* t = v->initializer();
      if (t == nullptr || t->numel() != 1) return false;
      (i == 1 ? *lo : *hi) = t->get_as_double(0);
    }
  } else {
    *lo = n.attr_float("min", -std::numeric_limits<float>::infinity());
    *hi = n.attr_float("max", std::numeric_limits<float>::infinity());
  }
  return true;
}

enum class ChainOp { kNo, kHomogeneous, kRelu6 };

// Whether f(x / s) = f(x) / s channel by channel (s > 0) for this node.
ChainOp classify(const ir::Node& n) {
  if (!n.domain().empty()) return ChainOp::kNo;
  const std::string& op = n.op_type();
  if (op == "Relu" || op == "LeakyRelu" || op == "AveragePool" || op == "GlobalAveragePool" || op == "Identity")
    return ChainOp::kHomogeneous;
  if (op == "MaxPool") {
    const ir::Value* idx = n.output(1);
    return idx == nullptr || (idx->uses().empty() && !idx->is_graph_output()) ? ChainOp::kHomogeneous : ChainOp::kNo;
  }
  if (op == "Clip") {
    double lo = 0, hi = 0;
    if (!clip_bounds(n, &lo, &hi) || lo != 0.0) return ChainOp::kNo;
    if (std::isinf(hi) && hi > 0) return ChainOp::kHomogeneous;
    return hi > 0 ? ChainOp::kRelu6 : ChainOp::kNo;
  }
  return ChainOp::kNo;
}

// One Conv1 -> chain -> consumers group.
struct Pair {
  ir::Node* conv1 = nullptr;
  std::vector<ir::Node*> consumers;
  std::vector<ir::Node*> relu6;  // Clip(0, hi) nodes in the chain
};

// The pair starting at `conv1`, if the pattern of the header comment matches.
bool match_pair(const ir::Graph& g, ir::Node* conv1, Pair* out) {
  if (!equalizable_conv(g, conv1)) return false;
  const int64_t channels = conv1->input(1)->initializer()->dim(0);
  ir::Value* v = conv1->output(0);
  Pair p;
  p.conv1 = conv1;
  for (int hops = 0;; ++hops) {
    if (v == nullptr || v->is_graph_output() || v->uses().empty() || hops > 16) return false;
    ir::Node* first = v->uses()[0].node;
    if (v->uses().size() == 1 && first->op_type() != "Conv") {
      ir::Node* n = first;
      if (v->uses()[0].index != 0 || n->owner() != &g) return false;
      const ChainOp c = classify(*n);
      if (c == ChainOp::kNo) return false;
      if (c == ChainOp::kRelu6) p.relu6.push_back(n);
      v = n->output(0);
      continue;
    }
    // Every use must be input 0 of an equalizable Conv reading all `channels` channels.
    for (const ir::Use& u : v->uses()) {
      ir::Node* c = u.node;
      if (u.index != 0 || !equalizable_conv(g, c) || c == conv1) return false;
      const Tensor& w2 = *c->input(1)->initializer();
      if (w2.dim(1) * c->attr_int("group", 1) != channels) return false;
      if (std::find(p.consumers.begin(), p.consumers.end(), c) != p.consumers.end()) return false;
      p.consumers.push_back(c);
    }
    break;
  }
  *out = std::move(p);
  return true;
}

// Working copies of the weights being rescaled, written back once at the end.
class Weights {
 public:
  Tensor& of(ir::Value* v) {
    auto it = work_.find(v);
    if (it == work_.end()) it = work_.emplace(v, v->initializer()->clone()).first;
    return it->second;
  }
  void write_back() {
    for (auto& [v, t] : work_) v->set_initializer(std::move(t));
    work_.clear();
  }

 private:
  std::map<ir::Value*, Tensor> work_;
};

// Output channel i of a Conv weight [Co, Ci/g, k...]: the contiguous row i.
double row_range(const Tensor& w, int64_t i) {
  const int64_t per = w.numel() / w.dim(0);
  const float* p = w.data<float>() + i * per;
  double r = 0;
  for (int64_t k = 0; k < per; ++k) r = std::max(r, static_cast<double>(std::fabs(p[k])));
  return r;
}

// Calls fn(element index) for every weight element of `conv` that multiplies input channel i.
template <typename Fn>
void for_input_channel(const ir::Node& conv, const Tensor& w, int64_t i, Fn fn) {
  const int64_t group = conv.attr_int("group", 1);
  const int64_t co = w.dim(0), cg = w.dim(1);
  const int64_t k = w.numel() / (co * cg);
  const int64_t grp = i / cg, j = i % cg, per_group = co / group;
  for (int64_t o = grp * per_group; o < (grp + 1) * per_group; ++o)
    for (int64_t t = 0; t < k; ++t) fn((o * cg + j) * k + t);
}

bool is_depthwise(const ir::Node& conv, const Tensor& w) {
  const int64_t group = conv.attr_int("group", 1);
  return group > 1 && w.dim(1) == 1 && group == w.dim(0);
}

// One rescaling of a pair; returns max |s_i - 1|.
double equalize_pair(const Pair& p, Weights& weights) {
  Tensor& w1 = weights.of(p.conv1->input(1));
  Tensor* b1 = p.conv1->input(2) ? &weights.of(p.conv1->input(2)) : nullptr;
  const int64_t channels = w1.dim(0);
  double moved = 0;
  for (int64_t i = 0; i < channels; ++i) {
    const double r1 = row_range(w1, i);
    double r2 = 0;
    for (ir::Node* c : p.consumers) {
      const Tensor& w2 = weights.of(c->input(1));
      const float* d = w2.data<float>();
      for_input_channel(*c, w2, i, [&](int64_t e) { r2 = std::max(r2, static_cast<double>(std::fabs(d[e]))); });
    }
    if (!(r1 > 0) || !(r2 > 0) || !std::isfinite(r1) || !std::isfinite(r2)) continue;  // dead channel: leave it
    const double s = std::sqrt(r1 / r2);
    if (s == 1.0) continue;
    moved = std::max(moved, std::fabs(s - 1.0));
    const int64_t per = w1.numel() / channels;
    float* pw = w1.mutable_data<float>() + i * per;
    for (int64_t k = 0; k < per; ++k) pw[k] = static_cast<float>(pw[k] / s);
    if (b1) b1->mutable_data<float>()[i] = static_cast<float>(b1->data<float>()[i] / s);
    for (ir::Node* c : p.consumers) {
      Tensor& w2 = weights.of(c->input(1));
      float* d = w2.mutable_data<float>();
      for_input_channel(*c, w2, i, [&](int64_t e) { d[e] = static_cast<float>(d[e] * s); });
    }
  }
  return moved;
}

// Clip(0, hi) -> Relu in place (same node, same output name; the bound constants go).
void replace_with_relu(ir::Node* clip) {
  clip->truncate_inputs(1);
  clip->remove_attr("min");
  clip->remove_attr("max");
  clip->set_op_type("Relu");
}

CleResult run_on_graph(ir::Graph& g, const CleOptions& options) {
  CleResult result;
  std::vector<Pair> pairs;
  for (ir::Node* n : g.topo_order()) {
    Pair p;
    if (!match_pair(g, n, &p)) continue;
    if (!p.relu6.empty() && !options.replace_relu6) {
      ++result.skipped_relu6;
      continue;
    }
    pairs.push_back(std::move(p));
  }
  if (pairs.empty()) return result;
  for (Pair& p : pairs) {
    for (ir::Node* clip : p.relu6) replace_with_relu(clip);
    result.relu6_replaced += p.relu6.size();
    p.relu6.clear();
    bool dw = is_depthwise(*p.conv1, *p.conv1->input(1)->initializer());
    for (const ir::Node* c : p.consumers) dw |= is_depthwise(*c, *c->input(1)->initializer());
    result.depthwise_pairs += dw;
  }
  Weights weights;
  for (int it = 0; it < options.max_iterations; ++it) {
    double moved = 0;
    for (const Pair& p : pairs) moved = std::max(moved, equalize_pair(p, weights));
    result.iterations = it + 1;
    if (moved < options.tolerance) break;
  }
  weights.write_back();
  result.pairs = pairs.size();
  if (result.relu6_replaced) g.eliminate_dead_nodes();
  return result;
}

}  // namespace

CleResult equalize_cross_layer(ir::Model& model, const CleOptions& options) {
  CleResult total;
  for_each_graph(*model.graph, [&](ir::Graph& g) {
    const CleResult r = run_on_graph(g, options);
    total.pairs += r.pairs;
    total.depthwise_pairs += r.depthwise_pairs;
    total.relu6_replaced += r.relu6_replaced;
    total.skipped_relu6 += r.skipped_relu6;
    total.iterations = std::max(total.iterations, r.iterations);
    return r.pairs;
  });
  return total;
}

size_t cross_layer_equalization(ir::Model& model, const PassOptions&) { return equalize_cross_layer(model).pairs; }

}  // namespace qtool::passes
