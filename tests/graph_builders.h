// Small helpers for tests that build ir::Model graphs by hand: typed float inputs and
// reproducible Gaussian weights.
#pragma once

#include <random>
#include <vector>

#include "qtool/core/tensor.h"
#include "qtool/ir/graph.h"

namespace qtool::testing {

/// A float32 value type with the given dims; a negative dim becomes the symbolic dim "N".
inline ir::TypeInfo float_type(const Shape& dims) {
  ir::TypeInfo t;
  t.elem_type = DataType::kFloat;
  t.has_shape = true;
  for (int64_t d : dims) t.dims.push_back(ir::Dim{d, d < 0 ? "N" : ""});
  return t;
}

/// n draws of N(0, sigma²) from `rng`.
inline std::vector<float> gaussian(int64_t n, std::mt19937& rng, float sigma = 1.0f) {
  std::normal_distribution<float> d(0.0f, sigma);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = d(rng);
  return v;
}

}  // namespace qtool::testing
