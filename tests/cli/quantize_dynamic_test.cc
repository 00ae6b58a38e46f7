// `qtool quantize --mode dynamic`: a dynamic model of every shared model loads and runs in ONNX
// Runtime 1.30, which computes what qtool's executor computes (the integer parts exactly: uint8
// weights run ONNX Runtime's u8u8 kernels, exact on every CPU); options that do not apply are
// refused; the floor is judged when samples are given.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "qtool/core/npy.h"
#include "qtool/onnx_io/onnx_io.h"
#include "graph_builders.h"
#include "qtool/runtime/executor.h"
#include "test_util.h"

namespace qtool {
namespace {

namespace fs = std::filesystem;

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

struct Shared {
  const char* model;     ///< under ../shared/models
  const char* test_set;  ///< its test_data_set folder (inputs input_K.pb)
  const char* name;
  const char* bits = "8";
};

class DynamicShared : public ::testing::TestWithParam<Shared> {};

TEST_P(DynamicShared, RunsInOnnxRuntimeAsInQtool) {
  QTOOL_REQUIRE_SHARED();
  QTOOL_REQUIRE_ORT();
  testing::TempDir d;
  const std::string model = testing::shared_path(std::string("models/") + GetParam().model);
  const auto q = testing::run_command(
      fmt::format("{} quantize {} --bits {} --mode dynamic --json -o {}", testing::qtool_bin(), model, GetParam().bits,
                  d.file("dyn.onnx")));
  ASSERT_EQ(q.exit_code, 0) << q.err;
  const auto rep = nlohmann::json::parse(q.out);
  EXPECT_LT(rep["size"]["output_file_bytes"].get<double>(), 0.4 * static_cast<double>(fs::file_size(model)));

  const ir::Model m = onnx_io::load_model(d.file("dyn.onnx"));
  // Nodes of an op type in the model, bodies included.
  std::function<int(const ir::Graph&, const std::string&)> count = [&](const ir::Graph& g, const std::string& op) {
    int c = 0;
    for (const auto& n : g.nodes()) {
      c += n->op_type() == op;
      for (const ir::Graph* s : n->subgraphs()) c += count(*s, op);
    }
    return c;
  };
  const int dynamic = count(*m.graph, "DynamicQuantizeLinear");
  // Every model with a MatMul/Gemm gets DynamicQuantizeLinear (a classifier Gemm, the LM's MatMuls,
  // the VAD op18 export's unrolled LSTM); the op15/op16 VAD exports' LSTMs become
  // DynamicQuantizeLSTM; SqueezeNet (all Conv) stores int8 weight levels only.
  const std::string name = GetParam().name;
  int nbits_level4 = 0;
  for (const auto& n : m.graph->nodes())
    nbits_level4 += n->op_type() == "MatMulNBits" && n->attr_int("accuracy_level", 0) == 4;
  const int dq_lstm = count(*m.graph, "DynamicQuantizeLSTM");
  if (std::string(GetParam().bits) == "4")
    EXPECT_GT(nbits_level4, 0);  // 4-bit weights, A quantized to int8 per block by ONNX Runtime
  else if (name.find("VadLstm") != std::string::npos)
    EXPECT_GT(dq_lstm, 0);  // their LSTMs become com.microsoft DynamicQuantizeLSTM
  else if (name != "SqueezeNet")
    EXPECT_GT(dynamic, 0);

  const fs::path set = fs::path(model).parent_path() / GetParam().test_set;
  const std::vector<ir::Value*> inputs = m.graph->runtime_inputs();
  std::map<std::string, Tensor> feeds;
  for (size_t k = 0; k < inputs.size(); ++k) {
    std::string tname;
    Tensor t = onnx_io::load_tensor_pb((set / ("input_" + std::to_string(k) + ".pb")).string(), &tname);
    feeds[tname.empty() ? inputs[k]->name() : tname] = t;
  }
  const auto ort = testing::ort_run(d.file("dyn.onnx"), feeds);
  runtime::Executor ex(m);
  const std::vector<Tensor> got = ex.run(feeds);
  const std::vector<std::string> names = ex.output_names();
  // The integer parts agree exactly (DynamicQuantOps tests); through a model, float noise in the
  // ops between two DynamicQuantizeLinear can flip a code now and then, on some CPUs more than on
  // others, so the outputs are compared by SQNR: 8-bit dynamic models agree to 60 dB or more
  // (exactly, here), far above the 30-45 dB of the quantization itself. MatMulNBits at
  // accuracy_level 4 quantizes A per block of 32, where flips are more frequent: 44.2 dB here,
  // against 43.0 dB between ONNX Runtime's own level-4 and level-0 runs.
  const double min_db = std::string(GetParam().bits) == "8" ? 60.0 : 38.0;
  for (size_t i = 0; i < names.size(); ++i) {
    const Tensor& r = ort.at(names[i]);
    double num = 0, den = 0;
    for (int64_t j = 0; j < r.numel(); ++j) {
      const double e = got[i].get_as_double(j) - r.get_as_double(j);
      num += e * e;
      den += r.get_as_double(j) * r.get_as_double(j);
    }
    const double db = num == 0 ? std::numeric_limits<double>::infinity() : 10 * std::log10(den / num);
    EXPECT_GT(db, min_db) << names[i];
  }
}

INSTANTIATE_TEST_SUITE_P(
    Models, DynamicShared,
    ::testing::Values(Shared{"stories260K/stories260K.onnx", "test_data_set_0", "Stories260K"},
                      Shared{"stories260K/stories260K.onnx", "test_data_set_0", "Stories260KBits4", "4"},
                      Shared{"mobilenetv2/mobilenetv2_dequant_fp32.onnx", "test_data_set_0", "MobileNetV2"},
                      Shared{"squeezenet1.1/squeezenet1.1_fp32.onnx", "test_data_set_0", "SqueezeNet"},
                      Shared{"mnist-8/mnist-8.onnx", "test_data_set_0", "Mnist8"},
                      Shared{"mnist-cnn-pytorch/cnn_mnist_pytorch.onnx", "test_data_set_0", "MnistCnnPytorch"},
                      Shared{"silero-vad/silero_vad.onnx", "test_data_set_silero_vad", "VadLstmOp16"},
                      Shared{"silero-vad/silero_vad_16k_op15.onnx", "test_data_set_silero_vad_16k_op15", "VadLstmOp15"},
                      Shared{"silero-vad/silero_vad_op18_ifless.onnx", "test_data_set_silero_vad_op18_ifless", "VadOp18"}),
    [](const ::testing::TestParamInfo<Shared>& i) { return std::string(i.param.name); });

TEST(DynamicCli, RefusesStaticOptionsAndJudgesWithSamples) {
  testing::TempDir d;
  const std::string model = testing::source_path("calibration_samples/digits/digits_cnn.onnx");
  const auto bad = testing::run_command(fmt::format("{} quantize {} --bits 8 --mode dynamic --method entropy -o {}",
                                                    testing::qtool_bin(), model, d.file("x.onnx")));
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.err.find("--method applies to static W8A8"), std::string::npos) << bad.err;
  EXPECT_FALSE(fs::exists(d.file("x.onnx")));
  // With samples: judged (held-out quality in the report), Conv opted in to ConvInteger.
  const auto ok = testing::run_command(fmt::format(
      "{} quantize {} --bits 8 --mode dynamic --op-types Conv,Gemm,MatMul --calib {} --samples 32 --json -o {}",
      testing::qtool_bin(), model, testing::source_path("calibration_samples/digits"), d.file("q.onnx")));
  ASSERT_EQ(ok.exit_code, 0) << ok.err;
  const auto rep = nlohmann::json::parse(ok.out);
  ASSERT_FALSE(rep["evaluation"]["outputs"].empty());
  EXPECT_EQ(rep["evaluation"]["samples"].get<int>(), 32);
  EXPECT_GT(rep["evaluation"]["outputs"][0]["top1_agreement"].get<double>(), 0.9);
  const ir::Model m = onnx_io::load_model(d.file("q.onnx"));
  int conv_integer = 0;
  for (const auto& n : m.graph->nodes()) conv_integer += n->op_type() == "ConvInteger";
  EXPECT_GT(conv_integer, 0);
}

TEST(LadderCli, WritesEveryRungAndTheManifest) {
  testing::TempDir d;
  const std::string model = testing::source_path("calibration_samples/digits/digits_cnn.onnx");
  const std::string dir = d.file("ladder");
  const auto r = testing::run_command(fmt::format("{} quantize {} --ladder 8,4 --calib {} --samples 40 -o {}",
                                                  testing::qtool_bin(), model,
                                                  testing::source_path("calibration_samples/digits"), dir));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto man = nlohmann::json::parse(slurp(dir + "/ladder.json"));
  EXPECT_EQ(man["schema"], "qtool.ladder");
  ASSERT_EQ(man["variants"].size(), 2u);
  // Largest first: the static W8A8 model, then the 4-bit weight-only one, each judged on samples.
  const auto& w8 = man["variants"][0];
  const auto& w4 = man["variants"][1];
  EXPECT_EQ(w8["name"], "w8");
  EXPECT_EQ(w4["name"], "w4");
  for (const auto* v : {&w8, &w4}) {
    EXPECT_EQ((*v)["status"], "ok");
    const std::string file = dir + "/" + (*v)["file"].get<std::string>();
    ASSERT_TRUE(fs::exists(file)) << file;
    EXPECT_EQ(static_cast<int64_t>(fs::file_size(file)), (*v)["size_bytes"].get<int64_t>());
    EXPECT_GT((*v)["eval_samples"].get<int>(), 0);
    EXPECT_TRUE((*v).contains("top1_agreement"));
  }
  EXPECT_GT(w8["size_bytes"].get<int64_t>(), w4["size_bytes"].get<int64_t>());
  EXPECT_GT(w8["bits_per_weight"].get<double>(), w4["bits_per_weight"].get<double>());
  // An option that does not apply to a rung is refused before anything is written.
  const auto bad = testing::run_command(fmt::format("{} quantize {} --ladder 8,4 --method entropy --calib {} -o {}",
                                                    testing::qtool_bin(), model,
                                                    testing::source_path("calibration_samples/digits"), d.file("bad")));
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.err.find("--ladder rung --bits 4"), std::string::npos) << bad.err;
  EXPECT_FALSE(fs::exists(d.file("bad")));
}


TEST(DynamicCli, RaisesPrecisionWhenBelowTheFloor) {
  // x [1, 64] -> MatMul(W1) -> h -> MatMul(W2) -> y. x carries one huge value (1000) beside N(0, 1)
  // entries: DynamicQuantizeLinear's per-tensor scale (≈ 4) rounds the normal entries to 0, so the
  // first MatMul alone ruins y; h is well behaved. The floor keeps the first MatMul in float.
  testing::TempDir d;
  std::mt19937 rng(12);
  ir::Model m;
  m.opset_imports = {{"", 13}};
  ir::Graph& g = *m.graph;
  ir::Value* x = g.add_input("x", testing::float_type({1, 64}));
  std::vector<float> w1 = testing::gaussian(64 * 32, rng, 0.1f);
  for (int c = 0; c < 32; ++c) w1[63 * 32 + c] = 0.0f;  // the outlier input feeds nothing
  ir::Node* a = g.add_node("MatMul", {x, g.add_initializer("W1", Tensor::from_vector<float>({64, 32}, w1))}, {"h"}, "first");
  ir::Node* b = g.add_node("MatMul", {a->output(0), g.add_initializer("W2", Tensor::from_vector<float>({32, 16},
                                                                                 testing::gaussian(512, rng, 0.2f)))},
                           {"y"}, "second");
  a->output(0)->type().elem_type = DataType::kFloat;
  b->output(0)->type().elem_type = DataType::kFloat;
  g.add_output(b->output(0));
  onnx_io::save_model(m, d.file("m.onnx"));
  fs::create_directories(d.file("data"));
  for (int i = 0; i < 8; ++i) {
    std::vector<float> v = testing::gaussian(64, rng);
    v[63] = 1000.0f;
    write_npy(d.file(fmt::format("data/s{}.npy", i)), Tensor::from_vector<float>({1, 64}, v));
  }
  const auto r = testing::run_command(fmt::format("{} quantize {} --bits 8 --mode dynamic --calib {} --json -o {}",
                                                  testing::qtool_bin(), d.file("m.onnx"), d.file("data"), d.file("q.onnx")));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto rep = nlohmann::json::parse(r.out);
  EXPECT_GE(rep["evaluation"]["outputs"][0]["sqnr_db"].get<double>(), 20.0);
  std::string actions;
  for (const auto& x2 : rep["actions"]) actions += x2.get<std::string>() + "\n";
  EXPECT_NE(actions.find("below the quality floor"), std::string::npos) << actions;
  EXPECT_NE(actions.find("noisiest 'first'"), std::string::npos) << actions;
  const ir::Model q = onnx_io::load_model(d.file("q.onnx"));
  EXPECT_EQ(q.graph->find_value("h")->producer()->op_type(), "MatMul");  // kept in float
  EXPECT_EQ(q.graph->find_value("y")->producer()->op_type(), "Mul");     // still dynamic
  // With a floor nothing can meet (y judged by SQNR, not as classifier scores), exit 3 and no model.
  const auto f = testing::run_command(fmt::format("{} quantize {} --bits 8 --mode dynamic --calib {} --metric sqnr --min-sqnr 200 -o {}",
                                                  testing::qtool_bin(), d.file("m.onnx"), d.file("data"), d.file("f.onnx")));
  EXPECT_EQ(f.exit_code, 3) << f.err;
  EXPECT_FALSE(fs::exists(d.file("f.onnx")));
  // Unnamed nodes (many exporters leave names empty) are told apart by their outputs: the same
  // search keeps only the one producing 'h' in float.
  for (const auto& n : g.nodes()) n->set_name("");
  onnx_io::save_model(m, d.file("u.onnx"));
  const auto u = testing::run_command(fmt::format("{} quantize {} --bits 8 --mode dynamic --calib {} --json -o {}",
                                                  testing::qtool_bin(), d.file("u.onnx"), d.file("data"), d.file("uq.onnx")));
  ASSERT_EQ(u.exit_code, 0) << u.err;
  EXPECT_NE(u.out.find("noisiest 'h'"), std::string::npos) << u.out;
  const ir::Model uq = onnx_io::load_model(d.file("uq.onnx"));
  EXPECT_EQ(uq.graph->find_value("h")->producer()->op_type(), "MatMul");
  EXPECT_EQ(uq.graph->find_value("y")->producer()->op_type(), "Mul");
}

}  // namespace
}  // namespace qtool
