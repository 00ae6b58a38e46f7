// Gradients of ReduceSum/Mean/Max/Min (axes as attribute and as input, keepdims,
// noop_with_empty_axes) and Softmax/LogSoftmax (opset 11's 2-D coercion, opset 13's one axis):
// finite-difference checks and exact values.
#include <gtest/gtest.h>

#include <cmath>

#include "grad_check.h"
#include "grad_test_util.h"

namespace qtool::testing {
namespace {

/// Reduce check of X [xs] at `opset`: axes as an attribute in `attrs` (old opsets) or as input 1
/// (input_axes; the input is omitted when they are empty, unless pass_axes_input).
GradCheck reduce(const char* op, Shape xs, int64_t opset, std::vector<AttrSpec> attrs, std::vector<int64_t> input_axes = {},
                 bool pass_axes_input = false) {
  GradCheck c;
  c.node.op = op;
  c.node.opset = opset;
  c.node.attrs = std::move(attrs);
  const std::string o = op;
  c.node.inputs = {o == "ReduceMax" || o == "ReduceMin" ? distinct_values(xs, 31) : ft(xs, rnd(shape_numel(xs), 31))};
  if (o == "ReduceMax" || o == "ReduceMin") c.eps = 1e-3f;
  if (pass_axes_input || !input_axes.empty())
    c.node.inputs.push_back(it64({static_cast<int64_t>(input_axes.size())}, input_axes));
  return c;
}

TEST(GradReduce, ReduceSumAxesAttributeOpset11) {
  for (int keep : {0, 1}) {
    SCOPED_TRACE(keep);
    check_gradients(reduce("ReduceSum", {2, 3, 4}, 11, {ais("axes", {1}), ai("keepdims", keep)}));
    check_gradients(reduce("ReduceSum", {2, 3, 4}, 11, {ais("axes", {0, -1}), ai("keepdims", keep)}));
    check_gradients(reduce("ReduceSum", {2, 3, 4}, 11, {ai("keepdims", keep)}));  // no axes: everything
  }
}

TEST(GradReduce, ReduceSumAxesInputOpset13) {
  for (int keep : {0, 1}) {
    SCOPED_TRACE(keep);
    check_gradients(reduce("ReduceSum", {2, 3, 4}, 13, {ai("keepdims", keep)}, {2}));
    check_gradients(reduce("ReduceSum", {2, 3, 4, 2}, 13, {ai("keepdims", keep)}, {1, 3}));
    check_gradients(reduce("ReduceSum", {2, 3, 4}, 13, {ai("keepdims", keep)}));  // no axes input
  }
  // Empty axes with noop_with_empty_axes: Y = X, dX = dY.
  check_gradients(reduce("ReduceSum", {2, 3}, 13, {ai("noop_with_empty_axes", 1)}, {}, true));
  // At opset 13 an `axes` attribute is not the axes (the forward kernel ignores it too).
  check_gradients(reduce("ReduceSum", {2, 3}, 13, {ais("axes", {0})}, {1}));
  // A scalar with axes [0] reduces to itself (as the forward kernel does): dX = dY.
  check_gradients(reduce("ReduceSum", {}, 13, {}, {0}));
  check_gradients(reduce("ReduceMean", {}, 18, {}, {0}));
}

TEST(GradReduce, ReduceMeanOldAndNewOpsets) {
  for (int keep : {0, 1}) {
    SCOPED_TRACE(keep);
    check_gradients(reduce("ReduceMean", {2, 3, 4}, 13, {ais("axes", {-2}), ai("keepdims", keep)}));
    check_gradients(reduce("ReduceMean", {2, 3, 4}, 17, {ais("axes", {0, 2}), ai("keepdims", keep)}));
    check_gradients(reduce("ReduceMean", {2, 3, 4}, 18, {ai("keepdims", keep)}, {0, 2}));
    check_gradients(reduce("ReduceMean", {3, 4}, 18, {ai("keepdims", keep)}));
  }
}

TEST(GradReduce, ReduceMeanExactValues) {
  // Mean over axis 1 of a [2, 3] input: dX[i, j] = dY[i] / 3.
  NodeRun r{.op = "ReduceMean", .inputs = {ft({2, 3}, {1, 2, 3, 4, 5, 6}), it64({1}, {1})}, .attrs = {ai("keepdims", 0)},
            .opset = 18};
  const std::vector<Tensor> g = autodiff_grads(r, {0}, {ft({2}, {3, 6})});
  EXPECT_VALUES_NEAR(g[0], (std::vector<float>{1, 1, 1, 2, 2, 2}), 1e-6f);
}

TEST(GradReduce, ReduceMaxMin) {
  for (const char* op : {"ReduceMax", "ReduceMin"}) {
    SCOPED_TRACE(op);
    check_gradients(reduce(op, {2, 3, 4}, 13, {ais("axes", {1}), ai("keepdims", 0)}));
    check_gradients(reduce(op, {2, 3, 4}, 18, {ai("keepdims", 1)}, {0, 2}));
  }
  // Ties: the first maximum in row-major order takes the gradient.
  NodeRun r{.op = "ReduceMax", .inputs = {ft({2, 3}, {7, 1, 7, 2, 5, 5})}, .attrs = {ais("axes", {1})}, .opset = 13};
  EXPECT_VALUES_NEAR(autodiff_grads(r, {0}, {ft({2, 1}, {10, 20})})[0], (std::vector<float>{10, 0, 0, 0, 20, 0}), 0.0f);
}

/// Softmax / LogSoftmax check of X [xs] (values spread over [-3, 3)) at `opset`.
GradCheck soft(const char* op, Shape xs, int64_t opset, std::vector<AttrSpec> attrs, int threads = 1) {
  GradCheck c;
  c.node.op = op;
  c.node.opset = opset;
  c.node.threads = threads;
  c.node.attrs = std::move(attrs);
  std::vector<float> v = rnd(shape_numel(xs), 41);
  for (float& x : v) x *= 3.0f;
  c.node.inputs = {ft(xs, v)};
  return c;
}

TEST(GradReduce, SoftmaxOpset11CoercesTo2D) {
  for (const char* op : {"Softmax", "LogSoftmax"}) {
    SCOPED_TRACE(op);
    check_gradients(soft(op, {3, 5}, 11, {}));
    check_gradients(soft(op, {2, 3, 2, 2}, 11, {ai("axis", 1)}));  // normalised over 3·2·2 = 12
    check_gradients(soft(op, {2, 3, 4}, 11, {ai("axis", 2)}));
    check_gradients(soft(op, {2, 3, 4}, 11, {}));  // default axis 1: over 3·4
  }
}

TEST(GradReduce, SoftmaxOpset13OneAxis) {
  for (const char* op : {"Softmax", "LogSoftmax"}) {
    SCOPED_TRACE(op);
    check_gradients(soft(op, {2, 3, 4}, 13, {}));  // default axis -1
    check_gradients(soft(op, {2, 3, 2, 2}, 13, {ai("axis", 1)}));  // strided slices
    check_gradients(soft(op, {2, 3, 4}, 13, {ai("axis", -1)}, 2));
  }
}

TEST(GradReduce, SoftmaxExactValues) {
  // A constant dL/dY = 1 gives dX = y·(1 − Σ y) = 0 when the sum runs over the normalised group
  // (any other grouping leaves Σ y != 1); LogSoftmax gives dX = 1 − len·softmax.
  const std::vector<float> x = {0.1f, -0.4f, 0.9f, 0.3f, 1.5f, -1.0f, 0.0f, 0.2f};
  for (int64_t opset : {11, 13}) {
    SCOPED_TRACE(opset);
    NodeRun s{.op = "Softmax", .inputs = {ft({2, 2, 2}, x)}, .attrs = {ai("axis", 1)}, .opset = opset};
    EXPECT_VALUES_NEAR(autodiff_grads(s, {0})[0], std::vector<float>(8, 0.0f), 1e-6f);
  }
  // Opset 11, axis 1 on [2, 2, 2]: groups of 4 (rows of the coerced [2, 4]).
  NodeRun l{.op = "LogSoftmax", .inputs = {ft({2, 2, 2}, x)}, .attrs = {ai("axis", 1)}, .opset = 11};
  std::vector<float> want(8);
  for (int row = 0; row < 2; ++row) {
    double z = 0;
    for (int i = 0; i < 4; ++i) z += std::exp(x[row * 4 + i]);
    for (int i = 0; i < 4; ++i) want[row * 4 + i] = static_cast<float>(1.0 - 4.0 * std::exp(x[row * 4 + i]) / z);
  }
  EXPECT_VALUES_NEAR(autodiff_grads(l, {0})[0], want, 1e-5f);
}

}  // namespace
}  // namespace qtool::testing
