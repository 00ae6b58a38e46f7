// INT8 accuracy benchmarks of issue 5 with ONNX Runtime as the judge (not CI tests: minutes each).
// Run:  build/tests/test_quant --gtest_also_run_disabled_tests --gtest_filter='*Int8Accuracy*'
// Each case quantizes with the qtool CLI (the exact command is printed), dumps the preprocessed
// evaluation inputs as .npy, lets tools/eval/ort_classify.js classify them with the FP32 and the
// INT8 model, and prints top-1 of both, their agreement, file sizes and ORT latency (batch 1,
// 1 and 2 threads). The figures go to BENCHMARKS.md.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "qtool/core/npy.h"
#include "qtool/data/sample_source.h"
#include "qtool/onnx_io/onnx_io.h"
#include "test_util.h"

namespace qtool::quant {
namespace {

namespace fs = std::filesystem;
using testing::shared_path;

std::vector<int64_t> read_predictions(const std::string& path) {
  std::ifstream in(path);
  std::vector<int64_t> out;
  int64_t v;
  while (in >> v) out.push_back(v);
  return out;
}

// Classifies every file of `list` with ORT; returns predictions and mean ms per sample.
std::pair<std::vector<int64_t>, double> ort_classify(const std::string& model, const std::string& list,
                                                     const std::string& out, int threads) {
  const auto r = testing::run_command(fmt::format("cd '{}' && node tools/eval/ort_classify.js '{}' '{}' '{}' --threads {}",
                                                  testing::source_path(""), model, list, out, threads));
  if (r.exit_code != 0) fail(ErrorCode::kInvalidModel, "ORT failed on {}: {}", model, r.err);
  const auto j = nlohmann::json::parse(r.out);
  return {read_predictions(out), j["mean_ms"].get<double>()};
}

struct EvalCase {
  std::string name, model, calib, preset, quantize_args;
  std::string eval_data;  // image folder or IDX file
};

void run_case(const EvalCase& c, data::SampleSource& eval, const std::vector<int64_t>& labels) {
  testing::TempDir dir;
  // 1. Quantize with the CLI.
  const std::string qpath = dir.file("int8.onnx");
  const std::string cmd = fmt::format("{} quantize {} --calib {} --preprocess {} {} -o {}", testing::qtool_bin(),
                                      shared_path(c.model), shared_path(c.calib), c.preset, c.quantize_args, qpath);
  const auto t0 = std::chrono::steady_clock::now();
  const auto q = testing::run_command(cmd);
  const double qsec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_EQ(q.exit_code, 0) << q.err;
  // 2. Inputs.
  std::ofstream list(dir.file("list.txt"));
  for (size_t i = 0; i < eval.size(); ++i) {
    const data::Sample s = eval.load(i);
    const std::string f = dir.file(fmt::format("x{:05}.npy", i));
    write_npy(f, s.begin()->second);
    list << f << "\n";
  }
  list.close();
  // 3. Judge.
  const auto [fp, fp_ms1] = ort_classify(shared_path(c.model), dir.file("list.txt"), dir.file("fp.txt"), 1);
  const auto [qp, q_ms1] = ort_classify(qpath, dir.file("list.txt"), dir.file("q.txt"), 1);
  const auto [fp2, fp_ms2] = ort_classify(shared_path(c.model), dir.file("list.txt"), dir.file("fp2.txt"), 2);
  const auto [qp2, q_ms2] = ort_classify(qpath, dir.file("list.txt"), dir.file("q2.txt"), 2);
  ASSERT_EQ(fp.size(), labels.size());
  ASSERT_EQ(qp.size(), labels.size());
  int64_t fp_ok = 0, q_ok = 0, agree = 0;
  for (size_t i = 0; i < labels.size(); ++i) {
    fp_ok += fp[i] == labels[i];
    q_ok += qp[i] == labels[i];
    agree += fp[i] == qp[i];
  }
  const double n = static_cast<double>(labels.size());
  const auto fsize = fs::file_size(shared_path(c.model)), qsize = fs::file_size(qpath);
  std::cout << fmt::format(
      "INT8 | {} | n={} | FP32 top-1 {:.2f}% | INT8 top-1 {:.2f}% | delta {:+.2f} | agreement {:.1f}% | "
      "size {} -> {} ({:.1f}%) | ORT ms/sample 1 thread FP32 {:.2f} INT8 {:.2f} ({:.2f}x) | 2 threads FP32 {:.2f} "
      "INT8 {:.2f} ({:.2f}x) | quantize {:.0f} s\n  command: {}\n  stdout: {}\n",
      c.name, labels.size(), 100 * fp_ok / n, 100 * q_ok / n, 100 * (q_ok - fp_ok) / n, 100 * agree / n, fsize, qsize,
      100.0 * qsize / fsize, fp_ms1, q_ms1, fp_ms1 / q_ms1, fp_ms2, q_ms2, fp_ms2 / q_ms2, qsec, cmd, q.out);
}

std::string env_or(const char* name, const std::string& dflt) {
  const char* v = std::getenv(name);
  return v && *v ? v : dflt;
}

void imagenet_case(const std::string& name, const std::string& model, const std::string& preset) {
  QTOOL_REQUIRE_SHARED();
  QTOOL_REQUIRE_ORT();
  const ir::Model m = onnx_io::load_model(shared_path(model));
  data::SourceOptions so;
  so.image = data::image_preset(preset);
  auto src = data::open_sample_source(shared_path("data/imagenet-sample/images"), data::input_specs(m), so);
  data::SelectOptions sel;
  sel.split = "odd";
  auto eval = data::select_samples(src, sel);
  std::map<std::string, int64_t> by_file;
  std::ifstream in(shared_path("data/imagenet-sample/labels.csv"));
  std::string line;
  std::getline(in, line);  // header
  while (std::getline(in, line)) {
    std::stringstream ss(line);
    std::string file, wnid, idx;
    std::getline(ss, file, ',');
    std::getline(ss, wnid, ',');
    std::getline(ss, idx, ',');
    by_file[file] = std::stoll(idx);
  }
  std::vector<int64_t> labels;
  for (size_t i = 0; i < eval->size(); ++i) {
    const std::string f = fs::path(eval->describe(i)).filename().string();
    ASSERT_TRUE(by_file.count(f)) << f;
    labels.push_back(by_file[f]);
  }
  run_case({name, model, "data/imagenet-sample/images", preset,
            env_or("QTOOL_INT8_ARGS", "--calib-split even --threads 2"), "data/imagenet-sample/images"},
           *eval, labels);
}

TEST(Int8Accuracy, DISABLED_SqueezeNet) {
  imagenet_case("squeezenet1.1", "models/squeezenet1.1/squeezenet1.1_fp32.onnx", "caffe-bgr");
}
TEST(Int8Accuracy, DISABLED_MobileNetV2) {
  imagenet_case("mobilenetv2", "models/mobilenetv2/mobilenetv2_dequant_fp32.onnx", "mobilenetv2-244");
}
TEST(Int8Accuracy, DISABLED_Mnist8) {
  QTOOL_REQUIRE_SHARED();
  QTOOL_REQUIRE_ORT();
  const ir::Model m = onnx_io::load_model(shared_path("models/mnist-8/mnist-8.onnx"));
  data::SourceOptions so;
  so.image = data::image_preset("mnist-raw");
  std::shared_ptr<data::SampleSource> src =
      data::open_sample_source(shared_path("data/mnist/t10k-images-idx3-ubyte.gz"), data::input_specs(m), so);
  const Tensor lab = data::read_idx(shared_path("data/mnist/t10k-labels-idx1-ubyte.gz"));
  std::vector<size_t> idx;
  std::vector<int64_t> labels;
  for (size_t i = 1000; i < src->size(); ++i) {
    idx.push_back(i);
    labels.push_back(static_cast<int64_t>(lab.get_as_double(static_cast<int64_t>(i))));
  }
  data::SelectedSource eval(src, idx);
  run_case({"mnist-8", "models/mnist-8/mnist-8.onnx", "data/mnist/t10k-images-idx3-ubyte.gz", "mnist-raw",
            env_or("QTOOL_INT8_ARGS", "--samples 1000"), "data/mnist/t10k-images-idx3-ubyte.gz"},
           eval, labels);
}

}  // namespace
}  // namespace qtool::quant
