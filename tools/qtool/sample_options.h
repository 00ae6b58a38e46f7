// The sample options of calibrate, quantize and compare, declared once (validated and opened once
// by pipeline/samples.h).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "qtool/pipeline/samples.h"

namespace qtool::cli {

using SampleArgs = pipeline::SampleSpec;

/// Adds the sample options to `cmd`; `path_option` is "--calib" or "--data".
void add_sample_options(CLI::App& cmd, pipeline::SampleSpec& a, const std::string& path_option, const std::string& path_help);

using pipeline::open_samples;

}  // namespace qtool::cli
