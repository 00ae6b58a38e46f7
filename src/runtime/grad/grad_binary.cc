// Gradients: binary family (see grads.h).
//
// For y = f(a, b) with numpy broadcasting, each input's gradient is the full-shape
// g · ∂f/∂input (broadcast_map) summed over the dimensions that input was broadcast along
// (reduce_to_shape):
//   Add: da = g,   db = g          Sub: da = g,   db = −g
//   Mul: da = g·b, db = g·a        Div: da = g/b, db = −g·a/b²
// Before opset 7, B may be aligned to A at `axis` (legacy_aligned_b). Where(c, x, y) routes g to
// x where c holds and to y elsewhere. Variadic Max/Min give g to the input that produced the
// output (the first one on ties), Sum gives g to every input and Mean g/n.
#include "grad_broadcast.h"
#include "grads.h"

namespace qtool::runtime::grads {

namespace {

/// Add / Sub: the gradient is g (−g for Sub's second input), summed over broadcast dims.
template <bool kSub>
void add_sub_grad(GradContext& ctx) {
  if (!ctx.has_output_grad(0)) return;
  const Tensor& g = ctx.output_grad(0);
  if (ctx.wants_input_grad(0)) ctx.set_input_grad(0, reduce_to_shape(g, ctx.input(0).shape()));
  if (ctx.wants_input_grad(1)) {
    Tensor db = reduce_to_input(g, legacy_aligned_b(ctx), ctx.input(1).shape());
    ctx.set_input_grad(1, kSub ? scaled(db, -1.0f, ctx.pool()) : std::move(db));
  }
}

/// Mul: da = reduce(g·b), db = reduce(g·a).
void mul_grad(GradContext& ctx) {
  if (!ctx.has_output_grad(0)) return;
  const Tensor& a = ctx.input(0);
  const Tensor b = legacy_aligned_b(ctx);
  const Tensor& g = ctx.output_grad(0);
  if (ctx.wants_input_grad(0)) {
    Tensor full = broadcast_map<float, float>(a, b, g, ctx.pool(), [](float, float bv, float gv) { return gv * bv; });
    ctx.set_input_grad(0, reduce_to_shape(full, a.shape()));
  }
  if (ctx.wants_input_grad(1)) {
    Tensor full = broadcast_map<float, float>(a, b, g, ctx.pool(), [](float av, float, float gv) { return gv * av; });
    ctx.set_input_grad(1, reduce_to_input(full, b, ctx.input(1).shape()));
  }
}

/// Div: y = a/b, da = reduce(g/b), db = reduce(−g·a/b²).
void div_grad(GradContext& ctx) {
  if (!ctx.has_output_grad(0)) return;
  const Tensor& a = ctx.input(0);
  const Tensor b = legacy_aligned_b(ctx);
  const Tensor& g = ctx.output_grad(0);
  if (ctx.wants_input_grad(0)) {
    Tensor full = broadcast_map<float, float>(a, b, g, ctx.pool(), [](float, float bv, float gv) { return gv / bv; });
    ctx.set_input_grad(0, reduce_to_shape(full, a.shape()));
  }
  if (ctx.wants_input_grad(1)) {
    Tensor full = broadcast_map<float, float>(a, b, g, ctx.pool(),
                                              [](float av, float bv, float gv) { return -gv * av / (bv * bv); });
    ctx.set_input_grad(1, reduce_to_input(full, b, ctx.input(1).shape()));
  }
}

/// Where(c, x, y): dx = reduce(c ? g : 0), dy = reduce(c ? 0 : g); the condition gets none.
void where_grad(GradContext& ctx) {
  if (!ctx.has_output_grad(0)) return;
  const Tensor& c = ctx.input(0);
  QTOOL_CHECK(c.dtype() == DataType::kBool, ErrorCode::kInvalidModel, "{}: condition must be bool, got {}",
              ctx.node().describe(), dtype_name(c.dtype()));
  const Tensor& g = ctx.output_grad(0);
  for (size_t i : {size_t{1}, size_t{2}}) {
    if (!ctx.wants_input_grad(i)) continue;
    const Tensor& v = ctx.input(i);
    const bool take_true = i == 1;
    Tensor full = broadcast_map<bool, float>(c, v, g, ctx.pool(), [take_true](bool cv, float, float gv) {
      return cv == take_true ? gv : 0.0f;
    });
    ctx.set_input_grad(i, reduce_to_shape(full, v.shape()));
  }
}

/// Max / Min over any number of broadcast inputs: y[k] is a copy of some x_i[k], so the
/// gradient at k goes to the first input equal to y[k]. `rem` holds the gradient not yet
/// given away: input i takes rem where x_i == y and rem becomes 0 there.
void select_grad(GradContext& ctx) {
  if (!ctx.has_output_grad(0)) return;
  const Tensor& y = ctx.output(0);
  Tensor rem = ctx.output_grad(0);
  const size_t n = ctx.num_inputs();
  size_t last = n;  // the last input that is asked for: later ones need not see rem
  for (size_t i = 0; i < n; ++i)
    if (ctx.wants_input_grad(i)) last = i;
  if (last == n) return;
  for (size_t i = 0; i <= last; ++i) {
    if (!ctx.has_input(i)) continue;
    const Tensor& x = ctx.input(i);
    if (x.dtype() != DataType::kFloat) continue;
    if (ctx.wants_input_grad(i)) {
      Tensor full = broadcast_map<float, float>(x, y, rem, ctx.pool(),
                                                [](float xv, float yv, float r) { return xv == yv ? r : 0.0f; });
      ctx.set_input_grad(i, reduce_to_shape(full, x.shape()));
    }
    if (i < last)
      rem = broadcast_map<float, float>(x, y, rem, ctx.pool(),
                                        [](float xv, float yv, float r) { return xv == yv ? 0.0f : r; });
  }
}

/// Sum: every input gets g; Mean: g/n (both summed over each input's broadcast dims).
template <bool kMean>
void sum_mean_grad(GradContext& ctx) {
  if (!ctx.has_output_grad(0)) return;
  const Tensor& g = ctx.output_grad(0);
  const float s = kMean ? 1.0f / static_cast<float>(ctx.num_inputs()) : 1.0f;
  for (size_t i = 0; i < ctx.num_inputs(); ++i) {
    if (!ctx.wants_input_grad(i)) continue;
    Tensor r = reduce_to_shape(g, ctx.input(i).shape());
    ctx.set_input_grad(i, kMean ? scaled(r, s, ctx.pool()) : std::move(r));
  }
}

}  // namespace

void register_binary_gradients(GradRegistry& r) {
  r.add("", "Add", 1, add_sub_grad<false>);
  r.add("", "Sub", 1, add_sub_grad<true>);
  r.add("", "Mul", 1, mul_grad);
  r.add("", "Div", 1, div_grad);
  r.add("", "Where", 9, where_grad);
  r.add("", "Max", 1, select_grad);
  r.add("", "Min", 1, select_grad);
  r.add("", "Sum", 1, sum_mean_grad<false>);
  r.add("", "Mean", 1, sum_mean_grad<true>);
}

}  // namespace qtool::runtime::grads
