// fold_batchnorm: folds an inference BatchNormalization into the Conv or Gemm that feeds it.
//
// Given:   y = Conv(x, W[, b])  (or Gemm(x, B[, C]))  and  z = BatchNormalization(y, γ, β, μ, σ², ε)
//          with W/b/γ/β/μ/σ² float32 initializers, y read only by the BatchNormalization, the
//          training outputs (running mean/var, saved stats) unused, and spatial = 1 (opset < 9).
// Execute: with f_c = γ_c / sqrt(σ²_c + ε) per output channel c,
//            W'_c = W_c · f_c                       (Conv: W row c along axis 0;
//                                                    Gemm: column c of B, row c when transB = 1)
//            b'_c = (b_c − μ_c) · f_c + β_c          (b_c = 0 when absent; Gemm: b = beta·C, then beta := 1)
//          the Conv/Gemm gets W' and b', consumers of z read the Conv/Gemm output.
// Result:  the BatchNormalization node is gone; z equals the new output up to float rounding.
// Gemm requires alpha = 1 folded into B (any alpha is multiplied in) and C absent, scalar or [N].
// Weights shared with another node are copied, never changed under the other node.
// Recurses into subgraphs.
#pragma once

#include "qtool/passes/pass.h"

namespace qtool::passes {

/// Returns the number of BatchNormalization nodes folded.
size_t fold_batchnorm(ir::Model& model, const PassOptions& options = {});

}  // namespace qtool::passes
