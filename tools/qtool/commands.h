// Sub-commands of the qtool CLI. Each lives in its own cmd_<name>.cc and adds itself to the
// app through add_<name>_command(); main.cc holds the one list.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>

namespace qtool::cli {

/// Options every command shares (set by main before a command's callback runs).
struct GlobalOptions {
  std::string log_level = "info";
  bool quiet = false;
  std::string max_memory;                      ///< --max-memory (core/limits.h)
  std::optional<int64_t> max_tensor_elements;  ///< --max-tensor-elements
  std::optional<int64_t> max_loop_iterations;  ///< --max-loop-iterations
};
const GlobalOptions& global_options();

void add_inspect_command(CLI::App& app);
void add_run_command(CLI::App& app);
void add_calibrate_command(CLI::App& app);
void add_quantize_command(CLI::App& app);
void add_compare_command(CLI::App& app);
void add_sensitivity_command(CLI::App& app);

}  // namespace qtool::cli
