// ONNX's own backend tests (Debian package libonnx-testdata) run through qtool's executor.
//
// Every case directory under /usr/share/libonnx-testdata/data/{node,pytorch-converted,
// pytorch-operator,simple} is one parameterized test. tests/runtime/conformance_allowlist.txt
// lists the cases qtool claims ("suite/case"); a claimed case must pass every test_data_set
// (floats within |a-b| <= 1e-4 + 1e-3*|b| like ONNX's backend tests, integers, bools and strings
// exactly). Unclaimed cases are skipped, and the list says why ("# suite/case: reason").
//
// QTOOL_CONFORMANCE_ALL=1 runs every case, claimed or not, and prints one line per case
// ("CONFORMANCE PASS suite/case" or "CONFORMANCE FAIL suite/case: why") without failing, which
// is how the allowlist is regenerated (scripts/conformance_allowlist.sh).
// QTOOL_ONNX_TESTDATA overrides the data folder. Without the package the tests skip (fail under CI).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <set>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "qtool/onnx_io/onnx_io.h"
#include "qtool/runtime/executor.h"
#include "test_util.h"

namespace qtool::runtime {
namespace {

namespace fs = std::filesystem;

std::string data_root() {
  const char* env = std::getenv("QTOOL_ONNX_TESTDATA");
  return env && *env ? env : "/usr/share/libonnx-testdata/data";
}

/// "suite/case" for every case directory with a model.onnx, sorted.
std::vector<std::string> list_cases() {
  // Loader warnings (old opsets) go to stderr, errors only, so stdout holds just the result lines.
  static const bool quiet = [] {
    spdlog::set_default_logger(spdlog::stderr_color_mt("conformance"));
    spdlog::set_level(spdlog::level::err);
    return true;
  }();
  (void)quiet;
  std::vector<std::string> out;
  for (const char* suite : {"node", "pytorch-converted", "pytorch-operator", "simple"}) {
    const fs::path dir = fs::path(data_root()) / suite;
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) continue;
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      if (fs::exists(e.path() / "model.onnx")) out.push_back(std::string(suite) + "/" + e.path().filename().string());
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

/// Claimed cases of the allowlist (lines that are not comments).
std::set<std::string> claimed_cases() {
  std::set<std::string> out;
  std::ifstream f(testing::source_path("tests/runtime/conformance_allowlist.txt"));
  std::string line;
  while (std::getline(f, line)) {
    line.erase(0, line.find_first_not_of(" \t"));
    while (!line.empty() && (line.back() == ' ' || line.back() == '\r' || line.back() == '\t')) line.pop_back();
    if (line.empty() || line[0] == '#') continue;
    out.insert(line);
  }
  return out;
}

bool run_all() {
  const char* env = std::getenv("QTOOL_CONFORMANCE_ALL");
  return env && std::string(env) == "1";
}

/// ONNX 1.12's test data stores bfloat16 tensors as uint16 (numpy has no bfloat16): the same bits.
Tensor as_dtype_bits(const Tensor& t, DataType dt) {
  return Tensor::wrap(dt, t.shape(), t.buffer(), t.offset());
}

/// Empty if `got` matches `want`, else a description of the first mismatch.
std::string compare(const Tensor& got_in, const Tensor& want) {
  Tensor got = got_in;
  if (got.dtype() == DataType::kBFloat16 && want.dtype() == DataType::kUint16) {
    got = as_dtype_bits(got, DataType::kUint16);
  }
  if (got.dtype() != want.dtype()) {
    return fmt::format("dtype {} but expected {}", dtype_name(got.dtype()), dtype_name(want.dtype()));
  }
  if (got.shape() != want.shape()) {
    return fmt::format("shape {} but expected {}", shape_str(got.shape()), shape_str(want.shape()));
  }
  if (got.dtype() == DataType::kString) return got.strings() == want.strings() ? "" : "strings differ";
  const bool is_float = dtype_is_float(got.dtype());
  for (int64_t i = 0; i < got.numel(); ++i) {
    const double a = got.get_as_double(i), b = want.get_as_double(i);
    if (is_float) {
      if (std::isnan(a) && std::isnan(b)) continue;
      if (std::isinf(b) && a == b) continue;
      if (!(std::abs(a - b) <= 1e-4 + 1e-3 * std::abs(b))) {
        return fmt::format("element {} is {} but expected {}", i, a, b);
      }
    } else if (a != b) {
      return fmt::format("element {} is {} but expected {}", i, a, b);
    }
  }
  return "";
}

/// Runs one case; empty on success, else why it failed.
std::string run_case(const std::string& name) {
  const fs::path dir = fs::path(data_root()) / name;
  try {
    ir::Model model = onnx_io::load_model((dir / "model.onnx").string());
    Executor ex(model);
    std::vector<fs::path> sets;
    for (const auto& e : fs::directory_iterator(dir)) {
      if (e.is_directory() && e.path().filename().string().rfind("test_data_set_", 0) == 0) sets.push_back(e.path());
    }
    std::sort(sets.begin(), sets.end());
    if (sets.empty()) return "no test_data_set";
    const std::vector<ir::Value*> inputs = model.graph->runtime_inputs();
    for (const fs::path& set : sets) {
      std::map<std::string, Tensor> feeds;
      for (size_t i = 0;; ++i) {
        const fs::path p = set / fmt::format("input_{}.pb", i);
        if (!fs::exists(p)) break;
        std::string pb_name;
        Tensor t = onnx_io::load_tensor_pb(p.string(), &pb_name);
        std::string key = i < inputs.size() ? inputs[i]->name() : pb_name;
        if (i < inputs.size() && inputs[i]->type().elem_type == DataType::kBFloat16 &&
            t.dtype() == DataType::kUint16) {
          t = as_dtype_bits(t, DataType::kBFloat16);
        }
        feeds[key] = std::move(t);
      }
      std::vector<Tensor> outs = ex.run(feeds);
      for (size_t i = 0;; ++i) {
        const fs::path p = set / fmt::format("output_{}.pb", i);
        if (!fs::exists(p)) break;
        if (i >= outs.size()) return fmt::format("model has {} outputs, data has more", outs.size());
        const std::string diff = compare(outs[i], onnx_io::load_tensor_pb(p.string()));
        if (!diff.empty()) {
          return fmt::format("{}: output {} ('{}'): {}", set.filename().string(), i, ex.output_names()[i], diff);
        }
      }
    }
    return "";
  } catch (const std::exception& e) {
    return e.what();
  }
}

void collect_ops(const ir::Graph& g, std::set<std::string>& out) {
  for (const auto& n : g.nodes()) {
    out.insert(n->domain().empty() ? n->op_type() : n->domain() + ":" + n->op_type());
    for (const ir::Graph* sg : n->subgraphs()) collect_ops(*sg, out);
  }
}

/// "Op1,Op2" of a case's model (for regenerating the allowlist by op family).
std::string op_types(const std::string& name) {
  try {
    ir::Model m = onnx_io::load_model((fs::path(data_root()) / name / "model.onnx").string());
    std::set<std::string> ops;
    collect_ops(*m.graph, ops);
    std::string s;
    for (const auto& o : ops) s += (s.empty() ? "" : ",") + o;
    return s;
  } catch (const std::exception&) {
    return "?";
  }
}

class Conformance : public ::testing::TestWithParam<std::string> {};

TEST_P(Conformance, Case) {
  const std::string& name = GetParam();
  static const std::set<std::string> claimed = claimed_cases();
  const bool is_claimed = claimed.count(name) > 0;
  if (!run_all() && !is_claimed) GTEST_SKIP() << name << " is not claimed (see conformance_allowlist.txt)";
  const std::string why = run_case(name);
  if (run_all()) {
    std::string first_line = why.substr(0, why.find('\n'));
    std::cout << (why.empty() ? "CONFORMANCE PASS " : "CONFORMANCE FAIL ") << name << " ops="
              << op_types(name) << (why.empty() ? "" : " : " + first_line) << "\n";
    if (!is_claimed) return;
  }
  EXPECT_TRUE(why.empty()) << name << ": " << why;
}

std::string param_name(const ::testing::TestParamInfo<std::string>& info) {
  std::string s = info.param;
  for (char& c : s) {
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  }
  return s;
}

INSTANTIATE_TEST_SUITE_P(OnnxBackend, Conformance, ::testing::ValuesIn(list_cases()), param_name);
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(Conformance);

/// The allowlist names only cases that exist, and the package is there (or we are not under CI).
TEST(ConformanceAllowlist, NamesExistingCases) {
  const std::vector<std::string> cases = list_cases();
  if (cases.empty()) {
    if (testing::under_ci()) FAIL() << "libonnx-testdata missing: " << data_root();
    GTEST_SKIP() << "libonnx-testdata not installed at " << data_root();
  }
  const std::set<std::string> all(cases.begin(), cases.end());
  const std::set<std::string> claimed = claimed_cases();
  EXPECT_GT(claimed.size(), 100u);
  for (const std::string& c : claimed) EXPECT_TRUE(all.count(c)) << "allowlist names a missing case: " << c;
}

}  // namespace
}  // namespace qtool::runtime
