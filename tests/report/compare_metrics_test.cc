// Compare metrics against hand-computed values: SQNR, cosine, errors, top-k agreement, labels, gates.
#include <cmath>
#include <fstream>
#include <random>

#include <gtest/gtest.h>

#include "qtool/core/error.h"
#include "qtool/core/npy.h"
#include "qtool/report/compare.h"
#include "test_util.h"

namespace qtool::report {
namespace {

TEST(ErrorAccumulator, HandComputedSqnrCosineAndErrors) {
  // r = [1,2,3,4], e = [0.1,-0.1,0.1,-0.1]: sum r^2 = 30, sum e^2 = 0.04 -> SQNR = 10 log10(750).
  const std::vector<float> r{1, 2, 3, 4};
  const std::vector<float> t{1.1f, 1.9f, 3.1f, 3.9f};
  ErrorAccumulator acc;
  acc.add(r.data(), t.data(), 4);
  EXPECT_NEAR(acc.sqnr_db(), 28.7506, 1e-3);
  // sum rt = 29.8, sum t^2 = 29.64 -> cos = 29.8 / sqrt(30 * 29.64) = 0.999347.
  EXPECT_NEAR(acc.cosine(), 0.999347, 1e-5);
  EXPECT_NEAR(acc.max_abs(), 0.1, 1e-6);
  EXPECT_NEAR(acc.mean_abs(), 0.1, 1e-6);
  EXPECT_EQ(acc.count(), 4);
}

TEST(ErrorAccumulator, SqnrOfKnownUniformNoise) {
  // Unit Gaussian signal plus uniform noise in [-a, a] (power a^2/3): SQNR = 10 log10(3 / a^2).
  std::mt19937 gen(7);
  std::normal_distribution<float> sig(0.f, 1.f);
  const float a = 0.05f;
  std::uniform_real_distribution<float> noise(-a, a);
  ErrorAccumulator acc;
  for (int chunk = 0; chunk < 20; ++chunk) {  // streamed in chunks, like samples
    std::vector<float> r(10000), t(10000);
    for (size_t i = 0; i < r.size(); ++i) {
      r[i] = sig(gen);
      t[i] = r[i] + noise(gen);
    }
    acc.add(r.data(), t.data(), static_cast<int64_t>(r.size()));
  }
  EXPECT_NEAR(acc.sqnr_db(), 10.0 * std::log10(3.0 / (a * a)), 0.05);  // 30.79 dB
  EXPECT_LE(acc.max_abs(), a);
  EXPECT_NEAR(acc.mean_abs(), a / 2, 0.001);
}

TEST(ErrorAccumulator, ValuesWhoseSquaresOverflowAFloatAreSummedInDouble) {
  // The fast path sums squares in float per block; 1e20² overflows a float, so such a stream is
  // summed again in double: the same SQNR as the scaled-down stream (scale-free), not NaN or inf.
  std::vector<float> r(3000), t(3000), rs(3000), ts(3000);
  for (size_t i = 0; i < r.size(); ++i) {
    rs[i] = std::sin(0.01f * static_cast<float>(i));
    ts[i] = rs[i] + (i % 2 ? 0.01f : -0.01f);
    r[i] = 1e20f * rs[i];
    t[i] = 1e20f * ts[i];
  }
  ErrorAccumulator big, small;
  big.add(r.data(), t.data(), 3000);
  small.add(rs.data(), ts.data(), 3000);
  EXPECT_EQ(big.non_finite(), 0);
  ASSERT_TRUE(std::isfinite(big.sqnr_db()));
  EXPECT_NEAR(big.sqnr_db(), small.sqnr_db(), 1e-3);
  EXPECT_NEAR(small.sqnr_db(), 10.0 * std::log10(0.5 / 1e-4), 0.2);  // mean sin² ≈ 1/2 over many periods
  EXPECT_NEAR(big.max_abs(), 1e18, 1e14);
}

TEST(ErrorAccumulator, IdenticalIsInfiniteAndMergeMatchesOnePass) {
  const std::vector<float> r{1, -2, 3};
  ErrorAccumulator same;
  same.add(r.data(), r.data(), 3);
  EXPECT_TRUE(std::isinf(same.sqnr_db()) && same.sqnr_db() > 0);
  EXPECT_DOUBLE_EQ(same.cosine(), 1.0);

  const std::vector<float> t{1.5f, -2, 2};
  ErrorAccumulator whole, a, b;
  whole.add(r.data(), t.data(), 3);
  a.add(r.data(), t.data(), 1);
  b.add(r.data() + 1, t.data() + 1, 2);
  a.merge(b);
  EXPECT_DOUBLE_EQ(a.sqnr_db(), whole.sqnr_db());
  EXPECT_DOUBLE_EQ(a.max_abs(), 1.0);
  // sum r^2 = 14, sum e^2 = 0.25 + 1 = 1.25 -> 10 log10(11.2) = 10.4922 dB.
  EXPECT_NEAR(whole.sqnr_db(), 10.4922, 1e-3);
}

TEST(ErrorAccumulator, NonFiniteValuesAreCountedNotSummed) {
  const std::vector<float> r{1, 2, NAN};
  const std::vector<float> t{1, 2, 3};
  ErrorAccumulator acc;
  acc.add(r.data(), t.data(), 3);
  EXPECT_EQ(acc.non_finite(), 1);
  EXPECT_EQ(acc.count(), 2);
  EXPECT_TRUE(std::isinf(acc.sqnr_db()));
}

TEST(ErrorAccumulator, NonFiniteTestValueIsMaximalError) {
  // A finite reference against NaN/inf: the quantized output is broken, whatever the other pairs say.
  const std::vector<float> r{1, 2, 3, 4};
  const std::vector<float> t{1, 2, NAN, INFINITY};
  ErrorAccumulator acc;
  acc.add(r.data(), t.data(), 4);
  EXPECT_EQ(acc.broken(), 2);
  EXPECT_EQ(acc.non_finite(), 2);
  EXPECT_EQ(acc.count(), 4);
  EXPECT_TRUE(std::isinf(acc.sqnr_db()) && acc.sqnr_db() < 0);
  EXPECT_EQ(acc.cosine(), 0.0);
  EXPECT_TRUE(std::isinf(acc.max_abs()));
  // Merged into a clean stream, it stays broken.
  ErrorAccumulator clean;
  clean.add(r.data(), r.data(), 4);
  clean.merge(acc);
  EXPECT_EQ(clean.broken(), 2);
  EXPECT_TRUE(std::isinf(clean.sqnr_db()) && clean.sqnr_db() < 0);
  // Nothing measured is NaN, not "broken" or "exact".
  ErrorAccumulator none;
  const float nan_ref = NAN, one = 1;
  none.add(&nan_ref, &one, 1);
  EXPECT_EQ(none.count(), 0);
  EXPECT_TRUE(std::isnan(none.sqnr_db()));
  EXPECT_TRUE(std::isnan(none.cosine()));
  EXPECT_TRUE(std::isnan(none.max_abs()));
  EXPECT_TRUE(std::isnan(none.mean_abs()));
}

TEST(ErrorAccumulator, ShapeMismatchNamesTheTensor) {
  ErrorAccumulator acc;
  try {
    acc.add(Tensor(DataType::kFloat, {2, 3}), Tensor(DataType::kFloat, {2, 4}), "output 'y'");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidInput);
    EXPECT_NE(std::string(e.what()).find("output 'y'"), std::string::npos);
  }
}

TEST(ClassifierAccumulator, TopKAgreementAndAccuracy) {
  // 4 rows of 6 classes. FP32 argmax: 0, 1, 2, 5. Quantized argmax: 0, 3, 2, 4.
  // Row 1: FP32's class 1 has the quantized model's 2nd score -> in top-5. Row 3: FP32's class 5
  // is the quantized model's lowest score -> not in top-5.
  const std::vector<float> ref{9, 1, 1, 1, 1, 1,  //
                               0, 9, 1, 2, 3, 4,  //
                               1, 2, 9, 3, 4, 5,  //
                               1, 2, 3, 4, 5, 9};
  const std::vector<float> tst{9, 1, 1, 1, 1, 1,  //
                               0, 8, 1, 9, 3, 4,  //
                               1, 2, 9, 3, 4, 5,  //
                               5, 6, 7, 8, 9, 0};
  ClassifierAccumulator acc;
  acc.add(ref.data(), tst.data(), 4, 6, {0, 1, 9 /*wrong for both*/, 4});
  EXPECT_EQ(acc.rows(), 4);
  EXPECT_DOUBLE_EQ(acc.top1_agreement(), 0.5);
  EXPECT_DOUBLE_EQ(acc.top5_agreement(), 0.75);
  EXPECT_EQ(acc.labeled_rows(), 4);
  EXPECT_DOUBLE_EQ(acc.accuracy_ref(), 0.5);   // rows 0, 1
  EXPECT_DOUBLE_EQ(acc.accuracy_test(), 0.5);  // rows 0, 3
}

TEST(ClassifierAccumulator, UnknownLabelsCountForAgreementOnly) {
  const std::vector<float> ref{0, 1, 1, 0};
  ClassifierAccumulator acc;
  acc.add(ref.data(), ref.data(), 2, 2, {-1, 0});
  EXPECT_EQ(acc.labeled_rows(), 1);
  EXPECT_DOUBLE_EQ(acc.accuracy_ref(), 1.0);
  EXPECT_DOUBLE_EQ(acc.top1_agreement(), 1.0);
}

TEST(Compare, ClassifierShapes) {
  EXPECT_TRUE(is_classifier_shape({1, 10}));
  EXPECT_TRUE(is_classifier_shape({8, 1000, 1, 1}));
  EXPECT_FALSE(is_classifier_shape({1, 1}));
  EXPECT_FALSE(is_classifier_shape({1, 10, 7, 7}));
  EXPECT_FALSE(is_classifier_shape({1, 5, 512}));
}

CompareResult fake_result(double acc_ref_rows_correct, double acc_test_rows_correct) {
  // 10 labelled rows of 2 classes; the first N rows are correct for each model.
  CompareResult r;
  r.samples = 10;
  OutputComparison o;
  o.name = "logits";
  o.shape = {1, 2};
  o.classifier = true;
  for (int i = 0; i < 10; ++i) {
    const float ref[2] = {i < acc_ref_rows_correct ? 1.f : 0.f, i < acc_ref_rows_correct ? 0.f : 1.f};
    const float tst[2] = {i < acc_test_rows_correct ? 1.f : 0.f, i < acc_test_rows_correct ? 0.f : 1.f};
    o.classes.add(ref, tst, 1, 2, {0});
    const float e[2] = {ref[0] + 0.01f, ref[1]};
    o.error.add(ref, e, 2);
  }
  r.outputs.push_back(std::move(o));
  return r;
}

TEST(Gates, PassAndFailWithValues) {
  const CompareResult r = fake_result(9, 8);  // 90% vs 80%: drop 10 points, agreement 0.9
  Gates g;
  g.max_drop_points = 10.0;
  g.min_agreement = 0.95;
  g.min_sqnr_db = 30.0;
  const auto res = check_gates(r, g);
  ASSERT_EQ(res.size(), 3u);
  EXPECT_EQ(res[0].gate, "max-drop");
  EXPECT_NEAR(res[0].value, 10.0, 1e-9);
  EXPECT_TRUE(res[0].passed);  // equal to the threshold passes
  EXPECT_EQ(res[1].gate, "min-sqnr");
  // sum r^2 = 10, sum e^2 = 10 * 1e-4 -> 40 dB.
  EXPECT_NEAR(res[1].value, 40.0, 0.01);
  EXPECT_TRUE(res[1].passed);
  EXPECT_EQ(res[2].gate, "min-agreement");
  EXPECT_NEAR(res[2].value, 0.9, 1e-12);
  EXPECT_FALSE(res[2].passed);
  EXPECT_NE(res[2].message.find("0.9000 < 0.9500"), std::string::npos) << res[2].message;
}

TEST(Gates, UnusableGateIsAConfigError) {
  CompareResult r = fake_result(5, 5);
  r.outputs[0].classifier = false;
  Gates g;
  g.min_agreement = 0.9;
  EXPECT_THROW(check_gates(r, g), Error);
  Gates d;
  d.max_drop_points = 1.0;
  try {
    check_gates(r, d);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kConfig);
  }
}

TEST(CompareJson, SchemaFields) {
  const CompareResult r = fake_result(9, 8);
  Gates g;
  g.min_agreement = 0.95;
  const auto j = compare_to_json(r, check_gates(r, g), "a.onnx", "b.onnx");
  EXPECT_EQ(j["schema"], "qtool.compare");
  EXPECT_EQ(j["schema_version"], kCompareSchemaVersion);
  EXPECT_EQ(j["samples"], 10);
  ASSERT_EQ(j["outputs"].size(), 1u);
  const auto& o = j["outputs"][0];
  for (const char* k : {"name", "shape", "elements", "sqnr_db", "identical", "cosine", "max_abs_error",
                        "mean_abs_error", "non_finite", "classifier", "rows", "top1_agreement", "top5_agreement",
                        "accuracy"})
    EXPECT_TRUE(o.contains(k)) << k;
  EXPECT_NEAR(o["accuracy"]["drop_points"].get<double>(), 10.0, 1e-9);
  EXPECT_NEAR(o["top1_agreement"].get<double>(), 0.9, 1e-12);
  EXPECT_FALSE(j["passed"].get<bool>());
  EXPECT_EQ(j["gates"][0]["gate"], "min-agreement");
  EXPECT_TRUE(j["layers"].is_array());
}

TEST(Labels, CsvWithHeaderPlainAndNpy) {
  testing::TempDir dir;
  {
    std::ofstream f(dir.file("labels.csv"));
    f << "file,wnid,class_index,label\n"
      << "n01440764_tench.JPEG,n01440764,0,\"tench, Tinca tinca\"\n"
      << "b.JPEG,n1,7,\"x, y\"\n";
  }
  auto l = read_labels(dir.file("labels.csv"));
  EXPECT_EQ(lookup_label(l, "images/n01440764_tench.JPEG", 5), 0);
  EXPECT_EQ(lookup_label(l, "b.JPEG", 0), 7);
  EXPECT_EQ(lookup_label(l, "c.JPEG", 0), -1);
  {
    std::ofstream f(dir.file("plain.txt"));
    f << "3\n1\n4\n";
  }
  l = read_labels(dir.file("plain.txt"));
  EXPECT_EQ(lookup_label(l, "whatever.npy", 2), 4);
  write_npy(dir.file("labels.npy"), Tensor::from_vector<int64_t>({3}, {5, 6, 7}));
  l = read_labels(dir.file("labels.npy"));
  EXPECT_EQ(lookup_label(l, "x", 1), 6);
  {
    std::ofstream f(dir.file("bad.csv"));
    f << "file,label\na.npy,seven\n";
  }
  EXPECT_THROW(read_labels(dir.file("bad.csv")), Error);
  EXPECT_THROW(read_labels(dir.file("missing.csv")), Error);
}

}  // namespace
}  // namespace qtool::report

namespace qtool::report {
namespace {

TEST(ClassifierAccumulator, MeanKlOfLogitsAndOfProbabilities) {
  // Logits [0, 0] vs [ln 3, 0]: p = (1/2, 1/2), q = (3/4, 1/4);
  // KL = 1/2 ln(2/3) + 1/2 ln 2 = 0.143841.
  const double kl = 0.5 * std::log(2.0 / 3.0) + 0.5 * std::log(2.0);
  ClassifierAccumulator logits;
  const float a[2] = {0.0f, 0.0f}, b[2] = {static_cast<float>(std::log(3.0)), 0.0f};
  logits.add(a, b, 1, 2, {});
  EXPECT_NEAR(logits.mean_kl(), kl, 1e-6);
  // The same distributions given as probabilities are taken as they are (no second softmax).
  ClassifierAccumulator probs;
  const float p[2] = {0.5f, 0.5f}, q[2] = {0.75f, 0.25f};
  probs.add(p, q, 1, 2, {});
  EXPECT_NEAR(probs.mean_kl(), kl, 1e-6);
  // Identical rows: 0; averaged over rows.
  probs.add(p, p, 1, 2, {});
  EXPECT_NEAR(probs.mean_kl(), kl / 2, 1e-6);
  // A zero where FP32 has mass: infinite.
  ClassifierAccumulator zero;
  const float z[2] = {1.0f, 0.0f};
  zero.add(p, z, 1, 2, {});
  EXPECT_TRUE(std::isinf(zero.mean_kl()));
  EXPECT_TRUE(std::isnan(ClassifierAccumulator().mean_kl()));
}

}  // namespace
}  // namespace qtool::report
