// --bits fp4: FLOAT4E2M1 weights with float16 block scales (a row of the precision table plus its
// level rule). ONNX Runtime 1.30's CPU provider runs neither DequantizeLinear nor Cast of FLOAT4E2M1,
// so the codes are stored as uint4 (the same 4 bits) and decoded by Cast(to=int32) -> Gather on the
// 16 E2M1 values -> Mul by the block scales, which ONNX Runtime folds at load; qtool's executor
// gives the same outputs, and the report lists the layers from the quantizer's records.
#include <gtest/gtest.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "qtool/core/npy.h"
#include "qtool/onnx_io/onnx_io.h"
#include "test_util.h"

namespace qtool {
namespace {

TEST(CliQuantizeFp4, DigitsRunsInOnnxRuntimeAndMatchesTheExecutor) {
  QTOOL_REQUIRE_ORT();
  testing::TempDir d;
  const std::string model = testing::source_path("calibration_samples/digits/digits_cnn.onnx");
  const auto q = testing::run_command(fmt::format("{} quantize {} --bits fp4 --calib {} --samples 64 --json -o {}",
                                                  testing::qtool_bin(), model,
                                                  testing::source_path("calibration_samples/digits"), d.file("q.onnx")));
  ASSERT_EQ(q.exit_code, 0) << q.err;
  const nlohmann::json rep = nlohmann::json::parse(q.out);
  int fp4 = 0;
  for (const auto& l : rep["layers"]) {
    if (l["precision"] != "fp4") continue;
    ++fp4;
    // 4-bit codes + a float16 scale per block (or per channel) + the 64-byte table: 4.2 .. 4.6 bits.
    EXPECT_GT(l["bits_per_weight"].get<double>(), 4.0) << l;
    EXPECT_LT(l["bits_per_weight"].get<double>(), 4.7) << l;
    EXPECT_GT(l["weight_sqnr_db"].get<double>(), 12.0) << l;  // E2M1: ~15-17 dB on these weights
  }
  EXPECT_EQ(fp4, 3);  // first and last layers stay int8
  EXPECT_EQ(rep["precision"], "Wfp4 (block 32) A32");
  EXPECT_GT(rep["evaluation"]["outputs"][0]["sqnr_db"].get<double>(), 15.0);
  const ir::Model m = onnx_io::load_model(d.file("q.onnx"));
  EXPECT_GE(m.opset(""), 21);
  int gathers = 0, dqs = 0;
  for (const auto& n : m.graph->nodes()) {
    gathers += n->op_type() == "Gather";
    dqs += n->op_type() == "DequantizeLinear";
  }
  EXPECT_EQ(gathers, 3);
  EXPECT_EQ(dqs, 2);  // the int8 first and last layers only: fp4 is written in the Cast/Gather form
  // The codes are stored as uint4: 4 bits per weight in the file.
  int uint4_codes = 0;
  for (const ir::Value* v : m.graph->initializers())
    if (v->initializer()->dtype() == DataType::kUint4) ++uint4_codes;
  EXPECT_EQ(uint4_codes, 3);
  const Tensor x = read_npy(testing::source_path("calibration_samples/digits/calib_0001.npy"));
  EXPECT_LT(testing::ort_vs_qtool_run_error(d.file("q.onnx"), "image", x, "logits", d.path()), 1e-4);
  // No MatMulNBits form for fp4: refused with a message naming the formats.
  const auto mnb = testing::run_command(fmt::format("{} quantize {} --bits fp4 --format matmulnbits -o {}",
                                                    testing::qtool_bin(), model, d.file("m.onnx")));
  EXPECT_EQ(mnb.exit_code, 2) << mnb.err;
}

}  // namespace
}  // namespace qtool
