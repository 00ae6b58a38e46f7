// Helpers shared by every test executable: where the real models are, temp folders,
// and ONNX Runtime (onnxruntime-node) as the oracle.
#pragma once

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "qtool/core/tensor.h"
#include "qtool/data/sample_source.h"

namespace qtool::testing {

/// Samples held in memory (tests of the code that reads a SampleSource).
class MemorySource final : public data::SampleSource {
 public:
  explicit MemorySource(std::vector<data::Sample> s) : samples_(std::move(s)) {}
  size_t size() const override { return samples_.size(); }
  data::Sample load(size_t i) override { return samples_.at(i); }
  std::string describe(size_t i) const override { return "sample " + std::to_string(i); }
  std::string kind() const override { return "memory"; }

 private:
  std::vector<data::Sample> samples_;
};

/// $QTOOL_SHARED, else <source>/../shared.
std::string shared_dir();
/// shared_dir() + "/" + rel.
std::string shared_path(const std::string& rel);
bool shared_available();
/// True when running under CI (CI=true): missing fixtures fail instead of skipping.
bool under_ci();
/// <source>/<rel>.
std::string source_path(const std::string& rel);

/// A fresh folder under /tmp, removed with its contents on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

/// True if node and onnxruntime-node are installed (npm install --ignore-scripts in the repo root).
bool ort_available();

/// Whether ONNX Runtime's integer kernels on this CPU compute exact int32 sums (false on x86-64
/// CPUs with AVX2 but without VNNI, where MLAS's u8s8 GEMM saturates pairs of products to int16).
/// Tests that compare qtool's exact QLinear arithmetic with ORT bit for bit skip that comparison
/// where it is false.
bool ort_int8_exact();

/// Runs `model_path` in ONNX Runtime with `inputs` (name -> tensor) and returns outputs by name.
/// Throws qtool::Error with ORT's message if ORT fails to load or run the model.
std::map<std::string, Tensor> ort_run(const std::string& model_path, const std::map<std::string, Tensor>& inputs,
                                      int threads = 1);

/// The qtool binary under test ($QTOOL_BIN, else <build>/tools/qtool/qtool).
std::string qtool_bin();

/// Result of running a shell command.
struct CommandResult {
  int exit_code = -1;
  std::string out;  ///< stdout
  std::string err;  ///< stderr
};
/// Runs `cmd` through /bin/sh, capturing stdout and stderr separately.
CommandResult run_command(const std::string& cmd);

/// Max |a-b| / max(|b|, floor) over all elements (both converted to float).
double max_rel_error(const Tensor& a, const Tensor& b, double floor = 1e-6);
/// Max |a-b| over all elements.
double max_abs_error(const Tensor& a, const Tensor& b);

/// Runs `model_path` on one input (`input` = `x`) in ONNX Runtime and with `qtool run` (files in
/// `work_dir`), and returns max |qtool - ORT| on output `output`. Fails the calling test (ADD_FAILURE)
/// and returns +inf when qtool run fails.
double ort_vs_qtool_run_error(const std::string& model_path, const std::string& input, const Tensor& x,
                              const std::string& output, const std::string& work_dir);

}  // namespace qtool::testing

/// Skips the test when ONNX Runtime's int8 kernels are not exact on this CPU (ort_int8_exact()).
#define QTOOL_REQUIRE_EXACT_ORT_INT8()                                                              \
  do {                                                                                              \
    if (!::qtool::testing::ort_int8_exact())                                                        \
      GTEST_SKIP() << "ONNX Runtime's u8s8 kernels saturate on this CPU (AVX2 without VNNI): no "   \
                      "bit-exact comparison with qtool's exact int32 arithmetic";                   \
  } while (0)

/// Skips the test (or fails it under CI) when ../shared is absent.
#define QTOOL_REQUIRE_SHARED()                                                                  \
  do {                                                                                          \
    if (!::qtool::testing::shared_available()) {                                                \
      if (::qtool::testing::under_ci()) FAIL() << "shared folder missing: " << ::qtool::testing::shared_dir(); \
      GTEST_SKIP() << "shared folder missing: " << ::qtool::testing::shared_dir();              \
    }                                                                                           \
  } while (0)

/// Skips the test (or fails it under CI) when ONNX Runtime is not installed.
#define QTOOL_REQUIRE_ORT()                                                                     \
  do {                                                                                          \
    if (!::qtool::testing::ort_available()) {                                                   \
      if (::qtool::testing::under_ci()) FAIL() << "onnxruntime-node missing (npm install --ignore-scripts)"; \
      GTEST_SKIP() << "onnxruntime-node missing (npm install --ignore-scripts)";                \
    }                                                                                           \
  } while (0)
