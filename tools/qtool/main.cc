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
  app.parse_complete_callback([] { cli::setup_logging(); });

  // The one list of sub-commands.
  cli::add_inspect_command(app);
  cli::add_run_command(app);
  cli::add_calibrate_command(app);
  cli::add_quantize_command(app);
  cli::add_compare_command(app);

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
    std::cerr << "qtool: error: out of memory\n";
    return exit_code::kInternal;
  } catch (const std::exception& e) {
    std::cerr << "qtool: internal error: " << e.what() << "\n";
    return exit_code::kInternal;
  }
  return exit_code::kOk;
}
