// End-to-end tests of `qtool inspect` on the real models: concrete figures (checked independently with
// the Python onnx package when written), exit codes and messages for bad input, and the --json
// contract (exactly one JSON document on stdout).
#include <gtest/gtest.h>

#include <filesystem>

#include <nlohmann/json.hpp>

#include "qtool/core/npy.h"
#include "qtool/onnx_io/onnx_io.h"
#include "test_util.h"

namespace qtool {
namespace {

using nlohmann::json;
using qtool::testing::run_command;

json inspect_json(const std::string& model) {
  auto r = run_command(fmt::format("'{}' inspect --json '{}'", qtool::testing::qtool_bin(), model));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return json::parse(r.out);  // throws if stdout holds anything but one JSON document
}

struct Expected {
  std::string rel;
  int64_t ir, opset, nodes_total, nodes_main, initializers, constants, params, bytes, subgraphs;
  std::string input0;
  json input0_shape;
  std::string output0;
};

TEST(InspectCli, EverySharedModelHasTheRightFigures) {
  QTOOL_REQUIRE_SHARED();
  const std::vector<Expected> models = {
      {"mnist-8/mnist-8.onnx", 3, 8, 12, 12, 8, 0, 5998, 24008, 0, "Input3", {1, 1, 28, 28}, "Plus214_Output_0"},
      {"mnist-cnn-pytorch/cnn_mnist_pytorch.onnx", 4, 9, 13, 13, 8, 1, 21842, 87376, 0, "0", {1, 1, 28, 28}, "21"},
      {"mobilenetv2/mobilenetv2_dequant_fp32.onnx", 6, 11, 100, 100, 106, 0, 3487816, 13951264, 0, "image",
       {"batch", 3, 244, 244}, "scores"},
      {"mobilenetv2/pytorch_mobilenet_v3_qdq.onnx", 6, 11, 724, 724, 298, 0, 3488008, 3542689, 0, "image",
       {"batch", 3, 244, 244}, "scores"},
      {"silero-vad/silero_vad.onnx", 8, 16, 689, 5, 0, 341, 545597, 2183632, 50, "input", {nullptr, nullptr},
       "output"},
      {"silero-vad/silero_vad_16k_op15.onnx", 8, 15, 350, 121, 15, 160, 309795, 1239820, 24, "input",
       {"batch", "sequence"}, "output"},
      {"silero-vad/silero_vad_op18_ifless.onnx", 10, 18, 90, 4, 45, 0, 545689, 2182828, 2, "input",
       {"batch", "sequence"}, "output"},
      {"squeezenet1.1/squeezenet1.1_fp32.onnx", 3, 7, 66, 66, 52, 0, 1235496, 4941984, 0, "data_0", {1, 3, 224, 224},
       "softmaxout_1"},
      {"squeezenet1.1/squeezenet_fp16_orig.onnx", 3, 7, 66, 66, 52, 0, 1235496, 2470992, 0, "data_0",
       {1, 3, 224, 224}, "softmaxout_1"},
      {"stories260K/stories260K.onnx", 8, 17, 339, 339, 79, 0, 296961, 1188008, 0, "input_ids", {"batch", "seq"},
       "logits"},
  };
  for (const auto& e : models) {
    SCOPED_TRACE(e.rel);
    const json j = inspect_json(qtool::testing::shared_path("models/" + e.rel));
    EXPECT_EQ(j["ir_version"], e.ir);
    ASSERT_EQ(j["opsets"].size(), 1u);
    EXPECT_EQ(j["opsets"][0]["domain"], "");
    EXPECT_EQ(j["opsets"][0]["version"], e.opset);
    EXPECT_EQ(j["nodes"]["total"], e.nodes_total);
    EXPECT_EQ(j["nodes"]["main_graph"], e.nodes_main);
    EXPECT_EQ(j["parameters"]["initializers"], e.initializers);
    EXPECT_EQ(j["parameters"]["constant_tensors"], e.constants);
    EXPECT_EQ(j["parameters"]["count"], e.params);
    EXPECT_EQ(j["parameters"]["bytes"], e.bytes);
    EXPECT_EQ(j["subgraphs"]["count"], e.subgraphs);
    EXPECT_EQ(j["subgraphs"]["list"].size(), static_cast<size_t>(e.subgraphs));
    ASSERT_GE(j["inputs"].size(), 1u);
    EXPECT_EQ(j["inputs"][0]["name"], e.input0);
    EXPECT_EQ(j["inputs"][0]["shape"], e.input0_shape);
    EXPECT_EQ(j["outputs"][0]["name"], e.output0);
    int64_t hist_total = 0;
    for (const auto& [op, n] : j["op_histogram"].items()) hist_total += n.get<int64_t>();
    EXPECT_EQ(hist_total, e.nodes_total);
    EXPECT_LE(j["largest_tensors"].size(), 10u);
    const bool qdq = e.rel.find("qdq") != std::string::npos;
    EXPECT_EQ(j["quantization"]["quantized"], qdq);
  }
}

TEST(InspectCli, Mnist8DetailsAndHumanTable) {
  QTOOL_REQUIRE_SHARED();
  const std::string path = qtool::testing::shared_path("models/mnist-8/mnist-8.onnx");
  const json j = inspect_json(path);
  EXPECT_EQ(j["op_histogram"],
            (json{{"Add", 3}, {"Conv", 2}, {"MatMul", 1}, {"MaxPool", 2}, {"Relu", 2}, {"Reshape", 2}}));
  EXPECT_EQ(j["producer"]["name"], "CNTK");
  EXPECT_EQ(j["inputs"].size(), 1u);  // the 8 initializers listed as IR-3 inputs are not runtime inputs
  EXPECT_EQ(j["inputs"][0]["dtype"], "float32");
  EXPECT_EQ(j["outputs"][0]["shape"], (json{1, 10}));
  EXPECT_EQ(j["parameters"]["by_dtype"]["float32"]["count"], 5994);
  EXPECT_EQ(j["parameters"]["by_dtype"]["int64"]["count"], 4);
  EXPECT_EQ(j["largest_tensors"][0]["name"], "Parameter87");
  EXPECT_EQ(j["largest_tensors"][0]["shape"], (json{16, 8, 5, 5}));
  EXPECT_EQ(j["largest_tensors"][0]["bytes"], 12800);

  auto r = run_command(fmt::format("'{}' inspect '{}'", qtool::testing::qtool_bin(), path));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("Input3"), std::string::npos);
  EXPECT_NE(r.out.find("[1,1,28,28]"), std::string::npos);
  EXPECT_NE(r.out.find("ai.onnx 8"), std::string::npos);
  EXPECT_NE(r.out.find("quantization: none"), std::string::npos);
}

TEST(InspectCli, QdqModelQuantizationSummary) {
  QTOOL_REQUIRE_SHARED();
  const json q = inspect_json(qtool::testing::shared_path("models/mobilenetv2/pytorch_mobilenet_v3_qdq.onnx"))["quantization"];
  EXPECT_EQ(q["formats"], (json{"qdq"}));
  EXPECT_EQ(q["quantize_linear"], 66);
  EXPECT_EQ(q["dequantize_linear"], 182);
  EXPECT_EQ(q["qdq_pairs"], 76);  // Q -> Cast -> DQ, some Q outputs feed two DQs
  EXPECT_EQ(q["dequantized_weights"], 106);
  EXPECT_EQ(q["weight_bits"], (json{{"int32", 53}, {"int8", 53}}));  // biases int32, weights int8
  EXPECT_EQ(q["qdq_bits"]["uint8"], 142);
  EXPECT_EQ(q["qdq_bit_widths"], (json{{"8", 195}, {"32", 53}}));
}

TEST(InspectCli, DynamicModelQuantizationSummary) {
  // --mode dynamic: the Gemms become DynamicQuantizeLinear + MatMulInteger, the Conv weights int8
  // levels read through Cast (and scales): both count as quantized.
  qtool::testing::TempDir d;
  const auto q = run_command(fmt::format("'{}' quantize '{}' --bits 8 --mode dynamic -o '{}'", qtool::testing::qtool_bin(),
                                         qtool::testing::source_path("calibration_samples/digits/digits_cnn.onnx"),
                                         d.file("dyn.onnx")));
  ASSERT_EQ(q.exit_code, 0) << q.err;
  const json j = inspect_json(d.file("dyn.onnx"))["quantization"];
  EXPECT_EQ(j["quantized"], true);
  EXPECT_EQ(j["formats"], (json{"integer", "cast"}));
  EXPECT_EQ(j["integer_ops"], (json{{"DynamicQuantizeLinear", 2}, {"MatMulInteger", 2}}));
  EXPECT_EQ(j["cast_weights"], 3);  // conv1..3
  EXPECT_EQ(j["weight_bits"], (json{{"int8", 3}}));
  const auto text = run_command(fmt::format("'{}' inspect '{}'", qtool::testing::qtool_bin(), d.file("dyn.onnx")));
  EXPECT_NE(text.out.find("weight levels read through Cast: 3"), std::string::npos) << text.out;
}

TEST(InspectCli, SileroSubgraphsListed) {
  QTOOL_REQUIRE_SHARED();
  const json j = inspect_json(qtool::testing::shared_path("models/silero-vad/silero_vad.onnx"));
  const json& list = j["subgraphs"]["list"];
  ASSERT_EQ(list.size(), 50u);
  EXPECT_EQ(list[0]["op_type"], "If");
  EXPECT_EQ(list[0]["depth"], 1);
  int max_depth = 0;
  for (const auto& s : list) max_depth = std::max(max_depth, s["depth"].get<int>());
  EXPECT_EQ(max_depth, 4);
  EXPECT_EQ(j["largest_tensors"][0]["kind"], "constant");
}

TEST(InspectCli, ExternalDataAndMatMulNBits) {
  qtool::testing::TempDir dir;
  ir::Model m;
  m.ir_version = 9;
  m.set_opset("", 21);
  m.set_opset("com.microsoft", 1);
  ir::Graph& g = *m.graph;
  ir::TypeInfo t;
  t.elem_type = DataType::kFloat;
  t.has_shape = true;
  t.dims = {ir::Dim{-1, "batch"}, ir::Dim{64, {}}};
  ir::Value* x = g.add_input("x", t);
  ir::Value* w = g.add_initializer("w_q", Tensor(DataType::kUint8, {32, 2, 16}));
  ir::Value* s = g.add_initializer("w_scales", Tensor(DataType::kFloat, {64}));
  ir::Node* n = g.add_node("MatMulNBits", {x, w, s}, {"y"}, "mm", "com.microsoft");
  n->set_attr(ir::Attribute::make_int("K", 64));
  n->set_attr(ir::Attribute::make_int("N", 32));
  n->set_attr(ir::Attribute::make_int("bits", 4));
  n->set_attr(ir::Attribute::make_int("block_size", 32));
  g.add_output(n->output(0));
  onnx_io::SaveOptions o;
  o.external_data = onnx_io::SaveOptions::ExternalData::kAlways;
  onnx_io::save_model(m, dir.file("nbits.onnx"), o);
  const json j = inspect_json(dir.file("nbits.onnx"));
  EXPECT_EQ(j["parameters"]["external_bytes"], 1024);  // w_q; the 256-byte scales stay inline
  EXPECT_EQ(j["parameters"]["bytes"], 1024 + 256);
  EXPECT_EQ(j["quantization"]["formats"], (json{"matmul_nbits"}));
  EXPECT_EQ(j["quantization"]["matmul_nbits"], (json{{{"bits", 4}, {"block_size", 32}, {"count", 1}}}));
  EXPECT_EQ(j["op_histogram"], (json{{"com.microsoft.MatMulNBits", 1}}));
  EXPECT_EQ(j["inputs"][0]["shape"], (json{"batch", 64}));
}

TEST(InspectCli, BadInputExitCodes) {
  qtool::testing::TempDir dir;
  const std::string bin = qtool::testing::qtool_bin();
  auto missing = run_command(fmt::format("'{}' inspect '{}'", bin, dir.file("missing.onnx")));
  EXPECT_EQ(missing.exit_code, 2);
  EXPECT_NE(missing.err.find("missing.onnx"), std::string::npos) << missing.err;
  EXPECT_TRUE(missing.out.empty());

  write_file_atomic(dir.file("notes.onnx"), "just some text, not a model\n");
  auto text = run_command(fmt::format("'{}' inspect --json '{}'", bin, dir.file("notes.onnx")));
  EXPECT_EQ(text.exit_code, 2);
  EXPECT_NE(text.err.find("notes.onnx"), std::string::npos) << text.err;
  EXPECT_NE(text.err.find("not a valid ONNX model"), std::string::npos) << text.err;
  EXPECT_TRUE(text.out.empty());

  auto usage = run_command(fmt::format("'{}' inspect", bin));
  EXPECT_EQ(usage.exit_code, 2);

  auto dirarg = run_command(fmt::format("'{}' inspect '{}'", bin, dir.path()));
  EXPECT_EQ(dirarg.exit_code, 2);
}

}  // namespace
}  // namespace qtool
