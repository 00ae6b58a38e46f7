// qtool calibrate: exit codes, messages and the ranges JSON it writes.
#include <nlohmann/json.hpp>

#include <filesystem>

#include "qtool/core/npy.h"
#include "qtool/onnx_io/onnx_io.h"
#include "test_util.h"

namespace qtool {
namespace {

using testing::run_command;
using testing::TempDir;

// y = Relu(x) * 2, x: [batch, 2, 3, 3]
void write_model(const std::string& path) {
  ir::Model m;
  m.set_opset("", 13);
  ir::Graph& g = *m.graph;
  ir::TypeInfo t;
  t.elem_type = DataType::kFloat;
  t.has_shape = true;
  t.dims = {ir::Dim{-1, "N"}, ir::Dim{2, ""}, ir::Dim{3, ""}, ir::Dim{3, ""}};
  ir::Value* x = g.add_input("x", t);
  ir::Value* two = g.add_initializer("two", Tensor::scalar<float>(2.0f));
  ir::Node* relu = g.add_node("Relu", {x}, {"r"}, "relu");
  ir::Node* mul = g.add_node("Mul", {relu->output(0), two}, {"y"}, "mul");
  g.add_output(mul->output(0));
  onnx_io::save_model(m, path);
}

std::string calibrate_cmd(const TempDir& d, const std::string& extra) {
  return fmt::format("'{}' calibrate '{}' --calib '{}' -o '{}' --no-progress {}", testing::qtool_bin(),
                     d.file("m.onnx"), d.file("samples"), d.file("r.json"), extra);
}

class CalibrateCli : public ::testing::Test {
 protected:
  void SetUp() override {
    write_model(dir_.file("m.onnx"));
    std::filesystem::create_directory(dir_.file("samples"));
    for (int s = 0; s < 3; ++s) {
      std::vector<float> v(18);
      for (int i = 0; i < 18; ++i) v[i] = static_cast<float>((i - 9) * (s + 1));  // sample 2: -27..24
      write_npy(dir_.file("samples/s" + std::to_string(s) + ".npy"), Tensor::from_vector<float>({1, 2, 3, 3}, v));
    }
  }
  TempDir dir_;
};

TEST_F(CalibrateCli, WritesRangesJson) {
  auto r = run_command(calibrate_cmd(dir_, "--method minmax --asymmetric"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("wrote ranges of 3 tensors"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("500-1000"), std::string::npos) << r.err;  // the small-set warning
  auto j = nlohmann::json::parse(read_file(dir_.file("r.json")));
  EXPECT_EQ(j["format"], "qtool-ranges");
  EXPECT_EQ(j["version"], 1);
  EXPECT_EQ(j["method"], "minmax");
  EXPECT_EQ(j["samples"], 3);
  EXPECT_EQ(j["model"]["name"], "m.onnx");
  ASSERT_EQ(j["tensors"].size(), 3u);
  const auto& x = j["tensors"][0];
  EXPECT_EQ(x["name"], "x");
  EXPECT_EQ(x["min"], -27.0);
  EXPECT_EQ(x["max"], 24.0);
  EXPECT_EQ(x["range_min"], -27.0);
  const auto& y = j["tensors"][2];
  EXPECT_EQ(y["name"], "y");
  EXPECT_EQ(y["range_min"], 0.0);  // asymmetric: relu output, zero included
  EXPECT_EQ(y["range_max"], 48.0);
  EXPECT_EQ(y["channel_axis"], 1);
  // Channel 1 holds i = 9..17 -> (i-9)*3*2 up to 48; channel 0 holds i = 0..8 -> at most 0.
  EXPECT_EQ(y["per_channel_max"][0], 0.0);
  EXPECT_EQ(y["per_channel_max"][1], 48.0);
  EXPECT_EQ(x["per_channel_absmax"][0], 27.0);
}

TEST_F(CalibrateCli, EachMethodRuns) {
  for (const char* m : {"percentile", "entropy", "mse"}) {
    auto r = run_command(calibrate_cmd(dir_, std::string("--method ") + m));
    ASSERT_EQ(r.exit_code, 0) << m << r.err;
    auto j = nlohmann::json::parse(read_file(dir_.file("r.json")));
    EXPECT_EQ(j["method"], m);
    const auto& y = j["tensors"][2];
    EXPECT_EQ(y["range_min"].get<double>(), -y["range_max"].get<double>());  // symmetric by default
    EXPECT_LE(y["range_max"].get<double>(), 48.0);
    EXPECT_GT(y["range_max"].get<double>(), 10.0);
  }
}

TEST_F(CalibrateCli, BadInputsAreExitCode2WithClearMessages) {
  auto r = run_command(calibrate_cmd(dir_, "--method kl"));
  EXPECT_EQ(r.exit_code, 2);
  r = run_command(fmt::format("'{}' calibrate '{}' --calib '{}' -o '{}'", testing::qtool_bin(), dir_.file("m.onnx"),
                              dir_.file("nowhere"), dir_.file("r.json")));
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("nowhere"), std::string::npos) << r.err;
  write_npy(dir_.file("samples/s9.npy"), Tensor(DataType::kFloat, {1, 2, 4, 4}));
  r = run_command(calibrate_cmd(dir_, ""));
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("s9.npy"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("input 'x'"), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(dir_.file("r.json")));
}

// Ctrl-C stops between samples: exit status 130, no ranges file written.
TEST(CalibrateCliShared, SigintStopsCleanlyWithExit130) {
  QTOOL_REQUIRE_SHARED();
  TempDir d;
  const std::string cmd = fmt::format(
      "'{}' calibrate '{}' --calib '{}' --preprocess mobilenetv2-244 --samples 400 --no-progress -o '{}' & pid=$!; "
      "sleep 3; kill -INT $pid; wait $pid; echo rc=$?",
      testing::qtool_bin(), testing::shared_path("models/mobilenetv2/mobilenetv2_dequant_fp32.onnx"),
      testing::shared_path("data/imagenet-sample/images"), d.file("r.json"));
  auto r = run_command(cmd);
  EXPECT_NE(r.out.find("rc=130"), std::string::npos) << r.out << r.err;
  EXPECT_NE(r.err.find("interrupted after"), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(d.file("r.json")));
}

}  // namespace
}  // namespace qtool
