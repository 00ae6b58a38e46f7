// The table of path-specific quantize options (see path_options.h).
#include "path_options.h"

#include "qtool/core/error.h"

namespace qtool::cli {
namespace {

struct PathOption {
  const char* name;
  bool static_path;  ///< --bits 8 (W8A8 / W8A16 QDQ)
  bool weight_only;  ///< --bits below 8
  bool dynamic;      ///< --bits 8 --mode dynamic
};
// clang-format off
constexpr PathOption kPathOptions[] = {
    {"--method", true, false, false},
    {"--percentile", true, false, false},
    {"--ranges", true, false, false},
    {"--per-tensor", true, false, true},
    {"--activation-type", true, false, false},
    {"--activation-bits", true, false, false},
    {"--exclude-op-types", true, false, false},
    {"--op-types", true, false, true},
    {"--keep-fp", true, false, false},
    {"--cle", true, false, false},
    {"--cle-relu6", true, false, false},
    {"--bias-correction", true, false, false},
    {"--no-bias-correction", true, false, false},
    {"--min-sqnr", true, true, true},  // weight-only: a quality target for the budget search
    {"--min-agreement", true, false, true},
    {"--force", true, true, true},
    {"--reduce-range", true, false, false},
    {"--max-nll-increase", true, false, true},
    {"--metric", true, false, true},
    {"--block-size", false, true, false},
    {"--weight-algorithm", true, true, false},  // static: rtn or gptq int8 weights
    {"--gptq-act-order", false, true, false},
    {"--gptq-damp", false, true, false},
    {"--sequential", false, true, false},
    {"--asymmetric", false, true, false},
    {"--outlier-fraction", false, true, false},
    {"--symmetric", false, true, false},
    {"--bits-first-last", false, true, false},
    {"--layer-bits", true, true, false},
    {"--scale-type", false, true, false},
    {"--bits-depthwise", false, true, false},
    {"--tune-steps", false, true, false},
    {"--tune-batch", false, true, false},
    {"--tune-lr", false, true, false},
    {"--tune-scale-lr", false, true, false},
    {"--tune-float-lr", false, true, false},
    {"--tune-loss", false, true, false},
    {"--tune-holdout", false, true, false},
    {"--tune-eval-every", false, true, false},
    {"--tune-augment", false, true, false},
    {"--tune-features", false, true, false},
    {"--tune-stages", false, true, false},
    {"--tune-quant-noise", false, true, false},
    {"--tune-range", false, true, false},
    {"--tune-mixup", false, true, false},
    {"--no-tune-weights", false, true, false},
    {"--no-tune-scales", false, true, false},
    {"--no-tune-float", false, true, false},
    {"--plan", true, true, false},
    {"--plan-out", true, true, false},
    {"--weight-type", true, false, true},
    {"--min-iou", true, false, true},
    {"--palette", false, true, false},
    {"--palette-group", false, true, false},
    {"--palette-block", false, true, false},
    {"--sparsity", false, true, false},
    {"--sparsity-method", false, true, false},
    {"--target-size", true, true, false},
    {"--target-bpw", true, true, false},
    {"--keep-int8-speed", true, false, false},
};
// clang-format on

const char* path_name(QuantizePath p) {
  switch (p) {
    case QuantizePath::kStatic: return "static W8A8 (--bits 8)";
    case QuantizePath::kWeightOnly: return "weight-only (--bits 4, 2, ternary, binary, fp8, fp4, pal1..pal8; --bits 8 with --sparsity)";
    case QuantizePath::kDynamic: return "dynamic (--bits 8 --mode dynamic)";
  }
  return "";
}

bool applies(const PathOption& o, QuantizePath p) {
  return p == QuantizePath::kStatic ? o.static_path : p == QuantizePath::kWeightOnly ? o.weight_only : o.dynamic;
}

}  // namespace

void check_path_options(const CLI::App& cmd, QuantizePath path, const std::string& bits) {
  for (const PathOption& o : kPathOptions) {
    if (cmd.count(o.name) == 0 || applies(o, path)) continue;
    std::string where;
    for (QuantizePath p : {QuantizePath::kStatic, QuantizePath::kWeightOnly, QuantizePath::kDynamic})
      if (applies(o, p)) where += (where.empty() ? "" : " and ") + std::string(path_name(p));
    fail(ErrorCode::kConfig, "{} applies to {} quantization, not to {} with --bits {}", o.name, where, path_name(path),
         bits);
  }
}

}  // namespace qtool::cli
