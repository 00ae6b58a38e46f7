// LSTM / GRU / RNN against the ONNX cell equations evaluated by hand in the test.
#include <gtest/gtest.h>

#include <cmath>

#include "nn_test_util.h"

namespace qtool::testing {
namespace {

float sig(float x) { return 1.0f / (1.0f + std::exp(-x)); }

TEST(RnnKernel, TwoStepsWithBias) {
  auto y = run_node({.op = "RNN",
                     .inputs = {ft({2, 1, 1}, {1, 2}), ft({1, 1, 1}, {2}), ft({1, 1, 1}, {0.5f}), ft({1, 2}, {0.1f, 0.2f})},
                     .attrs = {ai("hidden_size", 1)}, .outputs = 2, .opset = 14});
  const float h1 = std::tanh(2.3f), h2 = std::tanh(4.0f + 0.5f * h1 + 0.3f);
  EXPECT_EQ(y[0].shape(), (Shape{2, 1, 1, 1}));
  EXPECT_VALUES_NEAR(y[0], (std::vector<float>{h1, h2}), 1e-6);
  EXPECT_VALUES_NEAR(y[1], (std::vector<float>{h2}), 1e-6);
}

/// One-unit LSTM reference (gate order i, o, f, c), no bias or peepholes.
void lstm_ref(const std::vector<float>& xs, const float w[4], const float r[4], float h0, float c0, std::vector<float>* ys,
              float* hn, float* cn) {
  float h = h0, c = c0;
  for (float x : xs) {
    const float i = sig(w[0] * x + r[0] * h), o = sig(w[1] * x + r[1] * h), f = sig(w[2] * x + r[2] * h);
    const float g = std::tanh(w[3] * x + r[3] * h);
    c = f * c + i * g;
    h = o * std::tanh(c);
    ys->push_back(h);
  }
  *hn = h;
  *cn = c;
}

TEST(LstmKernel, ForwardReverseBidirectionalAndInitialState) {
  const float w[4] = {0.5f, 0.6f, 0.7f, 0.8f}, r[4] = {0.1f, 0.2f, 0.3f, 0.4f};
  const std::vector<float> xs = {1.0f, -1.0f, 0.5f};
  std::vector<float> yf, yr;
  float hf, cf, hr, cr;
  lstm_ref(xs, w, r, 0.2f, -0.1f, &yf, &hf, &cf);
  lstm_ref({0.5f, -1.0f, 1.0f}, w, r, 0.2f, -0.1f, &yr, &hr, &cr);
  Tensor x = ft({3, 1, 1}, xs);
  Tensor wt = ft({1, 4, 1}, {w[0], w[1], w[2], w[3]}), rt = ft({1, 4, 1}, {r[0], r[1], r[2], r[3]});
  auto y = run_node({.op = "LSTM", .inputs = {x, wt, rt, Tensor(), Tensor(), ft({1, 1, 1}, {0.2f}), ft({1, 1, 1}, {-0.1f})},
                     .attrs = {ai("hidden_size", 1)}, .outputs = 3, .opset = 14});
  EXPECT_VALUES_NEAR(y[0], yf, 1e-6);
  EXPECT_VALUES_NEAR(y[1], (std::vector<float>{hf}), 1e-6);
  EXPECT_VALUES_NEAR(y[2], (std::vector<float>{cf}), 1e-6);
  auto yrev = run_node({.op = "LSTM", .inputs = {x, wt, rt, Tensor(), Tensor(), ft({1, 1, 1}, {0.2f}), ft({1, 1, 1}, {-0.1f})},
                        .attrs = {ai("hidden_size", 1), as("direction", "reverse")}, .outputs = 3, .opset = 14});
  EXPECT_VALUES_NEAR(yrev[0], (std::vector<float>{yr[2], yr[1], yr[0]}), 1e-6);
  EXPECT_VALUES_NEAR(yrev[1], (std::vector<float>{hr}), 1e-6);
  // Bidirectional: Y [seq, 2, 1, 1] interleaves forward and reverse outputs.
  Tensor w2 = ft({2, 4, 1}, {w[0], w[1], w[2], w[3], w[0], w[1], w[2], w[3]});
  Tensor r2 = ft({2, 4, 1}, {r[0], r[1], r[2], r[3], r[0], r[1], r[2], r[3]});
  auto yb = run_node({.op = "LSTM", .inputs = {x, w2, r2, Tensor(), Tensor(), ft({2, 1, 1}, {0.2f, 0.2f}), ft({2, 1, 1}, {-0.1f, -0.1f})},
                      .attrs = {ai("hidden_size", 1), as("direction", "bidirectional")}, .outputs = 3, .opset = 14});
  EXPECT_EQ(yb[0].shape(), (Shape{3, 2, 1, 1}));
  EXPECT_VALUES_NEAR(yb[0], (std::vector<float>{yf[0], yr[2], yf[1], yr[1], yf[2], yr[0]}), 1e-6);
  EXPECT_VALUES_NEAR(yb[2], (std::vector<float>{cf, cr}), 1e-6);
}

TEST(LstmKernel, Layout1AndSequenceLens) {
  const float w[4] = {0.5f, 0.6f, 0.7f, 0.8f}, r[4] = {0.1f, 0.2f, 0.3f, 0.4f};
  Tensor wt = ft({1, 4, 1}, {w[0], w[1], w[2], w[3]}), rt = ft({1, 4, 1}, {r[0], r[1], r[2], r[3]});
  // batch 2 (layout 1: [batch, seq, in]); sequence 0 has 2 steps, sequence 1 only 1.
  Tensor x = ft({2, 2, 1}, {1.0f, -1.0f, 0.5f, 9.0f});
  Tensor lens = Tensor::from_vector<int32_t>({2}, {2, 1});
  auto y = run_node({.op = "LSTM", .inputs = {x, wt, rt, Tensor(), lens}, .attrs = {ai("hidden_size", 1), ai("layout", 1)},
                     .outputs = 2, .opset = 14});
  std::vector<float> y0, y1;
  float h0, c0, h1, c1;
  lstm_ref({1.0f, -1.0f}, w, r, 0, 0, &y0, &h0, &c0);
  lstm_ref({0.5f}, w, r, 0, 0, &y1, &h1, &c1);
  EXPECT_EQ(y[0].shape(), (Shape{2, 2, 1, 1}));
  EXPECT_VALUES_NEAR(y[0], (std::vector<float>{y0[0], y0[1], y1[0], 0.0f}), 1e-6);
  EXPECT_EQ(y[1].shape(), (Shape{2, 1, 1}));
  EXPECT_VALUES_NEAR(y[1], (std::vector<float>{h0, h1}), 1e-6);
}

TEST(GruKernel, LinearBeforeResetZeroAndOne) {
  // One unit; gate order z, r, h. W = [wz, wr, wh], R = [rz, rr, rh], B = [Wb(3), Rb(3)].
  const float wz = 0.5f, wr = -0.4f, wh = 0.9f, rz = 0.3f, rr = 0.2f, rh = -0.6f;
  const float bw[3] = {0.1f, 0.0f, 0.2f}, br[3] = {0.0f, 0.1f, 0.3f};
  const std::vector<float> xs = {1.0f, -0.5f};
  for (int lbr = 0; lbr <= 1; ++lbr) {
    float h = 0.0f;
    std::vector<float> want;
    for (float x : xs) {
      const float z = sig(wz * x + rz * h + bw[0] + br[0]);
      const float r = sig(wr * x + rr * h + bw[1] + br[1]);
      const float hh = lbr ? std::tanh(wh * x + r * (rh * h + br[2]) + bw[2]) : std::tanh(wh * x + rh * (r * h) + br[2] + bw[2]);
      h = (1 - z) * hh + z * h;
      want.push_back(h);
    }
    auto y = run_node({.op = "GRU",
                       .inputs = {ft({2, 1, 1}, xs), ft({1, 3, 1}, {wz, wr, wh}), ft({1, 3, 1}, {rz, rr, rh}),
                                  ft({1, 6}, {bw[0], bw[1], bw[2], br[0], br[1], br[2]})},
                       .attrs = {ai("hidden_size", 1), ai("linear_before_reset", lbr)}, .outputs = 2, .opset = 14});
    EXPECT_VALUES_NEAR(y[0], want, 1e-6);
    EXPECT_VALUES_NEAR(y[1], (std::vector<float>{want.back()}), 1e-6);
  }
}

TEST(LstmKernel, CustomActivationsAndWiderHiddenMatchReference) {
  // hidden 2, input 3, batch 2: checks the GEMM-based gate layout against a scalar reference.
  const int64_t hid = 2, in = 3, batch = 2, seq = 2;
  std::vector<float> x = rnd(seq * batch * in, 7), w = rnd(4 * hid * in, 8), r = rnd(4 * hid * hid, 9), b = rnd(8 * hid, 10);
  auto y = run_node({.op = "LSTM", .inputs = {ft({seq, batch, in}, x), ft({1, 4 * hid, in}, w), ft({1, 4 * hid, hid}, r), ft({1, 8 * hid}, b)},
                     .attrs = {ai("hidden_size", hid), astrs("activations", {"HardSigmoid", "Tanh", "Relu"})},
                     .outputs = 1, .opset = 14});
  std::vector<float> h(batch * hid, 0), c(batch * hid, 0), want;
  auto hs = [](float v) { return std::clamp(0.2f * v + 0.5f, 0.0f, 1.0f); };
  for (int64_t t = 0; t < seq; ++t) {
    std::vector<float> hn(h);
    for (int64_t bb = 0; bb < batch; ++bb)
      for (int64_t j = 0; j < hid; ++j) {
        float g[4];
        for (int q = 0; q < 4; ++q) {
          float s = b[q * hid + j] + b[4 * hid + q * hid + j];
          for (int64_t k = 0; k < in; ++k) s += x[(t * batch + bb) * in + k] * w[(q * hid + j) * in + k];
          for (int64_t k = 0; k < hid; ++k) s += h[bb * hid + k] * r[(q * hid + j) * hid + k];
          g[q] = s;
        }
        const float cn = hs(g[2]) * c[bb * hid + j] + hs(g[0]) * std::tanh(g[3]);
        c[bb * hid + j] = cn;
        hn[bb * hid + j] = hs(g[1]) * std::max(0.0f, cn);
      }
    h = hn;
    want.insert(want.end(), h.begin(), h.end());
  }
  EXPECT_VALUES_NEAR(y[0], want, 1e-5);
}

}  // namespace
}  // namespace qtool::testing
