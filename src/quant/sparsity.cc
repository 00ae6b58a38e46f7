// Pruning masks (see sparsity.h).
#include "qtool/quant/sparsity.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include <fmt/format.h>

#include "qtool/core/error.h"
#include "qtool/core/strings.h"

namespace qtool::quant {

SparsityMethod parse_sparsity_method(std::string_view s) {
  if (s == "magnitude") return SparsityMethod::kMagnitude;
  if (s == "wanda") return SparsityMethod::kWanda;
  if (s == "sparsegpt") return SparsityMethod::kSparseGpt;
  fail(ErrorCode::kConfig, "unknown --sparsity-method '{}' (expected magnitude, wanda or sparsegpt)", s);
}

std::string_view sparsity_method_name(SparsityMethod m) {
  switch (m) {
    case SparsityMethod::kMagnitude: return "magnitude";
    case SparsityMethod::kWanda: return "wanda";
    case SparsityMethod::kSparseGpt: return "sparsegpt";
  }
  return "?";
}

SparsitySpec SparsitySpec::parse(std::string_view text) {
  SparsitySpec s;
  if (text.empty() || text == "0") return s;
  const std::string t(text);
  const auto colon = t.find(':');
  try {
    if (colon != std::string::npos) {
      size_t a = 0, b = 0;
      s.n = std::stoi(t.substr(0, colon), &a);
      s.m = std::stoi(t.substr(colon + 1), &b);
      if (a != colon || b != t.size() - colon - 1 || s.m < 2 || s.m > 64 || s.n < 1 || s.n >= s.m) throw 0;
      return s;
    }
    size_t used = 0;
    const bool pct = t.back() == '%';
    double v = std::stod(pct ? t.substr(0, t.size() - 1) : t, &used);
    if (used != t.size() - (pct ? 1 : 0)) throw 0;
    if (pct) v /= 100.0;
    if (!(v >= 0.0 && v < 1.0)) throw 0;
    s.fraction = v;
    return s;
  } catch (...) {
    fail(ErrorCode::kConfig, "--sparsity '{}' must be a fraction of zeros in [0, 1) (0.5 or 50%) or N:M with "
                             "0 < N < M <= 64 (2:4)", text);
  }
}

std::string SparsitySpec::spelled() const {
  if (m > 0) return fmt::format("{}:{}", n, m);
  if (fraction > 0) return fmt::format("{:g}", fraction);
  return "";
}

std::vector<uint8_t> prune_mask(std::span<const float> score, int64_t rows, int64_t cols, const SparsitySpec& spec,
                                bool per_row) {
  QTOOL_CHECK(static_cast<int64_t>(score.size()) == rows * cols, ErrorCode::kInternal, "prune_mask: size");
  std::vector<uint8_t> mask(score.size(), 0);
  // Prunes the `count` lowest of the indices idx (stable: the earlier index first on ties).
  auto prune_lowest = [&](std::vector<int64_t>& idx, int64_t count) {
    if (count <= 0) return;
    std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return score[a] < score[b]; });
    for (int64_t i = 0; i < std::min<int64_t>(count, static_cast<int64_t>(idx.size())); ++i) mask[idx[i]] = 1;
  };
  std::vector<int64_t> idx;
  if (spec.structured()) {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c0 = 0; c0 < cols; c0 += spec.m) {
        const int64_t len = std::min<int64_t>(spec.m, cols - c0);
        idx.resize(len);
        std::iota(idx.begin(), idx.end(), r * cols + c0);
        prune_lowest(idx, len - std::min<int64_t>(len, spec.n));
      }
    return mask;
  }
  if (spec.fraction <= 0) return mask;
  if (per_row) {
    const int64_t count = static_cast<int64_t>(std::floor(spec.fraction * static_cast<double>(cols)));
    for (int64_t r = 0; r < rows; ++r) {
      idx.resize(cols);
      std::iota(idx.begin(), idx.end(), r * cols);
      prune_lowest(idx, count);
    }
  } else {
    idx.resize(score.size());
    std::iota(idx.begin(), idx.end(), 0);
    prune_lowest(idx, static_cast<int64_t>(std::floor(spec.fraction * static_cast<double>(score.size()))));
  }
  return mask;
}

std::vector<float> prune_scores(std::span<const float> w, int64_t rows, int64_t cols, SparsityMethod method,
                                std::span<const float> channel_norm) {
  std::vector<float> s(w.size());
  const bool wanda = method == SparsityMethod::kWanda && static_cast<int64_t>(channel_norm.size()) == cols;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      s[r * cols + c] = std::fabs(w[r * cols + c]) * (wanda ? channel_norm[c] : 1.0f);
  return s;
}

bool mask_follows_pattern(std::span<const uint8_t> mask, int64_t rows, int64_t cols, const SparsitySpec& spec) {
  if (!spec.structured()) return true;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c0 = 0; c0 < cols; c0 += spec.m) {
      int64_t kept = 0;
      for (int64_t c = c0; c < std::min<int64_t>(cols, c0 + spec.m); ++c) kept += mask[r * cols + c] ? 0 : 1;
      if (kept > spec.n) return false;
    }
  return true;
}

}  // namespace qtool::quant
