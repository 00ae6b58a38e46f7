#include <gtest/gtest.h>

#include "qtool/ir/graph.h"

namespace qtool::ir {
namespace {

// x -> Relu -> a -> Neg -> b (output); w initializer feeds Add(a, w) -> c (dead).
struct Fixture {
  Model m;
  Value *x, *w;
  Node *relu, *neg, *add;
  Fixture() {
    Graph& g = *m.graph;
    x = g.add_input("x");
    w = g.add_initializer("w", Tensor::from_vector<float>({1}, {2.0f}));
    relu = g.add_node("Relu", {x}, {"a"}, "relu");
    neg = g.add_node("Neg", {relu->output(0)}, {"b"}, "neg");
    add = g.add_node("Add", {relu->output(0), w}, {"c"}, "add");
    g.add_output(neg->output(0));
  }
};

TEST(Graph, UsesAndProducers) {
  Fixture f;
  Value* a = f.relu->output(0);
  EXPECT_EQ(a->producer(), f.relu);
  ASSERT_EQ(a->uses().size(), 2u);
  EXPECT_EQ(a->uses()[0].node, f.neg);
  EXPECT_EQ(a->uses()[1].node, f.add);
  EXPECT_EQ(f.w->uses()[0].index, 1);
  EXPECT_TRUE(f.neg->output(0)->is_graph_output());
}

TEST(Graph, DeadNodeEliminationRemovesUnusedBranchAndInitializer) {
  Fixture f;
  EXPECT_EQ(f.m.graph->eliminate_dead_nodes(), 1u);
  EXPECT_EQ(f.m.graph->num_nodes(), 2u);
  EXPECT_EQ(f.m.graph->find_value("c"), nullptr);
  EXPECT_EQ(f.m.graph->find_value("w"), nullptr);
  EXPECT_EQ(f.relu->output(0)->uses().size(), 1u);
}

TEST(Graph, ReplaceAllUsesRewiresNodesAndOutputs) {
  Fixture f;
  Graph& g = *f.m.graph;
  Value* a = f.relu->output(0);
  g.replace_all_uses(a, f.x);
  EXPECT_TRUE(a->uses().empty());
  EXPECT_EQ(f.neg->input(0), f.x);
  EXPECT_EQ(f.x->uses().size(), 3u);  // relu, neg, add
  g.replace_all_uses(f.neg->output(0), f.x);
  EXPECT_EQ(g.outputs()[0], f.x);
}

TEST(Graph, TopoOrderIsStableAndDetectsCycles) {
  Model m;
  Graph& g = *m.graph;
  Value* x = g.add_input("x");
  // Insert consumer before producer in file order.
  Node* n2 = g.add_node("Neg", {}, {"b"}, "second");
  Node* n1 = g.add_node("Relu", {x}, {"a"}, "first");
  n2->add_input(n1->output(0));
  g.add_output(n2->output(0));
  auto order = g.topo_order();
  ASSERT_EQ(order.size(), 2u);
  EXPECT_EQ(order[0], n1);
  EXPECT_EQ(order[1], n2);
  g.topo_sort();
  EXPECT_EQ(g.nodes()[0].get(), n1);
  // Make a cycle: Relu reads b.
  n1->set_input(0, n2->output(0));
  try {
    g.topo_order();
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cycle"), std::string::npos);
  }
}

TEST(Graph, ValidateNamesDanglingInput) {
  Model m;
  Graph& g = *m.graph;
  Value* ghost = g.add_value("ghost");
  Node* n = g.add_node("Relu", {ghost}, {"y"}, "r");
  g.add_output(n->output(0));
  try {
    g.validate();
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'ghost'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("'r' (Relu)"), std::string::npos) << e.what();
  }
}

TEST(Graph, UniqueNamesAndDuplicateOutputsRejected) {
  Fixture f;
  Graph& g = *f.m.graph;
  EXPECT_EQ(g.unique_name("x"), "x_1");
  EXPECT_EQ(g.unique_name("fresh"), "fresh");
  EXPECT_THROW(g.add_node("Relu", {f.x}, {"a"}), Error);
}

TEST(Graph, CloneIsDeepAndSubgraphsSeeOuterScope) {
  Fixture f;
  Graph& g = *f.m.graph;
  auto body = std::make_unique<Graph>("then", &g);
  Node* inner = body->add_node("Identity", {g.find_value("a")}, {"t_out"});
  body->add_output(inner->output(0));
  Node* iff = g.add_node("If", {f.x}, {"y"}, "if");
  Attribute a;
  a.name = "then_branch";
  a.type = AttrType::kGraph;
  a.graphs.push_back(std::move(body));
  iff->set_attr(std::move(a));
  EXPECT_EQ(g.find_value("a")->uses().size(), 3u);

  Model c = f.m.clone();
  EXPECT_EQ(c.graph->num_nodes(), g.num_nodes());
  Value* ca = c.graph->find_value("a");
  ASSERT_NE(ca, nullptr);
  EXPECT_NE(ca, g.find_value("a"));
  EXPECT_EQ(ca->uses().size(), 3u);  // inner node of the cloned subgraph resolves to the clone's 'a'
  EXPECT_EQ(c.graph->find_value("w")->initializer()->data<float>()[0], 2.0f);
  // Removing the If drops its subgraph's outer use.
  g.remove_node(iff);
  EXPECT_EQ(g.find_value("a")->uses().size(), 2u);
}

}  // namespace
}  // namespace qtool::ir
