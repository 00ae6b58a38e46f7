// Gradient families (private to the runtime). Each family lives in its own file and registers its
// gradient functions with one register_<family>_gradients() function, called from the one list in
// registry.cc (the same shape as the kernel families in ../kernels/kernels.h).
#pragma once

#include "qtool/runtime/autodiff.h"

namespace qtool::runtime::grads {

void register_elementwise_gradients(GradRegistry& r);  ///< Relu, Clip, Sigmoid, Tanh, Sqrt, Pow, Neg, Exp, Log, Identity, Dropout, Cast, ...
void register_binary_gradients(GradRegistry& r);       ///< Add, Sub, Mul, Div (broadcasting), Where
void register_shape_gradients(GradRegistry& r);        ///< Reshape, Flatten, (Un)Squeeze, Transpose, Concat, Slice, Expand, Gather
void register_linear_gradients(GradRegistry& r);       ///< MatMul (batched), Gemm
void register_conv_gradients(GradRegistry& r);         ///< Conv (groups, depthwise, strides, pads, dilations)
void register_pool_gradients(GradRegistry& r);         ///< MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool
void register_reduce_gradients(GradRegistry& r);       ///< ReduceMean, ReduceSum, ReduceMax, ReduceMin, Softmax, LogSoftmax

}  // namespace qtool::runtime::grads
