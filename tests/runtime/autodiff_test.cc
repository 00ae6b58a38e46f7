// The Autodiff tape itself: gradient accumulation over several readers, seeds on intermediate
// values, unreachable parameters, refusal of ops without gradients, reduce_to_shape.
#include <gtest/gtest.h>

#include "grad_check.h"
#include "qtool/core/error.h"
#include "qtool/runtime/autodiff.h"

namespace qtool::runtime {
namespace {

using testing::ft;
using testing::fv;

TEST(AutodiffTape, ValueReadTwiceSumsBothGradients) {
  // y = (a * b) + a, L = Σ r·y: dL/da = r·b + r, dL/db = r·a.
  ir::Model m;
  m.set_opset("", 17);
  ir::Graph& g = *m.graph;
  ir::Value* a = g.add_initializer("a", ft({3}, {1, 2, 3}));
  ir::Value* b = g.add_initializer("b", ft({3}, {4, 5, 6}));
  ir::Node* mul = g.add_node("Mul", {a, b}, {"ab"});
  ir::Node* add = g.add_node("Add", {mul->output(0), a}, {"y"});
  g.add_output(add->output(0));
  Autodiff ad(m, {a, b});
  const auto y = ad.forward({});
  EXPECT_EQ(fv(y[0]), (std::vector<float>{5, 12, 21}));
  const auto grads = ad.backward({ft({3}, {1, 10, 100})});
  EXPECT_EQ(fv(grads[0]), (std::vector<float>{5, 60, 700}));   // r·(b + 1)
  EXPECT_EQ(fv(grads[1]), (std::vector<float>{1, 20, 300}));   // r·a
  // The tape is kept: another backward with other seed gradients.
  const auto g2 = ad.backward({ft({3}, {1, 1, 1})});
  EXPECT_EQ(fv(g2[1]), (std::vector<float>{1, 2, 3}));
}

TEST(AutodiffTape, SeedOnAnIntermediateAndUnreachableParameter) {
  // h = a * x (x a graph input), y = h + c; seed on h: dL/da = r·x, dL/dc = 0 (c is after h).
  ir::Model m;
  m.set_opset("", 17);
  ir::Graph& g = *m.graph;
  ir::TypeInfo ti;
  ti.elem_type = DataType::kFloat;
  ir::Value* x = g.add_input("x", ti);
  ir::Value* a = g.add_initializer("a", ft({2}, {3, 4}));
  ir::Value* c = g.add_initializer("c", ft({2}, {1, 1}));
  ir::Node* mul = g.add_node("Mul", {a, x}, {"h"});
  ir::Node* add = g.add_node("Add", {mul->output(0), c}, {"y"});
  g.add_output(add->output(0));
  Autodiff ad(m, {a, c}, {mul->output(0)});
  const auto h = ad.forward({{"x", ft({2}, {5, 7})}});
  EXPECT_EQ(fv(h[0]), (std::vector<float>{15, 28}));
  const auto grads = ad.backward({ft({2}, {1, 2})});
  EXPECT_EQ(fv(grads[0]), (std::vector<float>{5, 14}));
  EXPECT_EQ(fv(grads[1]), (std::vector<float>{0, 0}));
  ASSERT_EQ(ad.grad_nodes().size(), 1u);
  EXPECT_EQ(ad.grad_nodes()[0]->op_type(), "Mul");
}

TEST(AutodiffTape, SetValueReplacesAnInitializer) {
  ir::Model m;
  m.set_opset("", 17);
  ir::Graph& g = *m.graph;
  ir::Value* a = g.add_initializer("a", ft({2}, {1, 2}));
  ir::Value* b = g.add_initializer("b", ft({2}, {3, 4}));
  g.add_output(g.add_node("Mul", {a, b}, {"y"})->output(0));
  Autodiff ad(m, {a});
  ad.set_value(a, ft({2}, {10, 20}));
  EXPECT_EQ(fv(ad.forward({})[0]), (std::vector<float>{30, 80}));
  EXPECT_EQ(fv(a->initializer()->clone()), (std::vector<float>{1, 2}));  // the model is untouched
  EXPECT_THROW(ad.set_value(a, ft({3}, {1, 2, 3})), Error);
}

TEST(AutodiffTape, OpWithoutGradientOnThePathIsRefusedByName) {
  ir::Model m;
  m.set_opset("", 17);
  ir::Graph& g = *m.graph;
  ir::Value* a = g.add_initializer("a", ft({2}, {1, 2}));
  ir::Node* n = g.add_node("Hardmax", {a}, {"y"}, "the_hardmax");
  g.add_output(n->output(0));
  try {
    Autodiff ad(m, {a});
    FAIL() << "expected kUnsupported";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("the_hardmax"), std::string::npos) << e.what();
  }
}

TEST(AutodiffTape, IntegerBranchesCarryNoGradient) {
  // y = Reshape(a, Shape(a)) * 2: the Shape branch is integer and needs no gradient function.
  ir::Model m;
  m.set_opset("", 17);
  ir::Graph& g = *m.graph;
  ir::Value* a = g.add_initializer("a", ft({2, 2}, {1, 2, 3, 4}));
  ir::Value* two = g.add_initializer("two", ft({}, {2}));
  ir::Node* shape = g.add_node("Shape", {a}, {"s"});
  ir::Node* rs = g.add_node("Reshape", {a, shape->output(0)}, {"r"});
  ir::Node* mul = g.add_node("Mul", {rs->output(0), two}, {"y"});
  g.add_output(mul->output(0));
  Autodiff ad(m, {a});
  ad.forward({});
  EXPECT_EQ(fv(ad.backward({ft({2, 2}, {1, 1, 1, 1})})[0]), (std::vector<float>{2, 2, 2, 2}));
}

TEST(AutodiffTape, ReduceToShapeSumsBroadcastDims) {
  // g [2,3]: reduce to [3] (sum rows), [2,1] (sum columns), [1,1], [] (all).
  const Tensor g = ft({2, 3}, {1, 2, 3, 4, 5, 6});
  EXPECT_EQ(fv(reduce_to_shape(g, {3})), (std::vector<float>{5, 7, 9}));
  EXPECT_EQ(fv(reduce_to_shape(g, {2, 1})), (std::vector<float>{6, 15}));
  EXPECT_EQ(fv(reduce_to_shape(g, {1, 1})), (std::vector<float>{21}));
  EXPECT_EQ(fv(reduce_to_shape(g, {})), (std::vector<float>{21}));
  EXPECT_EQ(fv(reduce_to_shape(g, {2, 3})), fv(g));
  EXPECT_THROW(reduce_to_shape(g, {4}), Error);
}

}  // namespace
}  // namespace qtool::runtime
