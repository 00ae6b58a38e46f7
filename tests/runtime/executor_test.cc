// Executor: values, lifetimes (peak memory), observers, input checks and error context,
// on graphs built in memory.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <memory>
#include <set>
#include <random>

#include "qtool/runtime/executor.h"
#include "qtool/runtime/kernel.h"
#include "graph_builders.h"

namespace qtool::runtime {
namespace {

using qtool::testing::float_type;

std::vector<float> values(const Tensor& t) {
  const float* p = t.data<float>();
  return std::vector<float>(p, p + t.numel());
}

/// y = Relu(x) + b, x [2, 3], b = (10, 20, 30).
ir::Model relu_add_model() {
  ir::Model m;
  m.set_opset("", 17);
  ir::Graph& g = *m.graph;
  ir::Value* x = g.add_input("x", float_type({2, 3}));
  ir::Value* b = g.add_initializer("b", Tensor::from_vector<float>({3}, {10, 20, 30}));
  ir::Node* relu = g.add_node("Relu", {x}, {"r"}, "relu");
  ir::Node* add = g.add_node("Add", {relu->output(0), b}, {"y"}, "add");
  g.add_output(add->output(0));
  return m;
}

TEST(Executor, ReluThenAddComputesValues) {
  const ir::Model m = relu_add_model();
  Executor ex(m);
  auto out = ex.run({{"x", Tensor::from_vector<float>({2, 3}, {-1, 2, -3, 4, -5, 6})}});
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].shape(), (Shape{2, 3}));
  EXPECT_EQ(values(out[0]), (std::vector<float>{10, 22, 30, 14, 20, 36}));
  EXPECT_EQ(ex.output_names(), std::vector<std::string>{"y"});
}

/// A chain x -> Relu -> Neg -> Relu -> ... of `len` nodes on an [n] tensor.
ir::Model chain_model(int len, int64_t n) {
  ir::Model m;
  m.set_opset("", 17);
  ir::Graph& g = *m.graph;
  ir::Value* v = g.add_input("x", float_type({n}));
  for (int i = 0; i < len; ++i) {
    const std::string idx = std::to_string(i);
    v = g.add_node(i % 2 ? "Neg" : "Abs", {v}, {fmt::format("v{}", idx)}, fmt::format("n{}", idx))->output(0);
  }
  g.add_output(v);
  return m;
}

TEST(Executor, FreesIntermediatesAfterLastUse) {
  const int64_t n = 1000;
  ir::Model m = chain_model(10, n);
  Executor ex(m);
  auto out = ex.run({{"x", Tensor::from_vector<float>({n}, std::vector<float>(n, -2.0f))}});
  // Abs, Neg alternate: 10 nodes end on Neg -> -2.
  EXPECT_EQ(out[0].data<float>()[0], -2.0f);
  const size_t one = n * sizeof(float);
  // At most two buffers alive at once (a node's input and its output), not ten.
  EXPECT_GE(ex.peak_bytes(), one);
  EXPECT_LE(ex.peak_bytes(), 2 * one + 128);
  EXPECT_LT(ex.peak_bytes(), 10 * one);
}

class CountingObserver : public Observer {
 public:
  void on_value(const ir::Value& v, const Tensor& t) override {
    ++seen[v.name()];
    numel[v.name()] = t.numel();
  }
  std::map<std::string, int> seen;
  std::map<std::string, int64_t> numel;
};

TEST(Executor, ObserverSeesEveryProducedValueOnce) {
  ir::Model m = chain_model(5, 7);
  Executor ex(m);
  CountingObserver obs;
  ex.run({{"x", Tensor::from_vector<float>({7}, std::vector<float>(7, 1.0f))}}, &obs);
  ASSERT_EQ(obs.seen.size(), 5u);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(obs.seen["v" + std::to_string(i)], 1);
    EXPECT_EQ(obs.numel["v" + std::to_string(i)], 7);
  }
  EXPECT_EQ(obs.seen.count("x"), 0u);  // inputs are not produced by nodes
}

/// Provides the Relu's output (a fixed tensor, kept: the executor must not write into it) and
/// counts what it sees.
class ProvidingObserver : public Observer {
 public:
  Tensor given = Tensor::from_vector<float>({2, 3}, {1, 1, 1, 1, 1, 1});
  std::vector<std::string> seen;
  bool provide(const ir::Node& node, std::vector<Tensor>& outputs) override {
    if (node.op_type() != "Relu") return false;
    outputs[0] = given;
    return true;
  }
  void on_value(const ir::Value& v, const Tensor&) override { seen.push_back(v.name()); }
};

TEST(Executor, ObserverCanProvideANodesOutputsInsteadOfRunningIt) {
  const ir::Model m = relu_add_model();  // the Add may run in place
  Executor ex(m);
  ProvidingObserver obs;
  const auto out = ex.run({{"x", Tensor::from_vector<float>({2, 3}, {-1, 2, -3, 4, -5, 6})}}, &obs);
  EXPECT_EQ(values(out[0]), (std::vector<float>{11, 21, 31, 11, 21, 31}));  // from the provided ones, not Relu(x)
  EXPECT_EQ(values(obs.given), (std::vector<float>{1, 1, 1, 1, 1, 1}));   // untouched by the in-place Add
  EXPECT_EQ(obs.seen, (std::vector<std::string>{"r", "y"}));              // provided values are reported too
  // Without the observer, the Relu runs again.
  EXPECT_EQ(values(ex.run({{"x", Tensor::from_vector<float>({2, 3}, {-1, 2, -3, 4, -5, 6})}})[0]),
            (std::vector<float>{10, 22, 30, 14, 20, 36}));
}

TEST(Executor, UnsupportedOpNamesNodeTypeDomainAndOpset) {
  ir::Model m;
  m.set_opset("", 13);
  ir::Value* x = m.graph->add_input("x", float_type({1}));
  m.graph->add_output(m.graph->add_node("FancyOp", {x}, {"y"}, "my_node")->output(0));
  try {
    Executor ex(m);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
    const std::string msg = e.what();
    EXPECT_NE(msg.find("my_node"), std::string::npos) << msg;
    EXPECT_NE(msg.find("FancyOp"), std::string::npos) << msg;
    EXPECT_NE(msg.find("opset 13"), std::string::npos) << msg;
  }
}

TEST(Executor, KernelErrorsCarryNodeContext) {
  ir::Model m;
  m.set_opset("", 17);
  ir::Graph& g = *m.graph;
  ir::Value* a = g.add_input("a", float_type({2, 3}));
  ir::Value* b = g.add_input("b", float_type({4}));
  g.add_output(g.add_node("Add", {a, b}, {"y"}, "bad_add")->output(0));
  Executor ex(m);
  try {
    ex.run({{"a", Tensor(DataType::kFloat, {2, 3})}, {"b", Tensor(DataType::kFloat, {4})}});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("in node 'bad_add' (Add, opset 17)"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[2,3]"), std::string::npos) << msg;
  }
}

TEST(Executor, ChecksInputs) {
  ir::Model m;
  m.set_opset("", 17);
  ir::Graph& g = *m.graph;
  ir::Value* x = g.add_input("x", float_type({-1, 3}));
  g.add_output(g.add_node("Relu", {x}, {"y"})->output(0));
  Executor ex(m);
  // Dynamic batch is fine.
  EXPECT_EQ(ex.run({{"x", Tensor(DataType::kFloat, {5, 3})}})[0].shape(), (Shape{5, 3}));
  auto expect_error = [&](const std::map<std::string, Tensor>& in, const std::string& needle) {
    try {
      ex.run(in);
      ADD_FAILURE() << "expected an error containing " << needle;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidInput);
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error({}, "missing input 'x'");
  expect_error({{"x", Tensor(DataType::kFloat, {5, 4})}}, "input 'x' has shape [5,4] but the model expects [N,3]");
  expect_error({{"x", Tensor(DataType::kInt64, {5, 3})}}, "input 'x' must be float32 but is int64");
  expect_error({{"x", Tensor(DataType::kFloat, {3})}}, "input 'x' must have rank 2");
  expect_error({{"x", Tensor(DataType::kFloat, {1, 3})}, {"z", Tensor(DataType::kFloat, {1})}},
               "no input named 'z'");
}

TEST(Executor, ThreadedElementwiseMatchesSingleThread) {
  const int64_t n = 300000;  // above the parallel grain
  ir::Model m;
  m.set_opset("", 17);
  ir::Graph& g = *m.graph;
  ir::Value* a = g.add_input("a", float_type({n}));
  ir::Value* b = g.add_input("b", float_type({1}));
  ir::Node* mul = g.add_node("Mul", {a, b}, {"m"});
  g.add_output(g.add_node("Sigmoid", {mul->output(0)}, {"y"})->output(0));
  std::mt19937 rng(7);
  std::normal_distribution<float> dist;
  std::vector<float> av(n);
  for (auto& v : av) v = dist(rng);
  std::map<std::string, Tensor> in{{"a", Tensor::from_vector<float>({n}, av)},
                                   {"b", Tensor::from_vector<float>({1}, {0.5f})}};
  Executor one(m, {1}), four(m, {4});
  Tensor r1 = one.run(in)[0], r4 = four.run(in)[0];
  ASSERT_TRUE(tensors_equal(r1, r4));
  EXPECT_NEAR(r1.data<float>()[123], 1.0f / (1.0f + std::exp(-0.5f * av[123])), 1e-6f);
}

TEST(Executor, InPlaceReuseNeverTouchesInputsInitializersOrSharedValues) {
  // a = Neg(x); b = Abs(a) (a dies: may be reused); c = Add(b, b) (b read twice: must not be
  // overwritten while read); d = Mul(c, three) (c dies; `three` is an initializer); e = Relu(x).
  ir::Model m;
  m.set_opset("", 17);
  ir::Graph& g = *m.graph;
  ir::Value* x = g.add_input("x", float_type({2}));
  ir::Value* three = g.add_initializer("three", Tensor::from_vector<float>({2}, {3, 3}));
  ir::Value* a = g.add_node("Neg", {x}, {"a"})->output(0);
  ir::Value* b = g.add_node("Abs", {a}, {"b"})->output(0);
  ir::Value* c = g.add_node("Add", {b, b}, {"c"})->output(0);
  g.add_output(g.add_node("Mul", {c, three}, {"d"})->output(0));
  g.add_output(g.add_node("Relu", {x}, {"e"})->output(0));
  Executor ex(m);
  const Tensor in = Tensor::from_vector<float>({2}, {-1, 2});
  for (int run = 0; run < 2; ++run) {
    auto out = ex.run({{"x", in}});
    EXPECT_EQ(values(out[0]), (std::vector<float>{6, 12}));
    EXPECT_EQ(values(out[1]), (std::vector<float>{0, 2}));
    EXPECT_EQ(values(in), (std::vector<float>{-1, 2}));  // the caller's tensor is untouched
  }
  EXPECT_EQ(values(*g.find_value("three")->initializer()), (std::vector<float>{3, 3}));
}

TEST(Executor, RecycledBuffersNeverTouchOutputsTheCallerHolds) {
  // Buffers >= 16 KB are recycled across runs. y = Add(Abs(Neg(x)), x), z = Neg(x) (also read by
  // Abs): outputs of an earlier run that the caller still holds must keep their values while
  // later runs recycle freed intermediates; released outputs are recycled.
  const int64_t n = 8192;
  ir::Model m;
  m.set_opset("", 17);
  ir::Graph& g = *m.graph;
  ir::Value* x = g.add_input("x", float_type({n}));
  ir::Value* z = g.add_node("Neg", {x}, {"z"})->output(0);
  ir::Value* a = g.add_node("Abs", {z}, {"a"})->output(0);
  g.add_output(g.add_node("Add", {a, x}, {"y"})->output(0));
  g.add_output(z);
  auto input = [&](float base) {
    std::vector<float> v(n);
    for (int64_t i = 0; i < n; ++i) v[i] = base + static_cast<float>(i % 97) - 48.0f;
    return Tensor::from_vector<float>({n}, v);
  };
  auto expect_outputs = [&](const std::vector<Tensor>& out, float base) {
    ASSERT_EQ(out.size(), 2u);
    for (int64_t i = 0; i < n; ++i) {
      const float xi = base + static_cast<float>(i % 97) - 48.0f;
      ASSERT_EQ(out[0].data<float>()[i], std::fabs(xi) + xi) << i;
      ASSERT_EQ(out[1].data<float>()[i], -xi) << i;
    }
  };
  auto ex = std::make_unique<Executor>(m);
  auto first = ex->run({{"x", input(1.5f)}});
  std::vector<Tensor> second;
  for (int run = 0; run < 3; ++run) second = ex->run({{"x", input(-7.25f + run)}});
  expect_outputs(first, 1.5f);  // still intact after three more runs
  expect_outputs(second, -5.25f);
  EXPECT_NE(first[0].data<float>(), second[0].data<float>());
  const std::set<const float*> held = {first[0].data<float>(), first[1].data<float>(), second[0].data<float>(),
                                       second[1].data<float>()};
  first.clear();
  second.clear();
  auto third = ex->run({{"x", input(3.0f)}});
  expect_outputs(third, 3.0f);
  // Released buffers came back: this run's outputs live in blocks of earlier runs.
  EXPECT_TRUE(held.count(third[0].data<float>()) || held.count(third[1].data<float>()));
  // Outputs outlive the executor (each recycled buffer keeps its pool alive).
  ex.reset();
  expect_outputs(third, 3.0f);
}

/// Conv(x, w, b) [pads 1, optional group] -> `act` (with attributes / Clip bound inputs), a
/// second output `tail` = Neg(act) so the activation is not itself a graph output.
ir::Model conv_act_model(const std::string& act, int64_t group, int opset) {
  ir::Model m;
  m.set_opset("", opset);
  ir::Graph& g = *m.graph;
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  auto rand_tensor = [&](Shape shape) {
    std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
    for (float& f : v) f = u(rng);
    return Tensor::from_vector<float>(shape, v);
  };
  ir::Value* x = g.add_input("x", float_type({2, 8, 9, 11}));
  ir::Value* w = g.add_initializer("w", rand_tensor({8, 8 / group, 3, 3}));
  ir::Value* b = g.add_initializer("b", rand_tensor({8}));
  ir::Node* conv = g.add_node("Conv", {x, w, b}, {"c"}, "conv");
  conv->set_attr(ir::Attribute::make_ints("pads", {1, 1, 1, 1}));
  conv->set_attr(ir::Attribute::make_int("group", group));
  conv->output(0)->type() = float_type({2, 8, 9, 11});
  std::vector<ir::Value*> act_in = {conv->output(0)};
  if (act == "Clip" && opset >= 11) {
    act_in.push_back(g.add_initializer("lo", Tensor::from_vector<float>({}, {-0.25f})));
    act_in.push_back(g.add_initializer("hi", Tensor::from_vector<float>({}, {0.5f})));
  }
  ir::Node* a = g.add_node(act, act_in, {"a"}, "act");
  if (act == "LeakyRelu") a->set_attr(ir::Attribute::make_float("alpha", 0.3f));
  if (act == "HardSigmoid") a->set_attr(ir::Attribute::make_float("alpha", 0.7f));
  if (act == "Clip" && opset < 11) a->set_attr(ir::Attribute::make_float("max", 0.3f));
  g.add_output(g.add_node("Neg", {a->output(0)}, {"tail"}, "neg")->output(0));
  return m;
}

TEST(Executor, FusedConvActivationEqualsUnfused) {
  // Fused when no observer is attached; an observer turns fusion off (it must see the raw Conv
  // output), which gives the unfused reference.
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-2.0f, 2.0f);
  std::vector<float> xv(2 * 8 * 9 * 11);
  for (float& f : xv) f = u(rng);
  const Tensor x = Tensor::from_vector<float>({2, 8, 9, 11}, xv);
  struct Case {
    std::string act;
    int64_t group;
    int opset;
  };
  for (const Case& c : std::vector<Case>{{"Relu", 1, 17},
                                         {"Relu", 8, 17},
                                         {"Clip", 1, 17},
                                         {"Clip", 8, 17},
                                         {"Clip", 1, 6},
                                         {"LeakyRelu", 2, 17},
                                         {"HardSigmoid", 1, 17}}) {
    SCOPED_TRACE(c.act + " group " + std::to_string(c.group) + " opset " + std::to_string(c.opset));
    ir::Model m = conv_act_model(c.act, c.group, c.opset);
    Executor ex(m);
    const auto fused = ex.run({{"x", x}});
    const auto fused_again = ex.run({{"x", x}});
    CountingObserver obs;
    const auto unfused = ex.run({{"x", x}}, &obs);
    EXPECT_EQ(obs.seen["c"], 1);
    EXPECT_EQ(obs.seen["a"], 1);
    ASSERT_EQ(fused[0].numel(), unfused[0].numel());
    int nonzero = 0, zero = 0;
    for (int64_t i = 0; i < fused[0].numel(); ++i) {
      ASSERT_EQ(fused[0].data<float>()[i], unfused[0].data<float>()[i]) << i;
      ASSERT_EQ(fused_again[0].data<float>()[i], unfused[0].data<float>()[i]) << i;
      nonzero += fused[0].data<float>()[i] != 0.0f;
      zero += fused[0].data<float>()[i] == 0.0f;
      // tail = -act: Relu and HardSigmoid leave nothing below 0, Clip nothing above its max.
      if (c.act == "Relu" || c.act == "HardSigmoid") {
        ASSERT_LE(fused[0].data<float>()[i], 0.0f);
      }
      if (c.act == "Clip") {
        ASSERT_GE(fused[0].data<float>()[i], c.opset < 11 ? -0.3f : -0.5f);
      }
    }
    EXPECT_GT(nonzero, 100);
    if (c.act == "Relu") {
      EXPECT_GT(zero, 100);  // the activation really ran
    }
  }
}

TEST(Executor, ElementwiseChainRunsInPlace) {
  const int64_t n = 1000;
  ir::Model m = chain_model(10, n);
  Executor ex(m);
  ex.run({{"x", Tensor::from_vector<float>({n}, std::vector<float>(n, -2.0f))}});
  // Each node takes its dying input's buffer: one intermediate buffer alive at a time.
  EXPECT_LE(ex.peak_bytes(), n * sizeof(float) + 128);
}

TEST(ThreadPool, CoversRangeExactlyOnce) {
  ThreadPool pool(3);
  std::vector<int> hits(100000, 0);
  pool.parallel_for(static_cast<int64_t>(hits.size()), 1000, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) ++hits[i];
  });
  for (int h : hits) ASSERT_EQ(h, 1);
  // Exceptions in a chunk reach the caller.
  EXPECT_THROW(pool.parallel_for(10000, 10, [](int64_t b, int64_t) {
    if (b == 0) throw Error(ErrorCode::kInternal, "boom");
  }),
               Error);
}

TEST(KernelRegistry, PicksGreatestVersionNotAboveOpset) {
  KernelRegistry r;
  KernelFn f1 = [](KernelContext&) {};
  KernelFn f7 = [](KernelContext&) {};
  r.add("", "Op", 1, f1);
  r.add("", "Op", 7, f7);
  EXPECT_EQ(r.find("", "Op", 6), f1);
  EXPECT_EQ(r.find("", "Op", 7), f7);
  EXPECT_EQ(r.find("ai.onnx", "Op", 13), f7);
  EXPECT_EQ(r.find("", "Other", 13), nullptr);
  EXPECT_NE(KernelRegistry::global().find("", "Relu", 14), nullptr);
}

}  // namespace
}  // namespace qtool::runtime

namespace qtool::runtime {
namespace {

/// x[2,3] -> MatMul(Mul(Cast(int8 levels [3,2]), scales)) -> y: the weight expansion of --format cast.
ir::Model cast_weight_model() {
  ir::Model m;
  m.set_opset("", 17);
  ir::Graph& g = *m.graph;
  ir::Value* x = g.add_input("x", qtool::testing::float_type({2, 3}));
  ir::Value* lv = g.add_initializer("levels", Tensor::from_vector<int8_t>({3, 2}, {1, -2, 3, -4, 5, -6}));
  ir::Value* sc = g.add_initializer("scale", Tensor::from_vector<float>({2}, {0.5f, 0.25f}));
  ir::Node* cast = g.add_node("Cast", {lv}, {"levels_float"}, "cast");
  cast->set_attr(ir::Attribute::make_int("to", static_cast<int64_t>(DataType::kFloat)));
  ir::Value* w = g.add_node("Mul", {cast->output(0), sc}, {"w"}, "scale_mul")->output(0);
  ir::Value* y = g.add_node("MatMul", {x, w}, {"y"}, "matmul")->output(0);
  g.add_output(y);
  return m;
}

// fold_constants computes the constant expansion once and gives the same outputs on every run as
// running it each time; an observer still sees the folded values on every run.
TEST(Executor, FoldConstantsComputesConstantNodesOnceWithTheSameResults) {
  const ir::Model m = cast_weight_model();
  Executor plain(m), folding(m, {.threads = 1, .fold_constants = true});
  for (int run = 0; run < 3; ++run) {
    const Tensor x = Tensor::from_vector<float>({2, 3}, {1.0f + run, 2, 3, 4, 5, 6.0f - run});
    CountingObserver a, b;
    const Tensor ya = plain.run({{"x", x}}, &a).at(0);
    const Tensor yb = folding.run({{"x", x}}, &b).at(0);
    EXPECT_EQ(values(ya), values(yb)) << "run " << run;
    // Row 0 of x times column 0 of w = [0.5, 1.5, 2.5]: 1·0.5 + 2·1.5 + 3·2.5 (run 0).
    if (run == 0) {
      EXPECT_FLOAT_EQ(values(yb)[0], 11.0f);
    }
    EXPECT_EQ(a.seen, b.seen);
    EXPECT_EQ(b.seen["w"], 1);
  }
}

}  // namespace
}  // namespace qtool::runtime
