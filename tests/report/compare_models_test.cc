// compare_models on the bundled digits CNN against a QDQ copy built here: output metrics,
// label accuracy, and per-layer drift that finds the layer where error was planted.
#include <cmath>
#include <filesystem>

#include <gtest/gtest.h>

#include "qtool/core/npy.h"
#include "qtool/onnx_io/onnx_io.h"
#include "qtool/report/compare.h"
#include "qdq_fixture.h"
#include "test_util.h"

namespace qtool::report {
namespace {

std::string example_model() { return testing::source_path("calibration_samples/digits/digits_cnn.onnx"); }
std::string eval_dir() { return testing::source_path("calibration_samples/digits_eval"); }

ir::Model make_qdq(const std::string& path, const std::map<std::string, float>& levels) {
  return testing::make_weight_qdq(path, levels);
}

SampleProvider eval_provider(size_t count, bool with_labels) {
  auto labels = std::make_shared<std::map<std::string, int64_t>>(read_labels(eval_dir() + "/labels.csv"));
  auto i = std::make_shared<size_t>(0);
  return [=](CompareSample& s) {
    if (*i >= count) return false;
    const std::string name = fmt::format("eval_{:04d}.npy", *i);
    s.inputs["image"] = read_npy(eval_dir() + "/" + name);
    s.name = name;
    if (with_labels) s.labels = {lookup_label(*labels, name, static_cast<int64_t>(*i))};
    ++*i;
    return true;
  };
}

TEST(CompareModels, IdenticalModelsAreExactAndAccuracyMatchesTheExample) {
  const ir::Model a = onnx_io::load_model(example_model());
  const ir::Model b = onnx_io::load_model(example_model());
  const CompareResult r = compare_models(a, b, eval_provider(500, true));
  EXPECT_EQ(r.samples, 500);
  ASSERT_EQ(r.outputs.size(), 1u);
  const auto& o = r.outputs[0];
  EXPECT_TRUE(o.classifier);
  EXPECT_TRUE(std::isinf(o.error.sqnr_db()));
  EXPECT_DOUBLE_EQ(o.classes.top1_agreement(), 1.0);
  // The example's documented FP32 accuracy (calibration_samples/README.md, also ONNX Runtime's).
  EXPECT_NEAR(o.classes.accuracy_ref(), 0.972, 1e-9);
  EXPECT_EQ(r.matched_tensors, 10);  // conv1..3, relu1..4, flatten, fc1, logits
}

TEST(CompareModels, PerLayerDriftFindsThePlantedLayer) {
  const ir::Model fp32 = onnx_io::load_model(example_model());
  // conv2 gets 4-bit-like weights (15 levels); every other layer int8.
  const ir::Model qdq = make_qdq(example_model(), {{"conv2", 7.f}});
  const CompareResult r = compare_models(fp32, qdq, eval_provider(100, true));
  ASSERT_FALSE(r.layers.empty());
  EXPECT_EQ(r.layers[0].tensor, "conv2");
  EXPECT_EQ(r.layers[0].op_type, "Conv");
  // Error enters at conv2: it adds far more noise than any other layer.
  EXPECT_LT(r.layers[0].added_noise_db, 20.0);
  EXPECT_GT(r.layers[0].sqnr_loss_db, 10.0);
  for (size_t i = 1; i < r.layers.size(); ++i) {
    EXPECT_GT(r.layers[i].added_noise_db, r.layers[0].added_noise_db + 5) << r.layers[i].tensor;
  }
  const auto& o = r.outputs[0];
  EXPECT_LT(o.error.sqnr_db(), 30.0);
  EXPECT_GT(o.error.sqnr_db(), 0.0);
  EXPECT_LT(o.error.cosine(), 1.0);
  EXPECT_GT(o.error.max_abs(), 0.0);

  // Plain int8 everywhere stays close to FP32.
  const ir::Model int8 = make_qdq(example_model(), {});
  const CompareResult r8 = compare_models(fp32, int8, eval_provider(100, true));
  EXPECT_GT(r8.outputs[0].error.sqnr_db(), 30.0);
  EXPECT_GE(r8.outputs[0].classes.top1_agreement(), 0.98);
  EXPECT_GT(r8.outputs[0].error.sqnr_db(), o.error.sqnr_db() + 10);
}

TEST(CompareModels, ParallelSamplesGiveTheSequentialResult) {
  // Without per-layer drift, threads > 1 runs samples in parallel workers; the sums are added in
  // sample order, so every metric equals the one-thread comparison's, and the reference cache
  // fills the same way.
  const ir::Model fp32 = onnx_io::load_model(example_model());
  const ir::Model qdq = make_qdq(example_model(), {{"conv2", 7.f}});
  CompareOptions one, two;
  one.per_layer = two.per_layer = false;
  two.threads = 2;
  ReferenceCache c1, c2;
  one.reference_cache = &c1;
  two.reference_cache = &c2;
  const CompareResult a = compare_models(fp32, qdq, eval_provider(37, true), one);
  const CompareResult b = compare_models(fp32, qdq, eval_provider(37, true), two);
  EXPECT_EQ(a.samples, 37);
  EXPECT_EQ(b.samples, 37);
  EXPECT_EQ(a.outputs[0].error.sqnr_db(), b.outputs[0].error.sqnr_db());
  EXPECT_EQ(a.outputs[0].error.max_abs(), b.outputs[0].error.max_abs());
  EXPECT_EQ(a.outputs[0].classes.top1_agreement(), b.outputs[0].classes.top1_agreement());
  EXPECT_EQ(a.outputs[0].classes.accuracy_test(), b.outputs[0].classes.accuracy_test());
  EXPECT_LT(a.outputs[0].error.sqnr_db(), 30.0);  // the planted error is there to be measured
  ASSERT_EQ(c2.outputs.size(), 37u);
  EXPECT_EQ(c1.outputs.size(), c2.outputs.size());
  // Read back from the cache (no FP32 run), the parallel comparison is still the same.
  const CompareResult again = compare_models(fp32, qdq, eval_provider(37, true), two);
  EXPECT_EQ(again.outputs[0].error.sqnr_db(), a.outputs[0].error.sqnr_db());
  // max_samples holds in parallel too, and an error names its sample.
  two.max_samples = 5;
  EXPECT_EQ(compare_models(fp32, qdq, eval_provider(37, true), two).samples, 5);
  auto bad = [n = 0](CompareSample& s) mutable {
    if (n == 3) return false;
    s.name = fmt::format("s{}", n++);
    s.inputs["image"] = Tensor::from_vector<float>({1, 1, 2, 2}, {0, 0, 0, 0});  // wrong shape
    return true;
  };
  try {
    compare_models(fp32, qdq, bad, two);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("on sample 's"), std::string::npos) << e.what();
  }
}

TEST(CompareModels, ParallelPerLayerDriftGivesTheSequentialFigures) {
  // With per-layer drift, each worker captures and compares its own samples; the per-layer sums
  // are merged at the end, so each layer's SQNR equals the one-thread figure up to the order of
  // the additions, the ranking finds the same planted layer, and the outputs are exactly equal.
  const ir::Model fp32 = onnx_io::load_model(example_model());
  const ir::Model qdq = make_qdq(example_model(), {{"conv2", 7.f}});
  CompareOptions one, two;
  two.threads = 2;
  const CompareResult a = compare_models(fp32, qdq, eval_provider(41, false), one);
  const CompareResult b = compare_models(fp32, qdq, eval_provider(41, false), two);
  EXPECT_EQ(a.outputs[0].error.sqnr_db(), b.outputs[0].error.sqnr_db());
  ASSERT_EQ(a.layers.size(), b.layers.size());
  ASSERT_GE(a.layers.size(), 8u);
  EXPECT_EQ(b.layers[0].tensor, "conv2");
  for (size_t i = 0; i < a.layers.size(); ++i) {
    EXPECT_EQ(a.layers[i].tensor, b.layers[i].tensor);
    EXPECT_EQ(a.layers[i].error.count(), b.layers[i].error.count()) << a.layers[i].tensor;
    EXPECT_NEAR(a.layers[i].error.sqnr_db(), b.layers[i].error.sqnr_db(), 1e-6) << a.layers[i].tensor;
  }
}

/// The example model with the bias of logit `cls` set to `value` (NaN: that logit is NaN on every
/// row, the nine others are exact).
ir::Model with_logit_bias(float value, int64_t cls) {
  ir::Model m = onnx_io::load_model(example_model());
  ir::Node* last = m.graph->outputs()[0]->producer();
  ir::Value* bias = last->input(2);
  Tensor b = bias->initializer()->to_float().clone();
  b.mutable_data<float>()[cls] = value;
  bias->set_initializer(std::move(b));
  return m;
}

TEST(CompareModels, NanInTheQuantizedOutputIsBrokenNotSkipped) {
  const ir::Model fp32 = onnx_io::load_model(example_model());
  const ir::Model nan_model = with_logit_bias(NAN, 3);
  ASSERT_EQ(fp32.graph->outputs()[0]->producer()->op_type(), "Gemm");
  const CompareResult r = compare_models(fp32, nan_model, eval_provider(20, true));
  const auto& o = r.outputs[0];
  // One NaN logit per row: 20 broken pairs. Skipping them (as before) would leave 180 exact pairs,
  // SQNR +inf and 100% agreement: a broken model that looks perfect.
  EXPECT_EQ(o.error.broken(), 20);
  EXPECT_EQ(o.error.non_finite(), 20);
  EXPECT_EQ(o.error.count(), 200);
  EXPECT_TRUE(std::isinf(o.error.sqnr_db()) && o.error.sqnr_db() < 0) << o.error.sqnr_db();
  EXPECT_EQ(o.error.cosine(), 0.0);
  EXPECT_TRUE(std::isinf(o.error.max_abs()));
  EXPECT_TRUE(std::isinf(o.error.mean_abs()));
  // A row with a NaN score has no prediction: it disagrees, and the quantized model gets it wrong.
  ASSERT_TRUE(o.classifier);
  EXPECT_EQ(o.classes.rows(), 20);
  EXPECT_DOUBLE_EQ(o.classes.top1_agreement(), 0.0);
  EXPECT_DOUBLE_EQ(o.classes.top5_agreement(), 0.0);
  EXPECT_DOUBLE_EQ(o.classes.accuracy_test(), 0.0);
  EXPECT_GT(o.classes.accuracy_ref(), 0.5);
  // The gate fails and the text says why.
  Gates g;
  g.min_sqnr_db = 10.0;
  const auto gates = check_gates(r, g);
  ASSERT_EQ(gates.size(), 1u);
  EXPECT_FALSE(gates[0].passed);
  const std::string text = format_compare_text(r, gates);
  EXPECT_NE(text.find("BROKEN            20 quantized values are NaN/inf"), std::string::npos) << text;
  EXPECT_NE(text.find("SQNR              -inf"), std::string::npos) << text;
  const auto q = to_output_quality(r);
  EXPECT_TRUE(std::isinf(q[0].sqnr_db) && q[0].sqnr_db < 0);
}

TEST(CompareModels, NanInTheReferenceIsSkippedAndCounted) {
  // The FP32 side holds the NaN: nothing to measure those pairs against.
  const ir::Model nan_model = with_logit_bias(NAN, 3);
  const ir::Model fp32 = onnx_io::load_model(example_model());
  const CompareResult r = compare_models(nan_model, fp32, eval_provider(20, false));
  const auto& o = r.outputs[0];
  EXPECT_EQ(o.error.non_finite(), 20);
  EXPECT_EQ(o.error.broken(), 0);
  EXPECT_EQ(o.error.count(), 180);
  EXPECT_TRUE(std::isinf(o.error.sqnr_db()) && o.error.sqnr_db() > 0);  // the other logits are exact
  // Rows whose FP32 scores hold a NaN have no reference prediction: skipped, so not measured.
  EXPECT_EQ(o.classes.rows(), 0);
  EXPECT_TRUE(std::isnan(o.classes.top1_agreement()));
}

TEST(CompareModels, MaxSamplesAndNoPerLayer) {
  const ir::Model a = onnx_io::load_model(example_model());
  CompareOptions opt;
  opt.max_samples = 7;
  opt.per_layer = false;
  const CompareResult r = compare_models(a, a, eval_provider(500, false), opt);
  EXPECT_EQ(r.samples, 7);
  EXPECT_TRUE(r.layers.empty());
  EXPECT_EQ(r.outputs[0].classes.labeled_rows(), 0);
}

TEST(CompareModels, NoSamplesIsBadInput) {
  const ir::Model a = onnx_io::load_model(example_model());
  try {
    compare_models(a, a, [](CompareSample&) { return false; });
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidInput);
  }
}

}  // namespace
}  // namespace qtool::report
