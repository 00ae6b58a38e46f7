// AWQ + GPTQ: AWQ's channel scales folded first (awq.cc), then GPTQ on the rescaled weights with
// the Hessian of the rescaled input (gptq.cc).
#include "../lowbit_internal.h"
#include "qtool/quant/weight_algorithms.h"

namespace qtool::quant {

void register_awq_gptq(std::vector<WeightAlgorithmInfo>& algorithms) {
  algorithms.push_back({WeightAlgorithm::kAwqGptq, "awq+gptq", "AWQ scales, then GPTQ", true, true, true,
                        detail::quantize_gptq_layer});
}

}  // namespace qtool::quant
