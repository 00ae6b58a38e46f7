// Private helpers of the NN gradient families (linear, conv, pool, reduce): errors that name the
// node, and float32 access to forward values.
#pragma once

#include <utility>

#include "qtool/core/error.h"
#include "qtool/runtime/autodiff.h"

namespace qtool::runtime::grads {

/// Throws kInvalidModel "<node>: <message>" (the wording of nn::bad_node for kernels).
template <typename... Args>
[[noreturn]] void bad_grad_node(const GradContext& ctx, fmt::format_string<Args...> f, Args&&... args) {
  fail(ErrorCode::kInvalidModel, "{}: {}", ctx.node().describe(), fmt::format(f, std::forward<Args>(args)...));
}

/// `t` as float32: shared storage when it already is, else a converted copy (the forward
/// kernels compute in float32 whatever the model stores, so the gradient does too).
inline Tensor float_value(const Tensor& t) { return t.dtype() == DataType::kFloat ? t : t.to_float(); }

}  // namespace qtool::runtime::grads
