// (being written)
#include "kernels.h"

namespace qtool::runtime::kernels {

void register_control_flow_kernels(KernelRegistry&) {}

}  // namespace qtool::runtime::kernels
