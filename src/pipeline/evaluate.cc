// Evaluation and per-layer records of the quantize job (internal.h).
#include <cmath>
#include <filesystem>
#include <limits>
#include <memory>

#include "internal.h"
#include "qtool/report/compare.h"

namespace qtool::pipeline::detail {

bool has_subgraphs(const ir::Graph& g) {
  for (const auto& n : g.nodes())
    if (!n->subgraphs().empty()) return true;
  return false;
}

int64_t file_size(const std::string& p) {
  std::error_code ec;
  const auto s = std::filesystem::file_size(p, ec);
  return ec ? 0 : static_cast<int64_t>(s);
}

report::SampleProvider sample_provider(data::SampleSource& source) {
  auto next = std::make_shared<size_t>(0);
  return [&source, next](report::CompareSample& s) {
    if (*next >= source.size()) return false;
    s.inputs = source.load(*next);
    s.name = source.describe(*next);
    ++*next;
    return true;
  };
}

QualityFloor floor_of(const QuantizeJob& job) {
  QualityFloor f{job.floor_sqnr_db, job.floor_agreement, std::min(QualityFloor{}.min_classifier_sqnr_db, job.floor_sqnr_db),
                 job.floor_lm_nll_increase, job.floor_metric};
  f.min_mask_iou = job.floor_mask_iou;
  return f;
}

namespace {

/// Each layer's output SQNR from a comparison with per-layer drift (matched by the node that
/// produces the layer's output in the quantized model).
void fill_layer_sqnr(report::QuantizeReport& rep, const report::CompareResult& result) {
  rep.layer_samples = result.samples;
  for (auto& l : rep.layers)
    for (const auto& d : result.layers)
      if (d.node == l.node) l.output_sqnr_db = d.error.sqnr_db();
}

}  // namespace

report::CompareResult evaluate_into(report::QuantizeReport& rep, const ir::Model& fp32, const ir::Model& quantized,
                                    data::SampleSource& held_out, int threads) {
  report::CompareOptions options;
  options.threads = threads;
  report::CompareResult result = report::compare_models(fp32, quantized, sample_provider(held_out), options);
  rep.outputs = report::to_output_quality(result);
  rep.eval_samples = result.samples;
  fill_layer_sqnr(rep, result);
  return result;
}

void evaluate_layers_into(report::QuantizeReport& rep, const ir::Model& fp32, const ir::Model& quantized,
                          data::SampleSource& held_out, int threads, size_t max_samples) {
  report::CompareOptions options;
  options.threads = threads;
  options.max_samples = static_cast<int64_t>(max_samples);
  fill_layer_sqnr(rep, report::compare_models(fp32, quantized, sample_provider(held_out), options));
}

/// The float weights of a model by name (Tensor copies share their buffers, so this is cheap),
/// kept to measure the weight error of the static pipeline after it rewrote the model.
std::map<std::string, Tensor> float_weights(const ir::Model& model) {
  std::map<std::string, Tensor> out;
  for (const ir::Value* v : model.graph->initializers()) {
    const Tensor* t = v->initializer();
    if (t && t->dtype() == DataType::kFloat && t->numel() >= 16) out.emplace(v->name(), *t);
  }
  return out;
}

/// Weight SQNR (dB) of each layer stored as DequantizeLinear(integer initializer, scale[, zero
/// point]) with per-tensor or per-axis scales: dequantizes w' = (q - z)·s and compares it with the
/// FP32 initializer it came from (same name, or the name without the "_quantized" suffix):
/// 10·log10(Σw² / Σ(w - w')²). Layers it cannot match (blocked scales, renamed weights) stay NaN.
void fill_weight_sqnr(report::QuantizeReport& rep, const ir::Model& quantized,
                      const std::map<std::string, Tensor>& fp32) {
  for (const auto& n : quantized.graph->nodes()) {
    if (n->op_type() != "DequantizeLinear" || n->attr_int("block_size", 0) != 0) continue;
    const ir::Value* qv = n->input(0);
    // W4A8: the levels behind the Cast(to=int8) that reads the packed int4 initializer.
    if (qv && !qv->initializer() && qv->producer() && qv->producer()->op_type() == "Cast") qv = qv->producer()->input(0);
    const ir::Value* sv = n->input(1);
    const ir::Value* zv = n->input(2);
    if (!qv || !sv || !qv->initializer() || !sv->initializer() || (zv && !zv->initializer())) continue;
    const Tensor& q = *qv->initializer();
    const Tensor& scale = *sv->initializer();
    if (q.dtype() == DataType::kFloat || q.dtype() == DataType::kInt32) continue;  // biases are int32
    std::string name = qv->name();
    auto it = fp32.find(name);
    if (it == fp32.end() && name.ends_with("_quantized")) it = fp32.find(name.substr(0, name.size() - 10));
    if (it == fp32.end() || it->second.numel() != q.numel()) continue;
    const Tensor& w = it->second;
    const int64_t rank = static_cast<int64_t>(q.shape().size());
    int64_t axis = n->attr_int("axis", 1);
    if (axis < 0) axis += rank;
    int64_t inner = 1, channels = 1;
    if (scale.numel() > 1) {
      if (axis < 0 || axis >= rank || q.shape()[axis] != scale.numel()) continue;
      channels = scale.numel();
      for (int64_t d = axis + 1; d < rank; ++d) inner *= q.shape()[d];
    }
    double sum_ww = 0.0, sum_ee = 0.0;
    for (int64_t i = 0; i < q.numel(); ++i) {
      const int64_t c = channels > 1 ? (i / inner) % channels : 0;
      const double z = zv ? zv->initializer()->get_as_double(zv->initializer()->numel() > 1 ? c : 0) : 0.0;
      const double dq = (q.get_as_double(i) - z) * scale.get_as_double(c);
      const double wi = w.get_as_double(i);
      sum_ww += wi * wi;
      sum_ee += (wi - dq) * (wi - dq);
    }
    for (auto& l : rep.layers) {
      if (l.weight != qv->name() || !std::isnan(l.weight_sqnr_db)) continue;
      l.weight_sqnr_db = sum_ee > 0.0 ? 10.0 * std::log10(sum_ww / sum_ee) : std::numeric_limits<double>::infinity();
    }
  }
}

/// Weight SQNR in dB from a relative MSE ‖W - Q‖² / ‖W‖² (10·log10(1 / rel_mse)).
double sqnr_from_rel_mse(double rel_mse) {
  if (!(rel_mse >= 0.0)) return report::kNotMeasured;
  return rel_mse > 0.0 ? -10.0 * std::log10(rel_mse) : std::numeric_limits<double>::infinity();
}


}  // namespace qtool::pipeline::detail
