#include "qtool/passes/fold_constants.h"

#include <gtest/gtest.h>

namespace qtool::passes {
namespace {

TEST(FoldConstants, FoldsConstantSubgraphKeepsNames) {
  ir::Model m;
  m.set_opset("", 13);
  ir::Graph& g = *m.graph;
  ir::Value* x = g.add_input("x");
  ir::Node* c = g.add_node("Constant", {}, {"k"});
  c->set_attr(ir::Attribute::make_tensor("value", Tensor::from_vector<float>({2}, {1.0f, 2.0f})));
  ir::Value* two = g.add_initializer("two", Tensor::scalar<float>(2.0f));
  ir::Node* mul = g.add_node("Mul", {c->output(0), two}, {"k2"});       // [2, 4]
  ir::Node* add = g.add_node("Add", {mul->output(0), c->output(0)}, {"k3"});  // [3, 6]
  g.add_node("Add", {x, add->output(0)}, {"y"});
  g.add_output(g.find_value("y"));
  EXPECT_EQ(fold_constants(m), 3u);
  ASSERT_EQ(g.num_nodes(), 1u);
  const ir::Value* k3 = g.find_value("k3");
  ASSERT_NE(k3, nullptr);
  ASSERT_TRUE(k3->is_initializer());
  EXPECT_FLOAT_EQ(k3->initializer()->data<float>()[0], 3.0f);
  EXPECT_FLOAT_EQ(k3->initializer()->data<float>()[1], 6.0f);
  EXPECT_EQ(g.find_value("y")->producer()->input(1), k3);
  // Dead constants are gone.
  EXPECT_EQ(g.find_value("k"), nullptr);
}

TEST(FoldConstants, SkipsHugeExpansionAndRuntimeInputs) {
  ir::Model m;
  m.set_opset("", 13);
  ir::Graph& g = *m.graph;
  ir::Value* x = g.add_input("x");
  ir::Value* shape = g.add_initializer("shape", Tensor::from_vector<int64_t>({2}, {1024, 2048}));
  ir::Node* cos = g.add_node("ConstantOfShape", {shape}, {"big"});
  ir::Node* add = g.add_node("Add", {x, cos->output(0)}, {"y"});
  g.add_output(add->output(0));
  PassOptions o;
  o.fold_max_elements = 1 << 20;
  EXPECT_EQ(fold_constants(m, o), 0u);  // 2M elements > cap: stays a node
  EXPECT_EQ(g.num_nodes(), 2u);
  o.fold_max_elements = 1 << 22;
  EXPECT_EQ(fold_constants(m, o), 1u);
  EXPECT_TRUE(g.find_value("big")->is_initializer());
  EXPECT_EQ(g.find_value("big")->initializer()->numel(), 1024 * 2048);
}

TEST(FoldConstants, StaticShape) {
  ir::Model m;
  m.set_opset("", 13);
  ir::Graph& g = *m.graph;
  ir::TypeInfo t;
  t.elem_type = DataType::kFloat;
  t.has_shape = true;
  t.dims = {ir::Dim{2, ""}, ir::Dim{3, ""}, ir::Dim{4, ""}};
  ir::Value* x = g.add_input("x", t);
  ir::Node* s = g.add_node("Shape", {x}, {"s"});
  g.add_node("Reshape", {x, s->output(0)}, {"y"});
  g.add_output(g.find_value("y"));
  EXPECT_EQ(fold_constants(m), 1u);
  const Tensor* v = g.find_value("s")->initializer();
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(v->numel(), 3);
  EXPECT_EQ(v->data<int64_t>()[2], 4);
}

}  // namespace
}  // namespace qtool::passes
