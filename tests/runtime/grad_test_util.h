// Test helpers for the NN gradient tests (linear, conv, pool, reduce), next to grad_check.h's
// finite-difference checker: exact gradients for a chosen dL/dY, direct calls of a registered
// gradient function (to see which inputs it fills and how it rejects bad shapes), and inputs
// without near-ties for the max-style ops.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <string>
#include <vector>

#include "grad_check.h"
#include "qtool/runtime/autodiff.h"

namespace qtool::testing {

/// dL/d(inputs[wrt]) of a one-node model for dL/d(output k) = seeds[k] (an undefined seed, or a
/// missing one, is all ones for a float output).
inline std::vector<Tensor> autodiff_grads(const NodeRun& r, const std::vector<int>& wrt,
                                          std::vector<Tensor> seeds = {}) {
  detail::OneNode m;
  detail::build_one_node(r, m);
  auto tape = detail::one_node_tape(r, m, wrt);
  runtime::Autodiff& ad = *tape;
  const std::vector<Tensor> ys = ad.forward({});
  seeds.resize(ys.size());
  for (size_t k = 0; k < ys.size(); ++k)
    if (!seeds[k].defined() && ys[k].dtype() == DataType::kFloat)
      seeds[k] = Tensor::from_vector<float>(ys[k].shape(), std::vector<float>(ys[k].numel(), 1.0f));
  return ad.backward(seeds);
}

/// Calls the registered gradient function of r's op directly on the given forward values:
/// `outputs` (forward results), `output_grads` (dL/dY) and `wants` (per input). Returns the
/// input gradients it set (undefined where it set none).
inline std::vector<Tensor> call_grad_fn(const NodeRun& r, const std::vector<Tensor>& outputs,
                                        const std::vector<Tensor>& output_grads, std::vector<char> wants) {
  detail::OneNode m;
  detail::build_one_node(r, m);
  const runtime::GradFn fn = runtime::GradRegistry::global().find(r.domain, r.op, r.opset);
  if (!fn) throw Error(ErrorCode::kInternal, "no gradient function for " + r.op);
  std::vector<const Tensor*> ins, outs, ogs;
  for (const Tensor& t : r.inputs) ins.push_back(t.defined() ? &t : nullptr);
  for (const Tensor& t : outputs) outs.push_back(&t);
  for (const Tensor& t : output_grads) ogs.push_back(t.defined() ? &t : nullptr);
  std::vector<Tensor> igs(r.inputs.size());
  runtime::ThreadPool pool(r.threads);
  runtime::GradContext ctx(*m.node, r.opset, ins, outs, ogs, std::move(wants), &igs, &pool);
  fn(ctx);
  return igs;
}

/// Float tensor of `shape` holding a pseudo-random permutation of {k·step - n·step/2}: every two
/// values differ by at least `step`, so a finite-difference step below step/2 never moves an
/// arg-max.
inline Tensor distinct_values(const Shape& shape, uint32_t seed, float step = 0.05f) {
  const int64_t n = shape_numel(shape);
  std::vector<int64_t> perm(static_cast<size_t>(n));
  std::iota(perm.begin(), perm.end(), 0);
  uint32_t s = seed * 2654435761u + 7u;
  for (int64_t i = n - 1; i > 0; --i) {  // Fisher-Yates with a fixed LCG (portable across libraries)
    s = s * 1664525u + 1013904223u;
    std::swap(perm[i], perm[(s >> 8) % static_cast<uint32_t>(i + 1)]);
  }
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[i] = (static_cast<float>(perm[i]) - static_cast<float>(n) / 2) * step;
  return ft(shape, v);
}

/// int64 tensor (axes inputs).
inline Tensor it64(Shape s, std::vector<int64_t> v) { return Tensor::from_vector<int64_t>(std::move(s), v); }

}  // namespace qtool::testing
