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
}

}  // namespace qtool::runtime
