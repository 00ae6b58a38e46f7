// qdq_to_qoperator: the QDQ groups ONNX Runtime fuses become the same integer ops, and qtool's
// executor then gives ONNX Runtime's outputs bit for bit.
#include "qtool/passes/qdq_to_qoperator.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <vector>

#include "qtool/core/npy.h"
#include "qtool/onnx_io/onnx_io.h"
#include "qtool/runtime/executor.h"
#include "test_util.h"
#include "graph_builders.h"

namespace qtool::passes {
namespace {

using qtool::testing::float_type;

/// Deterministic values in [-1, 1).
std::vector<float> noise(size_t n, uint32_t seed) {
  std::vector<float> v(n);
  for (auto& x : v) {
    seed = seed * 1664525u + 1013904223u;
    x = static_cast<float>(seed >> 8) / static_cast<float>(1u << 23) - 1.0f;
  }
  return v;
}

/// A float tensor type of a fixed shape.

/// Builds DQ(w int8, per-channel or per-tensor) from float weights; returns the DQ output.
ir::Value* weight_dq(ir::Graph& g, const std::string& name, const Shape& shape, uint32_t seed, bool per_channel,
                     std::vector<float>* scales) {
  const std::vector<float> w = noise(static_cast<size_t>(shape_numel(shape)), seed);
  const int64_t m = shape[0], per = shape_numel(shape) / m;
  std::vector<float> s(per_channel ? m : 1);
  for (size_t c = 0; c < s.size(); ++c) {
    float amax = 0;
    for (int64_t i = 0; i < (per_channel ? per : shape_numel(shape)); ++i)
      amax = std::max(amax, std::fabs(w[c * per + i]));
    s[c] = amax / 127.0f;
  }
  std::vector<int8_t> q(w.size());
  for (size_t i = 0; i < w.size(); ++i)
    q[i] = static_cast<int8_t>(std::nearbyint(w[i] / s[per_channel ? i / per : 0]));
  ir::Value* qv = g.add_initializer(name + "_q", Tensor::from_vector<int8_t>(shape, q));
  ir::Value* sv = g.add_initializer(name + "_s", per_channel ? Tensor::from_vector<float>({m}, s) : Tensor::scalar<float>(s[0]));
  ir::Node* dq = g.add_node("DequantizeLinear", {qv, sv}, {name + "_dq"});
  if (per_channel) dq->set_attr(ir::Attribute::make_int("axis", 0));
  *scales = s;
  return dq->output(0);
}

/// Int32 bias with scale sx * sw[c] behind a DequantizeLinear.
ir::Value* bias_dq(ir::Graph& g, const std::string& name, float sx, const std::vector<float>& sw, uint32_t seed) {
  const std::vector<float> b = noise(sw.size(), seed);
  std::vector<int32_t> q(sw.size());
  std::vector<float> s(sw.size());
  for (size_t c = 0; c < sw.size(); ++c) {
    s[c] = sx * sw[c];
    q[c] = static_cast<int32_t>(std::nearbyint(0.3f * b[c] / s[c]));
  }
  const int64_t m = static_cast<int64_t>(sw.size());
  ir::Value* qv = g.add_initializer(name + "_q", Tensor::from_vector<int32_t>({m}, q));
  ir::Value* sv = g.add_initializer(name + "_s", Tensor::from_vector<float>({m}, s));
  ir::Node* dq = g.add_node("DequantizeLinear", {qv, sv}, {name + "_dq"});
  dq->set_attr(ir::Attribute::make_int("axis", 0));
  return dq->output(0);
}

/// x -> Q -> DQ with per-tensor uint8 parameters; returns {Q output, DQ output}.
std::pair<ir::Value*, ir::Value*> qdq(ir::Graph& g, ir::Value* x, float s, uint8_t z) {
  ir::Value* sv = g.add_initializer(x->name() + "_scale", Tensor::scalar<float>(s));
  ir::Value* zv = g.add_initializer(x->name() + "_zp", Tensor::scalar<uint8_t>(z));
  ir::Node* q = g.add_node("QuantizeLinear", {x, sv, zv}, {x->name() + "_Q"});
  ir::Node* dq = g.add_node("DequantizeLinear", {q->output(0), sv, zv}, {x->name() + "_DQ"});
  return {q->output(0), dq->output(0)};
}

/// A small CNN in QDQ form, laid out the way qtool's and ONNX Runtime's quantizers write it:
/// Conv 3x3 (per-channel) and Conv 1x1 (per-tensor) with int32 biases, a residual Add, MaxPool,
/// GlobalAveragePool, Flatten and a float Gemm classifier.
ir::Model make_qdq_cnn() {
  ir::Model m;
  m.ir_version = 8;
  m.set_opset("", 13);
  ir::Graph& g = *m.graph;
  ir::Value* x = g.add_input("x", float_type({1, 3, 8, 8}));
  const float sx = 2.0f / 255.0f;
  auto [xq, xdq] = qdq(g, x, sx, 128);
  (void)xq;
  std::vector<float> sw1, sw2;
  ir::Value* w1 = weight_dq(g, "w1", {4, 3, 3, 3}, 7, true, &sw1);
  ir::Value* b1 = bias_dq(g, "b1", sx, sw1, 11);
  ir::Node* c1 = g.add_node("Conv", {xdq, w1, b1}, {"conv1"}, "conv1_node");
  c1->set_attr(ir::Attribute::make_ints("pads", {1, 1, 1, 1}));
  c1->set_attr(ir::Attribute::make_ints("kernel_shape", {3, 3}));
  const float s1 = 0.021f;
  auto [c1q, c1dq] = qdq(g, c1->output(0), s1, 120);
  ir::Value* w2 = weight_dq(g, "w2", {4, 4, 1, 1}, 13, false, &sw2);
  ir::Value* b2 = bias_dq(g, "b2", s1, {sw2[0], sw2[0], sw2[0], sw2[0]}, 17);
  ir::Node* c2 = g.add_node("Conv", {c1dq, w2, b2}, {"conv2"}, "conv2_node");
  auto [c2q, c2dq] = qdq(g, c2->output(0), 0.017f, 131);
  ir::Node* add = g.add_node("Add", {c1dq, c2dq}, {"sum"}, "add_node");
  auto [aq, adq] = qdq(g, add->output(0), 0.029f, 125);
  ir::Node* mp = g.add_node("MaxPool", {adq}, {"pooled"}, "pool_node");
  mp->set_attr(ir::Attribute::make_ints("kernel_shape", {2, 2}));
  mp->set_attr(ir::Attribute::make_ints("strides", {2, 2}));
  // Same parameters as its input: ONNX Runtime drops this Q/DQ pair.
  ir::Value* ps = g.find_value("sum_scale");
  ir::Value* pz = g.find_value("sum_zp");
  ir::Node* mpq = g.add_node("QuantizeLinear", {mp->output(0), ps, pz}, {"pooled_Q"});
  ir::Node* mpdq = g.add_node("DequantizeLinear", {mpq->output(0), ps, pz}, {"pooled_DQ"});
  ir::Node* gap = g.add_node("GlobalAveragePool", {mpdq->output(0)}, {"gap"}, "gap_node");
  auto [gq, gdq] = qdq(g, gap->output(0), 0.011f, 3);
  ir::Node* fl = g.add_node("Flatten", {gdq}, {"flat"}, "flatten_node");
  ir::Value* fs = g.find_value("gap_scale");
  ir::Value* fz = g.find_value("gap_zp");
  ir::Node* flq = g.add_node("QuantizeLinear", {fl->output(0), fs, fz}, {"flat_Q"});
  ir::Node* fldq = g.add_node("DequantizeLinear", {flq->output(0), fs, fz}, {"flat_DQ"});
  ir::Value* wg = g.add_initializer("wg", Tensor::from_vector<float>({4, 5}, noise(20, 23)));
  ir::Node* gemm = g.add_node("Gemm", {fldq->output(0), wg}, {"y"}, "gemm_node");
  g.add_output(gemm->output(0));
  g.find_value("y")->type() = float_type({1, 5});
  return m;
}

std::map<std::string, Tensor> sample_input(uint32_t seed) {
  return {{"x", Tensor::from_vector<float>({1, 3, 8, 8}, noise(192, seed))}};
}

int count(const ir::Graph& g, const std::string& op) {
  int n = 0;
  for (const auto& node : g.nodes()) n += node->op_type() == op;
  return n;
}

TEST(QdqToQOperator, FusesTheGroupsOnnxRuntimeFuses) {
  ir::Model m = make_qdq_cnn();
  const QOperatorReport r = fuse_qdq_to_qoperator(m);
  const ir::Graph& g = *m.graph;
  EXPECT_EQ(r.fused.at("QLinearConv"), 2);
  EXPECT_EQ(r.fused.at("QLinearAdd"), 1);
  EXPECT_EQ(r.fused.at("QLinearGlobalAveragePool"), 1);
  EXPECT_EQ(r.fused.at("dropped Q/DQ"), 2);  // MaxPool and Flatten
  EXPECT_EQ(r.rewrites, 6u);
  EXPECT_EQ(count(g, "Conv"), 0);
  EXPECT_EQ(count(g, "QLinearConv"), 2);
  EXPECT_EQ(count(g, "QuantizeLinear"), 1);    // the model input
  EXPECT_EQ(count(g, "DequantizeLinear"), 1);  // before the float Gemm
  EXPECT_EQ(count(g, "Gemm"), 1);
  EXPECT_EQ(m.opset("com.microsoft"), 1);
  // The fused ops keep the quantized tensors' names and read the int32 bias directly.
  const ir::Node* c1 = g.find_value("conv1_Q")->producer();
  ASSERT_EQ(c1->op_type(), "QLinearConv");
  EXPECT_EQ(c1->inputs().size(), 9u);
  EXPECT_EQ(c1->input(8)->name(), "b1_q");
  EXPECT_EQ(c1->input(0)->name(), "x_Q");
  EXPECT_EQ(c1->attr_ints("pads"), (std::vector<int64_t>{1, 1, 1, 1}));
  EXPECT_EQ(g.find_value("pooled_Q")->producer()->op_type(), "MaxPool");
  EXPECT_EQ(g.find_value("pooled_Q")->producer()->input(0)->name(), "sum_Q");
  // Aliases map each fused tensor back to the float tensor it quantizes.
  bool found = false;
  for (const QOperatorAlias& a : r.aliases) {
    if (a.value != "conv1_Q") continue;
    found = true;
    EXPECT_EQ(a.float_name, "conv1");
    EXPECT_EQ(a.node, "conv1_node");
    EXPECT_EQ(a.op_type, "Conv");
    EXPECT_FLOAT_EQ(a.scale, 0.021f);
    EXPECT_EQ(a.zero_point, 120);
  }
  EXPECT_TRUE(found);
  EXPECT_NO_THROW(g.validate());
}

TEST(QdqToQOperator, FusedOutputsStayWithinAStepOfTheQdqForm) {
  ir::Model qdq_model = make_qdq_cnn();
  ir::Model fused = qdq_model.clone();
  fuse_qdq_to_qoperator(fused);
  runtime::Executor a(qdq_model), b(fused);
  for (uint32_t seed : {1u, 2u, 3u}) {
    const Tensor ya = a.run(sample_input(seed))[0], yb = b.run(sample_input(seed))[0];
    // The pooled features differ by at most a step or two (0.011 each) through |wg| <= 1 per term.
    EXPECT_LT(testing::max_abs_error(ya, yb), 4 * 2 * 0.011 + 1e-5);
  }
}

TEST(QdqToQOperator, LeavesGroupsOnnxRuntimeDoesNotFuse) {
  // Conv output also read by another node: ORT keeps the float Conv (and so do we).
  ir::Model m = make_qdq_cnn();
  ir::Graph& g = *m.graph;
  ir::Node* relu = g.add_node("Relu", {g.find_value("conv1")}, {"side"});
  g.add_output(relu->output(0));
  // Flatten's Q/DQ with a different scale than its input: not a pure data move.
  g.find_value("flat_Q")->producer()->set_input(1, g.add_initializer("other_scale", Tensor::scalar<float>(0.5f)));
  const QOperatorReport r = fuse_qdq_to_qoperator(m);
  EXPECT_EQ(r.fused.at("QLinearConv"), 1);  // conv2 only
  EXPECT_EQ(r.fused.at("dropped Q/DQ"), 1);  // MaxPool only
  EXPECT_EQ(count(g, "Conv"), 1);
  EXPECT_EQ(count(g, "Flatten"), 1);
  EXPECT_EQ(g.find_value("flat")->producer()->op_type(), "Flatten");
  EXPECT_NO_THROW(g.validate());
}

TEST(QdqToQOperator, SixteenBitActivationsAreNotFused) {
  ir::Model m;
  m.set_opset("", 21);
  ir::Graph& g = *m.graph;
  ir::Value* x = g.add_input("x", float_type({1, 2}));
  ir::Value* s = g.add_initializer("s", Tensor::scalar<float>(0.01f));
  ir::Value* z = g.add_initializer("z", Tensor::scalar<uint16_t>(100));
  ir::Node* q = g.add_node("QuantizeLinear", {x, s, z}, {"xq"});
  ir::Node* dq = g.add_node("DequantizeLinear", {q->output(0), s, z}, {"xd"});
  ir::Node* add = g.add_node("Add", {dq->output(0), dq->output(0)}, {"sum"});
  ir::Node* q2 = g.add_node("QuantizeLinear", {add->output(0), s, z}, {"sq"});
  g.add_output(q2->output(0));
  EXPECT_EQ(fuse_qdq_to_qoperator(m).rewrites, 0u);
  EXPECT_EQ(count(g, "Add"), 1);
}

TEST(QdqToQOperator, ExecutorMatchesOnnxRuntimeBitForBit) {
  QTOOL_REQUIRE_ORT();
  QTOOL_REQUIRE_EXACT_ORT_INT8();
  testing::TempDir dir;
  ir::Model qdq_model = make_qdq_cnn();
  const std::string path = dir.file("cnn_qdq.onnx");
  onnx_io::save_model(qdq_model, path);
  ir::Model fused = qdq_model.clone();
  fuse_qdq_to_qoperator(fused);
  // The QOperator form itself is a valid model ONNX Runtime loads.
  const std::string fused_path = dir.file("cnn_qop.onnx");
  onnx_io::save_model(fused, fused_path);
  runtime::Executor ex(fused);
  for (uint32_t seed : {1u, 2u, 3u, 4u}) {
    const auto in = sample_input(seed);
    const Tensor ours = ex.run(in)[0];
    const Tensor ort = testing::ort_run(path, in).at("y");
    const Tensor ort_qop = testing::ort_run(fused_path, in).at("y");
    // Identical integer features; only the float Gemm's summation order may differ.
    EXPECT_LT(testing::max_abs_error(ours, ort), 1e-5) << "seed " << seed;
    EXPECT_LT(testing::max_abs_error(ours, ort_qop), 1e-5) << "seed " << seed;
  }
}

TEST(QdqToQOperator, PyTorchMobileNetV3FusedEqualsOnnxRuntime) {
  // PyTorch's QDQ export (Identity on every weight, uint8 -> uint8 Casts between Q and DQ, Conv ->
  // Relu -> Q): qtool's fusion (`qtool run`'s default) must make the groups ONNX Runtime makes, so
  // that both run the same integer kernels. The weights are moved to uint8 (w + 128, zero point
  // + 128: the same integers) so that ONNX Runtime's kernels are exact on every CPU (its u8s8 ones
  // saturate on AVX2 without VNNI); the scores must then be equal, and equal to qtool's on the
  // int8 original.
  QTOOL_REQUIRE_SHARED();
  QTOOL_REQUIRE_ORT();
  const std::string path = testing::shared_path("models/mobilenetv2/pytorch_mobilenet_v3_qdq.onnx");
  ir::Model original = onnx_io::load_model(path);
  ir::Model u8 = original.clone();
  int moved = 0;
  for (const auto& n : u8.graph->nodes()) {
    if (n->op_type() != "DequantizeLinear" || n->inputs().size() < 3) continue;
    auto source = [](ir::Value* v) {
      while (v && !v->is_initializer() && v->producer() && v->producer()->op_type() == "Identity") v = v->producer()->input(0);
      return v && v->is_initializer() ? v : nullptr;
    };
    ir::Value* w = source(n->input(0));
    ir::Value* z = source(n->input(2));
    if (!w || !z || w->initializer()->dtype() != DataType::kInt8) continue;
    for (ir::Value* v : {w, z}) {
      const Tensor& t = *v->initializer();
      if (t.dtype() == DataType::kUint8) continue;  // a zero point shared with a layer already moved
      Tensor u(DataType::kUint8, t.shape());
      for (int64_t i = 0; i < t.numel(); ++i) u.mutable_data<uint8_t>()[i] = static_cast<uint8_t>(t.data<int8_t>()[i] + 128);
      v->set_initializer(std::move(u));
    }
    ++moved;
  }
  ASSERT_EQ(moved, 53);  // 52 convolutions and the classifier
  testing::TempDir dir;
  onnx_io::save_model(u8, dir.file("u8.onnx"));
  for (const char* set : {"test_data_set_0", "test_data_set_1"}) {
    SCOPED_TRACE(set);
    const Tensor x = onnx_io::load_tensor_pb(testing::shared_path(std::string("models/mobilenetv2/") + set + "/input_0.pb"));
    write_npy(dir.file("x.npy"), x);
    testing::CommandResult r = testing::run_command("node " + testing::source_path("tools/ort/run.js") + " " +
                                                    dir.file("u8.onnx") + " " + dir.file("ort") + " image=" + dir.file("x.npy"));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const Tensor ref = read_npy(dir.file("ort/0.npy"));
    auto fused_run = [&](ir::Model m) {
      const QOperatorReport rep = fuse_qdq_to_qoperator(m);
      EXPECT_EQ(rep.fused.at("QLinearConv"), 52);
      EXPECT_EQ(rep.fused.at("dropped Relu before Q"), 35);
      runtime::Executor ex(m, {.threads = 2});
      return ex.run({{"image", x}})[0];
    };
    const Tensor got_u8 = fused_run(u8.clone()), got_i8 = fused_run(original.clone());
    ASSERT_EQ(got_u8.shape(), ref.shape());
    // The scores are a DequantizeLinear of uint8 levels, one step = its scale (0.153). Here (AMD
    // Zen 3, AVX2) they are equal; the bar is one step, for CPUs whose MLAS kernels differ. Before
    // the Relu and Cast handling 17 of 52 convs fused (4 steps off); before QLinearAdd followed
    // ONNX Runtime's FMA order, test_data_set_1 was 2 steps off.
    const float* pd = ref.data<float>();
    float step = std::numeric_limits<float>::infinity();  // the smallest gap between two levels
    std::vector<float> levels(pd, pd + ref.numel());
    std::sort(levels.begin(), levels.end());
    for (size_t i = 1; i < levels.size(); ++i)
      if (levels[i] > levels[i - 1]) step = std::min(step, levels[i] - levels[i - 1]);
    EXPECT_NEAR(step, 0.1531, 0.0005);
    EXPECT_LE(testing::max_abs_error(got_u8, ref), 1.0001 * step);
    EXPECT_EQ(testing::max_abs_error(got_i8, got_u8), 0.0);  // the same integers either way
  }
}

}  // namespace
}  // namespace qtool::passes
