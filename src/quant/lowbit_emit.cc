// Writing a quantized weight into the graph: DequantizeLinear, the Cast / Gather form that ONNX
// Runtime folds at load (--format cast, fp4), MatMulNBits, and the int8 outlier branch.
#include <algorithm>
#include <cmath>
#include <cstring>

#include <fmt/format.h>

#include "lowbit_internal.h"
#include "qtool/core/error.h"

namespace qtool::quant::detail {
namespace {

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
    Tensor ht = float16_tensor(l.scale_shape, scales);
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

/// True when every consumer of an embedding table gathers rows from it (axis 0, the table as input 0).
bool gathers_rows_only(const Target& t) {
  if (t.kind != Kind::kGather || t.shape.size() != 2) return false;
  for (const ir::Use& u : t.weight->uses())
    if (u.node->op_type() != "Gather" || !u.node->domain().empty() || u.index != 0 || u.node->attr_int("axis", 0) != 0)
      return false;
  return !t.weight->uses().empty();
}

/// An 8-bit embedding table read only by Gathers, rewritten per Gather as
/// Cast(Gather(levels, ids)) [- Gather(zero points, ids)] · Gather(scales[V, 1], ids): only the rows
/// read are converted. A DequantizeLinear of the table would expand every row on every run (ONNX
/// Runtime never folds it: a 32000×768 table is 24.6 M values per call, most of the 4-bit Llama's
/// latency at sequence 1).
int64_t emit_gather_rows(ir::Graph& g, const Target& t, const QuantizedMatrix& q, WeightOnlyLayer& L) {
  const DataType dt = t.format->storage_type();
  const int64_t v = t.rows, d = t.cols;
  std::vector<int32_t> levels(v * d), zps(v);
  std::vector<float> scales(v);
  for (int64_t r = 0; r < v; ++r) {
    for (int64_t c = 0; c < d; ++c) levels[r * d + c] = q.levels[r * d + c];
    scales[r] = q.grids[r].scale;
    zps[r] = q.grids[r].zero_point;
  }
  const std::string& wn = t.weight->name();
  ir::Value* lv = g.add_initializer(g.unique_name(wn + "_quantized"), packed_tensor(dt, {v, d}, levels));
  ir::Value* sv = g.add_initializer(g.unique_name(wn + "_row_scale"), Tensor::from_vector<float>({v, 1}, scales));
  ir::Value* zv = nullptr;
  int64_t bytes = static_cast<int64_t>(lv->initializer()->nbytes() + sv->initializer()->nbytes());
  if (!t.format->symmetric) {
    zv = g.add_initializer(g.unique_name(wn + "_row_zero_point"), packed_tensor(dt, {v, 1}, zps));
    bytes += static_cast<int64_t>(zv->initializer()->nbytes());
  }
  L.stored = lv->name();
  L.scheme = "per-channel(axis=0), rows gathered";
  const std::vector<ir::Use> uses = t.weight->uses();
  for (const ir::Use& u : uses) {
    ir::Node* n = u.node;
    ir::Value* ids = n->input(1);
    const std::string base = n->output(0)->name();
    auto gather = [&](ir::Value* table, const std::string& what) {
      return g.insert_node_before(n, "Gather", {table, ids}, {g.unique_name(base + "_" + what)},
                                  g.unique_name(base + "_" + what + "_Gather"))
          ->output(0);
    };
    auto cast = [&](ir::Value* x, const std::string& what) {
      ir::Node* c = g.insert_node_before(n, "Cast", {x}, {g.unique_name(base + "_" + what + "_float")},
                                         g.unique_name(base + "_" + what + "_Cast"));
      c->set_attr(ir::Attribute::make_int("to", static_cast<int64_t>(DataType::kFloat)));
      return c->output(0);
    };
    ir::Value* rows = cast(gather(lv, "levels"), "levels");
    if (zv) {
      rows = g.insert_node_before(n, "Sub", {rows, cast(gather(zv, "zero_point"), "zero_point")},
                                  {g.unique_name(base + "_centered")}, g.unique_name(base + "_Sub"))
                 ->output(0);
    }
    ir::Value* s = gather(sv, "scale");
    n->set_op_type("Mul");
    n->mutable_attributes().clear();
    n->set_input(0, rows);
    n->set_input(1, s);
  }
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
int64_t emit_cast_mul(ir::Graph& g, const Target& t, const QuantizedMatrix& q, bool fp16_scales, WeightOnlyLayer& L,
                      bool sparse = false) {
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
  ir::Value* lv = nullptr;
  int64_t bytes = 0;
  const bool palette = t.format->scheme == WeightScheme::kPalette;
  // Sparse fp8 keeps its codes as uint8 (a Cast of FLOAT8E4M3FN to int32 would convert the values,
  // not the codes) and decodes them by a Gather on the 256 code values, as fp4 does with its 16.
  const bool fp8_codes = sparse && t.format->scheme == WeightScheme::kFloat8;
  if (sparse) {  // a bit mask of the non-zero levels plus those levels (zero level 0: symmetric grids, codes)
    lv = emit_sparse_levels(g, first, levels, 0,
                            palette ? DataType::kInt32 : fp8_codes ? DataType::kUint8 : dt, t.format->bits, padded,
                            &bytes);
    L.stored = wn + "_quantized_values";
    L.sparse_storage = true;
  } else if (palette) {  // indices of any width 1-8 (uint8, uint4, bit planes)
    lv = emit_codes(g, first, levels, t.format->bits, padded, &bytes);
    L.stored = wn + "_index_codes";
  } else {
    lv = g.add_initializer(g.unique_name(wn + "_quantized"), packed_tensor(dt, padded, levels));
    bytes = static_cast<int64_t>(lv->initializer()->nbytes());
    L.stored = lv->name();
  }
  L.scheme = blocked ? fmt::format("block({}, axis={})", bs, axis)
                     : fmt::format("per-channel(axis={})", (t.kind == Kind::kMatMul || (t.kind == Kind::kGemm && !t.trans_b)) ? 1 : 0);
  ir::Value* x = nullptr;
  if (palette) {  // indices -> Gather on the table (per tensor) of values before scaling
    const std::vector<float>& table = q.grids.front().palette->values;
    const int64_t k = static_cast<int64_t>(table.size());
    ir::Value* tv = nullptr;
    if (fp16_scales) {
      Tensor ht = float16_tensor({k}, table);
      bytes += static_cast<int64_t>(ht.nbytes());
      ir::Node* tc = before("Cast", {g.add_initializer(g.unique_name(wn + "_palette_fp16"), std::move(ht))}, "palette");
      tc->set_attr(ir::Attribute::make_int("to", static_cast<int64_t>(DataType::kFloat)));
      tv = tc->output(0);
    } else {
      tv = g.add_initializer(g.unique_name(wn + "_palette"), Tensor::from_vector<float>({k}, table));
      bytes += static_cast<int64_t>(tv->initializer()->nbytes());
    }
    x = before("Gather", {tv, lv}, "levels_float")->output(0);
    L.scheme = fmt::format("palette({} entries, per tensor), scaled per {}", k, L.scheme);
  } else if (t.format->scheme == WeightScheme::kFloat4 || fp8_codes) {
    // E2M1 (E4M3FN) codes -> Cast(to=int32) -> Gather on the 16 (256) code values: the decoded levels.
    ir::Node* cast = before("Cast", {lv}, "codes");
    cast->set_attr(ir::Attribute::make_int("to", static_cast<int64_t>(DataType::kInt32)));
    const int n_codes = fp8_codes ? 256 : 16;
    std::vector<float> table(n_codes);
    for (int c = 0; c < n_codes; ++c)
      table[c] = fp8_codes ? float8e4m3fn_to_float(static_cast<uint8_t>(c)) : float4e2m1_to_float(static_cast<uint8_t>(c));
    // The NaN codes of E4M3FN are never chosen; their entries stay finite so the table is plain data.
    for (float& v : table)
      if (!std::isfinite(v)) v = 0.0f;
    ir::Value* tv = g.add_initializer(g.unique_name(wn + (fp8_codes ? "_e4m3_table" : "_e2m1_table")),
                                      Tensor::from_vector<float>({n_codes}, table));
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
    Tensor ht = float16_tensor(sshape, scales);
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

}  // namespace

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

/// Opset the emitted DequantizeLinear of `f` needs.
int64_t required_opset(const WeightFormat& f) {
  if (f.layout == WeightLayout::kMatMulNBits) return 0;
  if (f.scheme == WeightScheme::kPalette) return f.type->opset;  // Cast of uint4 (21); Mod, BitShift, CumSum (13)
  return std::max<int64_t>(f.type->opset, f.block_size > 0 ? 21 : 0);  // block_size: DQ opset 21
}

int64_t emit_weight(ir::Graph& g, const Target& t, const QuantizedMatrix& q, bool fp16_scales, bool cast_form,
                    WeightOnlyLayer& L) {
  const WeightFormat& f = *t.format;
  // A pruned layer on a grid whose level 0 is the value 0 (symmetric integers, ternary, fp8/fp4
  // codes) is stored sparsely in the Cast form when that is smaller.
  bool sparse = false;
  const bool palette = f.scheme == WeightScheme::kPalette;
  if (!L.pruning.empty() && f.layout == WeightLayout::kQdq && f.symmetric && f.scheme != WeightScheme::kBinary &&
      (!palette || (f.block_size > 0 && q.grids.front().palette->values[0] == 0.0f))) {
    const int64_t n = t.rows * t.cols;
    const int64_t kept = std::count_if(q.levels.begin(), q.levels.end(), [](int32_t v) { return v != 0; });
    sparse = sparse_storage_bytes(n, kept, f.bits) < (n * f.bits + 7) / 8;
  }
  const int64_t bytes = palette && f.block_size == 0 ? emit_palette(g, t, q, fp16_scales, L)
                        : palette                      ? emit_cast_mul(g, t, q, fp16_scales, L, sparse)
                        : f.layout == WeightLayout::kMatMulNBits ? emit_matmulnbits(g, t, q, L)
                        : sparse ? emit_cast_mul(g, t, q, fp16_scales, L, true)
                        : gathers_rows_only(t) && f.bits == 8 && f.block_size == 0 ? emit_gather_rows(g, t, q, L)
                        : cast_form || f.scheme == WeightScheme::kFloat4 ? emit_cast_mul(g, t, q, fp16_scales, L)
                                                                         : emit_qdq(g, t, q, fp16_scales, L);
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

}  // namespace qtool::quant::detail
