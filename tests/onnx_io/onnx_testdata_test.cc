// Breadth test on ONNX's own backend test models (Debian package libonnx-testdata): every model loads
// (or is refused with kUnsupported naming what is missing), serializes and parses back to the same
// graph, and the test_data_set tensors (many storage forms and dtypes) read as TensorProto files.
#include <gtest/gtest.h>

#include <filesystem>

#include <spdlog/spdlog.h>

#include "qtool/onnx_io/onnx_io.h"
#include "test_util.h"

namespace qtool::onnx_io {
namespace {

namespace fs = std::filesystem;
constexpr const char* kTestData = "/usr/share/libonnx-testdata/data";

size_t count_nodes(const ir::Graph& g) {
  size_t n = g.num_nodes();
  for (const auto& node : g.nodes()) {
    for (const ir::Graph* sg : node->subgraphs()) n += count_nodes(*sg);
  }
  return n;
}

TEST(OnnxTestData, EveryBackendModelLoadsAndRoundTrips) {
  if (!fs::exists(kTestData)) GTEST_SKIP() << "libonnx-testdata is not installed";
  std::vector<std::string> models;
  for (const auto& e : fs::recursive_directory_iterator(kTestData)) {
    if (e.path().filename() == "model.onnx") models.push_back(e.path().string());
  }
  std::sort(models.begin(), models.end());
  const auto level = spdlog::get_level();
  spdlog::set_level(spdlog::level::err);  // opset-6 and shape-inference warnings are expected here
  ASSERT_GT(models.size(), 1000u);
  size_t loaded = 0, unsupported = 0, tensors = 0;
  std::map<std::string, size_t> reasons;
  for (const auto& path : models) {
    SCOPED_TRACE(path);
    ir::Model m;
    try {
      m = load_model(path);
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kUnsupported) << e.what();
      ++unsupported;
      ++reasons[e.message().substr(0, 60)];
      continue;
    }
    ++loaded;
    ir::Model back = parse_model(serialize_model(m), path + " (re-serialized)", fs::path(path).parent_path().string());
    EXPECT_EQ(count_nodes(*back.graph), count_nodes(*m.graph));
    EXPECT_EQ(back.graph->initializers().size(), m.graph->initializers().size());
    EXPECT_EQ(serialize_model(back), serialize_model(m));  // a fixed point after one round
    const fs::path ds = fs::path(path).parent_path() / "test_data_set_0";
    if (!fs::exists(ds)) continue;
    for (const auto& f : fs::directory_iterator(ds)) {
      const bool is_input = f.path().filename().string().rfind("input_", 0) == 0;
      const size_t k = is_input ? std::stoul(f.path().stem().string().substr(6)) : 0;
      // Only inputs whose graph input is a plain tensor hold a TensorProto (others: Sequence/Optional).
      if (!is_input) continue;
      const auto rt = m.graph->runtime_inputs();
      if (k >= rt.size() || !rt[k]->type().opaque_type.empty()) continue;
      std::string name;
      Tensor t = load_tensor_pb(f.path().string(), &name);
      // ONNX's bfloat16 test inputs are stored as uint16 tensors (a known quirk of its test data).
      if (!(t.dtype() == DataType::kUint16 && rt[k]->type().elem_type == DataType::kBFloat16)) {
        EXPECT_EQ(t.dtype(), rt[k]->type().elem_type) << f.path();
      }
      ++tensors;
    }
  }
  spdlog::set_level(level);
  for (const auto& [r, n] : reasons) std::printf("unsupported (%zu): %s\n", n, r.c_str());
  std::printf("%zu models loaded, %zu unsupported, %zu input tensors read\n", loaded, unsupported, tensors);
  EXPECT_GT(loaded, models.size() * 95 / 100);
}

}  // namespace
}  // namespace qtool::onnx_io
