// qtool: post-training quantization for ONNX models.
//
// The only place that catches qtool::Error and maps it to an exit code (README "Exit codes").
// Results go to stdout; logs and errors go to stderr.
#include <csignal>
#include <cstdio>
#include <iostream>

#include <CLI/CLI.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "commands.h"
#include "qtool/core/error.h"
#include "qtool/core/interrupt.h"
#include "qtool/core/limits.h"

namespace qtool::cli {
namespace {
GlobalOptions g_options;

void setup_logging() {
  auto logger = spdlog::stderr_color_mt("qtool");
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("[%^%l%$] %v");
  spdlog::level::level_enum lvl = spdlog::level::from_str(g_options.log_level);
  if (g_options.quiet) lvl = spdlog::level::err;
  spdlog::set_level(lvl);
}

/// --max-memory / --max-tensor-elements / --max-loop-iterations -> core/limits.h (before any work).
void apply_limits() {
  ResourceLimits l = default_resource_limits();
  if (!g_options.max_memory.empty()) l.max_memory_bytes = parse_byte_size(g_options.max_memory, "--max-memory");
  if (g_options.max_tensor_elements) l.max_tensor_elements = *g_options.max_tensor_elements;
  if (g_options.max_loop_iterations) l.max_loop_iterations = *g_options.max_loop_iterations;
  set_resource_limits(l);
}
}  // namespace

const GlobalOptions& global_options() { return g_options; }

}  // namespace qtool::cli

int main(int argc, char** argv) {
  using namespace qtool;
  CLI::App app{"qtool: post-training quantization for ONNX models", "qtool"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "qtool 0.1.0");
  app.add_option("--log-level", cli::g_options.log_level, "trace, debug, info, warn, error, off")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}));
  app.add_flag("-q,--quiet", cli::g_options.quiet, "only errors on stderr");
  const ResourceLimits defaults = default_resource_limits();
  app.add_option("--max-memory", cli::g_options.max_memory,
                 fmt::format("largest buffer sized from the input files or the model (e.g. 4G; default {} MiB, half "
                             "the physical memory); a calibration sample may use a quarter of it",
                             defaults.max_memory_bytes >> 20));
  app.add_option("--max-tensor-elements", cli::g_options.max_tensor_elements,
                 fmt::format("largest tensor the executor creates, in elements (default {})", defaults.max_tensor_elements))
      ->check(CLI::PositiveNumber);
  app.add_option("--max-loop-iterations", cli::g_options.max_loop_iterations,
                 fmt::format("most iterations of one Loop node (default {})", defaults.max_loop_iterations))
      ->check(CLI::PositiveNumber);
  // Global options are accepted before or after the sub-command (qtool quantize ... -q).
  app.fallthrough();
  app.parse_complete_callback([] {
    cli::setup_logging();
    cli::apply_limits();
  });

  // The one list of sub-commands.
  cli::add_inspect_command(app);
  cli::add_run_command(app);
  cli::add_calibrate_command(app);
  cli::add_quantize_command(app);
  cli::add_compare_command(app);
  cli::add_sensitivity_command(app);

  install_interrupt_handler();  // Ctrl-C: stop cleanly in every phase, exit 130, nothing left behind
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? exit_code::kOk : exit_code::kBadInput;
  } catch (const Error& e) {
    std::fflush(stdout);
    std::cerr << "qtool: error: " << e.what() << "\n";
    return exit_code_for(e.code());
  } catch (const std::bad_alloc&) {
    std::cerr << "qtool: error: out of memory (lower --max-memory to have oversized inputs refused up front)\n";
    return exit_code::kBadInput;
  } catch (const std::exception& e) {
    std::cerr << "qtool: internal error: " << e.what() << "\n";
    return exit_code::kInternal;
  }
  return exit_code::kOk;
}
