// Gemm and MatMul: both reduce to nn::sgemm (Eigen GEMM, split across the thread pool).
#include <algorithm>

#include "kernels.h"
#include "nn_util.h"

namespace qtool::runtime {
namespace {

/// Gemm: Y = alpha * op(A) * op(B) + beta * C, C unidirectionally broadcast to [M, N]
/// (optional from opset 11; opset < 7 had an explicit `broadcast` flag, which we treat the same).
void gemm_kernel(KernelContext& ctx) {
  const ir::Node& node = ctx.node();
  Tensor a = nn::float_input(ctx, 0), b = nn::float_input(ctx, 1);
  if (a.rank() != 2 || b.rank() != 2) {
    nn::bad_node(ctx, "A {} and B {} must be 2-D", shape_str(a.shape()), shape_str(b.shape()));
  }
  const bool ta = node.attr_int("transA", 0) != 0, tb = node.attr_int("transB", 0) != 0;
  const float alpha = node.attr_float("alpha", 1.0f), beta = node.attr_float("beta", 1.0f);
  const int64_t m = ta ? a.dim(1) : a.dim(0), k = ta ? a.dim(0) : a.dim(1);
  const int64_t kb = tb ? b.dim(1) : b.dim(0), n = tb ? b.dim(0) : b.dim(1);
  if (k != kb) nn::bad_node(ctx, "inner dimensions differ: A {} B {}", shape_str(a.shape()), shape_str(b.shape()));
  Tensor y = Tensor::empty(DataType::kFloat, {m, n});
  float* yp = y.mutable_data<float>();
  float gemm_beta = 0.0f;
  if (ctx.has_input(2) && beta != 0.0f) {
    Tensor c = nn::float_input(ctx, 2);
    if (c.rank() > 2) nn::bad_node(ctx, "C {} has rank > 2", shape_str(c.shape()));
    const int64_t cr = c.rank() == 2 ? c.dim(0) : 1, cc = c.rank() >= 1 ? c.dim(-1) : 1;
    if ((cr != 1 && cr != m) || (cc != 1 && cc != n)) {
      nn::bad_node(ctx, "C {} cannot be broadcast to [{},{}]", shape_str(c.shape()), m, n);
    }
    const float* cp = c.data<float>();
    for (int64_t i = 0; i < m; ++i) {
      const float* crow = cp + (cr == 1 ? 0 : i) * cc;
      float* yrow = yp + i * n;
      if (cc == 1) std::fill(yrow, yrow + n, crow[0]);
      else std::copy(crow, crow + n, yrow);
    }
    gemm_beta = beta;
  }
  nn::sgemm(ta, tb, m, n, k, alpha, a.data<float>(), a.dim(1), b.data<float>(), b.dim(1), gemm_beta, yp, n,
            &ctx.pool());
  ctx.set_output(0, nn::to_dtype_like(std::move(y), ctx.input(0).dtype()));
}

/// MatMul with numpy semantics: a 1-D A is [1, K] and a 1-D B is [K, 1] (the added dim is
/// removed from the result); leading batch dims broadcast.
void matmul_kernel(KernelContext& ctx) {
  Tensor a = nn::float_input(ctx, 0), b = nn::float_input(ctx, 1);
  if (a.rank() == 0 || b.rank() == 0) nn::bad_node(ctx, "MatMul operands must have rank >= 1");
  Shape as = a.shape(), bs = b.shape();
  const bool a_vec = as.size() == 1, b_vec = bs.size() == 1;
  if (a_vec) as.insert(as.begin(), 1);
  if (b_vec) bs.push_back(1);
  const int64_t m = as[as.size() - 2], k = as.back(), n = bs.back();
  if (bs[bs.size() - 2] != k) {
    nn::bad_node(ctx, "inner dimensions differ: A {} B {}", shape_str(a.shape()), shape_str(b.shape()));
  }
  Shape abatch(as.begin(), as.end() - 2), bbatch(bs.begin(), bs.end() - 2);
  Shape batch = nn::broadcast_shapes(ctx, abatch, bbatch);
  Shape out_shape = batch;
  if (!a_vec) out_shape.push_back(m);
  if (!b_vec) out_shape.push_back(n);
  Tensor y = Tensor::empty(DataType::kFloat, out_shape);
  float* yp = y.mutable_data<float>();
  const float* ap = a.data<float>();
  const float* bp = b.data<float>();
  const int64_t nb = shape_numel(batch);
  if (nb == 0 || m == 0 || n == 0) {
    ctx.set_output(0, std::move(y));
    return;
  }
  const int64_t a_batches = shape_numel(abatch), b_batches = shape_numel(bbatch);
  // B shared by every batch and A's batches contiguous: one [nb*M, K] x [K, N] product.
  if (b_batches == 1 && a_batches == nb) {
    nn::sgemm(false, false, nb * m, n, k, 1.0f, ap, k, bp, n, 0.0f, yp, n, &ctx.pool());
    ctx.set_output(0, nn::to_dtype_like(std::move(y), ctx.input(0).dtype()));
    return;
  }
  // Offsets of each broadcast batch into A and B (row-major strides with 0 for broadcast dims).
  const size_t r = batch.size();
  const std::vector<int64_t> sa = nn::broadcast_strides(abatch, r), sb = nn::broadcast_strides(bbatch, r);
  auto offsets = [&](int64_t idx, int64_t* oa, int64_t* ob) {
    int64_t rem = idx;
    *oa = *ob = 0;
    for (size_t i = r; i-- > 0;) {
      const int64_t c = rem % batch[i];
      rem /= batch[i];
      *oa += c * sa[i];
      *ob += c * sb[i];
    }
  };
  auto one = [&](int64_t idx, ThreadPool* pool) {
    int64_t oa, ob;
    offsets(idx, &oa, &ob);
    nn::sgemm(false, false, m, n, k, 1.0f, ap + oa * m * k, k, bp + ob * k * n, n, 0.0f, yp + idx * m * n, n, pool);
  };
  ThreadPool& pool = ctx.pool();
  if (nb >= pool.threads() * 2 || static_cast<double>(m) * n * k < 64.0 * 64 * 64) {
    pool.parallel_for(nb, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t i = b0; i < b1; ++i) one(i, nullptr);
    });
  } else {
    for (int64_t i = 0; i < nb; ++i) one(i, &pool);
  }
  ctx.set_output(0, nn::to_dtype_like(std::move(y), ctx.input(0).dtype()));
}

}  // namespace

/// Registers Gemm (all opsets) and MatMul (1, 9 and 13 share semantics for float).
void kernels::register_gemm_kernels(KernelRegistry& r) {
  r.add("", "Gemm", 1, gemm_kernel);
  r.add("", "MatMul", 1, matmul_kernel);
}

}  // namespace qtool::runtime
