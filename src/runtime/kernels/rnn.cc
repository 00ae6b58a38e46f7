// Recurrent layers: LSTM, GRU and RNN (ONNX opsets 1/3/7/14: directions, activations with
// alpha/beta, clip, sequence_lens, initial states, peepholes, layout 0/1 from opset 14).
// The input projection X W^T + Wb for every time step is one GEMM; each step then adds
// H_{t-1} R^T (+ Rb) and applies the cell equations.
//
// com.microsoft DynamicQuantizeLSTM is the same LSTM with 8-bit W [dirs, in, 4H] and R [dirs, H, 4H]
// (scales and zero points per direction or per gate column), computed as ONNX Runtime computes it:
// the GEMM's float operand quantized to uint8 on the fly (min/max including 0, scale (max - min) / 255,
// 1 when max == min) — all of X at once per direction, H_{t-1} at every step — then integer products
// scaled back. Here the operand is replaced by its dequantized value, which gives the same sums up to
// float summation order.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "kernels.h"
#include "nn_util.h"

namespace qtool::runtime {
namespace {

/// One activation function of the RNN family, with its alpha/beta.
struct Act {
  enum Kind { kSigmoid, kTanh, kRelu, kAffine, kLeakyRelu, kThresholdedRelu, kScaledTanh, kHardSigmoid, kElu,
              kSoftsign, kSoftplus } kind = kSigmoid;
  float alpha = 0, beta = 0;
  float operator()(float x) const {
    switch (kind) {
      case kSigmoid: return 1.0f / (1.0f + std::exp(-x));
      case kTanh: return std::tanh(x);
      case kRelu: return std::max(0.0f, x);
      case kAffine: return alpha * x + beta;
      case kLeakyRelu: return x >= 0 ? x : alpha * x;
      case kThresholdedRelu: return x > alpha ? x : 0.0f;
      case kScaledTanh: return alpha * std::tanh(beta * x);
      case kHardSigmoid: return std::clamp(alpha * x + beta, 0.0f, 1.0f);
      case kElu: return x >= 0 ? x : alpha * (std::exp(x) - 1.0f);
      case kSoftsign: return x / (1.0f + std::fabs(x));
      case kSoftplus: return std::log1p(std::exp(x));
    }
    return x;
  }
};

/// Parses `activations` (+ activation_alpha/beta consumed in order by the functions that take
/// them); defaults when absent. Returns per_dir * dirs functions.
std::vector<Act> parse_activations(const KernelContext& ctx, const std::vector<std::string>& defaults, int dirs) {
  const ir::Node& node = ctx.node();
  std::vector<std::string> names;
  if (const ir::Attribute* a = node.find_attr("activations")) names = a->strings;
  if (names.empty()) {
    for (int d = 0; d < dirs; ++d) names.insert(names.end(), defaults.begin(), defaults.end());
  }
  if (names.size() == defaults.size() && dirs == 2) names.insert(names.end(), names.begin(), names.end());
  if (names.size() != defaults.size() * dirs) {
    nn::bad_node(ctx, "expected {} activations, got {}", defaults.size() * dirs, names.size());
  }
  const std::vector<float> alphas = node.attr_floats("activation_alpha"), betas = node.attr_floats("activation_beta");
  size_t ai = 0, bi = 0;
  std::vector<Act> out;
  for (std::string n : names) {
    std::transform(n.begin(), n.end(), n.begin(), ::tolower);
    Act a;
    auto take_alpha = [&](float d) { a.alpha = ai < alphas.size() ? alphas[ai++] : d; };
    auto take_beta = [&](float d) { a.beta = bi < betas.size() ? betas[bi++] : d; };
    if (n == "sigmoid") a.kind = Act::kSigmoid;
    else if (n == "tanh") a.kind = Act::kTanh;
    else if (n == "relu") a.kind = Act::kRelu;
    else if (n == "affine") { a.kind = Act::kAffine; take_alpha(1.0f); take_beta(0.0f); }
    else if (n == "leakyrelu") { a.kind = Act::kLeakyRelu; take_alpha(0.01f); }
    else if (n == "thresholdedrelu") { a.kind = Act::kThresholdedRelu; take_alpha(1.0f); }
    else if (n == "scaledtanh") { a.kind = Act::kScaledTanh; take_alpha(1.0f); take_beta(1.0f); }
    else if (n == "hardsigmoid") { a.kind = Act::kHardSigmoid; take_alpha(0.2f); take_beta(0.5f); }
    else if (n == "elu") { a.kind = Act::kElu; take_alpha(1.0f); }
    else if (n == "softsign") a.kind = Act::kSoftsign;
    else if (n == "softplus") a.kind = Act::kSoftplus;
    else nn::bad_node(ctx, "unsupported activation '{}'", n);
    out.push_back(a);
  }
  return out;
}

enum class Cell { kLstm, kGru, kRnn };

/// One direction's weights and activations.
struct Direction {
  int d = 0;
  bool reverse = false;
  const float* wd = nullptr;  ///< W [gh, in]
  const float* rd = nullptr;  ///< R [gh, hid]
  const float* wb = nullptr;  ///< Wb [gh] or null
  const float* rb = nullptr;  ///< Rb [gh] or null
  const float* pd = nullptr;  ///< peepholes [3 * hid] or null
  const Act* act = nullptr;   ///< per_dir functions
};

/// One LSTM, GRU or RNN node: its inputs and attributes (checked in the constructor), and the
/// working buffers of the time loop, all in time-major layout.
class RnnLayer {
 public:
  /// `quantized`: a com.microsoft DynamicQuantizeLSTM node (see the header comment).
  RnnLayer(KernelContext& ctx, Cell cell, bool quantized = false);
  /// Runs every direction and sets the wanted outputs.
  void run();

 private:
  void prepare();
  void run_direction(int d);
  void project_inputs(const Direction& dir);
  void recurrent_step(const Direction& dir, int64_t step);
  void lstm_cell(const Direction& dir, const float* g, const float* q, float* hb, float* cb) const;
  void gru_gates(const Direction& dir, int64_t b, const float* g, const float* q, float* hb);
  void gru_candidates(const Direction& dir, int64_t step);
  void write_outputs();
  float clipv(float v) const { return has_clip_ ? std::clamp(v, -clip_, clip_) : v; }
  /// DynamicQuantizeLSTM's weight input `w` ([dirs, rows, gh], 8-bit) dequantized and transposed to
  /// the ONNX layout [dirs, gh, rows].
  Tensor dequantized_weight(size_t w, size_t scale, size_t zero_point) const;
  /// Time index of `step` for batch row b, or -1 when b's sequence is shorter.
  int64_t time_at(const Direction& dir, int64_t step, int64_t b) const {
    const int64_t t = dir.reverse ? lens_[b] - 1 - step : step;
    return (t < 0 || step >= lens_[b]) ? -1 : t;
  }

  KernelContext& ctx_;
  Cell cell_;
  int gates_ = 1;
  Tensor x_, w_, r_, bias_, init_h_, init_c_, peep_, seq_lens_;
  int64_t layout_ = 0, seq_ = 0, batch_ = 0, in_ = 0, hid_ = 0, gh_ = 0;
  std::string direction_;
  int dirs_ = 1;
  float clip_ = 0.0f;
  bool has_clip_ = false, input_forget_ = false, lbr_ = false;
  bool quantized_ = false;          // DynamicQuantizeLSTM: GEMM operands quantized on the fly
  std::vector<float> xq_, hq_;      // their dequantized copies
  std::vector<Act> acts_;
  size_t per_dir_ = 1;

  std::vector<float> xt_;           // X in time-major layout when layout = 1
  const float* xp_ = nullptr;       // X [seq, batch, in]
  std::vector<int64_t> lens_;       // per batch row, clamped to [0, seq]
  std::vector<float> y_, yh_, yc_;  // outputs; converted for layout 1 at the end
  std::vector<float> xw_, hr_;      // X W^T + biases [seq, batch, gh]; H R^T [batch, gh]
  std::vector<float> h_, c_;        // states [batch, hid]
  std::vector<float> rh_, hh_;      // GRU: r * H, then (r * H) R_h^T [batch, hid]
};

/// x replaced by dequantize(quantize(x)) with ONNX Runtime's dynamic uint8 parameters for a GEMM
/// operand (rnn_helpers' GetQuantizationParameter): the range widened to include 0, scale
/// (max - min) / 255 (1 when the range is empty), zero point round-half-even(-min / scale).
void fake_quantize_operand(const float* x, int64_t n, float* out) {
  float mn = 0.0f, mx = 0.0f;
  for (int64_t i = 0; i < n; ++i) mn = std::min(mn, x[i]), mx = std::max(mx, x[i]);
  const float scale = mx == mn ? 1.0f : (mx - mn) / 255.0f;
  const float zp = std::nearbyint(std::clamp(0.0f - mn / scale, 0.0f, 255.0f));
  for (int64_t i = 0; i < n; ++i) out[i] = (std::clamp(std::nearbyint(x[i] / scale) + zp, 0.0f, 255.0f) - zp) * scale;
}

Tensor RnnLayer::dequantized_weight(size_t w, size_t scale, size_t zero_point) const {
  const Tensor& q = ctx_.input(w);
  if (q.rank() != 3 || (q.dtype() != DataType::kInt8 && q.dtype() != DataType::kUint8))
    nn::bad_node(ctx_, "quantized weight input {} must be 3-D int8/uint8, got {} {}", w, dtype_name(q.dtype()),
                 shape_str(q.shape()));
  const int64_t dirs = q.dim(0), rows = q.dim(1), cols = q.dim(2);
  const Tensor s = nn::float_input(ctx_, scale);
  if (s.numel() != dirs && s.numel() != dirs * cols)
    nn::bad_node(ctx_, "scale of input {} has {} values, expected {} or {}", w, s.numel(), dirs, dirs * cols);
  std::vector<double> z(static_cast<size_t>(s.numel()), 0.0);
  if (ctx_.has_input(zero_point)) {
    const Tensor& zt = ctx_.input(zero_point);
    if (zt.numel() != s.numel()) nn::bad_node(ctx_, "zero point of input {} has {} values, expected {}", w, zt.numel(), s.numel());
    for (int64_t i = 0; i < zt.numel(); ++i) z[i] = zt.get_as_double(i);
  }
  Tensor out = Tensor::empty(DataType::kFloat, {dirs, cols, rows});
  float* o = out.mutable_data<float>();
  for (int64_t d = 0; d < dirs; ++d)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        const int64_t si = s.numel() == dirs ? d : d * cols + c;
        o[(d * cols + c) * rows + r] =
            static_cast<float>(q.get_as_double((d * rows + r) * cols + c) - z[si]) * s.data<float>()[si];
      }
  return out;
}

RnnLayer::RnnLayer(KernelContext& ctx, Cell cell, bool quantized) : ctx_(ctx), cell_(cell), quantized_(quantized) {
  const ir::Node& node = ctx_.node();
  gates_ = cell_ == Cell::kLstm ? 4 : cell_ == Cell::kGru ? 3 : 1;
  x_ = nn::float_input(ctx_, 0);
  w_ = quantized_ ? dequantized_weight(1, 8, 9) : nn::float_input(ctx_, 1);
  r_ = quantized_ ? dequantized_weight(2, 10, 11) : nn::float_input(ctx_, 2);
  layout_ = ctx_.opset() >= 14 ? node.attr_int("layout", 0) : 0;
  if (x_.rank() != 3 || w_.rank() != 3 || r_.rank() != 3) {
    nn::bad_node(ctx_, "X {}, W {}, R {} must be 3-D", shape_str(x_.shape()), shape_str(w_.shape()),
                 shape_str(r_.shape()));
  }
  seq_ = layout_ ? x_.dim(1) : x_.dim(0);
  batch_ = layout_ ? x_.dim(0) : x_.dim(1);
  in_ = x_.dim(2);
  direction_ = node.attr_string("direction", "forward");
  dirs_ = direction_ == "bidirectional" ? 2 : 1;
  if (direction_ != "forward" && direction_ != "reverse" && direction_ != "bidirectional") {
    nn::bad_node(ctx_, "unknown direction '{}'", direction_);
  }
  hid_ = r_.dim(2);
  if (node.has_attr("hidden_size") && node.attr_int("hidden_size", hid_) != hid_) {
    nn::bad_node(ctx_, "hidden_size {} does not match R {}", node.attr_int("hidden_size", hid_), shape_str(r_.shape()));
  }
  gh_ = gates_ * hid_;
  if (w_.dim(0) != dirs_ || w_.dim(1) != gh_ || w_.dim(2) != in_ || r_.dim(0) != dirs_ || r_.dim(1) != gh_) {
    nn::bad_node(ctx_, "W {} / R {} do not match {} directions, hidden {}, input {}", shape_str(w_.shape()),
                 shape_str(r_.shape()), dirs_, hid_, in_);
  }
  clip_ = node.attr_float("clip", 0.0f);
  has_clip_ = node.has_attr("clip");
  input_forget_ = cell_ == Cell::kLstm && node.attr_int("input_forget", 0) != 0;
  lbr_ = cell_ == Cell::kGru && node.attr_int("linear_before_reset", 0) != 0;
  const std::vector<std::string> defaults =
      cell_ == Cell::kLstm ? std::vector<std::string>{"Sigmoid", "Tanh", "Tanh"}
      : cell_ == Cell::kGru ? std::vector<std::string>{"Sigmoid", "Tanh"} : std::vector<std::string>{"Tanh"};
  acts_ = parse_activations(ctx_, defaults, dirs_);
  per_dir_ = defaults.size();

  if (ctx_.has_input(3)) bias_ = nn::float_input(ctx_, 3);
  if (ctx_.has_input(4)) seq_lens_ = ctx_.input(4).cast(DataType::kInt64);
  if (ctx_.has_input(5)) init_h_ = nn::float_input(ctx_, 5);
  if (cell_ == Cell::kLstm && ctx_.has_input(6)) init_c_ = nn::float_input(ctx_, 6);
  if (cell_ == Cell::kLstm && ctx_.has_input(7)) peep_ = nn::float_input(ctx_, 7);
  if (bias_.defined() && bias_.numel() != dirs_ * 2 * gh_) {
    nn::bad_node(ctx_, "B {} must be [{}, {}]", shape_str(bias_.shape()), dirs_, 2 * gh_);
  }
  if (seq_lens_.defined() && seq_lens_.numel() != batch_) {
    nn::bad_node(ctx_, "sequence_lens must have {} values", batch_);
  }
  for (const Tensor* t : {&init_h_, &init_c_}) {
    if (t->defined() && t->numel() != dirs_ * batch_ * hid_) {
      nn::bad_node(ctx_, "initial state {} must hold {} values", shape_str(t->shape()), dirs_ * batch_ * hid_);
    }
  }
  if (peep_.defined() && peep_.numel() != dirs_ * 3 * hid_) {
    nn::bad_node(ctx_, "P {} must be [{}, {}]", shape_str(peep_.shape()), dirs_, 3 * hid_);
  }
}

void RnnLayer::run() {
  prepare();
  for (int d = 0; d < dirs_; ++d) run_direction(d);
  write_outputs();
}

/// X in time-major layout, the sequence lengths, and the buffers.
void RnnLayer::prepare() {
  xp_ = x_.data<float>();
  if (layout_) {
    xt_.resize(static_cast<size_t>(seq_ * batch_ * in_));
    for (int64_t b = 0; b < batch_; ++b)
      for (int64_t t = 0; t < seq_; ++t)
        std::copy(xp_ + (b * seq_ + t) * in_, xp_ + (b * seq_ + t + 1) * in_, xt_.data() + (t * batch_ + b) * in_);
    xp_ = xt_.data();
  }
  lens_.assign(static_cast<size_t>(batch_), seq_);
  if (seq_lens_.defined()) {
    for (int64_t b = 0; b < batch_; ++b) lens_[b] = std::clamp<int64_t>(seq_lens_.data<int64_t>()[b], 0, seq_);
  }
  y_.assign(static_cast<size_t>(seq_ * dirs_ * batch_ * hid_), 0.0f);
  yh_.resize(static_cast<size_t>(dirs_ * batch_ * hid_));
  yc_.resize(static_cast<size_t>(dirs_ * batch_ * hid_));
  xw_.resize(static_cast<size_t>(seq_ * batch_ * gh_));
  hr_.resize(static_cast<size_t>(batch_ * gh_));
  h_.resize(static_cast<size_t>(batch_ * hid_));
  c_.resize(static_cast<size_t>(batch_ * hid_));
  rh_.resize(static_cast<size_t>(batch_ * hid_));
  hh_.resize(static_cast<size_t>(batch_ * hid_));
}

void RnnLayer::run_direction(int d) {
  Direction dir;
  dir.d = d;
  dir.reverse = direction_ == "reverse" || d == 1;
  dir.wd = w_.data<float>() + d * gh_ * in_;
  dir.rd = r_.data<float>() + d * gh_ * hid_;
  dir.wb = bias_.defined() ? bias_.data<float>() + d * 2 * gh_ : nullptr;
  dir.rb = dir.wb ? dir.wb + gh_ : nullptr;
  dir.pd = peep_.defined() ? peep_.data<float>() + d * 3 * hid_ : nullptr;
  dir.act = acts_.data() + d * per_dir_;
  project_inputs(dir);
  for (int64_t i = 0; i < batch_ * hid_; ++i) {
    h_[i] = init_h_.defined() ? init_h_.data<float>()[d * batch_ * hid_ + i] : 0.0f;
    c_[i] = init_c_.defined() ? init_c_.data<float>()[d * batch_ * hid_ + i] : 0.0f;
  }
  for (int64_t step = 0; step < seq_; ++step) recurrent_step(dir, step);
  std::copy(h_.begin(), h_.end(), yh_.begin() + d * batch_ * hid_);
  std::copy(c_.begin(), c_.end(), yc_.begin() + d * batch_ * hid_);
}

/// xw = X W^T + Wb (+ Rb except for GRU's hidden gate, whose Rb sits inside the reset product).
void RnnLayer::project_inputs(const Direction& dir) {
  const float* x = xp_;
  if (quantized_) {
    xq_.resize(static_cast<size_t>(seq_ * batch_ * in_));
    fake_quantize_operand(xp_, seq_ * batch_ * in_, xq_.data());
    x = xq_.data();
  }
  nn::sgemm(false, true, seq_ * batch_, gh_, in_, 1.0f, x, in_, dir.wd, in_, 0.0f, xw_.data(), gh_, &ctx_.pool());
  if (dir.wb) {
    for (int64_t i = 0; i < seq_ * batch_; ++i) {
      float* row = xw_.data() + i * gh_;
      for (int64_t j = 0; j < gh_; ++j) {
        const bool gru_h = cell_ == Cell::kGru && j >= 2 * hid_;
        row[j] += dir.wb[j] + (gru_h ? 0.0f : dir.rb[j]);
      }
    }
  }
}

/// One time step of every batch row still in its sequence; H is written to Y at its time index.
void RnnLayer::recurrent_step(const Direction& dir, int64_t step) {
  // GRU without linear_before_reset needs (r * H) R_h^T, so only the z/r part is done here.
  const int64_t ncols = cell_ == Cell::kGru && !lbr_ ? 2 * hid_ : gh_;
  const float* h = h_.data();
  if (quantized_) {
    hq_.resize(h_.size());
    fake_quantize_operand(h_.data(), batch_ * hid_, hq_.data());
    h = hq_.data();
  }
  nn::sgemm(false, true, batch_, ncols, hid_, 1.0f, h, hid_, dir.rd, hid_, 0.0f, hr_.data(), gh_, nullptr);
  for (int64_t b = 0; b < batch_; ++b) {
    const int64_t t = time_at(dir, step, b);
    if (t < 0) continue;
    const float* g = xw_.data() + (t * batch_ + b) * gh_;
    const float* q = hr_.data() + b * gh_;
    float* hb = h_.data() + b * hid_;
    float* cb = c_.data() + b * hid_;
    if (cell_ == Cell::kLstm) {
      lstm_cell(dir, g, q, hb, cb);
    } else if (cell_ == Cell::kGru) {
      gru_gates(dir, b, g, q, hb);
    } else {
      for (int64_t j = 0; j < hid_; ++j) hb[j] = dir.act[0](clipv(g[j] + q[j]));
    }
  }
  if (cell_ == Cell::kGru && !lbr_) gru_candidates(dir, step);
  for (int64_t b = 0; b < batch_; ++b) {
    const int64_t t = time_at(dir, step, b);
    if (t < 0) continue;
    std::copy(h_.data() + b * hid_, h_.data() + (b + 1) * hid_, y_.data() + ((t * dirs_ + dir.d) * batch_ + b) * hid_);
  }
}

/// LSTM cell of one batch row: gates (i, o, f, c) from g (X part) + q (H part), with peepholes.
void RnnLayer::lstm_cell(const Direction& dir, const float* g, const float* q, float* hb, float* cb) const {
  const Act* act = dir.act;
  const float* pd = dir.pd;
  for (int64_t j = 0; j < hid_; ++j) {
    float gi = g[j] + q[j], go = g[hid_ + j] + q[hid_ + j];
    float gf = g[2 * hid_ + j] + q[2 * hid_ + j], gc = g[3 * hid_ + j] + q[3 * hid_ + j];
    if (pd) {
      gi += pd[j] * cb[j];
      gf += pd[2 * hid_ + j] * cb[j];
    }
    const float it = act[0](clipv(gi));
    const float ft = input_forget_ ? 1.0f - it : act[0](clipv(gf));
    const float ct = act[1](clipv(gc));
    const float cn = ft * cb[j] + it * ct;
    if (pd) go += pd[hid_ + j] * cn;
    const float ot = act[0](clipv(go));
    cb[j] = cn;
    hb[j] = ot * act[2](cn);
  }
}

/// GRU of one batch row: the reset gate into rh; with linear_before_reset the whole new H, else
/// r * H_{t-1} for the candidate product (gru_candidates).
void RnnLayer::gru_gates(const Direction& dir, int64_t b, const float* g, const float* q, float* hb) {
  const Act* act = dir.act;
  const float* rb = dir.rb;
  float* rhb = rh_.data() + b * hid_;
  for (int64_t j = 0; j < hid_; ++j) rhb[j] = act[0](clipv(g[hid_ + j] + q[hid_ + j]));  // r
  if (lbr_) {
    for (int64_t j = 0; j < hid_; ++j) {
      const float z = act[0](clipv(g[j] + q[j]));
      const float ht = act[1](clipv(g[2 * hid_ + j] + rhb[j] * (q[2 * hid_ + j] + (rb ? rb[2 * hid_ + j] : 0.0f))));
      rhb[j] = (1.0f - z) * ht + z * hb[j];  // new h (written after the loop)
    }
    std::copy(rhb, rhb + hid_, hb);
  } else {
    for (int64_t j = 0; j < hid_; ++j) rhb[j] *= hb[j];  // r * H_{t-1}
  }
}

/// h~ = g(x W_h^T + Wb_h + (r * H) R_h^T + Rb_h); H = (1 - z) h~ + z H
void RnnLayer::gru_candidates(const Direction& dir, int64_t step) {
  const Act* act = dir.act;
  const float* rb = dir.rb;
  nn::sgemm(false, true, batch_, hid_, hid_, 1.0f, rh_.data(), hid_, dir.rd + 2 * hid_ * hid_, hid_, 0.0f, hh_.data(),
            hid_, nullptr);
  for (int64_t b = 0; b < batch_; ++b) {
    const int64_t t = time_at(dir, step, b);
    if (t < 0) continue;
    const float* g = xw_.data() + (t * batch_ + b) * gh_;
    const float* q = hr_.data() + b * gh_;
    float* hb = h_.data() + b * hid_;
    for (int64_t j = 0; j < hid_; ++j) {
      const float z = act[0](clipv(g[j] + q[j]));
      const float cand = act[1](clipv(g[2 * hid_ + j] + hh_[b * hid_ + j] + (rb ? rb[2 * hid_ + j] : 0.0f)));
      hb[j] = (1.0f - z) * cand + z * hb[j];
    }
  }
}

void RnnLayer::write_outputs() {
  if (ctx_.wants_output(0)) {
    Shape ys = layout_ ? Shape{batch_, seq_, dirs_, hid_} : Shape{seq_, dirs_, batch_, hid_};
    Tensor yt = Tensor::empty(DataType::kFloat, ys);
    float* o = yt.mutable_data<float>();
    if (!layout_) {
      std::copy(y_.begin(), y_.end(), o);
    } else {
      for (int64_t t = 0; t < seq_; ++t)
        for (int d = 0; d < dirs_; ++d)
          for (int64_t b = 0; b < batch_; ++b)
            std::copy(y_.data() + ((t * dirs_ + d) * batch_ + b) * hid_,
                      y_.data() + ((t * dirs_ + d) * batch_ + b + 1) * hid_, o + ((b * seq_ + t) * dirs_ + d) * hid_);
    }
    ctx_.set_output(0, std::move(yt));
  }
  auto state_out = [&](size_t idx, const std::vector<float>& s) {
    if (!ctx_.wants_output(idx)) return;
    Shape ss = layout_ ? Shape{batch_, dirs_, hid_} : Shape{dirs_, batch_, hid_};
    Tensor st = Tensor::empty(DataType::kFloat, ss);
    float* o = st.mutable_data<float>();
    for (int d = 0; d < dirs_; ++d)
      for (int64_t b = 0; b < batch_; ++b)
        std::copy(s.data() + (d * batch_ + b) * hid_, s.data() + (d * batch_ + b + 1) * hid_,
                  o + (layout_ ? (b * dirs_ + d) : (d * batch_ + b)) * hid_);
    ctx_.set_output(idx, std::move(st));
  };
  state_out(1, yh_);
  if (cell_ == Cell::kLstm) state_out(2, yc_);
}

void rnn_common(KernelContext& ctx, Cell cell) { RnnLayer(ctx, cell).run(); }
void dynamic_quantize_lstm_kernel(KernelContext& ctx) { RnnLayer(ctx, Cell::kLstm, true).run(); }

void lstm_kernel(KernelContext& ctx) { rnn_common(ctx, Cell::kLstm); }
void gru_kernel(KernelContext& ctx) { rnn_common(ctx, Cell::kGru); }
void rnn_kernel(KernelContext& ctx) { rnn_common(ctx, Cell::kRnn); }

}  // namespace

/// Registers LSTM, GRU and RNN (one implementation covers opsets 1-22; layout read from 14).
void kernels::register_rnn_kernels(KernelRegistry& r) {
  r.add("", "LSTM", 1, lstm_kernel);
  r.add("", "GRU", 1, gru_kernel);
  r.add("", "RNN", 1, rnn_kernel);
  r.add("com.microsoft", "DynamicQuantizeLSTM", 1, dynamic_quantize_lstm_kernel);
}

}  // namespace qtool::runtime
