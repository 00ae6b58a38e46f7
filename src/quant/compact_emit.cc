// Compact stored forms of a quantized weight, expanded by ops that ONNX Runtime folds when it loads
// the model (it constant-folds every node whose inputs are all initializers, except
// DequantizeLinear), so the file keeps the compressed size and the model runs at float speed:
//   - codes of any width 1-8: uint8 (8 bits), uint4 (4 bits), uint4 plus bit planes (5-7 bits) or
//     bit planes alone (1-3 bits); a bit plane is uint8 bytes of 8 consecutive codes' bit j,
//     decoded by BitShift(RIGHT, 0..7) -> Mod 2;
//   - sparse levels: a bit plane of "kept" flags plus the kept levels after one zero level,
//     expanded by CumSum(kept)·kept -> Gather(levels) (pruned weights gather the zero level);
//   - palettes: indices -> (+ group offset) -> Gather on the flattened tables.
#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include "lowbit_internal.h"
#include "qtool/core/error.h"
#include "qtool/quant/palette.h"

namespace qtool::quant::detail {
namespace {

/// Nodes inserted before `first`. Their values get short names (a graph-unique "qc_N" prefix plus a
/// few letters) and the nodes none: a small model has as many of these nodes as weights, and long
/// names would cost more bytes than the compression saves.
struct Builder {
  ir::Graph& g;
  ir::Node* first;
  std::string base;
  int64_t* bytes;

  Builder(ir::Graph& graph, ir::Node* before, int64_t* stored)
      : g(graph), first(before), base(graph.unique_name("qc")), bytes(stored) {}

  ir::Value* init(const std::string& what, Tensor t, bool stored = true) {
    if (stored) *bytes += static_cast<int64_t>(t.nbytes());
    return g.add_initializer(g.unique_name(base + "_" + what), std::move(t));
  }
  /// A constant shared by every compact form of the graph (stored once, not counted per layer).
  ir::Value* shared(const std::string& name, Tensor t) {
    if (ir::Value* v = g.find_value(name); v && v->initializer()) return v;
    return g.add_initializer(g.unique_name(name), std::move(t));
  }
  ir::Node* node(const std::string& op, std::vector<ir::Value*> ins, const std::string& what) {
    return g.insert_node_before(first, op, ins, {g.unique_name(base + "_" + what)}, "");
  }
  ir::Value* cast(ir::Value* x, DataType to, const std::string& what) {
    ir::Node* c = node("Cast", {x}, what);
    c->set_attr(ir::Attribute::make_int("to", static_cast<int64_t>(to)));
    return c->output(0);
  }
  ir::Value* i64(const std::string& what, const std::vector<int64_t>& v) {
    return init(what, Tensor::from_vector<int64_t>({static_cast<int64_t>(v.size())}, v), false);
  }
  ir::Value* reshape(ir::Value* x, const Shape& s, const std::string& what) {
    return node("Reshape", {x, i64(what + "_shape", s)}, what)->output(0);
  }
};

Tensor packed(DataType dt, const Shape& shape, std::span<const int32_t> levels) {
  Tensor out = Tensor::empty(dt, shape);
  const std::vector<uint8_t> bytes = pack_onnx(levels, dtype_bits(dt));
  QTOOL_ASSERT(bytes.size() == out.nbytes());
  std::memcpy(out.mutable_raw(), bytes.data(), bytes.size());
  return out;
}

/// Bit plane j of codes (bit `bit` of each), 8 codes per byte, first code in bit 0: [bytes, 1].
Tensor bit_plane(std::span<const int32_t> codes, int bit) {
  const int64_t n = static_cast<int64_t>(codes.size()), nb = (n + 7) / 8;
  std::vector<uint8_t> b(static_cast<size_t>(nb), 0);
  for (int64_t i = 0; i < n; ++i)
    if ((codes[i] >> bit) & 1) b[i / 8] |= static_cast<uint8_t>(1u << (i % 8));
  return Tensor::from_vector<uint8_t>({nb, 1}, b);
}

}  // namespace

Tensor float16_tensor(const Shape& shape, std::span<const float> values) {
  Tensor t = Tensor::empty(DataType::kFloat16, shape);
  QTOOL_ASSERT(static_cast<int64_t>(values.size()) == t.numel());
  std::vector<uint16_t> half(values.size());
  for (size_t i = 0; i < values.size(); ++i) half[i] = float_to_half(values[i]);
  std::memcpy(t.mutable_raw(), half.data(), half.size() * sizeof(uint16_t));
  return t;
}

int64_t code_storage_bytes(int64_t n, int bits) {
  if (bits == 8) return n;
  const int planes = bits >= 4 ? bits - 4 : bits;
  return (bits >= 4 ? (n + 1) / 2 : 0) + planes * ((n + 7) / 8);
}

ir::Value* emit_codes(ir::Graph& g, ir::Node* first, std::span<const int32_t> codes, int bits,
                      const Shape& shape, int64_t* bytes) {
  Builder b{g, first, bytes};
  const int64_t n = static_cast<int64_t>(codes.size());
  QTOOL_ASSERT(shape_numel(shape) == n && bits >= 1 && bits <= 8);
  if (bits == 8) return b.cast(b.init("u8", packed(DataType::kUint8, shape, codes)), DataType::kInt32, "c");
  if (bits == 4) return b.cast(b.init("u4", packed(DataType::kUint4, shape, codes)), DataType::kInt32, "c");
  ir::Value* sum = nullptr;
  int first_plane = 0;
  if (bits > 4) {  // the low 4 bits as uint4
    std::vector<int32_t> low(codes.begin(), codes.end());
    for (int32_t& v : low) v &= 15;
    sum = b.cast(b.init("u4", packed(DataType::kUint4, {n}, low)), DataType::kInt32, "l");
    first_plane = 4;
  }
  const int64_t nb = (n + 7) / 8;
  ir::Value* shifts = b.shared("qc_bit_shifts", Tensor::from_vector<uint8_t>({1, 8}, {0, 1, 2, 3, 4, 5, 6, 7}));
  ir::Value* two = b.shared("qc_two", Tensor::from_vector<uint8_t>({}, {2}));
  for (int bit = first_plane; bit < bits; ++bit) {
    const std::string w = fmt::format("p{}", bit);
    ir::Node* sh = b.node("BitShift", {b.init(w, bit_plane(codes, bit)), shifts}, w + "s");
    sh->set_attr(ir::Attribute::make_string("direction", "RIGHT"));
    ir::Value* x = b.node("Mod", {sh->output(0), two}, w + "b")->output(0);
    x = b.reshape(b.cast(x, DataType::kInt32, w + "i"), {nb * 8}, w + "f");
    if (nb * 8 != n) x = b.node("Slice", {x, b.shared("qc_zero", Tensor::from_vector<int64_t>({1}, {0})),
                                          b.i64(w + "e", {n})}, w + "c")->output(0);
    if (bit > 0)
      x = b.node("Mul", {x, b.shared(fmt::format("qc_bit{}", bit), Tensor::from_vector<int32_t>({}, {1 << bit}))}, w + "v")
              ->output(0);
    sum = sum ? b.node("Add", {sum, x}, w + "a")->output(0) : x;
  }
  return b.reshape(sum, shape, "c");
}

ir::Value* emit_sparse_levels(ir::Graph& g, ir::Node* first, std::span<const int32_t> levels,
                              int32_t zero_level, DataType dt, int bits, const Shape& shape, int64_t* bytes) {
  Builder b{g, first, bytes};
  const int64_t n = static_cast<int64_t>(levels.size());
  std::vector<int32_t> kept_flags(static_cast<size_t>(n));
  std::vector<int32_t> kept = {zero_level};  // index 0: the zero level every pruned weight gathers
  for (int64_t i = 0; i < n; ++i) {
    kept_flags[i] = levels[i] != zero_level ? 1 : 0;
    if (kept_flags[i]) kept.push_back(levels[i]);
  }
  ir::Value* flags = emit_codes(g, first, kept_flags, 1, {n}, bytes);
  ir::Value* axis = b.shared("qc_axis0", Tensor::from_vector<int32_t>({}, {0}));
  ir::Value* rank = b.node("CumSum", {flags, axis}, "r")->output(0);
  ir::Value* idx = b.node("Mul", {rank, flags}, "k")->output(0);  // 0 for pruned, 1.. for kept
  const int64_t nk = static_cast<int64_t>(kept.size());
  ir::Value* values = dt == DataType::kInt32 ? emit_codes(g, first, kept, bits, {nk}, bytes)
                                             : b.cast(b.init("v", packed(dt, {nk}, kept)), DataType::kInt32, "vi");
  ir::Value* dense = b.node("Gather", {values, idx}, "d")->output(0);
  return b.reshape(dense, shape, "l");
}

int64_t sparse_storage_bytes(int64_t n, int64_t kept, int bits) {
  return code_storage_bytes(n, 1) + code_storage_bytes(kept + 1, bits);
}

int64_t emit_palette(ir::Graph& g, const Target& t, const QuantizedMatrix& q, bool fp16_table, WeightOnlyLayer& L) {
  const WeightFormat& f = *t.format;
  const int64_t k = int64_t{1} << f.bits, n = t.rows * t.cols;
  const std::vector<std::vector<int64_t>> members = palette_groups(q);
  const int64_t groups = static_cast<int64_t>(members.size());
  std::vector<int32_t> codes(static_cast<size_t>(n));
  for (int64_t r = 0; r < t.rows; ++r)
    for (int64_t c = 0; c < t.cols; ++c) codes[storage_index(t, r, c)] = q.levels[r * t.cols + c];
  const std::string& wn = t.weight->name();
  int64_t bytes = 0;
  Builder b{g, t.consumers.front(), &bytes};
  // Index 0 holds 0 in every table when the layer was pruned: store it sparsely when that is smaller.
  bool zero_first = true;
  const int64_t kb = q.k_blocks();
  for (const auto& m : members) zero_first = zero_first && q.grids[m.front() * kb].palette->values[0] == 0.0f;
  const int64_t kept = std::count_if(codes.begin(), codes.end(), [](int32_t v) { return v != 0; });
  ir::Value* idx = nullptr;
  if (zero_first && sparse_storage_bytes(n, kept, f.bits) < code_storage_bytes(n, f.bits)) {
    idx = emit_sparse_levels(g, b.first, codes, 0, DataType::kInt32, f.bits, t.shape, &bytes);
    L.sparse_storage = true;
  } else {
    idx = emit_codes(g, b.first, codes, f.bits, t.shape, &bytes);
  }
  L.stored = wn + "_index_codes";
  if (groups > 1) {  // index + group·K on the output-channel axis
    const int64_t out_axis = (t.kind == Kind::kMatMul || (t.kind == Kind::kGemm && !t.trans_b)) ? 1 : 0;
    Shape oshape(t.shape.size(), 1);
    oshape[out_axis] = t.out_channels;
    std::vector<int32_t> off(static_cast<size_t>(t.out_channels));
    for (int64_t gi = 0; gi < groups; ++gi)
      for (int64_t r : members[gi]) off[r] = static_cast<int32_t>(gi * k);
    idx = b.node("Add", {idx, b.init("table_offset", Tensor::from_vector<int32_t>(oshape, off))}, "table_index")
              ->output(0);
  }
  std::vector<float> table(static_cast<size_t>(groups * k));
  for (int64_t gi = 0; gi < groups; ++gi) {
    const std::vector<float>& v = q.grids[members[gi].front() * kb].palette->values;
    std::copy(v.begin(), v.end(), table.begin() + gi * k);
  }
  ir::Value* tv = nullptr;
  if (fp16_table) {
    tv = b.cast(b.init("palette_fp16", float16_tensor({groups * k}, table)), DataType::kFloat, "palette");
  } else {
    tv = b.init("palette", Tensor::from_vector<float>({groups * k}, table));
  }
  ir::Value* w = b.node("Gather", {tv, idx}, "dequantized")->output(0);
  L.scheme = groups > 1 ? fmt::format("palette({} entries, {} tables of {} output channels)", k, groups,
                                       members.front().size())
                        : fmt::format("palette({} entries, per tensor)", k);
  g.replace_all_uses(t.weight, w);
  g.remove_initializer(t.weight);
  return bytes;
}

}  // namespace qtool::quant::detail
