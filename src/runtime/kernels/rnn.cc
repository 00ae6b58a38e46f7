// Recurrent layers: LSTM, GRU and RNN (ONNX opsets 1/3/7/14: directions, activations with
// alpha/beta, clip, sequence_lens, initial states, peepholes, layout 0/1 from opset 14).
// The input projection X W^T + Wb for every time step is one GEMM; each step then adds
// H_{t-1} R^T (+ Rb) and applies the cell equations.
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

void rnn_common(KernelContext& ctx, Cell cell) {
  const ir::Node& node = ctx.node();
  const int gates = cell == Cell::kLstm ? 4 : cell == Cell::kGru ? 3 : 1;
  Tensor x = nn::float_input(ctx, 0), w = nn::float_input(ctx, 1), r = nn::float_input(ctx, 2);
  const int64_t layout = ctx.opset() >= 14 ? node.attr_int("layout", 0) : 0;
  if (x.rank() != 3 || w.rank() != 3 || r.rank() != 3) {
    nn::bad_node(ctx, "X {}, W {}, R {} must be 3-D", shape_str(x.shape()), shape_str(w.shape()), shape_str(r.shape()));
  }
  const int64_t seq = layout ? x.dim(1) : x.dim(0), batch = layout ? x.dim(0) : x.dim(1), in = x.dim(2);
  const std::string direction = node.attr_string("direction", "forward");
  const int dirs = direction == "bidirectional" ? 2 : 1;
  if (direction != "forward" && direction != "reverse" && direction != "bidirectional") {
    nn::bad_node(ctx, "unknown direction '{}'", direction);
  }
  const int64_t hid = r.dim(2);
  if (node.has_attr("hidden_size") && node.attr_int("hidden_size", hid) != hid) {
    nn::bad_node(ctx, "hidden_size {} does not match R {}", node.attr_int("hidden_size", hid), shape_str(r.shape()));
  }
  const int64_t gh = gates * hid;
  if (w.dim(0) != dirs || w.dim(1) != gh || w.dim(2) != in || r.dim(0) != dirs || r.dim(1) != gh) {
    nn::bad_node(ctx, "W {} / R {} do not match {} directions, hidden {}, input {}", shape_str(w.shape()),
                 shape_str(r.shape()), dirs, hid, in);
  }
  const float clip = node.attr_float("clip", 0.0f);
  const bool has_clip = node.has_attr("clip");
  const bool input_forget = cell == Cell::kLstm && node.attr_int("input_forget", 0) != 0;
  const bool lbr = cell == Cell::kGru && node.attr_int("linear_before_reset", 0) != 0;
  const std::vector<std::string> defaults =
      cell == Cell::kLstm ? std::vector<std::string>{"Sigmoid", "Tanh", "Tanh"}
      : cell == Cell::kGru ? std::vector<std::string>{"Sigmoid", "Tanh"} : std::vector<std::string>{"Tanh"};
  const std::vector<Act> acts = parse_activations(ctx, defaults, dirs);
  const size_t per_dir = defaults.size();

  Tensor bias, init_h, init_c, peep, seq_lens;
  if (ctx.has_input(3)) bias = nn::float_input(ctx, 3);
  if (ctx.has_input(4)) seq_lens = ctx.input(4).cast(DataType::kInt64);
  if (ctx.has_input(5)) init_h = nn::float_input(ctx, 5);
  if (cell == Cell::kLstm && ctx.has_input(6)) init_c = nn::float_input(ctx, 6);
  if (cell == Cell::kLstm && ctx.has_input(7)) peep = nn::float_input(ctx, 7);
  if (bias.defined() && bias.numel() != dirs * 2 * gh) nn::bad_node(ctx, "B {} must be [{}, {}]", shape_str(bias.shape()), dirs, 2 * gh);
  if (seq_lens.defined() && seq_lens.numel() != batch) nn::bad_node(ctx, "sequence_lens must have {} values", batch);
  for (const Tensor* t : {&init_h, &init_c}) {
    if (t->defined() && t->numel() != dirs * batch * hid) nn::bad_node(ctx, "initial state {} must hold {} values", shape_str(t->shape()), dirs * batch * hid);
  }
  if (peep.defined() && peep.numel() != dirs * 3 * hid) nn::bad_node(ctx, "P {} must be [{}, {}]", shape_str(peep.shape()), dirs, 3 * hid);

  // X in time-major layout [seq, batch, in].
  std::vector<float> xt;
  const float* xp = x.data<float>();
  if (layout) {
    xt.resize(static_cast<size_t>(seq * batch * in));
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t t = 0; t < seq; ++t)
        std::copy(xp + (b * seq + t) * in, xp + (b * seq + t + 1) * in, xt.data() + (t * batch + b) * in);
    xp = xt.data();
  }
  std::vector<int64_t> lens(static_cast<size_t>(batch), seq);
  if (seq_lens.defined()) {
    for (int64_t b = 0; b < batch; ++b) lens[b] = std::clamp<int64_t>(seq_lens.data<int64_t>()[b], 0, seq);
  }

  // Outputs in time-major layout; converted for layout 1 at the end.
  std::vector<float> y(static_cast<size_t>(seq * dirs * batch * hid), 0.0f);
  std::vector<float> yh(static_cast<size_t>(dirs * batch * hid)), yc(static_cast<size_t>(dirs * batch * hid));
  std::vector<float> xw(static_cast<size_t>(seq * batch * gh)), hr(static_cast<size_t>(batch * gh));
  std::vector<float> h(static_cast<size_t>(batch * hid)), c(static_cast<size_t>(batch * hid));
  std::vector<float> rh(static_cast<size_t>(batch * hid)), hh(static_cast<size_t>(batch * hid));
  for (int d = 0; d < dirs; ++d) {
    const bool reverse = direction == "reverse" || d == 1;
    const float* wd = w.data<float>() + d * gh * in;
    const float* rd = r.data<float>() + d * gh * hid;
    const float* wb = bias.defined() ? bias.data<float>() + d * 2 * gh : nullptr;
    const float* rb = wb ? wb + gh : nullptr;
    const float* pd = peep.defined() ? peep.data<float>() + d * 3 * hid : nullptr;
    const Act* act = acts.data() + d * per_dir;
    // xw = X W^T + Wb (+ Rb except for GRU's hidden gate, whose Rb sits inside the reset product).
    nn::sgemm(false, true, seq * batch, gh, in, 1.0f, xp, in, wd, in, 0.0f, xw.data(), gh, &ctx.pool());
    if (wb) {
      for (int64_t i = 0; i < seq * batch; ++i) {
        float* row = xw.data() + i * gh;
        for (int64_t j = 0; j < gh; ++j) {
          const bool gru_h = cell == Cell::kGru && j >= 2 * hid;
          row[j] += wb[j] + (gru_h ? 0.0f : rb[j]);
        }
      }
    }
    for (int64_t i = 0; i < batch * hid; ++i) {
      h[i] = init_h.defined() ? init_h.data<float>()[d * batch * hid + i] : 0.0f;
      c[i] = init_c.defined() ? init_c.data<float>()[d * batch * hid + i] : 0.0f;
    }
    auto clipv = [&](float v) { return has_clip ? std::clamp(v, -clip, clip) : v; };
    for (int64_t step = 0; step < seq; ++step) {
      // GRU without linear_before_reset needs (r * H) R_h^T, so only the z/r part is done here.
      const int64_t ncols = cell == Cell::kGru && !lbr ? 2 * hid : gh;
      nn::sgemm(false, true, batch, ncols, hid, 1.0f, h.data(), hid, rd, hid, 0.0f, hr.data(), gh, nullptr);
      for (int64_t b = 0; b < batch; ++b) {
        const int64_t t = reverse ? lens[b] - 1 - step : step;
        if (t < 0 || step >= lens[b]) continue;
        const float* g = xw.data() + (t * batch + b) * gh;
        const float* q = hr.data() + b * gh;
        float* hb = h.data() + b * hid;
        float* cb = c.data() + b * hid;
        if (cell == Cell::kLstm) {
          for (int64_t j = 0; j < hid; ++j) {
            float gi = g[j] + q[j], go = g[hid + j] + q[hid + j];
            float gf = g[2 * hid + j] + q[2 * hid + j], gc = g[3 * hid + j] + q[3 * hid + j];
            if (pd) {
              gi += pd[j] * cb[j];
              gf += pd[2 * hid + j] * cb[j];
            }
            const float it = act[0](clipv(gi));
            const float ft = input_forget ? 1.0f - it : act[0](clipv(gf));
            const float ct = act[1](clipv(gc));
            const float cn = ft * cb[j] + it * ct;
            if (pd) go += pd[hid + j] * cn;
            const float ot = act[0](clipv(go));
            cb[j] = cn;
            hb[j] = ot * act[2](cn);
          }
        } else if (cell == Cell::kGru) {
          float* rhb = rh.data() + b * hid;
          for (int64_t j = 0; j < hid; ++j) rhb[j] = act[0](clipv(g[hid + j] + q[hid + j]));  // r
          if (lbr) {
            for (int64_t j = 0; j < hid; ++j) {
              const float z = act[0](clipv(g[j] + q[j]));
              const float hh = act[1](clipv(g[2 * hid + j] + rhb[j] * (q[2 * hid + j] + (rb ? rb[2 * hid + j] : 0.0f))));
              rhb[j] = (1.0f - z) * hh + z * hb[j];  // new h (written after the loop)
            }
            std::copy(rhb, rhb + hid, hb);
          } else {
            for (int64_t j = 0; j < hid; ++j) rhb[j] *= hb[j];  // r * H_{t-1}
          }
        } else {
          for (int64_t j = 0; j < hid; ++j) hb[j] = act[0](clipv(g[j] + q[j]));
        }
      }
      if (cell == Cell::kGru && !lbr) {
        // h~ = g(x W_h^T + Wb_h + (r * H) R_h^T + Rb_h); H = (1 - z) h~ + z H
        nn::sgemm(false, true, batch, hid, hid, 1.0f, rh.data(), hid, rd + 2 * hid * hid, hid, 0.0f, hh.data(), hid, nullptr);
        for (int64_t b = 0; b < batch; ++b) {
          const int64_t t = reverse ? lens[b] - 1 - step : step;
          if (t < 0 || step >= lens[b]) continue;
          const float* g = xw.data() + (t * batch + b) * gh;
          const float* q = hr.data() + b * gh;
          float* hb = h.data() + b * hid;
          for (int64_t j = 0; j < hid; ++j) {
            const float z = act[0](clipv(g[j] + q[j]));
            const float cand = act[1](clipv(g[2 * hid + j] + hh[b * hid + j] + (rb ? rb[2 * hid + j] : 0.0f)));
            hb[j] = (1.0f - z) * cand + z * hb[j];
          }
        }
      }
      for (int64_t b = 0; b < batch; ++b) {
        const int64_t t = reverse ? lens[b] - 1 - step : step;
        if (t < 0 || step >= lens[b]) continue;
        std::copy(h.data() + b * hid, h.data() + (b + 1) * hid, y.data() + ((t * dirs + d) * batch + b) * hid);
      }
    }
    std::copy(h.begin(), h.end(), yh.begin() + d * batch * hid);
    std::copy(c.begin(), c.end(), yc.begin() + d * batch * hid);
  }

  if (ctx.wants_output(0)) {
    Shape ys = layout ? Shape{batch, seq, dirs, hid} : Shape{seq, dirs, batch, hid};
    Tensor yt = Tensor::empty(DataType::kFloat, ys);
    float* o = yt.mutable_data<float>();
    if (!layout) {
      std::copy(y.begin(), y.end(), o);
    } else {
      for (int64_t t = 0; t < seq; ++t)
        for (int d = 0; d < dirs; ++d)
          for (int64_t b = 0; b < batch; ++b)
            std::copy(y.data() + ((t * dirs + d) * batch + b) * hid, y.data() + ((t * dirs + d) * batch + b + 1) * hid,
                      o + ((b * seq + t) * dirs + d) * hid);
    }
    ctx.set_output(0, std::move(yt));
  }
  auto state_out = [&](size_t idx, const std::vector<float>& s) {
    if (!ctx.wants_output(idx)) return;
    Shape ss = layout ? Shape{batch, dirs, hid} : Shape{dirs, batch, hid};
    Tensor st = Tensor::empty(DataType::kFloat, ss);
    float* o = st.mutable_data<float>();
    for (int d = 0; d < dirs; ++d)
      for (int64_t b = 0; b < batch; ++b)
        std::copy(s.data() + (d * batch + b) * hid, s.data() + (d * batch + b + 1) * hid,
                  o + (layout ? (b * dirs + d) : (d * batch + b)) * hid);
    ctx.set_output(idx, std::move(st));
  };
  state_out(1, yh);
  if (cell == Cell::kLstm) state_out(2, yc);
}

void lstm_kernel(KernelContext& ctx) { rnn_common(ctx, Cell::kLstm); }
void gru_kernel(KernelContext& ctx) { rnn_common(ctx, Cell::kGru); }
void rnn_kernel(KernelContext& ctx) { rnn_common(ctx, Cell::kRnn); }

}  // namespace

/// Registers LSTM, GRU and RNN (one implementation covers opsets 1-22; layout read from 14).
void kernels::register_rnn_kernels(KernelRegistry& r) {
  r.add("", "LSTM", 1, lstm_kernel);
  r.add("", "GRU", 1, gru_kernel);
  r.add("", "RNN", 1, rnn_kernel);
}

}  // namespace qtool::runtime
