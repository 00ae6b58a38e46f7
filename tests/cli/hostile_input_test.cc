// Hostile inputs through the command line (issue 19): one test per case. Each asserts the exit
// code, that the message names the file / node / option, that the inputs are byte-identical
// afterwards and that no output or temporary file is left behind.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include <fmt/format.h>

#include "graph_builders.h"
#include "qtool/core/npy.h"
#include "qtool/onnx_io/onnx_io.h"
#include "test_util.h"

namespace qtool {
namespace {

namespace fs = std::filesystem;
using testing::run_command;
using testing::TempDir;

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

std::string digits_model() { return testing::source_path("calibration_samples/digits/digits_cnn.onnx"); }
std::string digits_data() { return testing::source_path("calibration_samples/digits"); }

/// Files in `dir` whose names start with '.' and contain ".tmp" (AtomicFile's temporary files).
std::vector<std::string> temp_files(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    if (n.rfind('.', 0) == 0 && n.find(".tmp") != std::string::npos) out.push_back(n);
  }
  return out;
}

/// A copy of the digits model as <dir>/m.onnx.
struct ModelCopy {
  TempDir dir;
  std::string model = dir.file("m.onnx");
  std::string bytes;
  ModelCopy() {
    fs::copy_file(digits_model(), model);
    bytes = slurp(model);
  }
  /// Runs `qtool ARGS` from inside the folder.
  testing::CommandResult qtool(const std::string& args) const {
    return run_command(fmt::format("cd {} && {} {}", dir.path(), testing::qtool_bin(), args));
  }
  void expect_untouched(const testing::CommandResult& r) const {
    EXPECT_EQ(slurp(model), bytes) << "the input model changed";
    EXPECT_TRUE(temp_files(dir.path()).empty()) << r.err;
  }
};

// ---------------------------------------------------------------------------------------------
// 1. The input model is never overwritten, however the output names it.

TEST(HostileInput, OutputOverTheModelIsRefusedInEveryForm) {
  ModelCopy m;
  ASSERT_EQ(::symlink("m.onnx", m.dir.file("link.onnx").c_str()), 0);
  ASSERT_EQ(::link(m.model.c_str(), m.dir.file("hard.onnx").c_str()), 0);
  const std::string calib = fmt::format("--calib {} --samples 16", digits_data());
  const std::vector<std::string> cases = {
      "quantize m.onnx --bits 8 " + calib + " -o m.onnx",
      "quantize m.onnx --bits 8 " + calib + " -o ./m.onnx",
      "quantize m.onnx --bits 8 " + calib + " -o " + m.model,
      "quantize m.onnx --bits 8 " + calib + " -o link.onnx",
      "quantize m.onnx --bits 8 " + calib + " -o hard.onnx",
      "quantize link.onnx --bits 8 " + calib + " -o m.onnx",
      "quantize m.onnx --bits 4 " + calib + " -o m.onnx",
      "quantize m.onnx --bits 8 --format qoperator " + calib + " -o ./m.onnx",
      "quantize m.onnx --bits 8 " + calib + " -o out.onnx --report m.onnx",
      "quantize m.onnx --bits 8 " + calib + " -o out.onnx --report ./out.onnx",
      "calibrate m.onnx " + calib + " -o m.onnx",
      "calibrate m.onnx " + calib + " -o hard.onnx",
  };
  for (const auto& c : cases) {
    const auto r = m.qtool(c);
    EXPECT_EQ(r.exit_code, 2) << c << "\n" << r.err;
    EXPECT_TRUE(r.err.find("m.onnx") != std::string::npos || r.err.find("out.onnx") != std::string::npos) << c << "\n" << r.err;
    EXPECT_FALSE(fs::exists(m.dir.file("out.onnx"))) << c;
    m.expect_untouched(r);
  }
}

TEST(HostileInput, ExperimentSettingOverTheModelIsRefusedBeforeAnyWork) {
  ModelCopy m;
  std::ofstream(m.dir.file("sweep.json")) << fmt::format(
      R"({{"output_dir": ".", "defaults": {{"calib": "{}", "samples": 16}}, "settings": [{{"name": "ok", "bits": 8}}, {{"name": "m", "bits": 8}}]}})",
      digits_data());
  const auto r = m.qtool("quantize m.onnx --config sweep.json");
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("'m'"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(m.dir.file("ok.onnx")));  // refused before the first setting ran
  m.expect_untouched(r);
}

// ---------------------------------------------------------------------------------------------
// 2, 3. External data: nothing outside the model's folder, no symlinks, hard links, FIFOs.

/// The digits model saved with its weights in external data: <dir>/model/m.onnx + model/<location>.
struct ExternalModel {
  TempDir dir;
  std::string folder = dir.file("model");
  std::string model = folder + "/m.onnx";
  explicit ExternalModel(const std::string& location = "m.onnx.data") {
    fs::create_directories(folder);
    fs::create_directories(fs::path(folder) / fs::path(location).parent_path());
    ir::Model m = onnx_io::load_model(digits_model());
    onnx_io::SaveOptions o;
    o.external_data = onnx_io::SaveOptions::ExternalData::kAlways;
    o.external_file = location;
    onnx_io::save_model(m, model, o);
  }
  testing::CommandResult inspect() const {
    return run_command(fmt::format("timeout 20 {} inspect {}", testing::qtool_bin(), model));
  }
};

TEST(HostileInput, ExternalDataThroughASymlinkedFileIsRefused) {
  ExternalModel e;
  const std::string outside = e.dir.file("secret.bin");
  fs::rename(e.folder + "/m.onnx.data", outside);
  ASSERT_EQ(::symlink(outside.c_str(), (e.folder + "/m.onnx.data").c_str()), 0);
  const auto r = e.inspect();
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("symbolic link"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("m.onnx.data"), std::string::npos) << r.err;
}

TEST(HostileInput, ExternalDataThroughASymlinkedFolderIsRefused) {
  ExternalModel e("weights/w.data");
  const std::string outside = e.dir.file("elsewhere");
  fs::rename(e.folder + "/weights", outside);
  ASSERT_EQ(::symlink(outside.c_str(), (e.folder + "/weights").c_str()), 0);
  const auto r = e.inspect();
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("symbolic link"), std::string::npos) << r.err;
  // quantize would have copied the outside file's values into its output: it writes nothing.
  const auto q = run_command(fmt::format("{} quantize {} --bits 4 -o {}", testing::qtool_bin(), e.model, e.dir.file("q.onnx")));
  EXPECT_EQ(q.exit_code, 2) << q.err;
  EXPECT_FALSE(fs::exists(e.dir.file("q.onnx")));
}

TEST(HostileInput, ExternalDataWithSeveralHardLinksIsRefused) {
  ExternalModel e;
  ASSERT_EQ(::link((e.folder + "/m.onnx.data").c_str(), e.dir.file("second_name.bin").c_str()), 0);
  const auto r = e.inspect();
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("hard links"), std::string::npos) << r.err;
}

TEST(HostileInput, ExternalDataFifoIsRefusedWithoutHanging) {
  ExternalModel e;
  fs::remove(e.folder + "/m.onnx.data");
  ASSERT_EQ(::mkfifo((e.folder + "/m.onnx.data").c_str(), 0600), 0);
  const auto r = e.inspect();
  EXPECT_EQ(r.exit_code, 2) << r.err;  // timeout(1) would give 124
  EXPECT_NE(r.err.find("FIFO"), std::string::npos) << r.err;
}

TEST(HostileInput, ModelFifoIsRefusedWithoutHanging) {
  TempDir d;
  ASSERT_EQ(::mkfifo(d.file("m.onnx").c_str(), 0600), 0);
  const auto r = run_command(fmt::format("timeout 20 {} inspect {}", testing::qtool_bin(), d.file("m.onnx")));
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("FIFO"), std::string::npos) << r.err;
}

// ---------------------------------------------------------------------------------------------
// 4. Memory bombs: refused before allocating, exit 2 naming the file or node, peak memory low.

/// Peak RSS in KiB of `cmd` (run under /usr/bin/time), or -1 when /usr/bin/time is missing.
long peak_kib(const testing::CommandResult& r) {
  const auto p = r.err.rfind("maxrss_kib=");
  return p == std::string::npos ? -1 : std::stol(r.err.substr(p + 11));
}

std::string timed(const std::string& args) {
  return fmt::format("/usr/bin/time -f maxrss_kib=%M {} {}", testing::qtool_bin(), args);
}

TEST(HostileInput, NpyHeaderDeclaringPetabytesIsRefused) {
  ModelCopy m;
  fs::create_directories(m.dir.file("calib"));
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000000,), }";
  header.resize(118, ' ');
  header += '\n';
  std::string npy = std::string("\x93NUMPY\x01\x00", 8);
  npy += static_cast<char>(header.size() & 0xff);
  npy += static_cast<char>(header.size() >> 8);
  npy += header + std::string(64, '\0');
  std::ofstream(m.dir.file("calib/bomb.npy"), std::ios::binary) << npy;
  const auto r = run_command(timed(fmt::format("quantize {} --bits 8 --calib {} -o {}", m.model, m.dir.file("calib"),
                                               m.dir.file("q.onnx"))));
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("bomb.npy"), std::string::npos) << r.err;
  const long kib = peak_kib(r);
  if (kib >= 0) {
    EXPECT_LT(kib, 1024 * 1024) << "peak RSS " << kib << " KiB";
  }
  EXPECT_FALSE(fs::exists(m.dir.file("q.onnx")));
  m.expect_untouched(r);
}

/// y = Expand(x, shape) or ConstantOfShape(shape) + x, with a constant 'shape' of [1e5]^3.
std::string bomb_model(const TempDir& d, const std::string& op) {
  ir::Model m;
  m.set_opset("", 13);
  ir::Graph& g = *m.graph;
  ir::Value* x = g.add_input("x", testing::float_type({1}));
  ir::Value* shape = g.add_initializer("shape", Tensor::from_vector<int64_t>({3}, {100000, 100000, 100000}));
  ir::Node* n = op == "Expand" ? g.add_node("Expand", {x, shape}, {"y"}) : g.add_node("ConstantOfShape", {shape}, {"c"});
  n->set_name("bomb_node");
  if (op != "Expand") g.add_node("Add", {n->output(0), x}, {"y"});
  g.add_output(g.find_value("y"));
  const std::string path = d.file(op + ".onnx");
  onnx_io::save_model(m, path);
  write_npy(d.file("x.npy"), Tensor::from_vector<float>({1}, {1.0f}));
  return path;
}

TEST(HostileInput, ExpandAndConstantOfShapeBombsAreRefusedNamingTheNode) {
  for (const std::string op : {"Expand", "ConstantOfShape"}) {
    TempDir d;
    const std::string model = bomb_model(d, op);
    const auto r = run_command(timed(fmt::format("run {} -i x={}", model, d.file("x.npy"))));
    EXPECT_EQ(r.exit_code, 2) << op << "\n" << r.err;
    EXPECT_NE(r.err.find("bomb_node"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("--max-tensor-elements"), std::string::npos) << r.err;
    const long kib = peak_kib(r);
    if (kib >= 0) {
    EXPECT_LT(kib, 1024 * 1024) << "peak RSS " << kib << " KiB";
  }
  }
}

TEST(HostileInput, MaxMemoryOptionLowersTheLimit) {
  TempDir d;
  write_npy(d.file("x.npy"), Tensor::from_vector<float>({1}, {1.0f}));
  ir::Model m;
  m.set_opset("", 13);
  ir::Graph& g = *m.graph;
  ir::Value* x = g.add_input("x", testing::float_type({1}));
  ir::Value* shape = g.add_initializer("shape", Tensor::from_vector<int64_t>({1}, {1 << 22}));  // 16 MiB
  g.add_node("Expand", {x, shape}, {"y"})->set_name("expand16m");
  g.add_output(g.find_value("y"));
  onnx_io::save_model(m, d.file("m.onnx"));
  const std::string run = fmt::format("{{}} run {} -i x={}", d.file("m.onnx"), d.file("x.npy"));
  EXPECT_EQ(run_command(fmt::format(fmt::runtime(run), testing::qtool_bin())).exit_code, 0);
  const auto r = run_command(fmt::format(fmt::runtime(run), testing::qtool_bin() + " --max-memory 8M"));
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("expand16m"), std::string::npos) << r.err;
  const auto bad = run_command(fmt::format(fmt::runtime(run), testing::qtool_bin() + " --max-memory lots"));
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.err.find("--max-memory"), std::string::npos) << bad.err;
}

// ---------------------------------------------------------------------------------------------
// 5. Ctrl-C in a later phase (tuning, after calibration): exit 130, nothing left behind.

TEST(HostileInput, InterruptDuringTuningLeavesNothing) {
  ModelCopy m;
  const std::string cmd = fmt::format(
      "cd {} && ({} quantize m.onnx --bits 4 --calib {} --samples 200 --tune-steps 100000 -o q.onnx 2>err.txt & "
      "pid=$!; sleep 4; kill -INT $pid; wait $pid; echo rc=$?)",
      m.dir.path(), testing::qtool_bin(), digits_data());
  const auto r = run_command(cmd);
  EXPECT_NE(r.out.find("rc=130"), std::string::npos) << r.out << slurp(m.dir.file("err.txt"));
  EXPECT_NE(slurp(m.dir.file("err.txt")).find("interrupted"), std::string::npos) << slurp(m.dir.file("err.txt"));
  EXPECT_FALSE(fs::exists(m.dir.file("q.onnx")));
  m.expect_untouched(r);
}

TEST(HostileInput, SecondInterruptStopsAtOnceAndLeavesNothing) {
  ModelCopy m;
  const std::string cmd = fmt::format(
      "cd {} && ({} quantize m.onnx --bits 4 --calib {} --samples 200 --tune-steps 100000 -o q.onnx 2>err.txt & "
      "pid=$!; sleep 4; kill -INT $pid; kill -INT $pid; wait $pid; echo rc=$?)",
      m.dir.path(), testing::qtool_bin(), digits_data());
  const auto r = run_command(cmd);
  EXPECT_NE(r.out.find("rc=130"), std::string::npos) << r.out << slurp(m.dir.file("err.txt"));
  EXPECT_FALSE(fs::exists(m.dir.file("q.onnx")));
  m.expect_untouched(r);
}

// ---------------------------------------------------------------------------------------------
// 6, 7. Bad options: exit 2 naming the option, never exit 1, never silently ignored.

TEST(HostileInput, BadOptionsAreRefusedNamingTheOption) {
  ModelCopy m;
  const std::string base = fmt::format("quantize m.onnx --calib {} --samples 16 -o q.onnx ", digits_data());
  const std::vector<std::pair<std::string, std::string>> cases = {
      {base + "--threads 100000", "--threads"},
      {base + "--threads 0", "--threads"},
      {base + "--threads -3", "--threads"},
      {base + "--samples -1", "--samples"},
      {base + "--bits 4 --block-size -32", "--block-size"},
      {base + "--max-drop -5", "--max-drop"},
      {base + "--bits 8 --block-size 32", "--block-size"},
      {base + "--bits 4 --cle", "--cle"},
      {base + "--bits 8 --weight-algorithm awq", "--weight-algorithm awq"},
      {base + "--bits 8 --mode dynamic --weight-algorithm gptq", "--weight-algorithm"},
      {base + "--preprocess imagenet", "--preprocess"},
      {base + "--exclude-nodes no_such_node", "no_such_node"},
      {base + "--bits 4 --exclude-nodes no_such_node", "no_such_node"},
      {base + "--keep-fp no_such_tensor", "no_such_tensor"},
      {"calibrate m.onnx --calib " + digits_data() + " -o r.json --threads 100000", "--threads"},
      {"compare m.onnx m.onnx --data " + digits_data() + " --threads 100000", "--threads"},
      {"compare m.onnx m.onnx --data " + digits_data() + " --max-drop -5 --labels x.csv", "--max-drop"},
  };
  for (const auto& [args, what] : cases) {
    const auto r = m.qtool(args);
    EXPECT_EQ(r.exit_code, 2) << args << "\n" << r.err;
    EXPECT_NE(r.err.find(what), std::string::npos) << args << "\n" << r.err;
    EXPECT_FALSE(fs::exists(m.dir.file("q.onnx"))) << args;
    m.expect_untouched(r);
  }
}

TEST(HostileInput, RunIntoAnExistingFileIsABadOptionNotACrash) {
  ModelCopy m;
  write_npy(m.dir.file("x.npy"), Tensor::from_vector<float>({1, 1, 8, 8}, std::vector<float>(64, 0.5f)));
  std::ofstream(m.dir.file("existing.txt")) << "keep me";
  const auto r = m.qtool("run m.onnx -i x.npy -o existing.txt");
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("existing.txt"), std::string::npos) << r.err;
  EXPECT_EQ(slurp(m.dir.file("existing.txt")), "keep me");
}

TEST(HostileInput, CompareOnABadNpyNamesTheFile) {
  ModelCopy m;
  fs::create_directories(m.dir.file("data"));
  std::ofstream(m.dir.file("data/broken.npy"), std::ios::binary) << "\x93NUMPY garbage";
  const auto r = m.qtool("compare m.onnx m.onnx --data data");
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("broken.npy"), std::string::npos) << r.err;
}

TEST(HostileInput, GlobalOptionsWorkAfterTheSubcommand) {
  ModelCopy m;
  const auto r = m.qtool("inspect m.onnx -q");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(r.err.empty()) << r.err;
}

// ---------------------------------------------------------------------------------------------
// 8. A run that quantizes nothing says so and fails.

TEST(HostileInput, QuantizingNothingIsAnError) {
  QTOOL_REQUIRE_SHARED();
  TempDir d;
  const std::string model = testing::shared_path("models/silero-vad/silero_vad.onnx");
  if (!fs::exists(model)) GTEST_SKIP() << "no " << model;
  const auto r = run_command(fmt::format("{} quantize {} --bits 4 -o {}", testing::qtool_bin(), model, d.file("q.onnx")));
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("no weight"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(d.file("q.onnx")));
}

}  // namespace
}  // namespace qtool
