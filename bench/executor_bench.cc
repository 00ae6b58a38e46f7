// Times qtool's Executor on one model: loads it, runs `warmup` untimed and `repeat` timed runs on
// the given .npy inputs and prints one JSON line: {"model":..,"threads":..,"load_ms":..,"run_ms":[..],"median_ms":..}.
//
//   executor_bench MODEL [--threads T] [--repeat R] [--warmup W] [--profile] name=x.npy ...
//
// --profile adds `repeat` observed runs and prints time per op type to stderr, then the 15 slowest
// nodes (all of them with QTOOL_BENCH_ALL_NODES=1).
// Used by tools/bench/executor_vs_ort.sh, which runs ONNX Runtime on the same inputs.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "qtool/core/npy.h"
#include "qtool/onnx_io/onnx_io.h"
#include "qtool/runtime/executor.h"

namespace {

/// Attributes the time between consecutive produced values to the producing node's op type
/// (--profile): a coarse per-op breakdown without instrumenting the executor.
class OpTimer : public qtool::runtime::Observer {
 public:
  void start() { last_ = std::chrono::steady_clock::now(); }
  void on_value(const qtool::ir::Value& value, const qtool::Tensor&) override {
    const auto now = std::chrono::steady_clock::now();
    const qtool::ir::Node* n = value.producer();
    if (n && value.producer_index() == 0) {
      std::string key = n->op_type();
      if (key == "Conv") {
        const std::vector<int64_t> k = n->attr_ints("kernel_shape");
        if (n->attr_int("group", 1) > 1) key += " (grouped)";
        else if (!k.empty() && k[0] == 1) key += " (1x1)";
      }
      const double ms = std::chrono::duration<double, std::milli>(now - last_).count();
      ms_[key] += ms;
      node_ms_[key + " " + value.name()] += ms;
      last_ = now;
    }
  }
  void print(int runs) const {
    std::vector<std::pair<double, std::string>> v;
    for (const auto& [k, ms] : ms_) v.emplace_back(ms / runs, k);
    std::sort(v.rbegin(), v.rend());
    for (const auto& [ms, k] : v) std::fprintf(stderr, "  %-24s %9.3f ms/run\n", k.c_str(), ms);
    v.clear();
    for (const auto& [k, ms] : node_ms_) v.emplace_back(ms / runs, k);
    std::sort(v.rbegin(), v.rend());
    std::fprintf(stderr, "slowest nodes (op, output):\n");
    const size_t top = std::getenv("QTOOL_BENCH_ALL_NODES") ? v.size() : 15;
    for (size_t i = 0; i < v.size() && i < top; ++i) std::fprintf(stderr, "  %-40s %9.3f ms/run\n", v[i].second.c_str(), v[i].first);
  }

 private:
  std::chrono::steady_clock::time_point last_;
  std::map<std::string, double> ms_, node_ms_;
};

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

int run(int argc, char** argv) {
  std::string model_path;
  int threads = 1, repeat = 10, warmup = 2;
  bool profile = false;
  std::map<std::string, qtool::Tensor> inputs;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--threads" && i + 1 < argc) threads = std::stoi(argv[++i]);
    else if (a == "--repeat" && i + 1 < argc) repeat = std::stoi(argv[++i]);
    else if (a == "--warmup" && i + 1 < argc) warmup = std::stoi(argv[++i]);
    else if (a == "--profile") profile = true;
    else if (a.find('=') != std::string::npos) inputs[a.substr(0, a.find('='))] = qtool::read_npy(a.substr(a.find('=') + 1));
    else if (model_path.empty()) model_path = a;
    else {
      std::fprintf(stderr, "unexpected argument '%s'\n", a.c_str());
      return 2;
    }
  }
  if (model_path.empty() || repeat < 1) {
    std::fprintf(stderr, "usage: executor_bench MODEL [--threads T] [--repeat R] [--warmup W] [--profile] name=x.npy ...\n");
    return 2;
  }
  auto t0 = std::chrono::steady_clock::now();
  qtool::ir::Model model = qtool::onnx_io::load_model(model_path);
  qtool::runtime::Executor ex(model, {.threads = threads});
  const double load_ms = ms_since(t0);
  for (int i = 0; i < warmup; ++i) ex.run(inputs);
  std::vector<double> times;
  for (int i = 0; i < repeat; ++i) {
    t0 = std::chrono::steady_clock::now();
    ex.run(inputs);
    times.push_back(ms_since(t0));
  }
  if (profile) {
    OpTimer timer;
    for (int i = 0; i < repeat; ++i) {
      timer.start();
      ex.run(inputs, &timer);
    }
    std::fprintf(stderr, "per op type (time between produced values, %d runs):\n", repeat);
    timer.print(repeat);
  }
  std::vector<double> sorted = times;
  std::sort(sorted.begin(), sorted.end());
  const double median = sorted.size() % 2 ? sorted[sorted.size() / 2]
                                          : 0.5 * (sorted[sorted.size() / 2 - 1] + sorted[sorted.size() / 2]);
  std::printf("{\"model\":\"%s\",\"threads\":%d,\"load_ms\":%.3f,\"peak_bytes\":%zu,\"run_ms\":[", model_path.c_str(),
              threads, load_ms, ex.peak_bytes());
  for (size_t i = 0; i < times.size(); ++i) std::printf("%s%.3f", i ? "," : "", times[i]);
  std::printf("],\"median_ms\":%.3f}\n", median);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "executor_bench: %s\n", e.what());
    return 1;
  }
}
