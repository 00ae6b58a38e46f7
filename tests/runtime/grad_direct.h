// Test helper for the gradient functions: one backward pass with chosen seed gradients, for
// tests that assert exact gradient values (grad_check.h compares against finite differences).
#pragma once

#include <vector>

#include "grad_check.h"

namespace qtool::testing {

/// Builds the one-node model of `r` (inputs as initializers), runs forward, then backward with
/// dL/d(output k) = seed_grads[k] (undefined = no loss on it), and returns dL/d(input i) for each
/// i in `wrt`, in order. r.threads sizes the pool the gradient functions run on.
inline std::vector<Tensor> node_gradients(const NodeRun& r, const std::vector<int>& wrt,
                                          const std::vector<Tensor>& seed_grads) {
  detail::OneNode m;
  detail::build_one_node(r, m);
  auto tape = detail::one_node_tape(r, m, wrt);
  runtime::Autodiff& ad = *tape;
  ad.forward({});
  return ad.backward(seed_grads);
}

/// int64 tensor from values (shapes, axes, indices).
inline Tensor ints64(Shape s, std::vector<int64_t> v) { return Tensor::from_vector<int64_t>(std::move(s), v); }

/// Values a[i] = lo + (hi − lo)·(r[i] + 1)/2 from rnd(n, seed), pushed at least `gap` away from
/// every kink in `kinks` (so finite differences never straddle one).
inline std::vector<float> away_from(int64_t n, uint32_t seed, float lo, float hi, std::vector<float> kinks,
                                    float gap = 0.1f) {
  std::vector<float> v = rnd(n, seed);
  for (float& x : v) {
    x = lo + (hi - lo) * (x + 1.0f) * 0.5f;
    for (float k : kinks)
      if (std::fabs(x - k) < gap) x = x >= k ? k + gap : k - gap;
  }
  return v;
}

}  // namespace qtool::testing
