// Empirical per-layer bias correction (see bias_correction.h).
#include "qtool/quant/bias_correction.h"

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string_view>
#include <thread>
#include <unordered_map>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "qtool/core/hash.h"
#include "qtool/core/simd_clones.h"
#include "qtool/runtime/executor.h"

namespace qtool::quant {
namespace {

constexpr const char* kQ = "bc_q/";  // names of the quantized copy inside a probe

bool is_qdq(const ir::Node* n) {
  return n != nullptr && n->domain().empty() &&
         (n->op_type() == "QuantizeLinear" || n->op_type() == "DequantizeLinear");
}

// The integer initializer behind a DequantizeLinear weight input, or nullptr.
const ir::Node* weight_dq(const ir::Node& n) {
  const ir::Value* w = n.input(1);
  if (w == nullptr || w->producer() == nullptr || w->producer()->op_type() != "DequantizeLinear") return nullptr;
  const ir::Value* q = w->producer()->input(0);
  if (q == nullptr || q->initializer() == nullptr || dtype_is_float(q->initializer()->dtype())) return nullptr;
  return w->producer();
}

// A float scalar/vector initializer input i of node n, or nullptr.
const Tensor* const_input(const ir::Node* n, size_t i) {
  if (n == nullptr) return nullptr;
  const ir::Value* v = n->input(i);
  return v == nullptr ? nullptr : v->initializer();
}

// A probe's sums.
struct ProbeSums {
  std::vector<double> sum;          // per channel: Σ (y_q - y)
  int64_t per_channel_count = 0;    // elements per channel accumulated so far
  double abs_sum = 0.0;             // Σ |y|
  int64_t abs_count = 0;
};

// One layer: the probe model (the quantized copy of the layer with its Q/DQ cone) and its sums.
struct Probe {
  ir::Node* qnode = nullptr;
  std::string label;
  std::unique_ptr<ir::Model> model;
  std::vector<std::string> inputs;  // FP32 value names the probe reads
  std::string reference;            // the FP32 layer's output, which the probe's output is compared with
  int64_t channels = 0;
  ProbeSums sums;
};

using ProbeKey = std::pair<uint64_t, uint64_t>;

/// Two independent 64-bit hashes of everything a probe computes from its FP32 inputs: its nodes
/// (op, domain, value names, attributes), its initializers (name, type, shape, bytes) and its
/// inputs; nullopt for a probe holding something this does not cover (a subgraph attribute).
std::optional<ProbeKey> probe_key(const ir::Model& m, uint64_t salt) {
  uint64_t h[2] = {salt ^ 0x243f6a8885a308d3ull, salt ^ 0x13198a2e03707344ull};
  auto str = [&](std::string_view v) {
    for (uint64_t& x : h) x = hash_string(v, hash_value(v.size(), x));
  };
  auto num = [&](const auto& v) {
    for (uint64_t& x : h) x = hash_value(v, x);
  };
  auto tensor = [&](const std::string& name, const Tensor& t) {
    str(name);
    num(static_cast<int>(t.dtype()));
    num(t.rank());
    for (int64_t d : t.shape()) num(d);
    if (t.dtype() == DataType::kString || !t.raw()) return false;
    for (uint64_t& x : h) x = hash_bytes(t.raw(), t.nbytes(), x);
    return true;
  };
  const ir::Graph& g = *m.graph;
  for (const ir::Value* v : g.inputs()) str(v->name());
  for (const ir::Value* v : g.initializers())
    if (!tensor(v->name(), *v->initializer())) return std::nullopt;
  for (const auto& n : g.nodes()) {
    str(n->op_type());
    str(n->domain());
    for (const ir::Value* v : n->inputs()) str(v ? v->name() : "");
    for (const ir::Value* v : n->outputs()) str(v ? v->name() : "");
    for (const ir::Attribute& a : n->attributes()) {
      if (!a.graphs.empty() || !a.tensors.empty() || !a.opaque.empty() || !a.ref_attr_name.empty()) return std::nullopt;
      str(a.name);
      num(static_cast<int>(a.type));
      num(a.f);
      num(a.i);
      str(a.s);
      num(a.floats.size());
      for (float f : a.floats) num(f);
      num(a.ints.size());
      for (int64_t i : a.ints) num(i);
      num(a.strings.size());
      for (const std::string& t : a.strings) str(t);
    }
  }
  return ProbeKey{h[0], h[1]};
}

class ProbeBuilder {
 public:
  ProbeBuilder(const ir::Model& fp32, const ir::Model& quantized) : fp32_(fp32), quantized_(quantized) {}

  // Builds the probe for quantized node `qn` and its FP32 twin `fn`; returns false (with a
  // reason) when an input cannot be fed from the FP32 run.
  bool build(ir::Node* qn, const ir::Node* fn, Probe* p, std::string* why) {
    auto m = std::make_unique<ir::Model>();
    m->ir_version = quantized_.ir_version;
    m->set_opset("", quantized_.opset(""));
    g_ = m->graph.get();
    memo_.clear();
    inputs_.clear();
    why_.clear();
    // Quantized copy: the layer with its Q/DQ cone.
    std::vector<ir::Value*> qin;
    for (ir::Value* v : qn->inputs()) qin.push_back(v ? copy_quantized(v) : nullptr);
    if (!why_.empty()) return *why = why_, false;
    ir::Node* qc = g_->add_node(qn->op_type(), qin, {std::string(kQ) + "y"}, "q", qn->domain());
    for (const ir::Attribute& a : qn->attributes()) qc->set_attr(a.clone());
    qc->output(0)->type().elem_type = DataType::kFloat;
    g_->add_output(qc->output(0));
    p->model = std::move(m);
    p->inputs = inputs_;
    p->reference = fn->output(0)->name();
    return true;
  }

 private:
  // A run-time value of the FP32 main graph that the observer reports (node output or input).
  ir::Value* feed(const std::string& name) {
    const ir::Value* f = fp32_.graph->find_value(name);
    if (f == nullptr || f->is_initializer() || (f->producer() == nullptr && !f->is_graph_input())) {
      why_ = fmt::format("input '{}' has no float twin in the FP32 model", name);
      return nullptr;
    }
    if (f->type().elem_type != DataType::kFloat && f->type().elem_type != DataType::kUndefined) {
      why_ = fmt::format("input '{}' is not float", name);
      return nullptr;
    }
    if (ir::Value* v = g_->find_value(name)) return v;
    ir::TypeInfo t = f->type();
    t.elem_type = DataType::kFloat;
    inputs_.push_back(name);
    return g_->add_input(name, t);
  }

  ir::Value* copy_init(const std::string& prefix, const ir::Value* v) {
    const std::string name = prefix + v->name();
    if (ir::Value* e = g_->find_value(name)) return e;
    ir::Value* c = g_->add_initializer(name, *v->initializer());
    c->type() = v->type();
    c->type().elem_type = v->initializer()->dtype();
    return c;
  }

  ir::Value* copy_quantized(ir::Value* v) {
    if (auto it = memo_.find(v); it != memo_.end()) return it->second;
    ir::Value* out = nullptr;
    if (v->initializer() != nullptr) {
      out = copy_init(kQ, v);
    } else if (is_qdq(v->producer()) && v->producer()->owner() == quantized_.graph.get()) {
      const ir::Node* p = v->producer();
      std::vector<ir::Value*> in;
      for (ir::Value* i : p->inputs()) in.push_back(i ? copy_quantized(i) : nullptr);
      if (!why_.empty()) return nullptr;
      ir::Node* c = g_->add_node(p->op_type(), in, {kQ + v->name()}, "", p->domain());
      for (const ir::Attribute& a : p->attributes()) c->set_attr(a.clone());
      c->output(0)->type() = v->type();
      out = c->output(0);
    } else {
      out = feed(v->name());
    }
    memo_[v] = out;
    return out;
  }

  const ir::Model& fp32_;
  const ir::Model& quantized_;
  ir::Graph* g_ = nullptr;
  std::unordered_map<const ir::Value*, ir::Value*> memo_;
  std::vector<std::string> inputs_;
  std::string why_;
};

/// Σ (a - b) and Σ |b| over n values, in double, four lanes (one AVX2 register where the CPU has it).
QTOOL_SIMD_CLONES void difference_sums(const float* a, const float* b, int64_t n, double* diff, double* abs_b) {
  typedef float Float4 __attribute__((vector_size(16)));
  typedef double Double4 __attribute__((vector_size(32)));
  Double4 d = {}, m = {};
  int64_t k = 0;
  for (; k + 4 <= n; k += 4) {
    Float4 fa, fb;
    std::memcpy(&fa, a + k, sizeof fa);
    std::memcpy(&fb, b + k, sizeof fb);
    const Double4 da = __builtin_convertvector(fa, Double4), db = __builtin_convertvector(fb, Double4);
    d += da - db;
    m += db < 0 ? -db : db;
  }
  double s = (d[0] + d[1]) + (d[2] + d[3]), t = (m[0] + m[1]) + (m[2] + m[3]);
  for (; k < n; ++k) {
    s += static_cast<double>(a[k]) - b[k];
    t += std::fabs(static_cast<double>(b[k]));
  }
  *diff = s;
  *abs_b = t;
}

/// One sample's terms of one probe, in the order they are added to its ProbeSums: per row o of the
/// output and channel c, Σ_k (y_q - y) and Σ_k |y| over the channel's `inner` values.
struct SampleTerms {
  Probe* probe = nullptr;
  std::vector<double> diff, abs;  // [outer * channels]
  int64_t outer = 0, inner = 0, count = 0;

  /// Adds the terms to the probe's sums in the order one pass over the samples would.
  void commit() const {
    ProbeSums& s = probe->sums;
    const int64_t c = probe->channels;
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t ch = 0; ch < c; ++ch) {
        s.sum[ch] += diff[o * c + ch];
        s.abs_sum += abs[o * c + ch];
      }
    s.per_channel_count += outer * inner;
    s.abs_count += count;
  }
};

/// Feeds each probe the FP32 values it reads (and its reference, the FP32 layer's output) as one
/// worker's reference run produces them; a probe whose values are all there is queued, and
/// run_queue() runs the queue on the worker's thread with the worker's own probe executors.
class ProbeObserver final : public runtime::Observer {
 public:
  explicit ProbeObserver(const std::vector<Probe*>& probes) : probes_(probes), missing_(probes.size()) {
    for (size_t i = 0; i < probes_.size(); ++i) {
      for (const std::string& n : probes_[i]->inputs) readers_[n].push_back(i);
      readers_[probes_[i]->reference].push_back(i);
    }
  }

  void start_sample() {
    held_.clear();
    remaining_.clear();
    queue_.clear();
    for (size_t i = 0; i < probes_.size(); ++i) missing_[i] = probes_[i]->inputs.size() + 1;  // and its reference
    for (const auto& [name, list] : readers_) remaining_[name] = list.size();
  }

  void on_value(const ir::Value& value, const Tensor& tensor) override { offer(value.name(), tensor); }

  void offer(const std::string& name, const Tensor& tensor) {
    auto it = readers_.find(name);
    if (it == readers_.end() || held_.count(name)) return;
    // Shares the executor's buffer: while held, the executor neither writes into it in place (it
    // reuses only buffers nobody else holds) nor recycles it (a pooled buffer returns to its pool
    // when its last holder lets go).
    held_.emplace(name, tensor);
    for (size_t i : it->second)
      if (--missing_[i] == 0) enqueue(i);
  }

  /// Runs the probes queued during this sample (probe i on executors[i]) and returns their terms.
  std::vector<SampleTerms> run_queue(const std::vector<std::unique_ptr<runtime::Executor>>& executors) {
    std::vector<SampleTerms> out;
    for (const Task& t : queue_) out.push_back(run_probe(*probes_[t.probe], *executors[t.probe], t.inputs, t.reference));
    queue_.clear();
    return out;
  }

 private:
  struct Task {
    size_t probe;
    std::map<std::string, Tensor> inputs;
    Tensor reference;
  };

  void enqueue(size_t i) {
    const Probe& p = *probes_[i];
    Task t{i, {}, held_.at(p.reference)};
    for (const std::string& n : p.inputs) t.inputs.emplace(n, held_.at(n));
    queue_.push_back(std::move(t));
    std::vector<std::string> read = p.inputs;
    read.push_back(p.reference);
    for (const std::string& n : read)
      if (--remaining_[n] == 0) held_.erase(n);  // nobody else waits for it: the task holds its copy
  }

  static SampleTerms run_probe(Probe& p, runtime::Executor& exec, const std::map<std::string, Tensor>& in,
                               const Tensor& reference) {
    const std::vector<Tensor> out = with_context(fmt::format("bias correction probe of '{}'", p.label),
                                                 [&] { return exec.run(in); });
    const Tensor yq = out.at(0).to_float(), yf = reference.to_float();
    QTOOL_CHECK(yq.shape() == yf.shape() && yq.rank() >= 2 && yq.dim(1) == p.channels, ErrorCode::kInternal,
                "bias correction: layer '{}' gave outputs {} and {} (expected {} channels on axis 1)", p.label,
                shape_str(yq.shape()), shape_str(yf.shape()), p.channels);
    SampleTerms t;
    t.probe = &p;
    const int64_t c = p.channels;
    t.outer = yq.dim(0);
    t.inner = yq.numel() / std::max<int64_t>(1, t.outer * c);
    t.count = yq.numel();
    t.diff.resize(static_cast<size_t>(t.outer * c));
    t.abs.resize(static_cast<size_t>(t.outer * c));
    const float* a = yq.data<float>();
    const float* b = yf.data<float>();
    for (int64_t o = 0; o < t.outer; ++o)
      for (int64_t ch = 0; ch < c; ++ch) {
        const int64_t base = (o * c + ch) * t.inner;
        difference_sums(a + base, b + base, t.inner, &t.diff[o * c + ch], &t.abs[o * c + ch]);
      }
    return t;
  }

  const std::vector<Probe*>& probes_;
  std::vector<size_t> missing_;  // per probe: values not yet seen in the current sample
  std::unordered_map<std::string, std::vector<size_t>> readers_;
  std::unordered_map<std::string, Tensor> held_;
  std::unordered_map<std::string, size_t> remaining_;
  std::vector<Task> queue_;
};

ir::Value* add_init(ir::Graph& g, const std::string& base, Tensor t) {
  const DataType dt = t.dtype();
  ir::Value* v = g.add_initializer(g.unique_name(base), std::move(t));
  v->type().elem_type = dt;
  return v;
}

// b'_c = b_c - e_c on the layer's bias (see the header comment). Returns false with a reason.
bool apply_correction(ir::Graph& g, ir::Node* n, const std::vector<double>& e, bool* added, std::string* why) {
  const int64_t c = static_cast<int64_t>(e.size());
  const std::string base = n->name().empty() ? n->output(0)->name() : n->name();
  ir::Value* b = n->input(2);
  *added = false;
  if (b != nullptr && b->producer() != nullptr && b->producer()->op_type() == "DequantizeLinear") {
    ir::Node* dq = b->producer();
    const ir::Value* qv = dq->input(0);
    const Tensor* q = qv ? qv->initializer() : nullptr;
    const Tensor* s = const_input(dq, 1);
    if (q == nullptr || q->dtype() != DataType::kInt32 || q->numel() != c || s == nullptr ||
        (s->numel() != 1 && s->numel() != c) || b->uses().size() != 1) {
      *why = "its bias is not a per-layer int32 DequantizeLinear";
      return false;
    }
    Tensor nq = q->clone();
    int32_t* d = nq.mutable_data<int32_t>();
    for (int64_t k = 0; k < c; ++k) {
      const double step = s->get_as_double(s->numel() == 1 ? 0 : k);
      if (!(step > 0)) continue;
      const double v = std::nearbyint(static_cast<double>(d[k]) - e[k] / step);
      d[k] = static_cast<int32_t>(std::clamp(v, -2147483648.0, 2147483647.0));
    }
    dq->set_input(0, add_init(g, qv->name() + "_bc", std::move(nq)));
    return true;
  }
  if (b != nullptr) {
    const Tensor* t = b->initializer();
    if (t == nullptr || t->dtype() != DataType::kFloat || (t->numel() != c && t->numel() != 1)) {
      *why = "its bias is not a constant float vector";
      return false;
    }
    const double beta = n->op_type() == "Gemm" ? n->attr_float("beta", 1.0f) : 1.0;
    if (beta == 0.0) {
      *why = "Gemm beta = 0";
      return false;
    }
    std::vector<float> nb(c);
    for (int64_t k = 0; k < c; ++k) nb[k] = static_cast<float>(t->get_as_double(t->numel() == 1 ? 0 : k) - e[k] / beta);
    Shape shape = t->numel() == c ? t->shape() : Shape{c};
    n->set_input(2, add_init(g, b->name() + "_bc", Tensor::from_vector<float>(shape, nb)));
    return true;
  }
  // No bias: add one, int32 when both scales are known constants.
  if (n->op_type() == "Gemm" && n->attr_float("beta", 1.0f) != 1.0f) n->set_attr(ir::Attribute::make_float("beta", 1.0f));
  const ir::Value* x = n->input(0);
  const ir::Node* xdq = x ? x->producer() : nullptr;
  const Tensor* sx = (xdq && xdq->op_type() == "DequantizeLinear") ? const_input(xdq, 1) : nullptr;
  const Tensor* sw = weight_dq(*n) ? const_input(weight_dq(*n), 1) : nullptr;
  if (n->inputs().size() < 3) n->set_input(2, nullptr);
  if (sx && sx->numel() == 1 && sw && (sw->numel() == 1 || sw->numel() == c) && sw->dtype() == DataType::kFloat) {
    std::vector<float> scales(c);
    std::vector<int32_t> q(c);
    for (int64_t k = 0; k < c; ++k) {
      scales[k] = static_cast<float>(sx->get_as_double(0) * sw->get_as_double(sw->numel() == 1 ? 0 : k));
      const double v = scales[k] > 0 ? std::nearbyint(-e[k] / scales[k]) : 0.0;
      q[k] = static_cast<int32_t>(std::clamp(v, -2147483648.0, 2147483647.0));
    }
    ir::Value* qv = add_init(g, base + "_bias_bc_quantized", Tensor::from_vector<int32_t>({c}, q));
    ir::Value* sv = add_init(g, base + "_bias_bc_scale", Tensor::from_vector<float>({c}, scales));
    ir::Node* dq = g.add_node("DequantizeLinear", {qv, sv}, {g.unique_name(base + "_bias_bc_DequantizeLinear_Output")},
                              g.unique_name(base + "_bias_bc_DequantizeLinear"));
    dq->set_attr(ir::Attribute::make_int("axis", 0));
    dq->output(0)->type().elem_type = DataType::kFloat;
    n->set_input(2, dq->output(0));
  } else {
    std::vector<float> nb(c);
    for (int64_t k = 0; k < c; ++k) nb[k] = static_cast<float>(-e[k]);
    n->set_input(2, add_init(g, base + "_bias_bc", Tensor::from_vector<float>({c}, nb)));
  }
  *added = true;
  return true;
}

}  // namespace

struct BiasCorrectionCache {
  std::map<ProbeKey, ProbeSums> sums;
  /// The samples loaded, up to 128 MB: a second call (the guard's round) does not decode them again.
  data::SampleMemo samples{size_t{128} << 20};
};

namespace {

/// Runs the FP32 model on `use` samples spread evenly over the source, each probe on its layer's
/// FP32 inputs, and adds the terms to the probes' sums. Samples run side by side on up to
/// options.threads workers (each with its own single-threaded reference and probe executors); a
/// sample's terms are committed in sample order, so every sum is what one worker would add, bit
/// for bit, whatever the thread count.
void run_probes(const ir::Model& fp32, data::SampleSource& samples, size_t n, size_t use,
                const std::vector<Probe*>& probes, const BiasCorrectionOptions& options) {
  if (probes.empty()) return;
  const size_t workers = std::min<size_t>(std::max(options.threads, 1), use);
  runtime::ExecutorOptions eo;
  eo.threads = 1;
  std::mutex load_mutex, commit_mutex;
  std::condition_variable committed;
  size_t next_commit = 0;
  size_t stop_at = use;  // samples from here on are not run (lowered to a failing sample's index)
  std::vector<std::exception_ptr> errors(workers);
  std::vector<size_t> failed_at(workers, use);
  auto work = [&](size_t w) {
    size_t k = w;
    try {
      runtime::Executor ref(fp32, eo);
      std::vector<std::unique_ptr<runtime::Executor>> execs;
      for (Probe* p : probes)
        execs.push_back(with_context(fmt::format("bias correction probe of '{}'", p->label),
                                     [&] { return std::make_unique<runtime::Executor>(*p->model, eo); }));
      ProbeObserver obs(probes);
      for (; k < use; k += workers) {
        const size_t idx = k * n / use;  // spread evenly over the source
        {
          std::lock_guard<std::mutex> lock(commit_mutex);
          if (k >= stop_at) return;
        }
        data::Sample s;
        {
          std::lock_guard<std::mutex> lock(load_mutex);
          s = options.cache ? options.cache->samples.load(samples, idx) : samples.load(idx);
        }
        obs.start_sample();
        for (const auto& [name, t] : s) obs.offer(name, t);
        ref.run(s, &obs);
        const std::vector<SampleTerms> terms = obs.run_queue(execs);
        std::unique_lock<std::mutex> lock(commit_mutex);
        committed.wait(lock, [&] { return next_commit == k || k >= stop_at; });
        if (k >= stop_at) return;
        for (const SampleTerms& t : terms) t.commit();
        ++next_commit;
        committed.notify_all();
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(commit_mutex);
      errors[w] = std::current_exception();
      failed_at[w] = k;
      stop_at = std::min(stop_at, k);  // the samples before k still run: the earliest error wins
      committed.notify_all();
    }
  };
  std::vector<std::thread> pool;
  for (size_t w = 1; w < workers; ++w) pool.emplace_back(work, w);
  work(0);
  for (auto& t : pool) t.join();
  size_t first = workers;  // the error of the earliest sample, as one worker would have met it
  for (size_t w = 0; w < workers; ++w)
    if (errors[w] && (first == workers || failed_at[w] < failed_at[first])) first = w;
  if (first < workers) std::rethrow_exception(errors[first]);
}

}  // namespace

std::shared_ptr<BiasCorrectionCache> make_bias_correction_cache() { return std::make_shared<BiasCorrectionCache>(); }

double BiasCorrectionResult::mean_relative_error_percent() const {
  if (layers.empty()) return 0.0;
  double total = 0;
  for (const auto& l : layers) {
    double m = 0;
    for (double e : l.mean_error) m += std::fabs(e);
    m /= std::max<size_t>(1, l.mean_error.size());
    total += l.mean_abs_output > 0 ? m / l.mean_abs_output : 0.0;
  }
  return 100.0 * total / static_cast<double>(layers.size());
}

bool has_depthwise_conv(const ir::Model& model) {
  for (const auto& n : model.graph->nodes()) {
    if (n->op_type() != "Conv" || !n->domain().empty()) continue;
    const ir::Value* w = n->input(1);
    const Tensor* t = w ? w->initializer() : nullptr;
    const int64_t group = n->attr_int("group", 1);
    if (t && t->rank() >= 3 && group > 1 && t->dim(1) == 1 && t->dim(0) == group) return true;
  }
  return false;
}

BiasCorrectionResult correct_biases(const ir::Model& fp32, ir::Model& quantized, data::SampleSource& samples,
                                    const BiasCorrectionOptions& options) {
  BiasCorrectionResult result;
  ir::Graph& qg = *quantized.graph;
  // FP32 layers by output name.
  std::unordered_map<std::string, const ir::Node*> fp32_by_output;
  for (const auto& n : fp32.graph->nodes())
    if (n->output(0)) fp32_by_output.emplace(n->output(0)->name(), n.get());

  std::vector<Probe> probes;
  ProbeBuilder builder(fp32, quantized);
  for (ir::Node* n : qg.topo_order()) {
    if (!n->domain().empty() || (n->op_type() != "Conv" && n->op_type() != "Gemm" && n->op_type() != "MatMul")) continue;
    const ir::Node* wdq = weight_dq(*n);
    if (wdq == nullptr) continue;  // not quantized
    const std::string label = n->name().empty() ? n->output(0)->name() : n->name();
    auto skip = [&](const std::string& why) { result.skipped.push_back(fmt::format("{}: {}", label, why)); };
    if (n->op_type() == "MatMul") {
      skip("MatMul has no bias input");
      continue;
    }
    if (n->op_type() == "Gemm" && n->attr_int("transA", 0) != 0) {
      skip("Gemm with transA");
      continue;
    }
    auto it = fp32_by_output.find(n->output(0)->name());
    if (it == fp32_by_output.end() || it->second->op_type() != n->op_type()) {
      skip("no FP32 layer with the same output");
      continue;
    }
    const ir::Value* fw = it->second->input(1);
    if (fw == nullptr || fw->initializer() == nullptr || fw->initializer()->dtype() != DataType::kFloat) {
      skip("its weight is not a float constant in the FP32 model (already quantized there?)");
      continue;
    }
    const Tensor& qw = *wdq->input(0)->initializer();
    const bool trans_b = n->op_type() == "Gemm" && n->attr_int("transB", 0) != 0;
    const int64_t channels = n->op_type() == "Conv" ? qw.dim(0) : (qw.rank() == 2 ? (trans_b ? qw.dim(0) : qw.dim(1)) : 0);
    if (channels <= 0) {
      skip("weight of unexpected rank");
      continue;
    }
    Probe p;
    std::string why;
    if (!builder.build(n, it->second, &p, &why)) {
      skip(why);
      continue;
    }
    p.qnode = n;
    p.label = label;
    p.channels = channels;
    p.sums.sum.assign(channels, 0.0);
    probes.push_back(std::move(p));
  }
  if (probes.empty() || samples.size() == 0) return result;

  const size_t n = samples.size();
  const size_t use = std::min(n, std::max<size_t>(1, options.max_samples));
  // Layers measured before on the same samples (the cache) keep their sums; the others run.
  std::vector<std::optional<ProbeKey>> keys(probes.size());
  std::vector<Probe*> to_run;
  for (size_t i = 0; i < probes.size(); ++i) {
    Probe& p = probes[i];
    if (options.cache && (keys[i] = probe_key(*p.model, hash_string(p.reference, hash_value(use, hash_value(n, 0)))))) {
      const auto hit = options.cache->sums.find(*keys[i]);
      if (hit != options.cache->sums.end() && hit->second.sum.size() == p.sums.sum.size()) {
        p.sums = hit->second;
        ++result.reused;
        continue;
      }
    }
    to_run.push_back(&p);
  }
  result.samples = use;
  run_probes(fp32, samples, n, use, to_run, options);
  if (options.cache)
    for (Probe* p : to_run) {
      const size_t i = static_cast<size_t>(p - probes.data());
      if (keys[i]) options.cache->sums[*keys[i]] = p->sums;
    }

  for (Probe& p : probes) {
    if (p.sums.per_channel_count == 0) {
      result.skipped.push_back(fmt::format("{}: its inputs were never computed", p.label));
      continue;
    }
    LayerBiasCorrection l;
    l.node = p.label;
    l.mean_abs_output = p.sums.abs_count ? p.sums.abs_sum / static_cast<double>(p.sums.abs_count) : 0.0;
    for (double s : p.sums.sum) l.mean_error.push_back(s / static_cast<double>(p.sums.per_channel_count));
    std::string why;
    bool added = false;
    if (!apply_correction(qg, p.qnode, l.mean_error, &added, &why)) {
      result.skipped.push_back(fmt::format("{}: {}", p.label, why));
      continue;
    }
    l.bias_added = added;
    result.layers.push_back(std::move(l));
  }
  qg.eliminate_dead_nodes();
  qg.topo_sort();
  spdlog::info("bias correction: {} layers corrected on {} samples (mean |error| {:.3f}% of mean |output|), {} skipped",
               result.layers.size(), result.samples, result.mean_relative_error_percent(), result.skipped.size());
  return result;
}

}  // namespace qtool::quant
