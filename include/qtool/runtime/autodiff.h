// Reverse-mode differentiation of an ir::Model (float32), for the quantizers that tune weights,
// scales and biases by gradient descent on calibration data (quant/tune.h).
//
// Given: a model, the values to differentiate with respect to (`wrt`: initializers or graph
//   inputs) and the values a loss is computed on (`seeds`: graph outputs or any intermediate).
// Execute: forward() runs every node the seeds depend on with the executor's kernels and keeps
//   the inputs and outputs of the nodes on a gradient path (a node is on the path when one of
//   its float outputs depends on a `wrt` value and a seed depends on that output); backward()
//   walks those nodes in reverse topological order and calls each one's gradient function, which
//   turns dL/d(outputs) into dL/d(inputs), summing the contributions of every reader of a value.
// Result: dL/d(wrt) for the seed gradients the caller computed from its loss.
//
// Gradient functions are registered per op like kernels (GradRegistry, register_all_gradients,
// one list in src/runtime/grad/registry.cc). An op on a gradient path without one is refused at
// construction with kUnsupported naming the node. Integer and boolean values (shapes, indices,
// masks) carry no gradient. Nodes with subgraphs (If/Loop/Scan) are refused on a gradient path.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "qtool/ir/graph.h"
#include "qtool/runtime/kernel.h"

namespace qtool::runtime {

/// What a gradient function sees: the node, its forward inputs and outputs, dL/d(outputs), and
/// where dL/d(inputs) go.
class GradContext {
 public:
  GradContext(const ir::Node& node, int64_t opset, std::vector<const Tensor*> inputs,
              std::vector<const Tensor*> outputs, std::vector<const Tensor*> output_grads, std::vector<char> wants,
              std::vector<Tensor>* input_grads, ThreadPool* pool)
      : node_(node), opset_(opset), inputs_(std::move(inputs)), outputs_(std::move(outputs)),
        output_grads_(std::move(output_grads)), wants_(std::move(wants)), input_grads_(input_grads), pool_(pool) {}

  const ir::Node& node() const { return node_; }
  int64_t opset() const { return opset_; }
  size_t num_inputs() const { return inputs_.size(); }
  size_t num_outputs() const { return outputs_.size(); }
  /// False for omitted optional inputs.
  bool has_input(size_t i) const { return i < inputs_.size() && inputs_[i] && inputs_[i]->defined(); }
  /// Forward value of input i; throws kInvalidModel naming the node when it is absent.
  const Tensor& input(size_t i) const;
  /// Forward value of output i (kept by the tape).
  const Tensor& output(size_t i) const;
  /// True when some seed depends on output i (its gradient is defined).
  bool has_output_grad(size_t i) const {
    return i < output_grads_.size() && output_grads_[i] && output_grads_[i]->defined();
  }
  /// dL/d(output i), float32, the output's shape. Throws kInternal when !has_output_grad(i).
  const Tensor& output_grad(size_t i) const;
  /// True when dL/d(input i) is needed (the input depends on a `wrt` value). A gradient
  /// function may skip computing inputs it is not asked for.
  bool wants_input_grad(size_t i) const { return i < wants_.size() && wants_[i]; }
  /// Sets dL/d(input i): float32 and exactly the input's shape (reduce broadcasts first).
  /// Ignored when !wants_input_grad(i). Throws kInternal on a shape mismatch.
  void set_input_grad(size_t i, Tensor g);
  ThreadPool& pool() const { return *pool_; }

 private:
  const ir::Node& node_;
  int64_t opset_;
  std::vector<const Tensor*> inputs_, outputs_, output_grads_;
  std::vector<char> wants_;
  std::vector<Tensor>* input_grads_;
  ThreadPool* pool_;
};

using GradFn = void (*)(GradContext&);

/// Gradient functions by (domain, op type), each from the first opset whose semantics it covers.
class GradRegistry {
 public:
  void add(std::string_view domain, std::string_view op_type, int since_version, GradFn fn);
  /// The function with the greatest since_version <= opset, or nullptr.
  GradFn find(std::string_view domain, std::string_view op_type, int64_t opset) const;
  /// "domain:op" keys of every op with a gradient.
  std::vector<std::string> ops() const;
  /// The process-wide registry, built once by register_all_gradients().
  static const GradRegistry& global();

 private:
  std::unordered_map<std::string, std::vector<std::pair<int, GradFn>>> fns_;
};

/// The one list of gradient families (src/runtime/grad/registry.cc).
void register_all_gradients(GradRegistry& r);

struct AutodiffOptions {
  int threads = 1;  ///< intra-op threads for forward kernels and gradient functions
};

/// A forward/backward tape over a model. Not thread-safe; the model must outlive it and must not
/// be edited while it exists (set_value() swaps initializer values without touching the model).
class Autodiff {
 public:
  /// Plans the tape. `wrt`: float initializers or graph inputs; `seeds`: values of the main graph
  /// (empty = the graph outputs). Throws kUnsupported naming the first node on a gradient path
  /// that has no gradient function (or has subgraphs), kConfig when a seed does not depend on
  /// any `wrt` value.
  Autodiff(const ir::Model& model, std::vector<const ir::Value*> wrt, std::vector<const ir::Value*> seeds = {},
           AutodiffOptions options = {});
  ~Autodiff();
  Autodiff(const Autodiff&) = delete;
  Autodiff& operator=(const Autodiff&) = delete;

  /// Uses `t` instead of initializer `v`'s stored value in later forward() calls (e.g. weights
  /// fake-quantized from latent parameters). `t` must have the initializer's dtype and shape.
  void set_value(const ir::Value* v, Tensor t);
  /// Runs the graph on `inputs` (graph input name -> tensor; shapes are not checked against the
  /// declared ones, so batches may differ) and returns the seeds' values, in order.
  std::vector<Tensor> forward(const std::map<std::string, Tensor>& inputs);
  /// Given dL/d(seed) for each seed of the last forward() (undefined = no loss on it), returns
  /// dL/d(wrt) in order (zeros for a value no seed depends on). The tape is kept: backward may be
  /// called again with other seed gradients.
  std::vector<Tensor> backward(const std::vector<Tensor>& seed_grads);

  /// Nodes on a gradient path, in topological order (for tests and messages).
  std::vector<const ir::Node*> grad_nodes() const;
  /// Bytes held by the tape after the last forward().
  size_t tape_bytes() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// dL/dx for x of `shape` from the gradient `g` of a broadcast result (numpy rules): sums g over
/// the broadcast dimensions. Returns g itself when the shapes are equal.
Tensor reduce_to_shape(const Tensor& g, const Shape& shape);

}  // namespace qtool::runtime
