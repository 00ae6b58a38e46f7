// qtool run MODEL --input name=x.npy ... [--output-dir D] [--threads N] [--json]
//
// Runs a model with qtool's executor. Inputs are .npy or TensorProto .pb files, matched to the
// model's inputs by name ("name=path"), or by position when given as a bare path. Each output
// is written as D/<sanitised name>.npy when --output-dir is given, and summarised on stdout:
// shape, dtype and min/max/mean/std over its elements (NaNs counted apart). --json prints one
// document instead of the table:
//
// {
//   "model": "m.onnx", "threads": 1, "seconds": 0.0123,
//   "peak_intermediate_bytes": 123456,
//   "outputs": [{"name": "y", "dtype": "float32", "shape": [1, 10], "count": 10,
//                "min": -1.2, "max": 3.4, "mean": 0.5, "std": 1.1, "nan": 0,
//                "file": "D/y.npy" or null}]
// }
#include <chrono>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <limits>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "commands.h"
#include "qtool/core/error.h"
#include "qtool/core/npy.h"
#include "qtool/onnx_io/onnx_io.h"
#include "qtool/passes/qdq_to_qoperator.h"
#include "qtool/runtime/executor.h"

namespace qtool::cli {
namespace {

struct RunOptions {
  std::string model;
  std::vector<std::string> inputs;
  std::string output_dir;
  int threads = 1;
  std::string qdq = "fuse";
  bool json = false;
};

Tensor read_tensor_file(const std::string& path) {
  const std::string ext = std::filesystem::path(path).extension().string();
  if (ext == ".pb") return onnx_io::load_tensor_pb(path);
  return read_npy(path);
}

/// A file name from a tensor name: characters outside [A-Za-z0-9._-] become '_'.
std::string sanitise(const std::string& name) {
  std::string s = name.empty() ? "output" : name;
  for (char& c : s) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') c = '_';
  }
  if (s == "." || s == "..") s = "_";
  return s;
}

struct Stats {
  double min = 0, max = 0, mean = 0, std = 0;
  int64_t nan = 0;
  bool numeric = true;
};

/// Min, max, mean and (population) standard deviation over the non-NaN elements.
Stats summarise(const Tensor& t) {
  Stats s;
  if (t.dtype() == DataType::kString || t.dtype() == DataType::kUndefined) {
    s.numeric = false;
    return s;
  }
  double lo = std::numeric_limits<double>::infinity(), hi = -lo, sum = 0, sq = 0;
  int64_t n = 0;
  for (int64_t i = 0; i < t.numel(); ++i) {
    const double v = t.get_as_double(i);
    if (std::isnan(v)) {
      ++s.nan;
      continue;
    }
    lo = std::min(lo, v);
    hi = std::max(hi, v);
    sum += v;
    ++n;
  }
  if (n == 0) return s;
  const double mean = sum / static_cast<double>(n);
  for (int64_t i = 0; i < t.numel(); ++i) {
    const double v = t.get_as_double(i);
    if (!std::isnan(v)) sq += (v - mean) * (v - mean);
  }
  s.min = lo;
  s.max = hi;
  s.mean = mean;
  s.std = std::sqrt(sq / static_cast<double>(n));
  return s;
}

std::map<std::string, Tensor> bind_inputs(const ir::Model& model, const std::vector<std::string>& specs) {
  const std::vector<ir::Value*> wanted = model.graph->runtime_inputs();
  std::map<std::string, Tensor> feeds;
  size_t position = 0;
  for (const std::string& spec : specs) {
    std::string name, path;
    const size_t eq = spec.find('=');
    if (eq != std::string::npos && model.graph->find_value(spec.substr(0, eq)) != nullptr) {
      name = spec.substr(0, eq);
      path = spec.substr(eq + 1);
    } else if (eq != std::string::npos && !std::filesystem::exists(spec)) {
      std::string names;
      for (const ir::Value* v : wanted) names += (names.empty() ? "'" : ", '") + v->name() + "'";
      fail(ErrorCode::kInvalidInput, "--input '{}': the model has no input named '{}' (inputs: {})", spec,
           spec.substr(0, eq), names.empty() ? "none" : names);
    } else {
      if (position >= wanted.size()) {
        fail(ErrorCode::kInvalidInput, "--input '{}': the model takes only {} inputs", spec, wanted.size());
      }
      name = wanted[position]->name();
      path = spec;
    }
    ++position;
    if (feeds.count(name)) fail(ErrorCode::kInvalidInput, "input '{}' is given twice", name);
    feeds[name] = with_context(fmt::format("while reading input '{}'", name), [&] { return read_tensor_file(path); });
  }
  for (const ir::Value* v : wanted) {
    if (!feeds.count(v->name())) {
      fail(ErrorCode::kInvalidInput, "missing --input for model input '{}' ({})", v->name(),
           dtype_name(v->type().elem_type));
    }
  }
  return feeds;
}

void run_command_impl(const RunOptions& o) {
  ir::Model model = onnx_io::load_model(o.model);
  if (!o.output_dir.empty()) {  // checked before the run: an existing file is not a folder
    std::error_code ec;
    QTOOL_CHECK(!std::filesystem::exists(o.output_dir, ec) || std::filesystem::is_directory(o.output_dir, ec),
                ErrorCode::kConfig, "-o '{}' exists and is not a folder (-o names the folder the outputs are written to)",
                o.output_dir);
  }
  // ONNX Runtime runs QDQ groups as fused integer kernels; so does `qtool run` unless told not to.
  if (o.qdq == "fuse") {
    const passes::QOperatorReport rep = passes::fuse_qdq_to_qoperator(model);
    for (const auto& [op, count] : rep.fused) spdlog::debug("fused QDQ groups: {} x {}", count, op);
  }
  runtime::Executor ex(model, {.threads = o.threads, .fold_constants = true});
  std::map<std::string, Tensor> feeds = bind_inputs(model, o.inputs);
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<Tensor> outs = ex.run(feeds);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const std::vector<std::string> names = ex.output_names();
  if (!o.output_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(o.output_dir, ec);
    QTOOL_CHECK(!ec, ErrorCode::kIo, "cannot create the output folder '{}': {}", o.output_dir, ec.message());
  }

  nlohmann::ordered_json doc;
  doc["model"] = o.model;
  doc["threads"] = o.threads;
  doc["seconds"] = seconds;
  doc["peak_intermediate_bytes"] = ex.peak_bytes();
  doc["outputs"] = nlohmann::ordered_json::array();
  std::vector<std::string> rows;
  for (size_t i = 0; i < outs.size(); ++i) {
    const Tensor& t = outs[i];
    std::string file;
    if (!o.output_dir.empty()) {
      file = (std::filesystem::path(o.output_dir) / (sanitise(names[i]) + ".npy")).string();
      with_context(fmt::format("while writing output '{}'", names[i]), [&] { write_npy(file, t); });
    }
    const Stats s = summarise(t);
    nlohmann::ordered_json j;
    j["name"] = names[i];
    j["dtype"] = std::string(dtype_name(t.dtype()));
    j["shape"] = t.shape();
    j["count"] = t.numel();
    if (s.numeric && t.numel() > s.nan) {
      j["min"] = s.min;
      j["max"] = s.max;
      j["mean"] = s.mean;
      j["std"] = s.std;
    } else {
      j["min"] = j["max"] = j["mean"] = j["std"] = nullptr;
    }
    j["nan"] = s.nan;
    j["file"] = file.empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(file);
    doc["outputs"].push_back(j);
    rows.push_back(fmt::format("{:<24} {:<9} {:<18} {:>12.6g} {:>12.6g} {:>12.6g} {:>12.6g}{}", names[i],
                               dtype_name(t.dtype()), shape_str(t.shape()), s.min, s.max, s.mean, s.std,
                               s.nan ? fmt::format("  ({} NaN)", s.nan) : ""));
  }
  if (o.json) {
    std::cout << doc.dump(2) << "\n";
    return;
  }
  std::cout << fmt::format("{:<24} {:<9} {:<18} {:>12} {:>12} {:>12} {:>12}\n", "output", "dtype", "shape", "min",
                           "max", "mean", "std");
  for (const auto& r : rows) std::cout << r << "\n";
  std::cout << fmt::format("ran in {:.3f} ms on {} thread{}; peak intermediate memory {:.2f} MiB\n", seconds * 1e3,
                           o.threads, o.threads == 1 ? "" : "s", static_cast<double>(ex.peak_bytes()) / (1 << 20));
  if (!o.output_dir.empty()) std::cout << "outputs written to " << o.output_dir << "\n";
}

}  // namespace

void add_run_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("run", "run a model on .npy/.pb inputs with qtool's executor");
  auto o = std::make_shared<RunOptions>();
  cmd->add_option("model", o->model, "ONNX model file")->required();
  cmd->add_option("-i,--input", o->inputs, "NAME=FILE (.npy or .pb), or FILE for the next input in order");
  cmd->add_option("-o,--output-dir", o->output_dir, "write each output as DIR/<name>.npy");
  cmd->add_option("-t,--threads", o->threads, "intra-op threads")->check(CLI::Range(1, 256));
  cmd->add_option("--qdq", o->qdq,
                  "how QDQ groups run: fuse (default: as the integer kernels ONNX Runtime fuses them into) or float "
                  "(as written: dequantize, float op, quantize)")
      ->check(CLI::IsMember({"fuse", "float"}));
  cmd->add_flag("--json", o->json, "print one JSON document instead of the table");
  cmd->callback([o] { run_command_impl(*o); });
}

}  // namespace qtool::cli
