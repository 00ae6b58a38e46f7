// (being written)
#include "kernels.h"

namespace qtool::runtime::kernels {

void register_reduce_kernels(KernelRegistry&) {}

}  // namespace qtool::runtime::kernels
