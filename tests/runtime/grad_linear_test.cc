// Gradients of MatMul and Gemm: finite-difference checks over the shape and attribute variants,
// hand-computed values, and the error for shapes that do not fit.
#include <gtest/gtest.h>

#include <optional>

#include "grad_check.h"
#include "grad_test_util.h"

namespace qtool::testing {
namespace {

GradCheck matmul(Shape a, Shape b, int threads = 1) {
  GradCheck c;
  c.node.op = "MatMul";
  c.node.opset = 13;
  c.node.threads = threads;
  c.node.inputs = {ft(a, rnd(shape_numel(a), 1)), ft(b, rnd(shape_numel(b), 2))};
  return c;
}

TEST(GradLinear, MatMul2D) { check_gradients(matmul({3, 4}, {4, 5})); }

TEST(GradLinear, MatMulVectorOperands) {
  check_gradients(matmul({4}, {4, 5}));     // 1-D x 2-D: [K] · [K, N] -> [N]
  check_gradients(matmul({3, 4}, {4}));     // 2-D x 1-D
  check_gradients(matmul({4}, {4}));        // dot product -> scalar
  check_gradients(matmul({4}, {2, 4, 3}));  // 1-D x batched
}

TEST(GradLinear, MatMulBatchedSharedB) { check_gradients(matmul({2, 3, 4, 5}, {5, 6})); }

TEST(GradLinear, MatMulBatchedSharedA) { check_gradients(matmul({4, 5}, {2, 3, 5, 2})); }

TEST(GradLinear, MatMulBroadcastBatchDims) {
  // Batch [2,1] x [1,5] -> [2,5]: dA sums over the 5 B batches, dB over the 2 A batches.
  check_gradients(matmul({2, 1, 3, 4}, {1, 5, 4, 2}));
  check_gradients(matmul({3, 2, 4}, {3, 4, 2}));  // equal batches
  check_gradients(matmul({2, 3, 2, 4}, {3, 4, 1}));
}

TEST(GradLinear, MatMulThreadedMatchesFiniteDifferences) {
  check_gradients(matmul({2, 1, 3, 4}, {1, 5, 4, 2}, 2));
  check_gradients(matmul({6, 3, 4}, {4, 5}, 2));
  // Products large enough that sgemm splits them across the pool.
  GradCheck big = matmul({2, 70, 64}, {64, 66}, 2);
  big.wrt = {1};
  check_gradients(big);
}

TEST(GradLinear, MatMulExactValues) {
  // A = [[1, 2], [3, 4]], B = [[5, 6], [7, 8]], dL/dY = [[1, 0], [0, 2]]:
  // dA = dY·Bᵀ = [[5, 7], [12, 16]], dB = Aᵀ·dY = [[1, 6], [2, 8]].
  NodeRun r{.op = "MatMul", .inputs = {ft({2, 2}, {1, 2, 3, 4}), ft({2, 2}, {5, 6, 7, 8})}, .opset = 13};
  const std::vector<Tensor> g = autodiff_grads(r, {0, 1}, {ft({2, 2}, {1, 0, 0, 2})});
  EXPECT_VALUES_NEAR(g[0], (std::vector<float>{5, 7, 12, 16}), 1e-6f);
  EXPECT_VALUES_NEAR(g[1], (std::vector<float>{1, 6, 2, 8}), 1e-6f);
  // Broadcast batch [2, 1] x [2] -> [2, 2]: A [2, 1, 1, 2] (rows [1, 2] and [3, 4]) and
  // B [2, 2, 1] (columns [1, 10] and [100, 1000]), dL/dY = 1 everywhere:
  // dA[b] = Σ_c B[c]ᵀ = [101, 1010], dB[c] = Σ_b A[b]ᵀ = [4, 6].
  NodeRun rb{.op = "MatMul", .inputs = {ft({2, 1, 1, 2}, {1, 2, 3, 4}), ft({2, 2, 1}, {1, 10, 100, 1000})}, .opset = 13};
  const std::vector<Tensor> gb = autodiff_grads(rb, {0, 1});
  EXPECT_VALUES_NEAR(gb[0], (std::vector<float>{101, 1010, 101, 1010}), 1e-4f);
  EXPECT_VALUES_NEAR(gb[1], (std::vector<float>{4, 6, 4, 6}), 1e-6f);
}

TEST(GradLinear, MatMulInnerMismatchIsInvalidModel) {
  NodeRun r{.op = "MatMul", .inputs = {ft({2, 3}, rnd(6, 1)), ft({4, 2}, rnd(8, 2))}, .opset = 13};
  try {
    call_grad_fn(r, {Tensor(DataType::kFloat, {2, 2})}, {Tensor(DataType::kFloat, {2, 2})}, {1, 1});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidModel);
    EXPECT_NE(std::string(e.what()).find("node0"), std::string::npos) << e.what();
  }
}

/// Gemm check of A·B (+ C of shape c_shape when given) with the transposes, alpha and beta.
GradCheck gemm(int64_t m, int64_t k, int64_t n, bool ta, bool tb, std::optional<Shape> c_shape, float alpha, float beta) {
  GradCheck c;
  c.node.op = "Gemm";
  c.node.opset = 13;
  const Shape as = ta ? Shape{k, m} : Shape{m, k}, bs = tb ? Shape{n, k} : Shape{k, n};
  c.node.inputs = {ft(as, rnd(m * k, 3)), ft(bs, rnd(k * n, 4))};
  if (c_shape) c.node.inputs.push_back(ft(*c_shape, rnd(shape_numel(*c_shape), 5)));
  c.node.attrs = {ai("transA", ta), ai("transB", tb), af("alpha", alpha), af("beta", beta)};
  return c;
}

TEST(GradLinear, GemmTransposes) {
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      SCOPED_TRACE(::testing::Message() << "transA " << ta << " transB " << tb);
      check_gradients(gemm(3, 4, 5, ta, tb, Shape{3, 5}, 0.7f, 1.3f));
    }
}

TEST(GradLinear, GemmBiasShapes) {
  // C unidirectionally broadcast to [M, N]: dC sums dY over the broadcast dims, times beta.
  for (const Shape& cs : {Shape{5}, Shape{1, 5}, Shape{3, 5}, Shape{3, 1}, Shape{1}, Shape{}}) {
    SCOPED_TRACE(shape_str(cs));
    check_gradients(gemm(3, 4, 5, false, true, cs, 1.0f, 0.5f));
  }
}

TEST(GradLinear, GemmWithoutCAndBetaZero) {
  check_gradients(gemm(3, 4, 5, true, false, std::nullopt, 2.0f, 1.0f));  // no C
  check_gradients(gemm(3, 4, 5, false, false, Shape{3, 5}, 1.0f, 0.0f));  // C ignored: dC = 0
}

TEST(GradLinear, GemmExactValues) {
  // Y = 2·A·B + 3·C with A [1, 2] = [1, 2], B [2, 1] = [3, 4], C [1] and dL/dY = 1:
  // dA = 2·Bᵀ = [6, 8], dB = 2·Aᵀ = [2, 4], dC = 3.
  NodeRun r{.op = "Gemm",
            .inputs = {ft({1, 2}, {1, 2}), ft({2, 1}, {3, 4}), ft({1}, {0.5f})},
            .attrs = {af("alpha", 2.0f), af("beta", 3.0f)},
            .opset = 13};
  const std::vector<Tensor> g = autodiff_grads(r, {0, 1, 2});
  EXPECT_VALUES_NEAR(g[0], (std::vector<float>{6, 8}), 1e-6f);
  EXPECT_VALUES_NEAR(g[1], (std::vector<float>{2, 4}), 1e-6f);
  EXPECT_VALUES_NEAR(g[2], (std::vector<float>{3}), 1e-6f);
}

TEST(GradLinear, GemmOnlyRequestedGradients) {
  GradCheck c = gemm(3, 4, 5, false, false, Shape{5}, 1.0f, 1.0f);
  const std::vector<Tensor> g =
      call_grad_fn(c.node, {Tensor(DataType::kFloat, {3, 5})}, {ft({3, 5}, rnd(15, 9))}, {0, 1, 0});
  EXPECT_FALSE(g[0].defined());
  ASSERT_TRUE(g[1].defined());
  EXPECT_EQ(g[1].shape(), (Shape{4, 5}));
  EXPECT_FALSE(g[2].defined());
}

}  // namespace
}  // namespace qtool::testing
