// Gradients: linear family (see grads.h). MatMul and Gemm, every product through nn::sgemm.
//
// MatMul, Y[b] = A[b]·B[b] over broadcast batches b (numpy rules, 1-D operands promoted to
// [1, K] / [K, 1]):
//   dA[a] = Σ_{b → a} dY[b]·B[b]ᵀ,   dB[c] = Σ_{b → c} A[b]ᵀ·dY[b]
// where b → a runs over the output batches that read A's batch a (more than one where A's batch
// dims broadcast), i.e. the per-batch products reduced back to each input's shape.
// Gemm, Y = alpha·op(A)·op(B) + beta·C (op = transpose when transA / transB):
//   d op(A) = alpha·dY·op(B)ᵀ,   d op(B) = alpha·op(A)ᵀ·dY,   dC = beta·reduce_to_shape(dY, C)
// and dA = d op(A) (transA = 0) or its transpose (transA = 1), likewise for B; the transposes
// are folded into the sgemm flags instead of being materialised.
#include <vector>

#include "../kernels/nn_util.h"
#include "grad_nn_util.h"
#include "grads.h"

namespace qtool::runtime::grads {
namespace {

/// numpy broadcast of two batch shapes; kInvalidModel naming the node otherwise.
Shape broadcast_batch(const GradContext& ctx, const Shape& a, const Shape& b) {
  const size_t r = std::max(a.size(), b.size());
  Shape out(r, 1);
  for (size_t i = 0; i < r; ++i) {
    const int64_t da = i < r - a.size() ? 1 : a[i - (r - a.size())];
    const int64_t db = i < r - b.size() ? 1 : b[i - (r - b.size())];
    if (da != db && da != 1 && db != 1) bad_grad_node(ctx, "batch shapes {} and {} cannot be broadcast", shape_str(a), shape_str(b));
    out[i] = da == 1 ? db : da;
  }
  return out;
}

/// For each batch of an operand (0..targets), the output batches that read it.
std::vector<std::vector<int64_t>> readers(const Shape& batch, const Shape& operand_batch) {
  const size_t r = batch.size();
  const std::vector<int64_t> st = nn::broadcast_strides(operand_batch, r);
  std::vector<std::vector<int64_t>> out(static_cast<size_t>(shape_numel(operand_batch)));
  const int64_t nb = shape_numel(batch);
  for (int64_t idx = 0; idx < nb; ++idx) {
    int64_t rem = idx, off = 0;
    for (size_t i = r; i-- > 0;) {
      off += (rem % batch[i]) * st[i];
      rem /= batch[i];
    }
    out[static_cast<size_t>(off)].push_back(idx);
  }
  return out;
}

/// Runs item(t, gemm_pool) for t in [0, n): in parallel over items when there are enough of
/// them (or each product is small), else one at a time with the pool splitting each product.
template <typename Fn>
void for_each_product(ThreadPool& pool, int64_t n, double flops_each, Fn&& item) {
  if (n >= pool.threads() * 2 || flops_each < 64.0 * 64 * 64) {
    pool.parallel_for(n, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) item(t, nullptr);
    });
  } else {
    for (int64_t t = 0; t < n; ++t) item(t, &pool);
  }
}

/// MatMul (1, 9, 13: same semantics for float).
void matmul_grad(GradContext& ctx) {
  const bool want_a = ctx.wants_input_grad(0), want_b = ctx.wants_input_grad(1);
  if (!ctx.has_output_grad(0) || (!want_a && !want_b)) return;
  const Tensor a = float_value(ctx.input(0)), b = float_value(ctx.input(1));
  if (a.rank() == 0 || b.rank() == 0) bad_grad_node(ctx, "MatMul operands must have rank >= 1");
  Shape as = a.shape(), bs = b.shape();
  const bool a_vec = as.size() == 1, b_vec = bs.size() == 1;
  if (a_vec) as.insert(as.begin(), 1);
  if (b_vec) bs.push_back(1);
  const int64_t m = as[as.size() - 2], k = as.back(), n = bs.back();
  if (bs[bs.size() - 2] != k) bad_grad_node(ctx, "inner dimensions differ: A {} B {}", shape_str(a.shape()), shape_str(b.shape()));
  const Shape abatch(as.begin(), as.end() - 2), bbatch(bs.begin(), bs.end() - 2);
  const Shape batch = broadcast_batch(ctx, abatch, bbatch);
  const Tensor& dy = ctx.output_grad(0);
  const int64_t nb = shape_numel(batch);
  QTOOL_CHECK(dy.numel() == nb * m * n, ErrorCode::kInternal, "gradient of {}: dY {} does not match A {} B {}",
              ctx.node().describe(), shape_str(dy.shape()), shape_str(a.shape()), shape_str(b.shape()));
  if (nb == 0 || m == 0 || n == 0 || k == 0) {  // empty product: Y does not depend on A or B
    if (want_a) ctx.set_input_grad(0, Tensor(DataType::kFloat, a.shape()));
    if (want_b) ctx.set_input_grad(1, Tensor(DataType::kFloat, b.shape()));
    return;
  }
  const float* ap = a.data<float>();
  const float* bp = b.data<float>();
  const float* gp = dy.data<float>();
  ThreadPool& pool = ctx.pool();
  const int64_t a_batches = shape_numel(abatch), b_batches = shape_numel(bbatch);
  Tensor da = want_a ? Tensor::empty(DataType::kFloat, a.shape()) : Tensor();
  Tensor db = want_b ? Tensor::empty(DataType::kFloat, b.shape()) : Tensor();
  if (b_batches == 1 && a_batches == nb) {
    // B shared by every batch and A's batches contiguous: [nb*M, K] x [K, N] as one product.
    if (want_a) nn::sgemm(false, true, nb * m, k, n, 1.0f, gp, n, bp, n, 0.0f, da.mutable_data<float>(), k, &pool);
    if (want_b) nn::sgemm(true, false, k, n, nb * m, 1.0f, ap, k, gp, n, 0.0f, db.mutable_data<float>(), n, &pool);
  } else {
    const double flops = static_cast<double>(m) * n * k;
    const std::vector<std::vector<int64_t>> a_readers = readers(batch, abatch), b_readers = readers(batch, bbatch);
    // Offsets into the other operand of each output batch.
    const std::vector<int64_t> sa = nn::broadcast_strides(abatch, batch.size()), sb = nn::broadcast_strides(bbatch, batch.size());
    auto offset = [&](int64_t idx, const std::vector<int64_t>& st) {
      int64_t rem = idx, off = 0;
      for (size_t i = batch.size(); i-- > 0;) {
        off += (rem % batch[i]) * st[i];
        rem /= batch[i];
      }
      return off;
    };
    if (want_a) {
      float* dp = da.mutable_data<float>();
      for_each_product(pool, a_batches, flops * static_cast<double>(nb) / a_batches, [&](int64_t t, ThreadPool* p) {
        float beta = 0.0f;
        for (int64_t idx : a_readers[t]) {  // dA[t] (+)= dY[idx]·B[ob]ᵀ
          nn::sgemm(false, true, m, k, n, 1.0f, gp + idx * m * n, n, bp + offset(idx, sb) * k * n, n, beta,
                    dp + t * m * k, k, p);
          beta = 1.0f;
        }
      });
    }
    if (want_b) {
      float* dp = db.mutable_data<float>();
      for_each_product(pool, b_batches, flops * static_cast<double>(nb) / b_batches, [&](int64_t t, ThreadPool* p) {
        float beta = 0.0f;
        for (int64_t idx : b_readers[t]) {  // dB[t] (+)= A[oa]ᵀ·dY[idx]
          nn::sgemm(true, false, k, n, m, 1.0f, ap + offset(idx, sa) * m * k, k, gp + idx * m * n, n, beta,
                    dp + t * k * n, n, p);
          beta = 1.0f;
        }
      });
    }
  }
  if (want_a) ctx.set_input_grad(0, std::move(da));
  if (want_b) ctx.set_input_grad(1, std::move(db));
}

/// Gemm (all opsets; opset < 7's `broadcast` flag broadcasts C the same way).
void gemm_grad(GradContext& ctx) {
  if (!ctx.has_output_grad(0)) return;
  const bool want_a = ctx.wants_input_grad(0), want_b = ctx.wants_input_grad(1), want_c = ctx.wants_input_grad(2);
  if (!want_a && !want_b && !want_c) return;
  const ir::Node& node = ctx.node();
  const Tensor a = float_value(ctx.input(0)), b = float_value(ctx.input(1));
  if (a.rank() != 2 || b.rank() != 2) bad_grad_node(ctx, "A {} and B {} must be 2-D", shape_str(a.shape()), shape_str(b.shape()));
  const bool ta = node.attr_int("transA", 0) != 0, tb = node.attr_int("transB", 0) != 0;
  const float alpha = node.attr_float("alpha", 1.0f), beta = node.attr_float("beta", 1.0f);
  const int64_t m = ta ? a.dim(1) : a.dim(0), k = ta ? a.dim(0) : a.dim(1);
  const int64_t kb = tb ? b.dim(1) : b.dim(0), n = tb ? b.dim(0) : b.dim(1);
  if (k != kb) bad_grad_node(ctx, "inner dimensions differ: A {} B {}", shape_str(a.shape()), shape_str(b.shape()));
  const Tensor& dy = ctx.output_grad(0);
  QTOOL_CHECK(dy.shape() == (Shape{m, n}), ErrorCode::kInternal, "gradient of {}: dY {} is not [{}, {}]",
              node.describe(), shape_str(dy.shape()), m, n);
  const float* gp = dy.data<float>();
  ThreadPool& pool = ctx.pool();
  if (want_a) {
    Tensor da = Tensor::empty(DataType::kFloat, a.shape());
    if (!ta) {  // dA[M,K] = alpha·dY·op(B)ᵀ, op(B)ᵀ = B when transB else Bᵀ
      nn::sgemm(false, !tb, m, k, n, alpha, gp, n, b.data<float>(), b.dim(1), 0.0f, da.mutable_data<float>(), k, &pool);
    } else {  // dA[K,M] = alpha·op(B)·dYᵀ
      nn::sgemm(tb, true, k, m, n, alpha, b.data<float>(), b.dim(1), gp, n, 0.0f, da.mutable_data<float>(), m, &pool);
    }
    if (m == 0 || n == 0) da = Tensor(DataType::kFloat, a.shape());  // sgemm writes nothing then
    ctx.set_input_grad(0, std::move(da));
  }
  if (want_b) {
    Tensor db = Tensor::empty(DataType::kFloat, b.shape());
    if (!tb) {  // dB[K,N] = alpha·op(A)ᵀ·dY, op(A)ᵀ = A when transA else Aᵀ
      nn::sgemm(!ta, false, k, n, m, alpha, a.data<float>(), a.dim(1), gp, n, 0.0f, db.mutable_data<float>(), n, &pool);
    } else {  // dB[N,K] = alpha·dYᵀ·op(A)
      nn::sgemm(true, ta, n, k, m, alpha, gp, n, a.data<float>(), a.dim(1), 0.0f, db.mutable_data<float>(), k, &pool);
    }
    if (m == 0 || n == 0) db = Tensor(DataType::kFloat, b.shape());
    ctx.set_input_grad(1, std::move(db));
  }
  if (want_c && ctx.has_input(2)) {
    const Shape& cs = ctx.input(2).shape();
    if (cs.size() > 2) bad_grad_node(ctx, "C {} has rank > 2", shape_str(cs));
    const int64_t cr = cs.size() == 2 ? cs[0] : 1, cc = cs.empty() ? 1 : cs.back();
    if ((cr != 1 && cr != m) || (cc != 1 && cc != n)) bad_grad_node(ctx, "C {} cannot be broadcast to [{},{}]", shape_str(cs), m, n);
    if (beta == 0.0f) {  // the forward pass ignores C
      ctx.set_input_grad(2, Tensor(DataType::kFloat, cs));
      return;
    }
    Tensor dc = reduce_to_shape(dy, cs);
    if (beta != 1.0f) {
      float* p = dc.mutable_data<float>();  // copy-on-write when dc is dY itself
      for (int64_t i = 0; i < dc.numel(); ++i) p[i] *= beta;
    }
    ctx.set_input_grad(2, std::move(dc));
  }
}

}  // namespace

void register_linear_gradients(GradRegistry& r) {
  r.add("", "MatMul", 1, matmul_grad);
  r.add("", "Gemm", 1, gemm_grad);
}

}  // namespace qtool::runtime::grads
