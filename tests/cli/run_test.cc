// End-to-end tests of `qtool run`: outputs written as .npy with the right values, the table and
// --json summaries, inputs by name, by order and from .pb, and exit codes for bad input.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "qtool/core/npy.h"
#include "qtool/onnx_io/onnx_io.h"
#include "test_util.h"

namespace qtool {
namespace {

using qtool::testing::run_command;
using qtool::testing::TempDir;

/// y = Relu(x) + b, z = Neg(x); x: float [2,3]; b = [10, 20, 30].
std::string write_model(const TempDir& dir) {
  ir::Model m;
  m.set_opset("", 17);
  ir::Graph& g = *m.graph;
  ir::TypeInfo t;
  t.elem_type = DataType::kFloat;
  t.has_shape = true;
  t.dims = {ir::Dim{-1, "batch"}, ir::Dim{3, ""}};
  ir::Value* x = g.add_input("x:0", t);
  ir::Value* b = g.add_initializer("b", Tensor::from_vector<float>({3}, {10, 20, 30}));
  ir::Node* relu = g.add_node("Relu", {x}, {"r"}, "relu");
  g.add_output(g.add_node("Add", {relu->output(0), b}, {"y/out"}, "add")->output(0));
  g.add_output(g.add_node("Neg", {x}, {"z"}, "neg")->output(0));
  const std::string path = dir.file("m.onnx");
  onnx_io::save_model(m, path);
  return path;
}

std::string q(const std::string& s) { return "'" + s + "'"; }

TEST(RunCli, WritesOutputsAndPrintsSummaries) {
  TempDir dir;
  const std::string model = write_model(dir);
  write_npy(dir.file("x.npy"), Tensor::from_vector<float>({2, 3}, {-1, 2, -3, 4, -5, 6}));
  auto r = run_command(qtool::testing::qtool_bin() + " run " + q(model) + " --input x:0=" + q(dir.file("x.npy")) +
                       " --output-dir " + q(dir.file("out")));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // '/' in the output name is sanitised in the file name.
  Tensor y = read_npy(dir.file("out/y_out.npy"));
  ASSERT_EQ(y.shape(), (Shape{2, 3}));
  const float* p = y.data<float>();
  EXPECT_EQ(std::vector<float>(p, p + 6), (std::vector<float>{10, 22, 30, 14, 20, 36}));
  Tensor z = read_npy(dir.file("out/z.npy"));
  EXPECT_EQ(z.data<float>()[0], 1.0f);
  EXPECT_NE(r.out.find("y/out"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("[2,3]"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("float32"), std::string::npos) << r.out;
}

TEST(RunCli, JsonSummaryAndInputsByOrderFromPb) {
  TempDir dir;
  const std::string model = write_model(dir);
  onnx_io::save_tensor_pb(dir.file("x.pb"), Tensor::from_vector<float>({1, 3}, {1, 2, 3}), "x:0");
  auto r = run_command(qtool::testing::qtool_bin() + " run " + q(model) + " --input " + q(dir.file("x.pb")) +
                       " --json --threads 2");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto doc = nlohmann::json::parse(r.out);
  ASSERT_EQ(doc["outputs"].size(), 2u);
  const auto& y = doc["outputs"][0];
  EXPECT_EQ(y["name"], "y/out");
  EXPECT_EQ(y["shape"], nlohmann::json::array({1, 3}));
  EXPECT_DOUBLE_EQ(y["min"].get<double>(), 11.0);  // [11, 22, 33]
  EXPECT_DOUBLE_EQ(y["max"].get<double>(), 33.0);
  EXPECT_DOUBLE_EQ(y["mean"].get<double>(), 22.0);
  EXPECT_NEAR(y["std"].get<double>(), std::sqrt(242.0 / 3.0), 1e-9);
  EXPECT_TRUE(y["file"].is_null());
  EXPECT_EQ(doc["threads"], 2);
}

TEST(RunCli, BadInputsExitWithCode2AndSayWhy) {
  TempDir dir;
  const std::string model = write_model(dir);
  write_npy(dir.file("bad.npy"), Tensor::from_vector<float>({2, 4}, std::vector<float>(8, 1.0f)));
  write_npy(dir.file("int.npy"), Tensor::from_vector<int64_t>({1, 3}, {1, 2, 3}));
  const std::string bin = qtool::testing::qtool_bin() + " run " + q(model);

  auto missing = run_command(bin);
  EXPECT_EQ(missing.exit_code, 2);
  EXPECT_NE(missing.err.find("missing --input for model input 'x:0'"), std::string::npos) << missing.err;

  auto shape = run_command(bin + " --input x:0=" + q(dir.file("bad.npy")));
  EXPECT_EQ(shape.exit_code, 2);
  EXPECT_NE(shape.err.find("input 'x:0' has shape [2,4] but the model expects [batch,3]"), std::string::npos)
      << shape.err;

  auto dtype = run_command(bin + " --input " + q(dir.file("int.npy")));
  EXPECT_EQ(dtype.exit_code, 2);
  EXPECT_NE(dtype.err.find("must be float32 but is int64"), std::string::npos) << dtype.err;

  auto unknown = run_command(bin + " --input nope=" + q(dir.file("bad.npy")));
  EXPECT_EQ(unknown.exit_code, 2);
  EXPECT_NE(unknown.err.find("no input named 'nope'"), std::string::npos) << unknown.err;

  auto no_file = run_command(bin + " --input x:0=" + q(dir.file("absent.npy")));
  EXPECT_EQ(no_file.exit_code, 2);
  EXPECT_NE(no_file.err.find("absent.npy"), std::string::npos) << no_file.err;
}

}  // namespace
}  // namespace qtool
