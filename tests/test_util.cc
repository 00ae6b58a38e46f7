#include "test_util.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "qtool/core/npy.h"

namespace fs = std::filesystem;

namespace qtool::testing {

std::string shared_dir() {
  if (const char* e = std::getenv("QTOOL_SHARED"); e && *e) return e;
  return (fs::path(QTOOL_SOURCE_DIR) / ".." / "shared").lexically_normal().string();
}

std::string shared_path(const std::string& rel) { return shared_dir() + "/" + rel; }

bool shared_available() { return fs::exists(shared_path("MODELS.md")); }

bool under_ci() {
  const char* e = std::getenv("CI");
  return e && (std::string(e) == "true" || std::string(e) == "1");
}

std::string source_path(const std::string& rel) { return std::string(QTOOL_SOURCE_DIR) + "/" + rel; }

TempDir::TempDir() {
  std::string tmpl = (fs::temp_directory_path() / "qtool_test_XXXXXX").string();
  char* p = ::mkdtemp(tmpl.data());
  if (!p) throw std::runtime_error("mkdtemp failed");
  path_ = p;
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

bool ort_available() {
  static const bool ok = [] {
    if (!fs::exists(source_path("node_modules/onnxruntime-node/package.json"))) return false;
    return std::system("node --version > /dev/null 2>&1") == 0;
  }();
  return ok;
}

bool ort_int8_exact() {
  static const bool exact = [] {
#if defined(__x86_64__)
    // MLAS's x86 u8s8 GEMM without VNNI multiplies with VPMADDUBSW, which adds each pair of
    // adjacent uint8 x int8 products into an int16 with saturation: ONNX Runtime's QLinearConv /
    // QLinearMatMul then differ from exact int32 arithmetic (checked numerically on an AMD Zen 3:
    // emulating the pairwise saturation reproduces ORT's first QLinearConv of the digits CNN
    // exactly). With AVX-512 VNNI or AVX-VNNI the products accumulate exactly.
    std::ifstream f("/proc/cpuinfo");
    std::string line;
    while (std::getline(f, line)) {
      if (line.rfind("flags", 0) != 0) continue;
      const bool vnni = line.find(" avx512_vnni") != std::string::npos || line.find(" avx_vnni") != std::string::npos;
      const bool avx2 = line.find(" avx2") != std::string::npos;
      return vnni || !avx2;
    }
#endif
    return true;
  }();
  return exact;
}

std::map<std::string, Tensor> ort_run(const std::string& model_path, const std::map<std::string, Tensor>& inputs,
                                      int threads) {
  TempDir dir;
  std::string cmd = fmt::format("cd '{}' && node tools/ort/run.js '{}' '{}/out' --threads {}", QTOOL_SOURCE_DIR,
                                fs::absolute(model_path).string(), dir.path(), threads);
  int k = 0;
  for (const auto& [name, t] : inputs) {
    const std::string f = dir.file(fmt::format("in{}.npy", k++));
    write_npy(f, t);
    cmd += fmt::format(" '{}={}'", name, f);
  }
  CommandResult r = run_command(cmd);
  if (r.exit_code != 0) fail(ErrorCode::kInvalidModel, "ONNX Runtime failed on '{}': {}", model_path, r.err);
  nlohmann::json manifest = nlohmann::json::parse(read_file(dir.file("out/manifest.json")));
  std::map<std::string, Tensor> out;
  for (const auto& o : manifest["outputs"]) {
    out[o["name"].get<std::string>()] = read_npy(dir.file("out/" + o["file"].get<std::string>()));
  }
  return out;
}

std::string qtool_bin() {
  if (const char* e = std::getenv("QTOOL_BIN"); e && *e) return e;
  return std::string(QTOOL_BINARY_DIR) + "/tools/qtool/qtool";
}

CommandResult run_command(const std::string& cmd) {
  TempDir dir;
  const std::string full = fmt::format("( {} ) > '{}/out' 2> '{}/err' < /dev/null", cmd, dir.path(), dir.path());
  const int status = std::system(full.c_str());
  CommandResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  r.out = read_file(dir.file("out"));
  r.err = read_file(dir.file("err"));
  return r;
}

double max_rel_error(const Tensor& a, const Tensor& b, double floor) {
  EXPECT_EQ(a.numel(), b.numel());
  double m = 0;
  for (int64_t i = 0; i < std::min(a.numel(), b.numel()); ++i) {
    const double x = a.get_as_double(i), y = b.get_as_double(i);
    m = std::max(m, std::abs(x - y) / std::max(std::abs(y), floor));
  }
  return m;
}

double max_abs_error(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.numel(), b.numel());
  double m = 0;
  for (int64_t i = 0; i < std::min(a.numel(), b.numel()); ++i) {
    m = std::max(m, std::abs(a.get_as_double(i) - b.get_as_double(i)));
  }
  return m;
}

double ort_vs_qtool_run_error(const std::string& model_path, const std::string& input, const Tensor& x,
                              const std::string& output, const std::string& work_dir) {
  const auto ort = ort_run(model_path, {{input, x}});
  write_npy(work_dir + "/ort_vs_qtool_input.npy", x);
  const auto r = run_command(fmt::format("{} run {} -i {} -o {}", qtool_bin(), model_path,
                                         work_dir + "/ort_vs_qtool_input.npy", work_dir + "/ort_vs_qtool_out"));
  if (r.exit_code != 0) {
    ADD_FAILURE() << "qtool run " << model_path << ": " << r.err;
    return std::numeric_limits<double>::infinity();
  }
  return max_abs_error(read_npy(work_dir + "/ort_vs_qtool_out/" + output + ".npy"), ort.at(output));
}

}  // namespace qtool::testing
