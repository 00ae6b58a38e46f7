// Resize / Upsample against hand-computed coordinate mappings.
#include <gtest/gtest.h>

#include "nn_test_util.h"

namespace qtool::testing {
namespace {

TEST(ResizeKernel, NearestUpsampleByScales) {
  auto y = run_node({.op = "Resize", .inputs = {ft({1, 1, 2, 2}, {1, 2, 3, 4}), Tensor(), ft({4}, {1, 1, 2, 2})},
                     .attrs = {as("mode", "nearest")}, .opset = 13});
  ASSERT_EQ(y[0].shape(), (Shape{1, 1, 4, 4}));
  EXPECT_VALUES_NEAR(y[0], (std::vector<float>{1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4}), 0);
}

TEST(ResizeKernel, LinearCoordinateModes) {
  Tensor x = ft({1, 2}, {0, 1});
  Tensor sizes = Tensor::from_vector<int64_t>({2}, {1, 4});
  auto hp = run_node({.op = "Resize", .inputs = {x, Tensor(), Tensor(), sizes}, .attrs = {as("mode", "linear")}, .opset = 13});
  EXPECT_VALUES_NEAR(hp[0], (std::vector<float>{0, 0.25f, 0.75f, 1}), 1e-6);
  auto ac = run_node({.op = "Resize", .inputs = {x, Tensor(), Tensor(), sizes},
                      .attrs = {as("mode", "linear"), as("coordinate_transformation_mode", "align_corners")}, .opset = 13});
  EXPECT_VALUES_NEAR(ac[0], (std::vector<float>{0, 1.0f / 3, 2.0f / 3, 1}), 1e-6);
  auto asym = run_node({.op = "Resize", .inputs = {x, Tensor(), Tensor(), sizes},
                        .attrs = {as("mode", "linear"), as("coordinate_transformation_mode", "asymmetric")}, .opset = 13});
  EXPECT_VALUES_NEAR(asym[0], (std::vector<float>{0, 0.5f, 1, 1}), 1e-6);
}

TEST(ResizeKernel, BilinearDownsampleHalfPixel) {
  // 4x4 ramp -> 2x2 with half_pixel: samples at 0.5, 2.5 in each dim.
  std::vector<float> v(16);
  for (int i = 0; i < 16; ++i) v[i] = static_cast<float>(i);
  auto y = run_node({.op = "Resize", .inputs = {ft({1, 1, 4, 4}, v), Tensor(), ft({4}, {1, 1, 0.5f, 0.5f})},
                     .attrs = {as("mode", "linear")}, .opset = 13});
  EXPECT_VALUES_NEAR(y[0], (std::vector<float>{2.5f, 4.5f, 10.5f, 12.5f}), 1e-5);
}

TEST(ResizeKernel, NearestModesAndCubicOnLinearRamp) {
  Tensor x = ft({1, 4}, {0, 10, 20, 30});
  Tensor sizes = Tensor::from_vector<int64_t>({2}, {1, 8});
  // asymmetric x/2: 0, .5, 1, 1.5, ...; round_prefer_ceil picks 1 at .5, floor picks 0.
  auto c = run_node({.op = "Resize", .inputs = {x, Tensor(), Tensor(), sizes},
                     .attrs = {as("coordinate_transformation_mode", "asymmetric"), as("nearest_mode", "round_prefer_ceil")},
                     .opset = 13});
  EXPECT_VALUES_NEAR(c[0], (std::vector<float>{0, 10, 10, 20, 20, 30, 30, 30}), 0);
  auto f = run_node({.op = "Resize", .inputs = {x, Tensor(), Tensor(), sizes},
                     .attrs = {as("coordinate_transformation_mode", "asymmetric"), as("nearest_mode", "floor")}, .opset = 13});
  EXPECT_VALUES_NEAR(f[0], (std::vector<float>{0, 0, 10, 10, 20, 20, 30, 30}), 0);
  // Cubic convolution reproduces a linear function where all 4 taps are inside the input.
  std::vector<float> ramp(8);
  for (int i = 0; i < 8; ++i) ramp[i] = 3.0f * i;
  auto cu = run_node({.op = "Resize", .inputs = {ft({1, 8}, ramp), Tensor(), ft({2}, {1, 2})},
                      .attrs = {as("mode", "cubic"), as("coordinate_transformation_mode", "asymmetric")}, .opset = 13});
  const std::vector<float> out = fv(cu[0]);
  for (int o = 2; o < 12; ++o) EXPECT_NEAR(out[o], 1.5f * o, 1e-4) << o;
}

TEST(ResizeKernel, TfCropAndResizeExtrapolates) {
  // roi [0.5, 1.5] on a 1-D length-3 input [0, 10, 20]: samples at 1, 3 (outside) -> 10, extrapolation
  auto y = run_node({.op = "Resize", .inputs = {ft({1, 3}, {0, 10, 20}), ft({4}, {0, 0.5f, 1, 1.5f}), Tensor(),
                                                Tensor::from_vector<int64_t>({2}, {1, 2})},
                     .attrs = {as("mode", "linear"), as("coordinate_transformation_mode", "tf_crop_and_resize"),
                               af("extrapolation_value", -1.0f)},
                     .opset = 13});
  EXPECT_VALUES_NEAR(y[0], (std::vector<float>{10, -1}), 1e-6);
}

TEST(ResizeKernel, Opset18AxesAndKeepAspectRatio) {
  Tensor x = ft({1, 1, 2, 4}, {1, 2, 3, 4, 5, 6, 7, 8});
  auto y = run_node({.op = "Resize", .inputs = {x, Tensor(), Tensor(), Tensor::from_vector<int64_t>({2}, {4, 4})},
                     .attrs = {ais("axes", {2, 3}), as("keep_aspect_ratio_policy", "not_larger")}, .opset = 18});
  EXPECT_EQ(y[0].shape(), (Shape{1, 1, 2, 4}));  // scale min(4/2, 4/4) = 1
  EXPECT_VALUES_NEAR(y[0], (std::vector<float>{1, 2, 3, 4, 5, 6, 7, 8}), 0);
}

TEST(UpsampleKernel, Opset7AttributeAndResize10) {
  auto y = run_node({.op = "Upsample", .inputs = {ft({1, 1, 1, 2}, {1, 2})},
                     .attrs = {afs("scales", {1, 1, 2, 2}), as("mode", "nearest")}, .opset = 7});
  EXPECT_VALUES_NEAR(y[0], (std::vector<float>{1, 1, 2, 2, 1, 1, 2, 2}), 0);
  // Resize-10 linear is asymmetric: [0, 1] x2 -> 0, .5, 1, 1
  auto r = run_node({.op = "Resize", .inputs = {ft({1, 2}, {0, 1}), ft({2}, {1, 2})}, .attrs = {as("mode", "linear")}, .opset = 10});
  EXPECT_VALUES_NEAR(r[0], (std::vector<float>{0, 0.5f, 1, 1}), 1e-6);
}

}  // namespace
}  // namespace qtool::testing
