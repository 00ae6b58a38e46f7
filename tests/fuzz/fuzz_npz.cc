// libFuzzer target: the .npz reader (ZIP stored/deflate, ZIP64, CRC-32, .npy members).
// Input: the bytes of a .npz file.
#include "fuzz_common.h"
#include "qtool/data/sample_source.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  qtool::fuzz::set_fuzz_limits();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  qtool::fuzz::run_one([&] { (void)qtool::data::parse_npz(bytes, "fuzz.npz"); });
  return 0;
}
