// (being written)
#include "kernels.h"

namespace qtool::runtime::kernels {

void register_shape_kernels(KernelRegistry&) {}

}  // namespace qtool::runtime::kernels
