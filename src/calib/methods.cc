// The one list of range methods, and the conventions every method shares.
#include "qtool/calib/methods.h"

#include <algorithm>
#include <cmath>

namespace qtool::calib {

namespace {
std::vector<MethodInfo> register_builtin_methods() {
  std::vector<MethodInfo> m;
  // The one list: add a method here (and its file).
  register_minmax(m);
  register_percentile(m);
  register_entropy(m);
  register_mse(m);
  return m;
}
}  // namespace

const std::vector<MethodInfo>& range_methods() {
  static const std::vector<MethodInfo> methods = register_builtin_methods();
  return methods;
}

const MethodInfo& find_method(const std::string& name) {
  std::string known;
  for (const auto& m : range_methods()) {
    if (m.name == name) return m;
    known += (known.empty() ? "" : ", ") + m.name;
  }
  fail(ErrorCode::kConfig, "unknown calibration method '{}' (known: {})", name, known);
}

Range compute_range(const std::string& name, const TensorStats& stats, const RangeConfig& config) {
  const MethodInfo& m = find_method(name);
  QTOOL_CHECK(config.bits >= 2 && config.bits <= 16, ErrorCode::kConfig, "bits must be 2..16, not {}", config.bits);
  if (stats.count == 0) return {};
  Range r = m.fn(stats, config);
  if (!std::isfinite(r.lo) || !std::isfinite(r.hi)) {
    fail(ErrorCode::kInternal, "method '{}' produced a non-finite range for tensor '{}'", name, stats.name);
  }
  if (config.symmetric) {
    const double t = std::max(std::fabs(r.lo), std::fabs(r.hi));
    return {-t, t};
  }
  return {std::min(r.lo, 0.0), std::max(r.hi, 0.0)};
}

}  // namespace qtool::calib
