// libFuzzer target: the user-written configuration readers, through the functions the CLI calls:
// report::load_experiment_config (`qtool quantize --config`, JSON or YAML by file extension; each
// setting's to_args() as the runner uses them) and calib::load_ranges (`qtool quantize --ranges`).
//
// Input: one selector byte, then the file's text. selector % 3: 0 = experiment config as
// "experiment.json", 1 = the same as "experiment.yaml", 2 = a ranges file "ranges.json".
// The loaders take paths, so the text goes to a scratch file of that name.
#include "fuzz_common.h"
#include "qtool/calib/ranges.h"
#include "qtool/report/experiments.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  qtool::fuzz::set_fuzz_limits();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
  static const char* const kNames[] = {"experiment.json", "experiment.yaml", "ranges.json"};
  const int which = data[0] % 3;
  const std::string path = qtool::fuzz::write_scratch_file(kNames[which], text);
  qtool::fuzz::run_one([&] {
    if (which == 2) {
      (void)qtool::calib::load_ranges(path);
    } else {
      const qtool::report::ExperimentConfig config = qtool::report::load_experiment_config(path);
      for (const auto& setting : config.settings) (void)setting.to_args();
    }
  });
  return 0;
}
