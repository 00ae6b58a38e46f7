// apply_weight_only: the low-bit weight rewrite of a whole model (see lowbit.h).
//
// Phases, each over the weight layers in node order (deterministic):
//   1. find the weight layers (MatMul, Gemm, Conv with a constant float weight; Gather tables) and
//      view each weight as W [N output channels, K reduction channels];
//   2. choose each one's format (default, first/last rule, --layer-bits, exclusions);
//   3. calibration statistics of the layers' inputs (Hessians of MatMul/Gemm rows, 1x1 Conv
//      pixels and k×k Conv im2col patches; mean |x| and energy for AWQ and saliency);
//   4. AWQ: search the per-input-channel scales of each group of layers sharing an input (output
//      error through H) and fold 1/s into the input's producer (or an inserted Mul);
//   5. quantize (RTN / GPTQ / AWQ's output-error clipping, outlier columns split off; optionally
//      re-collecting the statistics from the partly quantized model) and rewrite (DequantizeLinear
//      with float16 -> Cast scales, or MatMulNBits, plus the int8 outlier branch), raising the opset
//      to what the output needs.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include <sys/mman.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include "qtool/core/interrupt.h"
#include "lowbit_internal.h"
#include "qtool/core/error.h"
#include "qtool/passes/upgrade_opset.h"
#include "qtool/quant/lowbit.h"

namespace qtool::quant {
namespace {

using detail::InputStats;

enum class Kind { kMatMul, kGemm, kConv, kGather };

/// One weight initializer and how the layers reading it see it.
struct Target {
  ir::Value* weight = nullptr;           ///< removed from the graph once rewritten
  std::string weight_name;
  ir::Node* node = nullptr;             ///< first consumer in node order
  std::vector<ir::Node*> consumers;     ///< every weight-layer consumer
  Kind kind = Kind::kMatMul;
  bool trans_b = false;                 ///< Gemm: B stored as [N, K]
  Shape shape;                          ///< original weight shape
  int64_t rows = 0, cols = 0;           ///< matrix view W [rows, cols]
  int64_t out_channels = 0;             ///< N (conv: M)
  int64_t taps = 1;                     ///< conv kernel elements (kh·kw...)
  bool conv_blocked = false;            ///< conv rows are (m, tap), blocks along input channels
  bool first_last = false;
  const WeightFormat* format = nullptr; ///< nullptr: stays float
  std::string note;
  ir::Value* input = nullptr;           ///< activation input (MatMul/Gemm with transA = 0, 1x1 Conv)
  bool channels_first = false;          ///< 1x1 Conv: input channels on axis 1, W [M, C] acts per pixel
  ir::Value* patch_input = nullptr;     ///< k×k Conv (2-D, group 1): input whose im2col patches give H
  std::vector<int64_t> conv_geometry;   ///< see detail::InputStats::conv_geometry
  std::vector<float> w;                 ///< W [rows, cols] (AWQ scales applied in place)
};

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::kMatMul: return "MatMul";
    case Kind::kGemm: return "Gemm";
    case Kind::kConv: return "Conv";
    case Kind::kGather: return "Gather";
  }
  return "?";
}

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

/// Sets a target's format and the matrix view it implies (a Conv is blocked per kernel tap only
/// when its format has blocks: int8 first/last convs stay per channel when the rest is blocked).
void set_format(Target& t, const WeightFormat& f) {
  t.format = &f;
  if (t.kind == Kind::kConv) {
    t.conv_blocked = f.block_size > 0;
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
  QTOOL_CHECK(t.kind != Kind::kGather || (f.block_size == 0 && f.bits == 8), ErrorCode::kConfig,
              "{}: an embedding table is int8 per row or float, not {}", what, f.name);
  QTOOL_CHECK(t.kind != Kind::kConv || f.block_size == 0 || t.shape[1] >= f.block_size, ErrorCode::kConfig,
              "{}: {} needs blocks of {} input channels, the conv has {}", what, f.name, f.block_size, t.shape[1]);
  set_format(t, f);
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
    } else if (t.kind == Kind::kConv && !cfg.bits_depthwise.inherits() && t.shape[1] == 1 && t.out_channels > 1 &&
               t.node->attr_int("group", 1) == t.out_channels) {
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
      else if (!bits.is_float()) {
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
    set_format(t, resolve_weight_format(bits, block, cfg.symmetric, layout));
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

/// Storage element index of matrix element (r, c) for a target, and scale index of (r, block b).
struct Layout {
  Shape levels_shape, scale_shape;
  int64_t axis = 0;
  int64_t block_size = 0;  ///< 0: per-channel DQ
};

Layout qdq_layout(const Target& t, const QuantizedMatrix& q) {
  Layout l;
  l.levels_shape = t.shape;
  const int64_t kb = q.k_blocks();
  const bool blocked = t.format->block_size > 0;
  l.block_size = blocked ? t.format->block_size : 0;
  switch (t.kind) {
    case Kind::kMatMul:
    case Kind::kGemm:
      if (t.trans_b) {
        l.axis = blocked ? 1 : 0;
        l.scale_shape = blocked ? Shape{t.rows, kb} : Shape{t.rows};
      } else {
        l.axis = blocked ? 0 : 1;
        l.scale_shape = blocked ? Shape{kb, t.rows} : Shape{t.rows};
      }
      break;
    case Kind::kGather: l.axis = 0; l.scale_shape = {t.rows}; break;
    case Kind::kConv:
      if (t.conv_blocked) {
        l.axis = 1;
        l.scale_shape = t.shape;
        l.scale_shape[1] = kb;
      } else {
        l.axis = 0;
        l.scale_shape = {t.out_channels};
      }
      break;
  }
  return l;
}

/// Storage (original layout) index of W element (r, c).
int64_t storage_index(const Target& t, int64_t r, int64_t c) {
  switch (t.kind) {
    case Kind::kMatMul:
    case Kind::kGemm: return t.trans_b ? r * t.cols + c : c * t.rows + r;
    case Kind::kGather: return r * t.cols + c;
    case Kind::kConv:
      if (!t.conv_blocked) return r * t.cols + c;
      return ((r / t.taps) * t.cols + c) * t.taps + r % t.taps;
  }
  return 0;
}

/// Scale-tensor index of grid (r, b).
int64_t scale_index(const Target& t, const QuantizedMatrix& q, int64_t r, int64_t b) {
  const int64_t kb = q.k_blocks();
  const bool blocked = t.format->block_size > 0;
  switch (t.kind) {
    case Kind::kMatMul:
    case Kind::kGemm:
      if (!blocked) return r;
      return t.trans_b ? r * kb + b : b * t.rows + r;
    case Kind::kGather: return r;
    case Kind::kConv:
      if (!t.conv_blocked) return r;
      return ((r / t.taps) * kb + b) * t.taps + r % t.taps;
  }
  return 0;
}

Tensor packed_tensor(DataType dt, const Shape& shape, std::span<const int32_t> levels) {
  Tensor out = Tensor::empty(dt, shape);
  const int bits = dtype_bits(dt);
  const std::vector<uint8_t> bytes = pack_onnx(levels, bits);
  QTOOL_ASSERT(bytes.size() == out.nbytes());
  std::memcpy(out.mutable_raw(), bytes.data(), bytes.size());
  return out;
}

/// Whether GPTQ (and the Hessian it needs) runs for a layer in `f`: the low-bit integer formats and
/// fp8 (its rounding error is worth compensating too); int8 layers (first/last) are rounded.
bool gptq_eligible(const WeightFormat& f) { return f.bits < 8 || is_float_scheme(f.scheme); }

/// Opset the emitted DequantizeLinear of `f` needs.
int64_t required_opset(const WeightFormat& f) {
  if (f.layout == WeightLayout::kMatMulNBits) return 0;
  return std::max<int64_t>(f.type->opset, f.block_size > 0 ? 21 : 0);  // block_size: DQ opset 21
}


/// GPTQ of a k×k Conv on its im2col Hessian h [C·taps, C·taps]: the columns of the natural layout
/// W [M, C·taps] (column c·taps + tap) are grouped as the stored blocks are (32 input channels at
/// one tap, or one group per output channel), and the result is returned in the target's view.
QuantizedMatrix gptq_conv(const Target& t, std::span<const double> h, const QuantSpec& spec, const GptqOptions& o) {
  const int64_t m_out = t.out_channels, c_in = t.shape[1], taps = t.taps, k = c_in * taps;
  if (!t.conv_blocked) return quantize_gptq(t.w, t.rows, t.cols, h, spec, o);  // view == natural [M, C·taps]
  const int64_t bs = t.format->block_size, kbc = (c_in + bs - 1) / bs;
  std::vector<float> nat(m_out * k);
  for (int64_t m = 0; m < m_out; ++m)
    for (int64_t tp = 0; tp < taps; ++tp)
      for (int64_t c = 0; c < c_in; ++c) nat[m * k + c * taps + tp] = t.w[(m * taps + tp) * c_in + c];
  std::vector<int64_t> groups(k);
  for (int64_t c = 0; c < c_in; ++c)
    for (int64_t tp = 0; tp < taps; ++tp) groups[c * taps + tp] = tp * kbc + c / bs;
  const QuantizedMatrix g = quantize_gptq_grouped(nat, m_out, k, h, spec, groups, taps * kbc, o);
  QuantizedMatrix q;
  q.rows = t.rows;
  q.cols = t.cols;
  q.block_size = bs;
  q.levels.resize(t.rows * t.cols);
  q.grids.resize(t.rows * kbc);
  if (!g.rounded_from.empty()) q.rounded_from.resize(t.rows * t.cols);
  for (int64_t m = 0; m < m_out; ++m)
    for (int64_t tp = 0; tp < taps; ++tp) {
      for (int64_t c = 0; c < c_in; ++c) {
        q.levels[(m * taps + tp) * c_in + c] = g.levels[m * k + c * taps + tp];
        if (!g.rounded_from.empty()) q.rounded_from[(m * taps + tp) * c_in + c] = g.rounded_from[m * k + c * taps + tp];
      }
      for (int64_t b = 0; b < kbc; ++b) q.grids[(m * taps + tp) * kbc + b] = g.grids[m * taps * kbc + tp * kbc + b];
    }
  return q;
}

/// GPTQ of a MatMul/Gemm whose outlier columns are carried exactly by the int8 branch: GPTQ runs on
/// the other columns only (H restricted to them, each keeping its block's grid), so that no error is
/// pushed into the outlier columns (the branch holds their original weights); those columns get the
/// level of 0 in the low-bit matrix.
QuantizedMatrix gptq_without_columns(const Target& t, const std::vector<int64_t>& out_cols, std::span<const double> h,
                                     const QuantSpec& spec, const GptqOptions& o) {
  const int64_t rows = t.rows, cols = t.cols, bs = effective_block(spec, cols), kb = (cols + bs - 1) / bs;
  std::vector<char> is_out(cols, 0);
  for (int64_t c : out_cols) is_out[c] = 1;
  std::vector<int64_t> keep;
  for (int64_t c = 0; c < cols; ++c)
    if (!is_out[c]) keep.push_back(c);
  const int64_t n = static_cast<int64_t>(keep.size());
  std::vector<float> w(rows * n);
  std::vector<double> hk(n * n);
  std::vector<int64_t> groups(n);
  for (int64_t i = 0; i < n; ++i) {
    groups[i] = keep[i] / bs;
    for (int64_t r = 0; r < rows; ++r) w[r * n + i] = t.w[r * cols + keep[i]];
    for (int64_t j = 0; j < n; ++j) hk[i * n + j] = h[keep[i] * cols + keep[j]];
  }
  const QuantizedMatrix g = quantize_gptq_grouped(w, rows, n, hk, spec, groups, kb, o);
  QuantizedMatrix q;
  q.rows = rows;
  q.cols = cols;
  q.block_size = bs;
  q.grids = g.grids;  // [rows, kb]: the groups are the original blocks
  q.levels.assign(rows * cols, 0);
  if (!g.rounded_from.empty()) q.rounded_from.assign(rows * cols, 0.0f);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < n; ++i) {
      q.levels[r * cols + keep[i]] = g.levels[r * n + i];
      if (!g.rounded_from.empty()) q.rounded_from[r * cols + keep[i]] = g.rounded_from[r * n + i];
    }
    for (int64_t c : out_cols) q.levels[r * cols + c] = q.grids[r * kb + c / bs].quantize(0.0f);
  }
  return q;
}

/// Whether layers of format `f` store float16 scales under `cfg` (DequantizeLinear below 8 bits).
bool wants_fp16_scales(const WeightOnlyConfig& cfg, const WeightFormat& f) {
  return cfg.fp16_scales && f.layout == WeightLayout::kQdq && f.bits < 8;
}

/// Rewrites target t as DequantizeLinear -> consumers (scales as float16 -> Cast when
/// `fp16_scales`). Returns the stored bytes.
int64_t emit_qdq(ir::Graph& g, const Target& t, const QuantizedMatrix& q, bool fp16_scales, WeightOnlyLayer& L) {
  const Layout l = qdq_layout(t, q);
  const DataType dt = t.format->storage_type();
  std::vector<int32_t> levels(t.rows * t.cols);
  for (int64_t r = 0; r < t.rows; ++r)
    for (int64_t c = 0; c < t.cols; ++c) levels[storage_index(t, r, c)] = q.levels[r * t.cols + c];
  const int64_t n_scales = shape_numel(l.scale_shape);
  std::vector<float> scales(n_scales);
  std::vector<int32_t> zps(n_scales);
  for (int64_t r = 0; r < t.rows; ++r)
    for (int64_t b = 0; b < q.k_blocks(); ++b) {
      const BlockGrid& gr = q.grids[r * q.k_blocks() + b];
      scales[scale_index(t, q, r, b)] = gr.scale;
      zps[scale_index(t, q, r, b)] = gr.zero_point;
    }
  const std::string& wn = t.weight->name();
  ir::Value* lv = g.add_initializer(g.unique_name(wn + "_quantized"), packed_tensor(dt, l.levels_shape, levels));
  L.stored = lv->name();
  ir::Node* first = t.consumers.front();
  ir::Value* sv = nullptr;
  int64_t scale_bytes = 0;
  if (fp16_scales) {
    // float16 initializer -> Cast(to=float) -> scale: the weight still dequantizes to float32 exactly
    // (every float16 is a float32), and ONNX Runtime folds the Cast of a constant when it loads the model.
    std::vector<uint16_t> half(scales.size());
    for (size_t i = 0; i < scales.size(); ++i) half[i] = float_to_half(scales[i]);
    Tensor ht = Tensor::empty(DataType::kFloat16, l.scale_shape);
    std::memcpy(ht.mutable_raw(), half.data(), half.size() * sizeof(uint16_t));
    scale_bytes = static_cast<int64_t>(ht.nbytes());
    ir::Value* hv = g.add_initializer(g.unique_name(wn + "_scale_fp16"), std::move(ht));
    ir::Node* cast = g.insert_node_before(first, "Cast", {hv}, {g.unique_name(wn + "_scale")},
                                          g.unique_name(wn + "_scale_Cast"));
    cast->set_attr(ir::Attribute::make_int("to", static_cast<int64_t>(DataType::kFloat)));
    sv = cast->output(0);
  } else {
    sv = g.add_initializer(g.unique_name(wn + "_scale"), Tensor::from_vector<float>(l.scale_shape, scales));
    scale_bytes = static_cast<int64_t>(sv->initializer()->nbytes());
  }
  std::vector<ir::Value*> inputs = {lv, sv};
  int64_t bytes = static_cast<int64_t>(lv->initializer()->nbytes()) + scale_bytes;
  if (!t.format->symmetric) {
    ir::Value* zv = g.add_initializer(g.unique_name(wn + "_zero_point"), packed_tensor(dt, l.scale_shape, zps));
    inputs.push_back(zv);
    bytes += static_cast<int64_t>(zv->initializer()->nbytes());
  }
  ir::Node* dq = g.insert_node_before(first, "DequantizeLinear", inputs, {g.unique_name(wn + "_dequantized")},
                                      g.unique_name(wn + "_DequantizeLinear"));
  const bool per_tensor = n_scales == 1 && l.block_size == 0;
  if (!per_tensor) dq->set_attr(ir::Attribute::make_int("axis", l.axis));
  L.scheme = per_tensor ? "per-tensor"
             : l.block_size > 0 ? fmt::format("block({}, axis={})", l.block_size, l.axis)
                                : fmt::format("per-channel(axis={})", l.axis);
  if (l.block_size > 0) dq->set_attr(ir::Attribute::make_int("block_size", l.block_size));
  g.replace_all_uses(t.weight, dq->output(0));
  g.remove_initializer(t.weight);
  return bytes;
}

/// Rewrites target t with its dequantization written as plain arithmetic on constants,
/// levels -> Cast(to=float) [-> Reshape to blocks] [-> Sub(zero points)] -> Mul(scales)
/// [-> Reshape back [-> Slice off the padding of a short last block]] -> consumers, which ONNX
/// Runtime constant-folds when it loads the model (it keeps DequantizeLinear nodes unfolded for
/// its QDQ fusions): the file stores the same packed levels, scales and zero points as kQdq (plus
/// the zero padding of a short last block), and the model runs at float32 speed with float32
/// weights in memory. fp4 codes are decoded by Cast(to=int32) -> Gather on the 16 E2M1 values in
/// place of the Cast to float (ONNX Runtime 1.30 has no FLOAT4E2M1 Cast). Returns the stored bytes.
int64_t emit_cast_mul(ir::Graph& g, const Target& t, const QuantizedMatrix& q, bool fp16_scales, WeightOnlyLayer& L) {
  const DataType dt = t.format->storage_type();
  const int64_t kb = q.k_blocks();
  const bool blocked = t.format->block_size > 0;
  const int64_t bs = blocked ? t.format->block_size : t.cols, kp = kb * bs;  // padded reduction length
  const bool k_last = t.kind == Kind::kConv || (t.kind == Kind::kGemm && t.trans_b);  // blocks on axis 1
  const int64_t axis = k_last ? 1 : 0;
  Shape padded = t.shape;
  if (blocked) padded[axis] = kp;
  // Element of the padded weight holding matrix element (r, c), c < kp (the layouts of storage_index).
  auto padded_index = [&](int64_t r, int64_t c) -> int64_t {
    if (!blocked) return storage_index(t, r, c);
    if (t.kind == Kind::kConv) return ((r / t.taps) * kp + c) * t.taps + r % t.taps;
    return t.trans_b ? r * kp + c : c * t.rows + r;
  };
  // Scale / zero-point element of grid (r, b): per channel [.., N, ..] with ones elsewhere; blocked,
  // the weight's shape with the blocked axis split into [kb, 1].
  Shape sshape;
  if (blocked) {
    for (size_t d = 0; d < padded.size(); ++d) {
      sshape.push_back(static_cast<int64_t>(d) == axis ? kb : padded[d]);
      if (static_cast<int64_t>(d) == axis) sshape.push_back(1);
    }
  } else {
    sshape.assign(t.shape.size(), 1);
    const int64_t out_axis = (t.kind == Kind::kMatMul || (t.kind == Kind::kGemm && !t.trans_b)) ? 1 : 0;
    sshape[out_axis] = t.shape[out_axis];
  }
  auto grid_index = [&](int64_t r, int64_t b) -> int64_t {
    if (!blocked) return r;
    if (t.kind == Kind::kConv) return ((r / t.taps) * kb + b) * t.taps + r % t.taps;
    return t.trans_b ? r * kb + b : b * t.rows + r;
  };
  Shape bview = padded;  // the weight with its blocked axis split into [kb, bs]
  if (blocked) {
    bview[axis] = kb;
    bview.insert(bview.begin() + axis + 1, bs);
  }
  std::vector<int32_t> levels(shape_numel(padded), 0);
  std::vector<float> scales(shape_numel(sshape), 1.0f);
  std::vector<int32_t> zps(scales.size(), 0);
  for (int64_t r = 0; r < t.rows; ++r)
    for (int64_t b = 0; b < kb; ++b) {
      const BlockGrid& gr = q.grids[r * kb + b];
      scales[grid_index(r, b)] = gr.scale;
      zps[grid_index(r, b)] = gr.zero_point;
      for (int64_t c = b * bs; c < (b + 1) * bs; ++c)  // padding holds the zero point: exactly 0
        levels[padded_index(r, c)] = c < t.cols ? q.levels[r * t.cols + c] : gr.zero_point;
    }
  const std::string& wn = t.weight->name();
  ir::Node* first = t.consumers.front();
  auto before = [&](const std::string& op, std::vector<ir::Value*> ins, const std::string& what) {
    return g.insert_node_before(first, op, ins, {g.unique_name(wn + "_" + what)}, g.unique_name(wn + "_" + what + "_" + op));
  };
  auto shape_init = [&](const Shape& s, const std::string& what) {
    return g.add_initializer(g.unique_name(wn + "_" + what), Tensor::from_vector<int64_t>({static_cast<int64_t>(s.size())}, s));
  };
  ir::Value* lv = g.add_initializer(g.unique_name(wn + "_quantized"), packed_tensor(dt, padded, levels));
  int64_t bytes = static_cast<int64_t>(lv->initializer()->nbytes());
  L.stored = lv->name();
  L.scheme = blocked ? fmt::format("block({}, axis={})", bs, axis)
                     : fmt::format("per-channel(axis={})", (t.kind == Kind::kMatMul || (t.kind == Kind::kGemm && !t.trans_b)) ? 1 : 0);
  ir::Value* x = nullptr;
  if (t.format->scheme == WeightScheme::kFloat4) {
    // E2M1 codes -> Cast(to=int32) -> Gather on the 16 code values: the decoded levels.
    ir::Node* cast = before("Cast", {lv}, "codes");
    cast->set_attr(ir::Attribute::make_int("to", static_cast<int64_t>(DataType::kInt32)));
    std::vector<float> table(16);
    for (int c = 0; c < 16; ++c) table[c] = float4e2m1_to_float(static_cast<uint8_t>(c));
    ir::Value* tv = g.add_initializer(g.unique_name(wn + "_e2m1_table"), Tensor::from_vector<float>({16}, table));
    bytes += static_cast<int64_t>(tv->initializer()->nbytes());
    x = before("Gather", {tv, cast->output(0)}, "levels_float")->output(0);
  } else {
    ir::Node* cast = before("Cast", {lv}, "levels_float");
    cast->set_attr(ir::Attribute::make_int("to", static_cast<int64_t>(DataType::kFloat)));
    x = cast->output(0);
  }
  if (blocked) x = before("Reshape", {x, shape_init(bview, "block_shape")}, "blocks")->output(0);
  if (!t.format->symmetric) {
    ir::Value* zv = g.add_initializer(g.unique_name(wn + "_zero_point"), packed_tensor(dt, sshape, zps));
    bytes += static_cast<int64_t>(zv->initializer()->nbytes());
    ir::Node* zc = before("Cast", {zv}, "zero_point_float");
    zc->set_attr(ir::Attribute::make_int("to", static_cast<int64_t>(DataType::kFloat)));
    x = before("Sub", {x, zc->output(0)}, "centered")->output(0);
  }
  ir::Value* sv = nullptr;
  if (fp16_scales) {
    std::vector<uint16_t> half(scales.size());
    for (size_t i = 0; i < scales.size(); ++i) half[i] = float_to_half(scales[i]);
    Tensor ht = Tensor::empty(DataType::kFloat16, sshape);
    std::memcpy(ht.mutable_raw(), half.data(), half.size() * sizeof(uint16_t));
    bytes += static_cast<int64_t>(ht.nbytes());
    ir::Value* hv = g.add_initializer(g.unique_name(wn + "_scale_fp16"), std::move(ht));
    ir::Node* sc = before("Cast", {hv}, "scale");
    sc->set_attr(ir::Attribute::make_int("to", static_cast<int64_t>(DataType::kFloat)));
    sv = sc->output(0);
  } else {
    sv = g.add_initializer(g.unique_name(wn + "_scale"), Tensor::from_vector<float>(sshape, scales));
    bytes += static_cast<int64_t>(sv->initializer()->nbytes());
  }
  x = before("Mul", {x, sv}, "scaled")->output(0);
  if (blocked) {
    x = before("Reshape", {x, shape_init(padded, "padded_shape")}, "padded")->output(0);
    if (padded != t.shape) {
      ir::Value* st = g.add_initializer(g.unique_name(wn + "_slice_start"), Tensor::from_vector<int64_t>({1}, {0}));
      ir::Value* en = g.add_initializer(g.unique_name(wn + "_slice_end"), Tensor::from_vector<int64_t>({1}, {t.shape[axis]}));
      ir::Value* ax = g.add_initializer(g.unique_name(wn + "_slice_axis"), Tensor::from_vector<int64_t>({1}, {axis}));
      x = before("Slice", {x, st, en, ax}, "dequantized")->output(0);
    }
  }
  g.replace_all_uses(t.weight, x);
  g.remove_initializer(t.weight);
  return bytes;
}

/// Rewrites a MatMul with weight t as com.microsoft.MatMulNBits (in place: the node keeps its output).
int64_t emit_matmulnbits(ir::Graph& g, const Target& t, const QuantizedMatrix& q, WeightOnlyLayer& L) {
  const WeightFormat& f = *t.format;
  const int64_t n = t.rows, k = t.cols, bs = f.block_size, kb = q.k_blocks();
  const int32_t offset = f.symmetric ? (1 << (f.bits - 1)) : 0;
  std::vector<int32_t> codes(q.levels.size());
  for (size_t i = 0; i < codes.size(); ++i) codes[i] = q.levels[i] + offset;
  const std::vector<uint8_t> blob = pack_matmulnbits(codes, n, k, f.bits, bs, f.symmetric ? offset : 0);
  std::vector<float> scales(n * kb);
  std::vector<int32_t> zps(n * kb);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t b = 0; b < kb; ++b) {
      scales[r * kb + b] = q.grids[r * kb + b].scale;
      zps[r * kb + b] = q.grids[r * kb + b].zero_point;
    }
  const std::string& wn = t.weight->name();
  Tensor bt = Tensor::empty(DataType::kUint8, {n, kb, bs * f.bits / 8});
  std::memcpy(bt.mutable_raw(), blob.data(), blob.size());
  ir::Value* bv = g.add_initializer(g.unique_name(wn + "_nbits"), std::move(bt));
  L.stored = bv->name();
  L.scheme = fmt::format("matmulnbits(block {})", bs);
  ir::Value* sv = g.add_initializer(g.unique_name(wn + "_scale"), Tensor::from_vector<float>({n * kb}, scales));
  int64_t bytes = static_cast<int64_t>(blob.size() + scales.size() * 4);
  ir::Node* node = t.node;
  node->set_input(1, bv);
  node->add_input(sv);
  if (!f.symmetric) {
    const std::vector<uint8_t> zp = pack_matmulnbits_zero_points(zps, n, kb, f.bits);
    ir::Value* zv = g.add_initializer(g.unique_name(wn + "_zero_point"),
                                      Tensor::from_vector<uint8_t>({static_cast<int64_t>(zp.size())}, zp));
    node->add_input(zv);
    bytes += static_cast<int64_t>(zp.size());
  }
  node->set_op_type("MatMulNBits");
  node->set_domain("com.microsoft");
  node->set_attr(ir::Attribute::make_int("K", k));
  node->set_attr(ir::Attribute::make_int("N", n));
  node->set_attr(ir::Attribute::make_int("bits", f.bits));
  node->set_attr(ir::Attribute::make_int("block_size", bs));
  g.remove_initializer(t.weight);
  return bytes;
}

/// Adds Y += MatMul(Gather(X, cols, axis=-1), DQ(int8 outlier rows)) after the layer. Returns bytes.
int64_t emit_outliers(ir::Graph& g, const Target& t, const std::vector<int64_t>& cols,
                      const std::vector<float>& w_orig) {
  const int64_t c = static_cast<int64_t>(cols.size()), n = t.rows;
  // B_out [c, N] int8, symmetric per output column (axis 1).
  std::vector<float> scales(n, 1.0f);
  std::vector<int8_t> q(c * n);
  float alpha = t.kind == Kind::kGemm ? t.node->attr_float("alpha", 1.0f) : 1.0f;
  for (int64_t r = 0; r < n; ++r) {
    float amax = 0.0f;
    for (int64_t j = 0; j < c; ++j) amax = std::max(amax, std::fabs(w_orig[r * t.cols + cols[j]]));
    const float s = amax > 0 ? amax / 127.0f : 1.0f;
    scales[r] = s * alpha;
    for (int64_t j = 0; j < c; ++j)
      q[j * n + r] = static_cast<int8_t>(std::clamp(std::nearbyint(w_orig[r * t.cols + cols[j]] / s), -127.0f, 127.0f));
  }
  const std::string& wn = t.weight_name;
  ir::Node* node = t.node;
  ir::Value* y = node->output(0);
  ir::Value* idx = g.add_initializer(g.unique_name(wn + "_outlier_channels"), Tensor::from_vector<int64_t>({c}, cols));
  ir::Value* qv = g.add_initializer(g.unique_name(wn + "_outlier_quantized"), Tensor::from_vector<int8_t>({c, n}, q));
  ir::Value* sv = g.add_initializer(g.unique_name(wn + "_outlier_scale"), Tensor::from_vector<float>({n}, scales));
  ir::Node* gather = g.add_node("Gather", {node->input(0), idx}, {g.unique_name(wn + "_outlier_x")},
                                g.unique_name(wn + "_outlier_Gather"));
  gather->set_attr(ir::Attribute::make_int("axis", -1));
  ir::Node* dq = g.add_node("DequantizeLinear", {qv, sv}, {g.unique_name(wn + "_outlier_w")},
                            g.unique_name(wn + "_outlier_DequantizeLinear"));
  dq->set_attr(ir::Attribute::make_int("axis", 1));
  ir::Node* mm = g.add_node("MatMul", {gather->output(0), dq->output(0)}, {g.unique_name(wn + "_outlier_y")},
                            g.unique_name(wn + "_outlier_MatMul"));
  ir::Node* add = g.add_node("Add", {mm->output(0), mm->output(0)}, {g.unique_name(y->name() + "_with_outliers")},
                             g.unique_name(wn + "_outlier_Add"));
  g.replace_all_uses(y, add->output(0));
  add->set_input(0, y);
  return c * n + n * 4 + c * 8;
}

}  // namespace

namespace {

/// quantize_rtn with its rows split over `threads` threads (RTN treats every row on its own, so
/// the result is identical to the single-threaded one).
QuantizedMatrix quantize_rtn_rows_parallel(std::span<const float> w, int64_t rows, int64_t cols, const QuantSpec& spec,
                                           int threads) {
  const int64_t parts = std::clamp<int64_t>(threads, 1, std::max<int64_t>(1, rows / 64));
  if (parts <= 1) return quantize_rtn(w, rows, cols, spec);
  std::vector<QuantizedMatrix> pieces(static_cast<size_t>(parts));
  std::vector<std::thread> pool;
  std::vector<std::exception_ptr> errors(static_cast<size_t>(parts));
  const int64_t per = (rows + parts - 1) / parts;
  for (int64_t p = 0; p < parts; ++p) {
    const int64_t r0 = std::min(rows, p * per), r1 = std::min(rows, r0 + per);
    pool.emplace_back([&, p, r0, r1] {
      try {
        pieces[static_cast<size_t>(p)] = quantize_rtn(w.subspan(static_cast<size_t>(r0 * cols), static_cast<size_t>((r1 - r0) * cols)),
                                                      r1 - r0, cols, spec);
      } catch (...) {
        errors[static_cast<size_t>(p)] = std::current_exception();
      }
    });
  }
  for (auto& th : pool) th.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  QuantizedMatrix q = std::move(pieces[0]);
  q.rows = rows;
  for (size_t p = 1; p < pieces.size(); ++p) {
    q.levels.insert(q.levels.end(), pieces[p].levels.begin(), pieces[p].levels.end());
    q.grids.insert(q.grids.end(), pieces[p].grids.begin(), pieces[p].grids.end());
    std::vector<int32_t>().swap(pieces[p].levels);
  }
  return q;
}

}  // namespace

WeightOnlyReport apply_weight_only(ir::Model& model, const WeightOnlyConfig& cfg, const CalibrationInputs* calib) {
  WeightOnlyReport report;
  ir::Graph& g = *model.graph;
  QTOOL_CHECK(cfg.outlier_fraction >= 0.0 && cfg.outlier_fraction < 0.5, ErrorCode::kConfig,
              "--outlier-fraction {} must be in [0, 0.5)", cfg.outlier_fraction);
  if (cfg.format == WeightLayout::kMatMulNBits && cfg.block_size <= 0)
    fail(ErrorCode::kConfig, "--format matmulnbits needs --block-size 16, 32, 64 or 128");
  const bool needs_calib = cfg.algorithm != WeightAlgorithm::kRtn;
  const bool awq_alg = cfg.algorithm == WeightAlgorithm::kAwq || cfg.algorithm == WeightAlgorithm::kAwqGptq;
  const bool gptq_alg = cfg.algorithm == WeightAlgorithm::kGptq || cfg.algorithm == WeightAlgorithm::kAwqGptq;
  QTOOL_CHECK(!needs_calib || (calib && (calib->source || !calib->samples.empty())), ErrorCode::kConfig,
              "--algorithm {} needs calibration data (--calib)", weight_algorithm_name(cfg.algorithm));
  const bool tuning = cfg.tune.steps > 0;
  if (tuning) {
    QTOOL_CHECK(calib && (calib->source || !calib->samples.empty()), ErrorCode::kConfig,
                "--tune-steps needs calibration data (--calib)");
    QTOOL_CHECK(cfg.outlier_fraction == 0.0, ErrorCode::kConfig,
                "--tune-steps cannot be combined with --outlier-fraction (the int8 outlier branch is not tuned)");
  }
  // The float model the tuning distills from, before AWQ folds its scales into the graph.
  ir::Model teacher;
  if (tuning) teacher = model.clone();

  std::vector<Target> targets = find_targets(g, cfg.block_size);
  choose_formats(targets, cfg);
  for (const Target& t : targets)
    QTOOL_CHECK(!tuning || !t.format || !is_float_scheme(t.format->scheme), ErrorCode::kConfig,
                "--tune-steps works on integer levels; weight '{}' is {}", t.weight->name(), t.format->name);
  // Weights are read when quantized (streaming), except that AWQ needs them all before folding.
  if (awq_alg)
    for (Target& t : targets)
      if (t.format) with_context("while reading weight '" + t.weight->name() + "'", [&] { extract_matrix(t); });

  // Phase 3: calibration statistics of the inputs of quantized MatMul/Gemm layers.
  std::unordered_map<const ir::Value*, InputStats> stats;
  std::unordered_map<const Target*, InputStats> patch_stats;  // k×k Convs (GPTQ)
  const bool want_stats = calib && (calib->source || !calib->samples.empty()) &&
                          (needs_calib || cfg.outlier_fraction > 0.0);
  if (want_stats) {
    for (const Target& t : targets)
      if (t.format && t.input && t.kind != Kind::kGather) {
        InputStats& s = stats[t.input];
        s.channel_axis1 = t.channels_first;
        s.k = t.cols;
        s.want_hessian = s.want_hessian || needs_calib;  // GPTQ, and AWQ's output-error objective
      }
    std::vector<std::pair<const ir::Value*, InputStats*>> extra;
    if (gptq_alg)
      for (const Target& t : targets)
        if (t.format && gptq_eligible(*t.format) && t.patch_input) {
          InputStats& s = patch_stats[&t];
          s.k = t.shape[1] * t.taps;
          s.want_hessian = true;
          s.conv_geometry = t.conv_geometry;
          extra.emplace_back(t.patch_input, &s);
        }
    detail::collect_input_stats(model, *calib, cfg.threads, cfg.max_calib_rows, stats, extra);
  }

  // Phase 4: AWQ scales, searched per group of low-bit layers sharing one input, folded.
  std::unordered_map<const ir::Value*, std::vector<float>> awq_scales;
  std::unordered_map<const Target*, std::string> awq_where;
  if (awq_alg) {
    std::vector<ir::Value*> inputs_in_order;
    std::unordered_map<ir::Value*, std::vector<Target*>> groups;
    for (Target& t : targets) {
      if (!t.format || !t.input || t.format->bits >= 8 || !stats.count(t.input)) continue;
      if (t.kind == Kind::kConv) continue;  // AWQ folds along the last axis: MatMul/Gemm only
      if (!groups.count(t.input)) inputs_in_order.push_back(t.input);
      groups[t.input].push_back(&t);
    }
    for (ir::Value* x : inputs_in_order) {
      const std::vector<Target*>& grp = groups[x];
      const InputStats& st = stats.at(x);
      if (st.hessian.samples() == 0) continue;
      std::vector<AwqMatrix> mats;
      for (Target* t : grp) mats.push_back({t->w, t->rows});
      QuantSpec spec = QuantSpec::from_format(*grp.front()->format);
      spec.clip_steps = cfg.clip_steps;
      spec.fp16_scale = wants_fp16_scales(cfg, *grp.front()->format);
      const AwqResult res = awq_search_hessian(mats, st.k, st.hessian.hessian(), st.mean_abs(), spec, cfg.awq);
      if (res.alpha == 0.0) continue;  // plain RTN was best: nothing to fold
      for (Target* t : grp) scale_columns(t->w, t->rows, t->cols, res.scales);
      std::string where;
      fold_awq_scales(g, x, grp, res.scales, targets, &where);
      for (Target* t : grp) awq_where[t] = fmt::format("AWQ alpha {:.2f} ({})", res.alpha, where);
      awq_scales[x] = res.scales;
    }
  }

  // Opset the output needs.
  int64_t need = 0;
  bool nbits = false;
  for (const Target& t : targets)
    if (t.format) {
      need = std::max(need, required_opset(*t.format));
      nbits = nbits || t.format->layout == WeightLayout::kMatMulNBits;
    }
  const int64_t have = model.opset("");
  if (need > have) {
    passes::PassOptions po;
    po.target_opset = need;
    with_context(fmt::format("while raising the model's opset from {} to {} for the low-bit weights", have, need),
                 [&] { passes::upgrade_opset(model, po); });
  }
  if (need >= 25) model.ir_version = std::max<int64_t>(model.ir_version, 11);
  if (nbits && model.opset("com.microsoft") == 0) model.set_opset("com.microsoft", 1);
  report.opset = model.opset("");

  // Phase 5: quantize and rewrite.
  double main_bits = 0, main_weights = 0;
  const WeightFormat& main_format = resolve_weight_format(
      cfg.bits, cfg.block_size, cfg.symmetric, cfg.bits.is_int8() ? WeightLayout::kQdq : cfg.format);
  // Sequential calibration: the statistics of a layer's input are re-collected from the model with
  // every earlier layer already quantized (GPTQ's "true sequential" order), so that each layer
  // compensates the error of the layers before it. One calibration pass per distinct layer input.
  const bool sequential = cfg.sequential && want_stats && needs_calib;
  bool stale = false;                       // some layer was quantized since the stats were collected
  const ir::Value* last_input = nullptr;    // input of the last quantized layer
  // Re-collected statistics are keyed by the value the layer reads now (after AWQ folding, the
  // already rescaled x / s), so their Hessian needs no AWQ rescaling.
  std::unordered_map<const Target*, const ir::Value*> actual_key;
  std::unordered_map<const ir::Value*, InputStats> fresh_stats;
  GptqOptions gopt = cfg.gptq;
  gopt.keep_latent = tuning;
  // Writes one quantized layer into the graph and accounts for it in the report.
  auto emit_layer = [&](Target& t, QuantizedMatrix& q, bool fp16, const std::vector<int64_t>& out_cols,
                      const std::vector<float>& w_before_ref, WeightOnlyLayer& L, int64_t float_bytes) {
    const std::vector<float>* w_before = &w_before_ref;
    // Relative weight error (outlier columns count as int8-exact here; their error is tiny),
    // dequantizing element by element rather than materializing the whole matrix.
    double num = 0, den = 0;
    std::vector<char> oc(static_cast<size_t>(t.cols), 0);
    for (int64_t c : out_cols) oc[static_cast<size_t>(c)] = 1;
    for (int64_t r = 0; r < t.rows; ++r)
      for (int64_t c = 0; c < t.cols; ++c) {
        const double wv = (*w_before)[r * t.cols + c];
        const double e = oc[static_cast<size_t>(c)] ? 0.0 : wv - q.grid(r, c).dequantize(q.levels[r * t.cols + c]);
        num += e * e;
        den += wv * wv;
      }
    L.weight_rel_mse = den > 0 ? num / den : 0.0;
    // fp4 is always written in the Cast/Gather form (ONNX Runtime 1.30 has no FLOAT4E2M1 kernels).
    const bool cast_form = cfg.cast_dequant || t.format->scheme == WeightScheme::kFloat4;
    int64_t bytes = t.format->layout == WeightLayout::kMatMulNBits ? emit_matmulnbits(g, t, q, L)
                    : cast_form                                      ? emit_cast_mul(g, t, q, fp16, L)
                                                                     : emit_qdq(g, t, q, fp16, L);
    const WeightFormat& f = *t.format;
    L.precision = f.layout == WeightLayout::kMatMulNBits ? fmt::format("uint{}", f.bits) : std::string(f.type->name);
    L.symmetric = f.symmetric;
    L.bytes = bytes;
    L.scale_count = static_cast<int64_t>(q.grids.size());
    L.scale_min = q.grids.empty() ? 0.0 : q.grids[0].scale;
    L.scale_max = L.scale_min;
    double sum = 0;
    for (const BlockGrid& gr : q.grids) {
      L.scale_min = std::min<double>(L.scale_min, gr.scale);
      L.scale_max = std::max<double>(L.scale_max, gr.scale);
      sum += gr.scale;
    }
    L.scale_mean = q.grids.empty() ? 0.0 : sum / static_cast<double>(q.grids.size());
    if (!out_cols.empty()) {
      bytes += emit_outliers(g, t, out_cols, *w_before);
      L.outlier_columns = static_cast<int64_t>(out_cols.size());
    }
    L.format = std::string(t.format->name);
    L.bits_per_weight = static_cast<double>(bytes) * 8.0 / static_cast<double>(t.rows * t.cols);
    report.float_weight_bytes += float_bytes;
    report.quant_weight_bytes += bytes;
    std::vector<float>().swap(t.w);  // keep one layer's float copy at a time
    std::vector<int32_t>().swap(q.levels);
    if (t.format->bits == main_format.bits && t.format->scheme == main_format.scheme && !t.first_last) {
      main_bits += static_cast<double>(bytes) * 8.0;
      main_weights += static_cast<double>(t.rows * t.cols);
    }
  };
  struct Pending {
    size_t target, layer;
    QuantizedMatrix q;
    bool fp16;
    std::vector<float> latent;
    int64_t float_bytes;
  };
  std::vector<Pending> pending;
  for (size_t ti = 0; ti < targets.size(); ++ti) {
    Target& t = targets[ti];
    if (sequential && stale && t.format && gptq_eligible(*t.format) && t.input && t.input != last_input &&
        stats.count(t.input)) {
      std::unordered_map<const ir::Value*, InputStats> fresh;
      for (size_t ui = ti; ui < targets.size(); ++ui) {
        const Target& u = targets[ui];
        if (!u.format || !u.input || !stats.count(u.input)) continue;
        const ir::Value* now = u.node->input(0);  // x, or AWQ's inserted x / s
        InputStats& f = fresh[now];
        f.channel_axis1 = u.channels_first;
        f.k = stats.at(u.input).k;
        f.want_hessian = stats.at(u.input).want_hessian;
        actual_key[&u] = now;
      }
      g.topo_sort();
      with_context("while re-collecting calibration statistics from the partly quantized model",
                   [&] { detail::collect_input_stats(model, *calib, cfg.threads, cfg.max_calib_rows, fresh); });
      for (auto& [v, f] : fresh) fresh_stats[v] = std::move(f);
      stale = false;
    }
    check_interrupt(fmt::format("before quantizing weight '{}'", t.weight->name()));  // Ctrl-C between layers
    WeightOnlyLayer L;
    L.node = t.node->name().empty() ? t.node->describe() : t.node->name();
    L.op_type = kind_name(t.kind);
    L.weight = t.weight->name();
    L.rows = t.rows;
    L.cols = t.cols;
    L.note = t.note;
    const int64_t float_bytes = shape_numel(t.shape) * 4;
    if (!t.format) {
      L.format = "float";
      L.bits_per_weight = 32.0;
      report.layers.push_back(std::move(L));
      continue;
    }
    with_context("while quantizing weight '" + t.weight->name() + "' of " + t.node->describe(), [&] {
      extract_matrix(t);
      // The weights before outlier columns are zeroed (after AWQ scaling); only copied when there
      // are outlier columns (a large layer's float copy is what bounds the streaming RSS).
      std::vector<float> w_before_copy;
      const std::vector<float>* w_before = &t.w;
      QuantSpec spec = QuantSpec::from_format(*t.format);
      spec.clip_steps = cfg.clip_steps;
      spec.fp16_scale = wants_fp16_scales(cfg, *t.format);
      const InputStats* st = t.input && stats.count(t.input) ? &stats.at(t.input) : nullptr;
      // AWQ scales to apply to the statistics: none when they were re-collected on the rescaled input.
      const std::vector<float>* awq_s = awq_scales.count(t.input) ? &awq_scales.at(t.input) : nullptr;
      if (actual_key.count(&t) && fresh_stats.count(actual_key.at(&t))) {
        st = &fresh_stats.at(actual_key.at(&t));
        awq_s = nullptr;
      }
      // Outlier input channels (low-bit MatMul/Gemm whose output is not a graph output).
      std::vector<int64_t> out_cols;
      if (cfg.outlier_fraction > 0 && t.format->bits < 8 && t.input && t.kind != Kind::kConv &&
          !t.node->output(0)->is_graph_output() && t.consumers.size() == 1) {
        std::vector<float> energy;
        if (st && st->rows > 0) {
          energy = st->energy();
          if (awq_s)
            for (int64_t c = 0; c < t.cols; ++c) energy[c] /= (*awq_s)[c] * (*awq_s)[c];
        }
        out_cols = select_outlier_columns(t.w, t.rows, t.cols, cfg.outlier_fraction, energy);
        if (!out_cols.empty()) {
          w_before_copy = t.w;
          w_before = &w_before_copy;
        }
        for (int64_t r = 0; r < t.rows; ++r)
          for (int64_t c : out_cols) t.w[r * t.cols + c] = 0.0f;
      }
      QuantizedMatrix q;
      const bool have_h = st && st->want_hessian && st->hessian.samples() > 0 &&
                          (t.kind != Kind::kConv || t.channels_first) && t.kind != Kind::kGather &&
                          gptq_eligible(*t.format);
      const InputStats* pst = patch_stats.count(&t) ? &patch_stats.at(&t) : nullptr;
      const bool conv_gptq = gptq_alg && pst && pst->hessian.samples() > 0;
      const bool gptq = gptq_alg && have_h;
      const bool output_clip = awq_alg && have_h && cfg.awq.output_clip;
      std::vector<double> h;
      if (conv_gptq) {
        h = pst->hessian.hessian();
      } else if (gptq || output_clip) {
        h = st->hessian.hessian();
        if (awq_s) h = scale_hessian(h, *awq_s);  // of the input x / s
      }
      auto quantize = [&] {
        if (conv_gptq) {
          q = gptq_conv(t, h, spec, gopt);
          L.algorithm = "gptq";
        } else if (gptq && !out_cols.empty()) {
          q = gptq_without_columns(t, out_cols, h, spec, gopt);
          L.algorithm = "gptq";
        } else if (gptq) {
          q = quantize_gptq(t.w, t.rows, t.cols, h, spec, gopt);
          L.algorithm = "gptq";
          if (gopt.refine_scales) {
            refine_scales(q, t.w, h, spec.fp16_scale);
            L.algorithm = "gptq+refit";
          }
        } else if (output_clip) {
          q = quantize_rtn_hessian(t.w, t.rows, t.cols, spec, h);
          L.algorithm = "rtn-output-clip";
        } else {
          q = quantize_rtn_rows_parallel(t.w, t.rows, t.cols, spec, cfg.threads);
          L.algorithm = t.format->scheme == WeightScheme::kTernary ? "optimal-ternary"
                        : t.format->scheme == WeightScheme::kBinary ? "binary"
                                                                    : "rtn";
        }
      };
      quantize();
      if (spec.fp16_scale && !scales_fit_fp16(q)) {
        spec.fp16_scale = false;  // a scale below float16's normal range (or above it): keep float32
        quantize();
        L.note += (L.note.empty() ? "" : "; ") + std::string("scales outside float16's normal range: float32 scales");
      }
      L.scale_type = spec.fp16_scale ? "float16" : "float";
      if (awq_where.count(&t)) {
        L.algorithm = "awq+" + L.algorithm;
        L.note += (L.note.empty() ? "" : "; ") + awq_where[&t];
      }
      if (tuning) {
        std::vector<float> latent = !q.rounded_from.empty() ? q.rounded_from : t.w;
        std::vector<float>().swap(q.rounded_from);
        // Start exactly at the chosen levels: where a latent value does not round to its level
        // (GPTQ's coordinate descent, a scale refit), start from the level's value.
        for (int64_t r = 0; r < t.rows; ++r)
          for (int64_t c = 0; c < t.cols; ++c) {
            const BlockGrid& gr = q.grid(r, c);
            float& x = latent[r * t.cols + c];
            if (gr.quantize(x) != q.levels[r * t.cols + c]) x = gr.dequantize(q.levels[r * t.cols + c]);
          }
        pending.push_back({ti, report.layers.size(), std::move(q), spec.fp16_scale, std::move(latent), float_bytes});
      } else {
        emit_layer(t, q, spec.fp16_scale, out_cols, *w_before, L, float_bytes);
      }
      stale = true;
      last_input = t.input;
    });
    report.layers.push_back(std::move(L));
  }
  if (tuning) {
    std::vector<TunableWeight> tws;
    for (Pending& p : pending) {
      const Target& t = targets[p.target];
      TunableWeight tw;
      tw.weight = t.weight;
      tw.q = &p.q;
      tw.latent = std::move(p.latent);
      tw.fp16_scales = p.fp16;
      tw.storage_index = [&t](int64_t r, int64_t c) { return storage_index(t, r, c); };
      tws.push_back(std::move(tw));
    }
    TuneOptions to = cfg.tune;
    if (to.threads <= 0) to.threads = cfg.threads;
    report.tune = with_context("while tuning the quantized model on the calibration samples",
                               [&] { return tune_quantized(model, teacher, tws, *calib, to); });
    for (Pending& p : pending) {
      Target& t = targets[p.target];
      WeightOnlyLayer& L = report.layers[p.layer];
      with_context("while writing weight '" + t.weight->name() + "' of " + t.node->describe(),
                   [&] { emit_layer(t, p.q, p.fp16, {}, t.w, L, p.float_bytes); });
      if (L.algorithm.find("tuned") == std::string::npos) L.algorithm += "+tuned";
    }
  }
  report.main_bits_per_weight = main_weights > 0 ? main_bits / main_weights : 0.0;
  g.topo_sort();
  spdlog::info("weight-only: {} weights quantized, {:.1f} MB -> {:.1f} MB, {:.3f} bits per weight at {}",
               report.layers.size(), report.float_weight_bytes / 1e6, report.quant_weight_bytes / 1e6,
               report.main_bits_per_weight, main_format.name);
  return report;
}

}  // namespace qtool::quant
