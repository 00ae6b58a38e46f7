#include "qtool/passes/upgrade_opset.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "qtool/onnx_io/onnx_io.h"
#include "qtool/passes/pass.h"
#include "qtool/runtime/executor.h"
#include "test_util.h"
#include "graph_builders.h"

namespace qtool::passes {
namespace {

using qtool::testing::float_type;

Tensor ramp(const Shape& s, float step) {
  std::vector<float> v(shape_numel(s));
  for (size_t i = 0; i < v.size(); ++i) v[i] = std::sin(static_cast<float>(i) * step) * 3.0f;
  return Tensor::from_vector<float>(s, v);
}


// Runs `m` before and after upgrading to `to` on `x` and expects the same outputs.
void expect_same_after_upgrade(ir::Model& m, const Tensor& x, int64_t to, size_t min_rewrites) {
  const std::vector<Tensor> before = runtime::Executor(m).run({{"x", x}});
  PassOptions o;
  o.target_opset = to;
  EXPECT_GE(upgrade_opset(m, o), min_rewrites);
  EXPECT_EQ(m.opset(""), to);
  const std::vector<Tensor> after = runtime::Executor(m).run({{"x", x}});
  ASSERT_EQ(before.size(), after.size());
  for (size_t k = 0; k < before.size(); ++k) {
    ASSERT_EQ(before[k].shape(), after[k].shape());
    EXPECT_LE(testing::max_abs_error(before[k], after[k]), 1e-6) << "output " << k;
  }
}

TEST(UpgradeOpset, SoftmaxCoerce2DBecomesFlattenSoftmaxReshape) {
  ir::Model m;
  m.set_opset("", 11);
  ir::Graph& g = *m.graph;
  ir::Value* x = g.add_input("x", float_type({2, 3, 4}));
  g.add_node("Softmax", {x}, {"y"})->set_attr(ir::Attribute::make_int("axis", 1));  // over 3*4 values
  g.add_output(g.find_value("y"));
  const Tensor xv = ramp({2, 3, 4}, 0.7f);
  expect_same_after_upgrade(m, xv, 13, 1);
  // Old semantics: each row of 12 sums to 1 (not each group of 3).
  const Tensor y = runtime::Executor(m).run({{"x", xv}})[0];
  double s = 0;
  for (int i = 0; i < 12; ++i) s += y.data<float>()[i];
  EXPECT_NEAR(s, 1.0, 1e-5);
  EXPECT_EQ(g.find_value("y")->producer()->op_type(), "Reshape");
}

TEST(UpgradeOpset, SoftmaxOnLastAxisOrUnitTailOnlySetsAxis) {
  ir::Model m;
  m.set_opset("", 7);
  ir::Graph& g = *m.graph;
  ir::Value* x = g.add_input("x", float_type({1, 5, 1, 1}));  // SqueezeNet's softmax input
  g.add_node("Softmax", {x}, {"y"});
  g.add_output(g.find_value("y"));
  expect_same_after_upgrade(m, ramp({1, 5, 1, 1}, 0.3f), 13, 1);
  ASSERT_EQ(g.num_nodes(), 1u);
  EXPECT_EQ(g.nodes()[0]->attr_int("axis", -1), 1);
}

TEST(UpgradeOpset, AttributesBecomeInputs) {
  ir::Model m;
  m.set_opset("", 7);
  ir::Graph& g = *m.graph;
  ir::Value* x = g.add_input("x", float_type({2, 6}));
  ir::Node* clip = g.add_node("Clip", {x}, {"c"});
  clip->set_attr(ir::Attribute::make_float("min", -1.0f));
  clip->set_attr(ir::Attribute::make_float("max", 2.0f));
  ir::Node* us = g.add_node("Unsqueeze", {clip->output(0)}, {"u"});
  us->set_attr(ir::Attribute::make_ints("axes", {0}));
  ir::Node* sq = g.add_node("Squeeze", {us->output(0)}, {"s"});
  sq->set_attr(ir::Attribute::make_ints("axes", {0}));
  ir::Node* pad = g.add_node("Pad", {sq->output(0)}, {"p"});
  pad->set_attr(ir::Attribute::make_ints("pads", {0, 1, 0, 2}));
  pad->set_attr(ir::Attribute::make_float("value", 0.5f));
  ir::Node* split = g.add_node("Split", {pad->output(0)}, {"a", "b"});
  split->set_attr(ir::Attribute::make_int("axis", 1));
  split->set_attr(ir::Attribute::make_ints("split", {4, 5}));
  ir::Node* drop = g.add_node("Dropout", {split->output(1)}, {"d"});
  drop->set_attr(ir::Attribute::make_float("ratio", 0.25f));
  g.add_output(split->output(0));
  g.add_output(drop->output(0));
  expect_same_after_upgrade(m, ramp({2, 6}, 0.9f), 13, 5);
  EXPECT_FALSE(clip->has_attr("min"));
  ASSERT_NE(clip->input(1), nullptr);
  EXPECT_FLOAT_EQ(clip->input(1)->initializer()->data<float>()[0], -1.0f);
  EXPECT_FLOAT_EQ(clip->input(2)->initializer()->data<float>()[0], 2.0f);
  EXPECT_EQ(us->input(1)->initializer()->data<int64_t>()[0], 0);
  EXPECT_EQ(pad->input(1)->initializer()->data<int64_t>()[3], 2);
  EXPECT_EQ(split->input(1)->initializer()->data<int64_t>()[1], 5);
  EXPECT_GE(m.ir_version, 7);
}

TEST(UpgradeOpset, UpsampleBecomesResize) {
  ir::Model m;
  m.set_opset("", 7);
  ir::Graph& g = *m.graph;
  ir::Value* x = g.add_input("x", float_type({1, 1, 2, 3}));
  ir::Node* up = g.add_node("Upsample", {x}, {"y"});
  up->set_attr(ir::Attribute::make_floats("scales", {1.0f, 1.0f, 2.0f, 2.0f}));
  up->set_attr(ir::Attribute::make_string("mode", "nearest"));
  g.add_output(up->output(0));
  PassOptions o;
  upgrade_opset(m, o);
  EXPECT_EQ(up->op_type(), "Resize");
  const Tensor y = runtime::Executor(m).run({{"x", ramp({1, 1, 2, 3}, 1.0f)}})[0];
  ASSERT_EQ(y.shape(), (Shape{1, 1, 4, 6}));
  // Nearest with floor: y[r][c] = x[r/2][c/2].
  const Tensor xv = ramp({1, 1, 2, 3}, 1.0f);
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 6; ++c) EXPECT_FLOAT_EQ(y.data<float>()[r * 6 + c], xv.data<float>()[(r / 2) * 3 + c / 2]);
}

TEST(UpgradeOpset, Ir3InitializerInputsStayConstants) {
  // IR 3 lists every initializer as a graph input (SqueezeNet 1.1, mnist-8); raised to IR >= 4 they
  // must stop being inputs, or they become overridable defaults that ONNX Runtime neither folds nor
  // pre-packs (its NCHWc convolutions then do not apply).
  ir::Model m;
  m.ir_version = 3;
  m.set_opset("", 7);
  ir::Graph& g = *m.graph;
  ir::Value* x = g.add_input("x", float_type({1, 3}));
  ir::Value* w = g.add_initializer("w", ramp({3}, 0.5f));
  g.add_input("w", float_type({3}));
  g.add_output(g.add_node("Mul", {x, w}, {"y"})->output(0));
  ASSERT_EQ(g.inputs().size(), 2u);
  expect_same_after_upgrade(m, ramp({1, 3}, 0.3f), 13, 2);
  ASSERT_EQ(g.inputs().size(), 1u);
  EXPECT_EQ(g.inputs()[0]->name(), "x");
  EXPECT_TRUE(g.find_value("w")->is_initializer());
  EXPECT_GE(m.ir_version, 7);
}

TEST(UpgradeOpset, ReshapeShapeAttribute) {
  ir::Model m;
  m.set_opset("", 1);
  ir::Graph& g = *m.graph;
  ir::Value* x = g.add_input("x", float_type({2, 6}));
  ir::Node* r = g.add_node("Reshape", {x}, {"y"});
  r->set_attr(ir::Attribute::make_ints("shape", {3, 4}));
  g.add_output(r->output(0));
  PassOptions o;
  upgrade_opset(m, o);
  ASSERT_NE(r->input(1), nullptr);
  const Tensor y = runtime::Executor(m).run({{"x", ramp({2, 6}, 1.0f)}})[0];
  EXPECT_EQ(y.shape(), (Shape{3, 4}));
}

// Every shared model below opset 13, upgraded: ONNX Runtime loads it and computes the same
// outputs as on the original.
void check_shared(const std::string& rel, const std::string& input_pb) {
  QTOOL_REQUIRE_SHARED();
  QTOOL_REQUIRE_ORT();
  const std::string path = testing::shared_path(rel);
  ir::Model m = onnx_io::load_model(path);
  const int64_t from = m.opset("");
  std::string in_name;
  const Tensor x = onnx_io::load_tensor_pb(testing::shared_path(input_pb), &in_name);
  if (in_name.empty()) in_name = m.graph->runtime_inputs().at(0)->name();
  run_passes(m, {"remove_initializer_inputs", "upgrade_opset"});
  EXPECT_EQ(m.opset(""), 13) << rel << " was at " << from;
  testing::TempDir dir;
  onnx_io::save_model(m, dir.file("up.onnx"));
  const auto a = testing::ort_run(path, {{in_name, x}});
  const auto b = testing::ort_run(dir.file("up.onnx"), {{in_name, x}});
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a) {
    ASSERT_TRUE(b.count(name)) << name;
    EXPECT_LE(testing::max_abs_error(t, b.at(name)), 1e-5) << rel << " output " << name;
  }
}

TEST(UpgradeOpsetShared, Mnist8) { check_shared("models/mnist-8/mnist-8.onnx", "models/mnist-8/test_data_set_0/input_0.pb"); }
TEST(UpgradeOpsetShared, MnistCnnPytorch) {
  check_shared("models/mnist-cnn-pytorch/cnn_mnist_pytorch.onnx", "models/mnist-cnn-pytorch/test_data_set_0/input_0.pb");
}
TEST(UpgradeOpsetShared, SqueezeNet) {
  check_shared("models/squeezenet1.1/squeezenet1.1_fp32.onnx", "models/squeezenet1.1/test_data_set_0/input_0.pb");
}
TEST(UpgradeOpsetShared, MobileNetV2) {
  check_shared("models/mobilenetv2/mobilenetv2_dequant_fp32.onnx", "models/mobilenetv2/test_data_set_fp32_0/input_0.pb");
}

}  // namespace
}  // namespace qtool::passes
