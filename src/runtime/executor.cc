// The reference executor.
//
// Construction plans every graph (the main graph and every If/Loop/Scan body, recursively):
//   - nodes in topological order, each with its kernel resolved for the opset of its domain;
//   - every value a node of graph G reads is given a slot: (depth, index) where depth counts
//     how many scopes up the owning graph is (0 = G itself, 1 = the graph enclosing G, ...);
//   - a use count per slot of G: direct inputs of G's nodes plus the outer-scope values that a
//     node's subgraphs read (the If/Loop node is the user that keeps them alive).
// A run walks the plan with a chain of frames (one vector<Tensor> per active graph scope). After
// each node, the slots whose use count drops to zero are released, unless they are graph
// outputs, graph inputs or initializers. Current and peak intermediate bytes are counted per
// distinct buffer, so views (Reshape, Identity) are not counted twice.
#include "qtool/runtime/executor.h"

#include "qtool/core/interrupt.h"

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <map>
#include <mutex>
#include <unordered_map>
#include <unordered_set>

#include "qtool/runtime/kernel.h"

namespace qtool::runtime {

namespace {

/// Recycles the heap buffers of dead intermediates across runs (installed as the calling
/// thread's BufferSource during Executor::run). Without it every large intermediate goes back to
/// the OS when freed (glibc's mmap threshold) and is page-faulted and zeroed in again on every
/// run, which cost up to a third of a run on stories260K. Free blocks are kept per exact
/// 64-byte-rounded size (a model run repeatedly asks for the same sizes); a request may take a
/// free block up to 1/8 larger. A recycled buffer returns itself to the pool when its last
/// holder drops it, whenever that is: graph outputs handed to the caller are only recycled after
/// the caller releases them, and each buffer keeps the pool alive (shared_ptr), so a buffer may
/// outlive the Executor. Thread-safe (buffers may be released on any thread).
class BufferPool final : public BufferSource, public std::enable_shared_from_this<BufferPool> {
 public:
  /// Blocks smaller than this come from malloc directly (its small-block arenas are fast).
  static constexpr size_t kMinBytes = 16 * 1024;
  /// At most this many free bytes are cached; beyond it, released blocks are freed.
  static constexpr size_t kMaxCachedBytes = size_t{1} << 30;

  ~BufferPool() override {
    for (auto& [size, blocks] : free_)
      for (void* b : blocks) std::free(b);
  }

  std::shared_ptr<Buffer> allocate(size_t bytes) override {
    if (bytes < kMinBytes) return nullptr;
    const size_t rounded = (bytes + 63) / 64 * 64;
    void* block = nullptr;
    size_t capacity = rounded;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = free_.lower_bound(rounded);
      if (it != free_.end() && it->first <= rounded + rounded / 8) {
        capacity = it->first;
        block = it->second.back();
        it->second.pop_back();
        cached_bytes_ -= capacity;
        if (it->second.empty()) free_.erase(it);
      }
    }
    if (!block) {
      block = std::aligned_alloc(64, rounded);
      if (!block) throw std::bad_alloc();
    }
    return std::make_shared<PooledBuffer>(shared_from_this(), static_cast<uint8_t*>(block), bytes, capacity);
  }

 private:
  class PooledBuffer final : public Buffer {
   public:
    PooledBuffer(std::shared_ptr<BufferPool> pool, uint8_t* data, size_t size, size_t capacity)
        : pool_(std::move(pool)), data_(data), size_(size), capacity_(capacity) {}
    ~PooledBuffer() override { pool_->release(data_, capacity_); }
    PooledBuffer(const PooledBuffer&) = delete;
    PooledBuffer& operator=(const PooledBuffer&) = delete;
    const uint8_t* data() const override { return data_; }
    uint8_t* mutable_data() override { return data_; }
    size_t size() const override { return size_; }

   private:
    std::shared_ptr<BufferPool> pool_;
    uint8_t* data_;
    size_t size_, capacity_;
  };

  void release(void* block, size_t capacity) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (cached_bytes_ + capacity <= kMaxCachedBytes) {
        free_[capacity].push_back(block);
        cached_bytes_ += capacity;
        return;
      }
    }
    std::free(block);
  }

  std::mutex mutex_;
  std::map<size_t, std::vector<void*>> free_;
  size_t cached_bytes_ = 0;
};


/// Where a value lives at run time: `depth` frames up the scope chain, slot `index`.
struct SlotRef {
  int depth = 0;
  int index = -1;
};

struct GraphPlan;

struct NodeStep {
  const ir::Node* node = nullptr;
  KernelFn kernel = nullptr;
  int64_t opset = 0;
  std::vector<SlotRef> inputs;   // -1 index = omitted optional input
  std::vector<int> outputs;      // slot in this frame, -1 = omitted
  std::vector<int> release;      // local slots whose last use is this node
  std::vector<char> reusable;    // per input: its slot dies here (kernels may write in place)
  std::string context;           // "in node 'X' (Op, opset N)"
  // Conv + activation fusion (used only when no observer watches the top-level graph):
  FusedActivation fused;         // on the Conv: the activation its kernel applies
  int fused_source = -1;         // on the activation: the Conv output slot it just forwards
  bool constant = false;         // every input a constant: computed once when folding (fold_constants)
};

struct GraphPlan {
  const ir::Graph* graph = nullptr;
  int num_slots = 0;
  std::unordered_map<const ir::Value*, int> slot_of;
  std::vector<std::pair<int, const Tensor*>> constants;  // initializers
  std::vector<int> input_slots;                          // graph inputs, in order
  std::vector<SlotRef> output_refs;                      // graph outputs, in order
  std::vector<NodeStep> steps;
  std::vector<int> produced;  // slots written by nodes (freed when a body frame ends)
  // fold_constants (main graph): the outputs of constant steps, kept from the first complete run.
  std::vector<std::pair<int, Tensor>> folded;
  bool folded_ready = false;
};

/// Node name for messages: its name, else its first output's name.
std::string node_label(const ir::Node& n) {
  if (!n.name().empty()) return n.name();
  for (const ir::Value* v : n.outputs()) {
    if (v) return v->name();
  }
  return "<unnamed>";
}

/// Every value read by the nodes of `g` and of its nested subgraphs that `g` does not own
/// (and none of its nested graphs own): the outer-scope reads of g.
void collect_outer_reads(const ir::Graph& g, std::unordered_set<const ir::Graph*>& inner,
                         std::vector<const ir::Value*>& out) {
  inner.insert(&g);
  for (const auto& n : g.nodes()) {
    for (const ir::Graph* sg : n->subgraphs()) collect_outer_reads(*sg, inner, out);
  }
  for (const auto& n : g.nodes()) {
    for (const ir::Value* v : n->inputs()) {
      if (v && !inner.count(v->owner())) out.push_back(v);
    }
  }
  for (const ir::Value* v : g.outputs()) {
    if (v && !inner.count(v->owner())) out.push_back(v);
  }
}

}  // namespace

struct Executor::Impl : public SubgraphRunner {
  const ir::Model& model;
  ExecutorOptions options;
  ThreadPool pool;
  std::unordered_map<const ir::Graph*, std::unique_ptr<GraphPlan>> plans;

  // Run state.
  struct Frame {
    const GraphPlan* plan;
    std::vector<Tensor> slots;
    Frame* parent;
  };
  Frame* current = nullptr;
  Observer* observer = nullptr;
  /// Live buffers: reference count and size (kept here, because a kernel that took an input may
  /// already have released the buffer when its share is dropped).
  struct LiveBuffer {
    int count = 0;
    size_t size = 0;
  };
  std::unordered_map<const Buffer*, LiveBuffer> live_buffers;
  size_t current_bytes = 0, peak = 0;
  std::shared_ptr<BufferPool> buffer_pool = std::make_shared<BufferPool>();

  Impl(const ir::Model& m, ExecutorOptions o) : model(m), options(o), pool(o.threads) {
    std::vector<const ir::Graph*> chain;
    plan_graph(*model.graph, chain);
  }

  int64_t opset_for(const std::string& domain) const {
    int64_t v = model.opset(domain);
    if (v == 0 && domain.empty()) v = 1;
    if (v == 0) v = 1;  // custom domains used without an import: treat as version 1
    return v;
  }

  void plan_graph(const ir::Graph& g, std::vector<const ir::Graph*>& chain) {
    auto owned = std::make_unique<GraphPlan>();
    GraphPlan* plan = owned.get();
    plan->graph = &g;
    chain.push_back(&g);
    auto local_slot = [plan](const ir::Value* v) {
      auto [it, inserted] = plan->slot_of.emplace(v, plan->num_slots);
      if (inserted) ++plan->num_slots;
      return it->second;
    };
    auto resolve = [&](const ir::Value* v, const ir::Node* reader) -> SlotRef {
      for (int d = 0; d < static_cast<int>(chain.size()); ++d) {
        const ir::Graph* owner = chain[chain.size() - 1 - d];
        if (v->owner() == owner) {
          if (d == 0) {
            auto it = plan->slot_of.find(v);
            if (it == plan->slot_of.end()) break;
            return {0, it->second};
          }
          const GraphPlan& outer = *plans.at(owner);
          auto it = outer.slot_of.find(v);
          if (it == outer.slot_of.end()) break;
          return {d, it->second};
        }
      }
      fail(ErrorCode::kInvalidModel, "{}reads '{}', which no node produces and is not an input or initializer in scope",
           reader ? "node " + reader->describe() + " " : std::string("graph output "), v->name());
    };

    for (const ir::Value* v : g.initializers()) {
      plan->constants.emplace_back(local_slot(v), v->initializer());
    }
    for (const ir::Value* v : g.inputs()) plan->input_slots.push_back(local_slot(v));

    const std::vector<ir::Node*> order = g.topo_order();
    // Slots for every node output first, so that outer reads from subgraphs resolve.
    for (const ir::Node* n : order) {
      for (const ir::Value* v : n->outputs()) {
        if (v) local_slot(v);
      }
    }
    plans[&g] = std::move(owned);
    GraphPlan& p = *plan;

    std::vector<int> last_use(p.num_slots, -1);
    for (const ir::Node* n : order) {
      NodeStep step;
      step.node = n;
      step.opset = opset_for(n->domain());
      step.kernel = KernelRegistry::global().find(n->domain(), n->op_type(), step.opset);
      step.context = fmt::format("in node '{}' ({}, opset {})", node_label(*n), n->op_type(), step.opset);
      if (!step.kernel) {
        fail(ErrorCode::kUnsupported, "no kernel for node '{}': op type '{}' in domain '{}' at opset {}",
             node_label(*n), n->op_type(), n->domain().empty() ? "ai.onnx" : n->domain(), step.opset);
      }
      const int step_index = static_cast<int>(p.steps.size());
      for (const ir::Value* v : n->inputs()) {
        if (!v) {
          step.inputs.push_back({0, -1});
          continue;
        }
        SlotRef r = resolve(v, n);
        step.inputs.push_back(r);
        if (r.depth == 0) last_use[r.index] = step_index;
      }
      // Plan the bodies; their outer reads of this graph's values keep those alive until here.
      for (const ir::Graph* sg : n->subgraphs()) {
        plan_graph(*sg, chain);
        std::unordered_set<const ir::Graph*> inner;
        std::vector<const ir::Value*> outer;
        collect_outer_reads(*sg, inner, outer);
        for (const ir::Value* v : outer) {
          if (v->owner() == &g) last_use[resolve(v, n).index] = step_index;
        }
      }
      for (const ir::Value* v : n->outputs()) {
        step.outputs.push_back(v ? p.slot_of.at(v) : -1);
        if (v) p.produced.push_back(p.slot_of.at(v));
      }
      p.steps.push_back(std::move(step));
    }
    for (const ir::Value* v : g.outputs()) p.output_refs.push_back(resolve(v, nullptr));

    // Constant steps (main graph, fold_constants): inputs all initializers or constant outputs.
    std::vector<char> is_const(p.num_slots, 0);
    if (options.fold_constants && chain.size() == 1) {
      for (const auto& c : p.constants) is_const[c.first] = 1;
      for (int s : p.input_slots) is_const[s] = 0;  // an initializer that is also an input can be fed
      static const std::unordered_set<std::string> kNever = {
          "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "RandomNormal", "RandomUniform",
          "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli", "Dropout"};
      for (NodeStep& step : p.steps) {
        const ir::Node& n = *step.node;
        bool c = n.domain().empty() && n.subgraphs().empty() && !kNever.count(n.op_type()) && !step.inputs.empty();
        for (const SlotRef& r : step.inputs) c = c && (r.index < 0 || (r.depth == 0 && is_const[r.index]));
        step.constant = c;
        if (c)
          for (int o : step.outputs)
            if (o >= 0) is_const[o] = 1;
      }
    }
    // Values never released: graph outputs, graph inputs, initializers and folded constants.
    std::vector<char> keep(p.num_slots, 0);
    for (const SlotRef& r : p.output_refs) {
      if (r.depth == 0) keep[r.index] = 1;
    }
    for (int s : p.input_slots) keep[s] = 1;
    for (const auto& c : p.constants) keep[c.first] = 1;
    for (const NodeStep& step : p.steps)
      if (step.constant)
        for (int o : step.outputs)
          if (o >= 0) keep[o] = 1;
    for (int s = 0; s < p.num_slots; ++s) {
      if (!keep[s] && last_use[s] >= 0) p.steps[last_use[s]].release.push_back(s);
    }
    // An input whose slot dies at this node, read once by it, may be taken by the kernel. Values
    // read by the node's subgraphs never die at the node itself before the bodies ran, but the
    // kernel could still be running a body that reads them, so nodes with subgraphs reuse nothing.
    for (NodeStep& step : p.steps) {
      step.reusable.assign(step.inputs.size(), 0);
      if (!step.node->subgraphs().empty()) continue;
      for (size_t i = 0; i < step.inputs.size(); ++i) {
        const SlotRef& r = step.inputs[i];
        if (r.depth != 0 || r.index < 0) continue;
        if (std::find(step.release.begin(), step.release.end(), r.index) == step.release.end()) continue;
        int reads = 0;
        for (const SlotRef& o : step.inputs) reads += (o.depth == 0 && o.index == r.index);
        step.reusable[i] = reads == 1;
      }
    }
    plan_fusion(p);
    // Outputs nobody reads are released right after their producer.
    for (size_t i = 0; i < p.steps.size(); ++i) {
      for (int s : p.steps[i].outputs) {
        if (s >= 0 && !keep[s] && last_use[s] < 0) p.steps[i].release.push_back(s);
      }
    }
    chain.pop_back();
  }

  /// Marks Conv -> Relu/Clip/LeakyRelu/HardSigmoid pairs where the activation is the float Conv
  /// output's only reader (same graph, input 0) and the output is no graph output: the Conv kernel
  /// then applies the activation in its epilogue and the activation step forwards the tensor.
  /// Clip's bounds must be attributes or initializers (known at plan time).
  static void plan_fusion(GraphPlan& p) {
    std::unordered_map<const ir::Node*, size_t> step_of;
    for (size_t i = 0; i < p.steps.size(); ++i) step_of[p.steps[i].node] = i;
    for (NodeStep& conv : p.steps) {
      const ir::Node& n = *conv.node;
      if (n.op_type() != "Conv" || !n.domain().empty() || n.outputs().size() != 1 || !n.outputs()[0]) continue;
      const ir::Value* y = n.outputs()[0];
      // Float (or undeclared: models without value_info) only; the kernel applies the activation
      // in float before casting back to X's type.
      const DataType yt = y->type().elem_type;
      if (y->is_graph_output() || y->uses().size() != 1 || (yt != DataType::kFloat && yt != DataType::kUndefined)) {
        continue;
      }
      const ir::Use& use = y->uses()[0];
      auto it = step_of.find(use.node);
      if (use.index != 0 || it == step_of.end()) continue;
      NodeStep& act_step = p.steps[it->second];
      const ir::Node& a = *use.node;
      if (!a.domain().empty() || a.outputs().size() != 1 || !a.outputs()[0] || act_step.outputs[0] < 0) continue;
      FusedActivation act;
      const std::string& op = a.op_type();
      if (op == "Relu") {
        act.kind = FusedActivation::Kind::kRelu;
      } else if (op == "LeakyRelu") {
        act = {FusedActivation::Kind::kLeakyRelu, a.attr_float("alpha", 0.01f), 0.0f};
      } else if (op == "HardSigmoid") {
        act = {FusedActivation::Kind::kHardSigmoid, a.attr_float("alpha", 0.2f), a.attr_float("beta", 0.5f)};
      } else if (op == "Clip") {
        // Same bounds as the Clip kernel: before opset 11 an absent attribute is unbounded (+-inf),
        // from 11 on an absent input is the float range.
        act = {FusedActivation::Kind::kClip, std::numeric_limits<float>::lowest(), std::numeric_limits<float>::max()};
        if (act_step.opset < 11) {
          act.alpha = a.attr_float("min", -std::numeric_limits<float>::infinity());
          act.beta = a.attr_float("max", std::numeric_limits<float>::infinity());
        } else {
          bool ok = true;
          for (size_t k = 1; k < a.inputs().size() && k < 3; ++k) {
            const ir::Value* b = a.inputs()[k];
            if (!b) continue;
            const Tensor* t = b->initializer();
            if (t && t->numel() == 0) continue;
            if (!t || t->numel() != 1 || t->dtype() != DataType::kFloat) {
              ok = false;
              break;
            }
            (k == 1 ? act.alpha : act.beta) = t->data<float>()[0];
          }
          if (!ok) continue;
        }
      } else {
        continue;
      }
      conv.fused = act;
      act_step.fused_source = p.slot_of.at(y);
    }
  }

  // ---- memory accounting ----
  void track_alloc(const Tensor& t) {
    if (!t.buffer()) return;
    LiveBuffer& lb = live_buffers[t.buffer().get()];
    if (lb.count++ == 0) {
      lb.size = t.buffer()->size();
      current_bytes += t.buffer()->size();
      peak = std::max(peak, current_bytes);
    }
  }
  void track_free(const Tensor& t) {
    if (t.buffer()) track_free_buffer(t.buffer().get());
  }
  void track_free_buffer(const Buffer* b) {
    auto it = live_buffers.find(b);
    if (it == live_buffers.end()) return;
    if (--it->second.count == 0) {
      current_bytes -= it->second.size;
      live_buffers.erase(it);
    }
  }

  const Tensor* lookup(Frame& f, const SlotRef& r) const {
    Frame* fr = &f;
    for (int d = 0; d < r.depth; ++d) fr = fr->parent;
    return &fr->slots[r.index];
  }

  /// Runs the plan's nodes in `frame`.
  void run_frame(Frame& frame) {
    Frame* saved = current;
    current = &frame;
    const GraphPlan& p = *frame.plan;
    const bool top = frame.parent == nullptr;
    std::vector<const Tensor*> ins;
    std::vector<Tensor> outs;
    std::vector<Tensor*> reuse;
    std::vector<const Buffer*> reuse_buffers;
    // Observed values are the unfused ones: a Conv's output before the activation it would apply.
    const bool watch = observer && (top || observer->observes_subgraphs());
    const bool fuse = !watch;
    for (const NodeStep& step : p.steps) {
      if (step.constant && p.folded_ready) {  // computed once: its outputs were preloaded
        if (top && observer)
          for (size_t i = 0; i < step.outputs.size(); ++i)
            if (step.outputs[i] >= 0) observer->on_value(*step.node->outputs()[i], frame.slots[step.outputs[i]]);
        continue;
      }
      if (interrupt_requested()) {  // Ctrl-C: stop between nodes (core/interrupt.h)
        current = saved;
        check_interrupt(fmt::format("while running node '{}'", step.node->name()));
      }
      if (fuse && step.fused_source >= 0) {
        // The Conv before already applied this activation: forward its tensor.
        const int s = step.outputs[0];
        frame.slots[s] = std::move(frame.slots[step.fused_source]);
        for (int r : step.release) {
          if (r == step.fused_source) continue;
          track_free(frame.slots[r]);
          frame.slots[r] = Tensor();
        }
        continue;
      }
      outs.assign(step.outputs.size(), Tensor());
      if (top && observer && observer->provide(*step.node, outs)) {
        for (size_t i = 0; i < step.outputs.size(); ++i)
          if (step.outputs[i] >= 0 && (i >= outs.size() || !outs[i].defined())) {
            current = saved;
            fail(ErrorCode::kInternal, "the observer provided no value for output {} ('{}') of node '{}'", i,
                 step.node->outputs()[i]->name(), step.node->name());
          }
        store_outputs(frame, step, outs, watch);
        continue;
      }
      ins.clear();
      for (const SlotRef& r : step.inputs) ins.push_back(r.index < 0 ? nullptr : lookup(frame, r));
      KernelContext ctx(*step.node, step.opset, ins, &outs, &pool, this);
      // Inputs that die here and whose storage nobody else holds may be written in place.
      reuse.assign(step.inputs.size(), nullptr);
      reuse_buffers.assign(step.inputs.size(), nullptr);
      bool any_reuse = false;
      for (size_t i = 0; i < step.inputs.size(); ++i) {
        if (!step.reusable[i]) continue;
        Tensor& t = frame.slots[step.inputs[i].index];
        if (t.defined() && t.buffer() && t.buffer().use_count() == 1 && !t.is_mapped()) {
          reuse[i] = &t;
          reuse_buffers[i] = t.buffer().get();
          any_reuse = true;
        }
      }
      if (any_reuse) ctx.set_reusable_inputs(reuse);
      if (fuse && step.fused.kind != FusedActivation::Kind::kNone) ctx.set_fused_activation(step.fused);
      try {
        step.kernel(ctx);
        for (size_t i = 0; i < step.outputs.size(); ++i) {
          if (step.outputs[i] >= 0 && !outs[i].defined()) {
            fail(ErrorCode::kInternal, "kernel did not produce output {} ('{}')", i, step.node->outputs()[i]->name());
          }
        }
      } catch (Error& e) {
        current = saved;
        e.add_context(step.context);
        throw;
      } catch (const std::bad_alloc&) {
        current = saved;
        // The machine ran out before the limits did (--max-memory): a resource problem, not a bug.
        Error e(ErrorCode::kUnsupported, "out of memory (lower --max-memory to have such tensors refused up front)");
        e.add_context(step.context);
        throw e;
      } catch (const std::exception& ex) {
        current = saved;
        Error e(ErrorCode::kInternal, ex.what());
        e.add_context(step.context);
        throw e;
      }
      // A taken input's buffer now belongs to an output: drop the input's share of the count.
      for (size_t i = 0; i < reuse_buffers.size(); ++i) {
        if (reuse_buffers[i] && !frame.slots[step.inputs[i].index].buffer()) track_free_buffer(reuse_buffers[i]);
      }
      store_outputs(frame, step, outs, watch);
    }
    current = saved;
  }

  /// Puts a step's outputs into their slots (through the observer's replace() and on_value() where
  /// `watch`), and releases the values whose last use it was.
  void store_outputs(Frame& frame, const NodeStep& step, std::vector<Tensor>& outs, bool watch) {
    for (size_t i = 0; i < step.outputs.size(); ++i) {
      const int s = step.outputs[i];
      if (s < 0) continue;
      frame.slots[s] = std::move(outs[i]);
      if (watch) {
        Tensor replaced;
        if (observer->replace(*step.node->outputs()[i], frame.slots[s], replaced)) frame.slots[s] = std::move(replaced);
      }
      track_alloc(frame.slots[s]);
      if (watch) observer->on_value(*step.node->outputs()[i], frame.slots[s]);
    }
    for (int s : step.release) {
      track_free(frame.slots[s]);
      frame.slots[s] = Tensor();
    }
  }

  std::vector<Tensor> run_subgraph(const ir::Graph& g, const std::vector<Tensor>& inputs) override {
    auto it = plans.find(&g);
    QTOOL_CHECK(it != plans.end(), ErrorCode::kInternal, "subgraph '{}' was not planned", g.name());
    const GraphPlan& p = *it->second;
    QTOOL_CHECK(current != nullptr, ErrorCode::kInternal, "run_subgraph outside of a run");
    if (inputs.size() != p.input_slots.size()) {
      fail(ErrorCode::kInvalidModel, "subgraph '{}' takes {} inputs but was given {}", g.name(),
           p.input_slots.size(), inputs.size());
    }
    Frame frame{&p, std::vector<Tensor>(p.num_slots), current};
    for (const auto& [slot, t] : p.constants) frame.slots[slot] = *t;
    for (size_t i = 0; i < inputs.size(); ++i) frame.slots[p.input_slots[i]] = inputs[i];
    run_frame(frame);
    std::vector<Tensor> outs;
    outs.reserve(p.output_refs.size());
    for (const SlotRef& r : p.output_refs) {
      const Tensor* t = lookup(frame, r);
      if (!t->defined()) fail(ErrorCode::kInvalidModel, "subgraph '{}' did not compute an output", g.name());
      outs.push_back(*t);
    }
    // Intermediates of the body die with the frame.
    for (int s : p.produced) track_free(frame.slots[s]);
    return outs;
  }

  void check_input(const ir::Value& v, const Tensor& t) const {
    const ir::TypeInfo& ty = v.type();
    if (ty.elem_type != DataType::kUndefined && ty.elem_type != t.dtype()) {
      fail(ErrorCode::kInvalidInput, "input '{}' must be {} but is {}", v.name(), dtype_name(ty.elem_type),
           dtype_name(t.dtype()));
    }
    if (!ty.has_shape) return;
    if (ty.dims.size() != t.rank()) {
      fail(ErrorCode::kInvalidInput, "input '{}' must have rank {} but has shape {}", v.name(), ty.dims.size(),
           shape_str(t.shape()));
    }
    for (size_t d = 0; d < ty.dims.size(); ++d) {
      if (ty.dims[d].known() && ty.dims[d].value != t.shape()[d]) {
        std::string want = "[";
        for (size_t k = 0; k < ty.dims.size(); ++k) {
          if (k) want += ",";
          want += ty.dims[k].known() ? std::to_string(ty.dims[k].value)
                                     : (ty.dims[k].param.empty() ? "?" : ty.dims[k].param);
        }
        want += "]";
        fail(ErrorCode::kInvalidInput, "input '{}' has shape {} but the model expects {} (dimension {})", v.name(),
             shape_str(t.shape()), want, d);
      }
    }
  }

  std::vector<Tensor> run(const std::map<std::string, Tensor>& inputs, Observer* obs) {
    const ir::Graph& g = *model.graph;
    const GraphPlan& p = *plans.at(&g);
    for (const auto& [name, t] : inputs) {
      const ir::Value* v = g.find_value(name);
      if (!v || !v->is_graph_input()) {
        std::string names;
        for (const ir::Value* in : g.runtime_inputs()) names += (names.empty() ? "'" : ", '") + in->name() + "'";
        fail(ErrorCode::kInvalidInput, "the model has no input named '{}' (inputs: {})", name,
             names.empty() ? "none" : names);
      }
    }
    Frame frame{&p, std::vector<Tensor>(p.num_slots), nullptr};
    for (const auto& [slot, t] : p.constants) frame.slots[slot] = *t;
    for (const auto& [slot, t] : p.folded) frame.slots[slot] = t;
    for (size_t i = 0; i < g.inputs().size(); ++i) {
      const ir::Value* v = g.inputs()[i];
      auto it = inputs.find(v->name());
      if (it == inputs.end()) {
        if (v->is_initializer()) continue;
        fail(ErrorCode::kInvalidInput, "missing input '{}'", v->name());
      }
      check_input(*v, it->second);
      frame.slots[p.input_slots[i]] = it->second;
      Tensor replaced;
      if (obs && obs->replace(*v, it->second, replaced)) frame.slots[p.input_slots[i]] = std::move(replaced);
    }
    ScopedBufferSource use_pool(buffer_pool.get());
    observer = obs;
    live_buffers.clear();
    current_bytes = 0;
    peak = 0;
    try {
      run_frame(frame);
    } catch (...) {
      observer = nullptr;
      current = nullptr;
      throw;
    }
    observer = nullptr;
    if (!p.folded_ready && options.fold_constants) {  // keep the constant steps' outputs for later runs
      GraphPlan& mp = *plans.at(&g);
      for (const NodeStep& step : mp.steps)
        if (step.constant)
          for (int o : step.outputs)
            if (o >= 0 && frame.slots[o].defined()) mp.folded.emplace_back(o, frame.slots[o]);
      mp.folded_ready = true;
    }
    std::vector<Tensor> outs;
    outs.reserve(p.output_refs.size());
    for (size_t i = 0; i < p.output_refs.size(); ++i) {
      const Tensor* t = lookup(frame, p.output_refs[i]);
      if (!t->defined()) {
        fail(ErrorCode::kInvalidModel, "graph output '{}' was not computed", g.outputs()[i]->name());
      }
      outs.push_back(*t);
    }
    live_buffers.clear();
    current_bytes = 0;
    return outs;
  }
};

Executor::Executor(const ir::Model& model, ExecutorOptions options)
    : impl_(std::make_unique<Impl>(model, options)) {}

Executor::~Executor() = default;

std::vector<Tensor> Executor::run(const std::map<std::string, Tensor>& inputs, Observer* observer) {
  return impl_->run(inputs, observer);
}

std::vector<std::string> Executor::output_names() const {
  std::vector<std::string> names;
  for (const ir::Value* v : impl_->model.graph->outputs()) names.push_back(v->name());
  return names;
}

size_t Executor::peak_bytes() const { return impl_->peak; }

const ir::Model& Executor::model() const { return impl_->model; }

}  // namespace qtool::runtime
