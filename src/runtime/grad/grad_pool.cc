// Gradients: pool family (see grads.h).
#include "grads.h"

namespace qtool::runtime::grads {

void register_pool_gradients(GradRegistry& r) { (void)r; }

}  // namespace qtool::runtime::grads
