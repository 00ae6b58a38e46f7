// Size budgets of the weight-only path: `qtool quantize --target-size BYTES|PCT` and
// `--target-bpw B` (the search itself: src/pipeline/budget_search.cc; the solver: quant/budget.h).
//
// With a budget, every quantizable weight is offered every form of the menu (int8 per channel,
// 4-bit blocks of 32 and 128, 2-bit blocks of 16, 32 and 64, palettes of 3 and 4 bits where
// nothing is tuned, and float), each form's cost is measured on held-out samples as the output
// noise the model shows with only that layer in that form, and the solver picks the plan with the
// least summed noise whose bytes fit. A size target is a file size: the plan is written, its file
// measured, and the weights' budget corrected by what the rest of the file takes until the file
// is within the budget (and above 98% of it where the menu allows). Tuning, when asked for or the
// default, runs once on the final plan.
#pragma once

#include <cstdint>
#include <string>

namespace qtool::pipeline {

struct SizeBudget {
  enum class Kind { kNone, kBytes, kPercent, kBitsPerWeight };
  Kind kind = Kind::kNone;
  double value = 0.0;
  bool active() const { return kind != Kind::kNone; }
  /// As given: "1500000 bytes", "15% of FP32", "3 bits per weight".
  std::string describe() const;
  /// The file size aimed at for a size target (kBytes, kPercent of `fp32_file_bytes`); 0 otherwise.
  int64_t file_bytes(int64_t fp32_file_bytes) const;
};

/// Parses --target-size: "1500000", "1.5MB" / "1.5MiB" / "800KB" / "800KiB", or "15%" (of the
/// FP32 file). Throws kConfig for anything else, zero, or a percentage outside (0, 100].
SizeBudget parse_target_size(const std::string& text);
/// --target-bpw: average stored bits per weight over the quantizable weights, scales included.
/// Throws kConfig outside (0, 32].
SizeBudget target_bits_per_weight(double bits);

}  // namespace qtool::pipeline
