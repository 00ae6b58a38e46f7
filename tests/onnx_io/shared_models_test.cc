// Must-show tests on the real models in $QTOOL_SHARED/models: every model loads, round-trips through
// save/load to a file ONNX Runtime runs with bit-identical outputs, a generated external-data Llama
// round-trips inline and external, and corrupted files are refused with a qtool::Error, never a crash.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <random>

#include <spdlog/spdlog.h>

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

namespace qtool::onnx_io {
namespace {

// Loads `bytes` as a model; returns true if loaded, false if refused with a qtool::Error. Any other
// exception fails the test (it would reach the user as an internal error).
bool loads_or_refuses(std::string_view bytes, const std::string& what, const std::string& base_dir) {
  try {
    ir::Model m = parse_model(bytes, what, base_dir);
    m.graph->validate();
    return true;
  } catch (const Error& e) {
    EXPECT_FALSE(std::string(e.what()).empty());
    EXPECT_NE(e.code(), ErrorCode::kInternal) << what << ": " << e.what();
    return false;
  } catch (const std::exception& e) {
    ADD_FAILURE() << what << ": non-qtool exception " << e.what();
    return false;
  }
}

// (d) truncations and seeded byte flips of every shared model: loaded or refused, never a crash.
TEST(SharedModels, CorruptedFilesAreRefusedCleanly) {
  QTOOL_REQUIRE_SHARED();
  std::mt19937_64 rng(20261126);
  const auto level = spdlog::get_level();
  spdlog::set_level(spdlog::level::err);  // shape-inference warnings on mutated files are expected
  size_t loaded = 0, refused = 0;
  for (const auto& path : shared_models()) {
    SCOPED_TRACE(path);
    const std::string bytes = read_file(path);
    const std::string base = fs::path(path).parent_path().string();
    // Files over 2 MB (SqueezeNet, MobileNet) get fewer variants to keep the ASan run well under a minute.
    const bool big = bytes.size() > (2u << 20);
    // QTOOL_CORRUPTION_SCALE=N multiplies the byte-flip variants for longer local fuzzing runs.
    const char* scale_env = std::getenv("QTOOL_CORRUPTION_SCALE");
    const int scale = scale_env ? std::max(1, std::atoi(scale_env)) : 1;
    const int truncations = big ? 32 : 64;
    const int flips = (big ? 80 : 200) * scale;
    for (int k = 0; k < truncations; ++k) {
      const size_t cut = static_cast<size_t>((static_cast<double>(k) / truncations) * static_cast<double>(bytes.size()));
      const bool ok = loads_or_refuses(std::string_view(bytes).substr(0, cut), fmt::format("{}[:{}]", path, cut), base);
      (ok ? loaded : refused)++;
    }
    for (int k = 0; k < flips; ++k) {
      std::string mutated = bytes;
      const int n = 1 + static_cast<int>(rng() % 8);
      for (int j = 0; j < n; ++j) {
        // Half of the flips hit the first 4 KiB, where the graph structure of most models lives.
        const size_t range = (j % 2 == 0) ? std::min<size_t>(bytes.size(), 4096) : bytes.size();
        mutated[rng() % range] ^= static_cast<char>(1 + rng() % 255);
      }
      const bool ok = loads_or_refuses(mutated, fmt::format("{} flip variant {}", path, k), base);
      (ok ? loaded : refused)++;
    }
  }
  // Both outcomes occur: truncation at 0 is always refused, flips in weights usually load.
  EXPECT_GT(refused, 100u);
  EXPECT_GT(loaded, 10u);
  spdlog::set_level(level);
  std::printf("corruption: %zu variants loaded, %zu refused with an error\n", loaded, refused);
}

std::string python() { return fs::exists("/usr/bin/python3") ? "/usr/bin/python3" : "python3"; }

// (c) a generated Llama (125m preset) with external data: loads mapped, round-trips inline and external
// with identical initializer bytes, and ONNX Runtime runs the re-saved external model identically.
TEST(SharedModels, LlamaExternalDataRoundTrip) {
  QTOOL_REQUIRE_SHARED();
  TempDir dir;
  const std::string src = dir.file("llama.onnx");
  auto gen = qtool::testing::run_command(fmt::format("{} '{}' --preset 125m --external-data --seed 1 '{}'", python(),
                                                     qtool::testing::shared_path("tools/make_llama_onnx.py"), src));
  ASSERT_EQ(gen.exit_code, 0) << gen.err;
  ASSERT_TRUE(fs::exists(src + ".data"));

  ir::Model m = load_model(src);
  size_t mapped = 0, bytes = 0;
  for (const ir::Value* v : m.graph->initializers()) {
    mapped += v->initializer()->is_mapped();
    bytes += v->initializer()->nbytes();
  }
  EXPECT_GT(mapped, 80u);  // 12 layers x 7 projections + embedding + lm_head
  EXPECT_GT(bytes, 500u << 20);

  auto same_initializers = [&](const ir::Model& other) {
    ASSERT_EQ(other.graph->initializers().size(), m.graph->initializers().size());
    for (const ir::Value* v : m.graph->initializers()) {
      const ir::Value* w = other.graph->find_value(v->name());
      ASSERT_TRUE(w && w->is_initializer()) << v->name();
      ASSERT_TRUE(tensors_equal(*v->initializer(), *w->initializer())) << v->name();
    }
  };

  // Inline: one 538 MB protobuf, no data file.
  const std::string inl = dir.file("inline.onnx");
  SaveOptions never;
  never.external_data = SaveOptions::ExternalData::kNever;
  save_model(m, inl, never);
  EXPECT_FALSE(fs::exists(inl + ".data"));
  EXPECT_GT(fs::file_size(inl), 500u << 20);
  {
    ir::Model back = load_model(inl);
    same_initializers(back);
  }

  // External: tensors >= 1 KiB in "ext.onnx.data" at aligned offsets.
  const std::string ext = dir.file("ext.onnx");
  SaveOptions always;
  always.external_data = SaveOptions::ExternalData::kAlways;
  save_model(m, ext, always);
  ASSERT_TRUE(fs::exists(ext + ".data"));
  EXPECT_LT(fs::file_size(ext), 1u << 20);
  {
    ir::Model back = load_model(ext);
    same_initializers(back);
    size_t back_mapped = 0;
    for (const ir::Value* v : back.graph->initializers()) back_mapped += v->initializer()->is_mapped();
    EXPECT_EQ(back_mapped, mapped);
  }

  QTOOL_REQUIRE_ORT();
  std::map<std::string, Tensor> feeds{
      {"input_ids", Tensor::from_vector<int64_t>({1, 6}, {1, 345, 7, 2901, 13, 88})}};
  auto a = qtool::testing::ort_run(src, feeds);
  auto b = qtool::testing::ort_run(ext, feeds);
  ASSERT_TRUE(a.count("logits") && b.count("logits"));
  EXPECT_EQ(a.at("logits").shape(), (Shape{1, 6, 32000}));
  EXPECT_TRUE(tensors_equal(a.at("logits"), b.at("logits")));
}

}  // namespace
}  // namespace qtool::onnx_io
