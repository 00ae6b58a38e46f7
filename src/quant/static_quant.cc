// The static path's mechanics: prepare, calibrate (with CLE), emit, bias-correct (see static_quant.h).
#include "qtool/quant/static_quant.h"

#include <cmath>
#include <unordered_map>

#include <fmt/format.h>

#include "qtool/calib/calibrate.h"
#include "qtool/passes/cross_layer_equalization.h"
#include "qtool/passes/pass.h"
#include "qtool/passes/upgrade_opset.h"
#include "qtool/quant/bias_correction.h"

namespace qtool::quant {
namespace {

/// Cross-layer equalization of `model` in place; returns the action line.
std::string equalize(ir::Model& model, const StaticQuantConfig& config) {
  QTOOL_CHECK(config.ranges == nullptr, ErrorCode::kConfig,
              "cross-layer equalization rescales activations, so ranges from a file (computed on the model "
              "before equalization) no longer fit: calibrate with --calib instead of --ranges");
  passes::CleOptions co;
  co.replace_relu6 = config.cle_replace_relu6;
  const passes::CleResult cr = passes::equalize_cross_layer(model, co);
  std::string a = fmt::format("CLE: {} conv pairs equalized ({} with a depthwise conv, {} iterations)", cr.pairs,
                              cr.depthwise_pairs, cr.iterations);
  if (cr.relu6_replaced) a += fmt::format("; {} Clip(0, 6) replaced by Relu (changes the float model)", cr.relu6_replaced);
  if (cr.skipped_relu6) a += fmt::format("; {} pairs skipped: Clip(0, 6) between them is not scale-invariant", cr.skipped_relu6);
  return a;
}

/// Quantizable nodes inside If/Loop/Scan bodies of `g` and of the bodies nested in it.
size_t quantizable_in_bodies(const ir::Graph& g, bool is_body) {
  size_t n = 0;
  for (const auto& node : g.nodes()) {
    if (is_body) n += is_quantizable_op(node->op_type());
    for (const ir::Graph* body : node->subgraphs()) n += quantizable_in_bodies(*body, true);
  }
  return n;
}

/// Each graph of `a` (the main graph and every body, at any depth) -> its counterpart in `b`, a
/// clone of `a` (same nodes in the same order, same subgraph attributes).
std::unordered_map<const ir::Graph*, const ir::Graph*> twin_graphs(const ir::Graph& a, const ir::Graph& b) {
  std::unordered_map<const ir::Graph*, const ir::Graph*> out{{&a, &b}};
  if (a.nodes().size() != b.nodes().size()) return out;
  for (size_t i = 0; i < a.nodes().size(); ++i) {
    const std::vector<ir::Graph*> sa = a.nodes()[i]->subgraphs(), sb = b.nodes()[i]->subgraphs();
    for (size_t j = 0; j < sa.size() && j < sb.size(); ++j) out.merge(twin_graphs(*sa[j], *sb[j]));
  }
  return out;
}

}  // namespace

size_t prepare_model(ir::Model& model, int64_t target_opset) {
  passes::PassOptions po;
  po.target_opset = target_opset;
  return passes::run_passes(model, passes::default_quantize_pipeline(), po);
}

RangeMap ranges_for_model(const ir::Model& model, const calib::RangesFile& file) {
  RangeMap out;
  const ir::Graph& g = *model.graph;
  for (const calib::TensorRange& t : file.tensors) {
    const ir::Value* v = g.find_value(t.name);
    if (v == nullptr || v->is_initializer()) continue;
    out[v] = Range{static_cast<float>(t.range_min), static_cast<float>(t.range_max)};
  }
  return out;
}

CalibratedModel calibrate_static(const ir::Model& prepared, data::SampleSource& calib, const StaticQuantConfig& config) {
  QTOOL_CHECK(calib.size() > 0 || config.ranges != nullptr, ErrorCode::kConfig, "no calibration samples");
  CalibratedModel c{prepared.clone(), {}, {}, {}, {}};
  ir::Model& model = c.float_model;
  if (config.cle) {
    c.actions.push_back(equalize(model, config));
    for (const ir::Value* v : model.graph->initializers())
      if (const Tensor* t = v->initializer(); t && t->dtype() == DataType::kFloat && t->numel() >= 16)
        c.equalized_weights.emplace(v->name(), *t);
  }
  if (config.ranges != nullptr) {
    c.ranges = ranges_for_model(model, *config.ranges);
    c.actions.push_back(fmt::format("ranges of {} tensors read from the ranges file", c.ranges.size()));
    return c;
  }
  calib::CalibConfig cc;
  cc.method = config.method;
  cc.range.bits = dtype_bits(config.qdq.activation_type);
  cc.range.symmetric = config.qdq.activation_symmetric;
  cc.range.percentile = config.percentile;
  cc.threads = config.threads;
  cc.observe.per_channel = false;  // activations are quantized per tensor: per-channel extremes are not read
  cc.observe.subgraphs = config.qdq.subgraphs;  // values inside If/Loop/Scan bodies too
  cc.run.label = "calibrating";
  const calib::CalibrationResult cr = calib::calibrate(model, calib, cc);
  // By value, not by name: a name may repeat between sibling If branches (ranges_from_stats keeps
  // the observer's order, one range per statistic).
  const auto& stats = cr.stats->stats();
  QTOOL_CHECK(stats.size() == cr.ranges.tensors.size(), ErrorCode::kInternal, "{} statistics for {} ranges",
              stats.size(), cr.ranges.tensors.size());
  for (size_t i = 0; i < stats.size(); ++i) {
    const ir::Value* v = stats[i]->value;
    if (v == nullptr || v->is_initializer()) continue;
    const calib::TensorRange& t = cr.ranges.tensors[i];
    const Range used{static_cast<float>(t.range_min), static_cast<float>(t.range_max)};
    c.ranges[v] = used;
    // The observed extremes, where the method clipped (main-graph tensors: the guard's choices).
    const Range full{static_cast<float>(t.min), static_cast<float>(t.max)};
    if (v->owner() == model.graph.get() && std::isfinite(full.min) && std::isfinite(full.max) &&
        (full.min < used.min || full.max > used.max))
      c.observed[v] = full;
  }
  return c;
}

StaticEmission emit_static(const CalibratedModel& calibrated, const TensorChoices& choices,
                           const StaticQuantConfig& config) {
  StaticEmission e{calibrated.float_model.clone(), {}};
  QdqOptions o = config.qdq;
  o.keep_float_names.insert(choices.keep_float.begin(), choices.keep_float.end());
  // A tensor kept float whose only reader is a Relu/Clip: the emitter would otherwise quantize the
  // activation's output in its place (with the same parameters as the folded pair): it stays float too.
  for (const std::string& name : choices.keep_float)
    if (const ir::Value* v = e.model.graph->find_value(name); v && v->uses().size() == 1) {
      const ir::Node* a = v->uses()[0].node;
      if ((a->op_type() == "Relu" || a->op_type() == "Clip") && a->output(0)) o.keep_float_names.insert(a->output(0)->name());
    }
  o.wide_names.insert(choices.wide.begin(), choices.wide.end());
  o.subgraphs = o.subgraphs && !choices.float_bodies;
  e.float_bodies = choices.float_bodies;
  if (!choices.wide.empty() && e.model.opset("") < 21) {  // 16-bit QuantizeLinear needs opset 21
    passes::PassOptions po;
    po.target_opset = 21;
    passes::upgrade_opset(e.model, po);
  }
  // The ranges are keyed by the calibrated model's values: re-key them on the copy, graph by graph
  // (a body's values by name within that body).
  RangeMap r;
  const std::unordered_map<const ir::Graph*, const ir::Graph*> twin = twin_graphs(*calibrated.float_model.graph, *e.model.graph);
  for (const auto& [v, rg] : calibrated.ranges) {
    const auto it = twin.find(v->owner());
    if (it == twin.end()) continue;
    if (const ir::Value* mv = it->second->find_value(v->name())) r[mv] = rg;
  }
  // A tensor chosen for its observed range takes it, and so does a Relu/Clip reading it (the
  // emitter folds that activation into the producer, with the activation's range).
  std::unordered_map<std::string, Range> observed;
  for (const auto& [v, rg] : calibrated.observed) observed[v->name()] = rg;
  auto take_observed = [&](const ir::Value* mv) {
    const auto it = observed.find(mv->name());
    if (it != observed.end() && r.count(mv)) r[mv] = it->second;
  };
  for (const std::string& name : choices.observed) {
    const ir::Value* mv = e.model.graph->find_value(name);
    if (mv == nullptr) continue;
    take_observed(mv);
    for (const ir::Use& u : mv->uses())
      if (u.node->op_type() == "Relu" || u.node->op_type() == "Clip") take_observed(u.node->output(0));
  }
  e.qdq = emit_qdq(e.model, r, o);
  e.body_weights = quantize_body_weights(e.model, o.reduce_range);  // sweeps unread floats when it stores any
  // Bodies that quantized the weights they read from an enclosing graph leave its float copies unread.
  if (e.qdq.body_nodes > 0 && e.body_weights == 0) remove_unread_float_initializers(*e.model.graph);
  return e;
}

std::string correct_static_biases(const CalibratedModel& calibrated, ir::Model& emitted, data::SampleSource& calib,
                                  const StaticQuantConfig& config, const std::string& what) {
  if (!config.bias_correction) return "";
  BiasCorrectionOptions bo;
  bo.max_samples = config.bias_correction_samples;
  bo.threads = config.threads;
  bo.cache = calibrated.bias_cache.get();
  const BiasCorrectionResult br = correct_biases(calibrated.float_model, emitted, calib, bo);
  if (br.layers.empty())
    return fmt::format("bias correction{}: no layer to correct{}", what,
                       br.skipped.empty() ? "" : fmt::format(" ({} skipped, e.g. {})", br.skipped.size(), br.skipped.front()));
  return fmt::format(
      "bias correction{}: {} layers corrected on {} calibration samples{} (mean |bias error| {:.2f}% of mean |output|){}",
      what, br.layers.size(), br.samples,
      br.reused > 0 ? fmt::format(" ({} of them unchanged since measured)", br.reused) : "",
      br.mean_relative_error_percent(),
      br.skipped.empty() ? "" : fmt::format(", {} skipped ({})", br.skipped.size(), br.skipped.front()));
}

std::string subgraph_note(const StaticEmission& emission) {
  const size_t n = quantizable_in_bodies(*emission.model.graph, false);
  if (n == 0) return "";
  if (emission.qdq.body_activations > 0)
    return fmt::format("{} quantizable nodes inside If/Loop/Scan bodies: {} quantized, with {} activations calibrated "
                       "inside the bodies{}",
                       n, emission.qdq.body_nodes, emission.qdq.body_activations,
                       emission.body_weights > 0 ? fmt::format("; {} more weights stored as int8", emission.body_weights) : "");
  return fmt::format("{} quantizable nodes inside If/Loop/Scan bodies: {} weights stored as int8, activations left in "
                     "float ({})",
                     n, emission.body_weights,
                     emission.float_bodies ? "the guard's choice: quantized, they scored lower"
                                           : "no body holds a Conv, Gemm or MatMul with calibrated inputs");
}

StaticQuantResult quantize_static(ir::Model& model, data::SampleSource& samples, const StaticQuantConfig& config) {
  CalibratedModel calibrated = calibrate_static(model, samples, config);
  StaticEmission emitted = emit_static(calibrated, TensorChoices{}, config);
  StaticQuantResult result;
  result.calib_samples = static_cast<int64_t>(samples.size());
  result.actions = std::move(calibrated.actions);
  if (std::string a = correct_static_biases(calibrated, emitted.model, samples, config); !a.empty())
    result.actions.push_back(std::move(a));
  if (std::string a = subgraph_note(emitted); !a.empty()) result.actions.push_back(std::move(a));
  result.qdq = std::move(emitted.qdq);
  result.equalized_weights = std::move(calibrated.equalized_weights);
  model = std::move(emitted.model);
  return result;
}

}  // namespace qtool::quant
