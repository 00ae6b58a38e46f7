// Control flow: If, Loop and Scan. Bodies run through the executor's SubgraphRunner, which
// binds the body inputs in order and lets body nodes read outer-scope values.
//
//   Loop(M?, cond?, v_initial...) with body(iter, cond_in, v...) -> (cond_out, v..., scan...):
//     runs while (i < M) and cond; outputs the final v... and each scan output stacked on a new
//     leading axis.
//   Scan(state..., scan_in...) with body(state..., slice...) -> (state..., scan_out...): slices
//     each scan input along its axis (direction 1 = from the end), stacks each scan output
//     along its output axis.
#include <algorithm>

#include "qtool/core/interrupt.h"
#include "qtool/core/limits.h"
#include "kernel_util.h"
#include "kernels.h"

namespace qtool::runtime::kernels {

namespace {

const ir::Graph& graph_attr(const ir::Node& n, const char* name) {
  const ir::Attribute& a = n.required_attr(name);
  QTOOL_CHECK(!a.graphs.empty() && a.graphs[0], ErrorCode::kInvalidModel, "{}: attribute '{}' holds no graph",
              n.describe(), name);
  return *a.graphs[0];
}

void if_kernel(KernelContext& ctx) {
  const bool cond = scalar_value(ctx.input(0), ctx.node(), "cond") != 0.0;
  const ir::Graph& body = graph_attr(ctx.node(), cond ? "then_branch" : "else_branch");
  std::vector<Tensor> outs = ctx.subgraphs().run_subgraph(body, {});
  QTOOL_CHECK(outs.size() == ctx.num_outputs(), ErrorCode::kInvalidModel, "{}: branch returns {} values for {} outputs",
              ctx.node().describe(), outs.size(), ctx.num_outputs());
  for (size_t i = 0; i < outs.size(); ++i) ctx.set_output(i, std::move(outs[i]));
}

/// Stacks same-shaped tensors along a new axis 0.
Tensor stack(const std::vector<Tensor>& parts, const ir::Node& n, DataType empty_type) {
  if (parts.empty()) return Tensor(empty_type, {0});
  const Tensor& first = parts[0];
  Shape shape = first.shape();
  shape.insert(shape.begin(), static_cast<int64_t>(parts.size()));
  Tensor out = Tensor::empty(first.dtype(), shape);
  if (first.dtype() == DataType::kString) {
    auto& o = out.mutable_strings();
    for (size_t i = 0; i < parts.size(); ++i)
      std::copy(parts[i].strings().begin(), parts[i].strings().end(), o.begin() + i * first.numel());
    return out;
  }
  const size_t bytes = first.nbytes();
  for (size_t i = 0; i < parts.size(); ++i) {
    QTOOL_CHECK(parts[i].shape() == first.shape() && parts[i].dtype() == first.dtype(), ErrorCode::kInvalidModel,
                "{}: scan output changes shape from {} to {} between iterations", n.describe(),
                shape_str(first.shape()), shape_str(parts[i].shape()));
    std::memcpy(out.mutable_raw() + i * bytes, parts[i].raw(), bytes);
  }
  return out;
}

/// Moves axis 0 of t to position `axis`.
Tensor move_leading_axis(const Tensor& t, int64_t axis, ThreadPool* pool, const ir::Node& n) {
  if (axis == 0) return t;
  const std::vector<int64_t> st = strides_of(t.shape());
  Shape out;
  std::vector<int64_t> strides;
  for (int64_t d = 1; d <= axis; ++d) {
    out.push_back(t.shape()[d]);
    strides.push_back(st[d]);
  }
  out.insert(out.begin() + axis, t.shape()[0]);
  strides.insert(strides.begin() + axis, st[0]);
  for (size_t d = axis + 1; d < t.rank(); ++d) {
    out.push_back(t.shape()[d]);
    strides.push_back(st[d]);
  }
  return strided_copy(t, out, strides, 0, pool, n);
}

DataType declared_type(const ir::Graph& body, size_t output) {
  const ir::Value* v = output < body.outputs().size() ? body.outputs()[output] : nullptr;
  return v && v->type().elem_type != DataType::kUndefined ? v->type().elem_type : DataType::kFloat;
}

void loop_kernel(KernelContext& ctx) {
  const ir::Node& n = ctx.node();
  const ir::Graph& body = graph_attr(n, "body");
  const int64_t max_trips = ctx.has_input(0) ? static_cast<int64_t>(scalar_value(ctx.input(0), n, "M"))
                                             : std::numeric_limits<int64_t>::max();
  bool cond = ctx.has_input(1) ? scalar_value(ctx.input(1), n, "cond") != 0.0 : true;
  const size_t num_carried = ctx.num_inputs() - 2;
  QTOOL_CHECK(body.outputs().size() >= 1 + num_carried, ErrorCode::kInvalidModel,
              "{}: body has {} outputs for {} loop-carried values", n.describe(), body.outputs().size(),
              num_carried);
  const size_t num_scan = body.outputs().size() - 1 - num_carried;
  std::vector<Tensor> carried;
  for (size_t i = 0; i < num_carried; ++i) carried.push_back(ctx.input(2 + i));
  std::vector<std::vector<Tensor>> scans(num_scan);
  std::vector<Tensor> args(2 + num_carried);
  // A Loop whose trip count or condition comes from the model may never end: cap the iterations
  // (--max-loop-iterations, core/limits.h) and stop on Ctrl-C.
  const int64_t cap = resource_limits().max_loop_iterations;
  for (int64_t it = 0; it < max_trips && cond; ++it) {
    if (it >= cap) {
      fail(ErrorCode::kInvalidModel, "{}: more than {} iterations (the limit, --max-loop-iterations)", n.describe(), cap);
    }
    check_interrupt(fmt::format("in {}", n.describe()));
    args[0] = Tensor::scalar<int64_t>(it);
    args[1] = Tensor::scalar<bool>(cond);
    for (size_t i = 0; i < num_carried; ++i) args[2 + i] = std::move(carried[i]);
    std::vector<Tensor> outs = ctx.subgraphs().run_subgraph(body, args);
    cond = scalar_value(outs[0], n, "body condition") != 0.0;
    for (size_t i = 0; i < num_carried; ++i) carried[i] = std::move(outs[1 + i]);
    for (size_t k = 0; k < num_scan; ++k) scans[k].push_back(std::move(outs[1 + num_carried + k]));
  }
  for (size_t i = 0; i < num_carried; ++i) ctx.set_output(i, std::move(carried[i]));
  for (size_t k = 0; k < num_scan; ++k) {
    if (ctx.wants_output(num_carried + k)) {
      ctx.set_output(num_carried + k, stack(scans[k], n, declared_type(body, 1 + num_carried + k)));
    }
  }
}

void scan_kernel(KernelContext& ctx) {
  const ir::Node& n = ctx.node();
  const ir::Graph& body = graph_attr(n, "body");
  const int64_t m = n.required_attr("num_scan_inputs").i;
  const int64_t num_in = static_cast<int64_t>(ctx.num_inputs());
  const int64_t num_state = num_in - m;
  QTOOL_CHECK(m >= 1 && num_state >= 0, ErrorCode::kInvalidModel, "{}: bad num_scan_inputs {}", n.describe(), m);
  const int64_t num_scan_out = static_cast<int64_t>(body.outputs().size()) - num_state;
  const std::vector<int64_t> in_axes = n.attr_ints("scan_input_axes", std::vector<int64_t>(m, 0));
  const std::vector<int64_t> in_dirs = n.attr_ints("scan_input_directions", std::vector<int64_t>(m, 0));
  const std::vector<int64_t> out_axes = n.attr_ints("scan_output_axes", std::vector<int64_t>(num_scan_out, 0));
  const std::vector<int64_t> out_dirs = n.attr_ints("scan_output_directions", std::vector<int64_t>(num_scan_out, 0));
  std::vector<Tensor> state;
  for (int64_t i = 0; i < num_state; ++i) state.push_back(ctx.input(i));
  std::vector<const Tensor*> scan_in;
  std::vector<int64_t> axes;
  int64_t steps = -1;
  for (int64_t j = 0; j < m; ++j) {
    const Tensor& x = ctx.input(num_state + j);
    const int64_t a = normalize_axis(in_axes[j], static_cast<int64_t>(x.rank()), n);
    QTOOL_CHECK(steps < 0 || steps == x.shape()[a], ErrorCode::kInvalidModel,
                "{}: scan inputs have different sequence lengths", n.describe());
    steps = x.shape()[a];
    scan_in.push_back(&x);
    axes.push_back(a);
  }
  std::vector<std::vector<Tensor>> scans(num_scan_out);
  std::vector<Tensor> args(num_in);
  for (int64_t t = 0; t < steps; ++t) {
    for (int64_t i = 0; i < num_state; ++i) args[i] = std::move(state[i]);
    for (int64_t j = 0; j < m; ++j) {
      const Tensor& x = *scan_in[j];
      const int64_t idx = in_dirs[j] ? steps - 1 - t : t;
      const std::vector<int64_t> st = strides_of(x.shape());
      Shape shape;
      std::vector<int64_t> strides;
      for (int64_t d = 0; d < static_cast<int64_t>(x.rank()); ++d) {
        if (d == axes[j]) continue;
        shape.push_back(x.shape()[d]);
        strides.push_back(st[d]);
      }
      args[num_state + j] = strided_copy(x, shape, strides, idx * st[axes[j]], &ctx.pool(), n);
    }
    std::vector<Tensor> outs = ctx.subgraphs().run_subgraph(body, args);
    for (int64_t i = 0; i < num_state; ++i) state[i] = std::move(outs[i]);
    for (int64_t k = 0; k < num_scan_out; ++k) scans[k].push_back(std::move(outs[num_state + k]));
  }
  for (int64_t i = 0; i < num_state; ++i) ctx.set_output(i, std::move(state[i]));
  for (int64_t k = 0; k < num_scan_out; ++k) {
    if (out_dirs[k]) std::reverse(scans[k].begin(), scans[k].end());
    Tensor s = stack(scans[k], n, declared_type(body, num_state + k));
    const int64_t axis = normalize_axis(out_axes[k], static_cast<int64_t>(s.rank()), n);
    ctx.set_output(num_state + k, move_leading_axis(s, axis, &ctx.pool(), n));
  }
}

}  // namespace

void register_control_flow_kernels(KernelRegistry& r) {
  r.add("", "If", 1, if_kernel);
  r.add("", "Loop", 1, loop_kernel);
  r.add("", "Scan", 9, scan_kernel);
}

}  // namespace qtool::runtime::kernels
