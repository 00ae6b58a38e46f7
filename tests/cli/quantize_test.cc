// qtool quantize through the command line: output loads in ORT, exit codes, the quality gate.
#include <gtest/gtest.h>

#include <filesystem>

#include <fmt/format.h>

#include "qtool/onnx_io/onnx_io.h"
#include "test_util.h"

namespace qtool {
namespace {

using testing::shared_path;

std::string mnist_cmd(const std::string& out, const std::string& extra) {
  return fmt::format("{} quantize {} --calib {} --preprocess mnist-raw --samples 64 -o {} {}", testing::qtool_bin(),
                     shared_path("models/mnist-8/mnist-8.onnx"), shared_path("data/mnist/t10k-images-idx3-ubyte.gz"),
                     out, extra);
}

TEST(CliQuantize, Mnist8EndToEnd) {
  QTOOL_REQUIRE_SHARED();
  QTOOL_REQUIRE_ORT();
  testing::TempDir dir;
  const std::string out = dir.file("q.onnx");
  const auto r = testing::run_command(mnist_cmd(out, ""));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("top-1 agree"), std::string::npos) << r.out;  // the summary table shows the guard
  const ir::Model m = onnx_io::load_model(out);
  EXPECT_EQ(m.opset(""), 13);  // upgraded from 8
  int q = 0, dq = 0;
  for (const auto& n : m.graph->nodes()) {
    q += n->op_type() == "QuantizeLinear";
    dq += n->op_type() == "DequantizeLinear";
  }
  EXPECT_GT(q, 3);
  EXPECT_GT(dq, q);
  // Smaller than the FP32 file and runnable by ONNX Runtime.
  EXPECT_LT(std::filesystem::file_size(out), std::filesystem::file_size(shared_path("models/mnist-8/mnist-8.onnx")));
  std::string name;
  const Tensor x = onnx_io::load_tensor_pb(shared_path("models/mnist-8/test_data_set_0/input_0.pb"), &name);
  const auto y = testing::ort_run(out, {{"Input3", x}});
  ASSERT_EQ(y.size(), 1u);
  const Tensor ref = onnx_io::load_tensor_pb(shared_path("models/mnist-8/test_data_set_0/output_0.pb"));
  const Tensor& got = y.begin()->second;
  int64_t a = 0, b = 0;
  for (int64_t i = 1; i < 10; ++i) {
    if (ref.get_as_double(i) > ref.get_as_double(a)) a = i;
    if (got.get_as_double(i) > got.get_as_double(b)) b = i;
  }
  EXPECT_EQ(a, b);  // same digit as the FP32 model
}

TEST(CliQuantize, QualityGateAndBadOptions) {
  QTOOL_REQUIRE_SHARED();
  testing::TempDir dir;
  // A gate the model cannot meet (ranges clipped at the 50th percentile ruin it): exit code 3, after
  // the summary table. (--max-drop -1, the old way to force it, is now refused as out of range.)
  // (The quality floor, which would stop this model first, is lowered so that --max-drop decides.)
  const auto gate = testing::run_command(mnist_cmd(
      dir.file("g.onnx"), "--max-drop 0 --method percentile --percentile 50 --min-agreement 0 --min-sqnr -1000"));
  EXPECT_EQ(gate.exit_code, 3) << gate.err;
  EXPECT_NE(gate.err.find("quality gate"), std::string::npos) << gate.err;
  EXPECT_NE(gate.out.find("top-1 agree"), std::string::npos) << gate.out;  // the summary table came first
  const auto negative = testing::run_command(mnist_cmd(dir.file("n.onnx"), "--max-drop -1"));
  EXPECT_EQ(negative.exit_code, 2);
  EXPECT_NE(negative.err.find("--max-drop"), std::string::npos) << negative.err;
  const auto bad = testing::run_command(mnist_cmd(dir.file("b.onnx"), "--activation-bits 12"));
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.err.find("--activation-bits"), std::string::npos) << bad.err;
  const auto nocalib = testing::run_command(fmt::format("{} quantize {} -o {}", testing::qtool_bin(),
                                                        shared_path("models/mnist-8/mnist-8.onnx"), dir.file("c.onnx")));
  EXPECT_EQ(nocalib.exit_code, 2);
  EXPECT_NE(nocalib.err.find("--calib"), std::string::npos) << nocalib.err;
}

TEST(CliQuantize, ExcludeOpTypesKeepsThemFloat) {
  QTOOL_REQUIRE_SHARED();
  testing::TempDir dir;
  const std::string out = dir.file("q.onnx");
  const auto r = testing::run_command(mnist_cmd(out, "--exclude-op-types MatMul --no-guard"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const ir::Model m = onnx_io::load_model(out);
  for (const auto& n : m.graph->nodes()) {
    if (n->op_type() != "MatMul") continue;
    ASSERT_TRUE(n->input(1)->is_initializer());
    EXPECT_EQ(n->input(1)->initializer()->dtype(), DataType::kFloat);
  }
}

}  // namespace
}  // namespace qtool
