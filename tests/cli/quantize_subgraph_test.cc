// qtool quantize --bits 8 on models whose work happens inside If bodies (Silero VAD v5): the
// output must stay a valid model that ONNX Runtime runs, with qtool's executor agreeing with it.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "qtool/core/npy.h"
#include "qtool/onnx_io/onnx_io.h"
#include "qtool/passes/qdq_to_qoperator.h"
#include "qtool/runtime/executor.h"
#include "test_util.h"

namespace qtool {
namespace {

using testing::shared_path;

// 16-bit PCM mono samples of a WAV file, scaled to [-1, 1).
std::vector<float> read_wav_pcm16(const std::string& path) {
  const std::string b = read_file(path);
  EXPECT_EQ(b.substr(0, 4), "RIFF");
  size_t pos = 12;
  std::vector<float> out;
  while (pos + 8 <= b.size()) {
    const std::string id = b.substr(pos, 4);
    uint32_t size = 0;
    std::memcpy(&size, b.data() + pos + 4, 4);
    if (id == "data") {
      const size_t n = std::min<size_t>(size, b.size() - pos - 8) / 2;
      out.resize(n);
      for (size_t i = 0; i < n; ++i) {
        int16_t s = 0;
        std::memcpy(&s, b.data() + pos + 8 + 2 * i, 2);
        out[i] = static_cast<float>(s) / 32768.0f;
      }
      break;
    }
    pos += 8 + size + (size & 1);
  }
  return out;
}

// Streams test.wav through the FP32 model in 512-sample chunks (64 samples of context before each,
// the LSTM state carried), and writes every `every`-th chunk's inputs as a calibration sample into
// DIR/{input,state,sr}/NNN.npy (the folder-per-input layout of --calib).
void write_vad_samples(const std::string& model_path, const std::string& dir, int count, int every) {
  const std::vector<float> pcm = read_wav_pcm16(shared_path("data/speech/test.wav"));
  ASSERT_GT(pcm.size(), static_cast<size_t>(count * every * 512));
  for (const char* sub : {"input", "state", "sr"}) std::filesystem::create_directories(dir + "/" + sub);
  const ir::Model m = onnx_io::load_model(model_path);
  runtime::Executor ex(m);
  Tensor state = Tensor::from_vector<float>({2, 1, 128}, std::vector<float>(256, 0.0f));
  const Tensor sr = Tensor::scalar<int64_t>(16000);
  std::vector<float> context(64, 0.0f);
  int written = 0;
  for (int k = 0; written < count; ++k) {
    std::vector<float> x(context);
    x.insert(x.end(), pcm.begin() + k * 512, pcm.begin() + (k + 1) * 512);
    const Tensor input = Tensor::from_vector<float>({1, 576}, x);
    if (k % every == 0) {
      write_npy(fmt::format("{}/input/{:03d}.npy", dir, written), input);
      write_npy(fmt::format("{}/state/{:03d}.npy", dir, written), state);
      write_npy(fmt::format("{}/sr/{:03d}.npy", dir, written), sr);
      ++written;
    }
    const std::vector<Tensor> out = ex.run({{"input", input}, {"state", state}, {"sr", sr}});
    state = out.at(1);
    context.assign(x.end() - 64, x.end());
  }
}

// One quantization step of the DequantizeLinear that writes graph output `name`, or the largest of
// those read by the float op that writes it (op15's stateN is an Add of a dequantized Concat);
// 0 when no dequantized value reaches it directly.
double output_step(const ir::Model& m, const std::string& name) {
  const auto dq_step = [](const ir::Node* p) {
    if (p == nullptr || p->op_type() != "DequantizeLinear" || p->input(1) == nullptr) return 0.0;
    const Tensor* scale = p->input(1)->initializer();
    if (scale == nullptr || scale->numel() != 1 || scale->dtype() != DataType::kFloat) return 0.0;
    return static_cast<double>(scale->data<float>()[0]);
  };
  const ir::Value* v = m.graph->find_value(name);
  const ir::Node* p = v ? v->producer() : nullptr;
  if (p == nullptr) return 0.0;
  double step = dq_step(p);
  for (const ir::Value* in : p->inputs())
    if (in != nullptr) step = std::max(step, dq_step(in->producer()));
  return step;
}

TEST(CliQuantizeSubgraphs, SileroVadIfBodiesStayValidAndRunInOrt) {
  QTOOL_REQUIRE_SHARED();
  QTOOL_REQUIRE_ORT();
  testing::TempDir dir;
  const std::string calib = dir.file("calib");
  write_vad_samples(shared_path("models/silero-vad/silero_vad.onnx"), calib, 40, 7);
  for (const char* name : {"silero_vad", "silero_vad_op18_ifless", "silero_vad_16k_op15"}) {
    SCOPED_TRACE(name);
    const std::string model = shared_path(fmt::format("models/silero-vad/{}.onnx", name));
    const std::string out = dir.file(fmt::format("{}.int8.onnx", name));
    const auto r = testing::run_command(fmt::format("{} quantize {} --bits 8 --calib {} --json -o {}",
                                                    testing::qtool_bin(), model, calib, out));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto doc = nlohmann::json::parse(r.out);
    std::string all;
    for (const auto& w : doc["actions"]) all += w.get<std::string>() + "\n";
    // Every export keeps some of its network inside If bodies: the weights there are stored as int8
    // (the LSTM gates that the export slices and concatenates from the parent's weights are folded
    // into one tensor, stored once for both branches), the activations stay float, and it says so.
    EXPECT_NE(all.find("weights stored as int8, activations left in float"), std::string::npos) << all;
    EXPECT_LE(std::filesystem::file_size(out), 0.35 * std::filesystem::file_size(model))
        << std::filesystem::file_size(out) << " of " << std::filesystem::file_size(model);
    if (std::string(name) == "silero_vad_16k_op15") {
      // op15 has its 16 kHz network in the main graph: it is quantized, and the guard keeps the
      // power spectrum (re² + im², many decades) in float (with the squares it adds) and raises
      // the STFT's tensors to 16 bits.
      EXPECT_NE(all.find("guard: '/model/stft/Add_output_0' kept in float"), std::string::npos) << all;
      EXPECT_NE(all.find("guard: '/model/stft/Conv_output_0' raised to 16 bits"), std::string::npos) << all;
      EXPECT_NE(all.find("guard round 1:"), std::string::npos) << all;
      EXPECT_GE(doc["evaluation"]["outputs"][0]["sqnr_db"].get<double>(), 25.0) << doc["evaluation"].dump();
    }

    const ir::Model q = onnx_io::load_model(out);
    const ir::Model f = onnx_io::load_model(model);
    // The fused form (what `qtool run`/`compare` execute) must keep the If bodies intact too.
    ir::Model fused = q.clone();
    passes::fuse_qdq_to_qoperator(fused);
    runtime::Executor eq(q), ef(f), efu(fused);
    for (int s : {3, 17, 33}) {
      const std::map<std::string, Tensor> in = {
          {"input", read_npy(fmt::format("{}/input/{:03d}.npy", calib, s))},
          {"state", read_npy(fmt::format("{}/state/{:03d}.npy", calib, s))},
          {"sr", read_npy(fmt::format("{}/sr/{:03d}.npy", calib, s))}};
      const auto ort = testing::ort_run(out, in);
      ASSERT_EQ(ort.count("output"), 1u);
      const std::vector<Tensor> ours = eq.run(in), ref = ef.run(in), ours_fused = efu.run(in);
      if (testing::ort_int8_exact()) {  // ORT's u8s8 kernels saturate on AVX2 CPUs without VNNI
        // The 16-bit tensors are computed in float (DQ -> op -> Q) by both; the two float
        // convolutions sum in different orders (MLAS's AVX-512 blocking is not its AVX2 one), so a
        // value on a rounding edge may land one code apart: within one step of the output's own
        // quantizer, not more.
        for (const auto& [i, output] : {std::pair{0, "output"}, std::pair{1, "stateN"}}) {
          const double tol = 1e-4 + 1.001 * output_step(q, output);
          EXPECT_LT(testing::max_abs_error(ours_fused[i], ort.at(output)), tol) << output << ", fused, sample " << s;
          EXPECT_LT(testing::max_abs_error(ours[i], ort.at(output)), tol) << output << ", sample " << s;
        }
      }
      EXPECT_LT(testing::max_abs_error(ours[0], ref[0]), 0.05) << "sample " << s;  // speech probability
    }
  }
}

}  // namespace
}  // namespace qtool
