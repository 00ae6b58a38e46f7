// libFuzzer target: MNIST IDX files (gzip-compressed or not), as `--calib t10k-images-idx3-ubyte.gz`
// reads them: data::read_idx, then the IDX sample source (open_sample_source on an IDX file name)
// for a model with one float [1,1,28,28] input and the mnist-raw preprocessing, loading its first
// and last sample.
//
// Input: the bytes of an IDX file (plain or gzip). read_idx takes a path, so the bytes go to a
// scratch file whose name contains "-idx" (what open_sample_source recognises as IDX).
#include "fuzz_common.h"
#include "qtool/data/sample_source.h"

namespace {

std::vector<qtool::data::InputSpec> g_specs;
qtool::data::SourceOptions g_options;

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  qtool::fuzz::set_fuzz_limits();
  qtool::data::InputSpec spec;
  spec.name = "Input3";  // mnist-8's input
  spec.dtype = qtool::DataType::kFloat;
  spec.has_shape = true;
  for (int64_t d : {1, 1, 28, 28}) spec.dims.push_back(qtool::ir::Dim{d, ""});
  g_specs = {spec};
  g_options.image = qtool::data::image_preset("mnist-raw");
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  const std::string path = qtool::fuzz::write_scratch_file("sample-idx", bytes);
  qtool::fuzz::run_one([&] { (void)qtool::data::read_idx(path); });
  qtool::fuzz::run_one([&] {
    auto source = qtool::data::open_sample_source(path, g_specs, g_options);
    if (source->size() > 0) {
      (void)source->load(0);
      (void)source->load(source->size() - 1);
    }
  });
  return 0;
}
