// Gradients: elementwise family (see grads.h).
#include "grads.h"

namespace qtool::runtime::grads {

void register_elementwise_gradients(GradRegistry& r) { (void)r; }

}  // namespace qtool::runtime::grads
