// The one list of gradient families.
#include "grads.h"

namespace qtool::runtime {

void register_all_gradients(GradRegistry& r) {
  grads::register_elementwise_gradients(r);
  grads::register_binary_gradients(r);
  grads::register_shape_gradients(r);
  grads::register_linear_gradients(r);
  grads::register_conv_gradients(r);
  grads::register_pool_gradients(r);
  grads::register_reduce_gradients(r);
}

}  // namespace qtool::runtime
