// The table of path-specific quantize options (see path_options.h).
#include "path_options.h"

#include "qtool/core/error.h"

namespace qtool::cli {
namespace {

struct PathOption {
  const char* name;
  bool static_path;  ///< --bits 8 (W8A8 / W8A16 QDQ)
  bool weight_only;  ///< --bits below 8
};
constexpr PathOption kPathOptions[] = {
    {"--method", true, false},           {"--percentile", true, false},       {"--ranges", true, false},
    {"--per-tensor", true, false},       {"--activation-type", true, false},  {"--activation-bits", true, false},
    {"--exclude-op-types", true, false}, {"--op-types", true, false},         {"--keep-fp", true, false},
    {"--cle", true, false},              {"--cle-relu6", true, false},        {"--bias-correction", true, false},
    {"--no-bias-correction", true, false}, {"--min-sqnr", true, false},       {"--min-agreement", true, false},
    {"--force", true, true},             {"--reduce-range", true, false},     {"--max-nll-increase", true, false},
    {"--metric", true, false},
    {"--block-size", false, true},       {"--weight-algorithm", false, true}, {"--gptq-act-order", false, true},
    {"--gptq-damp", false, true},        {"--asymmetric", false, true},       {"--outlier-fraction", false, true},
    {"--symmetric", false, true},
    {"--bits-first-last", false, true},  {"--layer-bits", false, true},       {"--scale-type", false, true},
    {"--bits-depthwise", false, true},   {"--tune-steps", false, true},       {"--tune-batch", false, true},
    {"--tune-lr", false, true},          {"--tune-scale-lr", false, true},    {"--tune-float-lr", false, true},
    {"--tune-loss", false, true},        {"--tune-holdout", false, true},     {"--tune-eval-every", false, true},
    {"--tune-augment", false, true},     {"--tune-features", false, true},    {"--tune-stages", false, true},
    {"--tune-quant-noise", false, true}, {"--tune-range", false, true},       {"--tune-mixup", false, true},
    {"--no-tune-weights", false, true},  {"--no-tune-scales", false, true},   {"--no-tune-float", false, true},
    {"--plan", true, true},              {"--plan-out", true, true},
};

}  // namespace

void check_path_options(const CLI::App& cmd, bool static_path, const std::string& bits) {
  for (const PathOption& o : kPathOptions) {
    if (cmd.count(o.name) == 0 || (static_path ? o.static_path : o.weight_only)) continue;
    fail(ErrorCode::kConfig, "{} applies to {} quantization, not to --bits {} ({})", o.name,
         o.static_path ? "static W8A8 (--bits 8)" : "weight-only (--bits 4, 2, ternary, binary, fp8, fp4)", bits,
         static_path ? "static W8A8 QDQ" : "weight-only");
  }
}

}  // namespace qtool::cli
