// Test helper for the NN kernel tests: runs one node through the real Executor.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "qtool/ir/graph.h"
#include "qtool/runtime/executor.h"

namespace qtool::testing {

/// A copyable attribute description (ir::Attribute is move-only), turned into one by run_node.
struct AttrSpec {
  std::string name{};
  ir::AttrType type = ir::AttrType::kInt;
  int64_t i = 0;
  float f = 0;
  std::string s{};
  std::vector<int64_t> ints{};
  std::vector<float> floats{};
  std::vector<std::string> strings{};
  ir::Attribute make() const {
    ir::Attribute a;
    a.name = name;
    a.type = type;
    a.i = i;
    a.f = f;
    a.s = s;
    a.ints = ints;
    a.floats = floats;
    a.strings = strings;
    return a;
  }
};

/// One node to run: op, domain, opset, inputs (an undefined Tensor omits that input),
/// attributes and the number of outputs (names in `omit` are left out).
struct NodeRun {
  std::string op{};
  std::vector<Tensor> inputs{};
  std::vector<AttrSpec> attrs{};
  int outputs = 1;
  int64_t opset = 17;
  std::string domain{};
  std::vector<int> omit_outputs{};
  int threads = 1;
};

/// Builds a one-node model (inputs fed as graph inputs) and returns the node's outputs
/// (undefined tensors for omitted outputs).
inline std::vector<Tensor> run_node(const NodeRun& r) {
  ir::Model model;
  model.set_opset("", r.opset);
  if (!r.domain.empty()) model.set_opset(r.domain, 1);
  ir::Graph& g = *model.graph;
  std::vector<ir::Value*> ins;
  std::map<std::string, Tensor> feeds;
  for (size_t i = 0; i < r.inputs.size(); ++i) {
    if (!r.inputs[i].defined()) {
      ins.push_back(nullptr);
      continue;
    }
    ir::TypeInfo ti;
    ti.elem_type = r.inputs[i].dtype();
    ti.has_shape = true;
    for (int64_t d : r.inputs[i].shape()) ti.dims.push_back(ir::Dim{d, ""});
    const std::string name = "in" + std::to_string(i);
    ins.push_back(g.add_input(name, ti));
    feeds[name] = r.inputs[i];
  }
  std::vector<std::string> outs;
  for (int j = 0; j < r.outputs; ++j) {
    bool omit = false;
    for (int o : r.omit_outputs) omit = omit || o == j;
    outs.push_back(omit ? "" : "out" + std::to_string(j));
  }
  ir::Node* n = g.add_node(r.op, ins, outs, "node0", r.domain);
  for (const AttrSpec& a : r.attrs) n->set_attr(a.make());
  for (ir::Value* v : n->outputs()) {
    if (v) g.add_output(v);
  }
  runtime::ExecutorOptions opt;
  opt.threads = r.threads;
  runtime::Executor ex(model, opt);
  std::vector<Tensor> got = ex.run(feeds);
  std::vector<Tensor> result(r.outputs);
  size_t k = 0;
  for (int j = 0; j < r.outputs; ++j) {
    if (!outs[j].empty()) result[j] = got.at(k++);
  }
  return result;
}

/// float32 tensor from values.
inline Tensor ft(Shape s, std::vector<float> v) { return Tensor::from_vector<float>(std::move(s), v); }

/// Values of a float tensor.
inline std::vector<float> fv(const Tensor& t) {
  Tensor f = t.to_float();
  return std::vector<float>(f.data<float>(), f.data<float>() + f.numel());
}

/// Deterministic pseudo-random floats in [-1, 1).
inline std::vector<float> rnd(int64_t n, uint32_t seed) {
  std::vector<float> v(static_cast<size_t>(n));
  uint32_t s = seed * 2654435761u + 12345u;
  for (auto& x : v) {
    s = s * 1664525u + 1013904223u;
    x = static_cast<float>((s >> 8) & 0xFFFF) / 32768.0f - 1.0f;
  }
  return v;
}

inline AttrSpec ai(const char* n, int64_t v) { return {.name = n, .type = ir::AttrType::kInt, .i = v}; }
inline AttrSpec af(const char* n, float v) { return {.name = n, .type = ir::AttrType::kFloat, .f = v}; }
inline AttrSpec as(const char* n, const char* v) { return {.name = n, .type = ir::AttrType::kString, .s = v}; }
inline AttrSpec ais(const char* n, std::vector<int64_t> v) { return {.name = n, .type = ir::AttrType::kInts, .ints = std::move(v)}; }
inline AttrSpec afs(const char* n, std::vector<float> v) { return {.name = n, .type = ir::AttrType::kFloats, .floats = std::move(v)}; }
inline AttrSpec astrs(const char* n, std::vector<std::string> v) {
  return {.name = n, .type = ir::AttrType::kStrings, .strings = std::move(v)};
}

}  // namespace qtool::testing

/// Element-wise EXPECT_NEAR of a tensor against expected values.
#define EXPECT_VALUES_NEAR(tensor, expected, tol)                                           \
  do {                                                                                      \
    const std::vector<float> got_ = ::qtool::testing::fv(tensor);                           \
    const std::vector<float> exp_ = (expected);                                             \
    ASSERT_EQ(got_.size(), exp_.size());                                                    \
    for (size_t i_ = 0; i_ < got_.size(); ++i_) EXPECT_NEAR(got_[i_], exp_[i_], (tol)) << "at " << i_; \
  } while (0)
