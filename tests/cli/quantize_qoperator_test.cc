// `qtool quantize --format qoperator`, and `qtool run` / `qtool compare` running QDQ models the
// way ONNX Runtime does (fused integer kernels), on SqueezeNet 1.1.
#include <gtest/gtest.h>

#include <filesystem>
#include <map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "qtool/core/npy.h"
#include "qtool/onnx_io/onnx_io.h"
#include "test_util.h"

namespace qtool {
namespace {

using testing::shared_path;

std::string squeezenet_cmd(const std::string& out, const std::string& extra) {
  return fmt::format("{} quantize {} --bits 8 --calib {} --preprocess caffe-bgr --samples 16 --no-guard -o {} {}",
                     testing::qtool_bin(), shared_path("models/squeezenet1.1/squeezenet1.1_fp32.onnx"),
                     shared_path("data/imagenet-sample/images"), out, extra);
}

std::map<std::string, int> op_counts(const std::string& path) {
  std::map<std::string, int> c;
  const ir::Model m = onnx_io::load_model(path);
  for (const auto& n : m.graph->nodes()) ++c[n->op_type()];
  return c;
}

TEST(CliQuantizeQOperator, SqueezeNetRunsInOnnxRuntimeAndMatchesTheQdqForm) {
  QTOOL_REQUIRE_SHARED();
  QTOOL_REQUIRE_ORT();
  testing::TempDir dir;
  const std::string qdq = dir.file("qdq.onnx"), qop = dir.file("qop.onnx");
  const auto r1 = testing::run_command(squeezenet_cmd(qdq, ""));
  ASSERT_EQ(r1.exit_code, 0) << r1.err;
  const auto r2 = testing::run_command(squeezenet_cmd(qop, "--format qoperator"));
  ASSERT_EQ(r2.exit_code, 0) << r2.err;
  EXPECT_NE(r2.out.find("W8A8 QOperator"), std::string::npos) << r2.out;

  // Every Conv became a QLinearConv, every Concat a QLinearConcat; one Q at the input, one DQ
  // before the float Softmax.
  auto c = op_counts(qop);
  EXPECT_EQ(c["Conv"], 0);
  EXPECT_EQ(c["QLinearConv"], 26);
  EXPECT_EQ(c["QLinearConcat"], 8);
  EXPECT_EQ(c["QLinearGlobalAveragePool"], 1);
  EXPECT_EQ(c["QuantizeLinear"], 1);
  EXPECT_EQ(c["DequantizeLinear"], 1);
  EXPECT_LT(std::filesystem::file_size(qop), std::filesystem::file_size(qdq));
  // Deterministic: the same command writes the same bytes.
  const std::string qop2 = dir.file("qop2.onnx");
  const auto r3 = testing::run_command(squeezenet_cmd(qop2, "--format qoperator"));
  ASSERT_EQ(r3.exit_code, 0) << r3.err;
  EXPECT_EQ(read_file(qop), read_file(qop2));

  // ONNX Runtime gives the QOperator file exactly the outputs it gives the QDQ file, and qtool's
  // executor (fusing the QDQ file itself) gives the same again.
  std::string name;
  const Tensor x = onnx_io::load_tensor_pb(shared_path("models/squeezenet1.1/test_data_set_0/input_0.pb"), &name);
  const Tensor y_qdq = testing::ort_run(qdq, {{"data_0", x}}).begin()->second;
  const Tensor y_qop = testing::ort_run(qop, {{"data_0", x}}).begin()->second;
  EXPECT_EQ(testing::max_abs_error(y_qdq, y_qop), 0.0);
  const std::string in = dir.file("x.npy");
  write_npy(in, x);
  std::map<std::string, Tensor> ours;
  for (const std::string mode : {"fuse", "float"}) {
    const std::string out = dir.file("run_" + mode);
    const auto r = testing::run_command(fmt::format("{} run {} -i {} -o {} --qdq {}", testing::qtool_bin(), qdq, in, out, mode));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    ours[mode] = read_npy(out + "/softmaxout_1.npy");
  }
  if (testing::ort_int8_exact()) {
    EXPECT_LT(testing::max_abs_error(ours["fuse"], y_qdq), 1e-6) << "fused qtool vs ONNX Runtime";
    const double err = testing::max_abs_error(ours["float"], y_qdq);
    EXPECT_GT(err, 0.0) << "the float QDQ semantics round differently from ORT's integer kernels";
    EXPECT_LT(err, 0.05);
  } else {
    // ORT's u8s8 kernels saturate on this CPU (test_util.h): qtool's two forms against each other.
    EXPECT_LT(testing::max_abs_error(ours["float"], ours["fuse"]), 0.05);
  }
  const auto bad = testing::run_command(fmt::format("{} run {} -i {} --qdq maybe", testing::qtool_bin(), qdq, in));
  EXPECT_NE(bad.exit_code, 0);

  // compare gives per-layer drift on the QOperator file as on the QDQ one (QLinear outputs matched
  // to their float tensors by the "_QuantizeLinear_Output" names, dequantized with their parameters).
  auto layers = [&](const std::string& model) {
    const auto c = testing::run_command(fmt::format(
        "{} compare {} {} --data {} --preprocess caffe-bgr --samples 4 --json", testing::qtool_bin(),
        shared_path("models/squeezenet1.1/squeezenet1.1_fp32.onnx"), model, shared_path("data/imagenet-sample/images")));
    EXPECT_EQ(c.exit_code, 0) << c.err;
    std::map<std::string, double> sqnr;
    const nlohmann::json doc = nlohmann::json::parse(c.out);  // kept alive for the loop below
    for (const auto& l : doc["layers"]) sqnr[l["tensor"].get<std::string>()] = l["sqnr_db"].get<double>();
    return sqnr;
  };
  const auto from_qdq = layers(qdq), from_qop = layers(qop);
  ASSERT_TRUE(from_qop.count("fire9/expand1x1_2")) << "no per-layer drift for the QOperator file";
  EXPECT_GT(from_qop.size(), 20u);
  EXPECT_NEAR(from_qop.at("fire9/expand1x1_2"), from_qdq.at("fire9/expand1x1_2"), 1e-6);
}

TEST(CliQuantizeQOperator, FormatRejectedForLowBitsAnd16BitActivations) {
  QTOOL_REQUIRE_SHARED();
  testing::TempDir dir;
  for (const char* opts : {"--bits 4", "--bits 8 --activation-bits 16 --calib x"}) {
    const auto r = testing::run_command(fmt::format(
        "{} quantize {} {} -o {} --format qoperator", testing::qtool_bin(),
        shared_path("models/squeezenet1.1/squeezenet1.1_fp32.onnx"), opts, dir.file("x.onnx")));
    EXPECT_EQ(r.exit_code, 2) << opts << ": " << r.err;
    EXPECT_NE(r.err.find("qoperator"), std::string::npos) << r.err;
    EXPECT_FALSE(std::filesystem::exists(dir.file("x.onnx")));
  }
}

}  // namespace
}  // namespace qtool
