// Parsing of the weight-only options: --layer-bits rules, glob patterns (algorithms: weight_algorithms.cc).
#include <algorithm>
#include <cctype>

#include "qtool/core/error.h"
#include "qtool/quant/lowbit.h"

namespace qtool::quant {

bool glob_match(std::string_view p, std::string_view t) {
  // Iterative matcher with one backtrack point for the last '*' (linear in practice).
  size_t pi = 0, ti = 0, star = std::string_view::npos, mark = 0;
  while (ti < t.size()) {
    if (pi < p.size() && (p[pi] == '?' || p[pi] == t[ti])) {
      ++pi;
      ++ti;
    } else if (pi < p.size() && p[pi] == '*') {
      star = pi++;
      mark = ti;
    } else if (star != std::string_view::npos) {
      pi = star + 1;
      ti = ++mark;
    } else {
      return false;
    }
  }
  while (pi < p.size() && p[pi] == '*') ++pi;
  return pi == p.size();
}

namespace {
std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}
}  // namespace

std::vector<LayerBitsRule> parse_layer_bits(std::string_view spec) {
  std::vector<LayerBitsRule> rules;
  size_t pos = 0;
  while (pos <= spec.size()) {
    size_t end = spec.find(',', pos);
    if (end == std::string_view::npos) end = spec.size();
    const std::string_view item = trim(spec.substr(pos, end - pos));
    pos = end + 1;
    if (item.empty()) {
      if (end == spec.size()) break;
      continue;
    }
    const size_t eq = item.rfind('=');
    if (eq == std::string_view::npos || trim(item.substr(0, eq)).empty() || trim(item.substr(eq + 1)).empty())
      fail(ErrorCode::kConfig, "--layer-bits item '{}' is not PATTERN=BITS (e.g. 'lm_head=8,*.down_proj=4')", item);
    const std::string bits(trim(item.substr(eq + 1)));
    BitsChoice choice = with_context(fmt::format("--layer-bits '{}'", item), [&] {
      QTOOL_CHECK(!bits.empty(), ErrorCode::kConfig, "empty bits");
      return BitsChoice(bits);
    });
    rules.push_back({std::string(trim(item.substr(0, eq))), std::move(choice)});
    if (end == spec.size()) break;
  }
  return rules;
}

}  // namespace qtool::quant
