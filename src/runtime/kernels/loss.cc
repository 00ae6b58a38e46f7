// Loss ops, for models exported with their training head: NegativeLogLikelihoodLoss and
// SoftmaxCrossEntropyLoss (= NLL of log_softmax over axis 1).
//
// For input [N, C, d...] and target [N, d...]:
//   loss[n, d] = -w[t] * input[n, t, d]  with t = target[n, d]  (0 where t == ignore_index),
//   w = weight[t] (1 without weights);
//   reduction 'none' keeps loss's shape, 'sum' sums it, 'mean' divides the sum by sum(w) over
//   non-ignored targets (the element count when neither weights nor ignore_index are given).
// Computed in double, returned in the input's dtype.
#include <cmath>
#include <optional>

#include "kernel_util.h"
#include "kernels.h"

namespace qtool::runtime::kernels {

namespace {

Tensor nll(const KernelContext& ctx, const std::vector<double>& input, const Shape& in_shape, DataType out_type) {
  const ir::Node& n = ctx.node();
  const Tensor& target = ctx.input(1);
  QTOOL_CHECK(in_shape.size() >= 2 && target.rank() + 1 == in_shape.size(), ErrorCode::kInvalidModel,
              "{}: input {} and target {} do not match", n.describe(), shape_str(in_shape),
              shape_str(target.shape()));
  const int64_t N = in_shape[0], C = in_shape[1];
  const int64_t D = N == 0 ? 0 : shape_numel(in_shape) / (N * C);
  const std::vector<int64_t> t = int_values(target);
  std::vector<double> weight;
  if (ctx.has_input(2)) weight = double_values(ctx.input(2));
  std::optional<int64_t> ignore;
  if (n.has_attr("ignore_index")) ignore = n.attr_int("ignore_index", 0);
  const std::string reduction = n.attr_string("reduction", "mean");
  std::vector<double> loss(static_cast<size_t>(N * D), 0.0);
  double wsum = 0.0;
  for (int64_t i = 0; i < N; ++i) {
    for (int64_t d = 0; d < D; ++d) {
      const int64_t c = t[i * D + d];
      if (ignore && c == *ignore) continue;
      QTOOL_CHECK(c >= 0 && c < C, ErrorCode::kInvalidInput, "{}: target {} is out of range [0, {})",
                  n.describe(), c, C);
      const double w = weight.empty() ? 1.0 : weight[c];
      loss[i * D + d] = -w * input[(i * C + c) * D + d];
      wsum += w;
    }
  }
  if (reduction == "none") {
    Tensor out = Tensor::from_vector<double>(target.shape(), loss);
    return out.cast(out_type);
  }
  double sum = 0.0;
  for (double v : loss) sum += v;
  if (reduction == "mean") {
    sum = (weight.empty() && !ignore) ? sum / static_cast<double>(loss.size()) : sum / wsum;
  } else if (reduction != "sum") {
    fail(ErrorCode::kInvalidModel, "{}: unknown reduction '{}'", n.describe(), reduction);
  }
  return Tensor::scalar<double>(sum).cast(out_type);
}

void nll_loss_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  ctx.set_output(0, nll(ctx, double_values(x), x.shape(), x.dtype()));
}

void softmax_cross_entropy_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  QTOOL_CHECK(x.rank() >= 2, ErrorCode::kInvalidModel, "{} needs rank >= 2",
              ctx.node().describe());
  std::vector<double> v = double_values(x);
  const int64_t N = x.dim(0), C = x.dim(1);
  const int64_t D = N * C == 0 ? 0 : x.numel() / (N * C);
  // log_softmax over axis 1, max-shifted for stability.
  for (int64_t i = 0; i < N; ++i) {
    for (int64_t d = 0; d < D; ++d) {
      double mx = -INFINITY;
      for (int64_t c = 0; c < C; ++c) mx = std::max(mx, v[(i * C + c) * D + d]);
      double s = 0.0;
      for (int64_t c = 0; c < C; ++c) s += std::exp(v[(i * C + c) * D + d] - mx);
      const double lse = mx + std::log(s);
      for (int64_t c = 0; c < C; ++c) v[(i * C + c) * D + d] -= lse;
    }
  }
  ctx.set_output(0, nll(ctx, v, x.shape(), x.dtype()));
  if (ctx.wants_output(1)) ctx.set_output(1, Tensor::from_vector<double>(x.shape(), v).cast(x.dtype()));
}

}  // namespace

void register_loss_kernels(KernelRegistry& r) {
  r.add("", "NegativeLogLikelihoodLoss", 12, nll_loss_kernel);
  r.add("", "SoftmaxCrossEntropyLoss", 12, softmax_cross_entropy_kernel);
}

}  // namespace qtool::runtime::kernels
