// libFuzzer target: the .npy reader (parse_npy), used for `qtool run` inputs and calibration samples.
// Input: the bytes of a .npy file.
#include "fuzz_common.h"
#include "qtool/core/npy.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  qtool::fuzz::set_fuzz_limits();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  qtool::fuzz::run_one([&] { (void)qtool::parse_npy(bytes, "fuzz.npy"); });
  return 0;
}
