// qtool quantize --bits 8 --cle --bias-correction: the actions are reported, the output loads in
// ONNX Runtime and agrees with qtool's executor.
#include <gtest/gtest.h>

#include <map>

#include <cmath>
#include <filesystem>
#include <random>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "qtool/core/npy.h"
#include "qtool/onnx_io/onnx_io.h"
#include "qtool/runtime/executor.h"
#include "test_util.h"

namespace qtool {
namespace {

Tensor random_tensor(const Shape& shape, std::mt19937& rng, float lo, float hi) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(shape_numel(shape));
  for (float& x : v) x = d(rng);
  return Tensor::from_vector<float>(shape, v);
}

ir::Value* init(ir::Graph& g, const std::string& name, Tensor t) {
  ir::Value* v = g.add_initializer(name, std::move(t));
  v->type().elem_type = DataType::kFloat;
  return v;
}

// x [1,3,8,8] -> Conv 3x3 (8 ch, channel c scaled by 3^(c-4)) -> Relu -> depthwise 3x3 -> Relu ->
// Conv 1x1 (6 ch) -> GlobalAveragePool -> Flatten -> y [1,6]: two CLE pairs, one depthwise.
ir::Model small_cnn() {
  std::mt19937 rng(17);
  ir::Model m;
  m.set_opset("", 13);
  ir::Graph& g = *m.graph;
  ir::TypeInfo t;
  t.elem_type = DataType::kFloat;
  t.has_shape = true;
  t.dims = {ir::Dim{1, ""}, ir::Dim{3, ""}, ir::Dim{8, ""}, ir::Dim{8, ""}};
  ir::Value* x = g.add_input("x", t);
  Tensor w1 = random_tensor({8, 3, 3, 3}, rng, -1, 1);
  for (int64_t c = 0; c < 8; ++c)
    for (int64_t k = 0; k < 27; ++k) w1.mutable_data<float>()[c * 27 + k] *= static_cast<float>(std::pow(3.0, c - 4.0));
  ir::Node* c1 = g.add_node("Conv", {x, init(g, "w1", w1), init(g, "b1", random_tensor({8}, rng, -0.2f, 0.2f))}, {"c1"}, "c1");
  c1->set_attr(ir::Attribute::make_ints("pads", {1, 1, 1, 1}));
  ir::Node* r1 = g.add_node("Relu", {c1->output(0)}, {"r1"}, "r1");
  ir::Node* dw = g.add_node("Conv", {r1->output(0), init(g, "w2", random_tensor({8, 1, 3, 3}, rng, -1, 1)),
                                     init(g, "b2", random_tensor({8}, rng, -0.2f, 0.2f))}, {"dw"}, "dw");
  dw->set_attr(ir::Attribute::make_int("group", 8));
  dw->set_attr(ir::Attribute::make_ints("pads", {1, 1, 1, 1}));
  ir::Node* r2 = g.add_node("Relu", {dw->output(0)}, {"r2"}, "r2");
  ir::Node* c3 = g.add_node("Conv", {r2->output(0), init(g, "w3", random_tensor({6, 8, 1, 1}, rng, -1, 1)),
                                     init(g, "b3", random_tensor({6}, rng, -0.2f, 0.2f))}, {"c3"}, "c3");
  ir::Node* gap = g.add_node("GlobalAveragePool", {c3->output(0)}, {"gap"}, "gap");
  ir::Node* fl = g.add_node("Flatten", {gap->output(0)}, {"y"}, "flatten");
  fl->output(0)->type().elem_type = DataType::kFloat;
  g.add_output(fl->output(0));
  return m;
}

TEST(CliQuantizeCleBiasCorrection, SmallCnnReportsActionsAndRunsInOrt) {
  QTOOL_REQUIRE_ORT();
  testing::TempDir dir;
  onnx_io::save_model(small_cnn(), dir.file("m.onnx"));
  std::filesystem::create_directories(dir.file("calib"));
  std::mt19937 rng(2);
  for (int i = 0; i < 40; ++i)
    write_npy(dir.file(fmt::format("calib/{:03d}.npy", i)), random_tensor({1, 3, 8, 8}, rng, 0, 1));
  const std::string out = dir.file("q.onnx");
  const auto r = testing::run_command(fmt::format("{} quantize {} --bits 8 --calib {} --cle --bias-correction --json -o {}",
                                                  testing::qtool_bin(), dir.file("m.onnx"), dir.file("calib"), out));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto doc = nlohmann::json::parse(r.out);
  std::string all;
  for (const auto& w : doc["actions"]) all += w.get<std::string>() + "\n";
  EXPECT_NE(all.find("CLE: 2 conv pairs equalized (2 with a depthwise conv"), std::string::npos) << all;
  EXPECT_NE(all.find("bias correction: 3 layers corrected on 24 calibration samples"), std::string::npos) << all;
  EXPECT_EQ(doc["settings"]["cle"], "true") << doc["settings"].dump();
  EXPECT_EQ(doc["settings"]["bias-correction"], "true");
  // The report's timings break the static run into its phases, each within the whole.
  std::map<std::string, double> phases;
  for (const auto& t : doc["timings"]) phases[t["phase"].get<std::string>()] = t["seconds"].get<double>();
  for (const char* p : {"quantize", "quantize: calibrate", "quantize: emit", "quantize: bias correction", "quantize: guard"})
    ASSERT_TRUE(phases.count(p)) << p << " " << doc["timings"].dump();
  EXPECT_LE(phases["quantize: calibrate"] + phases["quantize: emit"] + phases["quantize: bias correction"] +
                phases["quantize: guard"],
            phases["quantize"] + 1e-3);

  // The emitted model: int8 Conv weights, int32 biases; ONNX Runtime and qtool's executor agree
  // to within one step of the last quantized activation.
  const ir::Model q = onnx_io::load_model(out);
  int int32_biases = 0;
  double max_scale = 0;
  for (const auto& n : q.graph->nodes()) {
    if (n->op_type() == "DequantizeLinear" && n->input(0)->initializer() &&
        n->input(0)->initializer()->dtype() == DataType::kInt32)
      ++int32_biases;
    if (n->op_type() == "QuantizeLinear") max_scale = std::max(max_scale, n->input(1)->initializer()->get_as_double(0));
  }
  EXPECT_EQ(int32_biases, 3);
  const Tensor x = read_npy(dir.file("calib/039.npy"));
  const auto ort = testing::ort_run(out, {{"x", x}});
  ASSERT_EQ(ort.count("y"), 1u);
  const Tensor ours = runtime::Executor(q).run({{"x", x}})[0];  // 16 of the 40 samples are the guard's
  EXPECT_LE(testing::max_abs_error(ours, ort.at("y")), max_scale);
  // And the quantized model still computes the float model's function.
  const ir::Model fp32 = small_cnn();
  const Tensor ref = runtime::Executor(fp32).run({{"x", x}})[0];
  double peak = 0;
  for (int64_t i = 0; i < ref.numel(); ++i) peak = std::max(peak, std::fabs(ref.get_as_double(i)));
  EXPECT_LT(testing::max_abs_error(ours, ref), 0.05 * peak);
}

TEST(CliQuantizeCleBiasCorrection, BiasCorrectionDefaultsOnForDepthwiseModels) {
  testing::TempDir dir;
  onnx_io::save_model(small_cnn(), dir.file("m.onnx"));
  std::filesystem::create_directories(dir.file("calib"));
  std::mt19937 rng(2);
  for (int i = 0; i < 8; ++i) write_npy(dir.file(fmt::format("calib/{:03d}.npy", i)), random_tensor({1, 3, 8, 8}, rng, 0, 1));
  auto actions = [&](const std::string& extra) {
    const auto r = testing::run_command(fmt::format("{} quantize {} --bits 8 --calib {} --no-guard --json {} -o {}",
                                                    testing::qtool_bin(), dir.file("m.onnx"), dir.file("calib"), extra,
                                                    dir.file("q.onnx")));
    EXPECT_EQ(r.exit_code, 0) << r.err;
    const auto doc = nlohmann::json::parse(r.out);
    std::string all = doc["settings"]["bias-correction"].get<std::string>() + "\n";
    for (const auto& w : doc["actions"]) all += w.get<std::string>() + "\n";
    return all;
  };
  const std::string per_channel = actions(""), per_tensor = actions("--per-tensor"),
                    off = actions("--per-tensor --no-bias-correction");
  EXPECT_NE(per_channel.find("bias correction: 3 layers corrected on 8 calibration samples"), std::string::npos)
      << per_channel;
  EXPECT_NE(per_tensor.find("bias correction: 3 layers corrected on 8 calibration samples"), std::string::npos)
      << per_tensor;
  EXPECT_EQ(off.find("bias correction:"), std::string::npos) << off;
  EXPECT_EQ(off.substr(0, 6), "false\n");
  EXPECT_EQ(per_tensor.substr(0, 5), "auto ");
  // Ranges computed before equalization do not fit the equalized model: refused.
  const auto cal = testing::run_command(fmt::format("{} calibrate {} --calib {} -o {}", testing::qtool_bin(),
                                                    dir.file("m.onnx"), dir.file("calib"), dir.file("r.json")));
  ASSERT_EQ(cal.exit_code, 0) << cal.err;
  const auto refused = testing::run_command(fmt::format("{} quantize {} --ranges {} --cle -o {}", testing::qtool_bin(),
                                                        dir.file("m.onnx"), dir.file("r.json"), dir.file("q2.onnx")));
  EXPECT_EQ(refused.exit_code, 2);
  EXPECT_NE(refused.err.find("calibrate with --calib instead of --ranges"), std::string::npos) << refused.err;
}

}  // namespace
}  // namespace qtool
