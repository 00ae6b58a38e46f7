// Per-layer and per-tensor sensitivity by simulation on the float model (pipeline/sensitivity.h).
#include "qtool/pipeline/sensitivity.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <exception>
#include <functional>
#include <limits>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include <fmt/format.h>

#include "qtool/core/strings.h"
#include "qtool/report/compare.h"
#include "qtool/runtime/executor.h"

namespace qtool::pipeline {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr int64_t kBlock = 32;  ///< int4 block along the input dimension

/// How one activation is fake-quantized.
struct ActQ {
  quant::QParams params;
  DataType type = DataType::kUint8;
};

/// One simulated model: weights replaced (by initializer name) and activations fake-quantized.
struct Job {
  std::vector<std::pair<std::string, Tensor>> weights;
  std::unordered_map<std::string, ActQ> acts;
};

/// Fake-quantizes the named activations as the executor produces them (ONNX QuantizeLinear then
/// DequantizeLinear: q = saturate(round_half_even(x / s) + z), x' = (q - z) s), inside If/Loop/Scan
/// bodies too (a name two sibling branches share: whichever runs).
class FakeQuant : public runtime::Observer {
 public:
  explicit FakeQuant(const std::unordered_map<std::string, ActQ>& acts) : acts_(acts) {}
  void on_value(const ir::Value&, const Tensor&) override {}
  bool observes_subgraphs() const override { return true; }
  bool replace(const ir::Value& value, const Tensor& t, Tensor& out) override {
    if (t.dtype() != DataType::kFloat) return false;
    const auto it = acts_.find(value.name());
    if (it == acts_.end()) return false;
    int64_t lo = 0, hi = 0;
    dtype_int_range(it->second.type, &lo, &hi);
    const float s = it->second.params.scale;
    const double z = it->second.params.zero_point;
    out = Tensor(DataType::kFloat, t.shape());
    const float* x = t.data<float>();
    float* y = out.mutable_data<float>();
    for (int64_t i = 0; i < t.numel(); ++i) {
      const double q = std::clamp(std::nearbyint(static_cast<double>(x[i] / s)) + z, double(lo), double(hi));
      y[i] = static_cast<float>((q - z) * s);
    }
    return true;
  }

 private:
  const std::unordered_map<std::string, ActQ>& acts_;
};

/// The lowest output SQNR and classifier agreement of a set of comparisons.
Quality quality_of(const std::vector<report::OutputComparison>& outs) {
  Quality q{kInf, std::nan("")};
  for (const auto& o : outs) {
    double s = o.error.sqnr_db();
    if (std::isnan(s)) s = -kInf;
    const double groups = o.channel_group_sqnr_db();
    if (!std::isnan(groups)) s = std::min(s, groups);
    q.sqnr_db = std::min(q.sqnr_db, s);
    if (o.classifier && std::isnan(groups)) {
      const double a = o.classes.top1_agreement();
      if (!std::isnan(a)) q.top1_agreement = std::isnan(q.top1_agreement) ? a : std::min(q.top1_agreement, a);
    }
  }
  return q;
}

/// Every value the FP32 run of one sample computes (by value name).
class CaptureAll final : public runtime::Observer {
 public:
  explicit CaptureAll(std::unordered_map<std::string, Tensor>& values) : values_(values) {}
  void on_value(const ir::Value& value, const Tensor& tensor) override {
    bytes_ += tensor.nbytes();
    values_[value.name()] = tensor;  // shared: a held buffer is neither written in place nor recycled
  }
  size_t bytes() const { return bytes_; }

 private:
  std::unordered_map<std::string, Tensor>& values_;
  size_t bytes_ = 0;
};

/// FakeQuant that, for the nodes no fake-quantized tensor or swapped weight reaches (the `dirty`
/// set holds those that it does reach), hands the executor the FP32 values of the sample instead
/// of running them: the same values, since those nodes see exactly the FP32 run's inputs.
class FromLayerOn final : public FakeQuant {
 public:
  FromLayerOn(const std::unordered_map<std::string, ActQ>& acts, const std::unordered_set<const ir::Node*>& dirty,
              const std::unordered_map<std::string, Tensor>& values)
      : FakeQuant(acts), dirty_(dirty), values_(values) {}
  bool provide(const ir::Node& node, std::vector<Tensor>& outputs) override {
    if (dirty_.count(&node)) return false;
    for (size_t i = 0; i < node.outputs().size() && i < outputs.size(); ++i) {
      const ir::Value* v = node.outputs()[i];
      if (v == nullptr) continue;
      const auto it = values_.find(v->name());
      if (it == values_.end()) return false;
      outputs[i] = it->second;  // shares the storage: the executor never writes into a shared buffer
    }
    return true;
  }

 private:
  const std::unordered_set<const ir::Node*>& dirty_;
  const std::unordered_map<std::string, Tensor>& values_;
};

/// The main-graph nodes of `g` that a changed value among `changed` reaches, directly or through
/// a value read inside an If/Loop/Scan body (the node holding the body is reached); a changed
/// value computed inside a body (by name, in every body that has it) reaches its holder too.
std::unordered_set<const ir::Node*> reached_by(const ir::Graph& g, const std::vector<std::string>& changed) {
  std::unordered_map<const ir::Graph*, const ir::Node*> holder;  // body (at any depth) -> main-graph node
  std::unordered_map<std::string, std::vector<const ir::Value*>> in_bodies;  // body value name -> values
  std::function<void(const ir::Graph&, const ir::Node*)> index = [&](const ir::Graph& body, const ir::Node* top) {
    holder[&body] = top;
    for (const auto& n : body.nodes()) {
      for (const ir::Value* o : n->outputs())
        if (o) in_bodies[o->name()].push_back(o);
      for (const ir::Graph* sub : n->subgraphs()) index(*sub, top);
    }
  };
  for (const auto& n : g.nodes())
    for (const ir::Graph* sub : n->subgraphs()) index(*sub, n.get());
  std::unordered_set<const ir::Node*> dirty;
  std::vector<const ir::Value*> todo;
  for (const std::string& name : changed) {
    if (const ir::Value* v = g.find_value(name)) {
      todo.push_back(v);
    } else if (const auto it = in_bodies.find(name); it != in_bodies.end()) {
      for (const ir::Value* v : it->second) {
        const ir::Node* top = holder.at(v->owner());
        if (dirty.insert(top).second)
          for (const ir::Value* out : top->outputs())
            if (out) todo.push_back(out);
      }
    }
  }
  while (!todo.empty()) {
    const ir::Value* v = todo.back();
    todo.pop_back();
    for (const auto& use : v->uses()) {
      const ir::Node* n = use.node;
      if (n->owner() != &g) {
        const auto it = holder.find(n->owner());
        if (it == holder.end()) continue;
        n = it->second;
      }
      if (!dirty.insert(n).second) continue;
      for (const ir::Value* out : n->outputs())
        if (out) todo.push_back(out);
    }
  }
  return dirty;
}

/// Runs jobs on the float model against its FP32 outputs on the first samples of a source. The
/// FP32 values of every node are kept for the first samples (up to kMaxCachedBytes): a job then
/// runs only the nodes downstream of what it changes (FromLayerOn), with the same results.
class Probe {
 public:
  static constexpr size_t kMaxCachedBytes = size_t{512} << 20;

  Probe(const ir::Model& model, data::SampleSource& source, size_t samples, int threads)
      : model_(model), threads_(std::max(1, threads)) {
    runtime::ExecutorOptions eo;
    eo.threads = threads_;
    runtime::Executor ex(model, eo);
    names_ = ex.output_names();
    size_t cached = 0;
    for (size_t i = 0; i < std::min(samples, source.size()); ++i) {
      inputs_.push_back(source.load(i));
      values_.emplace_back();
      if (cached < kMaxCachedBytes) {
        CaptureAll capture(values_.back());
        ref_.push_back(ex.run(inputs_.back(), &capture));
        cached += capture.bytes();
        if (cached > kMaxCachedBytes) values_.back().clear();  // this one runs whole
      } else {
        ref_.push_back(ex.run(inputs_.back()));
      }
    }
  }

  size_t samples() const { return inputs_.size(); }
  const std::vector<std::string>& output_names() const { return names_; }

  /// The quality of each job, in order; jobs run on up to `threads` workers.
  std::vector<Quality> run(const std::vector<Job>& jobs) const {
    std::vector<Quality> result(jobs.size());
    std::atomic<size_t> next{0};
    std::exception_ptr error;
    std::mutex error_mutex;
    auto worker = [&] {
      try {
        ir::Model copy = model_.clone();  // shares the tensors; weights are swapped in the copy only
        runtime::Executor ex(copy);
        for (size_t j = next++; j < jobs.size(); j = next++) result[j] = run_one(copy, ex, jobs[j]);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
        next = jobs.size();
      }
    };
    const size_t workers = std::min<size_t>(static_cast<size_t>(threads_), jobs.size());
    std::vector<std::thread> pool;
    for (size_t w = 1; w < workers; ++w) pool.emplace_back(worker);
    if (workers > 0) worker();
    for (std::thread& t : pool) t.join();
    if (error) std::rethrow_exception(error);
    return result;
  }

 private:
  Quality run_one(ir::Model& copy, runtime::Executor& ex, const Job& job) const {
    std::vector<std::pair<ir::Value*, Tensor>> saved;
    std::vector<std::string> changed;
    for (const auto& [name, t] : job.weights) {
      ir::Value* v = copy.graph->find_value(name);
      if (v == nullptr || !v->is_initializer()) continue;
      saved.emplace_back(v, *v->initializer());
      v->set_initializer(t);  // same Tensor object: the executor reads the new values
      changed.push_back(name);
    }
    for (const auto& entry : job.acts) changed.push_back(entry.first);
    const std::unordered_set<const ir::Node*> dirty = reached_by(*copy.graph, changed);
    FakeQuant fq(job.acts);
    std::vector<report::OutputComparison> outs(names_.size());
    for (size_t k = 0; k < outs.size(); ++k) outs[k].name = names_[k];
    for (size_t i = 0; i < inputs_.size(); ++i) {
      FromLayerOn from_layer(job.acts, dirty, values_[i]);
      const std::vector<Tensor> got = ex.run(inputs_[i], values_[i].empty() ? static_cast<FakeQuant*>(&fq) : &from_layer);
      for (size_t k = 0; k < outs.size() && k < got.size(); ++k) outs[k].add(ref_[i][k], got[k]);
    }
    for (auto& [v, t] : saved) v->set_initializer(std::move(t));
    return quality_of(outs);
  }

  const ir::Model& model_;
  int threads_;
  std::vector<std::string> names_;
  std::vector<data::Sample> inputs_;
  std::vector<std::vector<Tensor>> ref_;
  std::vector<std::unordered_map<std::string, Tensor>> values_;  ///< per sample; empty: not cached
};

DataType wide_type(DataType t8) { return t8 == DataType::kInt8 ? DataType::kInt16 : DataType::kUint16; }

/// The float values a DequantizeLinear of constants stands for ((q - z) * s per slice along axis).
bool dequantize_constant(const ir::Node& dq, Tensor* out) {
  const Tensor* q = dq.input(0) ? dq.input(0)->initializer() : nullptr;
  const Tensor* s = dq.input(1) ? dq.input(1)->initializer() : nullptr;
  const Tensor* z = dq.inputs().size() > 2 && dq.input(2) ? dq.input(2)->initializer() : nullptr;
  if (q == nullptr || s == nullptr || s->dtype() != DataType::kFloat || dq.domain() != "") return false;
  const int64_t rank = q->rank();
  int64_t axis = dq.attr_int("axis", 1);
  if (axis < 0) axis += rank;
  const bool per_tensor = s->numel() == 1;
  if (!per_tensor && (axis < 0 || axis >= rank || q->shape()[axis] != s->numel())) return false;
  int64_t inner = 1;
  for (int64_t d = axis + 1; !per_tensor && d < rank; ++d) inner *= q->shape()[d];
  *out = Tensor(DataType::kFloat, q->shape());
  float* y = out->mutable_data<float>();
  for (int64_t i = 0; i < q->numel(); ++i) {
    const int64_t c = per_tensor ? 0 : (i / inner) % s->numel();
    const double zp = z ? z->get_as_double(per_tensor ? 0 : c) : 0.0;
    y[i] = static_cast<float>((q->get_as_double(i) - zp) * s->data<float>()[c]);
  }
  return true;
}

/// Symmetric int4 blocks of kBlock along the input dimension of each output channel (`axis`),
/// round to nearest, scale max|w| / 7; `bytes` gets the packed size with fp16 scales.
Tensor int4_blocks(const Tensor& w, int64_t axis, int64_t* bytes) {
  const int64_t rank = w.rank();
  if (rank == 0) axis = 0;
  const int64_t channels = rank == 0 ? 1 : w.shape()[axis];
  int64_t inner = 1;
  for (int64_t d = axis + 1; d < rank; ++d) inner *= w.shape()[d];
  const int64_t rest = channels == 0 ? 0 : w.numel() / channels;
  const int64_t blocks = (rest + kBlock - 1) / kBlock;
  auto index = [&](int64_t i, int64_t* c, int64_t* b) {
    *c = rank == 0 ? 0 : (i / inner) % channels;
    const int64_t r = (i / (inner * channels)) * inner + i % inner;  // row-major position without the axis
    *b = r / kBlock;
  };
  std::vector<float> amax(static_cast<size_t>(channels * blocks), 0.0f);
  const float* x = w.data<float>();
  for (int64_t i = 0; i < w.numel(); ++i) {
    int64_t c = 0, b = 0;
    index(i, &c, &b);
    float& m = amax[static_cast<size_t>(c * blocks + b)];
    m = std::max(m, std::fabs(x[i]));
  }
  Tensor out(DataType::kFloat, w.shape());
  float* y = out.mutable_data<float>();
  for (int64_t i = 0; i < w.numel(); ++i) {
    int64_t c = 0, b = 0;
    index(i, &c, &b);
    const float s = amax[static_cast<size_t>(c * blocks + b)] / 7.0f;
    y[i] = s > 0.0f ? std::clamp(std::nearbyint(x[i] / s), -8.0f, 7.0f) * s : 0.0f;
  }
  *bytes = (w.numel() + 1) / 2 + 2 * channels * blocks;
  return out;
}

/// A layer of the emission, with what its candidates need.
struct LayerSite {
  LayerSensitivity info;
  std::vector<std::pair<std::string, Tensor>> int8_constants;  ///< weight, bias, constant operands as stored
  Tensor weight;                                                ///< the float weight (when there is one)
  int64_t weight_axis = 0;
  int64_t channels = 1;
};

/// The layers of an emission: nodes of the float model whose counterpart (matched by first output)
/// reads a DequantizeLinear, except data movement (no constant, outputs sharing an input's parameters).
std::vector<LayerSite> find_layers(const EmissionView& view) {
  std::unordered_map<std::string, const ir::Node*> emitted;
  for (const auto& n : view.emitted->graph->nodes())
    if (n->outputs().size() > 0 && n->output(0)) emitted.emplace(n->output(0)->name(), n.get());
  const auto& params = view.qdq->activation_params;
  std::vector<LayerSite> layers;
  for (const ir::Node* n : view.float_model->graph->topo_order()) {
    if (n->outputs().empty() || n->output(0) == nullptr || !n->domain().empty()) continue;
    const auto it = emitted.find(n->output(0)->name());
    if (it == emitted.end() || it->second->op_type() != n->op_type()) continue;
    const ir::Node& e = *it->second;
    LayerSite site;
    site.info.node = n->name().empty() ? n->output(0)->name() : n->name();
    site.info.op_type = n->op_type();
    bool reads_dq = false;
    for (size_t i = 0; i < n->inputs().size() && i < e.inputs().size(); ++i) {
      const ir::Value* in = n->input(i);
      const ir::Node* p = e.input(i) ? e.input(i)->producer() : nullptr;
      reads_dq |= p != nullptr && p->op_type() == "DequantizeLinear";
      if (in == nullptr) continue;
      if (const Tensor* t = in->initializer(); t && t->dtype() == DataType::kFloat && p &&
                                               p->op_type() == "DequantizeLinear") {
        Tensor deq;
        if (!dequantize_constant(*p, &deq)) continue;
        site.int8_constants.emplace_back(in->name(), deq);
        if (site.info.weight.empty() && t->numel() >= 16 && t->rank() >= 2) {
          site.info.weight = in->name();
          site.info.weight_elements = t->numel();
          site.weight = *t;
          const Tensor* s = p->input(1)->initializer();
          int64_t axis = p->attr_int("axis", 1);
          if (axis < 0) axis += t->rank();
          site.weight_axis = s->numel() > 1 ? axis : (n->op_type() == "MatMul" ? t->rank() - 1 : 0);
          site.channels = s->numel();
        }
      } else if (params.count(in->name())) {
        site.info.activations.push_back(in->name());
      }
    }
    if (!reads_dq) continue;
    bool shares = false;
    for (const ir::Value* o : n->outputs()) {
      if (o == nullptr || !params.count(o->name())) continue;
      site.info.activations.push_back(o->name());
      const quant::QParams po = params.at(o->name());
      for (const ir::Value* in : n->inputs())
        if (in && params.count(in->name()) && params.at(in->name()).scale == po.scale &&
            params.at(in->name()).zero_point == po.zero_point)
          shares = true;
    }
    if (site.int8_constants.empty() && shares) continue;  // data movement: runs on the integers as they are
    if (site.int8_constants.empty() && site.info.activations.empty()) continue;
    std::sort(site.info.activations.begin(), site.info.activations.end());
    site.info.activations.erase(std::unique(site.info.activations.begin(), site.info.activations.end()),
                                site.info.activations.end());
    layers.push_back(std::move(site));
  }
  return layers;
}

ActQ act_at(const EmissionView& view, const std::string& name, bool wide) {
  const quant::QParams p = view.qdq->activation_params.at(name);
  if (!wide) return {p, view.activation_type};
  return {widen_params(p, view.activation_type, view.symmetric), wide_type(view.activation_type)};
}

}  // namespace

const char* layer_precision_name(LayerPrecision p) {
  switch (p) {
    case LayerPrecision::kW8A8: return "W8A8";
    case LayerPrecision::kW8A16: return "W8A16";
    case LayerPrecision::kW4A32: return "W4A32";
    case LayerPrecision::kFloat: return "float";
  }
  return "?";
}

std::vector<LayerPrecision> parse_layer_precisions(const std::string& list) {
  std::vector<LayerPrecision> out;
  for (const std::string& item : split_list(list, ',')) {
    bool found = false;
    for (LayerPrecision p : {LayerPrecision::kW8A8, LayerPrecision::kW8A16, LayerPrecision::kW4A32, LayerPrecision::kFloat})
      if (item == layer_precision_name(p)) {
        if (std::find(out.begin(), out.end(), p) == out.end()) out.push_back(p);
        found = true;
      }
    QTOOL_CHECK(found, ErrorCode::kConfig, "unknown layer precision '{}' (W8A8, W8A16, W4A32, float)", item);
  }
  QTOOL_CHECK(!out.empty(), ErrorCode::kConfig, "no layer precision given (W8A8, W8A16, W4A32, float)");
  return out;
}

const CandidateScore* LayerSensitivity::find(LayerPrecision p) const {
  for (const CandidateScore& c : candidates)
    if (c.precision == p) return &c;
  return nullptr;
}

quant::QParams widen_params(quant::QParams p, DataType type8, bool symmetric) {
  int64_t lo = 0, hi = 0;
  dtype_int_range(type8, &lo, &hi);
  const quant::Range r{static_cast<float>((lo - p.zero_point) * static_cast<double>(p.scale)),
                       static_cast<float>((hi - p.zero_point) * static_cast<double>(p.scale))};
  return quant::compute_qparams(r, wide_type(type8), symmetric);
}

SensitivityResult measure_layer_sensitivity(const EmissionView& view, data::SampleSource& held_out,
                                            const SensitivityOptions& options) {
  QTOOL_CHECK(held_out.size() > 0, ErrorCode::kConfig, "sensitivity needs held-out samples");
  std::vector<LayerSite> sites = find_layers(view);
  SensitivityResult result;
  std::vector<Job> jobs;
  std::vector<std::pair<size_t, size_t>> where;  // (layer, candidate) of each job
  for (size_t l = 0; l < sites.size(); ++l) {
    LayerSite& site = sites[l];
    for (LayerPrecision p : options.precisions) {
      CandidateScore c;
      c.precision = p;
      const int64_t n = site.info.weight_elements;
      Job job;
      switch (p) {
        case LayerPrecision::kW8A8:
        case LayerPrecision::kW8A16:
          c.bytes = n ? n + 4 * site.channels : 0;
          job.weights = site.int8_constants;
          for (const std::string& a : site.info.activations) job.acts[a] = act_at(view, a, p == LayerPrecision::kW8A16);
          break;
        case LayerPrecision::kW4A32:
          if (site.info.weight.empty()) continue;
          job.weights.emplace_back(site.info.weight, int4_blocks(site.weight, site.weight_axis, &c.bytes));
          break;
        case LayerPrecision::kFloat:
          c.bytes = 4 * n;
          c.quality.sqnr_db = kInf;  // agreement set once the model's outputs are known
          break;
      }
      if (p != LayerPrecision::kFloat) {
        where.emplace_back(l, site.info.candidates.size());
        jobs.push_back(std::move(job));
      }
      site.info.candidates.push_back(c);
    }
  }
  Job whole;  // every layer at W8A8
  for (const LayerSite& site : sites) {
    whole.weights.insert(whole.weights.end(), site.int8_constants.begin(), site.int8_constants.end());
    for (const std::string& a : site.info.activations) whole.acts[a] = act_at(view, a, false);
  }
  jobs.push_back(std::move(whole));
  const Probe probe(*view.float_model, held_out, options.samples, options.threads);
  std::vector<Quality> q = probe.run(jobs);
  jobs.pop_back();
  result.whole_model = q.back();
  q.pop_back();
  for (size_t j = 0; j < jobs.size(); ++j) sites[where[j].first].info.candidates[where[j].second].quality = q[j];
  // Float is exact: SQNR +inf, and agreement 1 where the model has a classifier output.
  const double float_agreement = std::isnan(result.whole_model.top1_agreement) ? std::nan("") : 1.0;
  for (auto& s : sites) {
    for (CandidateScore& c : s.info.candidates)
      if (c.precision == LayerPrecision::kFloat) c.quality.top1_agreement = float_agreement;
    result.layers.push_back(std::move(s.info));
  }
  std::stable_sort(result.layers.begin(), result.layers.end(), [](const LayerSensitivity& a, const LayerSensitivity& b) {
    const double sa = a.candidates.empty() ? kInf : a.candidates.front().quality.sqnr_db;
    const double sb = b.candidates.empty() ? kInf : b.candidates.front().quality.sqnr_db;
    return sa < sb;
  });
  result.outputs = probe.output_names();
  result.samples = probe.samples();
  result.runs = (jobs.size() + 1) * probe.samples();
  return result;
}

std::vector<Quality> score_alone(const ir::Model& float_model, const std::vector<FakeQuantTensor>& each,
                                 data::SampleSource& held_out, size_t samples, int threads) {
  std::vector<Job> jobs(each.size());
  for (size_t i = 0; i < each.size(); ++i) jobs[i].acts[each[i].name] = {each[i].params, each[i].type};
  const Probe probe(float_model, held_out, samples, threads);
  return probe.run(jobs);
}

std::vector<Quality> score_weight_swaps(const ir::Model& float_model, const std::vector<WeightSwap>& swaps,
                                        data::SampleSource& held_out, size_t samples, int threads) {
  std::vector<Job> jobs(swaps.size());
  for (size_t i = 0; i < swaps.size(); ++i) jobs[i].weights = swaps[i];
  const Probe probe(float_model, held_out, samples, threads);
  return probe.run(jobs);
}

DataType wide_activation_type(DataType type8) { return wide_type(type8); }

}  // namespace qtool::pipeline
