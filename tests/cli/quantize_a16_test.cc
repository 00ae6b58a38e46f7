// qtool quantize --bits 8 --activation-bits 16 (A16W8): uint16 Q/DQ at opset 21 that ONNX Runtime
// loads, and whose outputs qtool's executor reproduces.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "qtool/core/npy.h"
#include "test_util.h"

namespace qtool {
namespace {

using testing::qtool_bin;
using testing::run_command;
using testing::source_path;

TEST(QuantizeA16W8, Uint16ActivationsRunInOrtAndMatchTheExecutor) {
  QTOOL_REQUIRE_ORT();
  testing::TempDir dir;
  const std::string out = dir.file("a16.onnx");
  auto q = run_command(fmt::format("{} -q quantize {} --bits 8 --activation-bits 16 --calib {} --samples 64 -o {}",
                                   qtool_bin(), source_path("calibration_samples/digits/digits_cnn.onnx"),
                                   source_path("calibration_samples/digits/"), out));
  ASSERT_EQ(q.exit_code, 0) << q.err;
  EXPECT_NE(q.out.find("W8A16"), std::string::npos) << q.out;

  auto r = run_command(fmt::format("{} inspect --json {}", qtool_bin(), out));
  const auto doc = nlohmann::json::parse(r.out);
  EXPECT_EQ(doc["quantization"]["qdq_bits"]["uint16"].get<int>() > 0, true) << r.out;

  const std::string x = source_path("calibration_samples/digits_eval/eval_0000.npy");
  auto ort = testing::ort_run(out, {{"image", read_npy(x)}});
  auto run = run_command(fmt::format("{} -q run {} -i image={} -o {}", qtool_bin(), out, x, dir.file("o")));
  ASSERT_EQ(run.exit_code, 0) << run.err;
  const Tensor ours = read_npy(dir.file("o/logits.npy"));
  ASSERT_EQ(ort.count("logits"), 1u);
  EXPECT_LT(testing::max_abs_error(ours, ort["logits"]), 1e-4);
}

}  // namespace
}  // namespace qtool
