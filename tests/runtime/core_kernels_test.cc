// rtcore kernels on in-memory graphs: broadcasting, Slice with negative steps, Reshape 0/-1,
// Pad modes, Transpose, reductions, opset-dependent forms, and If/Loop/Scan with outer scope.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>

#include "qtool/runtime/executor.h"

namespace qtool::runtime {
namespace {

/// A one-node model: inputs (name, tensor) become graph inputs, except those named "const:..."
/// which become initializers. Returns output 0..n of the run.
struct OneNode {
  ir::Model model;
  ir::Node* node = nullptr;
  std::map<std::string, Tensor> feeds;

  OneNode(const std::string& op, int64_t opset, const std::vector<std::pair<std::string, Tensor>>& inputs,
          size_t num_outputs = 1) {
    model.set_opset("", opset);
    ir::Graph& g = *model.graph;
    std::vector<ir::Value*> ins;
    for (const auto& [name, t] : inputs) {
      if (name.empty()) {
        ins.push_back(nullptr);
      } else if (name.rfind("const:", 0) == 0) {
        ins.push_back(g.add_initializer(name.substr(6), t));
      } else {
        ins.push_back(g.add_input(name));
        feeds[name] = t;
      }
    }
    std::vector<std::string> outs;
    for (size_t i = 0; i < num_outputs; ++i) outs.push_back("out" + std::to_string(i));
    node = g.add_node(op, ins, outs, "the_node");
    for (ir::Value* v : node->outputs()) g.add_output(v);
  }
  std::vector<Tensor> run() {
    Executor ex(model);
    return ex.run(feeds);
  }
};

template <typename T>
std::vector<T> vals(const Tensor& t) {
  const T* p = t.data<T>();
  return std::vector<T>(p, p + t.numel());
}
Tensor f(Shape s, std::vector<float> v) { return Tensor::from_vector<float>(std::move(s), v); }
Tensor i64(Shape s, std::vector<int64_t> v) { return Tensor::from_vector<int64_t>(std::move(s), v); }
std::vector<float> iota_f(int64_t n) {
  std::vector<float> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = static_cast<float>(i);
  return v;
}

TEST(Broadcast, ChannelAndRowBroadcastMatchNaiveIndexing) {
  // [2,3,4] - [3,1]: out[a,b,c] = x[a,b,c] - y[b,0].
  OneNode t("Sub", 17, {{"x", f({2, 3, 4}, iota_f(24))}, {"y", f({3, 1}, {100, 200, 300})}});
  Tensor out = t.run()[0];
  ASSERT_EQ(out.shape(), (Shape{2, 3, 4}));
  const auto o = vals<float>(out);
  for (int a = 0; a < 2; ++a)
    for (int b = 0; b < 3; ++b)
      for (int c = 0; c < 4; ++c) EXPECT_EQ(o[(a * 3 + b) * 4 + c], (a * 3 + b) * 4 + c - 100.0f * (b + 1));
}

TEST(Broadcast, BothSidesBroadcastAndIntTypes) {
  // [3,1] * [1,4] -> [3,4] outer product, int64.
  OneNode t("Mul", 17, {{"x", i64({3, 1}, {1, 2, 3})}, {"y", i64({1, 4}, {1, 10, 100, 1000})}});
  Tensor out = t.run()[0];
  ASSERT_EQ(out.shape(), (Shape{3, 4}));
  EXPECT_EQ(vals<int64_t>(out), (std::vector<int64_t>{1, 10, 100, 1000, 2, 20, 200, 2000, 3, 30, 300, 3000}));
}

TEST(Broadcast, ComparisonAndWhere) {
  OneNode less("Less", 13, {{"x", f({2, 2}, {1, 5, 3, 7})}, {"y", f({}, {4})}});
  Tensor m = less.run()[0];
  ASSERT_EQ(m.dtype(), DataType::kBool);
  EXPECT_EQ(vals<bool>(m), (std::vector<bool>{true, false, true, false}));
  OneNode where("Where", 16, {{"c", m}, {"x", f({2, 1}, {-1, -2})}, {"y", f({2}, {10, 20})}});
  EXPECT_EQ(vals<float>(where.run()[0]), (std::vector<float>{-1, 20, -2, 20}));
}

/// Flat index into a tensor of `shape` broadcast to [2, 3, 5] at output element (a, b, c).
int64_t bcast_index(const Shape& shape, int64_t a, int64_t b, int64_t c) {
  const int64_t idx[3] = {a, b, c};
  int64_t flat = 0;
  const size_t off = 3 - shape.size();
  for (size_t d = 0; d < shape.size(); ++d) flat = flat * shape[d] + (shape[d] == 1 ? 0 : idx[off + d]);
  return flat;
}

TEST(Broadcast, WhereStridePatternsMatchNaiveIndexing) {
  // Every mix of full, scalar, last-axis row, column and middle broadcasts for cond, X and Y
  // (covers each specialised 0/1 stride row, the AVX2 rows of 8 lanes and a tail, and the generic
  // one) against naive indexing.
  const std::vector<Shape> shapes = {{2, 3, 11}, {}, {11}, {3, 1}, {2, 1, 11}, {1, 3, 11}};
  for (const Shape& cs : shapes) {
    for (const Shape& xs : shapes) {
      for (const Shape& ys : shapes) {
        Shape full(3, 1);  // numpy broadcast of the three; only combinations reaching [2,3,5]
        for (const Shape* sh : {&cs, &xs, &ys})
          for (size_t d = 0; d < sh->size(); ++d) full[3 - sh->size() + d] = std::max(full[3 - sh->size() + d], (*sh)[d]);
        if (full != Shape{2, 3, 11}) continue;
        std::vector<uint8_t> cv(static_cast<size_t>(shape_numel(cs)));
        for (size_t i = 0; i < cv.size(); ++i) cv[i] = (i * 7 + 3) % 3 != 0;
        Tensor c = Tensor::empty(DataType::kBool, cs);
        for (size_t i = 0; i < cv.size(); ++i) c.mutable_data<bool>()[i] = cv[i] != 0;
        std::vector<float> xv = iota_f(shape_numel(xs)), yv = iota_f(shape_numel(ys));
        for (float& v : yv) v = -100.0f - v;
        OneNode where("Where", 16, {{"c", c}, {"x", f(xs, xv)}, {"y", f(ys, yv)}});
        const Tensor out = where.run()[0];
        ASSERT_EQ(out.shape(), (Shape{2, 3, 11}));
        for (int64_t a = 0; a < 2; ++a)
          for (int64_t b = 0; b < 3; ++b)
            for (int64_t k = 0; k < 11; ++k) {
              const float want = cv[bcast_index(cs, a, b, k)] ? xv[bcast_index(xs, a, b, k)] : yv[bcast_index(ys, a, b, k)];
              ASSERT_EQ(out.data<float>()[(a * 3 + b) * 11 + k], want)
                  << shape_str(cs) << " " << shape_str(xs) << " " << shape_str(ys) << " at " << a << b << k;
            }
      }
    }
  }
}

TEST(Broadcast, WhereAndMulWriteIntoDyingIntermediates) {
  // t = Neg(x) dies at Where (reused as its output); u = Where(c, t, y) dies at Mul with a
  // broadcast [1] operand: results must equal the out-of-place values.
  ir::Model m;
  m.set_opset("", 17);
  ir::Graph& g = *m.graph;
  ir::Value* c = g.add_input("c");
  ir::Value* x = g.add_input("x");
  ir::Value* y = g.add_input("y");
  ir::Value* k = g.add_initializer("k", f({1}, {10}));
  ir::Value* t = g.add_node("Neg", {x}, {"t"})->output(0);
  ir::Value* u = g.add_node("Where", {c, t, y}, {"u"})->output(0);
  g.add_output(g.add_node("Mul", {k, u}, {"v"})->output(0));
  Executor ex(m);
  auto out = ex.run({{"c", Tensor::from_vector<bool>({2, 2}, {true, false, false, true})},
                     {"x", f({2, 2}, {1, 2, 3, 4})},
                     {"y", f({2}, {7, 8})}});
  EXPECT_EQ(vals<float>(out[0]), (std::vector<float>{-10, 80, 70, -40}));
}

TEST(Broadcast, IncompatibleShapesNameTheNode) {
  OneNode t("Add", 17, {{"x", f({2, 3}, iota_f(6))}, {"y", f({2}, {1, 2})}});
  try {
    t.run();
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("the_node"), std::string::npos) << e.what();
  }
}

TEST(Slice, NegativeStepsAndClamping) {
  // x = [[0..4],[5..9]]; x[:, ::-2] = [[4,2,0],[9,7,5]].
  OneNode t("Slice", 13,
            {{"x", f({2, 5}, iota_f(10))}, {"s", i64({1}, {-1})}, {"e", i64({1}, {INT64_MIN})}, {"a", i64({1}, {1})},
             {"st", i64({1}, {-2})}});
  Tensor out = t.run()[0];
  ASSERT_EQ(out.shape(), (Shape{2, 3}));
  EXPECT_EQ(vals<float>(out), (std::vector<float>{4, 2, 0, 9, 7, 5}));
  // Out-of-range starts/ends clamp; opset 1 takes attributes.
  OneNode v1("Slice", 1, {{"x", f({2, 5}, iota_f(10))}});
  v1.node->set_attr(ir::Attribute::make_ints("starts", {1, -100}));
  v1.node->set_attr(ir::Attribute::make_ints("ends", {1000, 2}));
  Tensor o1 = v1.run()[0];
  ASSERT_EQ(o1.shape(), (Shape{1, 2}));
  EXPECT_EQ(vals<float>(o1), (std::vector<float>{5, 6}));
}

TEST(Reshape, ZeroCopiesAndMinusOneInfers) {
  OneNode t("Reshape", 13, {{"x", f({2, 3, 4}, iota_f(24))}, {"s", i64({3}, {0, -1, 2})}});
  Tensor out = t.run()[0];
  EXPECT_EQ(out.shape(), (Shape{2, 6, 2}));
  EXPECT_EQ(vals<float>(out)[23], 23.0f);
  // allowzero=1 (opset 14): 0 is a real zero-sized dimension.
  OneNode z("Reshape", 14, {{"x", f({0, 3}, {})}, {"s", i64({2}, {3, 0})}});
  z.node->set_attr(ir::Attribute::make_int("allowzero", 1));
  EXPECT_EQ(z.run()[0].shape(), (Shape{3, 0}));
  OneNode bad("Reshape", 13, {{"x", f({2, 3}, iota_f(6))}, {"s", i64({1}, {4})}});
  EXPECT_THROW(bad.run(), Error);
}

TEST(ShapeOps, TransposeConcatSplitPad) {
  OneNode tr("Transpose", 13, {{"x", f({2, 3}, iota_f(6))}});
  tr.node->set_attr(ir::Attribute::make_ints("perm", {1, 0}));
  EXPECT_EQ(vals<float>(tr.run()[0]), (std::vector<float>{0, 3, 1, 4, 2, 5}));

  OneNode cat("Concat", 13, {{"a", f({2, 1}, {1, 2})}, {"b", f({2, 2}, {3, 4, 5, 6})}});
  cat.node->set_attr(ir::Attribute::make_int("axis", -1));
  EXPECT_EQ(vals<float>(cat.run()[0]), (std::vector<float>{1, 3, 4, 2, 5, 6}));

  // Split sizes: attribute before 13, input from 13.
  OneNode s11("Split", 11, {{"x", f({5}, iota_f(5))}}, 2);
  s11.node->set_attr(ir::Attribute::make_ints("split", {2, 3}));
  auto p11 = s11.run();
  EXPECT_EQ(vals<float>(p11[1]), (std::vector<float>{2, 3, 4}));
  OneNode s13("Split", 13, {{"x", f({5}, iota_f(5))}, {"sp", i64({2}, {4, 1})}}, 2);
  EXPECT_EQ(vals<float>(s13.run()[1]), (std::vector<float>{4}));

  // Pad reflect and edge: [0,1,2] padded by 2 on the left.
  for (auto [mode, expect] : std::vector<std::pair<std::string, std::vector<float>>>{
           {"reflect", {2, 1, 0, 1, 2}}, {"edge", {0, 0, 0, 1, 2}}, {"constant", {9, 9, 0, 1, 2}}}) {
    OneNode pad("Pad", 13, {{"x", f({3}, {0, 1, 2})}, {"p", i64({2}, {2, 0})}, {"v", f({}, {9})}});
    pad.node->set_attr(ir::Attribute::make_string("mode", mode));
    EXPECT_EQ(vals<float>(pad.run()[0]), expect) << mode;
  }
}

TEST(ShapeOps, SplitRefusesBadSizesWithTheNodeName) {
  // num_outputs = 0 used to divide by zero; sizes {-1, 6} add up to 5 but would slice backwards.
  auto error_of = [](OneNode& m) -> std::string {
    try {
      m.run();
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidModel);
      return e.what();
    }
    return "no error";
  };
  OneNode zero("Split", 18, {{"x", f({4}, iota_f(4))}}, 2);
  zero.node->set_attr(ir::Attribute::make_int("num_outputs", 0));
  EXPECT_NE(error_of(zero).find("'the_node' (Split): num_outputs must be positive, got 0"), std::string::npos)
      << error_of(zero);
  OneNode neg("Split", 13, {{"x", f({5}, iota_f(5))}, {"sp", i64({2}, {-1, 6})}}, 2);
  EXPECT_NE(error_of(neg).find("split size -1 is negative"), std::string::npos) << error_of(neg);
  // num_outputs = 3 over 5: parts of ceil(5/3) = 2, the last one shorter.
  OneNode uneven("Split", 18, {{"x", f({5}, iota_f(5))}}, 3);
  uneven.node->set_attr(ir::Attribute::make_int("num_outputs", 3));
  EXPECT_EQ(vals<float>(uneven.run()[2]), (std::vector<float>{4}));
}

TEST(ShapeOps, SqueezeUnsqueezeAxesByOpset) {
  OneNode u11("Unsqueeze", 11, {{"x", f({3}, {1, 2, 3})}});
  u11.node->set_attr(ir::Attribute::make_ints("axes", {0, -1}));
  EXPECT_EQ(u11.run()[0].shape(), (Shape{1, 3, 1}));
  OneNode u13("Unsqueeze", 13, {{"x", f({3}, {1, 2, 3})}, {"a", i64({1}, {1})}});
  EXPECT_EQ(u13.run()[0].shape(), (Shape{3, 1}));
  OneNode s13("Squeeze", 13, {{"x", f({1, 3, 1}, {1, 2, 3})}});
  EXPECT_EQ(s13.run()[0].shape(), (Shape{3}));
}

TEST(Reduce, AxesAttributeVsInputAndKeepdims) {
  // ReduceSum: axes input from 13; ReduceMean: attribute until 17.
  OneNode sum("ReduceSum", 13, {{"x", f({2, 3}, iota_f(6))}, {"a", i64({1}, {1})}});
  sum.node->set_attr(ir::Attribute::make_int("keepdims", 0));
  Tensor s = sum.run()[0];
  EXPECT_EQ(s.shape(), (Shape{2}));
  EXPECT_EQ(vals<float>(s), (std::vector<float>{3, 12}));
  OneNode mean("ReduceMean", 13, {{"x", f({2, 3}, iota_f(6))}});
  mean.node->set_attr(ir::Attribute::make_ints("axes", {0}));
  Tensor m = mean.run()[0];
  EXPECT_EQ(m.shape(), (Shape{1, 3}));
  EXPECT_EQ(vals<float>(m), (std::vector<float>{1.5f, 2.5f, 3.5f}));
  // Non-adjacent axes {0, 2} of [2,2,2].
  OneNode mx("ReduceMax", 18, {{"x", f({2, 2, 2}, {1, 8, 3, 4, 5, 6, 7, 2})}, {"a", i64({2}, {0, 2})}});
  EXPECT_EQ(vals<float>(mx.run()[0]), (std::vector<float>{8, 7}));
  OneNode lse("ReduceLogSumExp", 13, {{"x", f({2}, {1000, 1000})}});
  EXPECT_NEAR(vals<float>(lse.run()[0])[0], 1000.0f + std::log(2.0f), 1e-3);
  OneNode am("ArgMax", 13, {{"x", f({4}, {1, 3, 3, 0})}});
  am.node->set_attr(ir::Attribute::make_int("select_last_index", 1));
  EXPECT_EQ(vals<int64_t>(am.run()[0]), (std::vector<int64_t>{2}));
}

TEST(Reduce, ScalarInputWithAxisZeroIsItself) {
  // A rank-0 input accepts axes = [0] and reduces to the same scalar (it used to index past
  // the per-axis flags).
  OneNode sum("ReduceSum", 13, {{"x", f({}, {4.5f})}, {"a", i64({1}, {0})}});
  Tensor s = sum.run()[0];
  EXPECT_EQ(s.rank(), 0u);
  EXPECT_EQ(vals<float>(s), (std::vector<float>{4.5f}));
  OneNode mx("ReduceMax", 18, {{"x", f({}, {-2.0f})}, {"a", i64({1}, {0})}});
  EXPECT_EQ(vals<float>(mx.run()[0]), (std::vector<float>{-2.0f}));
}

TEST(Elementwise, ClipBoundsByOpset) {
  OneNode c6("Clip", 6, {{"x", f({3}, {-5, 0.5f, 5})}});
  c6.node->set_attr(ir::Attribute::make_float("min", -1));
  c6.node->set_attr(ir::Attribute::make_float("max", 1));
  EXPECT_EQ(vals<float>(c6.run()[0]), (std::vector<float>{-1, 0.5f, 1}));
  OneNode c13("Clip", 13, {{"x", f({3}, {-5, 0.5f, 5})}, {"", Tensor()}, {"hi", f({}, {2})}});
  EXPECT_EQ(vals<float>(c13.run()[0]), (std::vector<float>{-5, 0.5f, 2}));
}

TEST(TensorOps, EinsumCastGatherTopK) {
  // Batched matmul with ellipsis: [1,2,3] x [3,2] -> [1,2,2].
  OneNode e("Einsum", 12, {{"a", f({1, 2, 3}, iota_f(6))}, {"b", f({3, 2}, {1, 0, 0, 1, 1, 1})}});
  e.node->set_attr(ir::Attribute::make_string("equation", "...ij,jk->...ik"));
  Tensor eo = e.run()[0];
  ASSERT_EQ(eo.shape(), (Shape{1, 2, 2}));
  EXPECT_EQ(vals<float>(eo), (std::vector<float>{2, 3, 8, 9}));
  // Cast float -> int32 truncates toward zero; -> float16 -> float round-trips exactly representable values.
  OneNode c("Cast", 13, {{"x", f({3}, {-1.7f, 2.9f, 0.5f})}});
  c.node->set_attr(ir::Attribute::make_int("to", static_cast<int64_t>(DataType::kInt32)));
  EXPECT_EQ(vals<int32_t>(c.run()[0]), (std::vector<int32_t>{-1, 2, 0}));
  OneNode h("Cast", 13, {{"x", f({2}, {0.5f, -2.25f})}});
  h.node->set_attr(ir::Attribute::make_int("to", static_cast<int64_t>(DataType::kFloat16)));
  Tensor ho = h.run()[0];
  ASSERT_EQ(ho.dtype(), DataType::kFloat16);
  EXPECT_EQ(vals<float>(ho.to_float()), (std::vector<float>{0.5f, -2.25f}));
  // Gather with negative indices along axis 1.
  OneNode g("Gather", 13, {{"x", f({2, 3}, iota_f(6))}, {"i", i64({2}, {-1, 0})}});
  g.node->set_attr(ir::Attribute::make_int("axis", 1));
  EXPECT_EQ(vals<float>(g.run()[0]), (std::vector<float>{2, 0, 5, 3}));
  // TopK: largest 2 with indices; ties keep the lower index first.
  OneNode t("TopK", 11, {{"x", f({5}, {3, 9, 1, 9, 4})}, {"k", i64({1}, {2})}}, 2);
  auto to = t.run();
  EXPECT_EQ(vals<float>(to[0]), (std::vector<float>{9, 9}));
  EXPECT_EQ(vals<int64_t>(to[1]), (std::vector<int64_t>{1, 3}));
}

/// Graph helper for subgraph bodies.
ir::TypeInfo scalar_type(DataType t) {
  ir::TypeInfo ti;
  ti.elem_type = t;
  ti.has_shape = true;
  return ti;
}

TEST(ControlFlow, IfBranchesReadOuterScope) {
  ir::Model m;
  m.set_opset("", 17);
  ir::Graph& g = *m.graph;
  ir::Value* c = g.add_input("c");
  ir::Value* x = g.add_input("x");
  ir::Value* two = g.add_initializer("two", f({}, {2}));
  ir::Node* n = g.add_node("If", {c}, {"y"}, "if");
  auto then_g = std::make_unique<ir::Graph>("then", &g);
  then_g->add_output(then_g->add_node("Mul", {x, two}, {"t"})->output(0));  // outer x, outer two
  auto else_g = std::make_unique<ir::Graph>("else", &g);
  else_g->add_output(else_g->add_node("Neg", {x}, {"e"})->output(0));
  ir::Attribute ta;
  ta.name = "then_branch";
  ta.type = ir::AttrType::kGraph;
  ta.graphs.push_back(std::move(then_g));
  ir::Attribute ea;
  ea.name = "else_branch";
  ea.type = ir::AttrType::kGraph;
  ea.graphs.push_back(std::move(else_g));
  n->set_attr(std::move(ta));
  n->set_attr(std::move(ea));
  g.add_output(n->output(0));
  Executor ex(m);
  EXPECT_EQ(vals<float>(ex.run({{"c", Tensor::scalar<bool>(true)}, {"x", f({2}, {1, 3})}})[0]),
            (std::vector<float>{2, 6}));
  EXPECT_EQ(vals<float>(ex.run({{"c", Tensor::scalar<bool>(false)}, {"x", f({2}, {1, 3})}})[0]),
            (std::vector<float>{-1, -3}));
}

// acc_{i+1} = acc_i + step (outer value), 4 trips; scan output collects acc each trip.
ir::Model loop_model() {
  ir::Model m;
  m.set_opset("", 17);
  ir::Graph& g = *m.graph;
  ir::Value* trips = g.add_initializer("M", Tensor::scalar<int64_t>(4));
  ir::Value* step = g.add_input("step");
  ir::Value* acc0 = g.add_input("acc0");
  ir::Node* loop = g.add_node("Loop", {trips, nullptr, acc0}, {"acc_final", "accs"}, "loop");
  auto body = std::make_unique<ir::Graph>("body", &g);
  body->add_input("i", scalar_type(DataType::kInt64));
  ir::Value* cond_in = body->add_input("cond_in", scalar_type(DataType::kBool));
  ir::Value* acc = body->add_input("acc");
  ir::Value* next = body->add_node("Add", {acc, step}, {"next"})->output(0);
  ir::Value* cond_out = body->add_node("Identity", {cond_in}, {"cond_out"})->output(0);
  ir::Value* copy = body->add_node("Identity", {next}, {"scan"})->output(0);
  body->add_output(cond_out);
  body->add_output(next);
  body->add_output(copy);
  ir::Attribute ba;
  ba.name = "body";
  ba.type = ir::AttrType::kGraph;
  ba.graphs.push_back(std::move(body));
  loop->set_attr(std::move(ba));
  g.add_output(loop->output(0));
  g.add_output(loop->output(1));
  return m;
}

TEST(ControlFlow, LoopCarriesStateScansAndReadsOuterScope) {
  const ir::Model m = loop_model();
  Executor ex(m);
  auto out = ex.run({{"step", f({2}, {1, 10})}, {"acc0", f({2}, {0, 0})}});
  EXPECT_EQ(vals<float>(out[0]), (std::vector<float>{4, 40}));
  EXPECT_EQ(out[1].shape(), (Shape{4, 2}));
  EXPECT_EQ(vals<float>(out[1]), (std::vector<float>{1, 10, 2, 20, 3, 30, 4, 40}));
}

/// Counts the values it sees; with `bodies`, inside Loop/If bodies too, where it also doubles "next".
class BodyObserver : public Observer {
 public:
  explicit BodyObserver(bool bodies) : bodies_(bodies) {}
  bool observes_subgraphs() const override { return bodies_; }
  void on_value(const ir::Value& v, const Tensor&) override { ++seen[v.name()]; }
  bool replace(const ir::Value& v, const Tensor& t, Tensor& out) override {
    if (v.name() != "next") return false;
    out = Tensor(DataType::kFloat, t.shape());
    for (int64_t i = 0; i < t.numel(); ++i) out.mutable_data<float>()[i] = 2 * t.data<float>()[i];
    return true;
  }
  std::map<std::string, int> seen;

 private:
  bool bodies_;
};

TEST(ControlFlow, ObserversOfBodiesSeeEachIterationAndMayReplaceBodyValues) {
  const ir::Model m = loop_model();
  Executor ex(m);
  const std::map<std::string, Tensor> in = {{"step", f({2}, {1, 10})}, {"acc0", f({2}, {0, 0})}};
  BodyObserver main_only(false), bodies(true);
  // Main graph only (the default): the Loop's outputs, nothing computed inside the body, and the
  // body's "next" is not replaced.
  auto out = ex.run(in, &main_only);
  EXPECT_EQ(main_only.seen, (std::map<std::string, int>{{"acc_final", 1}, {"accs", 1}}));
  EXPECT_EQ(vals<float>(out[0]), (std::vector<float>{4, 40}));
  // With bodies: each trip's values (4 trips), and "next" doubled before the body reads it on:
  // acc = 2 (acc + step) four times.
  out = ex.run(in, &bodies);
  EXPECT_EQ(bodies.seen, (std::map<std::string, int>{
                             {"acc_final", 1}, {"accs", 1}, {"cond_out", 4}, {"next", 4}, {"scan", 4}}));
  EXPECT_EQ(vals<float>(out[0]), (std::vector<float>{30, 300}));
  EXPECT_EQ(vals<float>(out[1]), (std::vector<float>{2, 20, 6, 60, 14, 140, 30, 300}));
}

TEST(ControlFlow, ScanReversedInputCumulativeSum) {
  ir::Model m;
  m.set_opset("", 17);
  ir::Graph& g = *m.graph;
  ir::Value* init = g.add_input("init");
  ir::Value* xs = g.add_input("xs");
  ir::Node* scan = g.add_node("Scan", {init, xs}, {"final", "ys"}, "scan");
  scan->set_attr(ir::Attribute::make_int("num_scan_inputs", 1));
  scan->set_attr(ir::Attribute::make_ints("scan_input_directions", {1}));
  auto body = std::make_unique<ir::Graph>("body", &g);
  ir::Value* s = body->add_input("s");
  ir::Value* x = body->add_input("x");
  ir::Value* sum = body->add_node("Add", {s, x}, {"sum"})->output(0);
  body->add_output(sum);
  body->add_output(body->add_node("Identity", {sum}, {"y"})->output(0));
  ir::Attribute ba;
  ba.name = "body";
  ba.type = ir::AttrType::kGraph;
  ba.graphs.push_back(std::move(body));
  scan->set_attr(std::move(ba));
  g.add_output(scan->output(0));
  g.add_output(scan->output(1));
  Executor ex(m);
  auto out = ex.run({{"init", f({1}, {0})}, {"xs", f({3, 1}, {1, 2, 3})}});
  EXPECT_EQ(vals<float>(out[0]), (std::vector<float>{6}));
  EXPECT_EQ(vals<float>(out[1]), (std::vector<float>{3, 5, 6}));  // 3, 3+2, 3+2+1
}

}  // namespace
}  // namespace qtool::runtime
