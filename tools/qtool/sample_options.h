// The sample options of calibrate, quantize and compare, declared once and validated once.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "qtool/data/sample_source.h"
#include "qtool/ir/graph.h"

namespace qtool::cli {

/// Where the samples come from and how they are selected and preprocessed.
struct SampleArgs {
  std::string path;  ///< --calib (calibrate, quantize) or --data (compare)
  size_t samples = 0;
  bool shuffle = false;
  uint64_t seed = 0;
  std::string split = "all";
  std::string list_file;
  bool repeat_ok = false;
  std::string preprocess;
  int resize = -1, crop = -1;
  std::string channel_order;  ///< "", rgb, bgr
  float scale = -1.0f;
  std::vector<float> mean, std;
  std::string layout;  ///< "", nchw, nhwc
  int64_t seq_len = 0;

  /// Whether any image option (--preprocess, --resize, ...) was given.
  bool has_image_options() const;
};

/// Adds the sample options to `cmd`; `path_option` is "--calib" or "--data".
void add_sample_options(CLI::App& cmd, SampleArgs& a, const std::string& path_option, const std::string& path_help);

/// Opens and selects the samples for `model`'s inputs. Refuses (kConfig) image options for data that
/// is not images, naming the option and the data's kind.
std::shared_ptr<data::SelectedSource> open_samples(const SampleArgs& a, const ir::Model& model,
                                                   const std::string& path_option);

}  // namespace qtool::cli
