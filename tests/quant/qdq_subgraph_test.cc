// emit_qdq next to If bodies: a Relu whose output an If body reads is not folded away (the body
// would read the pre-activation values: -0.5 instead of 0 below).
#include <gtest/gtest.h>

#include <cmath>
#include <memory>

#include "qtool/quant/qdq.h"
#include "qtool/runtime/executor.h"

namespace qtool::quant {
namespace {

// x [1,1,4] -> Conv(w = -1, b = 0.5) -> c -> Relu -> z -> Conv(w = 2) -> y1
//                                            z -> If(cond) { Identity(z) } -> y2 (outer-scope read)
ir::Model model_with_if() {
  ir::Model m;
  m.set_opset("", 13);
  ir::Graph& g = *m.graph;
  ir::TypeInfo ft;
  ft.elem_type = DataType::kFloat;
  ir::Value* x = g.add_input("x", ft);
  ir::TypeInfo bt;
  bt.elem_type = DataType::kBool;
  ir::Value* cond = g.add_input("cond", bt);
  auto init = [&](const std::string& n, Tensor t) {
    ir::Value* v = g.add_initializer(n, std::move(t));
    v->type().elem_type = DataType::kFloat;
    return v;
  };
  ir::Node* c1 = g.add_node("Conv", {x, init("w1", Tensor::from_vector<float>({1, 1, 1}, {-1.0f})),
                                     init("b1", Tensor::from_vector<float>({1}, {0.5f}))}, {"c"}, "c1");
  ir::Node* relu = g.add_node("Relu", {c1->output(0)}, {"z"}, "relu");
  ir::Value* z = relu->output(0);
  ir::Node* c2 = g.add_node("Conv", {z, init("w2", Tensor::from_vector<float>({1, 1, 1}, {2.0f}))}, {"y1"}, "c2");
  ir::Node* iff = g.add_node("If", {cond}, {"y2"}, "if");
  for (const char* branch : {"then_branch", "else_branch"}) {
    auto body = std::make_unique<ir::Graph>(branch, &g);
    body->add_output(body->add_node("Identity", {z}, {std::string(branch) + "_out"})->output(0));
    ir::Attribute a;
    a.name = branch;
    a.type = ir::AttrType::kGraph;
    a.graphs.push_back(std::move(body));
    iff->set_attr(std::move(a));
  }
  for (ir::Node* n : {c1, relu, c2, iff}) n->output(0)->type().elem_type = DataType::kFloat;
  g.add_output(c2->output(0));
  g.add_output(iff->output(0));
  return m;
}

TEST(QdqSubgraph, ReluReadByIfBodyIsNotFolded) {
  const ir::Model fp32 = model_with_if();
  ir::Model q = fp32.clone();
  RangeMap ranges;
  ranges[q.graph->find_value("x")] = Range{-1.0f, 1.0f};
  ranges[q.graph->find_value("c")] = Range{-0.5f, 1.5f};
  ranges[q.graph->find_value("z")] = Range{0.0f, 1.5f};
  const QdqSummary s = emit_qdq(q, ranges, QdqOptions{});
  EXPECT_EQ(s.folded_activations, 0u);
  int relus = 0;
  for (const auto& n : q.graph->nodes()) relus += n->op_type() == "Relu";
  EXPECT_EQ(relus, 1);

  // x = 1 gives c = -0.5: the body must see Relu's 0, not -0.5.
  const std::map<std::string, Tensor> in = {{"x", Tensor::from_vector<float>({1, 1, 4}, {1.0f, 0.5f, -0.25f, -1.0f})},
                                            {"cond", Tensor::scalar<bool>(true)}};
  const std::vector<Tensor> a = runtime::Executor(fp32).run(in);
  const std::vector<Tensor> b = runtime::Executor(q).run(in);
  ASSERT_EQ(b.size(), 2u);
  for (int64_t i = 0; i < 4; ++i) {
    EXPECT_GE(b[1].get_as_double(i), 0.0) << "index " << i;
    // z itself is the Relu of the quantized c (range [-0.5, 1.5], step 2/255): within one step.
    EXPECT_NEAR(b[1].get_as_double(i), a[1].get_as_double(i), 2.0 / 255) << "index " << i;
    EXPECT_NEAR(b[0].get_as_double(i), a[0].get_as_double(i), 2 * 1.5 / 255 + 2 * 2.0 / 255) << "index " << i;
  }
}

}  // namespace
}  // namespace qtool::quant
