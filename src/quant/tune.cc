// Distillation tuning of a quantized model (see tune.h for the math).
#include "qtool/quant/tune.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <exception>
#include <map>
#include <random>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include <spdlog/spdlog.h>

#include "qtool/core/error.h"
#include "qtool/data/sample_source.h"
#include "qtool/quant/lowbit.h"
#include "qtool/runtime/autodiff.h"
#include "qtool/runtime/executor.h"

namespace qtool::quant {

void fake_quantize(const std::vector<float>& latent, QuantizedMatrix& q, const std::vector<float>& scales,
                   std::vector<float>& out, std::span<const uint8_t> pruned) {
  const int64_t rows = q.rows, cols = q.cols, kb = q.k_blocks(), bs = q.block_size;
  out.resize(rows * cols);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t gi = r * kb + c / bs;
      BlockGrid g = q.grids[gi];
      g.scale = scales[gi];
      const bool zero = !pruned.empty() && pruned[static_cast<size_t>(r * cols + c)];
      const int32_t l = g.quantize(zero ? 0.0f : latent[r * cols + c]);
      q.levels[r * cols + c] = l;
      out[r * cols + c] = g.dequantize(l);
    }
}

namespace {

using Clock = std::chrono::steady_clock;

/// How the loss reads one seed value.
struct LossSpec {
  const ir::Value* seed = nullptr;  ///< student value the loss is on
  std::string name;                 ///< its name (the teacher's value of the same name is the target)
  enum class Kind { kAuto, kKl, kMse } kind = Kind::kAuto;
  mutable int used = 0;             ///< after a run: 1 = KL was computed, 2 = MSE
  double weight = 1.0;              ///< factor on this term (feature terms share feature_weight)
  int64_t axis = -1;                ///< class axis (KL); -1 = decide from the shape
  bool coerce = false;              ///< classes are all dims from `axis` on (Softmax before opset 13)
};

/// Ops that only move data: a Softmax behind them still defines the logits.
bool is_data_movement(const ir::Node& n) {
  static const std::unordered_set<std::string> k = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity",
                                                    "Dropout"};
  return n.domain().empty() && k.count(n.op_type()) > 0;
}

std::vector<LossSpec> plan_losses(const ir::Model& m, const std::string& loss) {
  QTOOL_CHECK(loss == "auto" || loss == "kl" || loss == "mse", ErrorCode::kConfig,
              "--tune-loss must be auto, kl or mse (got '{}')", loss);
  std::vector<LossSpec> out;
  std::unordered_set<const ir::Value*> seen;
  for (const ir::Value* o : m.graph->outputs()) {
    if (o->type().elem_type != DataType::kFloat && o->type().elem_type != DataType::kUndefined) continue;
    LossSpec s;
    s.seed = o;
    s.kind = loss == "kl" ? LossSpec::Kind::kKl : loss == "mse" ? LossSpec::Kind::kMse : LossSpec::Kind::kAuto;
    // Look through data movement for a final Softmax: its input holds the logits.
    const ir::Value* v = o;
    while (v->producer() && is_data_movement(*v->producer()) && v->producer()->input(0)) v = v->producer()->input(0);
    const ir::Node* p = v->producer();
    if (p && p->domain().empty() && (p->op_type() == "Softmax" || p->op_type() == "LogSoftmax") && p->input(0) &&
        s.kind != LossSpec::Kind::kMse) {
      const int64_t opset = std::max<int64_t>(1, m.opset(""));
      s.seed = p->input(0);
      s.kind = LossSpec::Kind::kKl;
      s.coerce = opset < 13;
      s.axis = p->attr_int("axis", opset < 13 ? 1 : -1);
    }
    if (!seen.insert(s.seed).second) continue;
    s.name = s.seed->name();
    out.push_back(s);
  }
  QTOOL_CHECK(!out.empty(), ErrorCode::kConfig, "tuning: the model has no float output to compute a loss on");
  return out;
}

/// Geometry of a KL loss over a tensor: element (o, c, i) at (o·C + c)·inner + i.
struct KlGeometry {
  int64_t outer = 1, classes = 1, inner = 1;
};

/// Chooses the loss kind and class geometry for a concrete tensor.
bool kl_geometry(const LossSpec& s, const Shape& shape, KlGeometry* g) {
  const int64_t rank = static_cast<int64_t>(shape.size());
  if (s.kind == LossSpec::Kind::kMse || rank == 0) return false;
  int64_t axis = s.axis;
  if (s.kind == LossSpec::Kind::kAuto || axis == -1) {
    if (s.kind == LossSpec::Kind::kAuto && s.axis == -1) {
      // Classifier-like: [N, C], [N, C, 1, 1], or language-model logits [B, S, V].
      const bool nc = rank == 2 && shape[1] >= 2;
      const bool nc11 = rank == 4 && shape[1] >= 2 && shape[2] == 1 && shape[3] == 1;
      const bool lm = rank == 3 && shape[2] >= 16;
      if (!nc && !nc11 && !lm) return false;
      axis = lm ? 2 : 1;
    } else if (axis == -1) {
      axis = rank - 1;
    }
  }
  if (axis < 0) axis += rank;
  if (axis < 0 || axis >= rank) return false;
  g->outer = 1;
  for (int64_t d = 0; d < axis; ++d) g->outer *= shape[d];
  if (s.coerce) {
    g->classes = 1;
    for (int64_t d = axis; d < rank; ++d) g->classes *= shape[d];
    g->inner = 1;
  } else {
    g->classes = shape[axis];
    g->inner = 1;
    for (int64_t d = axis + 1; d < rank; ++d) g->inner *= shape[d];
  }
  return g->classes >= 2;
}

/// Loss of student value `s` against teacher value `t`, and dL/ds into `grad` (same shape).
double loss_and_grad(const LossSpec& spec, const Tensor& s, const Tensor& t, Tensor* grad) {
  QTOOL_CHECK(s.shape() == t.shape(), ErrorCode::kInternal, "tuning: '{}' has shape {} but the float model gives {}",
              spec.name, shape_str(s.shape()), shape_str(t.shape()));
  const Tensor tf = t.dtype() == DataType::kFloat ? t : t.to_float();
  const float* ps = s.data<float>();
  const float* pt = tf.data<float>();
  const int64_t n = s.numel();
  *grad = Tensor(DataType::kFloat, s.shape());
  float* g = grad->mutable_data<float>();
  KlGeometry kg;
  const bool kl = kl_geometry(spec, s.shape(), &kg);
  spec.used = kl ? 1 : 2;
  if (kl) {
    // Mean over rows of KL(softmax(t) ‖ softmax(s)); dL/ds = (softmax(s) − softmax(t)) / rows.
    const int64_t rows = kg.outer * kg.inner;
    std::vector<double> es(kg.classes), et(kg.classes);
    double total = 0;
    for (int64_t o = 0; o < kg.outer; ++o)
      for (int64_t i = 0; i < kg.inner; ++i) {
        auto at = [&](int64_t c) { return (o * kg.classes + c) * kg.inner + i; };
        double ms = -INFINITY, mt = -INFINITY;
        for (int64_t c = 0; c < kg.classes; ++c) {
          ms = std::max(ms, static_cast<double>(ps[at(c)]));
          mt = std::max(mt, static_cast<double>(pt[at(c)]));
        }
        double zs = 0, zt = 0;
        for (int64_t c = 0; c < kg.classes; ++c) {
          es[c] = std::exp(ps[at(c)] - ms);
          et[c] = std::exp(pt[at(c)] - mt);
          zs += es[c];
          zt += et[c];
        }
        const double lzs = std::log(zs), lzt = std::log(zt);
        double kl = 0;
        for (int64_t c = 0; c < kg.classes; ++c) {
          const double qt = et[c] / zt;
          const double lt = pt[at(c)] - mt - lzt, ls = ps[at(c)] - ms - lzs;
          if (qt > 0) kl += qt * (lt - ls);
          g[at(c)] = static_cast<float>((es[c] / zs - qt) / static_cast<double>(rows));
        }
        total += kl;
      }
    return total / static_cast<double>(rows);
  }
  // Squared error relative to the target's energy.
  double energy = 0;
  for (int64_t i = 0; i < n; ++i) energy += static_cast<double>(pt[i]) * pt[i];
  energy = std::max(energy, 1e-12);
  double err = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(ps[i]) - pt[i];
    err += d * d;
    g[i] = static_cast<float>(2.0 * d / energy);
  }
  return err / energy;
}

/// Captures the teacher's values of the loss seeds by name.
class NameCapture : public runtime::Observer {
 public:
  explicit NameCapture(const std::vector<LossSpec>& specs) {
    for (const LossSpec& s : specs) names_.insert(s.name);
  }
  void on_value(const ir::Value& v, const Tensor& t) override {
    if (names_.count(v.name())) values_[v.name()] = t;
  }
  std::unordered_map<std::string, Tensor>& values() { return values_; }

 private:
  std::unordered_set<std::string> names_;
  std::unordered_map<std::string, Tensor> values_;
};

/// Bilinear sample of channel plane p [h, w] at (y, x) (edge clamped).
float bilinear(const float* p, int64_t h, int64_t w, double y, double x) {
  y = std::clamp(y, 0.0, static_cast<double>(h - 1));
  x = std::clamp(x, 0.0, static_cast<double>(w - 1));
  const int64_t y0 = static_cast<int64_t>(y), x0 = static_cast<int64_t>(x);
  const int64_t y1 = std::min(y0 + 1, h - 1), x1 = std::min(x0 + 1, w - 1);
  const double fy = y - y0, fx = x - x0;
  return static_cast<float>((1 - fy) * ((1 - fx) * p[y0 * w + x0] + fx * p[y0 * w + x1]) +
                            fy * ((1 - fx) * p[y1 * w + x0] + fx * p[y1 * w + x1]));
}

bool is_image(const Tensor& t) {
  return t.dtype() == DataType::kFloat && t.rank() == 4 && t.dim(2) >= 16 && t.dim(3) >= 16;
}

/// Random horizontal flip + random resized crop of every image input of `sample` (see TuneOptions).
void augment_sample(data::Sample& sample, std::mt19937_64& rng) {
  std::uniform_real_distribution<double> u(0.0, 1.0);
  for (auto& [name, t] : sample) {
    if (!is_image(t)) continue;
    const int64_t n = t.dim(0), c = t.dim(1), h = t.dim(2), w = t.dim(3);
    const bool flip = u(rng) < 0.5;
    const double area = 0.3 + 0.7 * u(rng);
    const double aspect = std::exp(std::log(0.75) + (std::log(4.0 / 3.0) - std::log(0.75)) * u(rng));
    const double cw = std::min<double>(w, std::sqrt(area * aspect) * w), ch = std::min<double>(h, std::sqrt(area / aspect) * h);
    const double x0 = (w - cw) * u(rng), y0 = (h - ch) * u(rng);
    Tensor out(DataType::kFloat, t.shape());
    const float* src = t.data<float>();
    float* dst = out.mutable_data<float>();
    for (int64_t p = 0; p < n * c; ++p)
      for (int64_t y = 0; y < h; ++y) {
        const double sy = y0 + (y + 0.5) * ch / h - 0.5;
        for (int64_t x = 0; x < w; ++x) {
          const int64_t xo = flip ? w - 1 - x : x;
          const double sx = x0 + (xo + 0.5) * cw / w - 0.5;
          dst[(p * h + y) * w + x] = bilinear(src + p * h * w, h, w, sy, sx);
        }
      }
    t = std::move(out);
  }
}

/// x = λ·x + (1 − λ)·other on the float inputs of the same shape.
void mix_samples(data::Sample& x, const data::Sample& other, double lambda) {
  for (auto& [name, t] : x) {
    auto it = other.find(name);
    if (t.dtype() != DataType::kFloat || it == other.end() || it->second.shape() != t.shape()) continue;
    Tensor out = t.clone();
    float* d = out.mutable_data<float>();
    const Tensor o = it->second.dtype() == DataType::kFloat ? it->second : it->second.to_float();
    const float* b = o.data<float>();
    for (int64_t i = 0; i < out.numel(); ++i) d[i] = static_cast<float>(lambda * d[i] + (1 - lambda) * b[i]);
    t = std::move(out);
  }
}

/// Float vectors tuned freely: Conv/Gemm biases and per-channel Mul/Add constants.
std::vector<ir::Value*> find_float_params(ir::Model& m, const std::unordered_set<const ir::Value*>& quantized) {
  std::vector<ir::Value*> out;
  std::unordered_set<const ir::Value*> seen;
  for (ir::Node* n : m.graph->topo_order()) {
    if (!n->domain().empty()) continue;
    const std::string& op = n->op_type();
    for (size_t i = 0; i < n->inputs().size(); ++i) {
      ir::Value* v = n->input(i);
      if (!v || !v->initializer() || quantized.count(v) || seen.count(v)) continue;
      const Tensor& t = *v->initializer();
      if (t.dtype() != DataType::kFloat || t.rank() != 1 || t.numel() < 2) continue;
      bool ok = false;
      if ((op == "Conv" || op == "Gemm") && i == 2) ok = true;
      if ((op == "Mul" || op == "Add") && n->inputs().size() == 2) {
        const ir::Value* other = n->input(1 - i);
        ok = other && !other->initializer();
      }
      if (!ok) continue;
      seen.insert(v);
      out.push_back(v);
    }
  }
  return out;
}

/// Adam moments for one parameter vector.
struct Adam {
  std::vector<float> m, v;
  void init(size_t n) {
    m.assign(n, 0.0f);
    v.assign(n, 0.0f);
  }
  /// x -= lr_i · m̂/(√v̂ + ε), lr_i = lr · step_scale[i] (or lr when step_scale is empty).
  void step(std::vector<float>& x, const std::vector<float>& g, double lr, int t, const std::vector<float>* scale,
            int64_t scale_stride) {
    constexpr double b1 = 0.9, b2 = 0.999, eps = 1e-20;
    const double c1 = 1.0 - std::pow(b1, t), c2 = 1.0 - std::pow(b2, t);
    for (size_t i = 0; i < x.size(); ++i) {
      m[i] = static_cast<float>(b1 * m[i] + (1 - b1) * g[i]);
      v[i] = static_cast<float>(b2 * v[i] + (1 - b2) * static_cast<double>(g[i]) * g[i]);
      const double mh = m[i] / c1, vh = v[i] / c2;
      const double li = scale ? lr * (*scale)[i / scale_stride] : lr;
      x[i] -= static_cast<float>(li * mh / (std::sqrt(vh) + eps));
    }
  }
};

struct LayerState {
  TunableWeight* tw = nullptr;
  std::vector<float> latent;    // [rows, cols]
  std::vector<float> theta;     // [rows * kb]
  std::vector<float> s0;        // initial scales
  std::vector<float> step;      // per element lr scale: s0 of its block, laid out [rows * kb]
  std::vector<int32_t> levels0; // starting levels
  std::vector<int64_t> sidx;    // initializer element of each matrix element
  std::vector<char> unq;        // per grid: left unquantized in this step (quant noise)
  std::vector<float> latent0;   // starting latent values (for TuneOptions::latent_range)
  Adam adam_w, adam_s;
  int64_t rows = 0, cols = 0, kb = 1, bs = 1;
  std::vector<float> scales() const {
    std::vector<float> s(theta.size());
    for (size_t i = 0; i < s.size(); ++i) {
      float v = s0[i] * std::exp(theta[i]);
      if (tw->fp16_scales) v = half_to_float(float_to_half(v));
      s[i] = v;
    }
    return s;
  }
};

struct FloatState {
  ir::Value* value = nullptr;
  std::vector<float> x;
  float rms = 1.0f;
  Adam adam;
};

/// Calibration samples by index: the in-memory ones, or loaded from the source. Samples from a
/// source (decoded images, token windows) are kept once loaded, up to cache_bytes in all; beyond
/// that they are loaded again when drawn (memory stays bounded).
class SampleCache {
 public:
  SampleCache(const CalibrationInputs& calib, size_t count, size_t cache_bytes)
      : calib_(calib), cache_(calib.source ? count : 0), cache_bytes_(cache_bytes) {}

  data::Sample load(size_t i) {
    if (!calib_.source) return calib_.samples[i];
    if (!cache_[i].empty()) return cache_[i];
    data::Sample smp = calib_.source->load(i);
    size_t b = 0;
    for (const auto& [name, t] : smp) b += t.nbytes();
    if (cached_bytes_ + b <= cache_bytes_) {
      cache_[i] = smp;
      cached_bytes_ += b;
    }
    return smp;
  }

 private:
  const CalibrationInputs& calib_;
  std::vector<data::Sample> cache_;
  size_t cached_bytes_ = 0;
  size_t cache_bytes_;
};

/// Held-out samples: evenly spaced, at least one; the others train.
void split_holdout(size_t count, double holdout, std::vector<size_t>& train, std::vector<size_t>& hold) {
  const size_t n_hold = std::clamp<size_t>(static_cast<size_t>(std::ceil(holdout * static_cast<double>(count))), 1,
                                           count - 1);
  const size_t stride = count / n_hold;
  for (size_t i = 0; i < count; ++i)
    ((i % stride == stride - 1 && hold.size() < n_hold) ? hold : train).push_back(i);
}

/// Tuning state of each quantized weight (latent values, log-scales θ = 0, Adam moments); adds
/// the weights to `quantized`.
std::vector<LayerState> init_layers(std::vector<TunableWeight>& weights,
                                    std::unordered_set<const ir::Value*>& quantized) {
  std::vector<LayerState> layers(weights.size());
  for (size_t k = 0; k < weights.size(); ++k) {
    LayerState& L = layers[k];
    TunableWeight& tw = weights[k];
    QTOOL_CHECK(tw.q && tw.weight && tw.weight->initializer(), ErrorCode::kInternal, "tuning: weight {}", k);
    L.tw = &tw;
    L.rows = tw.q->rows;
    L.cols = tw.q->cols;
    L.kb = tw.q->k_blocks();
    L.bs = tw.q->block_size;
    L.latent = tw.latent;
    L.latent0 = tw.latent;
    QTOOL_CHECK(static_cast<int64_t>(L.latent.size()) == L.rows * L.cols, ErrorCode::kInternal,
                "tuning: latent of '{}'", tw.weight->name());
    L.s0.resize(tw.q->grids.size());
    for (size_t i = 0; i < L.s0.size(); ++i) L.s0[i] = tw.q->grids[i].scale;
    L.theta.assign(L.s0.size(), 0.0f);
    L.levels0 = tw.q->levels;
    L.sidx.resize(L.rows * L.cols);
    for (int64_t r = 0; r < L.rows; ++r)
      for (int64_t c = 0; c < L.cols; ++c) L.sidx[r * L.cols + c] = tw.storage_index(r, c);
    L.adam_w.init(L.latent.size());
    L.adam_s.init(L.theta.size());
    quantized.insert(tw.weight);
  }
  return layers;
}

/// Tuning state of each float vector (find_float_params), its step scaled by its initial RMS.
std::vector<FloatState> init_floats(ir::Model& student, const std::unordered_set<const ir::Value*>& quantized,
                                    TuneReport& rep) {
  std::vector<FloatState> floats;
  for (ir::Value* v : find_float_params(student, quantized)) {
    FloatState f;
    f.value = v;
    const float* d = v->initializer()->data<float>();
    f.x.assign(d, d + v->initializer()->numel());
    double ss = 0;
    for (float x : f.x) ss += static_cast<double>(x) * x;
    f.rms = static_cast<float>(std::max(std::sqrt(ss / static_cast<double>(f.x.size())), 1e-2));
    f.adam.init(f.x.size());
    rep.float_params += static_cast<int64_t>(f.x.size());
    floats.push_back(std::move(f));
  }
  return floats;
}

/// Relative-MSE terms on the outputs of `ls`' layers (weight `total` shared among them).
void feature_losses(const std::vector<LayerState>& layers, const std::vector<size_t>& ls, double total,
                    std::vector<LossSpec>& out) {
  std::vector<const ir::Value*> feats;
  std::unordered_set<const ir::Value*> seen;
  for (const LossSpec& l : out) seen.insert(l.seed);
  for (size_t k : ls)
    for (const ir::Use& u : layers[k].tw->weight->uses()) {
      const ir::Value* y = u.node->output(0);
      if (y && seen.insert(y).second) feats.push_back(y);
    }
  for (const ir::Value* y : feats) {
    LossSpec f;
    f.seed = y;
    f.name = y->name();
    f.kind = LossSpec::Kind::kMse;
    f.weight = total / static_cast<double>(feats.size());
    out.push_back(f);
  }
}

/// What every tuning stage shares: the options, the samples, the parameters and the float model.
struct TuneContext {
  TuneContext(ir::Model& student_model, const TuneOptions& options, TuneReport& report, SampleCache& sample_cache)
      : student(student_model), o(options), rep(report), samples(sample_cache) {}

  ir::Model& student;
  const TuneOptions& o;
  TuneReport& rep;
  SampleCache& samples;
  std::vector<size_t> train, hold;  ///< sample indices
  std::vector<LayerState> layers;
  std::vector<FloatState> floats;
  int workers = 1;
  std::vector<std::unique_ptr<runtime::Executor>> teachers;  ///< one per worker
};

/// Held-out losses of one stage before and after tuning, and the step whose parameters were kept.
struct StageResult {
  double before = 0, after = 0;
  int best_step = 0;
};

/// One tuning run over the parameters of layers `act` and float vectors `actf`, on `losses`.
/// Every layer's current fake-quantized weight is installed in the tape; only the active ones move.
/// The stage keeps references to its arguments (run() records in `losses` which loss each term used).
class StageRun {
 public:
  StageRun(TuneContext& tc, const std::vector<size_t>& act, const std::vector<size_t>& actf,
           const std::vector<LossSpec>& losses, int steps);
  /// Runs the steps and leaves the parameters at the best held-out loss; `what` names the stage in logs.
  StageResult run(const std::string& what);

 private:
  void install(int step);
  std::vector<data::Sample> load_samples(const std::vector<size_t>& idx, int step);
  double run_sample(int w, const data::Sample& sample, std::vector<Tensor>* param_grads);
  void run_samples(const std::vector<size_t>& idx, int step, bool grads, std::vector<double>& sample_loss,
                   std::vector<std::vector<Tensor>>& sample_grads);
  double holdout_loss();
  std::vector<size_t> next_batch();
  void step_layer(size_t a, const std::vector<std::vector<Tensor>>& sg, size_t batch_size, double inv, int step,
                  double cosf);
  void step_float(size_t a, const std::vector<std::vector<Tensor>>& sg, size_t batch_size, double inv, int step,
                  double cosf);
  void snapshot();
  void restore_best();

  TuneContext& tc_;
  const std::vector<size_t>& act_;
  const std::vector<size_t>& actf_;
  const std::vector<LossSpec>& losses_;
  const int steps_;
  std::vector<std::unique_ptr<runtime::Autodiff>> ads_;  ///< one per worker
  std::vector<char> is_active_;                          ///< per layer
  /// Best snapshot of the active parameters.
  struct Snapshot {
    std::vector<std::vector<float>> latent, theta, floats;
  } best_;
  // Fixed-seed shuffled epochs (Fisher-Yates on mt19937_64: the same order on every platform).
  std::mt19937_64 rng_;
  std::vector<size_t> order_;
  size_t cursor_ = 0;
};

StageRun::StageRun(TuneContext& tc, const std::vector<size_t>& act, const std::vector<size_t>& actf,
                   const std::vector<LossSpec>& losses, int steps)
    : tc_(tc), act_(act), actf_(actf), losses_(losses), steps_(steps), rng_(tc.o.seed) {
  std::vector<const ir::Value*> wrt, seeds;
  for (size_t k : act) wrt.push_back(tc.layers[k].tw->weight);
  for (size_t k : actf) wrt.push_back(tc.floats[k].value);
  for (const LossSpec& l : losses) seeds.push_back(l.seed);
  for (int w = 0; w < tc.workers; ++w) ads_.push_back(std::make_unique<runtime::Autodiff>(tc.student, wrt, seeds));
  is_active_.assign(tc.layers.size(), 0);
  for (size_t k : act) is_active_[k] = 1;
}

StageResult StageRun::run(const std::string& what) {
  const TuneOptions& o = tc_.o;
  TuneReport& rep = tc_.rep;
  StageResult res;
  install(0);
  res.before = holdout_loss();
  double best_loss = res.before;
  snapshot();
  spdlog::info("tuning{}: {} steps, batch {}, {} train / {} held-out samples, {} quantized weights, {} float "
               "vectors; held-out loss {:.6g}",
               what, steps_, o.batch, tc_.train.size(), tc_.hold.size(), act_.size(), actf_.size(), res.before);
  const double pi = std::acos(-1.0);
  std::vector<double> sl;
  std::vector<std::vector<Tensor>> sg;
  for (int step = 1; step <= steps_; ++step) {
    const std::vector<size_t> batch = next_batch();
    install(step);
    run_samples(batch, step, true, sl, sg);
    double bl = 0;
    for (double v : sl) bl += v;
    bl /= static_cast<double>(batch.size());
    if (rep.steps == 0 && step == 1) rep.train_first = bl;
    rep.train_last = bl;
    // Mean gradient over the batch, summed in sample order (independent of the thread count).
    const double inv = 1.0 / static_cast<double>(batch.size());
    const double cosf = 0.5 * (1.0 + std::cos(pi * (step - 1) / steps_));
    for (size_t a = 0; a < act_.size(); ++a) step_layer(a, sg, batch.size(), inv, step, cosf);
    for (size_t a = 0; a < actf_.size(); ++a) step_float(a, sg, batch.size(), inv, step, cosf);
    if (step % o.eval_every == 0 || step == steps_) {
      install(0);
      const double hl = holdout_loss();
      spdlog::info("tuning{}: step {}/{}: train loss {:.6g}, held-out loss {:.6g}", what, step, steps_, bl, hl);
      if (hl < best_loss) {
        best_loss = hl;
        res.best_step = step;
        snapshot();
      }
    }
  }
  restore_best();
  res.after = best_loss;
  rep.steps += steps_;
  return res;
}

/// Current parameters -> the tape's initializer values. step > 0: a training step, whose quant
/// noise leaves a random share of the active blocks unquantized.
void StageRun::install(int step) {
  const TuneOptions& o = tc_.o;
  std::vector<float> deq;
  const double ramp = 0.75 * steps_;
  const double p_unq = step > 0 ? o.quant_noise * std::max(0.0, 1.0 - (step - 1) / ramp) : 0.0;
  std::mt19937_64 nrng(o.seed * 0xD1B54A32D192ED03ull + static_cast<uint64_t>(step));
  std::uniform_real_distribution<double> u(0.0, 1.0);
  for (size_t k = 0; k < tc_.layers.size(); ++k) {
    LayerState& L = tc_.layers[k];
    const std::vector<float> s = L.scales();
    fake_quantize(L.latent, *L.tw->q, s, deq, L.tw->pruned);
    L.unq.assign(L.theta.size(), 0);
    if (p_unq > 0 && is_active_[k]) {
      for (auto& x : L.unq) x = u(nrng) < p_unq;
      for (int64_t r = 0; r < L.rows; ++r)
        for (int64_t c = 0; c < L.cols; ++c)
          if (L.unq[r * L.kb + c / L.bs] && (L.tw->pruned.empty() || !L.tw->pruned[r * L.cols + c]))
            deq[r * L.cols + c] = L.latent[r * L.cols + c];
    }
    const Tensor& init = *L.tw->weight->initializer();
    Tensor t(DataType::kFloat, init.shape());
    float* d = t.mutable_data<float>();
    for (size_t i = 0; i < deq.size(); ++i) d[L.sidx[i]] = deq[i];
    for (auto& ad : ads_) ad->set_value(L.tw->weight, t);
  }
  for (FloatState& f : tc_.floats) {
    Tensor t = Tensor::from_vector<float>(f.value->initializer()->shape(), f.x);
    for (auto& ad : ads_) ad->set_value(f.value, t);
  }
}

/// Samples `idx`; `step` > 0: a training step (samples augmented with a generator seeded by the step).
std::vector<data::Sample> StageRun::load_samples(const std::vector<size_t>& idx, int step) {
  const TuneOptions& o = tc_.o;
  const std::vector<size_t>& train = tc_.train;
  std::vector<data::Sample> loaded(idx.size());
  for (size_t i = 0; i < idx.size(); ++i)
    with_context(fmt::format("while loading calibration sample {}", idx[i] + 1),
                 [&] { loaded[i] = tc_.samples.load(idx[i]); });
  if (step > 0 && (o.augment == "auto" || o.mixup > 0)) {
    std::mt19937_64 arng(o.seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(step));
    std::uniform_real_distribution<double> u(0.0, 1.0);
    for (size_t i = 0; i < idx.size(); ++i) {
      if (o.augment == "auto") augment_sample(loaded[i], arng);
      if (o.mixup > 0 && u(arng) < o.mixup) {
        data::Sample other =
            tc_.samples.load(train[static_cast<size_t>(u(arng) * static_cast<double>(train.size())) % train.size()]);
        if (o.augment == "auto") augment_sample(other, arng);
        mix_samples(loaded[i], other, u(arng));
      }
    }
  }
  return loaded;
}

/// Loss of one sample on worker w's models; with param_grads, its gradients for the stage's wrt.
double StageRun::run_sample(int w, const data::Sample& sample, std::vector<Tensor>* param_grads) {
  NameCapture cap(losses_);
  const std::vector<Tensor> touts = tc_.teachers[w]->run(sample, &cap);
  const std::vector<std::string> names = tc_.teachers[w]->output_names();
  for (size_t k = 0; k < names.size(); ++k) cap.values()[names[k]] = touts[k];
  const std::vector<Tensor> souts = ads_[w]->forward(sample);
  std::vector<Tensor> seed_grads(losses_.size());
  double l = 0;
  for (size_t k = 0; k < losses_.size(); ++k) {
    auto it = cap.values().find(losses_[k].name);
    QTOOL_CHECK(it != cap.values().end(), ErrorCode::kInternal, "tuning: the float model did not compute '{}'",
                losses_[k].name);
    double lk = loss_and_grad(losses_[k], souts[k], it->second, &seed_grads[k]);
    if (losses_[k].weight != 1.0) {
      lk *= losses_[k].weight;
      float* gd = seed_grads[k].mutable_data<float>();
      for (int64_t e = 0; e < seed_grads[k].numel(); ++e) gd[e] = static_cast<float>(gd[e] * losses_[k].weight);
    }
    l += lk;
  }
  if (param_grads) *param_grads = ads_[w]->backward(seed_grads);
  return l;
}

/// Runs samples `idx` over the workers; per sample its loss and (when grads) its parameter
/// gradients. `step` as in load_samples.
void StageRun::run_samples(const std::vector<size_t>& idx, int step, bool grads, std::vector<double>& sample_loss,
                           std::vector<std::vector<Tensor>>& sample_grads) {
  sample_loss.assign(idx.size(), 0.0);
  sample_grads.assign(grads ? idx.size() : 0, {});
  const std::vector<data::Sample> loaded = load_samples(idx, step);
  const int workers = tc_.workers;
  std::vector<std::exception_ptr> errors(workers);
  auto work = [&](int w) {
    try {
      for (size_t i = static_cast<size_t>(w); i < idx.size(); i += static_cast<size_t>(workers))
        sample_loss[i] = run_sample(w, loaded[i], grads ? &sample_grads[i] : nullptr);
    } catch (...) {
      errors[w] = std::current_exception();
    }
  };
  if (workers == 1) {
    work(0);
  } else {
    std::vector<std::thread> pool;
    for (int w = 0; w < workers; ++w) pool.emplace_back(work, w);
    for (auto& th : pool) th.join();
  }
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

double StageRun::holdout_loss() {
  std::vector<double> ls;
  std::vector<std::vector<Tensor>> none;
  run_samples(tc_.hold, 0, false, ls, none);
  double sum = 0;
  for (double v : ls) sum += v;
  return sum / static_cast<double>(ls.size());
}

std::vector<size_t> StageRun::next_batch() {
  const std::vector<size_t>& train = tc_.train;
  std::vector<size_t> b;
  while (static_cast<int>(b.size()) < std::min<int>(tc_.o.batch, static_cast<int>(train.size()))) {
    if (cursor_ >= order_.size()) {
      order_ = train;
      for (size_t i = order_.size(); i > 1; --i) std::swap(order_[i - 1], order_[rng_() % i]);
      cursor_ = 0;
    }
    b.push_back(order_[cursor_++]);
  }
  return b;
}

/// Adam step of active layer a from the batch's gradients sg (mean via inv = 1 / batch size):
/// straight-through for the latent weights (zero outside the grid), LSQ-style for the log-scales.
void StageRun::step_layer(size_t a, const std::vector<std::vector<Tensor>>& sg, size_t batch_size, double inv,
                          int step, double cosf) {
  const TuneOptions& o = tc_.o;
  LayerState& L = tc_.layers[act_[a]];
  const int64_t n = L.rows * L.cols;
  std::vector<float> gw(n, 0.0f), gs(L.theta.size(), 0.0f);
  std::vector<double> gacc(n, 0.0);
  for (size_t i = 0; i < batch_size; ++i) {
    const float* g = sg[i][a].data<float>();
    for (int64_t j = 0; j < n; ++j) gacc[j] += g[L.sidx[j]];
  }
  const std::vector<float> sc = L.scales();
  std::vector<double> gsd(L.theta.size(), 0.0);
  for (int64_t r = 0; r < L.rows; ++r)
    for (int64_t c = 0; c < L.cols; ++c) {
      const int64_t gi = r * L.kb + c / L.bs;
      const BlockGrid& g0 = L.tw->q->grids[gi];
      if (!L.tw->pruned.empty() && L.tw->pruned[r * L.cols + c]) continue;  // held at 0: no gradient
      const double gv = gacc[r * L.cols + c] * inv;
      const double x = L.latent[r * L.cols + c] / sc[gi];
      const int32_t lv = L.tw->q->levels[r * L.cols + c];
      bool inside;
      double dq_ds;
      if (L.unq[gi]) {  // left unquantized this step: ŵ = w
        inside = true;
        dq_ds = 0.0;
      } else if (g0.binary) {
        inside = std::fabs(x) <= 1.0;
        dq_ds = lv;
      } else if (g0.float_codes()) {  // fp8 / fp4: ŵ = s·decode(code(w/s)), saturating at the largest code
        const double v = g0.code_value(lv);
        inside = std::fabs(x) <= (g0.float8 ? 448.0 : 6.0);
        dq_ds = inside ? v - x : v;
      } else {
        const double raw = std::nearbyint(x) + g0.zero_point;
        inside = raw >= g0.lo && raw <= g0.hi;
        dq_ds = inside ? (lv - g0.zero_point) - x : (lv - g0.zero_point);
      }
      gw[r * L.cols + c] = inside ? static_cast<float>(gv) : 0.0f;
      gsd[gi] += gv * dq_ds * sc[gi];  // dθ = ds · s
    }
  for (size_t i = 0; i < gs.size(); ++i) gs[i] = static_cast<float>(gsd[i]);
  if (o.tune_weights) {
    // Per-element step: lr in units of the block's initial scale.
    L.step.resize(n);
    for (int64_t r = 0; r < L.rows; ++r)
      for (int64_t c = 0; c < L.cols; ++c) L.step[r * L.cols + c] = L.s0[r * L.kb + c / L.bs];
    L.adam_w.step(L.latent, gw, o.lr * cosf, step, &L.step, 1);
    if (o.latent_range > 0)
      for (int64_t j = 0; j < n; ++j) {
        const float d = static_cast<float>(o.latent_range) * L.step[j];
        L.latent[j] = std::clamp(L.latent[j], L.latent0[j] - d, L.latent0[j] + d);
      }
  }
  if (o.tune_scales) L.adam_s.step(L.theta, gs, o.lr_scale * cosf, step, nullptr, 1);
}

/// Adam step of active float vector a (its gradients follow the layers' in sg).
void StageRun::step_float(size_t a, const std::vector<std::vector<Tensor>>& sg, size_t batch_size, double inv,
                          int step, double cosf) {
  FloatState& f = tc_.floats[actf_[a]];
  std::vector<float> g(f.x.size(), 0.0f);
  for (size_t i = 0; i < batch_size; ++i) {
    const float* gi = sg[i][act_.size() + a].data<float>();
    for (size_t j = 0; j < g.size(); ++j) g[j] += static_cast<float>(gi[j] * inv);
  }
  f.adam.step(f.x, g, tc_.o.lr_float * f.rms * cosf, step, nullptr, 1);
}

void StageRun::snapshot() {
  best_.latent.clear();
  best_.theta.clear();
  best_.floats.clear();
  for (size_t k : act_) {
    best_.latent.push_back(tc_.layers[k].latent);
    best_.theta.push_back(tc_.layers[k].theta);
  }
  for (size_t k : actf_) best_.floats.push_back(tc_.floats[k].x);
}

void StageRun::restore_best() {
  for (size_t a = 0; a < act_.size(); ++a) {
    tc_.layers[act_[a]].latent = best_.latent[a];
    tc_.layers[act_[a]].theta = best_.theta[a];
  }
  for (size_t a = 0; a < actf_.size(); ++a) tc_.floats[actf_[a]].x = best_.floats[a];
}

/// Stage-wise reconstruction (BRECQ-like): the layers, in node order, in `stages` groups; each
/// group is tuned on its own layers' outputs against the float model's, with the groups before it
/// already tuned and fixed (their quantized outputs are its inputs); the last group also sees the
/// model output loss. Float vectors go with the group whose layers read them, or the next one.
void tune_stagewise(TuneContext& tc, const std::vector<LossSpec>& output_losses,
                    const std::vector<size_t>& all_layers) {
  const TuneOptions& o = tc.o;
  const std::vector<LayerState>& layers = tc.layers;
  const std::vector<FloatState>& floats = tc.floats;
  std::unordered_map<const ir::Node*, size_t> pos;
  {
    size_t i = 0;
    for (const ir::Node* n : tc.student.graph->topo_order()) pos[n] = i++;
  }
  auto first_pos = [&](const ir::Value* v) {
    size_t p = SIZE_MAX;
    for (const ir::Use& u : v->uses()) p = std::min(p, pos.count(u.node) ? pos.at(u.node) : SIZE_MAX);
    return p;
  };
  std::vector<size_t> order_layers = all_layers;
  std::stable_sort(order_layers.begin(), order_layers.end(),
                   [&](size_t a, size_t b) {
                     return first_pos(layers[a].tw->weight) < first_pos(layers[b].tw->weight);
                   });
  const size_t ns = std::min<size_t>(static_cast<size_t>(o.stages), order_layers.size());
  std::vector<char> float_done(floats.size(), 0);
  for (size_t st = 0; st < ns; ++st) {
    const size_t a = st * order_layers.size() / ns, b = (st + 1) * order_layers.size() / ns;
    std::vector<size_t> grp(order_layers.begin() + static_cast<std::ptrdiff_t>(a),
                            order_layers.begin() + static_cast<std::ptrdiff_t>(b));
    size_t end_pos = 0;
    for (size_t k : grp) end_pos = std::max(end_pos, first_pos(layers[k].tw->weight));
    std::vector<size_t> fl;
    for (size_t k = 0; k < floats.size(); ++k) {
      const size_t p = first_pos(floats[k].value);
      if (!float_done[k] && (st + 1 == ns || p <= end_pos)) {
        fl.push_back(k);
        float_done[k] = 1;
      }
    }
    std::vector<LossSpec> ls;
    if (st + 1 == ns) ls = output_losses;
    feature_losses(layers, grp, st + 1 == ns ? std::max(o.feature_weight, 1.0) : 1.0, ls);
    const int steps = std::max(1, o.steps / static_cast<int>(ns));
    const StageResult r = StageRun(tc, grp, fl, ls, steps).run(fmt::format(" stage {}/{}", st + 1, ns));
    if (st == 0) tc.rep.holdout_before = r.before;
    tc.rep.holdout_after = r.after;
    tc.rep.best_step = r.best_step;
  }
}

/// Writes the kept parameters back: the quantized levels and scales, and the float vectors.
void write_back(std::vector<LayerState>& layers, std::vector<FloatState>& floats, TuneReport& rep) {
  std::vector<float> deq;
  for (LayerState& L : layers) {
    const std::vector<float> s = L.scales();
    fake_quantize(L.latent, *L.tw->q, s, deq, L.tw->pruned);
    for (size_t i = 0; i < s.size(); ++i) L.tw->q->grids[i].scale = s[i];
    for (size_t i = 0; i < L.levels0.size(); ++i) rep.levels_changed += L.tw->q->levels[i] != L.levels0[i];
  }
  for (FloatState& f : floats)
    f.value->set_initializer(Tensor::from_vector<float>(f.value->initializer()->shape(), f.x));
}

/// The report's loss description, e.g. "kl(logits) + 0.5 x mse(3 layer outputs), 2 stages".
std::string describe_loss(const std::vector<LossSpec>& e2e, const TuneOptions& o, size_t n_layers) {
  std::string loss;
  int n_feat = 0;
  for (const LossSpec& l : e2e) {
    if (l.weight != 1.0) {
      ++n_feat;
      continue;
    }
    loss += (loss.empty() ? "" : ", ") + std::string(l.used == 2 ? "mse" : "kl") + "(" + l.name + ")";
  }
  if (n_feat > 0) loss += fmt::format(" + {} x mse({} layer outputs)", o.feature_weight, n_feat);
  if (o.stages > 1) loss += fmt::format(", {} stages", std::min<size_t>(o.stages, n_layers));
  return loss;
}

}  // namespace

TuneReport tune_quantized(ir::Model& student, const ir::Model& teacher, std::vector<TunableWeight>& weights,
                          const CalibrationInputs& calib, const TuneOptions& o) {
  const auto t0 = Clock::now();
  TuneReport rep;
  QTOOL_CHECK(o.steps > 0 && o.batch > 0, ErrorCode::kConfig, "tuning needs --tune-steps > 0 and a batch > 0");
  size_t count = calib.source ? calib.source->size() : calib.samples.size();
  if (o.samples > 0) count = std::min(count, o.samples);
  QTOOL_CHECK(count >= 2, ErrorCode::kConfig, "tuning needs at least 2 calibration samples (got {})", count);
  SampleCache samples(calib, count, o.cache_bytes);
  TuneContext tc(student, o, rep, samples);
  split_holdout(count, o.holdout, tc.train, tc.hold);
  rep.train_samples = static_cast<int64_t>(tc.train.size());
  rep.holdout_samples = static_cast<int64_t>(tc.hold.size());

  // Layer and float parameter state.
  std::unordered_set<const ir::Value*> quantized;
  tc.layers = init_layers(weights, quantized);
  if (o.tune_float) tc.floats = init_floats(student, quantized, rep);

  QTOOL_CHECK(o.augment == "auto" || o.augment == "none", ErrorCode::kConfig,
              "--tune-augment must be auto or none (got '{}')", o.augment);
  QTOOL_CHECK(o.mixup >= 0.0 && o.mixup <= 1.0, ErrorCode::kConfig, "--tune-mixup must be in [0, 1]");
  QTOOL_CHECK(o.stages >= 1, ErrorCode::kConfig, "--tune-stages must be >= 1");
  const std::vector<LossSpec> output_losses = plan_losses(student, o.loss);
  tc.workers = std::max(1, o.threads);
  for (int w = 0; w < tc.workers; ++w) tc.teachers.push_back(std::make_unique<runtime::Executor>(teacher));

  std::vector<size_t> all_layers(tc.layers.size()), all_floats(tc.floats.size());
  for (size_t k = 0; k < tc.layers.size(); ++k) all_layers[k] = k;
  for (size_t k = 0; k < tc.floats.size(); ++k) all_floats[k] = k;
  std::vector<LossSpec> e2e = output_losses;
  if (o.feature_weight > 0) feature_losses(tc.layers, all_layers, o.feature_weight, e2e);
  if (o.stages <= 1) {
    const StageResult r = StageRun(tc, all_layers, all_floats, e2e, o.steps).run("");
    rep.holdout_before = r.before;
    rep.holdout_after = r.after;
    rep.best_step = r.best_step;
  } else {
    tune_stagewise(tc, output_losses, all_layers);
  }

  write_back(tc.layers, tc.floats, rep);
  rep.loss = describe_loss(e2e, o, tc.layers.size());
  rep.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  spdlog::info("tuning: kept step {} (held-out loss {:.6g} -> {:.6g}), {} levels changed, {:.1f} s", rep.best_step,
               rep.holdout_before, rep.holdout_after, rep.levels_changed, rep.seconds);
  return rep;
}

}  // namespace qtool::quant
