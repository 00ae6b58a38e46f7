// The static path's mechanics (quant/static_quant.h) on the bundled digits CNN: emitting again
// with activations kept in float, quantize_static as calibrate + emit, and the option checks.
#include "qtool/quant/static_quant.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "qtool/runtime/executor.h"

#include "qtool/core/error.h"
#include "qtool/core/npy.h"
#include "qtool/data/sample_source.h"
#include "qtool/onnx_io/onnx_io.h"
#include "test_util.h"

namespace qtool::quant {
namespace {

ir::Model prepared_digits() {
  ir::Model m = onnx_io::load_model(testing::source_path("calibration_samples/digits/digits_cnn.onnx"));
  prepare_model(m, 13);
  return m;
}

std::shared_ptr<data::SelectedSource> digits_samples(const ir::Model& m, size_t n) {
  auto src = data::open_sample_source(testing::source_path("calibration_samples/digits"), data::input_specs(m), {});
  data::SelectOptions sel;
  sel.samples = n;
  return data::select_samples(src, sel);
}

size_t count_op(const ir::Model& m, const std::string& op) {
  size_t n = 0;
  for (const auto& node : m.graph->nodes()) n += node->op_type() == op;
  return n;
}

TEST(StaticQuant, EmitKeepsTheNamedActivationsInFloat) {
  const ir::Model m = prepared_digits();
  auto samples = digits_samples(m, 32);
  const StaticQuantConfig cfg;
  const CalibratedModel c = calibrate_static(m, *samples, cfg);
  EXPECT_EQ(count_op(c.float_model, "QuantizeLinear"), 0u);
  const StaticEmission all = emit_static(c, {}, cfg);
  // The model input, which conv1 reads through a Q/DQ pair.
  const std::string kept = "image";
  ASSERT_EQ(all.qdq.activation_params.count(kept), 1u);
  TensorChoices keep;
  keep.keep_float = {kept};
  const StaticEmission one_float = emit_static(c, keep, cfg);
  EXPECT_EQ(one_float.qdq.activation_params.count(kept), 0u);
  EXPECT_EQ(one_float.qdq.activation_params.size(), all.qdq.activation_params.size() - 1);
  EXPECT_LT(count_op(one_float.model, "QuantizeLinear"), count_op(all.model, "QuantizeLinear"));
  // Emitting copies: the calibrated float model is left as it was, and a second emission is the same.
  EXPECT_EQ(count_op(c.float_model, "QuantizeLinear"), 0u);
  const StaticEmission again = emit_static(c, {}, cfg);
  EXPECT_EQ(again.qdq.activation_params.size(), all.qdq.activation_params.size());
  EXPECT_EQ(count_op(again.model, "QuantizeLinear"), count_op(all.model, "QuantizeLinear"));
  for (const auto& [name, p] : all.qdq.activation_params) {
    ASSERT_EQ(again.qdq.activation_params.count(name), 1u) << name;
    EXPECT_EQ(again.qdq.activation_params.at(name).scale, p.scale) << name;
  }
}

/// The integer type of the QuantizeLinear that reads `tensor` (kUndefined when none does).
DataType q_type_of(const ir::Model& m, const std::string& tensor) {
  for (const auto& node : m.graph->nodes())
    if (node->op_type() == "QuantizeLinear" && node->input(0)->name() == tensor) return node->input(2)->initializer()->dtype();
  return DataType::kUndefined;
}

TEST(StaticQuant, KeepingAFoldedProducerOutputFloatKeepsItsReluOutputFloatToo) {
  const ir::Model m = prepared_digits();
  auto samples = digits_samples(m, 32);
  const StaticQuantConfig cfg;
  const CalibratedModel c = calibrate_static(m, *samples, cfg);
  const StaticEmission all = emit_static(c, {}, cfg);
  ASSERT_EQ(all.qdq.activation_params.count("conv1"), 1u);  // conv1 -> Relu, folded
  TensorChoices keep;
  keep.keep_float = {"conv1"};
  const StaticEmission e = emit_static(c, keep, cfg);
  // Without the Relu's output kept too, the Relu's output would be quantized in conv1's place
  // with the same parameters, and nothing would change.
  EXPECT_EQ(e.qdq.activation_params.size(), all.qdq.activation_params.size() - 1);
  EXPECT_EQ(count_op(e.model, "Relu"), count_op(all.model, "Relu") + 1);
  EXPECT_EQ(count_op(e.model, "QuantizeLinear"), count_op(all.model, "QuantizeLinear") - 1);
}

TEST(StaticQuant, WideTensorsAreSixteenBitWithTheirGroupAtOpset21) {
  const ir::Model m = prepared_digits();
  auto samples = digits_samples(m, 32);
  StaticQuantConfig cfg;
  cfg.method = "percentile";
  cfg.percentile = 99.0;  // clips: the observed ranges differ from the method's
  const CalibratedModel c = calibrate_static(m, *samples, cfg);
  const StaticEmission all = emit_static(c, {}, cfg);
  EXPECT_EQ(all.model.opset(""), 13);
  EXPECT_TRUE(all.qdq.wide_activations.empty());
  TensorChoices choices;
  choices.wide = {"conv2"};
  choices.observed = {"conv2"};
  const StaticEmission e = emit_static(c, choices, cfg);
  EXPECT_EQ(e.model.opset(""), 21);  // 16-bit QuantizeLinear
  EXPECT_EQ(e.qdq.wide_activations, std::set<std::string>{"conv2"});
  EXPECT_EQ(q_type_of(e.model, "conv2"), DataType::kUint16);
  EXPECT_EQ(q_type_of(e.model, "conv1"), DataType::kUint8);
  EXPECT_EQ(e.qdq.activation_params.size(), all.qdq.activation_params.size());
  // conv2 covers its observed max at 16 bits: (65535 - z) · s >= max, where the percentile range stopped short.
  float observed_max = 0.0f;
  for (const auto& [v, r] : c.observed)
    if (v->name() == "conv2") observed_max = r.max;
  ASSERT_GT(observed_max, 0.0f);
  const quant::QParams p16 = e.qdq.activation_params.at("conv2"), p8 = all.qdq.activation_params.at("conv2");
  EXPECT_GE((65535 - p16.zero_point) * p16.scale, observed_max * 0.999f);
  EXPECT_LT((255 - p8.zero_point) * p8.scale, observed_max);
  // The model runs in the executor and stays close to the 8-bit one's outputs.
  runtime::Executor ex(e.model);
  const std::vector<Tensor> out = ex.run(samples->load(0));
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].numel(), 10);
}

TEST(StaticQuant, QuantizeStaticIsCalibrateThenEmit) {
  ir::Model m = prepared_digits();
  auto samples = digits_samples(m, 32);
  StaticQuantConfig cfg;
  cfg.bias_correction = true;
  const CalibratedModel c = calibrate_static(m, *samples, cfg);
  StaticEmission e = emit_static(c, {}, cfg);
  const std::string note = correct_static_biases(c, e.model, *samples, cfg);
  EXPECT_EQ(note.rfind("bias correction: ", 0), 0u) << note;

  const StaticQuantResult r = quantize_static(m, *samples, cfg);
  EXPECT_EQ(r.calib_samples, 32);
  ASSERT_EQ(r.actions.size(), 1u);
  EXPECT_EQ(r.actions[0], note);
  EXPECT_EQ(r.qdq.quantized_nodes, e.qdq.quantized_nodes);
  testing::TempDir dir;
  onnx_io::save_model(m, dir.file("a.onnx"));
  onnx_io::save_model(e.model, dir.file("b.onnx"));
  EXPECT_EQ(read_file(dir.file("a.onnx")), read_file(dir.file("b.onnx")));
  // No subgraphs: no note about If/Loop/Scan bodies.
  EXPECT_EQ(subgraph_note(e), "");
  EXPECT_EQ(e.body_weights, 0u);
}

TEST(StaticQuant, OptionChecks) {
  const ir::Model m = prepared_digits();
  data::SelectedSource none(nullptr, {});
  try {
    calibrate_static(m, none, StaticQuantConfig{});
    FAIL() << "calibrated on nothing";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kConfig);
  }
  calib::RangesFile ranges;
  StaticQuantConfig cle;
  cle.cle = true;
  cle.ranges = &ranges;
  try {
    calibrate_static(m, none, cle);
    FAIL() << "CLE with ranges from a file";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kConfig);
    EXPECT_NE(std::string(e.what()).find("--ranges"), std::string::npos) << e.what();
  }
  // Ranges from a file: nothing is calibrated, and the action says how many tensors matched.
  StaticQuantConfig from_file;
  from_file.ranges = &ranges;
  const CalibratedModel c = calibrate_static(m, none, from_file);
  EXPECT_TRUE(c.ranges.empty());
  ASSERT_EQ(c.actions.size(), 1u);
  EXPECT_EQ(c.actions[0], "ranges of 0 tensors read from the ranges file");
}

}  // namespace
}  // namespace qtool::quant

namespace qtool::quant {
namespace {

/// If(c) { then: OP(x, Reshape(Wp)) with Wp a main-graph initializer; else: OP(x, Reshape(We)) with We
/// an else-body initializer holding the same values } -> y: the two weights are equal, as an LSTM
/// export's folded gates are in both branches of an If. OP "MatMul" reads them through Unsqueeze
/// ([1, 8, 16]), "Gemm" through Identity ([8, 16]).
ir::Model if_with_weights(std::vector<float> w, const std::string& op) {
  ir::Model m;
  m.set_opset("", 17);
  ir::Graph& g = *m.graph;
  ir::Value* c = g.add_input("c");
  ir::Value* x = g.add_input("x");
  ir::Value* wp = g.add_initializer("w_parent", Tensor::from_vector<float>({8, 16}, w));
  ir::Node* n = g.add_node("If", {c}, {"y"}, "if");
  // The weight as the branch reads it: Unsqueeze to [1, 8, 16] for MatMul, Identity for Gemm.
  auto reshaped = [&](ir::Graph& b, ir::Value* w0, const std::string& prefix) {
    if (op == "Gemm") return b.add_node("Identity", {w0}, {prefix + "_w"}, prefix + "_identity")->output(0);
    ir::Value* axes = b.add_initializer(prefix + "_axes", Tensor::from_vector<int64_t>({1}, {0}));
    return b.add_node("Unsqueeze", {w0, axes}, {prefix + "_w"}, prefix + "_unsqueeze")->output(0);
  };
  auto then_g = std::make_unique<ir::Graph>("then", &g);
  then_g->add_output(then_g->add_node(op, {x, reshaped(*then_g, wp, "then")}, {"t"}, "op_then")->output(0));
  auto else_g = std::make_unique<ir::Graph>("else", &g);
  ir::Value* we = else_g->add_initializer("w_else", Tensor::from_vector<float>({8, 16}, w));
  else_g->add_output(else_g->add_node(op, {x, reshaped(*else_g, we, "else")}, {"e"}, "op_else")->output(0));
  for (auto [name, body] : {std::pair{"then_branch", &then_g}, std::pair{"else_branch", &else_g}}) {
    ir::Attribute a;
    a.name = name;
    a.type = ir::AttrType::kGraph;
    a.graphs.push_back(std::move(*body));
    n->set_attr(std::move(a));
  }
  g.add_output(n->output(0));
  return m;
}

TEST(BodyWeights, StoredOnceAsInt8InTheMainGraphOrInTheMatMulsBodyAndRunClose) {
  std::mt19937 rng(3);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> w(128);
  for (float& v : w) v = d(rng);
  std::vector<float> xv(8);
  for (float& v : xv) v = d(rng);
  const Tensor x = Tensor::from_vector<float>({1, 8}, xv);
  // Gemm: both branches hold the same 128 values, one int8 copy in the main graph. MatMul: one copy
  // in each branch (ONNX Runtime rewrites DQ -> MatMul at load and looks the weight up in the
  // MatMul's own graph).
  for (const std::string op : {"Gemm", "MatMul"}) {
    SCOPED_TRACE(op);
    const bool matmul = op == "MatMul";
    const ir::Model original = if_with_weights(w, op);
    ir::Model m = original.clone();
    EXPECT_EQ(quantize_body_weights(m, false), matmul ? 2u : 1u);
    auto count = [](const ir::Graph& g, size_t* int8, size_t* float_weights) {
      for (const ir::Value* v : g.initializers()) {
        *int8 += v->initializer()->dtype() == DataType::kInt8;
        *float_weights += v->initializer()->dtype() == DataType::kFloat && v->initializer()->numel() >= 64;
      }
    };
    size_t int8 = 0, float_weights = 0;
    count(*m.graph, &int8, &float_weights);
    EXPECT_EQ(int8, matmul ? 0u : 1u);
    EXPECT_EQ(float_weights, 0u);  // the parent's float weight, unread now, is gone
    for (const auto& n : m.graph->nodes())
      for (const ir::Graph* body : n->subgraphs()) {
        size_t dq = 0;
        for (const auto& b : body->nodes()) {
          dq += b->op_type() == "DequantizeLinear";
          EXPECT_NE(b->op_type(), "Unsqueeze") << body->name();  // folded into the stored tensor
        }
        EXPECT_EQ(dq, 1u) << body->name();
        size_t body_int8 = 0, body_float = 0;
        count(*body, &body_int8, &body_float);
        EXPECT_EQ(body_int8, matmul ? 1u : 0u) << body->name();
        EXPECT_EQ(body_float, 0u) << body->name();
      }
    // Both branches compute x·W with int8 weights: within 1% of the float result.
    runtime::Executor ref(original), q(m);
    for (bool branch : {true, false}) {
      const std::map<std::string, Tensor> in = {{"c", Tensor::scalar<bool>(branch)}, {"x", x}};
      const Tensor a = ref.run(in)[0], b = q.run(in)[0];
      ASSERT_EQ(b.numel(), 16) << branch;  // [1, 8] x [(1,) 8, 16] -> [(1,) 1, 16]
      double num = 0, den = 0;
      for (int64_t i = 0; i < 16; ++i) {
        num += std::pow(a.data<float>()[i] - b.data<float>()[i], 2);
        den += std::pow(a.data<float>()[i], 2);
      }
      EXPECT_LT(std::sqrt(num / den), 0.01) << branch;
    }
  }
  // The main graph only: nothing to do.
  ir::Model plain = prepared_digits();
  EXPECT_EQ(quantize_body_weights(plain, false), 0u);
}

}  // namespace
}  // namespace qtool::quant
