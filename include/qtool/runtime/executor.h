// The reference CPU executor: runs an ir::Model in-process, float32 compute (Eigen for the
// heavy math), frees intermediates after their last use, and streams every produced value
// to an Observer (calibration) without copying.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "qtool/ir/graph.h"

namespace qtool::runtime {

/// Receives every value a node of the main graph produces, in execution order, exactly once per
/// run(). Values computed inside If/Loop/Scan bodies are reported only to an observer that asks
/// for them (observes_subgraphs(): each time the body runs, so a Loop body's values once per
/// iteration); the control-flow node's own outputs always are. The tensor reference is only valid
/// during the call; observers must not keep it (copying the Tensor object, which shares storage,
/// is fine). A graph whose values are observed runs unfused (a Conv's output before its Relu).
class Observer {
 public:
  virtual ~Observer() = default;
  virtual void on_value(const ir::Value& value, const Tensor& tensor) = 0;
  /// Whether on_value() and replace() also see the values of nodes inside If/Loop/Scan bodies
  /// (calibration of body activations, the probe's fake quantization there); provide() stays
  /// main-graph only. Default: no.
  virtual bool observes_subgraphs() const { return false; }
  /// Optionally replaces a main-graph value (or a body's, with observes_subgraphs()) before any
  /// node reads it (and before on_value sees it): returns true with `out` set. Called for the
  /// graph's runtime inputs too. The sensitivity probe fake-quantizes tensors this way. Default:
  /// never.
  virtual bool replace(const ir::Value& value, const Tensor& tensor, Tensor& out) {
    (void)value, (void)tensor, (void)out;
    return false;
  }
  /// Optionally supplies the outputs of a main-graph node instead of running it: returns true
  /// with `outputs` (one per node output, defined where the output is used) set. The values then
  /// go through replace() and on_value() as computed ones do. The sensitivity probe feeds the FP32
  /// values of every node upstream of the tensor it quantizes this way, so a trial costs only the
  /// part of the model after that tensor. Default: never.
  virtual bool provide(const ir::Node& node, std::vector<Tensor>& outputs) {
    (void)node, (void)outputs;
    return false;
  }
};

struct ExecutorOptions {
  int threads = 1;  ///< intra-op threads (1 = run on the caller's thread only)
  /// Compute the main graph's nodes whose inputs are all constants (initializers, or outputs of such
  /// nodes) once, on the first run, and reuse their outputs (ONNX Runtime folds them at load): the
  /// Cast / Gather / CumSum expansions of --format cast, fp4, palettes and pruned weights. Not for
  /// callers that change initializers between runs of one executor. Quantize/Dequantize and random
  /// ops, and nodes with subgraphs, are never folded.
  bool fold_constants = false;
};

/// Not thread-safe: run() keeps per-run state, so use one Executor per thread (they may share
/// the Model). Kernels are resolved once, at construction, for the opset of each node's domain.
class Executor {
 public:
  /// Prepares `model` (which must outlive the executor): resolves a kernel for every node and
  /// plans value lifetimes. Throws kUnsupported naming the node, its op type and opset if any
  /// op has no kernel.
  explicit Executor(const ir::Model& model, ExecutorOptions options = {});
  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  /// Runs the main graph. `inputs` maps graph input names to tensors; inputs that are also
  /// initializers may be omitted. Returns the graph outputs in order. Errors name the node.
  std::vector<Tensor> run(const std::map<std::string, Tensor>& inputs, Observer* observer = nullptr);

  /// Names of the graph outputs, in order.
  std::vector<std::string> output_names() const;
  /// Peak bytes of intermediate tensors alive at once during the last run().
  size_t peak_bytes() const;
  const ir::Model& model() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace qtool::runtime
