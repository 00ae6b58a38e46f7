// Options that belong to some of quantize's paths (static W8A8/W8A16, weight-only, dynamic): given
// on another path they are refused, never silently ignored. One table, one row per option.
#pragma once

#include <string>

#include <CLI/CLI.hpp>

namespace qtool::cli {

/// The three paths of `qtool quantize`.
enum class QuantizePath { kStatic, kWeightOnly, kDynamic };

/// Throws kConfig naming the first option given on `cmd` that does not apply to the chosen path.
void check_path_options(const CLI::App& cmd, QuantizePath path, const std::string& bits);

}  // namespace qtool::cli
