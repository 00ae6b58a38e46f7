// AWQ: per-input-channel scales s searched for each group of low-bit MatMul/Gemm layers sharing an
// input (the output error through H, awq.h), applied to the group's W and their 1/s folded into
// the graph (a norm weight, a previous MatMul's output channels, or an inserted Mul); then each
// layer is rounded with the clipping that minimizes its output error (AWQ's auto_clip).
#include <fmt/format.h>

#include "../lowbit_internal.h"
#include "qtool/quant/awq.h"
#include "qtool/quant/weight_algorithms.h"

namespace qtool::quant {
namespace detail {

void awq_prepass(ir::Graph& g, std::vector<Target>& targets, const std::unordered_map<const ir::Value*, InputStats>& stats,
                 const WeightOnlyConfig& cfg, std::unordered_map<const ir::Value*, std::vector<float>>& scales,
                 std::unordered_map<const Target*, std::string>& where) {
  std::vector<ir::Value*> inputs_in_order;
  std::unordered_map<ir::Value*, std::vector<Target*>> groups;
  for (Target& t : targets) {
    if (!t.format || !t.input || t.format->bits >= 8 || !stats.count(t.input)) continue;
    if (t.kind == Kind::kConv) continue;  // AWQ folds along the last axis: MatMul/Gemm only
    if (!groups.count(t.input)) inputs_in_order.push_back(t.input);
    groups[t.input].push_back(&t);
  }
  for (ir::Value* x : inputs_in_order) {
    const std::vector<Target*>& grp = groups[x];
    const InputStats& st = stats.at(x);
    if (st.hessian.samples() == 0) continue;
    std::vector<AwqMatrix> mats;
    for (Target* t : grp) mats.push_back({t->w, t->rows});
    QuantSpec spec = QuantSpec::from_format(*grp.front()->format);
    spec.clip_steps = cfg.clip_steps;
    spec.fp16_scale = wants_fp16_scales(cfg, *grp.front()->format);
    const AwqResult res = awq_search_hessian(mats, st.k, st.hessian.hessian(), st.mean_abs(), spec, cfg.awq);
    if (res.alpha == 0.0) continue;  // plain RTN was best: nothing to fold
    for (Target* t : grp) scale_columns(t->w, t->rows, t->cols, res.scales);
    std::string folded;
    fold_awq_scales(g, x, grp, res.scales, targets, &folded);
    for (Target* t : grp) where[t] = fmt::format("AWQ alpha {:.2f} ({})", res.alpha, folded);
    scales[x] = res.scales;
  }
}

namespace {

QuantizedMatrix quantize_awq_layer(const LayerJob& job, std::string* label) {
  if (!job.have_hessian || !job.cfg.awq.output_clip) return quantize_rtn_layer(job, label);
  *label = "rtn-output-clip";
  return quantize_rtn_hessian(job.t.w, job.t.rows, job.t.cols, job.spec, input_hessian(job));
}

}  // namespace
}  // namespace detail

void register_awq(std::vector<WeightAlgorithmInfo>& algorithms) {
  algorithms.push_back({WeightAlgorithm::kAwq, "awq", "activation-aware channel scales, output-error clipping", true,
                        true, false, detail::quantize_awq_layer});
}

}  // namespace qtool::quant
