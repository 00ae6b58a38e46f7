// The weight layers of a model and the format each gets (phases 1-2 of apply_weight_only), and
// where AWQ's scales are folded.
#include <algorithm>
#include <cstring>
#include <unordered_map>
#include <unordered_set>

#include <sys/mman.h>
#include <unistd.h>

#include <fmt/format.h>

#include "lowbit_internal.h"
#include "qtool/core/error.h"

namespace qtool::quant::detail {
namespace {

bool is_float_init(const ir::Value* v) {
  return v && v->initializer() && v->initializer()->dtype() == DataType::kFloat;
}

/// Drops the resident pages of a tensor that maps external data read-only (they are re-read from
/// the file if touched again), so that streaming a model larger than memory layer by layer keeps
/// the resident set to about one layer.
void release_mapped_pages(const Tensor& t) {
  if (!t.is_mapped() || t.nbytes() == 0) return;
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t begin = reinterpret_cast<uintptr_t>(t.raw()) & ~(page - 1);
  const uintptr_t end = reinterpret_cast<uintptr_t>(t.raw()) + t.nbytes();
  madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

/// Sets a target's format and the matrix view it implies (a Conv is blocked per kernel tap only
/// when its format has blocks: int8 first/last convs stay per channel when the rest is blocked).
void set_format(Target& t, const WeightFormat& f) {
  t.format = &f;
  if (t.kind == Kind::kConv) {
    t.conv_blocked = f.block_size > 0;  // (a palette's group runs over rows: its block_size is its scale block)
    t.rows = t.conv_blocked ? t.out_channels * t.taps : t.out_channels;
    t.cols = t.conv_blocked ? t.shape[1] : t.shape[1] * t.taps;
  }
}

/// A --plan entry for a target: checked against what the target's op can be written as.
void apply_planned(Target& t, const PlannedLayer& p) {
  t.note = p.reason;
  if (!p.format) {
    t.format = nullptr;
    return;
  }
  const WeightFormat& f = *p.format;
  const std::string what = fmt::format("--plan: weight '{}' of {}", t.weight->name(), t.node->describe());
  QTOOL_CHECK(f.layout != WeightLayout::kMatMulNBits || (t.kind == Kind::kMatMul && t.consumers.size() == 1),
              ErrorCode::kConfig, "{}: {} is a MatMulNBits format, which applies to a MatMul weight read once", what,
              f.name);
  QTOOL_CHECK(t.kind != Kind::kGather || (f.block_size == 0 && f.scheme == WeightScheme::kInt), ErrorCode::kConfig,
              "{}: an embedding table is integer per row (int8, int4, uint4, int2, uint2) or float, not {}", what, f.name);
  QTOOL_CHECK(t.kind != Kind::kConv || f.block_size == 0 || t.shape[1] >= f.block_size, ErrorCode::kConfig,
              "{}: {} needs blocks of {} input channels, the conv has {}", what, f.name, f.block_size, t.shape[1]);
  set_format(t, f);
}

}  // namespace

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::kMatMul: return "MatMul";
    case Kind::kGemm: return "Gemm";
    case Kind::kConv: return "Conv";
    case Kind::kGather: return "Gather";
  }
  return "?";
}

bool is_depthwise(const Target& t) {
  return t.kind == Kind::kConv && t.shape[1] == 1 && t.out_channels > 1 && t.node->attr_int("group", 1) == t.out_channels;
}

/// W [rows, cols] from the initializer in the target's layout.
void extract_matrix(Target& t) {
  if (!t.w.empty()) return;
  const Tensor f = t.weight->initializer()->to_float();
  const float* b = f.data<float>();
  t.w.assign(t.rows * t.cols, 0.0f);
  switch (t.kind) {
    case Kind::kMatMul:
    case Kind::kGemm:
      if (t.trans_b) {
        std::memcpy(t.w.data(), b, t.w.size() * sizeof(float));
      } else {  // B [K, N] -> W [N, K]
        for (int64_t k = 0; k < t.cols; ++k)
          for (int64_t n = 0; n < t.rows; ++n) t.w[n * t.cols + k] = b[k * t.rows + n];
      }
      break;
    case Kind::kGather: std::memcpy(t.w.data(), b, t.w.size() * sizeof(float)); break;
    case Kind::kConv:
      if (!t.conv_blocked) {
        std::memcpy(t.w.data(), b, t.w.size() * sizeof(float));
      } else {  // [M, C, taps] -> rows (m, tap), cols c
        const int64_t c_in = t.cols;
        for (int64_t m = 0; m < t.out_channels; ++m)
          for (int64_t c = 0; c < c_in; ++c)
            for (int64_t tp = 0; tp < t.taps; ++tp)
              t.w[(m * t.taps + tp) * c_in + c] = b[(m * c_in + c) * t.taps + tp];
      }
      break;
  }
  release_mapped_pages(*t.weight->initializer());
}

/// Finds the weight layers of the main graph, in node order.
std::vector<Target> find_targets(ir::Graph& g, int64_t block_size) {
  std::vector<Target> targets;
  std::unordered_map<const ir::Value*, size_t> by_weight;
  for (ir::Node* n : g.topo_order()) {
    if (!n->domain().empty()) continue;
    const std::string& op = n->op_type();
    Target t;
    t.node = n;
    if (op == "MatMul" || op == "Gemm") {
      ir::Value* b = n->input(1);
      if (!is_float_init(b) || b->initializer()->rank() != 2) continue;
      t.kind = op == "MatMul" ? Kind::kMatMul : Kind::kGemm;
      t.trans_b = op == "Gemm" && n->attr_int("transB", 0) != 0;
      t.weight = b;
      t.shape = b->initializer()->shape();
      t.rows = t.trans_b ? t.shape[0] : t.shape[1];
      t.cols = t.trans_b ? t.shape[1] : t.shape[0];
      t.out_channels = t.rows;
      if (op == "MatMul" || n->attr_int("transA", 0) == 0) t.input = n->input(0);
    } else if (op == "Conv") {
      ir::Value* w = n->input(1);
      if (!is_float_init(w) || w->initializer()->rank() < 3) continue;
      t.kind = Kind::kConv;
      t.weight = w;
      t.shape = w->initializer()->shape();
      t.out_channels = t.shape[0];
      t.taps = 1;
      for (size_t i = 2; i < t.shape.size(); ++i) t.taps *= t.shape[i];
      t.conv_blocked = block_size > 0 && t.shape[1] >= block_size;
      // A 1x1 Conv without groups is a MatMul over the input channels at each pixel: its statistics
      // (GPTQ Hessian) come from the pixels of its input.
      if (t.taps == 1 && n->attr_int("group", 1) == 1) {
        t.input = n->input(0);
        t.channels_first = true;
      } else if (t.shape.size() == 4 && n->attr_int("group", 1) == 1 &&
                 n->attr_string("auto_pad", "NOTSET") == "NOTSET") {
        // A k×k Conv is a MatMul over im2col patches: H = Σ patch patchᵀ (GPTQ).
        const auto st = n->attr_ints("strides", {1, 1}), pd = n->attr_ints("pads", {0, 0, 0, 0}),
                   dl = n->attr_ints("dilations", {1, 1});
        if (st.size() == 2 && pd.size() == 4 && dl.size() == 2) {
          t.patch_input = n->input(0);
          t.conv_geometry = {t.shape[2], t.shape[3], st[0], st[1], pd[0], pd[1], pd[2], pd[3], dl[0], dl[1]};
        }
      }
      t.rows = t.conv_blocked ? t.shape[0] * t.taps : t.shape[0];
      t.cols = t.conv_blocked ? t.shape[1] : t.shape[1] * t.taps;
    } else if (op == "Gather") {
      ir::Value* w = n->input(0);
      const int64_t axis = n->attr_int("axis", 0);
      if (!is_float_init(w) || w->initializer()->rank() != 2 || (axis != 0 && axis != -2)) continue;
      if (n->input(1) && n->input(1)->initializer()) continue;  // constant indices: not an embedding lookup
      t.kind = Kind::kGather;
      t.weight = w;
      t.shape = w->initializer()->shape();
      t.rows = t.shape[0];
      t.cols = t.shape[1];
      t.out_channels = t.rows;
    } else {
      continue;
    }
    if (t.rows <= 0 || t.cols <= 0) continue;
    auto it = by_weight.find(t.weight);
    if (it != by_weight.end()) {
      targets[it->second].consumers.push_back(n);  // shared weight: quantized once, for its first layer
      continue;
    }
    t.consumers.push_back(n);
    t.weight_name = t.weight->name();
    by_weight[t.weight] = targets.size();
    targets.push_back(std::move(t));
  }
  return targets;
}

/// Chooses each target's format (phase 2).
void choose_formats(std::vector<Target>& targets, const WeightOnlyConfig& cfg) {
  // First and last weight layers in node order (embeddings are always "first").
  int64_t first = -1, last = -1;
  for (size_t i = 0; i < targets.size(); ++i) {
    if (targets[i].kind == Kind::kGather) continue;
    if (first < 0) first = static_cast<int64_t>(i);
    last = static_cast<int64_t>(i);
  }
  static const BitsChoice kFloat("float"), kInt8("8");
  for (size_t i = 0; i < targets.size(); ++i) {
    Target& t = targets[i];
    t.first_last = t.kind == Kind::kGather || static_cast<int64_t>(i) == first || static_cast<int64_t>(i) == last;
    BitsChoice bits = cfg.bits;
    if (t.first_last && !cfg.bits_first_last.inherits()) {
      bits = cfg.bits_first_last;
      t.note = "first/last layer";
    } else if (!cfg.bits_depthwise.inherits() && is_depthwise(t)) {
      bits = cfg.bits_depthwise;
      t.note = "depthwise conv";
    }
    for (const LayerBitsRule& r : cfg.layer_bits)
      if (glob_match(r.pattern, t.node->name()) || glob_match(r.pattern, t.weight->name())) {
        bits = r.bits;
        t.note = "--layer-bits " + r.pattern;
      }
    for (const std::string& ex : cfg.exclude)
      if (glob_match(ex, t.node->name()) || glob_match(ex, t.weight->name())) {
        bits = kFloat;
        t.note = "excluded";
      }
    if (t.kind == Kind::kGather) {
      if (!cfg.quantize_embedding) bits = kFloat;
      else if (!bits.is_float() &&
               !(cfg.embedding_low_bits && bits.type() && bits.type()->scheme == WeightScheme::kInt)) {
        bits = kInt8;
        t.note = "embedding table: int8 per row";
      }
    }
    if (const auto it = cfg.plan.find(t.weight->name()); it != cfg.plan.end()) {
      apply_planned(t, it->second);
      continue;
    }
    if (bits.is_float()) continue;
    WeightLayout layout = cfg.format;
    int64_t block = cfg.block_size;
    if (bits.is_int8()) layout = WeightLayout::kQdq;
    if (layout == WeightLayout::kMatMulNBits &&
        (t.kind != Kind::kMatMul || t.consumers.size() > 1 || bits.is_sign_scheme())) {
      layout = WeightLayout::kQdq;
      t.note += t.note.empty() ? "" : "; ";
      t.note += t.kind != Kind::kMatMul ? "MatMulNBits applies to MatMul only: DequantizeLinear"
                : t.consumers.size() > 1 ? "shared weight: DequantizeLinear"
                                         : "ternary/binary: int2 DequantizeLinear";
    }
    if (t.kind == Kind::kGather || (t.kind == Kind::kConv && !t.conv_blocked)) block = 0;
    int64_t palette_block = cfg.palette_block;  // scale blocks along the input channels, as for integer blocks
    if (t.kind == Kind::kGather || (t.kind == Kind::kConv && t.shape[1] < palette_block)) palette_block = 0;
    set_format(t, resolve_weight_format(bits, block, cfg.symmetric, layout, cfg.palette_group, palette_block));
  }
  for (const auto& entry : cfg.plan) {
    const std::string& name = entry.first;  // (clang 14 cannot capture a structured binding)
    const bool found = std::any_of(targets.begin(), targets.end(), [&](const Target& t) { return t.weight->name() == name; });
    QTOOL_CHECK(found, ErrorCode::kConfig, "--plan names weight '{}', which is not a quantizable weight of this model",
                name);
  }
}

/// The input value that AWQ may rescale for a group of layers, and where 1/s goes.
void fold_awq_scales(ir::Graph& g, ir::Value* x, const std::vector<Target*>& group, std::span<const float> s,
                     std::vector<Target>& targets, std::string* where) {
  const int64_t k = static_cast<int64_t>(s.size());
  std::unordered_set<const ir::Node*> members;
  for (const Target* t : group)
    for (const ir::Node* n : t->consumers) members.insert(n);
  bool exclusive = !x->is_graph_output() && !x->is_graph_input();
  for (const ir::Use& u : x->uses()) exclusive = exclusive && members.count(u.node) > 0;
  ir::Node* p = x->producer();
  if (exclusive && p && p->op_type() == "Mul" && p->domain().empty()) {
    // (a) Mul by a constant per-channel vector (the RMSNorm / LayerNorm weight).
    for (int i = 0; i < 2; ++i) {
      ir::Value* c = p->input(i);
      if (!is_float_init(c) || c->uses().size() != 1 || c->initializer()->numel() != k) continue;
      const Tensor& ct = *c->initializer();
      if (ct.rank() == 0 || ct.dim(-1) != k) continue;
      Tensor nt = ct.clone();
      float* d = nt.mutable_data<float>();
      for (int64_t j = 0; j < k; ++j) d[j] /= s[j];
      c->set_initializer(std::move(nt));
      *where = fmt::format("folded into '{}' of {}", c->name(), p->describe());
      return;
    }
  }
  // (b) The output channels of a previous MatMul (directly, or through an elementwise Mul).
  auto prev_matmul = [&](ir::Value* v) -> Target* {
    if (!v || !v->producer() || v->uses().size() != 1) return nullptr;
    for (Target& t : targets)
      if (t.kind == Kind::kMatMul && t.consumers.size() == 1 && t.consumers[0] == v->producer() && t.format &&
          t.rows == k && t.weight->uses().size() == 1)
        return &t;
    return nullptr;
  };
  Target* prev = nullptr;
  if (exclusive && p) {
    if (p->op_type() == "MatMul") prev = prev_matmul(x);
    else if (p->op_type() == "Mul" && p->domain().empty())
      for (int i = 0; i < 2 && !prev; ++i) {
        Target* cand = prev_matmul(p->input(i));
        // The other operand must not depend on the same MatMul output (silu(gate) · up is fine).
        if (cand) prev = cand;
      }
  }
  if (prev) {
    for (int64_t n = 0; n < prev->rows; ++n)
      for (int64_t c = 0; c < prev->cols; ++c) prev->w[n * prev->cols + c] /= s[n];
    *where = fmt::format("folded into the output channels of {}", prev->node->describe());
    return;
  }
  // (c) An explicit Mul by 1/s before the group.
  std::vector<float> inv(k);
  for (int64_t j = 0; j < k; ++j) inv[j] = 1.0f / s[j];
  ir::Value* c = g.add_initializer(g.unique_name(x->name() + "_awq_inv_scale"), Tensor::from_vector<float>({k}, inv));
  ir::Node* first = group.front()->consumers.front();
  ir::Node* mul = g.insert_node_before(first, "Mul", {x, c}, {g.unique_name(x->name() + "_awq")},
                                       g.unique_name(x->name() + "_awq_mul"));
  for (const Target* t : group)
    for (ir::Node* n : t->consumers)
      if (n->input(0) == x) n->set_input(0, mul->output(0));
  *where = fmt::format("inserted Mul '{}'", mul->name());
}

}  // namespace qtool::quant::detail
