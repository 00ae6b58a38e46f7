// Distillation tuning (quant/tune.h) through apply_weight_only on small in-memory models: it lowers
// the held-out distillation loss, the emitted model is exactly the tuned one (ONNX Runtime and
// qtool's executor agree with the loss the tuner reports), it is deterministic across thread
// counts, and its options are honoured.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <random>
#include <sstream>

#include "qtool/core/error.h"
#include "qtool/core/npy.h"
#include "qtool/data/sample_source.h"
#include "qtool/onnx_io/onnx_io.h"
#include "qtool/quant/lowbit.h"
#include "qtool/quant/tune.h"
#include "qtool/runtime/executor.h"
#include "test_util.h"
#include "graph_builders.h"

namespace qtool::quant {
namespace {

using qtool::testing::float_type;
using qtool::testing::gaussian;

using qtool::testing::TempDir;


/// x[4,64] -> Mul(gamma) -> MatMul A[64,96] -> Relu -> Gemm(B[64,96], transB, bias) -> Relu
/// -> MatMul C[64,32] -> logits [4,32] (a classifier: the tuner uses the KL loss).
ir::Model make_classifier(uint32_t seed) {
  std::mt19937 rng(seed);
  ir::Model m;
  m.ir_version = 8;
  m.set_opset("", 17);
  ir::Graph& g = *m.graph;
  ir::Value* x = g.add_input("x", float_type({4, 64}));
  std::vector<float> gamma(64);
  for (auto& v : gamma) v = 0.5f + std::fabs(gaussian(1, rng)[0]);
  auto* gm = g.add_initializer("norm.weight", Tensor::from_vector<float>({64}, gamma));
  auto* h0 = g.add_node("Mul", {x, gm}, {"h0"}, "norm_mul")->output(0);
  auto* wa = g.add_initializer("a.weight", Tensor::from_vector<float>({64, 96}, gaussian(64 * 96, rng, 0.15f)));
  auto* a = g.add_node("MatMul", {h0, wa}, {"a"}, "a")->output(0);
  auto* ra = g.add_node("Relu", {a}, {"ra"}, "relu_a")->output(0);
  auto* wb = g.add_initializer("b.weight", Tensor::from_vector<float>({64, 96}, gaussian(64 * 96, rng, 0.15f)));
  auto* bb = g.add_initializer("b.bias", Tensor::from_vector<float>({64}, gaussian(64, rng, 0.1f)));
  ir::Node* gemm = g.add_node("Gemm", {ra, wb, bb}, {"b"}, "b");
  gemm->set_attr(ir::Attribute::make_int("transB", 1));
  auto* rb = g.add_node("Relu", {gemm->output(0)}, {"rb"}, "relu_b")->output(0);
  auto* wc = g.add_initializer("head.weight", Tensor::from_vector<float>({64, 32}, gaussian(64 * 32, rng, 0.3f)));
  auto* y = g.add_node("MatMul", {rb, wc}, {"logits"}, "head")->output(0);
  y->type() = float_type({4, 32});
  g.add_output(y);
  return m;
}

CalibrationInputs random_calib(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  CalibrationInputs c;
  for (size_t i = 0; i < n; ++i) c.samples.push_back({{"x", Tensor::from_vector<float>({4, 64}, gaussian(256, rng))}});
  return c;
}

WeightOnlyConfig ternary_config(int steps) {
  WeightOnlyConfig cfg;
  cfg.bits = "ternary";
  cfg.block_size = 32;
  cfg.bits_first_last = "";  // every layer ternary
  cfg.tune.steps = steps;
  cfg.tune.batch = 4;
  cfg.tune.eval_every = 10;
  cfg.tune.lr = 0.02;
  return cfg;
}

/// Mean over samples of the mean-over-rows KL(softmax(t) ‖ softmax(s)), as the tuner computes it.
double mean_kl(const std::vector<Tensor>& s, const std::vector<Tensor>& t) {
  double total = 0;
  for (size_t k = 0; k < s.size(); ++k) {
    const int64_t rows = s[k].dim(0), classes = s[k].dim(1);
    double kl = 0;
    for (int64_t r = 0; r < rows; ++r) {
      const float* ps = s[k].data<float>() + r * classes;
      const float* pt = t[k].data<float>() + r * classes;
      double ms = -1e30, mt = -1e30;
      for (int64_t c = 0; c < classes; ++c) {
        ms = std::max(ms, double(ps[c]));
        mt = std::max(mt, double(pt[c]));
      }
      double zs = 0, zt = 0;
      for (int64_t c = 0; c < classes; ++c) {
        zs += std::exp(ps[c] - ms);
        zt += std::exp(pt[c] - mt);
      }
      for (int64_t c = 0; c < classes; ++c) {
        const double lt = pt[c] - mt - std::log(zt), ls = ps[c] - ms - std::log(zs);
        kl += std::exp(lt) * (lt - ls);
      }
    }
    total += kl / static_cast<double>(rows);
  }
  return total / static_cast<double>(s.size());
}

std::string file_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

TEST(Tune, FakeQuantizeRoundsOnTheGivenScales) {
  QuantizedMatrix q;
  q.rows = 1;
  q.cols = 4;
  q.block_size = 2;
  q.levels.assign(4, 0);
  BlockGrid a{.scale = 1.0f, .zero_point = 0, .lo = -1, .hi = 1};
  BlockGrid b{.scale = 1.0f, .zero_point = 8, .lo = 0, .hi = 15};
  q.grids = {a, b};
  std::vector<float> out;
  fake_quantize({0.4f, -2.0f, 1.2f, 30.0f}, q, {0.5f, 2.0f}, out);
  // Block 0 (ternary-like, scale 0.5): 0.8 -> 1, -4 -> -1 (clamped). Block 1 (uint4, zp 8, scale 2):
  // 0.6 -> 9, 15 -> 15 (clamped at hi).
  EXPECT_EQ(q.levels, (std::vector<int32_t>{1, -1, 9, 15}));
  EXPECT_EQ(out, (std::vector<float>{0.5f, -0.5f, 2.0f, 14.0f}));
}

TEST(Tune, LowersHeldOutLossAndTheEmittedModelIsTheTunedOne) {
  const ir::Model fp = make_classifier(7);
  const CalibrationInputs calib = random_calib(40, 11);
  ir::Model untuned = fp.clone(), tuned = fp.clone();
  WeightOnlyConfig cfg0 = ternary_config(0);
  apply_weight_only(untuned, cfg0, &calib);
  const WeightOnlyReport rep = apply_weight_only(tuned, ternary_config(60), &calib);
  const TuneReport& tr = rep.tune;
  EXPECT_EQ(tr.steps, 60);
  EXPECT_EQ(tr.holdout_samples, 5);  // ceil(0.125 · 40)
  EXPECT_EQ(tr.train_samples, 35);
  EXPECT_GT(tr.best_step, 0);
  EXPECT_LT(tr.holdout_after, 0.7 * tr.holdout_before) << tr.holdout_before << " -> " << tr.holdout_after;
  EXPECT_GT(tr.levels_changed, 0);
  EXPECT_EQ(tr.float_params, 64 + 64);  // norm weight and Gemm bias
  EXPECT_EQ(tr.loss, "kl(logits)");
  for (const auto& l : rep.layers) EXPECT_NE(l.algorithm.find("tuned"), std::string::npos) << l.weight;

  // The held-out samples are every 8th (positions 7, 15, ...): the emitted model's KL on them is the
  // loss the tuner kept, both in qtool's executor and (after saving) in ONNX Runtime.
  std::vector<std::map<std::string, Tensor>> hold;
  for (size_t i = 7; i < 40; i += 8) hold.push_back(calib.samples[i]);
  runtime::Executor ef(fp), eu(untuned), et(tuned);
  std::vector<Tensor> tf, tu, tt;
  for (const auto& s : hold) {
    tf.push_back(ef.run(s).at(0));
    tu.push_back(eu.run(s).at(0));
    tt.push_back(et.run(s).at(0));
  }
  EXPECT_NEAR(mean_kl(tt, tf), tr.holdout_after, 1e-4 * (1 + tr.holdout_after));
  EXPECT_NEAR(mean_kl(tu, tf), tr.holdout_before, 1e-4 * (1 + tr.holdout_before));
  if (qtool::testing::ort_available()) {
    // At ORT's "basic" level the graph runs as written (its default fuses DequantizeLinear -> MatMul
    // into MatMulNBits with int8-quantized activations).
    TempDir dir;
    onnx_io::save_model(tuned, dir.file("t.onnx"));
    write_npy(dir.file("x.npy"), hold[0].at("x"));
    const auto r = qtool::testing::run_command(fmt::format("cd '{}' && node tools/ort/run.js '{}' '{}' --opt basic x='{}'",
                                                           QTOOL_SOURCE_DIR, dir.file("t.onnx"), dir.file("out"),
                                                           dir.file("x.npy")));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_LT(qtool::testing::max_abs_error(read_npy(dir.file("out/0.npy")), tt[0]), 1e-4);
  }
}

TEST(Tune, SameModelForAnyThreadCountAndRerun) {
  const ir::Model fp = make_classifier(3);
  const CalibrationInputs calib = random_calib(16, 5);
  TempDir dir;
  std::vector<std::string> bytes;
  for (int threads : {1, 2, 2}) {
    ir::Model m = fp.clone();
    WeightOnlyConfig cfg = ternary_config(12);
    cfg.tune.threads = threads;
    apply_weight_only(m, cfg, &calib);
    const std::string path = dir.file("m" + std::to_string(bytes.size()) + ".onnx");
    onnx_io::save_model(m, path);
    bytes.push_back(file_bytes(path));
  }
  EXPECT_EQ(bytes[0], bytes[1]);
  EXPECT_EQ(bytes[1], bytes[2]);
}

TEST(Tune, OptionsRestrictWhatIsTuned) {
  const ir::Model fp = make_classifier(5);
  const CalibrationInputs calib = random_calib(24, 9);
  // Float vectors only: every level and scale stays as RTN chose it; the bias moves.
  ir::Model rtn = fp.clone(), m = fp.clone();
  apply_weight_only(rtn, ternary_config(0), &calib);
  WeightOnlyConfig cfg = ternary_config(20);
  cfg.tune.tune_weights = false;
  cfg.tune.tune_scales = false;
  const WeightOnlyReport rep = apply_weight_only(m, cfg, &calib);
  EXPECT_EQ(rep.tune.levels_changed, 0);
  auto init = [](const ir::Model& model, const std::string& name) {
    return model.graph->find_value(name)->initializer()->clone();
  };
  for (const char* w : {"a.weight_quantized", "a.weight_scale_fp16", "b.weight_quantized", "head.weight_quantized"})
    EXPECT_TRUE(tensors_equal(init(rtn, w), init(m, w))) << w;
  EXPECT_FALSE(tensors_equal(init(rtn, "b.bias"), init(m, "b.bias")));
  EXPECT_LE(rep.tune.holdout_after, rep.tune.holdout_before);
}

TEST(Tune, Stories260KGradientsFlowThroughTheWholeDecoder) {
  // The real Llama-architecture graph (Gather, RMSNorm as Pow/ReduceMean/Sqrt/Div, RoPE as Slice/
  // Concat, Softmax attention with a Where mask, SiLU) is differentiable end to end: a short tuning
  // run of INT4 GPTQ on the model's own text lowers the held-out KL, and ONNX Runtime runs the result
  // exactly as qtool's executor does.
  QTOOL_REQUIRE_SHARED();
  ir::Model m = onnx_io::load_model(qtool::testing::shared_path("models/stories260K/stories260K.onnx"));
  const auto toks = data::read_token_stream(
      qtool::testing::shared_path("data/stories260K-text/runc_samples_t1.0_p0.9_seed1-600.tok512.i32"));
  CalibrationInputs calib;
  for (size_t i = 0; i + 64 <= toks.size() && calib.samples.size() < 16; i += 64) {
    std::vector<int64_t> ids(toks.begin() + i, toks.begin() + i + 64);
    calib.samples.push_back({{"input_ids", Tensor::from_vector<int64_t>({1, 64}, ids)}});
  }
  WeightOnlyConfig cfg;
  cfg.bits = "4";
  cfg.algorithm = WeightAlgorithm::kGptq;
  cfg.tune.steps = 12;
  cfg.tune.batch = 4;
  cfg.tune.eval_every = 4;
  const WeightOnlyReport rep = apply_weight_only(m, cfg, &calib);
  EXPECT_EQ(rep.tune.loss, "kl(logits)");
  EXPECT_EQ(rep.tune.float_params, 11 * 64);  // 11 RMSNorm weights
  EXPECT_LT(rep.tune.holdout_after, 0.95 * rep.tune.holdout_before)
      << rep.tune.holdout_before << " -> " << rep.tune.holdout_after;
  if (qtool::testing::ort_available()) {
    TempDir dir;
    onnx_io::save_model(m, dir.file("q.onnx"));
    const Tensor ids = calib.samples[1].at("input_ids");
    write_npy(dir.file("ids.npy"), ids);
    const auto r = qtool::testing::run_command(fmt::format(
        "cd '{}' && node tools/ort/run.js '{}' '{}' --opt basic input_ids='{}'", QTOOL_SOURCE_DIR, dir.file("q.onnx"),
        dir.file("out"), dir.file("ids.npy")));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    runtime::Executor ex(m);
    const Tensor ours = ex.run({{"input_ids", ids}}).at(0);
    EXPECT_LT(qtool::testing::max_abs_error(read_npy(dir.file("out/0.npy")), ours), 1e-3);
  }
}

TEST(Tune, RefusedWithoutCalibrationOrWithOutliers) {
  ir::Model m = make_classifier(1);
  WeightOnlyConfig cfg = ternary_config(5);
  try {
    apply_weight_only(m, cfg, nullptr);
    FAIL() << "expected kConfig";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kConfig);
    EXPECT_NE(std::string(e.what()).find("--tune-steps"), std::string::npos) << e.what();
  }
  const CalibrationInputs calib = random_calib(8, 1);
  cfg.outlier_fraction = 0.05;
  cfg.bits = "4";
  EXPECT_THROW(apply_weight_only(m, cfg, &calib), Error);
}

}  // namespace
}  // namespace qtool::quant
