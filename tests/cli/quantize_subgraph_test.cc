// qtool quantize --bits 8 on models whose work happens inside If bodies (Silero VAD v5): the
// output must stay a valid model that ONNX Runtime runs, with qtool's executor agreeing with it.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <random>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "qtool/core/npy.h"
#include "qtool/onnx_io/onnx_io.h"
#include "qtool/passes/qdq_to_qoperator.h"
#include "qtool/runtime/executor.h"
#include "test_util.h"

namespace qtool {
namespace {

using testing::shared_path;

// 16-bit PCM mono samples of a WAV file, scaled to [-1, 1).
std::vector<float> read_wav_pcm16(const std::string& path) {
  const std::string b = read_file(path);
  EXPECT_EQ(b.substr(0, 4), "RIFF");
  size_t pos = 12;
  std::vector<float> out;
  while (pos + 8 <= b.size()) {
    const std::string id = b.substr(pos, 4);
    uint32_t size = 0;
    std::memcpy(&size, b.data() + pos + 4, 4);
    if (id == "data") {
      const size_t n = std::min<size_t>(size, b.size() - pos - 8) / 2;
      out.resize(n);
      for (size_t i = 0; i < n; ++i) {
        int16_t s = 0;
        std::memcpy(&s, b.data() + pos + 8 + 2 * i, 2);
        out[i] = static_cast<float>(s) / 32768.0f;
      }
      break;
    }
    pos += 8 + size + (size & 1);
  }
  return out;
}

// Streams test.wav through the FP32 model in 512-sample chunks (64 samples of context before each,
// the LSTM state carried), and writes every `every`-th chunk's inputs as a calibration sample into
// DIR/{input,state,sr}/NNN.npy (the folder-per-input layout of --calib).
void write_vad_samples(const std::string& model_path, const std::string& dir, int count, int every) {
  const std::vector<float> pcm = read_wav_pcm16(shared_path("data/speech/test.wav"));
  ASSERT_GT(pcm.size(), static_cast<size_t>(count * every * 512));
  for (const char* sub : {"input", "state", "sr"}) std::filesystem::create_directories(dir + "/" + sub);
  const ir::Model m = onnx_io::load_model(model_path);
  runtime::Executor ex(m);
  Tensor state = Tensor::from_vector<float>({2, 1, 128}, std::vector<float>(256, 0.0f));
  const Tensor sr = Tensor::scalar<int64_t>(16000);
  std::vector<float> context(64, 0.0f);
  int written = 0;
  for (int k = 0; written < count; ++k) {
    std::vector<float> x(context);
    x.insert(x.end(), pcm.begin() + k * 512, pcm.begin() + (k + 1) * 512);
    const Tensor input = Tensor::from_vector<float>({1, 576}, x);
    if (k % every == 0) {
      write_npy(fmt::format("{}/input/{:03d}.npy", dir, written), input);
      write_npy(fmt::format("{}/state/{:03d}.npy", dir, written), state);
      write_npy(fmt::format("{}/sr/{:03d}.npy", dir, written), sr);
      ++written;
    }
    const std::vector<Tensor> out = ex.run({{"input", input}, {"state", state}, {"sr", sr}});
    state = out.at(1);
    context.assign(x.end() - 64, x.end());
  }
}

// A tensor of N(0, scale²) values.
Tensor normal_tensor(std::mt19937& rng, Shape shape, float scale, float shift = 0.0f) {
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
  for (float& x : v) x = shift + scale * d(rng);
  return Tensor::from_vector<float>(shape, v);
}

// `count` calibration samples of `shape` written as DIR/NNN.npy (one-input models); sample i is
// shifted by shift(i).
std::vector<Tensor> write_normal_samples(const std::string& dir, const Shape& shape, int count, uint32_t seed,
                                         const std::function<float(int)>& shift) {
  std::mt19937 rng(seed);
  std::filesystem::create_directories(dir);
  std::vector<Tensor> samples;
  for (int i = 0; i < count; ++i) {
    samples.push_back(normal_tensor(rng, shape, 1.0f, shift(i)));
    write_npy(fmt::format("{}/{:03d}.npy", dir, i), samples.back());
  }
  return samples;
}

// x [1,4,8,8] -> Conv 3x3 (4->8) -> Relu -> a; cond = ReduceMean(x) > 0;
// If(cond) { then: Conv 3x3 (8->8, main-graph weights) -> Relu -> Conv 1x1 (8->4) -> t_out;
//            else: Conv 1x1 (8->4, weights of the else body) -> e_out } -> y.
ir::Model conv_if_model() {
  std::mt19937 rng(11);
  auto rnd = [&](Shape shape, float scale) { return normal_tensor(rng, std::move(shape), scale); };
  ir::Model m;
  m.set_opset("", 13);
  ir::Graph& g = *m.graph;
  ir::TypeInfo ft;
  ft.elem_type = DataType::kFloat;
  ft.has_shape = true;
  ft.dims = {ir::Dim{1, ""}, ir::Dim{4, ""}, ir::Dim{8, ""}, ir::Dim{8, ""}};
  ir::Value* x = g.add_input("x", ft);
  auto init = [](ir::Graph& gr, const std::string& n, Tensor t) {
    ir::Value* v = gr.add_initializer(n, std::move(t));
    v->type().elem_type = DataType::kFloat;
    return v;
  };
  auto conv = [&](ir::Graph& gr, ir::Value* in, ir::Value* w, ir::Value* b, const std::string& out, int64_t pad) {
    ir::Node* c = gr.add_node("Conv", {in, w, b}, {out}, out + "_conv");
    c->set_attr(ir::Attribute::make_ints("pads", {pad, pad, pad, pad}));
    c->output(0)->type().elem_type = DataType::kFloat;
    return c->output(0);
  };
  auto relu = [](ir::Graph& gr, ir::Value* in, const std::string& out) {
    ir::Value* r = gr.add_node("Relu", {in}, {out}, out + "_relu")->output(0);
    r->type().elem_type = DataType::kFloat;
    return r;
  };
  ir::Value* a = relu(g, conv(g, x, init(g, "w0", rnd({8, 4, 3, 3}, 0.3f)), init(g, "b0", rnd({8}, 0.1f)), "c0", 1), "a");
  ir::Node* mean = g.add_node("ReduceMean", {x}, {"m"}, "mean");
  mean->set_attr(ir::Attribute::make_int("keepdims", 0));
  ir::Node* gt = g.add_node("Greater", {mean->output(0), init(g, "zero", Tensor::scalar<float>(0.0f))}, {"cond"}, "gt");
  ir::Node* iff = g.add_node("If", {gt->output(0)}, {"y"}, "if");
  ir::Value* w1 = init(g, "w1", rnd({8, 8, 3, 3}, 0.2f));
  ir::Value* b1 = init(g, "b1", rnd({8}, 0.1f));
  ir::Value* w2 = init(g, "w2", rnd({4, 8, 1, 1}, 0.3f));
  ir::Value* b2 = init(g, "b2", rnd({4}, 0.1f));
  auto then_g = std::make_unique<ir::Graph>("then", &g);
  ir::Value* t1 = relu(*then_g, conv(*then_g, a, w1, b1, "t1", 1), "t1r");
  then_g->add_output(conv(*then_g, t1, w2, b2, "t_out", 0));
  auto else_g = std::make_unique<ir::Graph>("else", &g);
  else_g->add_output(conv(*else_g, a, init(*else_g, "w3", rnd({4, 8, 1, 1}, 0.3f)), init(*else_g, "b3", rnd({4}, 0.1f)),
                          "e_out", 0));
  for (auto [name, body] : {std::pair{"then_branch", &then_g}, std::pair{"else_branch", &else_g}}) {
    ir::Attribute attr;
    attr.name = name;
    attr.type = ir::AttrType::kGraph;
    attr.graphs.push_back(std::move(*body));
    iff->set_attr(std::move(attr));
  }
  iff->output(0)->type().elem_type = DataType::kFloat;
  g.add_output(iff->output(0));
  return m;
}

double sqnr_db(const Tensor& ref, const Tensor& got) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < ref.numel(); ++i) {
    num += std::pow(double(ref.data<float>()[i]) - got.data<float>()[i], 2);
    den += std::pow(double(ref.data<float>()[i]), 2);
  }
  return 10.0 * std::log10(den / std::max(num, 1e-30));
}

TEST(CliQuantizeSubgraphs, ConvsInsideIfBodiesAreCalibratedAndQuantized) {
  QTOOL_REQUIRE_ORT();
  testing::TempDir dir;
  const std::string fp32 = dir.file("if_convs.onnx"), out = dir.file("if_convs.int8.onnx");
  onnx_io::save_model(conv_if_model(), fp32);
  // 40 samples, half with a positive mean (then branch) and half negative (else branch).
  const std::vector<Tensor> samples =
      write_normal_samples(dir.file("calib"), {1, 4, 8, 8}, 40, 5, [](int i) { return i % 2 ? 0.4f : -0.4f; });
  const auto r = testing::run_command(
      fmt::format("{} quantize {} --bits 8 --calib {} --json -o {}", testing::qtool_bin(), fp32, dir.file("calib"), out));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto doc = nlohmann::json::parse(r.out);
  std::string all;
  for (const auto& w : doc["actions"]) all += w.get<std::string>() + "\n";
  EXPECT_NE(all.find("3 quantizable nodes inside If/Loop/Scan bodies: 3 quantized, with 3 activations"), std::string::npos) << all;
  EXPECT_NE(all.find("activations calibrated inside the bodies"), std::string::npos) << all;
  // Each branch quantizes its Conv inputs and holds its weights as int8 and its biases as int32
  // (DQ -> Conv groups ONNX Runtime fuses); the outer float weights are gone.
  const ir::Model q = onnx_io::load_model(out);
  for (const auto& n : q.graph->nodes()) {
    if (n->op_type() != "If") continue;
    for (const ir::Graph* body : n->subgraphs()) {
      size_t quantize = 0, convs = 0, quantized_convs = 0;
      for (const auto& b : body->nodes()) {
        quantize += b->op_type() == "QuantizeLinear";
        if (b->op_type() != "Conv") continue;
        ++convs;
        bool all_dq = true;
        for (const ir::Value* in : b->inputs()) all_dq &= in && in->producer() && in->producer()->op_type() == "DequantizeLinear";
        quantized_convs += all_dq;
      }
      EXPECT_GE(quantize, 1u) << body->name();
      EXPECT_EQ(quantized_convs, convs) << body->name();
    }
  }
  for (const ir::Value* v : q.graph->initializers())
    EXPECT_FALSE(v->initializer()->dtype() == DataType::kFloat && v->initializer()->numel() >= 32) << v->name();
  // ONNX Runtime runs it, as qtool's executor does (as written and fused), and both branches stay
  // close to FP32.
  const ir::Model f = onnx_io::load_model(fp32);
  ir::Model fused = q.clone();
  passes::fuse_qdq_to_qoperator(fused);
  runtime::Executor eq(q), ef(f), efu(fused);
  for (int s : {0, 1}) {
    const std::map<std::string, Tensor> in = {{"x", samples[s]}};
    const auto ort = testing::ort_run(out, in);
    const Tensor ours = eq.run(in)[0], ours_fused = efu.run(in)[0], ref = ef.run(in)[0];
    EXPECT_GT(sqnr_db(ort.at("y"), ours_fused), 40.0) << "sample " << s;
    EXPECT_GT(sqnr_db(ort.at("y"), ours), 40.0) << "sample " << s;
    EXPECT_GT(sqnr_db(ref, ours), 25.0) << "sample " << s;
  }
}

// x [1,16] -> MatMul(W2) -> h0; Loop 4 trips { h = Relu(MatMul(h, W) + B) } -> hN, with W and B
// read from the main graph inside the body.
ir::Model loop_matmul_model() {
  std::mt19937 rng(3);
  auto rnd = [&](Shape shape, float scale) { return normal_tensor(rng, std::move(shape), scale); };
  ir::Model m;
  m.set_opset("", 17);
  ir::Graph& g = *m.graph;
  auto typed = [](DataType t, std::vector<int64_t> dims) {
    ir::TypeInfo ti;
    ti.elem_type = t;
    ti.has_shape = true;
    for (int64_t v : dims) ti.dims.push_back(ir::Dim{v, ""});
    return ti;
  };
  ir::Value* x = g.add_input("x", typed(DataType::kFloat, {1, 16}));
  auto init = [&](const std::string& n, Tensor t) {
    ir::Value* v = g.add_initializer(n, std::move(t));
    v->type().elem_type = v->initializer()->dtype();
    return v;
  };
  ir::Value* w = init("W", rnd({16, 16}, 0.3f));
  ir::Value* b = init("B", rnd({16}, 0.1f));
  ir::Node* first = g.add_node("MatMul", {x, init("W2", rnd({16, 16}, 0.3f))}, {"h0"}, "first");
  first->output(0)->type().elem_type = DataType::kFloat;
  ir::Node* loop = g.add_node("Loop", {init("M", Tensor::scalar<int64_t>(4)), nullptr, first->output(0)}, {"hN"}, "loop");
  auto body = std::make_unique<ir::Graph>("body", &g);
  body->add_input("i", typed(DataType::kInt64, {}));
  ir::Value* cond_in = body->add_input("cond_in", typed(DataType::kBool, {}));
  ir::Value* h = body->add_input("h_in", typed(DataType::kFloat, {1, 16}));
  ir::Value* mm = body->add_node("MatMul", {h, w}, {"mm"}, "body_mm")->output(0);
  ir::Value* add = body->add_node("Add", {mm, b}, {"add"}, "body_add")->output(0);
  ir::Value* out = body->add_node("Relu", {add}, {"h_out"}, "body_relu")->output(0);
  ir::Value* cond_out = body->add_node("Identity", {cond_in}, {"cond_out"}, "body_cond")->output(0);
  for (ir::Value* v : {mm, add, out}) v->type().elem_type = DataType::kFloat;
  cond_out->type().elem_type = DataType::kBool;
  body->add_output(cond_out);
  body->add_output(out);
  ir::Attribute attr;
  attr.name = "body";
  attr.type = ir::AttrType::kGraph;
  attr.graphs.push_back(std::move(body));
  loop->set_attr(std::move(attr));
  loop->output(0)->type().elem_type = DataType::kFloat;
  g.add_output(loop->output(0));
  return m;
}

TEST(CliQuantizeSubgraphs, MatMulInsideALoopBodyLoadsAndRunsInOrt) {
  // ONNX Runtime 1.30 rewrites DQ -> MatMul into MatMulNBits when it loads a model and looks the
  // int8 weight up in the MatMul's own graph: a weight stored once in the main graph for a body's
  // MatMul made the model fail to load ("Missing required weight"). Guarded (the bodies' choice is
  // the guard's) and unguarded (bodies quantized), the model loads and agrees with qtool's executor.
  QTOOL_REQUIRE_ORT();
  testing::TempDir dir;
  const std::string fp32 = dir.file("loop.onnx");
  onnx_io::save_model(loop_matmul_model(), fp32);
  const std::vector<Tensor> samples = write_normal_samples(dir.file("calib"), {1, 16}, 40, 9, [](int) { return 0.0f; });
  for (const char* extra : {"", " --no-guard"}) {
    SCOPED_TRACE(extra);
    const std::string out = dir.file(std::string("loop") + (*extra ? ".ng" : "") + ".int8.onnx");
    const auto r = testing::run_command(fmt::format("{} quantize {} --bits 8 --calib {}{} -o {}", testing::qtool_bin(),
                                                    fp32, dir.file("calib"), extra, out));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const ir::Model q = onnx_io::load_model(out);
    runtime::Executor eq(q);
    for (int s : {0, 1}) {
      const std::map<std::string, Tensor> in = {{"x", samples[s]}};
      const auto ort = testing::ort_run(out, in);
      ASSERT_EQ(ort.count("hN"), 1u);
      // ONNX Runtime may run the body's int8 MatMul as MatMulNBits: close, not bit-exact.
      EXPECT_GT(sqnr_db(ort.at("hN"), eq.run(in)[0]), 30.0) << "sample " << s;
    }
  }
}

// One quantization step of the DequantizeLinear that writes graph output `name`, or the largest of
// those read by the float op that writes it (op15's stateN is an Add of a dequantized Concat);
// 0 when no dequantized value reaches it directly.
double output_step(const ir::Model& m, const std::string& name) {
  const auto dq_step = [](const ir::Node* p) {
    if (p == nullptr || p->op_type() != "DequantizeLinear" || p->input(1) == nullptr) return 0.0;
    const Tensor* scale = p->input(1)->initializer();
    if (scale == nullptr || scale->numel() != 1 || scale->dtype() != DataType::kFloat) return 0.0;
    return static_cast<double>(scale->data<float>()[0]);
  };
  const ir::Value* v = m.graph->find_value(name);
  const ir::Node* p = v ? v->producer() : nullptr;
  if (p == nullptr) return 0.0;
  double step = dq_step(p);
  for (const ir::Value* in : p->inputs())
    if (in != nullptr) step = std::max(step, dq_step(in->producer()));
  return step;
}

TEST(CliQuantizeSubgraphs, SileroVadIfBodiesStayValidAndRunInOrt) {
  QTOOL_REQUIRE_SHARED();
  QTOOL_REQUIRE_ORT();
  testing::TempDir dir;
  const std::string calib = dir.file("calib");
  write_vad_samples(shared_path("models/silero-vad/silero_vad.onnx"), calib, 40, 7);
  for (const char* name : {"silero_vad", "silero_vad_op18_ifless", "silero_vad_16k_op15"}) {
    SCOPED_TRACE(name);
    const std::string model = shared_path(fmt::format("models/silero-vad/{}.onnx", name));
    const std::string out = dir.file(fmt::format("{}.int8.onnx", name));
    const auto r = testing::run_command(fmt::format("{} quantize {} --bits 8 --calib {} --json -o {}",
                                                    testing::qtool_bin(), model, calib, out));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto doc = nlohmann::json::parse(r.out);
    std::string all;
    for (const auto& w : doc["actions"]) all += w.get<std::string>() + "\n";
    // Every export keeps some of its network inside If bodies: the weights there are stored as int8
    // (the LSTM gates that the export slices and concatenates from the parent's weights are folded
    // into one tensor, stored once for both branches), the activations stay float, and it says so.
    EXPECT_NE(all.find("weights stored as int8, activations left in float"), std::string::npos) << all;
    EXPECT_LE(std::filesystem::file_size(out), 0.35 * std::filesystem::file_size(model))
        << std::filesystem::file_size(out) << " of " << std::filesystem::file_size(model);
    if (std::string(name) == "silero_vad_16k_op15") {
      // op15 has its 16 kHz network in the main graph: it is quantized, and the guard keeps the
      // power spectrum (re² + im², many decades) in float (with the squares it adds) and raises
      // the STFT's tensors to 16 bits.
      EXPECT_NE(all.find("guard: '/model/stft/Add_output_0' kept in float"), std::string::npos) << all;
      EXPECT_NE(all.find("guard: '/model/stft/Conv_output_0' raised to 16 bits"), std::string::npos) << all;
      EXPECT_NE(all.find("guard round 1:"), std::string::npos) << all;
      EXPECT_GE(doc["evaluation"]["outputs"][0]["sqnr_db"].get<double>(), 25.0) << doc["evaluation"].dump();
    }

    const ir::Model q = onnx_io::load_model(out);
    const ir::Model f = onnx_io::load_model(model);
    // The fused form (what `qtool run`/`compare` execute) must keep the If bodies intact too.
    ir::Model fused = q.clone();
    passes::fuse_qdq_to_qoperator(fused);
    runtime::Executor eq(q), ef(f), efu(fused);
    for (int s : {3, 17, 33}) {
      const std::map<std::string, Tensor> in = {
          {"input", read_npy(fmt::format("{}/input/{:03d}.npy", calib, s))},
          {"state", read_npy(fmt::format("{}/state/{:03d}.npy", calib, s))},
          {"sr", read_npy(fmt::format("{}/sr/{:03d}.npy", calib, s))}};
      const auto ort = testing::ort_run(out, in);
      ASSERT_EQ(ort.count("output"), 1u);
      const std::vector<Tensor> ours = eq.run(in), ref = ef.run(in), ours_fused = efu.run(in);
      if (testing::ort_int8_exact()) {  // ORT's u8s8 kernels saturate on AVX2 CPUs without VNNI
        // The 16-bit tensors are computed in float (DQ -> op -> Q) by both; the two float
        // convolutions sum in different orders (MLAS's AVX-512 blocking is not its AVX2 one), so a
        // value on a rounding edge may land one code apart: within one step of the output's own
        // quantizer, not more.
        for (const auto& [i, output] : {std::pair{0, "output"}, std::pair{1, "stateN"}}) {
          const double tol = 1e-4 + 1.001 * output_step(q, output);
          EXPECT_LT(testing::max_abs_error(ours_fused[i], ort.at(output)), tol) << output << ", fused, sample " << s;
          EXPECT_LT(testing::max_abs_error(ours[i], ort.at(output)), tol) << output << ", sample " << s;
        }
      }
      EXPECT_LT(testing::max_abs_error(ours[0], ref[0]), 0.05) << "sample " << s;  // speech probability
    }
  }
}

}  // namespace
}  // namespace qtool
