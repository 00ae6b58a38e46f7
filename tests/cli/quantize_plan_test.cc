// --plan-out / --plan: the plan a run carried out reproduces its model byte for byte, and an
// edited plan is honoured and reported.
#include <gtest/gtest.h>

#include <fstream>
#include <iterator>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "qtool/onnx_io/onnx_io.h"
#include "test_util.h"

namespace qtool {
namespace {

std::string slurp(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

std::string quantize(const std::string& args) {
  return fmt::format("{} quantize {} --calib {} --samples 64 {}", testing::qtool_bin(),
                     testing::source_path("calibration_samples/digits/digits_cnn.onnx"),
                     testing::source_path("calibration_samples/digits"), args);
}

TEST(CliQuantizePlan, PlanOutThenPlanReproducesTheModelAndAnEditIsHonoured) {
  testing::TempDir d;
  for (const std::string extra : {"--bits 4", "--bits 4 --asymmetric --weight-algorithm gptq", "--bits 2 --block-size 0"}) {
    SCOPED_TRACE(extra);
    const auto a = testing::run_command(quantize(fmt::format("{} -o {} --plan-out {}", extra, d.file("a.onnx"), d.file("plan.json"))));
    ASSERT_EQ(a.exit_code, 0) << a.err;
    const nlohmann::json plan = nlohmann::json::parse(slurp(d.file("plan.json")));
    ASSERT_EQ(plan["layers"].size(), 5u);
    EXPECT_EQ(plan["layers"][0]["reason"], "first/last layer");
    // The same options plus the plan (the plan's bits by default when --bits is left out).
    std::string rest = extra.substr(extra.find(' ', 7) == std::string::npos ? extra.size() : extra.find(' ', 7));
    const auto b = testing::run_command(quantize(fmt::format("{} --plan {} -o {}", rest, d.file("plan.json"), d.file("b.onnx"))));
    ASSERT_EQ(b.exit_code, 0) << b.err;
    EXPECT_EQ(slurp(d.file("a.onnx")), slurp(d.file("b.onnx")));
  }
  // Edit: conv2 (int4) moves to int8; the report lists it as int8 with the reason "--plan".
  const auto a = testing::run_command(quantize(fmt::format("--bits 4 -o {} --plan-out {}", d.file("a.onnx"), d.file("plan.json"))));
  ASSERT_EQ(a.exit_code, 0) << a.err;
  nlohmann::json plan = nlohmann::json::parse(slurp(d.file("plan.json")));
  ASSERT_EQ(plan["layers"][1]["node"], "conv2");
  ASSERT_EQ(plan["layers"][1]["format"], "uint4");  // the default with --calib: zero points
  plan["layers"][1]["format"] = "int8";
  std::ofstream(d.file("edited.json")) << plan.dump(2);
  const auto c = testing::run_command(quantize(fmt::format("--plan {} -o {} --json", d.file("edited.json"), d.file("c.onnx"))));
  ASSERT_EQ(c.exit_code, 0) << c.err;
  const nlohmann::json rep = nlohmann::json::parse(c.out);
  bool seen = false;
  for (const auto& l : rep["layers"]) {
    if (l["node"] != "conv2") continue;
    seen = true;
    EXPECT_EQ(l["precision"], "int8") << l.dump();
    EXPECT_EQ(l["note"], "--plan") << l.dump();
  }
  EXPECT_TRUE(seen) << rep["layers"].dump();
  EXPECT_GT(slurp(d.file("c.onnx")).size(), slurp(d.file("a.onnx")).size());  // int8 costs bytes
  // A plan that names a weight the model does not have, or a format an op cannot take, is refused.
  plan["layers"][1]["weight"] = "no_such_weight";
  std::ofstream(d.file("bad.json")) << plan.dump(2);
  const auto bad = testing::run_command(quantize(fmt::format("--plan {} -o {}", d.file("bad.json"), d.file("x.onnx"))));
  EXPECT_EQ(bad.exit_code, 2) << bad.err;
  EXPECT_NE(bad.err.find("no_such_weight"), std::string::npos) << bad.err;
  plan["layers"][1]["weight"] = "conv2.weight";
  plan["layers"][1]["format"] = "mnb4_b32";
  std::ofstream(d.file("bad2.json")) << plan.dump(2);
  const auto bad2 = testing::run_command(quantize(fmt::format("--plan {} -o {}", d.file("bad2.json"), d.file("x.onnx"))));
  EXPECT_EQ(bad2.exit_code, 2) << bad2.err;
  EXPECT_NE(bad2.err.find("MatMulNBits"), std::string::npos) << bad2.err;
  EXPECT_FALSE(std::filesystem::exists(d.file("x.onnx")));
}

TEST(CliQuantizePlan, HelpListsEveryFormatFromTheTable) {
  const auto r = testing::run_command(fmt::format("{} quantize --help", testing::qtool_bin()));
  EXPECT_EQ(r.exit_code, 0);
  for (const char* name : {"int8", "int4_b32", "uint4_b128", "int2_b16", "ternary_b64", "binary", "mnb4z_b32", "mnb2z_b128"})
    EXPECT_NE(r.out.find(name), std::string::npos) << name;
  EXPECT_NE(r.out.find("ternary, binary"), std::string::npos) << "the --bits values come from the table";
}

// A static (--bits 8) plan: every quantized activation with its type, and the tensors kept in
// float. Read back, it gives the same model byte for byte without the guard's search; an edit that
// keeps one more tensor in float is honoured and reported; mixed activation types and a static plan
// on the weight-only path are refused.
TEST(CliQuantizePlan, StaticPlanReproducesTheModelAndAnEditIsHonoured) {
  testing::TempDir d;
  const auto a = testing::run_command(quantize(fmt::format("--bits 8 -o {} --plan-out {}", d.file("a.onnx"), d.file("plan.json"))));
  ASSERT_EQ(a.exit_code, 0) << a.err;
  nlohmann::json plan = nlohmann::json::parse(slurp(d.file("plan.json")));
  EXPECT_EQ(plan["path"], "static");
  ASSERT_EQ(plan["activations"].size(), 6u);  // image, conv1..3, flatten, fc1
  for (const auto& e : plan["activations"]) EXPECT_EQ(e["precision"], "uint8") << e;
  const auto b = testing::run_command(quantize(fmt::format("--plan {} -o {}", d.file("plan.json"), d.file("b.onnx"))));
  ASSERT_EQ(b.exit_code, 0) << b.err;
  EXPECT_EQ(slurp(d.file("a.onnx")), slurp(d.file("b.onnx")));
  // Keep conv2's output in float.
  for (auto& e : plan["activations"])
    if (e["tensor"] == "conv2") e["precision"] = "float";
  { std::ofstream(d.file("edited.json")) << plan.dump(2); }
  const auto c = testing::run_command(quantize(fmt::format("--plan {} --json -o {}", d.file("edited.json"), d.file("c.onnx"))));
  ASSERT_EQ(c.exit_code, 0) << c.err;
  EXPECT_NE(slurp(d.file("a.onnx")), slurp(d.file("c.onnx")));
  const nlohmann::json rep = nlohmann::json::parse(c.out);
  std::string actions;
  for (const auto& x : rep["actions"]) actions += x.get<std::string>() + "\n";
  EXPECT_NE(actions.find("--plan: uint8 activations, 0 at 16 bits, 1 kept in float"), std::string::npos) << actions;
  // Its plan-out lists conv2 as float, the reason naming the plan.
  const auto e = testing::run_command(quantize(fmt::format("--plan {} -o {} --plan-out {}", d.file("edited.json"),
                                                           d.file("e.onnx"), d.file("plan2.json"))));
  ASSERT_EQ(e.exit_code, 0) << e.err;
  int floats = 0;
  const nlohmann::json plan2 = nlohmann::json::parse(slurp(d.file("plan2.json")));
  for (const auto& x : plan2["activations"])
    if (x["precision"] == "float") {
      ++floats;
      EXPECT_EQ(x["tensor"], "conv2");
      EXPECT_EQ(x["reason"], "--plan");
    }
  EXPECT_EQ(floats, 1);
  // An option that contradicts the plan is refused, not overridden.
  const auto x = testing::run_command(quantize(fmt::format("--plan {} --activation-bits 16 -o {}", d.file("plan.json"),
                                                           d.file("x.onnx"))));
  EXPECT_EQ(x.exit_code, 2) << x.err;
  EXPECT_NE(x.err.find("contradicts"), std::string::npos) << x.err;
  // An 8-bit type mixes with its 16-bit twin: the image is read at 16 bits (opset 21), the rest at 8.
  for (auto& e : plan["activations"])
    if (e["tensor"] == "image") e["precision"] = "uint16";
  { std::ofstream(d.file("mixed.json")) << plan.dump(2); }
  const auto m = testing::run_command(quantize(fmt::format("--plan {} -o {}", d.file("mixed.json"), d.file("m.onnx"))));
  ASSERT_EQ(m.exit_code, 0) << m.err;
  const ir::Model mixed = onnx_io::load_model(d.file("m.onnx"));
  EXPECT_EQ(mixed.opset(""), 21);
  std::map<std::string, int> zero_point_types;
  for (const auto& node : mixed.graph->nodes())
    if (node->op_type() == "QuantizeLinear") ++zero_point_types[std::string(dtype_name(node->input(2)->initializer()->dtype()))];
  EXPECT_EQ(zero_point_types["uint16"], 1);
  EXPECT_EQ(zero_point_types["uint8"], 4);  // conv1, conv3, flatten, fc1 (conv2 is float in this plan)
  // Other mixes are refused.
  for (auto& e : plan["activations"])
    if (e["tensor"] == "image") e["precision"] = "int16";
  { std::ofstream(d.file("bad.json")) << plan.dump(2); }
  const auto bm = testing::run_command(quantize(fmt::format("--plan {} -o {}", d.file("bad.json"), d.file("bm.onnx"))));
  EXPECT_EQ(bm.exit_code, 2) << bm.err;
  EXPECT_NE(bm.err.find("16-bit twin"), std::string::npos) << bm.err;
  // A static plan with --bits 4 is refused.
  const auto w = testing::run_command(quantize(fmt::format("--bits 4 --plan {} -o {}", d.file("plan.json"), d.file("w.onnx"))));
  EXPECT_EQ(w.exit_code, 2) << w.err;
  EXPECT_NE(w.err.find("static"), std::string::npos) << w.err;
}

}  // namespace
}  // namespace qtool
