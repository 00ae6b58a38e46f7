// Softmax, LogSoftmax, Hardmax (opset < 13: the input is coerced to 2-D at `axis`; 13+: one
// axis) and Gelu (opset 20, exact erf or tanh approximation).
#include <algorithm>
#include <cmath>

// GCC 12 false positive inside its AVX-512 intrinsics when Eigen is built with -march=native.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <Eigen/Core>
#include <vector>

#include "kernels.h"
#include "nn_util.h"

namespace qtool::runtime {
namespace {

enum class SoftKind { kSoftmax, kLogSoftmax, kHardmax };

/// Splits the shape into [outer, len, inner] for the node's axis semantics.
void softmax_layout(const KernelContext& ctx, const Shape& s, int64_t* outer, int64_t* len, int64_t* inner) {
  const int64_t rank = static_cast<int64_t>(s.size());
  const bool per_axis = ctx.opset() >= 13;
  int64_t axis = ctx.node().attr_int("axis", per_axis ? -1 : 1);
  if (rank == 0) {
    *outer = *len = *inner = 1;
    return;
  }
  axis = nn::normalize_axis(ctx, axis, rank);
  *outer = 1;
  for (int64_t i = 0; i < axis; ++i) *outer *= s[i];
  if (per_axis) {
    *len = s[axis];
    *inner = 1;
    for (int64_t i = axis + 1; i < rank; ++i) *inner *= s[i];
  } else {
    *len = 1;
    for (int64_t i = axis; i < rank; ++i) *len *= s[i];
    *inner = 1;
  }
}

void soft_kernel(KernelContext& ctx, SoftKind kind) {
  Tensor x = nn::float_input(ctx, 0);
  int64_t outer, len, inner;
  softmax_layout(ctx, x.shape(), &outer, &len, &inner);
  Tensor y = Tensor::empty(DataType::kFloat, x.shape());
  const float* xp = x.data<float>();
  float* yp = y.mutable_data<float>();
  const int64_t slices = outer * inner;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(len, 1));
  ctx.pool().parallel_for(slices, grain, [&](int64_t s0, int64_t s1) {
    // Strided slices (axis not last) are gathered into a contiguous row so that one vectorized
    // path (Eigen's packet exp, which also maps -inf to ~0 without glibc's slow underflow path)
    // serves every layout.
    thread_local std::vector<float> row;
    row.resize(static_cast<size_t>(len));
    for (int64_t s = s0; s < s1; ++s) {
      const int64_t o = s / inner, in = s % inner;
      const float* src = xp + o * len * inner + in;
      float* dst = yp + o * len * inner + in;
      float* r = inner == 1 ? dst : row.data();
      Eigen::Map<Eigen::ArrayXf> a(r, len);
      if (inner == 1) {
        a = Eigen::Map<const Eigen::ArrayXf>(src, len);
      } else {
        for (int64_t i = 0; i < len; ++i) r[i] = src[i * inner];
      }
      if (kind == SoftKind::kHardmax) {
        Eigen::Index arg = 0;
        a.maxCoeff(&arg);  // first maximum, like ONNX
        a.setZero();
        a[arg] = 1.0f;
      } else if (kind == SoftKind::kSoftmax && nn::softmax_row_avx2(r, len)) {
        // Done with AVX2 (the same rules as below, eight lanes at a time).
      } else {
        float mx = a.maxCoeff();
        if (std::isinf(mx) && mx < 0) mx = 0.0f;  // all -inf: avoid inf - inf
        if (kind == SoftKind::kSoftmax) {
          // Entries more than 87 below the maximum (masked attention scores, -inf) would come out
          // of exp as denormals, on which every following operation is very slow (it made Softmax
          // 60% of stories260K); they are < 1.7e-38 of the maximum's weight, so write 0.
          a = (a - mx).max(-87.0f);  // exp(-87) = 1.6e-38 is still a normal float
          a = (a <= -87.0f).select(0.0f, a.exp());
          const float sum = a.sum();
          // Only an all -inf row sums to 0 (the maximum contributes exp(0) = 1 otherwise): it
          // stays uniform, as when exp(-inf) came out as equal denormals.
          if (sum > 0.0f) a *= 1.0f / sum;
          else a.setConstant(1.0f / static_cast<float>(len));
        } else {
          const float lse = std::log((a - mx).exp().sum());
          a = a - (mx + lse);
        }
      }
      if (inner != 1) {
        for (int64_t i = 0; i < len; ++i) dst[i * inner] = r[i];
      }
    }
  });
  ctx.set_output(0, nn::to_dtype_like(std::move(y), ctx.input(0).dtype()));
}

void softmax_kernel(KernelContext& ctx) { soft_kernel(ctx, SoftKind::kSoftmax); }
void log_softmax_kernel(KernelContext& ctx) { soft_kernel(ctx, SoftKind::kLogSoftmax); }
void hardmax_kernel(KernelContext& ctx) { soft_kernel(ctx, SoftKind::kHardmax); }

/// Gelu (20): 0.5 x (1 + erf(x / sqrt 2)), or with approximate="tanh"
/// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
void gelu_kernel(KernelContext& ctx) {
  Tensor x = nn::float_input(ctx, 0);
  const std::string approx = ctx.node().attr_string("approximate", "none");
  if (approx != "none" && approx != "tanh") nn::bad_node(ctx, "unknown approximate '{}'", approx);
  const bool use_tanh = approx == "tanh";
  Tensor y = Tensor::empty(DataType::kFloat, x.shape());
  const float* xp = x.data<float>();
  float* yp = y.mutable_data<float>();
  ctx.pool().parallel_for(x.numel(), 16384, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float v = xp[i];
      if (use_tanh) {
        yp[i] = 0.5f * v * (1.0f + std::tanh(0.7978845608028654f * (v + 0.044715f * v * v * v)));
      } else {
        yp[i] = 0.5f * v * (1.0f + std::erf(v * 0.7071067811865476f));
      }
    }
  });
  ctx.set_output(0, nn::to_dtype_like(std::move(y), ctx.input(0).dtype()));
}

}  // namespace

/// Registers Softmax/LogSoftmax/Hardmax (1: 2-D coercion, 13: single axis) and Gelu (20).
void kernels::register_softmax_kernels(KernelRegistry& r) {
  r.add("", "Softmax", 1, softmax_kernel);
  r.add("", "LogSoftmax", 1, log_softmax_kernel);
  r.add("", "Hardmax", 1, hardmax_kernel);
  r.add("", "Gelu", 20, gelu_kernel);
}

}  // namespace qtool::runtime
