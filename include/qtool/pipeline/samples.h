// Where samples come from and how they are selected and preprocessed: declared once by the CLI for
// calibrate, quantize and compare (tools/qtool/sample_options.h), validated and opened once here.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "qtool/data/sample_source.h"
#include "qtool/ir/graph.h"

namespace qtool::pipeline {

/// The sample options of a run (--calib / --data and the selection and image options).
struct SampleSpec {
  std::string path;  ///< --calib (calibrate, quantize) or --data (compare); "" = no samples
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

/// Opens and selects the samples for `model`'s inputs. Refuses (kConfig) image options for data that
/// is not images and --seq-len for data that is not a token stream, naming the option (`path_option`
/// is "--calib" or "--data") and the data's kind.
std::shared_ptr<data::SelectedSource> open_samples(const SampleSpec& spec, const ir::Model& model,
                                                   const std::string& path_option);

}  // namespace qtool::pipeline
