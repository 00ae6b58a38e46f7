#include "qtool/passes/eliminate_identity.h"

#include <gtest/gtest.h>

#include "qtool/passes/remove_initializer_inputs.h"

namespace qtool::passes {
namespace {

TEST(EliminateIdentity, RemovesIdentityAndInferenceDropout) {
  ir::Model m;
  m.set_opset("", 13);
  ir::Graph& g = *m.graph;
  ir::Value* x = g.add_input("x");
  ir::Node* id = g.add_node("Identity", {x}, {"a"});
  ir::Node* dr = g.add_node("Dropout", {id->output(0)}, {"b", ""});
  ir::Node* relu = g.add_node("Relu", {dr->output(0)}, {"c"});
  ir::Node* last = g.add_node("Identity", {relu->output(0)}, {"y"});
  g.add_output(last->output(0));
  EXPECT_EQ(eliminate_identity(m), 2u);
  ASSERT_EQ(g.num_nodes(), 2u);
  EXPECT_EQ(g.find_value("c")->producer()->input(0), x);  // Relu reads x directly
  // The Identity producing the graph output keeps the interface name.
  EXPECT_EQ(g.outputs()[0]->name(), "y");
}

TEST(EliminateIdentity, KeepsDropoutWithUsedMaskOrTraining) {
  ir::Model m;
  m.set_opset("", 13);
  ir::Graph& g = *m.graph;
  ir::Value* x = g.add_input("x");
  ir::Node* d1 = g.add_node("Dropout", {x}, {"a", "mask"});
  g.add_node("Cast", {d1->output(1)}, {"m2"})->set_attr(ir::Attribute::make_int("to", 1));
  ir::Value* train = g.add_initializer("t", Tensor::scalar<bool>(true));
  ir::Value* ratio = g.add_initializer("r", Tensor::scalar<float>(0.5f));
  ir::Node* d2 = g.add_node("Dropout", {d1->output(0), ratio, train}, {"b"});
  g.add_output(g.find_value("m2"));
  g.add_output(d2->output(0));
  EXPECT_EQ(eliminate_identity(m), 0u);
  EXPECT_EQ(g.num_nodes(), 3u);
}

TEST(EliminateIdentity, RemovesCastsToTheTypeTheInputHas) {
  // PyTorch's QDQ exports: Q (uint8 zero point) -> Cast(to=uint8) -> DQ. That Cast goes; a Cast
  // that changes the type, one whose input type is unknown and one producing a graph output stay.
  ir::Model m;
  m.set_opset("", 13);
  ir::Graph& g = *m.graph;
  ir::Value* x = g.add_input("x");
  ir::Value* s = g.add_initializer("s", Tensor::scalar<float>(0.5f));
  ir::Value* z = g.add_initializer("z", Tensor::scalar<uint8_t>(3));
  ir::Node* q = g.add_node("QuantizeLinear", {x, s, z}, {"q"});
  ir::Node* same = g.add_node("Cast", {q->output(0)}, {"q2"});
  same->set_attr(ir::Attribute::make_int("to", static_cast<int64_t>(DataType::kUint8)));
  ir::Node* dq = g.add_node("DequantizeLinear", {same->output(0), s, z}, {"d"});
  ir::Node* widen = g.add_node("Cast", {q->output(0)}, {"f"});
  widen->set_attr(ir::Attribute::make_int("to", static_cast<int64_t>(DataType::kFloat)));
  ir::Node* unknown = g.add_node("Cast", {x}, {"u"});
  unknown->set_attr(ir::Attribute::make_int("to", static_cast<int64_t>(DataType::kFloat)));
  ir::Node* out = g.add_node("Cast", {q->output(0)}, {"y"});
  out->set_attr(ir::Attribute::make_int("to", static_cast<int64_t>(DataType::kUint8)));
  g.add_output(dq->output(0));
  g.add_output(widen->output(0));
  g.add_output(unknown->output(0));
  g.add_output(out->output(0));
  EXPECT_EQ(eliminate_identity(m), 1u);
  EXPECT_EQ(dq->input(0), q->output(0));  // DQ reads Q directly
  EXPECT_EQ(g.num_nodes(), 5u);
}

TEST(RemoveInitializerInputs, InitializersStopBeingInputs) {
  ir::Model m;
  m.ir_version = 3;
  m.set_opset("", 8);
  ir::Graph& g = *m.graph;
  ir::Value* x = g.add_input("x");
  ir::Value* w = g.add_input("W");
  w->set_initializer(Tensor::from_vector<float>({2}, {1.0f, 2.0f}));
  g.add_node("Mul", {x, w}, {"y"});
  g.add_output(g.find_value("y"));
  ASSERT_EQ(g.inputs().size(), 2u);
  EXPECT_EQ(remove_initializer_inputs(m), 1u);
  ASSERT_EQ(g.inputs().size(), 1u);
  EXPECT_EQ(g.inputs()[0]->name(), "x");
  const ir::Value* nw = g.find_value("W");
  ASSERT_NE(nw, nullptr);
  EXPECT_TRUE(nw->is_initializer());
  EXPECT_FALSE(nw->is_graph_input());
  EXPECT_EQ(g.find_value("y")->producer()->input(1), nw);
  EXPECT_FLOAT_EQ(nw->initializer()->data<float>()[1], 2.0f);
  EXPECT_GE(m.ir_version, 4);
}

}  // namespace
}  // namespace qtool::passes
