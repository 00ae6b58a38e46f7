#include "qtool/passes/fold_batchnorm.h"

#include <cmath>

namespace qtool::passes {
namespace {

// A float32 constant with `n` elements, or nullptr.
const Tensor* const_vec(const ir::Value* v, int64_t n) {
  if (v == nullptr) return nullptr;
  const Tensor* t = v->initializer();
  if (t == nullptr || t->dtype() != DataType::kFloat || t->numel() != n) return nullptr;
  return t;
}

bool only_used_by(const ir::Value* v, const ir::Node* n) {
  return v != nullptr && !v->is_graph_output() && v->uses().size() == 1 && v->uses()[0].node == n;
}

// Sets input `idx` of `node` to a constant holding `t`: in place when nothing else reads the old
// initializer, else as a new initializer.
void set_const_input(ir::Graph& g, ir::Node* node, size_t idx, Tensor t, const std::string& base) {
  ir::Value* old = node->input(idx);
  if (old != nullptr && old->owner() == &g && old->is_initializer() && old->uses().size() == 1 &&
      !old->is_graph_input() && !old->is_graph_output()) {
    old->set_initializer(std::move(t));
    return;
  }
  ir::Value* nv = g.add_initializer(g.unique_name(base), std::move(t));
  nv->type().elem_type = DataType::kFloat;
  node->set_input(idx, nv);
  if (old != nullptr && old->owner() == &g && old->is_initializer() && old->uses().empty() &&
      !old->is_graph_input() && !old->is_graph_output())
    g.remove_initializer(old);
}

bool try_fold(ir::Graph& g, ir::Node* bn) {
  if (bn->op_type() != "BatchNormalization" || !bn->domain().empty()) return false;
  if (bn->attr_int("spatial", 1) != 1 || bn->attr_int("training_mode", 0) != 0) return false;
  for (size_t i = 1; i < bn->outputs().size(); ++i) {
    const ir::Value* o = bn->output(i);
    if (o != nullptr && (!o->uses().empty() || o->is_graph_output())) return false;
  }
  // The BatchNormalization output name is part of the interface when it is a graph output.
  if (bn->output(0) == nullptr || bn->output(0)->is_graph_output()) return false;
  ir::Value* y = bn->input(0);
  if (y == nullptr || y->producer() == nullptr || !only_used_by(y, bn)) return false;
  ir::Node* p = y->producer();
  if (!p->domain().empty() || p->owner() != &g) return false;
  const bool is_conv = p->op_type() == "Conv";
  const bool is_gemm = p->op_type() == "Gemm";
  if (!is_conv && !is_gemm) return false;
  const ir::Value* wv = p->input(1);
  if (wv == nullptr || wv->initializer() == nullptr || wv->initializer()->dtype() != DataType::kFloat) return false;
  const Tensor& w = *wv->initializer();
  int64_t channels = 0;
  bool trans_b = false;
  if (is_conv) {
    if (w.rank() < 3) return false;
    channels = w.dim(0);
  } else {
    if (w.rank() != 2 || p->attr_int("transA", 0) != 0) return false;
    trans_b = p->attr_int("transB", 0) != 0;
    channels = trans_b ? w.dim(0) : w.dim(1);
  }
  const Tensor* gamma = const_vec(bn->input(1), channels);
  const Tensor* beta = const_vec(bn->input(2), channels);
  const Tensor* mean = const_vec(bn->input(3), channels);
  const Tensor* var = const_vec(bn->input(4), channels);
  if (!gamma || !beta || !mean || !var) return false;

  // Existing bias (Conv B, or Gemm beta*C) as [channels] doubles.
  std::vector<double> bias(channels, 0.0);
  if (const ir::Value* bv = p->input(2)) {
    const Tensor* b = bv->initializer();
    if (b == nullptr || b->dtype() != DataType::kFloat) return false;
    const double scale = is_gemm ? p->attr_float("beta", 1.0f) : 1.0;
    if (b->numel() == channels && (b->rank() == 1 || (is_gemm && b->rank() == 2 && b->dim(0) == 1))) {
      for (int64_t c = 0; c < channels; ++c) bias[c] = scale * b->data<float>()[c];
    } else if (is_gemm && b->numel() == 1) {
      for (int64_t c = 0; c < channels; ++c) bias[c] = scale * b->data<float>()[0];
    } else {
      return false;
    }
  }
  const double alpha = is_gemm ? p->attr_float("alpha", 1.0f) : 1.0;
  const double eps = bn->attr_float("epsilon", 1e-5f);
  std::vector<double> f(channels);
  for (int64_t c = 0; c < channels; ++c) {
    const double v = var->data<float>()[c];
    f[c] = gamma->data<float>()[c] / std::sqrt(v + eps);
  }
  Tensor nw = w.clone();
  float* pw = nw.mutable_data<float>();
  if (is_conv) {
    const int64_t per = w.numel() / channels;
    for (int64_t c = 0; c < channels; ++c)
      for (int64_t k = 0; k < per; ++k) pw[c * per + k] = static_cast<float>(pw[c * per + k] * f[c]);
  } else if (trans_b) {  // B is [N, K]
    const int64_t k_dim = w.dim(1);
    for (int64_t c = 0; c < channels; ++c)
      for (int64_t k = 0; k < k_dim; ++k) pw[c * k_dim + k] = static_cast<float>(pw[c * k_dim + k] * f[c] * alpha);
  } else {  // B is [K, N]
    const int64_t k_dim = w.dim(0);
    for (int64_t k = 0; k < k_dim; ++k)
      for (int64_t c = 0; c < channels; ++c) pw[k * channels + c] = static_cast<float>(pw[k * channels + c] * f[c] * alpha);
  }
  std::vector<float> nb(channels);
  for (int64_t c = 0; c < channels; ++c)
    nb[c] = static_cast<float>((bias[c] - mean->data<float>()[c]) * f[c] + beta->data<float>()[c]);

  const std::string base = p->name().empty() ? y->name() : p->name();
  set_const_input(g, p, 1, std::move(nw), base + "_W_bnfold");
  if (p->input(2) == nullptr) {
    if (p->inputs().size() < 3) p->set_input(2, nullptr);
    ir::Value* bvv = g.add_initializer(g.unique_name(base + "_B_bnfold"), Tensor::from_vector<float>({channels}, nb));
    bvv->type().elem_type = DataType::kFloat;
    p->set_input(2, bvv);
  } else {
    set_const_input(g, p, 2, Tensor::from_vector<float>({channels}, nb), base + "_B_bnfold");
  }
  if (is_gemm) {
    p->remove_attr("alpha");
    p->remove_attr("beta");
  }
  ir::Value* z = bn->output(0);
  g.replace_all_uses(z, y);
  g.remove_node(bn);
  return true;
}

size_t run_on_graph(ir::Graph& g) {
  size_t n = 0;
  std::vector<ir::Node*> bns;
  for (const auto& node : g.nodes())
    if (node->op_type() == "BatchNormalization") bns.push_back(node.get());
  for (ir::Node* bn : bns)
    if (try_fold(g, bn)) ++n;
  if (n) g.eliminate_dead_nodes();
  return n;
}

}  // namespace

size_t fold_batchnorm(ir::Model& model, const PassOptions&) { return for_each_graph(*model.graph, run_on_graph); }

}  // namespace qtool::passes
