// Quantize reports: weight analysis of emitted models, summary table, JSON schema, HTML page
// (rendered by headless Chromium when it is installed).
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#include <stb/stb_image.h>

#include "qtool/core/npy.h"
#include "qtool/report/report.h"
#include "test_util.h"

namespace qtool::report {
namespace {

/// A model with one int4 block-wise DQ weight (Gemm), one int8 per-channel DQ weight (Conv), one
/// ternary int2 weight (MatMul) and one float weight (MatMul).
ir::Model make_quantized_model() {
  ir::Model m;
  ir::Graph& g = *m.graph;
  ir::Value* x = g.add_input("x");
  // int4 block(32, axis=1): weight [4, 64] -> scales [4, 2].
  std::vector<int8_t> q4(4 * 64, 3);
  ir::Value* w4 = g.add_initializer("fc.weight_q", Tensor::from_vector<int8_t>({4, 64}, q4).cast(DataType::kInt4));
  ir::Value* s4 = g.add_initializer("fc.weight_s", Tensor::from_vector<float>({4, 2}, {1, 2, 3, 4, 5, 6, 7, 8}));
  ir::Node* dq4 = g.add_node("DequantizeLinear", {w4, s4}, {"fc.weight_dq"}, "fc_dq");
  dq4->set_attr(ir::Attribute::make_int("axis", 1));
  dq4->set_attr(ir::Attribute::make_int("block_size", 32));
  g.add_node("Gemm", {x, dq4->output(0)}, {"y1"}, "fc");
  // int8 per-channel (axis 0), with zero points -> asymmetric.
  ir::Value* w8 = g.add_initializer("conv.weight_q", Tensor::from_vector<int8_t>({2, 1, 3, 3}, std::vector<int8_t>(18, 5)));
  ir::Value* s8 = g.add_initializer("conv.weight_s", Tensor::from_vector<float>({2}, {0.5f, 1.5f}));
  ir::Value* z8 = g.add_initializer("conv.weight_z", Tensor::from_vector<int8_t>({2}, {0, 1}));
  ir::Node* dq8 = g.add_node("DequantizeLinear", {w8, s8, z8}, {"conv.weight_dq"}, "conv_dq");
  dq8->set_attr(ir::Attribute::make_int("axis", 0));
  g.add_node("Conv", {x, dq8->output(0)}, {"y2"}, "conv");
  // ternary as int2 {-1,0,1}, per-tensor.
  std::vector<int8_t> t(64);
  for (size_t i = 0; i < t.size(); ++i) t[i] = static_cast<int8_t>(static_cast<int>(i % 3) - 1);
  ir::Value* w2 = g.add_initializer("mm.weight_q", Tensor::from_vector<int8_t>({8, 8}, t).cast(DataType::kInt2));
  ir::Value* s2 = g.add_initializer("mm.weight_s", Tensor::scalar<float>(0.25f));
  ir::Node* dq2 = g.add_node("DequantizeLinear", {w2, s2}, {"mm.weight_dq"}, "mm_dq");
  g.add_node("MatMul", {x, dq2->output(0)}, {"y3"}, "mm");
  // float weight.
  ir::Value* wf = g.add_initializer("head.weight", Tensor(DataType::kFloat, {10, 10}));
  g.add_node("MatMul", {x, wf}, {"y4"}, "head");
  // A float bias-sized initializer below the threshold is not a layer.
  ir::Value* small = g.add_initializer("tiny", Tensor(DataType::kFloat, {2, 2}));
  g.add_node("MatMul", {x, small}, {"y5"}, "tiny_mm");
  for (const char* o : {"y1", "y2", "y3", "y4", "y5"}) g.add_output(g.find_value(o));
  return m;
}

TEST(AnalyzeWeights, ClassifiesEveryStoredForm) {
  const auto layers = analyze_quantized_weights(make_quantized_model());
  ASSERT_EQ(layers.size(), 4u);
  const auto& a = layers[0];
  EXPECT_EQ(a.node, "fc");
  EXPECT_EQ(a.op_type, "Gemm");
  EXPECT_EQ(a.precision, "int4");
  EXPECT_EQ(a.bits, 4);
  EXPECT_EQ(a.scheme, "block(32, axis=1)");
  EXPECT_TRUE(a.symmetric);
  EXPECT_EQ(a.params, 256);
  EXPECT_EQ(a.bytes, 128 + 8 * 4);  // packed int4 + 8 float scales
  EXPECT_DOUBLE_EQ(a.bits_per_weight(), 5.0);
  EXPECT_EQ(a.scales.count, 8);
  EXPECT_DOUBLE_EQ(a.scales.min, 1.0);
  EXPECT_DOUBLE_EQ(a.scales.max, 8.0);
  EXPECT_DOUBLE_EQ(a.scales.mean, 4.5);
  const auto& b = layers[1];
  EXPECT_EQ(b.precision, "int8");
  EXPECT_EQ(b.scheme, "per-channel(axis=0)");
  EXPECT_FALSE(b.symmetric);
  EXPECT_EQ(b.bytes, 18 + 8 + 2);
  const auto& c = layers[2];
  EXPECT_EQ(c.precision, "ternary");
  EXPECT_EQ(c.bits, 2);
  EXPECT_EQ(c.scheme, "per-tensor");
  EXPECT_EQ(c.bytes, 16 + 4);
  const auto& d = layers[3];
  EXPECT_EQ(d.precision, "fp32");
  EXPECT_EQ(d.bytes, 400);
  EXPECT_TRUE(std::isnan(d.weight_sqnr_db));
}

QuantizeReport sample_report() {
  QuantizeReport r;
  r.input_model = "model.onnx";
  r.output_model = "out <q4>.onnx";  // escaped in HTML
  r.precision = "W4 (block 32)";
  r.settings = {{"bits", "4"}, {"block-size", "32"}};
  r.fp32_file_bytes = 1000000;
  r.output_file_bytes = 152000;
  r.layers = analyze_quantized_weights(make_quantized_model());
  r.layers[0].weight_sqnr_db = 24.5;
  r.layers[0].output_sqnr_db = 31.0;
  r.layers[1].weight_sqnr_db = 40.0;
  r.layers[2].weight_sqnr_db = 9.5;
  r.outputs.push_back({"logits", 100, 28.25, 0.998, 0.97, 1.0});
  r.eval_samples = 100;
  r.timings = {{"calibrate", 1.5}, {"quantize", 0.25}};
  r.actions = {"tuned 10 steps"};
  r.warnings = {"layer 'head' kept in float"};
  return r;
}

TEST(QuantizeReport, TotalsAndSummaryTable) {
  const QuantizeReport r = sample_report();
  EXPECT_EQ(r.total_params(), 256 + 18 + 64 + 100);
  EXPECT_EQ(r.total_weight_bytes(), 160 + 28 + 20 + 400);
  EXPECT_NEAR(r.bits_per_weight(), 8.0 * 608 / 438, 1e-12);
  EXPECT_NEAR(r.size_percent(), 15.2, 1e-12);
  const std::string t = format_summary_table(r);
  EXPECT_NE(t.find("1,000,000 B (100%)"), std::string::npos) << t;
  EXPECT_NE(t.find("152,000 B (15.2%)"), std::string::npos) << t;
  EXPECT_NE(t.find("11.11"), std::string::npos) << t;  // 8*608/438
  EXPECT_NE(t.find("28.2 dB"), std::string::npos) << t;
  EXPECT_NE(t.find("97.0%"), std::string::npos) << t;
  EXPECT_NE(t.find("weights: 1 fp32, 1 int4, 1 int8, 1 ternary (438 parameters)"), std::string::npos) << t;
  EXPECT_NE(t.find("action: tuned 10 steps\nwarning: layer 'head' kept in float\n"), std::string::npos) << t;
}

TEST(QuantizeReport, JsonSchema) {
  const auto j = report_to_json(sample_report());
  EXPECT_EQ(j["schema"], "qtool.quantize_report");
  EXPECT_EQ(j["schema_version"], kQuantizeReportSchemaVersion);
  EXPECT_EQ(j["size"]["output_file_bytes"], 152000);
  EXPECT_NEAR(j["size"]["percent_of_fp32"].get<double>(), 15.2, 1e-9);
  EXPECT_EQ(j["size"]["weight_params"], 438);
  ASSERT_EQ(j["layers"].size(), 4u);
  const auto& l = j["layers"][0];
  for (const char* k : {"node", "op_type", "weight", "precision", "bits", "scheme", "method", "symmetric", "params",
                        "fp32_bytes", "bytes", "bits_per_weight", "scales", "weight_sqnr_db", "output_sqnr_db", "note"})
    EXPECT_TRUE(l.contains(k)) << k;
  EXPECT_DOUBLE_EQ(l["bits_per_weight"].get<double>(), 5.0);
  EXPECT_DOUBLE_EQ(l["scales"]["mean"].get<double>(), 4.5);
  EXPECT_TRUE(j["layers"][3]["weight_sqnr_db"].is_null());  // NaN -> null
  EXPECT_EQ(j["evaluation"]["samples"], 100);
  EXPECT_DOUBLE_EQ(j["evaluation"]["outputs"][0]["top1_agreement"].get<double>(), 0.97);
  EXPECT_DOUBLE_EQ(j["total_seconds"].get<double>(), 1.75);
  EXPECT_EQ(j["settings"]["block-size"], "32");
  EXPECT_EQ(j["warnings"][0], "layer 'head' kept in float");
  ASSERT_EQ(j["actions"].size(), 1u);
  EXPECT_EQ(j["actions"][0], "tuned 10 steps");
}

TEST(QuantizeReport, WriteReportPicksFormatByExtension) {
  testing::TempDir dir;
  write_report(sample_report(), dir.file("r.json"));
  write_report(sample_report(), dir.file("r.HTML"));
  const auto j = nlohmann::json::parse(read_file(dir.file("r.json")));
  EXPECT_EQ(j["schema"], "qtool.quantize_report");
  EXPECT_EQ(read_file(dir.file("r.HTML")).rfind("<!DOCTYPE html>", 0), 0u);
  EXPECT_THROW(write_report(sample_report(), dir.file("no/such/dir/r.json")), Error);
}

TEST(QuantizeReport, HtmlIsSelfContainedAndEscaped) {
  const std::string h = render_html(sample_report());
  EXPECT_NE(h.find("<svg id=\"chart-layer-error\""), std::string::npos);
  EXPECT_NE(h.find("<svg id=\"chart-size\""), std::string::npos);
  EXPECT_NE(h.find("out &lt;q4&gt;.onnx"), std::string::npos);
  EXPECT_EQ(h.find("out <q4>"), std::string::npos);
  EXPECT_EQ(h.find("<script"), std::string::npos);
  EXPECT_EQ(h.find("http://"), h.find("http://www.w3.org/2000/svg"));  // only the SVG namespace
  EXPECT_EQ(h.find("https://"), std::string::npos);
  // One bar per layer with an error figure (3 of 4), plus FP32 and 4 precision segments.
  size_t bars = 0;
  for (size_t p = h.find("class=\"bar\""); p != std::string::npos; p = h.find("class=\"bar\"", p + 1)) ++bars;
  EXPECT_EQ(bars, 3u + 1u + 4u);
}

/// Chromium from Debian's `chromium` package, or "" if absent.
std::string find_chromium() {
  for (const char* p : {"/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"})
    if (std::filesystem::exists(p)) return p;
  return "";
}

TEST(QuantizeReport, HtmlRendersInHeadlessChromium) {
  const std::string chromium = find_chromium();
  if (chromium.empty()) {
    if (testing::under_ci()) FAIL() << "chromium missing (scripts/install_deps.sh installs it)";
    GTEST_SKIP() << "chromium not installed (apt-get install chromium)";
  }
  testing::TempDir dir;
  write_report(sample_report(), dir.file("report.html"));
  if (const char* keep = std::getenv("QTOOL_KEEP_REPORT")) write_report(sample_report(), keep);
  const std::string flags = " --headless --no-sandbox --disable-gpu --disable-quic --no-first-run "
                            "--disable-background-networking --disable-component-update --disable-sync "
                            "--disable-dev-shm-usage --hide-scrollbars --user-data-dir=" +
                            dir.file("profile");
  // The DOM after rendering: both charts and their bars are there.
  const auto dom = testing::run_command("timeout 60 " + chromium + flags + " --dump-dom file://" +
                                        dir.file("report.html") + " 2>/dev/null");
  ASSERT_EQ(dom.exit_code, 0) << dom.err;
  EXPECT_NE(dom.out.find("id=\"chart-layer-error\""), std::string::npos) << dom.out.substr(0, 500);
  EXPECT_NE(dom.out.find("id=\"chart-size\""), std::string::npos);
  EXPECT_NE(dom.out.find("<rect class=\"bar\""), std::string::npos);
  // A screenshot is a non-blank PNG: the charts' colours are in it.
  const auto shot = testing::run_command("cd " + dir.path() + " && timeout 60 " + chromium + flags +
                                         " --window-size=1100,900 --screenshot=" + dir.file("shot.png") +
                                         " file://" + dir.file("report.html") + " >/dev/null 2>&1");
  ASSERT_EQ(shot.exit_code, 0);
  const std::string png = read_file(dir.file("shot.png"));
  ASSERT_GT(png.size(), 1000u);
  EXPECT_EQ(png.substr(1, 3), "PNG");
  int w = 0, h = 0, c = 0;
  unsigned char* px = stbi_load_from_memory(reinterpret_cast<const unsigned char*>(png.data()),
                                            static_cast<int>(png.size()), &w, &h, &c, 3);
  ASSERT_NE(px, nullptr);
  // Pixels of the int4 green (#27ae60) and int8 blue (#2f80ed) bars: only drawn charts have them.
  auto count = [&](int r, int g, int b) {
    int64_t n = 0;
    for (int64_t i = 0; i < static_cast<int64_t>(w) * h; ++i)
      n += std::abs(px[3 * i] - r) < 8 && std::abs(px[3 * i + 1] - g) < 8 && std::abs(px[3 * i + 2] - b) < 8;
    return n;
  };
  const int64_t green = count(0x27, 0xae, 0x60), blue = count(0x2f, 0x80, 0xed);
  stbi_image_free(px);
  EXPECT_GT(green, 200) << "int4 bars not rendered";
  EXPECT_GT(blue, 200) << "int8 bars not rendered";
}

}  // namespace
}  // namespace qtool::report
