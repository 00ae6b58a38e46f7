// Kernel families (private to the runtime). Each family lives in its own file and registers
// its kernels with one register_<family>_kernels() function, called from the one list in
// registry.cc. Adding a family: one new file, one line here, one line in registry.cc.
#pragma once

#include "qtool/runtime/kernel.h"

namespace qtool::runtime::kernels {

// ---- rtcore families ----
void register_elementwise_kernels(KernelRegistry& r);  ///< unary math, activations, Clip, PRelu
void register_binary_kernels(KernelRegistry& r);       ///< broadcasting arithmetic, comparison, logic, Where
void register_shape_kernels(KernelRegistry& r);        ///< Reshape, Transpose, Concat, Slice, Pad, ...
void register_tensor_kernels(KernelRegistry& r);       ///< Cast, Gather*, Scatter*, TopK, Constant, Identity, ...
void register_reduce_kernels(KernelRegistry& r);       ///< Reduce*, ArgMax/ArgMin
void register_control_flow_kernels(KernelRegistry& r); ///< If, Loop, Scan
void register_loss_kernels(KernelRegistry& r);         ///< NegativeLogLikelihoodLoss, SoftmaxCrossEntropyLoss
void register_misc_kernels(KernelRegistry& r);         ///< Einsum, Unique, window functions, MVN

// ---- rtnn families ----
void register_conv_kernels(KernelRegistry& r);
void register_gemm_kernels(KernelRegistry& r);
void register_norm_kernels(KernelRegistry& r);
void register_pool_kernels(KernelRegistry& r);
void register_quantized_kernels(KernelRegistry& r);
void register_resize_kernels(KernelRegistry& r);
void register_rnn_kernels(KernelRegistry& r);
void register_softmax_kernels(KernelRegistry& r);

}  // namespace qtool::runtime::kernels
