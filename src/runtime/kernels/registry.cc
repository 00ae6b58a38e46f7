// The one list of kernel families.
#include "kernels.h"

namespace qtool::runtime {

void register_all_kernels(KernelRegistry& r) {
  kernels::register_elementwise_kernels(r);
  kernels::register_binary_kernels(r);
  kernels::register_shape_kernels(r);
  kernels::register_tensor_kernels(r);
  kernels::register_reduce_kernels(r);
  kernels::register_control_flow_kernels(r);
  kernels::register_loss_kernels(r);
  kernels::register_misc_kernels(r);
  kernels::register_conv_kernels(r);
  kernels::register_gemm_kernels(r);
  kernels::register_norm_kernels(r);
  kernels::register_pool_kernels(r);
  kernels::register_quantized_kernels(r);
  kernels::register_resize_kernels(r);
  kernels::register_rnn_kernels(r);
  kernels::register_softmax_kernels(r);
}

}  // namespace qtool::runtime
