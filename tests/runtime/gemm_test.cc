// Gemm and MatMul against hand-computed values and a naive reference.
#include <gtest/gtest.h>

#include "nn_test_util.h"

namespace qtool::testing {
namespace {

std::vector<float> naive_mm(const std::vector<float>& a, const std::vector<float>& b, int64_t m, int64_t k, int64_t n) {
  std::vector<float> c(static_cast<size_t>(m * n), 0.0f);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (int64_t p = 0; p < k; ++p) s += double(a[i * k + p]) * b[p * n + j];
      c[i * n + j] = static_cast<float>(s);
    }
  return c;
}

TEST(GemmKernel, TransposesAlphaBetaAndRowBroadcastC) {
  // A^T with A stored [3,2]; B^T with B stored [2,3].
  Tensor a = ft({3, 2}, {1, 4, 2, 5, 3, 6});     // A = [[1,2,3],[4,5,6]]
  Tensor b = ft({2, 3}, {1, 0, 1, 0, 1, 1});     // B = [[1,0],[0,1],[1,1]]
  Tensor c = ft({2}, {10, 20});
  auto y = run_node({.op = "Gemm", .inputs = {a, b, c},
                     .attrs = {ai("transA", 1), ai("transB", 1), af("alpha", 2.0f), af("beta", 0.5f)}});
  // A*B = [[4,5],[10,11]]; 2*AB + 0.5*C = [[13,20],[25,32]]
  EXPECT_EQ(y[0].shape(), (Shape{2, 2}));
  EXPECT_VALUES_NEAR(y[0], (std::vector<float>{13, 20, 25, 32}), 1e-5);
}

TEST(GemmKernel, ColumnBroadcastCAndOptionalC) {
  Tensor a = ft({2, 2}, {1, 2, 3, 4});
  Tensor b = ft({2, 2}, {1, 1, 1, 1});
  auto y = run_node({.op = "Gemm", .inputs = {a, b, ft({2, 1}, {100, 200})}});
  EXPECT_VALUES_NEAR(y[0], (std::vector<float>{103, 103, 207, 207}), 1e-5);
  auto y2 = run_node({.op = "Gemm", .inputs = {a, b}, .opset = 13});
  EXPECT_VALUES_NEAR(y2[0], (std::vector<float>{3, 3, 7, 7}), 1e-5);
}

TEST(MatMulKernel, OneDimensionalOperands) {
  Tensor v = ft({3}, {1, 2, 3});
  Tensor m = ft({3, 2}, {1, 2, 3, 4, 5, 6});
  auto y = run_node({.op = "MatMul", .inputs = {v, m}});
  EXPECT_EQ(y[0].shape(), (Shape{2}));
  EXPECT_VALUES_NEAR(y[0], (std::vector<float>{22, 28}), 1e-5);
  auto y2 = run_node({.op = "MatMul", .inputs = {ft({2, 3}, {1, 2, 3, 4, 5, 6}), v}});
  EXPECT_EQ(y2[0].shape(), (Shape{2}));
  EXPECT_VALUES_NEAR(y2[0], (std::vector<float>{14, 32}), 1e-5);
  auto y3 = run_node({.op = "MatMul", .inputs = {v, v}});
  EXPECT_EQ(y3[0].shape(), (Shape{}));
  EXPECT_VALUES_NEAR(y3[0], (std::vector<float>{14}), 1e-5);
}

TEST(MatMulKernel, BatchBroadcastMatchesNaive) {
  // A [2,1,2,3] x B [3,3,2] -> [2,3,2,2]
  std::vector<float> av = rnd(2 * 2 * 3, 1), bv = rnd(3 * 3 * 2, 2);
  auto y = run_node({.op = "MatMul", .inputs = {ft({2, 1, 2, 3}, av), ft({3, 3, 2}, bv)}});
  ASSERT_EQ(y[0].shape(), (Shape{2, 3, 2, 2}));
  std::vector<float> want;
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j) {
      std::vector<float> a(av.begin() + i * 6, av.begin() + i * 6 + 6), b(bv.begin() + j * 6, bv.begin() + j * 6 + 6);
      auto c = naive_mm(a, b, 2, 3, 2);
      want.insert(want.end(), c.begin(), c.end());
    }
  EXPECT_VALUES_NEAR(y[0], want, 1e-5);
}

TEST(MatMulKernel, LargeThreadedMatchesNaive) {
  // Big enough to be split across two threads (both the M- and N-split paths).
  for (auto [m, k, n] : {std::tuple<int64_t, int64_t, int64_t>{150, 70, 90}, {90, 70, 150}}) {
    std::vector<float> a = rnd(m * k, 3), b = rnd(k * n, 4);
    auto y = run_node({.op = "MatMul", .inputs = {ft({m, k}, a), ft({k, n}, b)}, .threads = 2});
    EXPECT_VALUES_NEAR(y[0], naive_mm(a, b, m, k, n), 1e-4);
  }
}

TEST(MatMulKernel, ShapesAroundTheTilesMatchNaive) {
  // The direct GEMM behind MatMul and Gemm: rows 4..13 (panels of 6), columns off the 16-column
  // strips, k across 256-step chunks; Gemm with transB and with a C added (beta 1).
  uint32_t seed = 400;
  for (int64_t m : {4, 5, 7, 13}) {
    for (int64_t n : {1, 8, 15, 17, 33}) {
      for (int64_t k : {1, 8, 255, 257, 600}) {
        SCOPED_TRACE(std::to_string(m) + "x" + std::to_string(k) + "x" + std::to_string(n));
        const std::vector<float> a = rnd(m * k, seed++), b = rnd(k * n, seed++), c = rnd(n, seed++);
        const std::vector<float> want = naive_mm(a, b, m, k, n);
        auto y = run_node({.op = "MatMul", .inputs = {ft({m, k}, a), ft({k, n}, b)}});
        EXPECT_VALUES_NEAR(y[0], want, 1e-4);
        std::vector<float> bt(static_cast<size_t>(k * n));
        for (int64_t p = 0; p < k; ++p)
          for (int64_t j = 0; j < n; ++j) bt[j * k + p] = b[p * n + j];
        std::vector<float> want_c = want;
        for (int64_t i = 0; i < m; ++i)
          for (int64_t j = 0; j < n; ++j) want_c[i * n + j] += c[j];
        auto g = run_node({.op = "Gemm", .inputs = {ft({m, k}, a), ft({n, k}, bt), ft({n}, c)}, .attrs = {ai("transB", 1)}});
        EXPECT_VALUES_NEAR(g[0], want_c, 1e-4);
      }
    }
  }
}

TEST(MatMulKernel, IntegerAndFloat16KeepTheirType) {
  auto yi = run_node({.op = "MatMul", .inputs = {Tensor::from_vector<int64_t>({1, 2}, {3, -4}), Tensor::from_vector<int64_t>({2, 1}, {5, 6})}});
  EXPECT_EQ(yi[0].dtype(), DataType::kInt64);
  EXPECT_EQ(yi[0].data<int64_t>()[0], -9);
  Tensor h = ft({1, 2}, {1.5f, 2.0f}).cast(DataType::kFloat16);
  auto yh = run_node({.op = "MatMul", .inputs = {h, ft({2, 1}, {2, 1}).cast(DataType::kFloat16)}});
  EXPECT_EQ(yh[0].dtype(), DataType::kFloat16);
  EXPECT_VALUES_NEAR(yh[0], (std::vector<float>{5.0f}), 0);
}

TEST(GemmKernel, RejectsMismatchedInnerDims) {
  EXPECT_THROW(run_node({.op = "Gemm", .inputs = {ft({2, 3}, rnd(6, 1)), ft({2, 2}, rnd(4, 1))}}), Error);
}

}  // namespace
}  // namespace qtool::testing
