// Gradients: reduce family (see grads.h).
#include "grads.h"

namespace qtool::runtime::grads {

void register_reduce_gradients(GradRegistry& r) { (void)r; }

}  // namespace qtool::runtime::grads
