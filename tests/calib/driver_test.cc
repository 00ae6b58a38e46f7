// The calibration driver end to end on a small in-memory model: batch-size independence,
// graph inputs observed, Ctrl-C, sample-set checks.
#include <cmath>
#include <random>

#include "qtool/calib/calibrate.h"
#include "qtool/onnx_io/onnx_io.h"
#include "test_util.h"

namespace qtool::calib {
namespace {

// y = Relu(x * w) + b, x: [batch, 3, 4, 4]
ir::Model tiny_model() {
  ir::Model m;
  m.set_opset("", 13);
  ir::Graph& g = *m.graph;
  g.set_name("tiny");
  ir::TypeInfo t;
  t.elem_type = DataType::kFloat;
  t.has_shape = true;
  t.dims = {ir::Dim{-1, "batch"}, ir::Dim{3, ""}, ir::Dim{4, ""}, ir::Dim{4, ""}};
  ir::Value* x = g.add_input("x", t);
  ir::Value* w = g.add_initializer("w", Tensor::from_vector<float>({1, 3, 1, 1}, {1.0f, 2.0f, -3.0f}));
  ir::Value* b = g.add_initializer("b", Tensor::from_vector<float>({1}, {0.5f}));
  ir::Node* mul = g.add_node("Mul", {x, w}, {"xw"}, "mul");
  ir::Node* relu = g.add_node("Relu", {mul->output(0)}, {"r"}, "relu");
  ir::Node* add = g.add_node("Add", {relu->output(0), b}, {"y"}, "add");
  g.add_output(add->output(0));
  return m;
}

class VectorSource final : public data::SampleSource {
 public:
  explicit VectorSource(std::vector<Tensor> xs) : xs_(std::move(xs)) {}
  size_t size() const override { return xs_.size(); }
  data::Sample load(size_t i) override { return {{"x", xs_.at(i)}}; }
  std::string describe(size_t i) const override { return "mem" + std::to_string(i); }
  std::string kind() const override { return "memory"; }

 private:
  std::vector<Tensor> xs_;
};

std::vector<Tensor> random_samples(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d;
  std::vector<Tensor> out;
  for (size_t i = 0; i < n; ++i) {
    std::vector<float> v(48);
    for (auto& e : v) e = d(rng) * (1.0f + static_cast<float>(i % 5));
    out.push_back(Tensor::from_vector<float>({1, 3, 4, 4}, v));
  }
  return out;
}

TEST(Calibrate, RangesDoNotDependOnBatchSizeOrThreads) {
  // Threads > 1 run whole batches side by side, each worker with its own observer, merged at the
  // end: the same extremes and histograms as one worker.
  const ir::Model m = tiny_model();
  VectorSource src(random_samples(23, 1));
  std::map<std::string, RangesFile> by_batch;
  for (auto [bs, threads] : {std::pair<size_t, int>{1, 1}, {4, 1}, {23, 1}, {1, 2}, {4, 3}}) {
    CalibConfig c;
    c.method = "entropy";  // a method that reads histograms: its statistics serve every method
    c.run.batch_size = bs;
    c.run.progress = false;
    c.threads = threads;
    CalibrationResult r = calibrate(m, src, c);
    EXPECT_EQ(r.run.samples, 23u);
    EXPECT_EQ(r.run.batches, (23 + bs - 1) / bs);
    for (const auto& meth : range_methods()) {
      // The ranges themselves computed on `threads` workers too (tensor by tensor).
      by_batch[fmt::format("{}x{}{}", bs, threads, meth.name)] =
          ranges_from_stats(*r.stats, m, meth.name, c.range, 23, threads);
    }
  }
  for (const auto& meth : range_methods()) {
    const RangesFile& a = by_batch["1x1" + meth.name];
    for (const char* bs : {"4x1", "23x1", "1x2", "4x3"}) {
      const RangesFile& b = by_batch[bs + meth.name];
      ASSERT_EQ(a.tensors.size(), b.tensors.size());
      for (size_t i = 0; i < a.tensors.size(); ++i) {
        EXPECT_EQ(a.tensors[i].range_min, b.tensors[i].range_min) << meth.name << " " << a.tensors[i].name;
        EXPECT_EQ(a.tensors[i].range_max, b.tensors[i].range_max) << meth.name << " " << a.tensors[i].name;
        EXPECT_EQ(a.tensors[i].hist_counts, b.tensors[i].hist_counts);
        EXPECT_EQ(a.tensors[i].per_channel_max, b.tensors[i].per_channel_max);
        // The moments sum 8 float lanes per chunk of 512 values (observers.cc): the mean moves in the
        // 8th digit with the batch size; min, max and the histograms do not move at all.
        EXPECT_NEAR(a.tensors[i].mean, b.tensors[i].mean, 1e-6);
      }
    }
  }
  // Graph input and every node output observed, in execution order.
  const RangesFile& f = by_batch["1x1minmax"];
  std::vector<std::string> names;
  for (const auto& t : f.tensors) names.push_back(t.name);
  EXPECT_EQ(names, (std::vector<std::string>{"x", "xw", "r", "y"}));
  // y = relu(x*w) + 0.5 >= 0.5; channel 2 of xw is -3x.
  EXPECT_GE(f.find("y")->min, 0.5);
  EXPECT_FLOAT_EQ(f.find("xw")->per_channel_max[2], -3.0f * f.find("x")->per_channel_min[2]);
  EXPECT_DOUBLE_EQ(f.find("r")->range_max, f.find("y")->range_max - 0.5);
}

class InterruptingObserver final : public BatchObserver {
 public:
  void on_value(const ir::Value&, const Tensor&) override {}
  void end_batch() override {
    if (++batches_ == 2) request_interrupt();
  }
  int batches_ = 0;
};

TEST(Calibrate, MinmaxFillsNoHistogramAndSeesTheSameRange) {
  const ir::Model m = tiny_model();
  VectorSource src(random_samples(9, 3));
  CalibConfig mm, en;
  mm.run.progress = en.run.progress = false;
  en.method = "entropy";
  const CalibrationResult a = calibrate(m, src, mm), b = calibrate(m, src, en);
  ASSERT_EQ(a.stats->stats().size(), b.stats->stats().size());
  for (size_t i = 0; i < a.stats->stats().size(); ++i) {
    const TensorStats& x = *a.stats->stats()[i];
    const TensorStats& y = *b.stats->stats()[i];
    EXPECT_TRUE(x.hist.empty()) << x.name;   // minmax reads no histogram: none is filled
    EXPECT_FALSE(y.hist.empty()) << y.name;
    EXPECT_EQ(x.min, y.min);
    EXPECT_EQ(x.max, y.max);
    EXPECT_TRUE(a.ranges.tensors[i].hist_counts.empty());
  }
}

TEST(Calibrate, CtrlCStopsBetweenSamples) {
  const ir::Model m = tiny_model();
  runtime::Executor ex(m);
  VectorSource src(random_samples(10, 2));
  InterruptingObserver obs;
  RunOptions o;
  o.progress = false;
  try {
    run_samples(ex, src, obs, o);
    FAIL() << "no interruption";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInterrupted);
    EXPECT_NE(std::string(e.what()).find("after 2 of 10"), std::string::npos) << e.what();
  }
  EXPECT_EQ(obs.batches_, 2);
  request_interrupt(false);
}

TEST(Calibrate, SampleChecksCountDuplicatesAndConstants) {
  const ir::Model m = tiny_model();
  runtime::Executor ex(m);
  std::vector<Tensor> xs = random_samples(3, 3);
  xs.push_back(xs[1]);                                          // duplicate
  xs.push_back(Tensor::from_vector<float>({1, 3, 4, 4}, std::vector<float>(48, 0.25f)));  // constant
  VectorSource src(xs);
  StatsObserver obs;
  RunOptions o;
  o.progress = false;
  RunSummary s = run_samples(ex, src, obs, o);
  EXPECT_EQ(s.samples, 5u);
  EXPECT_EQ(s.duplicates, 1u);
  EXPECT_EQ(s.constant, 1u);
}

TEST(Calibrate, ErrorsNameTheSample) {
  const ir::Model m = tiny_model();
  VectorSource src({Tensor::from_vector<float>({1, 3, 2, 2}, std::vector<float>(12, 1.0f))});
  CalibConfig c;
  c.run.progress = false;
  try {
    calibrate(m, src, c);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("mem0"), std::string::npos) << e.what();
  }
}

TEST(Calibrate, ParallelWorkersNameTheFirstBadSample) {
  // Two workers run samples side by side; the error reported is the earliest bad sample's, as one
  // worker would have met it (mem4 and mem7 are both bad; mem4 goes to worker 0, mem7 to worker 1).
  const ir::Model m = tiny_model();
  std::vector<Tensor> xs = random_samples(10, 4);
  xs[4] = Tensor::from_vector<float>({1, 3, 2, 2}, std::vector<float>(12, 1.0f));
  xs[7] = Tensor::from_vector<float>({1, 3, 2, 2}, std::vector<float>(12, 1.0f));
  VectorSource src(xs);
  CalibConfig c;
  c.run.progress = false;
  c.threads = 2;
  try {
    calibrate(m, src, c);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("mem4"), std::string::npos) << e.what();
  }
}

TEST(Calibrate, MobileNetV2EntropyOnFourImages) {
  QTOOL_REQUIRE_SHARED();
  const ir::Model m = onnx_io::load_model(testing::shared_path("models/mobilenetv2/mobilenetv2_dequant_fp32.onnx"));
  data::SourceOptions so;
  so.image = data::image_preset("mobilenetv2-244");
  auto base = data::open_sample_source(testing::shared_path("data/imagenet-sample/images"), data::input_specs(m), so);
  data::SelectOptions sel;
  sel.split = "even";
  sel.samples = 2;
  auto src = data::select_samples(base, sel);
  CalibConfig c;
  c.method = "entropy";
  c.run.progress = false;
  c.run.check_samples = false;
  CalibrationResult r = calibrate(m, *src, c);
  ASSERT_GT(r.ranges.tensors.size(), 100u);
  EXPECT_EQ(r.ranges.tensors[0].name, "image");
  // The normalised input lies within (0 - 0.485)/0.229 = -2.118 .. (1 - 0.406)/0.225 = 2.64.
  EXPECT_GE(r.ranges.tensors[0].min, -2.1180);
  EXPECT_LE(r.ranges.tensors[0].max, 2.6401);
  EXPECT_EQ(r.ranges.model_name, "mobilenetv2_dequant_fp32.onnx");
  EXPECT_EQ(r.ranges.model_fingerprint.rfind("fnv1a64:", 0), 0u);
  for (const auto& t : r.ranges.tensors) {
    EXPECT_LE(t.range_max, std::max(std::fabs(t.min), std::fabs(t.max)) + 1e-9) << t.name;
    EXPECT_EQ(t.range_min, -t.range_max) << t.name;
  }
}

}  // namespace
}  // namespace qtool::calib
