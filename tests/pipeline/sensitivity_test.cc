// Per-layer sensitivity by simulation (pipeline/sensitivity.h) on the bundled digits CNN: the
// simulated all-W8A8 model must measure what the emitted Q/DQ model gives when run as written, and
// each candidate must order as precision does.
#include "qtool/pipeline/sensitivity.h"

#include <gtest/gtest.h>

#include <cmath>

#include "qtool/onnx_io/onnx_io.h"
#include "qtool/pipeline/guard.h"
#include "qtool/quant/static_quant.h"
#include "qtool/report/compare.h"
#include "digits_split.h"
#include "test_util.h"

namespace qtool::pipeline {
namespace {

struct Emitted : testing_digits::DigitsSplit {
  quant::StaticQuantConfig cfg;
  quant::CalibratedModel calibrated;
  quant::StaticEmission emission;

  Emitted() {
    calibrated = quant::calibrate_static(reference, *calib, cfg);
    emission = quant::emit_static(calibrated, {}, cfg);
  }
  EmissionView view() const {
    return {&calibrated.float_model, &emission.model, &emission.qdq, DataType::kUint8, false};
  }
};

TEST(Sensitivity, SimulatedWholeModelMatchesTheEmittedModelRunAsWritten) {
  Emitted e;
  SensitivityOptions o;
  o.samples = 16;
  const SensitivityResult r = measure_layer_sensitivity(e.view(), *e.held_out, o);
  report::CompareOptions co;
  co.per_layer = false;
  co.fuse_qdq = false;  // the simulation dequantizes as the Q/DQ graph does, without integer requantization
  size_t next = 0;
  const report::CompareResult direct = report::compare_models(e.reference, e.emission.model, [&](report::CompareSample& s) {
    if (next >= e.held_out->size()) return false;
    s.inputs = e.held_out->load(next++);
    return true;
  }, co);
  ASSERT_EQ(direct.outputs.size(), 1u);
  EXPECT_NEAR(r.whole_model.sqnr_db, direct.outputs[0].error.sqnr_db(), 0.5);
  EXPECT_EQ(r.samples, 16u);
  EXPECT_EQ(r.outputs, std::vector<std::string>{"logits"});
}

TEST(Sensitivity, CandidatesOrderAsPrecisionAndBytesAsStorage) {
  Emitted e;
  const SensitivityResult r = measure_layer_sensitivity(e.view(), *e.held_out, {});
  // conv1..3, fc1, fc2 (weights) and the flatten's own quantized output.
  ASSERT_EQ(r.layers.size(), 6u);
  size_t with_weight = 0;
  for (size_t i = 0; i < r.layers.size(); ++i) {
    const LayerSensitivity& l = r.layers[i];
    const CandidateScore* a8 = l.find(LayerPrecision::kW8A8);
    const CandidateScore* a16 = l.find(LayerPrecision::kW8A16);
    const CandidateScore* fl = l.find(LayerPrecision::kFloat);
    ASSERT_TRUE(a8 && a16 && fl) << l.node;
    if (i > 0) {  // ranked
      EXPECT_GE(a8->quality.sqnr_db, r.layers[i - 1].find(LayerPrecision::kW8A8)->quality.sqnr_db);
    }
    EXPECT_GE(a16->quality.sqnr_db, a8->quality.sqnr_db - 0.5) << l.node;
    EXPECT_TRUE(std::isinf(fl->quality.sqnr_db)) << l.node;
    EXPECT_LT(a8->quality.sqnr_db, 80.0) << l.node;  // 8 bits lose something measurable
    // Together they lose more than any one alone.
    EXPECT_LT(r.whole_model.sqnr_db, a8->quality.sqnr_db) << l.node;
    const CandidateScore* w4 = l.find(LayerPrecision::kW4A32);
    if (l.weight.empty()) {
      EXPECT_EQ(w4, nullptr) << l.node;
      EXPECT_EQ(a8->bytes, 0);
      continue;
    }
    ++with_weight;
    ASSERT_NE(w4, nullptr) << l.node;
    EXPECT_EQ(fl->bytes, 4 * l.weight_elements);
    EXPECT_GT(a8->bytes, l.weight_elements);  // one byte each plus the scales
    EXPECT_LT(w4->bytes, a8->bytes);
    EXPECT_LT(w4->quality.sqnr_db, a8->quality.sqnr_db) << l.node;  // int4 weights lose more than int8
  }
  EXPECT_EQ(with_weight, 5u);
  EXPECT_EQ(r.runs, (5 * 3 + 1 * 2 + 1) * 16u);
}

/// out = f(a) + Neg(x) with a = Relu(x), where f(a) = a · a is either a Mul in the main graph or
/// the then-branch of an If that reads `a` from the outer scope.
ir::Model square_plus_neg(bool through_if) {
  ir::Model m;
  m.set_opset("", 17);
  ir::Graph& g = *m.graph;
  ir::TypeInfo ft;
  ft.elem_type = DataType::kFloat;
  ir::Value* x = g.add_input("x", ft);
  ir::Value* a = g.add_node("Relu", {x}, {"a"}, "relu")->output(0);
  ir::Value* b = g.add_node("Neg", {x}, {"b"}, "neg")->output(0);
  ir::Value* y = nullptr;
  if (through_if) {
    ir::TypeInfo bt;
    bt.elem_type = DataType::kBool;
    ir::Value* c = g.add_input("c", bt);
    ir::Node* n = g.add_node("If", {c}, {"y"}, "if");
    auto then_g = std::make_unique<ir::Graph>("then", &g);
    then_g->add_output(then_g->add_node("Mul", {a, a}, {"t"})->output(0));
    auto else_g = std::make_unique<ir::Graph>("else", &g);
    else_g->add_output(else_g->add_node("Identity", {a}, {"e"})->output(0));
    for (auto [name, body] : {std::pair{"then_branch", &then_g}, std::pair{"else_branch", &else_g}}) {
      ir::Attribute attr;
      attr.name = name;
      attr.type = ir::AttrType::kGraph;
      attr.graphs.push_back(std::move(*body));
      n->set_attr(std::move(attr));
    }
    y = n->output(0);
  } else {
    y = g.add_node("Mul", {a, a}, {"y"}, "square")->output(0);
  }
  ir::Node* add = g.add_node("Add", {y, b}, {"out"}, "add");
  add->output(0)->type().elem_type = DataType::kFloat;
  g.add_output(add->output(0));
  return m;
}

TEST(Sensitivity, ProbeFromTheLayerOnFollowsValuesReadInsideIfBodies) {
  // The probe hands the executor the FP32 values of the nodes a trial cannot reach. A tensor read
  // only inside an If body still reaches the If: quantizing `a` must score the same through the
  // If as through the plain Mul (were the If fed its FP32 output, the output would be exact).
  std::vector<data::Sample> samples;
  for (int s = 0; s < 4; ++s) {
    std::vector<float> v(64);
    for (int i = 0; i < 64; ++i) v[i] = std::sin(0.37f * static_cast<float>(i + 64 * s)) * 3.0f;
    samples.push_back({{"x", Tensor::from_vector<float>({1, 64}, v)}, {"c", Tensor::scalar<bool>(true)}});
  }
  std::vector<data::Sample> plain_samples = samples;
  for (auto& s : plain_samples) s.erase("c");
  testing::MemorySource with_if(samples), plain(plain_samples);
  const std::vector<FakeQuantTensor> each = {{"a", {0.25f, 0}, DataType::kUint8}, {"b", {0.5f, 128}, DataType::kUint8}};
  const std::vector<Quality> q_if = score_alone(square_plus_neg(true), each, with_if, 4, 2);
  const std::vector<Quality> q_plain = score_alone(square_plus_neg(false), each, plain, 4, 2);
  ASSERT_EQ(q_if.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_TRUE(std::isfinite(q_if[i].sqnr_db)) << each[i].name;
    EXPECT_LT(q_if[i].sqnr_db, 40.0) << each[i].name;
    EXPECT_DOUBLE_EQ(q_if[i].sqnr_db, q_plain[i].sqnr_db) << each[i].name;
  }
}

TEST(Sensitivity, PrecisionListsParse) {
  EXPECT_EQ(parse_layer_precisions("W8A16,float"),
            (std::vector<LayerPrecision>{LayerPrecision::kW8A16, LayerPrecision::kFloat}));
  EXPECT_THROW(parse_layer_precisions("W8A8,W3"), Error);
  EXPECT_THROW(parse_layer_precisions(","), Error);
  // 16-bit parameters over the range the 8-bit ones cover: uint8 z=10 s=0.5 covers [-5, 122.5].
  const quant::QParams w = widen_params({0.5f, 10}, DataType::kUint8, false);
  EXPECT_NEAR((0 - w.zero_point) * w.scale, -5.0, 1e-3);
  EXPECT_NEAR((65535 - w.zero_point) * w.scale, 122.5, 1e-2);
}

}  // namespace
}  // namespace qtool::pipeline
