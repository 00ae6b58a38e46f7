// Options that belong to one of quantize's two paths (static W8A8/W8A16, or weight-only): given
// on the other path they are refused, never silently ignored. One table, one row per option.
#pragma once

#include <string>

#include <CLI/CLI.hpp>

namespace qtool::cli {

/// Throws kConfig naming the first option given on `cmd` that does not apply to the chosen path.
void check_path_options(const CLI::App& cmd, bool static_path, const std::string& bits);

}  // namespace qtool::cli
