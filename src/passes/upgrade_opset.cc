#include "qtool/passes/upgrade_opset.h"

#include "qtool/passes/remove_initializer_inputs.h"

#include <algorithm>
#include <set>

#include <fmt/format.h>

namespace qtool::passes {
namespace {

ir::Value* add_const(ir::Graph& g, const std::string& base, Tensor t) {
  const DataType dt = t.dtype();
  const Shape shape = t.shape();
  ir::Value* v = g.add_initializer(g.unique_name(base), std::move(t));
  v->type().elem_type = dt;
  v->type().has_shape = true;
  v->type().dims.clear();
  for (int64_t d : shape) v->type().dims.push_back(ir::Dim{d, ""});
  return v;
}

ir::Value* add_i64(ir::Graph& g, const std::string& base, const std::vector<int64_t>& v) {
  return add_const(g, base, Tensor::from_vector<int64_t>({static_cast<int64_t>(v.size())}, v));
}

// A scalar of the element type of `like` (float unless it is known to be fp16/double).
ir::Value* add_scalar_like(ir::Graph& g, const std::string& base, const ir::Value* like, float value) {
  const DataType dt = like ? like->type().elem_type : DataType::kFloat;
  Tensor t = Tensor::scalar<float>(value);
  if (dt != DataType::kUndefined && dt != DataType::kFloat) t = t.cast(dt);
  return add_const(g, base, std::move(t));
}

std::string base_of(const ir::Node& n, const char* what) {
  const std::string b = n.name().empty() ? (n.output(0) ? n.output(0)->name() : n.op_type()) : n.name();
  return b + "_" + what;
}

// Moves attribute `attr` (ints) to input position `pos` as an int64 initializer; omitted inputs
// before `pos` are padded with nullptr. Returns false if the attribute is absent.
bool ints_attr_to_input(ir::Graph& g, ir::Node& n, const char* attr, size_t pos) {
  if (!n.has_attr(attr)) return false;
  const std::vector<int64_t> v = n.attr_ints(attr);
  n.remove_attr(attr);
  while (n.inputs().size() < pos) n.add_input(nullptr);
  n.set_input(pos, add_i64(g, base_of(n, attr), v));
  return true;
}

int rank_of(const ir::Value* v) {
  if (v == nullptr) return -1;
  if (const Tensor* t = v->initializer()) return static_cast<int>(t->rank());
  return v->type().has_shape ? static_cast<int>(v->type().dims.size()) : -1;
}

bool dims_after_are_one(const ir::Value* v, int axis) {
  if (v == nullptr || !v->type().has_shape) return false;
  const auto& d = v->type().dims;
  for (size_t i = axis + 1; i < d.size(); ++i)
    if (d[i].value != 1) return false;
  return true;
}

const std::set<std::string, std::less<>> kLegacyBroadcastOps = {"Add", "Sub", "Mul", "Div", "Pow", "And", "Or",
                                                                 "Xor", "Equal", "Greater", "Less"};
const std::set<std::string, std::less<>> kReduceOps = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd",
                                                       "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
                                                       "ReduceSumSquare"};

/// One node being upgraded from opset `from` to `to`.
struct NodeUpgrade {
  ir::Graph& g;
  ir::Node& n;
  int64_t from, to;
  /// True when the upgrade passes version v (the op changed at v).
  bool crosses(int64_t v) const { return from < v && v <= to; }
};

// Each rule below rewrites one op family (the table kOpRules says which); returns true if it
// changed the node. The version checks are the rule's own.

// Add/Sub/... before 7: broadcast=1 with axis aligns B at `axis`; from 7 on, numpy broadcasting
// aligns it at the end, so a constant B gets trailing 1s.
bool legacy_broadcast(const NodeUpgrade& u) {
  ir::Node& n = u.n;
  if (!(u.crosses(7) && (n.has_attr("broadcast") || n.has_attr("axis")))) return false;
  const bool bcast = n.attr_int("broadcast", 0) != 0;
  if (bcast && n.has_attr("axis")) {
    const int ra = rank_of(n.input(0));
    ir::Value* b = n.input(1);
    const int rb = rank_of(b);
    int64_t axis = n.attr_int("axis", 0);
    if (ra < 0 || rb < 0)
      fail(ErrorCode::kUnsupported, "node {}: legacy broadcast with axis needs known ranks", n.describe());
    if (axis < 0) axis += ra;
    const int64_t trailing = ra - axis - rb;
    if (trailing > 0) {
      if (b->initializer() == nullptr)
        fail(ErrorCode::kUnsupported, "node {}: legacy broadcast at axis {} of a non-constant operand", n.describe(),
             axis);
      Shape s = b->initializer()->shape();
      for (int64_t i = 0; i < trailing; ++i) s.push_back(1);
      n.set_input(1, add_const(u.g, base_of(n, "B"), b->initializer()->reshaped(s)));
    }
  }
  n.remove_attr("broadcast");
  n.remove_attr("axis");
  return true;
}

bool gemm_rnn_drop_legacy_attrs(const NodeUpgrade& u) {
  ir::Node& n = u.n;
  bool changed = false;
  if (u.crosses(7)) {
    if (n.has_attr("broadcast")) n.remove_attr("broadcast"), changed = true;
    if (n.has_attr("output_sequence")) n.remove_attr("output_sequence"), changed = true;
  }
  return changed;
}

bool concat_default_axis(const NodeUpgrade& u) {
  if (!(u.crosses(4) && !u.n.has_attr("axis"))) return false;
  u.n.set_attr(ir::Attribute::make_int("axis", 1));
  return true;
}

bool reshape_shape_to_input(const NodeUpgrade& u) { return u.crosses(5) && ints_attr_to_input(u.g, u.n, "shape", 1); }

bool batchnorm_drop_spatial(const NodeUpgrade& u) {
  ir::Node& n = u.n;
  if (!(u.crosses(9) && n.has_attr("spatial"))) return false;
  if (n.attr_int("spatial", 1) != 1)
    fail(ErrorCode::kUnsupported, "node {}: BatchNormalization with spatial=0 cannot be upgraded", n.describe());
  n.remove_attr("spatial");
  return true;
}

bool reject_scan8(const NodeUpgrade& u) {
  if (u.crosses(9)) fail(ErrorCode::kUnsupported, "node {}: Scan-8 cannot be upgraded", u.n.describe());
  return false;
}

bool reject_string_cast(const NodeUpgrade& u) {
  const ir::Node& n = u.n;
  if (n.find_attr("to") && n.find_attr("to")->type == ir::AttrType::kString)
    fail(ErrorCode::kUnsupported, "node {}: Cast-1 with a string 'to' cannot be upgraded", n.describe());
  return false;
}

// Upsample-7/9 -> Resize(X, roi = none, scales) with the modes Upsample meant.
bool upsample_to_resize(const NodeUpgrade& u) {
  ir::Node& n = u.n;
  if (u.to < 10) return false;
  if (u.from < 7) fail(ErrorCode::kUnsupported, "node {}: Upsample-1 cannot be upgraded", n.describe());
  std::string mode = n.attr_string("mode", "nearest");
  if (mode == "bilinear") mode = "linear";
  ir::Value* scales = n.input(1);
  if (n.has_attr("scales")) {
    const std::vector<float> s = n.attr_floats("scales");
    scales = add_const(u.g, base_of(n, "scales"), Tensor::from_vector<float>({static_cast<int64_t>(s.size())}, s));
  }
  if (scales == nullptr) fail(ErrorCode::kInvalidModel, "node {}: Upsample without scales", n.describe());
  ir::Value* x = n.input(0);
  for (size_t i = n.inputs().size(); i-- > 0;) n.set_input(i, nullptr);
  n.set_input(0, x);
  n.set_input(1, nullptr);
  n.set_input(2, scales);
  while (!n.attributes().empty()) n.remove_attr(n.attributes().front().name);
  n.set_op_type("Resize");
  n.set_attr(ir::Attribute::make_string("mode", mode));
  n.set_attr(ir::Attribute::make_string("coordinate_transformation_mode", "asymmetric"));
  if (mode == "nearest") n.set_attr(ir::Attribute::make_string("nearest_mode", "floor"));
  return true;
}

// Resize-10 (X, scales) -> Resize-11 (X, roi = none, scales) with Resize-10's coordinates.
bool resize10_to_11(const NodeUpgrade& u) {
  ir::Node& n = u.n;
  if (!u.crosses(11)) return false;
  ir::Value* x = n.input(0);
  ir::Value* scales = n.input(1);
  n.set_input(0, x);
  n.set_input(1, nullptr);
  n.set_input(2, scales);
  n.set_attr(ir::Attribute::make_string("coordinate_transformation_mode", "asymmetric"));
  if (n.attr_string("mode", "nearest") == "nearest") n.set_attr(ir::Attribute::make_string("nearest_mode", "floor"));
  return true;
}

bool dropout_ratio_to_input(const NodeUpgrade& u) {
  ir::Node& n = u.n;
  if (!(u.crosses(12) && n.has_attr("ratio"))) return false;
  const float r = n.attr_float("ratio", 0.5f);
  n.remove_attr("ratio");
  while (n.inputs().size() < 1) n.add_input(nullptr);
  n.set_input(1, add_scalar_like(u.g, base_of(n, "ratio"), n.input(0), r));
  return true;
}

bool slice_attrs_to_inputs(const NodeUpgrade& u) {
  ir::Node& n = u.n;
  if (!(u.crosses(10) && n.has_attr("starts"))) return false;
  const bool has_axes = n.has_attr("axes");
  ints_attr_to_input(u.g, n, "starts", 1);
  ints_attr_to_input(u.g, n, "ends", 2);
  if (has_axes) ints_attr_to_input(u.g, n, "axes", 3);
  return true;
}

bool topk_k_to_input(const NodeUpgrade& u) {
  ir::Node& n = u.n;
  if (!(u.crosses(10) && n.has_attr("k"))) return false;
  const int64_t k = n.attr_int("k", 1);
  n.remove_attr("k");
  n.set_input(1, add_i64(u.g, base_of(n, "k"), {k}));
  return true;
}

bool clip_attrs_to_inputs(const NodeUpgrade& u) {
  ir::Node& n = u.n;
  if (!u.crosses(11)) return false;
  const bool has_min = n.has_attr("min"), has_max = n.has_attr("max");
  const float lo = n.attr_float("min", 0.0f), hi = n.attr_float("max", 0.0f);
  n.remove_attr("min");
  n.remove_attr("max");
  if (has_min) n.set_input(1, add_scalar_like(u.g, base_of(n, "min"), n.input(0), lo));
  if (has_max) {
    if (n.inputs().size() < 2) n.set_input(1, nullptr);
    n.set_input(2, add_scalar_like(u.g, base_of(n, "max"), n.input(0), hi));
  }
  return true;
}

bool pad_attrs_to_inputs(const NodeUpgrade& u) {
  ir::Node& n = u.n;
  if (!u.crosses(11)) return false;
  const char* pads_name = n.has_attr("pads") ? "pads" : "paddings";
  if (!n.has_attr(pads_name)) return false;
  const float value = n.attr_float("value", 0.0f);
  const bool has_value = n.has_attr("value");
  ints_attr_to_input(u.g, n, pads_name, 1);
  n.remove_attr("value");
  if (has_value && value != 0.0f) n.set_input(2, add_scalar_like(u.g, base_of(n, "value"), n.input(0), value));
  return true;
}

bool scatter_to_scatter_elements(const NodeUpgrade& u) {
  if (u.to < 11) return false;
  u.n.set_op_type("ScatterElements");
  return true;
}

bool axes_to_input_13(const NodeUpgrade& u) { return u.crosses(13) && ints_attr_to_input(u.g, u.n, "axes", 1); }

bool split_to_input(const NodeUpgrade& u) { return u.crosses(13) && ints_attr_to_input(u.g, u.n, "split", 1); }

bool reduce_axes_to_input_18(const NodeUpgrade& u) { return u.crosses(18) && ints_attr_to_input(u.g, u.n, "axes", 1); }

// Softmax-family before 13 coerces the input to 2-D at `axis`; from 13 on it works on one axis.
// Same result when `axis` is the last one (or the dims after it are 1), else made explicit.
bool softmax_coerce_to_13(const NodeUpgrade& u) {
  ir::Graph& g = u.g;
  ir::Node& n = u.n;
  if (!u.crosses(13)) return false;
  const std::string op = n.op_type();
  ir::Value* x = n.input(0);
  const int r = rank_of(x);
  int64_t axis = n.attr_int("axis", 1);
  if (r >= 0 && axis < 0) axis += r;
  if (r >= 0 && (axis == r - 1 || dims_after_are_one(x, static_cast<int>(axis)))) {
    n.set_attr(ir::Attribute::make_int("axis", axis));
    return true;
  }
  // Coerce to 2-D explicitly: Flatten(axis) -> op(axis=1) -> Reshape(Shape(x)).
  const std::string b = base_of(n, "coerce");
  ir::Node* shape = g.insert_node_before(&n, "Shape", {x}, {g.unique_name(b + "_shape")}, g.unique_name(b + "_Shape"));
  ir::Node* flat =
      g.insert_node_before(&n, "Flatten", {x}, {g.unique_name(b + "_flat")}, g.unique_name(b + "_Flatten"));
  flat->set_attr(ir::Attribute::make_int("axis", axis));
  ir::Node* sm =
      g.insert_node_before(&n, op, {flat->output(0)}, {g.unique_name(b + "_2d")}, g.unique_name(b + "_" + op));
  sm->set_attr(ir::Attribute::make_int("axis", 1));
  shape->output(0)->type().elem_type = DataType::kInt64;
  flat->output(0)->type().elem_type = x->type().elem_type;
  sm->output(0)->type().elem_type = x->type().elem_type;
  n.set_input(0, sm->output(0));
  n.set_input(1, shape->output(0));
  n.remove_attr("axis");
  n.set_op_type("Reshape");
  return true;
}

/// The ops a rule applies to (each op has at most one rule).
struct OpRule {
  std::set<std::string, std::less<>> ops;
  bool (*rule)(const NodeUpgrade&);
};

const OpRule kOpRules[] = {
    {kLegacyBroadcastOps, legacy_broadcast},
    {{"Gemm", "RNN", "GRU", "LSTM"}, gemm_rnn_drop_legacy_attrs},
    {{"Concat"}, concat_default_axis},
    {{"Reshape"}, reshape_shape_to_input},
    {{"BatchNormalization"}, batchnorm_drop_spatial},
    {{"Scan"}, reject_scan8},
    {{"Cast"}, reject_string_cast},
    {{"Upsample"}, upsample_to_resize},
    {{"Resize"}, resize10_to_11},
    {{"Dropout"}, dropout_ratio_to_input},
    {{"Slice"}, slice_attrs_to_inputs},
    {{"TopK"}, topk_k_to_input},
    {{"Clip"}, clip_attrs_to_inputs},
    {{"Pad"}, pad_attrs_to_inputs},
    {{"Scatter"}, scatter_to_scatter_elements},
    {{"Squeeze", "Unsqueeze", "ReduceSum"}, axes_to_input_13},
    {{"Split"}, split_to_input},
    {kReduceOps, reduce_axes_to_input_18},
    {{"Softmax", "LogSoftmax", "Hardmax"}, softmax_coerce_to_13},
};

// One node; returns true if it was changed.
bool upgrade_node(ir::Graph& g, ir::Node& n, int64_t from, int64_t to) {
  const NodeUpgrade u{g, n, from, to};
  bool changed = false;
  if (u.crosses(6) && n.has_attr("consumed_inputs")) {
    n.remove_attr("consumed_inputs");
    changed = true;
  }
  if (u.crosses(7) && n.has_attr("is_test")) {
    n.remove_attr("is_test");
    changed = true;
  }
  for (const OpRule& r : kOpRules)
    if (r.ops.count(n.op_type())) {
      const bool rewritten = r.rule(u);
      return rewritten || changed;
    }
  return changed;
}

size_t upgrade_graph(ir::Graph& g, int64_t from, int64_t to) {
  size_t n = 0;
  std::vector<ir::Node*> nodes;
  for (const auto& node : g.nodes()) nodes.push_back(node.get());
  for (ir::Node* node : nodes) {
    if (!node->domain().empty()) continue;
    n += with_context(fmt::format("while upgrading node {} from opset {} to {}", node->describe(), from, to),
                      [&] { return upgrade_node(g, *node, from, to) ? 1 : 0; });
  }
  return n;
}

}  // namespace

int64_t min_ir_version_for_opset(int64_t opset) {
  if (opset <= 8) return 3;
  if (opset == 9) return 4;
  if (opset == 10) return 5;
  if (opset == 11) return 6;
  if (opset <= 14) return 7;
  if (opset <= 18) return 8;
  if (opset <= 20) return 9;
  return 10;
}

size_t upgrade_opset(ir::Model& model, const PassOptions& options) {
  const int64_t from = model.opset("");
  const int64_t to = options.target_opset;
  if (from == 0 || from >= to) return 0;
  const size_t n = for_each_graph(*model.graph, [&](ir::Graph& g) { return upgrade_graph(g, from, to); });
  model.set_opset("", to);
  // An IR 3 model lists its initializers as graph inputs because IR 3 requires it; they are
  // constants. From IR 4 on, an initializer that is also an input is an overridable default, which
  // runtimes must not treat as constant (ONNX Runtime then skips its NCHWc convolutions, and
  // constant folding): raising the IR version must not turn constants into inputs.
  size_t dropped = 0;
  if (model.ir_version < 4 && min_ir_version_for_opset(to) >= 4) dropped = remove_initializer_inputs(model);
  model.ir_version = std::max(model.ir_version, min_ir_version_for_opset(to));
  return n + dropped + 1;  // the opset import itself is a rewrite even when no node needed one
}

}  // namespace qtool::passes
