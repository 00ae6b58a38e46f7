// THE list of weight algorithms (see weight_algorithms.h).
#include "qtool/quant/weight_algorithms.h"

#include <fmt/format.h>

#include "qtool/core/error.h"

namespace qtool::quant {
namespace {

std::vector<WeightAlgorithmInfo> register_builtin_algorithms() {
  std::vector<WeightAlgorithmInfo> a;
  register_rtn(a);
  register_gptq(a);
  register_awq(a);
  register_awq_gptq(a);
  return a;
}

}  // namespace

const std::vector<WeightAlgorithmInfo>& weight_algorithms() {
  static const std::vector<WeightAlgorithmInfo> algorithms = register_builtin_algorithms();
  return algorithms;
}

const WeightAlgorithmInfo& weight_algorithm(WeightAlgorithm id) {
  for (const auto& a : weight_algorithms())
    if (a.id == id) return a;
  fail(ErrorCode::kInternal, "weight algorithm {} is not registered", static_cast<int>(id));
}

std::string weight_algorithms_help() {
  std::string s;
  for (const auto& a : weight_algorithms()) s += fmt::format("{}{} ({})", s.empty() ? "" : ", ", a.name, a.help);
  return s;
}

WeightAlgorithm parse_weight_algorithm(std::string_view s) {
  std::string names;
  for (const auto& a : weight_algorithms()) {
    if (a.name == s) return a.id;
    names += fmt::format("{}{}", names.empty() ? "" : ", ", a.name);
  }
  fail(ErrorCode::kConfig, "unknown weight algorithm '{}' (expected {})", s, names);
}

std::string_view weight_algorithm_name(WeightAlgorithm a) { return weight_algorithm(a).name; }

}  // namespace qtool::quant
