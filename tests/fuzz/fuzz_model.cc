// libFuzzer target: the ONNX model loader (onnx_io::parse_model), then a save/load round trip.
//
// Input: a serialized ModelProto. Models are parsed with the default LoadOptions (external data
// resolved, libonnx shape inference on) against a scratch folder that holds a 4 MiB external-data
// file "weights.bin" (float32 values 0, 0.25, 0.5, ...), so that tensors with external_data
// {location: "weights.bin", offset, length} load real bytes. make_corpus.sh writes the real models
// that way (every tensor of 1 KiB to 4 MiB in weights.bin), which keeps the inputs small.
//
// Property: a model that loads must serialize (serialize_model, all tensors inline) and the bytes
// must load again; an Error on that second load is a finding, as in fuzz_common.h.
#include <spdlog/spdlog.h>

#include <cstring>
#include <vector>

#include "fuzz_common.h"
#include "qtool/onnx_io/onnx_io.h"

namespace {

std::string g_base_dir;

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  qtool::fuzz::set_fuzz_limits();
  spdlog::set_level(spdlog::level::off);  // the loader warns about unusual opsets
  std::vector<float> weights(size_t{1} << 20);  // 4 MiB: make_corpus.sh's WEIGHTS_BYTES
  for (size_t i = 0; i < weights.size(); ++i) weights[i] = 0.25f * static_cast<float>(i);
  std::string bytes(weights.size() * sizeof(float), '\0');
  std::memcpy(bytes.data(), weights.data(), bytes.size());
  qtool::fuzz::write_scratch_file("weights.bin", bytes);
  g_base_dir = qtool::fuzz::scratch_dir();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  qtool::fuzz::run_one([&] {
    const qtool::ir::Model model = qtool::onnx_io::parse_model(bytes, "fuzz.onnx", g_base_dir);
    std::string saved;
    try {
      saved = qtool::onnx_io::serialize_model(model);
      (void)qtool::onnx_io::parse_model(saved, "fuzz-roundtrip.onnx", g_base_dir);
    } catch (const qtool::Error& e) {
      std::fprintf(stderr, "FINDING: the model loaded, but its round trip (serialize_model, parse_model) failed: %s\n",
                   e.what());
      std::abort();
    }
  });
  return 0;
}
