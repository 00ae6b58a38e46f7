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

// One node; returns true if it was changed.
bool upgrade_node(ir::Graph& g, ir::Node& n, int64_t from, int64_t to) {
  auto crosses = [&](int64_t v) { return from < v && v <= to; };
  const std::string& op = n.op_type();
  bool changed = false;
  if (crosses(6) && n.has_attr("consumed_inputs")) {
    n.remove_attr("consumed_inputs");
    changed = true;
  }
  if (crosses(7) && n.has_attr("is_test")) {
    n.remove_attr("is_test");
    changed = true;
  }
  if (crosses(7) && kLegacyBroadcastOps.count(op) && (n.has_attr("broadcast") || n.has_attr("axis"))) {
    const bool bcast = n.attr_int("broadcast", 0) != 0;
    if (bcast && n.has_attr("axis")) {
      const int ra = rank_of(n.input(0));
      ir::Value* b = n.input(1);
      const int rb = rank_of(b);
      int64_t axis = n.attr_int("axis", 0);
      if (ra < 0 || rb < 0) fail(ErrorCode::kUnsupported, "node {}: legacy broadcast with axis needs known ranks", n.describe());
      if (axis < 0) axis += ra;
      const int64_t trailing = ra - axis - rb;
      if (trailing > 0) {
        if (b->initializer() == nullptr)
          fail(ErrorCode::kUnsupported, "node {}: legacy broadcast at axis {} of a non-constant operand", n.describe(), axis);
        Shape s = b->initializer()->shape();
        for (int64_t i = 0; i < trailing; ++i) s.push_back(1);
        n.set_input(1, add_const(g, base_of(n, "B"), b->initializer()->reshaped(s)));
      }
    }
    n.remove_attr("broadcast");
    n.remove_attr("axis");
    changed = true;
  }
  if ((op == "Gemm" || op == "RNN" || op == "GRU" || op == "LSTM") && crosses(7)) {
    if (n.has_attr("broadcast")) n.remove_attr("broadcast"), changed = true;
    if (n.has_attr("output_sequence")) n.remove_attr("output_sequence"), changed = true;
  }
  if (op == "Concat" && crosses(4) && !n.has_attr("axis")) {
    n.set_attr(ir::Attribute::make_int("axis", 1));
    changed = true;
  }
  if (op == "Reshape" && crosses(5)) changed |= ints_attr_to_input(g, n, "shape", 1);
  if (op == "BatchNormalization" && crosses(9) && n.has_attr("spatial")) {
    if (n.attr_int("spatial", 1) != 1)
      fail(ErrorCode::kUnsupported, "node {}: BatchNormalization with spatial=0 cannot be upgraded", n.describe());
    n.remove_attr("spatial");
    changed = true;
  }
  if (op == "Scan" && crosses(9)) fail(ErrorCode::kUnsupported, "node {}: Scan-8 cannot be upgraded", n.describe());
  if (op == "Cast" && n.find_attr("to") && n.find_attr("to")->type == ir::AttrType::kString)
    fail(ErrorCode::kUnsupported, "node {}: Cast-1 with a string 'to' cannot be upgraded", n.describe());
  if (op == "Upsample" && to >= 10) {
    if (from < 7) fail(ErrorCode::kUnsupported, "node {}: Upsample-1 cannot be upgraded", n.describe());
    std::string mode = n.attr_string("mode", "nearest");
    if (mode == "bilinear") mode = "linear";
    ir::Value* scales = n.input(1);
    if (n.has_attr("scales")) {
      const std::vector<float> s = n.attr_floats("scales");
      scales = add_const(g, base_of(n, "scales"), Tensor::from_vector<float>({static_cast<int64_t>(s.size())}, s));
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
  if (op == "Resize" && crosses(11)) {
    ir::Value* x = n.input(0);
    ir::Value* scales = n.input(1);
    n.set_input(0, x);
    n.set_input(1, nullptr);
    n.set_input(2, scales);
    n.set_attr(ir::Attribute::make_string("coordinate_transformation_mode", "asymmetric"));
    if (n.attr_string("mode", "nearest") == "nearest") n.set_attr(ir::Attribute::make_string("nearest_mode", "floor"));
    changed = true;
  }
  if (op == "Dropout" && crosses(12) && n.has_attr("ratio")) {
    const float r = n.attr_float("ratio", 0.5f);
    n.remove_attr("ratio");
    while (n.inputs().size() < 1) n.add_input(nullptr);
    n.set_input(1, add_scalar_like(g, base_of(n, "ratio"), n.input(0), r));
    changed = true;
  }
  if (op == "Slice" && crosses(10) && n.has_attr("starts")) {
    const bool has_axes = n.has_attr("axes");
    ints_attr_to_input(g, n, "starts", 1);
    ints_attr_to_input(g, n, "ends", 2);
    if (has_axes) ints_attr_to_input(g, n, "axes", 3);
    changed = true;
  }
  if (op == "TopK" && crosses(10) && n.has_attr("k")) {
    const int64_t k = n.attr_int("k", 1);
    n.remove_attr("k");
    n.set_input(1, add_i64(g, base_of(n, "k"), {k}));
    changed = true;
  }
  if (op == "Clip" && crosses(11)) {
    const bool has_min = n.has_attr("min"), has_max = n.has_attr("max");
    const float lo = n.attr_float("min", 0.0f), hi = n.attr_float("max", 0.0f);
    n.remove_attr("min");
    n.remove_attr("max");
    if (has_min) n.set_input(1, add_scalar_like(g, base_of(n, "min"), n.input(0), lo));
    if (has_max) {
      if (n.inputs().size() < 2) n.set_input(1, nullptr);
      n.set_input(2, add_scalar_like(g, base_of(n, "max"), n.input(0), hi));
    }
    changed = true;
  }
  if (op == "Pad" && crosses(11)) {
    const char* pads_name = n.has_attr("pads") ? "pads" : "paddings";
    if (n.has_attr(pads_name)) {
      const float value = n.attr_float("value", 0.0f);
      const bool has_value = n.has_attr("value");
      ints_attr_to_input(g, n, pads_name, 1);
      n.remove_attr("value");
      if (has_value && value != 0.0f) n.set_input(2, add_scalar_like(g, base_of(n, "value"), n.input(0), value));
      changed = true;
    }
  }
  if (op == "Scatter" && to >= 11) {
    n.set_op_type("ScatterElements");
    changed = true;
  }
  if ((op == "Squeeze" || op == "Unsqueeze" || op == "ReduceSum") && crosses(13)) changed |= ints_attr_to_input(g, n, "axes", 1);
  if (op == "Split" && crosses(13)) changed |= ints_attr_to_input(g, n, "split", 1);
  if (kReduceOps.count(op) && crosses(18)) changed |= ints_attr_to_input(g, n, "axes", 1);
  if ((op == "Softmax" || op == "LogSoftmax" || op == "Hardmax") && crosses(13)) {
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
    ir::Node* flat = g.insert_node_before(&n, "Flatten", {x}, {g.unique_name(b + "_flat")}, g.unique_name(b + "_Flatten"));
    flat->set_attr(ir::Attribute::make_int("axis", axis));
    ir::Node* sm = g.insert_node_before(&n, op, {flat->output(0)}, {g.unique_name(b + "_2d")}, g.unique_name(b + "_" + op));
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
