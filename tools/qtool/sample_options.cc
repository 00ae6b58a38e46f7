#include "sample_options.h"

#include <spdlog/spdlog.h>

#include "qtool/data/image.h"

namespace qtool::cli {

void add_sample_options(CLI::App& cmd, pipeline::SampleSpec& a, const std::string& path_option, const std::string& path_help) {
  cmd.add_option(path_option, a.path, path_help);
  cmd.add_option("--samples", a.samples, "number of samples (0 = all, capped at 1000)")->check(CLI::NonNegativeNumber);
  cmd.add_flag("--shuffle", a.shuffle, "shuffle the samples (seeded) before taking --samples");
  cmd.add_option("--seed", a.seed, "shuffle seed")->check(CLI::NonNegativeNumber);
  cmd.add_option(path_option == "--calib" ? "--calib-split,--split" : "--split", a.split,
                 "all | even | odd positions of the sorted sample list (shared data: even = calibration half)")
      ->check(CLI::IsMember({"all", "even", "odd"}));
  cmd.add_option("--list", a.list_file, "text file naming the samples to use, one per line");
  cmd.add_flag("--repeat-ok", a.repeat_ok, "allow --samples above the number available by cycling (benchmarks)");
  cmd.add_option("--preprocess", a.preprocess, "image preprocessing preset")->check(CLI::IsMember(data::image_preset_names()));
  cmd.add_option("--resize", a.resize, "image: resize the short side to N (overrides the preset; 0 = none)")
      ->check(CLI::Range(0, 65536));
  cmd.add_option("--crop", a.crop, "image: center crop N x N (overrides the preset; 0 = none)")->check(CLI::Range(0, 65536));
  cmd.add_option("--channel-order", a.channel_order, "image: rgb | bgr")->check(CLI::IsMember({"rgb", "bgr"}));
  cmd.add_option("--scale", a.scale, "image: multiply 0..255 pixels by this first (e.g. 0.00392156862745098)")
      ->check(CLI::PositiveNumber);
  cmd.add_option("--mean", a.mean, "image: per-channel mean, after scale")->delimiter(',');
  cmd.add_option("--std", a.std, "image: per-channel std")->delimiter(',');
  cmd.add_option("--layout", a.layout, "image: nchw | nhwc")->check(CLI::IsMember({"nchw", "nhwc"}));
  cmd.add_option("--seq-len", a.seq_len, "token streams (.i32): tokens per sample (default: the model's fixed length)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 24));
}

}  // namespace qtool::cli
