// Kernel interface. Each op family registers its kernels in its own file with a
// register_*_kernels(KernelRegistry&) function; register_all_kernels() is the one list.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "qtool/ir/graph.h"

namespace qtool::runtime {

/// A fixed-size pool for intra-op parallelism.
class ThreadPool {
 public:
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;
  int threads() const { return threads_; }
  /// Calls fn(begin, end) over [0, n) in chunks of at least `grain`, on up to threads() threads,
  /// and returns when all chunks are done. Runs inline when n is small or threads() == 1.
  void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

 private:
  struct Impl;
  int threads_;
  Impl* impl_ = nullptr;
};

/// Row-major C[M,N] = alpha·op(A)[M,K]·op(B)[K,N] + beta·C (beta 0 overwrites C) with the
/// executor's float GEMM (the widest kernels this CPU has), on `pool` when given: for callers
/// outside the executor, such as GPTQ's input Hessians.
void gemm_f32(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
              const float* b, int64_t ldb, float beta, float* c, int64_t ldc, ThreadPool* pool = nullptr);

/// Runs subgraphs (If/Loop/Scan bodies) on behalf of a kernel; implemented by the executor.
class SubgraphRunner {
 public:
  virtual ~SubgraphRunner() = default;
  /// Binds `inputs` to g's inputs in order, runs it (outer-scope values visible) and returns its outputs.
  virtual std::vector<Tensor> run_subgraph(const ir::Graph& g, const std::vector<Tensor>& inputs) = 0;
};

/// An element-wise activation that the executor fused into the node producing its input (Conv):
/// the kernel applies it to its output while the data is in cache, and the executor then skips
/// the activation node (planned only when the activation is the output's only reader, the output
/// is no graph output and no observer is attached). alpha/beta: Clip's min/max, LeakyRelu's alpha,
/// HardSigmoid's alpha/beta (y = max(0, min(1, alpha*x + beta))).
struct FusedActivation {
  enum class Kind { kNone, kRelu, kClip, kLeakyRelu, kHardSigmoid };
  Kind kind = Kind::kNone;
  float alpha = 0.0f, beta = 0.0f;
  /// Applies the activation to v[0, n) in place.
  void apply(float* v, int64_t n) const;
};

/// What a kernel sees: its node, inputs and output slots.
class KernelContext {
 public:
  KernelContext(const ir::Node& node, int64_t opset, std::vector<const Tensor*> inputs, std::vector<Tensor>* outputs,
                ThreadPool* pool, SubgraphRunner* runner)
      : node_(node), opset_(opset), inputs_(std::move(inputs)), outputs_(outputs), pool_(pool), runner_(runner) {}

  const ir::Node& node() const { return node_; }
  /// Opset version imported for the node's domain.
  int64_t opset() const { return opset_; }
  size_t num_inputs() const { return inputs_.size(); }
  /// False for omitted optional inputs.
  bool has_input(size_t i) const { return i < inputs_.size() && inputs_[i] != nullptr && inputs_[i]->defined(); }
  /// Throws kInvalidModel naming the node if input i is missing.
  const Tensor& input(size_t i) const;
  size_t num_outputs() const { return outputs_->size(); }
  /// False for omitted optional outputs (the kernel may skip computing them).
  bool wants_output(size_t i) const { return i < node_.outputs().size() && node_.outputs()[i] != nullptr; }
  void set_output(size_t i, Tensor t);
  ThreadPool& pool() const { return *pool_; }
  SubgraphRunner& subgraphs() const { return *runner_; }

  /// True if input i's storage dies after this node and nothing else shares it, so a kernel may
  /// take it (take_input) and write its output in place (element-wise ops: out[k] = f(in[k])).
  bool can_reuse_input(size_t i) const { return i < reusable_.size() && reusable_[i] != nullptr && has_input(i); }
  /// Moves input i out of the executor (only when can_reuse_input(i)); afterwards has_input(i) is
  /// false, so read everything needed from the returned tensor. Its buffer is uniquely owned, so
  /// mutable_raw() does not copy.
  Tensor take_input(size_t i);
  /// Set by the executor before the kernel runs: per input, its slot if reusable, else nullptr.
  void set_reusable_inputs(std::vector<Tensor*> slots) { reusable_ = std::move(slots); }
  /// The activation to apply to output 0 (kNone unless the executor fused one into this node;
  /// only kernels that handle it, Conv, are ever given one).
  const FusedActivation& fused_activation() const { return fused_; }
  void set_fused_activation(const FusedActivation& act) { fused_ = act; }

 private:
  const ir::Node& node_;
  int64_t opset_;
  std::vector<const Tensor*> inputs_;
  std::vector<Tensor>* outputs_;
  ThreadPool* pool_;
  SubgraphRunner* runner_;
  std::vector<Tensor*> reusable_;
  FusedActivation fused_;
};

using KernelFn = void (*)(KernelContext&);

/// Kernels by (domain, op type), each with the first opset version whose semantics it implements.
class KernelRegistry {
 public:
  /// Registers fn for `op_type` in `domain` ("" = ai.onnx) from opset `since_version` on.
  void add(std::string_view domain, std::string_view op_type, int since_version, KernelFn fn);
  /// The kernel with the greatest since_version <= opset, or nullptr.
  KernelFn find(std::string_view domain, std::string_view op_type, int64_t opset) const;
  /// "domain:op" keys of every registered op (for --help, inspect and the conformance allowlist).
  std::vector<std::string> ops() const;
  /// The process-wide registry, built once by register_all_kernels().
  static const KernelRegistry& global();

 private:
  std::unordered_map<std::string, std::vector<std::pair<int, KernelFn>>> kernels_;
};

/// The one list of kernel families (src/runtime/kernels/registry.cc).
void register_all_kernels(KernelRegistry& r);

}  // namespace qtool::runtime
