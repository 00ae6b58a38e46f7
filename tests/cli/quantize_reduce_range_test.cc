// --reduce-range: 7-bit weight levels, so that ONNX Runtime's u8s8 kernels cannot saturate on x86
// CPUs without VNNI (2·255·63 < 32767). Every int8 weight stays in [-64, 63], and ONNX Runtime's
// fused integer kernels then compute exactly what qtool's executor computes on every CPU.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include "qtool/core/npy.h"
#include "qtool/onnx_io/onnx_io.h"
#include "qtool/quant/qdq.h"
#include "test_util.h"

namespace qtool {
namespace {

TEST(ReduceRange, WeightLevelsAreSevenBitsAndScalesUseThem) {
  const Tensor w = Tensor::from_vector<float>({2, 3}, {1.0f, -0.5f, 0.25f, -2.0f, 0.0f, 2.0f});
  const quant::QuantizedWeight q = quant::quantize_weight(w, true, 0, DataType::kInt8, true);
  ASSERT_EQ(q.scales.size(), 2u);
  EXPECT_FLOAT_EQ(q.scales[0], 1.0f / 63.0f);
  EXPECT_FLOAT_EQ(q.scales[1], 2.0f / 63.0f);
  const int8_t* v = q.values.data<int8_t>();
  EXPECT_EQ(v[0], 63);
  EXPECT_EQ(v[2], 16);  // 0.25 · 63 = 15.75
  EXPECT_EQ(v[3], -63);
  EXPECT_EQ(v[5], 63);
  const quant::QuantizedWeight full = quant::quantize_weight(w, true, 0, DataType::kInt8, false);
  EXPECT_EQ(full.values.data<int8_t>()[0], 127);
}

TEST(ReduceRange, DigitsInt8MatchesOnnxRuntimeExactlyOnAnyCpu) {
  QTOOL_REQUIRE_ORT();
  testing::TempDir d;
  const std::string model = testing::source_path("calibration_samples/digits/digits_cnn.onnx");
  const auto q = testing::run_command(fmt::format("{} quantize {} --bits 8 --reduce-range --calib {} --samples 64 -o {}",
                                                  testing::qtool_bin(), model,
                                                  testing::source_path("calibration_samples/digits"), d.file("q.onnx")));
  ASSERT_EQ(q.exit_code, 0) << q.err;
  const ir::Model m = onnx_io::load_model(d.file("q.onnx"));
  int weights = 0;
  for (const ir::Value* v : m.graph->initializers()) {
    const Tensor* t = v->initializer();
    if (t->dtype() != DataType::kInt8) continue;
    ++weights;
    for (int64_t i = 0; i < t->numel(); ++i) {
      ASSERT_GE(t->data<int8_t>()[i], -64) << v->name();
      ASSERT_LE(t->data<int8_t>()[i], 63) << v->name();
    }
  }
  EXPECT_EQ(weights, 5);
  const Tensor x = read_npy(testing::source_path("calibration_samples/digits/calib_0001.npy"));
  // No VNNI needed: the u8s8 pair sums cannot saturate, so ONNX Runtime's integer result is exact.
  EXPECT_LT(testing::ort_vs_qtool_run_error(d.file("q.onnx"), "image", x, "logits", d.path()), 1e-5);
}

}  // namespace
}  // namespace qtool
