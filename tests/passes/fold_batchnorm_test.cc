#include "qtool/passes/fold_batchnorm.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "qtool/runtime/executor.h"

namespace qtool::passes {
namespace {

Tensor random_tensor(const Shape& shape, std::mt19937& rng, float lo, float hi) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(shape_numel(shape));
  for (float& x : v) x = d(rng);
  return Tensor::from_vector<float>(shape, v);
}

// x[1,3,5,5] -> Conv(W[4,3,3,3], b) -> BatchNormalization -> Relu -> y
ir::Model conv_bn_model(std::mt19937& rng, bool with_bias) {
  ir::Model m;
  m.set_opset("", 13);
  ir::Graph& g = *m.graph;
  ir::TypeInfo t;
  t.elem_type = DataType::kFloat;
  ir::Value* x = g.add_input("x", t);
  ir::Value* w = g.add_initializer("W", random_tensor({4, 3, 3, 3}, rng, -1, 1));
  std::vector<ir::Value*> conv_in = {x, w};
  if (with_bias) conv_in.push_back(g.add_initializer("b", random_tensor({4}, rng, -1, 1)));
  ir::Node* conv = g.add_node("Conv", conv_in, {"c"}, "conv");
  conv->set_attr(ir::Attribute::make_ints("pads", {1, 1, 1, 1}));
  ir::Node* bn = g.add_node("BatchNormalization",
                            {conv->output(0), g.add_initializer("gamma", random_tensor({4}, rng, 0.5, 2)),
                             g.add_initializer("beta", random_tensor({4}, rng, -1, 1)),
                             g.add_initializer("mean", random_tensor({4}, rng, -0.5, 0.5)),
                             g.add_initializer("var", random_tensor({4}, rng, 0.1, 3))},
                            {"z"}, "bn");
  bn->set_attr(ir::Attribute::make_float("epsilon", 1e-3f));
  ir::Node* relu = g.add_node("Relu", {bn->output(0)}, {"y"}, "relu");
  g.add_output(relu->output(0));
  return m;
}

TEST(FoldBatchnorm, ConvMatchesUnfusedExecution) {
  for (bool bias : {true, false}) {
    std::mt19937 rng(7);
    ir::Model m = conv_bn_model(rng, bias);
    const Tensor x = random_tensor({1, 3, 5, 5}, rng, -2, 2);
    const Tensor before = runtime::Executor(m).run({{"x", x}})[0];
    EXPECT_EQ(fold_batchnorm(m), 1u);
    for (const auto& n : m.graph->nodes()) EXPECT_NE(n->op_type(), "BatchNormalization");
    EXPECT_EQ(m.graph->num_nodes(), 2u);
    const Tensor after = runtime::Executor(m).run({{"x", x}})[0];
    ASSERT_EQ(before.numel(), after.numel());
    for (int64_t i = 0; i < before.numel(); ++i)
      EXPECT_NEAR(before.data<float>()[i], after.data<float>()[i], 1e-4f * (1 + std::fabs(before.data<float>()[i])))
          << "bias=" << bias << " index " << i;
  }
}

TEST(FoldBatchnorm, FormulaOnOneChannel) {
  // W' = W*g/sqrt(v+eps), b' = (b-m)*g/sqrt(v+eps)+beta on a 1x1x1x1 conv.
  ir::Model m;
  m.set_opset("", 13);
  ir::Graph& g = *m.graph;
  ir::Value* x = g.add_input("x");
  ir::Node* conv = g.add_node("Conv", {x, g.add_initializer("W", Tensor::from_vector<float>({1, 1, 1, 1}, {2.0f})),
                                       g.add_initializer("b", Tensor::from_vector<float>({1}, {0.5f}))},
                              {"c"});
  ir::Node* bn = g.add_node("BatchNormalization",
                            {conv->output(0), g.add_initializer("g", Tensor::from_vector<float>({1}, {3.0f})),
                             g.add_initializer("be", Tensor::from_vector<float>({1}, {1.0f})),
                             g.add_initializer("mu", Tensor::from_vector<float>({1}, {0.25f})),
                             g.add_initializer("va", Tensor::from_vector<float>({1}, {4.0f}))},
                            {"z"});
  bn->set_attr(ir::Attribute::make_float("epsilon", 0.0f));
  g.add_node("Relu", {bn->output(0)}, {"y"});
  g.add_output(g.find_value("y"));
  ASSERT_EQ(fold_batchnorm(m), 1u);
  const ir::Node* c = m.graph->find_value("c")->producer();
  EXPECT_FLOAT_EQ(c->input(1)->initializer()->data<float>()[0], 2.0f * 3.0f / 2.0f);
  EXPECT_FLOAT_EQ(c->input(2)->initializer()->data<float>()[0], (0.5f - 0.25f) * 1.5f + 1.0f);
}

TEST(FoldBatchnorm, LeavesSharedOrGraphOutputAlone) {
  std::mt19937 rng(3);
  ir::Model m = conv_bn_model(rng, true);
  // The conv output is also a graph output: folding would change it.
  m.graph->add_output(m.graph->find_value("c"));
  EXPECT_EQ(fold_batchnorm(m), 0u);
  EXPECT_EQ(m.graph->num_nodes(), 3u);
}

TEST(FoldBatchnorm, GemmTransB) {
  ir::Model m;
  m.set_opset("", 13);
  ir::Graph& g = *m.graph;
  std::mt19937 rng(11);
  ir::Value* x = g.add_input("x");
  ir::Node* gemm = g.add_node("Gemm", {x, g.add_initializer("B", random_tensor({3, 4}, rng, -1, 1)),
                                       g.add_initializer("C", random_tensor({3}, rng, -1, 1))},
                              {"h"});
  gemm->set_attr(ir::Attribute::make_int("transB", 1));
  gemm->set_attr(ir::Attribute::make_float("alpha", 0.5f));
  g.add_node("BatchNormalization",
             {gemm->output(0), g.add_initializer("g", random_tensor({3}, rng, 0.5, 2)),
              g.add_initializer("be", random_tensor({3}, rng, -1, 1)), g.add_initializer("mu", random_tensor({3}, rng, -1, 1)),
              g.add_initializer("va", random_tensor({3}, rng, 0.5, 2))},
             {"z"});
  g.add_node("Relu", {g.find_value("z")}, {"y"});
  g.add_output(g.find_value("y"));
  const Tensor xv = random_tensor({2, 4}, rng, -1, 1);
  const Tensor before = runtime::Executor(m).run({{"x", xv}})[0];
  ASSERT_EQ(fold_batchnorm(m), 1u);
  const Tensor after = runtime::Executor(m).run({{"x", xv}})[0];
  for (int64_t i = 0; i < before.numel(); ++i) EXPECT_NEAR(before.data<float>()[i], after.data<float>()[i], 1e-5f);
}

}  // namespace
}  // namespace qtool::passes
