// The quantize job (pipeline/quantize.h): checks, then one of the two paths, then the report.
#include "qtool/pipeline/quantize.h"

#include <spdlog/spdlog.h>

#include "internal.h"
#include "qtool/core/output_file.h"
#include "qtool/onnx_io/onnx_io.h"

namespace qtool::pipeline {
namespace {

/// Refuses --exclude-nodes / --keep-fp names that match nothing in the model (a typo would
/// otherwise quantize what the user meant to keep in float).
void check_names_exist(const QuantizeJob& job, const ir::Model& model) {
  std::vector<std::string> nodes, values;
  for (const auto& n : model.graph->nodes()) {
    nodes.push_back(n->name());
    for (const ir::Value* v : n->outputs())
      if (v) values.push_back(v->name());
    for (const ir::Value* v : n->inputs())
      if (v) values.push_back(v->name());
  }
  auto matches = [](const std::vector<std::string>& names, const std::string& pattern) {
    for (const auto& n : names)
      if (n == pattern || quant::glob_match(pattern, n)) return true;
    return false;
  };
  const bool st = job.static_path();
  for (const auto& x : job.exclude_nodes) {
    if (matches(nodes, x) || (!st && matches(values, x))) continue;
    fail(ErrorCode::kConfig, "--exclude-nodes: no node of '{}' is named '{}'{}", job.model_path, x,
         st ? "" : " (nor is a weight)");
  }
  for (const auto& x : job.keep_fp)
    QTOOL_CHECK(matches(values, x), ErrorCode::kConfig, "--keep-fp: no tensor of '{}' is named '{}'", job.model_path, x);
}

/// Every file the run writes, checked before any work: never an input, never a folder, never twice.
void check_outputs(const QuantizeJob& job) {
  for (const std::string* in : {&job.ranges_path, &job.data.path, &job.plan_path})
    if (!in->empty()) protect_input(*in);
  check_output_path(job.out_path, "-o");
  if (!job.report_path.empty()) {
    check_output_path(job.report_path, "--report");
    check_distinct_outputs(job.out_path, "-o", job.report_path, "--report");
  }
  if (!job.plan_out.empty()) {
    check_output_path(job.plan_out, "--plan-out");
    check_distinct_outputs(job.out_path, "-o", job.plan_out, "--plan-out");
    check_distinct_outputs(job.report_path, "--report", job.plan_out, "--plan-out");
  }
}

}  // namespace

QuantizeOutcome quantize(const QuantizeJob& job) {
  using namespace detail;
  QTOOL_CHECK(!job.out_path.empty(), ErrorCode::kConfig, "quantize needs an output path (-o OUT)");
  const auto t0 = clock_type::now();
  std::vector<report::Timing> timings;
  auto t = clock_type::now();
  ir::Model model = onnx_io::load_model(job.model_path);
  timings.push_back({"load", seconds_since(t)});
  check_outputs(job);  // before any work: never over an input (the loader protected the model)
  check_names_exist(job, model);
  QTOOL_CHECK(!job.max_drop || !job.data.path.empty(), ErrorCode::kConfig, "--max-drop needs calibration data (--calib)");
  QuantizeOutcome out = job.dynamic && job.bits.is_int8() ? run_dynamic(job, model, timings)
                        : job.static_path() ? run_static(job, model, timings)
                                                            : run_weight_only(job, model, timings);
  out.report.settings = job.settings;
  out.report.timings = std::move(timings);
  if (!job.report_path.empty()) report::write_report(out.report, job.report_path);
  spdlog::info("done in {:.1f} s", seconds_since(t0));
  return out;
}

}  // namespace qtool::pipeline
