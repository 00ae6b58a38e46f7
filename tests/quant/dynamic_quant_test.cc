// Dynamic quantization (quant/dynamic.h): the rewrite's structure, its arithmetic against a
// hand computation, and qtool's executor against ONNX Runtime on the emitted ops (the integer parts
// bit for bit).
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "graph_builders.h"
#include "qtool/onnx_io/onnx_io.h"
#include "qtool/quant/dynamic.h"
#include "qtool/runtime/executor.h"
#include "test_util.h"

namespace qtool {
namespace {

using quant::DynamicOptions;
using quant::emit_dynamic;
using testing::float_type;
using testing::gaussian;

/// x [2, 8] -> MatMul(W1 [8, 6]) -> Gemm(W2 [4, 6], transB, alpha 0.5, C [4], beta 2) -> y [2, 4];
/// x2 [1, 3, 6, 6] -> Conv(W3 [4, 3, 3, 3], B3) -> z; and MatMul(x, W1) read twice (shared DQL).
ir::Model make_model(std::mt19937& rng) {
  ir::Model m;
  m.opset_imports = {{"", 13}};
  ir::Graph& g = *m.graph;
  ir::Value* x = g.add_input("x", float_type({2, 8}));
  ir::Value* x2 = g.add_input("x2", float_type({1, 3, 6, 6}));
  ir::Value* w1 = g.add_initializer("W1", Tensor::from_vector<float>({8, 6}, gaussian(48, rng)));
  ir::Node* mm = g.add_node("MatMul", {x, w1}, {"h"}, "mm");
  ir::Node* gemm = g.add_node("Gemm", {mm->output(0), g.add_initializer("W2", Tensor::from_vector<float>({4, 6}, gaussian(24, rng))),
                                       g.add_initializer("C", Tensor::from_vector<float>({4}, gaussian(4, rng)))},
                              {"y"}, "gemm");
  gemm->set_attr(ir::Attribute::make_int("transB", 1));
  gemm->set_attr(ir::Attribute::make_float("alpha", 0.5f));
  gemm->set_attr(ir::Attribute::make_float("beta", 2.0f));
  ir::Node* mm2 = g.add_node("MatMul", {x, w1}, {"h2"}, "mm2");
  ir::Node* conv = g.add_node("Conv", {x2, g.add_initializer("W3", Tensor::from_vector<float>({4, 3, 3, 3}, gaussian(108, rng))),
                                       g.add_initializer("B3", Tensor::from_vector<float>({4}, gaussian(4, rng)))},
                              {"z"}, "conv");
  conv->set_attr(ir::Attribute::make_ints("kernel_shape", {3, 3}));
  conv->set_attr(ir::Attribute::make_ints("pads", {1, 1, 1, 1}));
  for (ir::Value* v : {mm->output(0), gemm->output(0), mm2->output(0), conv->output(0)}) {
    v->type().elem_type = DataType::kFloat;
    g.add_output(v);
  }
  return m;
}

std::map<std::string, Tensor> inputs(std::mt19937& rng) {
  return {{"x", Tensor::from_vector<float>({2, 8}, gaussian(16, rng))},
          {"x2", Tensor::from_vector<float>({1, 3, 6, 6}, gaussian(108, rng))}};
}

int count(const ir::Graph& g, const std::string& op) {
  int n = 0;
  for (const auto& node : g.nodes()) n += node->op_type() == op;
  return n;
}

TEST(DynamicQuant, RewritesMatMulGemmAndOptInConv) {
  std::mt19937 rng(3);
  ir::Model m = make_model(rng);
  DynamicOptions o;
  o.op_types = {"MatMul", "Gemm", "Conv"};
  const auto s = emit_dynamic(m, o);
  EXPECT_EQ(s.matmuls, 2u);
  EXPECT_EQ(s.gemms, 1u);
  EXPECT_EQ(s.convs, 1u);
  const ir::Graph& g = *m.graph;
  // x is read by two MatMuls: one DynamicQuantizeLinear for it, one for h, one for x2.
  EXPECT_EQ(s.quantize_nodes, 3u);
  EXPECT_EQ(count(g, "DynamicQuantizeLinear"), 3);
  EXPECT_EQ(count(g, "MatMulInteger"), 3);
  EXPECT_EQ(count(g, "ConvInteger"), 1);
  EXPECT_EQ(count(g, "Gemm") + count(g, "Conv"), 0);
  // W1 is stored once (both MatMuls read the same levels), as uint8 with zero point 128.
  int w1_copies = 0;
  for (const ir::Value* v : g.initializers()) {
    if (v->name().rfind("W1", 0) != 0) continue;
    if (v->initializer()->dtype() == DataType::kFloat) ADD_FAILURE() << "float W1 left: " << v->name();
    if (v->name().find("_quantized") != std::string::npos) {
      ++w1_copies;
      EXPECT_EQ(v->initializer()->dtype(), DataType::kUint8);
    }
    if (v->name().find("_zero_point") != std::string::npos) EXPECT_EQ(v->initializer()->data<uint8_t>()[0], 128);
  }
  EXPECT_EQ(w1_copies, 1);
  // The graph outputs keep their names; opset raised to 11 at least for DynamicQuantizeLinear.
  EXPECT_EQ(g.outputs()[1]->name(), "y");
  EXPECT_GE(m.opset(""), 13);
  g.validate();
}

TEST(DynamicQuant, MatchesTheHandComputation) {
  std::mt19937 rng(4);
  ir::Model fp = make_model(rng);
  ir::Model q = fp.clone();
  DynamicOptions o;
  o.op_types = {"MatMul", "Gemm", "Conv"};
  emit_dynamic(q, o);
  const auto in = inputs(rng);
  const std::vector<Tensor> ref = runtime::Executor(fp).run(in);
  const std::vector<Tensor> got = runtime::Executor(q).run(in);
  // Hand computation of output 0 (MatMul x W1): DynamicQuantizeLinear's scale and zero point,
  // W1's per-column symmetric levels, the exact integer sum, times s_x·s_w[n].
  const Tensor& x = in.at("x");
  const Tensor* w = fp.graph->find_value("W1")->initializer();
  float lo = 0, hi = 0;
  for (int64_t i = 0; i < x.numel(); ++i) lo = std::min(lo, x.data<float>()[i]), hi = std::max(hi, x.data<float>()[i]);
  const float sx = (hi - lo) / 255.0f;
  const float zx = std::clamp(std::nearbyint(-lo / sx), 0.0f, 255.0f);
  for (int64_t r = 0; r < 2; ++r)
    for (int64_t n = 0; n < 6; ++n) {
      float amax = 0;
      for (int64_t k = 0; k < 8; ++k) amax = std::max(amax, std::fabs(w->data<float>()[k * 6 + n]));
      const float sw = amax / 127.0f;
      int64_t acc = 0;
      for (int64_t k = 0; k < 8; ++k) {
        const float qa = std::clamp(std::nearbyint(x.data<float>()[r * 8 + k] / sx) + zx, 0.0f, 255.0f);
        const float qw = std::nearbyint(w->data<float>()[k * 6 + n] / sw);
        acc += static_cast<int64_t>(qa - zx) * static_cast<int64_t>(qw);
      }
      const float expect = static_cast<float>(acc) * (sx * sw);
      EXPECT_NEAR(got[0].data<float>()[r * 6 + n], expect, 1e-5f * std::max(1.0f, std::fabs(expect)));
    }
  // And every output is close to FP32 (8-bit noise, not a wiring error).
  for (size_t o2 = 0; o2 < ref.size(); ++o2) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < ref[o2].numel(); ++i) {
      const double d = got[o2].data<float>()[i] - ref[o2].data<float>()[i];
      num += d * d;
      den += static_cast<double>(ref[o2].data<float>()[i]) * ref[o2].data<float>()[i];
    }
    EXPECT_GT(10 * std::log10(den / num), 30.0) << "output " << o2;
  }
}

TEST(DynamicQuant, Int8WeightsAndExclusions) {
  std::mt19937 rng(5);
  ir::Model m = make_model(rng);
  DynamicOptions o;
  o.weight_type = DataType::kInt8;
  o.exclude_nodes = {"mm2"};
  const auto s = emit_dynamic(m, o);
  EXPECT_EQ(s.matmuls, 1u);
  EXPECT_EQ(s.convs, 0u);  // Conv is opt-in
  ASSERT_EQ(s.float_nodes.size(), 1u);
  EXPECT_NE(s.float_nodes[0].find("excluded"), std::string::npos);
  for (const auto& n : m.graph->nodes())
    if (n->op_type() == "MatMulInteger") EXPECT_EQ(n->input(1)->initializer()->dtype(), DataType::kInt8);
  EXPECT_EQ(count(*m.graph, "Conv"), 1);
  EXPECT_EQ(count(*m.graph, "MatMul"), 1);
}

TEST(DynamicQuant, EmbeddingRowsInt8PerRow) {
  // ids [2, 3] -> Gather(T [10, 4]) -> y [2, 3, 4]: only the rows read are converted.
  std::mt19937 rng(7);
  ir::Model m;
  m.opset_imports = {{"", 13}};
  ir::Graph& g = *m.graph;
  ir::TypeInfo it;
  it.elem_type = DataType::kInt64;
  it.has_shape = true;
  it.dims = {ir::Dim{2, ""}, ir::Dim{3, ""}};
  ir::Value* ids = g.add_input("ids", it);
  std::vector<float> table = gaussian(40, rng);
  table[4 * 7 + 2] = 3.0f;  // row 7's max: its scale is 3 / 127
  ir::Node* ga = g.add_node("Gather", {g.add_initializer("T", Tensor::from_vector<float>({10, 4}, table)), ids}, {"y"}, "emb");
  ga->output(0)->type().elem_type = DataType::kFloat;
  g.add_output(ga->output(0));
  const ir::Model fp = m.clone();
  const auto s = emit_dynamic(m, {});
  EXPECT_EQ(s.gathers, 1u);
  for (const ir::Value* v : m.graph->initializers())  // the float table is gone, its int8 copy stays
    EXPECT_FALSE(v->initializer()->numel() == 40 && v->initializer()->dtype() != DataType::kInt8) << v->name();
  const Tensor idt = Tensor::from_vector<int64_t>({2, 3}, {7, 0, 9, -3, 7, 1});  // -3 is row 7 too
  const Tensor ref = runtime::Executor(fp).run({{"ids", idt}})[0];
  const Tensor got = runtime::Executor(m).run({{"ids", idt}})[0];
  ASSERT_EQ(got.shape(), (Shape{2, 3, 4}));
  for (int64_t i = 0; i < got.numel(); ++i) {
    const int64_t row = std::vector<int64_t>{7, 0, 9, 7, 7, 1}[i / 4];
    float amax = 0;
    for (int64_t c = 0; c < 4; ++c) amax = std::max(amax, std::fabs(table[row * 4 + c]));
    const float step = amax / 127.0f;
    EXPECT_NEAR(got.data<float>()[i], std::nearbyint(ref.data<float>()[i] / step) * step, 1e-6f) << i;
  }
  EXPECT_FLOAT_EQ(got.data<float>()[2], 3.0f);  // the row's max is a level exactly
}

TEST(DynamicQuant, OnnxRuntimeComputesTheSameIntegers) {
  QTOOL_REQUIRE_ORT();
  std::mt19937 rng(6);
  ir::Model m = make_model(rng);
  DynamicOptions o;
  o.op_types = {"MatMul", "Gemm", "Conv"};
  emit_dynamic(m, o);
  // Expose the integer tensors: every DynamicQuantizeLinear and MatMulInteger/ConvInteger output.
  std::vector<std::string> ints;
  for (const auto& n : m.graph->nodes())
    if (n->op_type() == "DynamicQuantizeLinear" || n->op_type() == "MatMulInteger" || n->op_type() == "ConvInteger")
      for (ir::Value* v : n->outputs()) {
        m.graph->add_output(v);
        ints.push_back(v->name());
      }
  testing::TempDir dir;
  const std::string path = dir.file("dyn.onnx");
  onnx_io::save_model(m, path);
  const auto in = inputs(rng);
  const auto ort = testing::ort_run(path, in);
  runtime::Executor ex(m);
  const std::vector<Tensor> got = ex.run(in);
  const std::vector<std::string> names = ex.output_names();
  for (size_t i = 0; i < names.size(); ++i) {
    const Tensor& ref = ort.at(names[i]);
    const bool integer = std::find(ints.begin(), ints.end(), names[i]) != ints.end();
    if (integer && got[i].dtype() != DataType::kFloat) {
      EXPECT_EQ(testing::max_abs_error(got[i], ref), 0.0) << names[i];  // bit for bit
    } else {
      EXPECT_LE(testing::max_rel_error(got[i], ref, 1.0), 1e-6) << names[i];
    }
  }
}


/// Random 8-bit tensor of `type` (levels in [lo, hi]).
Tensor random_q(DataType type, const Shape& shape, std::mt19937& rng, int lo, int hi) {
  std::uniform_int_distribution<int> d(lo, hi);
  Tensor t(type, shape);
  for (int64_t i = 0; i < t.numel(); ++i) {
    const int v = d(rng);
    if (type == DataType::kInt8) t.mutable_data<int8_t>()[i] = static_cast<int8_t>(v);
    else t.mutable_data<uint8_t>()[i] = static_cast<uint8_t>(v);
  }
  return t;
}

/// Runs a one-node com.microsoft model in qtool's executor and in ONNX Runtime; returns the largest
/// relative difference (floor 1) over the outputs.
double ort_gap(ir::Model& m, const std::map<std::string, Tensor>& in) {
  testing::TempDir dir;
  const std::string path = dir.file("m.onnx");
  onnx_io::save_model(m, path);
  const auto ort = testing::ort_run(path, in);
  runtime::Executor ex(m);
  const std::vector<Tensor> got = ex.run(in);
  const std::vector<std::string> names = ex.output_names();
  double worst = 0;
  for (size_t i = 0; i < names.size(); ++i) worst = std::max(worst, testing::max_rel_error(got[i], ort.at(names[i]), 1.0));
  return worst;
}

TEST(DynamicQuantOps, DynamicQuantizeMatMulAsOnnxRuntime) {
  QTOOL_REQUIRE_ORT();
  std::mt19937 rng(8);
  for (DataType bt : {DataType::kInt8, DataType::kUint8}) {
    ir::Model m;
    m.opset_imports = {{"", 13}, {"com.microsoft", 1}};
    ir::Graph& g = *m.graph;
    ir::Value* a = g.add_input("a", float_type({3, 16}));
    const bool u = bt == DataType::kUint8;
    Tensor zp = random_q(bt, {4}, rng, u ? 120 : -3, u ? 136 : 3);
    ir::Node* n = g.add_node("DynamicQuantizeMatMul",
                             // int8 levels within ±63: ONNX Runtime's u8s8 kernels saturate larger ones on
                             // x86 CPUs without VNNI (README "ONNX Runtime parity"); uint8 runs exact u8u8.
                             {a, g.add_initializer("B", random_q(bt, {16, 4}, rng, u ? 0 : -63, u ? 255 : 63)),
                              g.add_initializer("b_scale", Tensor::from_vector<float>({4}, {0.01f, 0.02f, 0.005f, 0.03f})),
                              g.add_initializer("b_zp", zp),
                              g.add_initializer("bias", Tensor::from_vector<float>({4}, gaussian(4, rng)))},
                             {"y"}, "dqmm", "com.microsoft");
    n->output(0)->type().elem_type = DataType::kFloat;
    g.add_output(n->output(0));
    EXPECT_LE(ort_gap(m, {{"a", Tensor::from_vector<float>({3, 16}, gaussian(48, rng, 2.0f))}}), 1e-6) << dtype_name(bt);
  }
}

TEST(DynamicQuantOps, DynamicQuantizeLstmAsOnnxRuntime) {
  QTOOL_REQUIRE_ORT();
  std::mt19937 rng(9);
  const int64_t seq = 6, batch = 2, in = 5, hid = 4;
  for (const char* direction : {"forward", "bidirectional"}) {
    const int64_t dirs = std::string(direction) == "bidirectional" ? 2 : 1;
    ir::Model m;
    m.opset_imports = {{"", 13}, {"com.microsoft", 1}};
    ir::Graph& g = *m.graph;
    ir::Value* x = g.add_input("x", float_type({seq, batch, in}));
    // Per-gate-column scales for W, one per direction for R; uint8 weights (exact u8u8 kernels).
    std::vector<float> ws(static_cast<size_t>(dirs * 4 * hid));
    for (auto& v : ws) v = 0.004f + 0.004f * std::uniform_real_distribution<float>(0, 1)(rng);
    ir::Node* n = g.add_node(
        "DynamicQuantizeLSTM",
        {x, g.add_initializer("W", random_q(DataType::kUint8, {dirs, in, 4 * hid}, rng, 0, 255)),
         g.add_initializer("R", random_q(DataType::kUint8, {dirs, hid, 4 * hid}, rng, 0, 255)),
         g.add_initializer("B", Tensor::from_vector<float>({dirs, 8 * hid}, gaussian(dirs * 8 * hid, rng, 0.1f))), nullptr,
         nullptr, nullptr, nullptr, g.add_initializer("W_scale", Tensor::from_vector<float>({dirs, 4 * hid}, ws)),
         g.add_initializer("W_zero_point", random_q(DataType::kUint8, {dirs, 4 * hid}, rng, 128, 128)),
         g.add_initializer("R_scale", Tensor::from_vector<float>({dirs}, std::vector<float>(dirs, 0.01f))),
         g.add_initializer("R_zero_point", random_q(DataType::kUint8, {dirs}, rng, 128, 128))},
        {"y", "y_h", "y_c"}, "dqlstm", "com.microsoft");
    n->set_attr(ir::Attribute::make_int("hidden_size", hid));
    n->set_attr(ir::Attribute::make_string("direction", direction));
    for (ir::Value* v : n->outputs()) {
      v->type().elem_type = DataType::kFloat;
      g.add_output(v);
    }
    const Tensor xt = Tensor::from_vector<float>({seq, batch, in}, gaussian(seq * batch * in, rng, 1.5f));
    EXPECT_LE(ort_gap(m, {{"x", xt}}), 1e-5) << direction;
    // The on-the-fly quantization of X and H matters: a float ONNX LSTM on the same dequantized
    // weights is 1e-3 or more away from ONNX Runtime's DynamicQuantizeLSTM.
    auto dequant = [&](const std::string& w, const std::string& sc, int64_t rows) {
      const Tensor* q = g.find_value(w)->initializer();
      const Tensor* sv = g.find_value(sc)->initializer();
      const Tensor* zv = g.find_value(w + "_zero_point")->initializer();
      std::vector<float> out(static_cast<size_t>(dirs * 4 * hid * rows));
      for (int64_t d = 0; d < dirs; ++d)
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t c = 0; c < 4 * hid; ++c) {
            const int64_t si = sv->numel() == dirs ? d : d * 4 * hid + c;
            out[(d * 4 * hid + c) * rows + r] =
                static_cast<float>(q->get_as_double((d * rows + r) * 4 * hid + c) - zv->get_as_double(si)) *
                sv->data<float>()[si];
          }
      return Tensor::from_vector<float>({dirs, 4 * hid, rows}, out);
    };
    ir::Model f;
    f.opset_imports = {{"", 13}};
    ir::Graph& fg = *f.graph;
    ir::Node* l = fg.add_node("LSTM",
                              {fg.add_input("x", float_type({seq, batch, in})), fg.add_initializer("W", dequant("W", "W_scale", in)),
                               fg.add_initializer("R", dequant("R", "R_scale", hid)),
                               fg.add_initializer("B", *g.find_value("B")->initializer())},
                              {"y", "y_h", "y_c"}, "lstm");
    l->set_attr(ir::Attribute::make_int("hidden_size", hid));
    l->set_attr(ir::Attribute::make_string("direction", direction));
    for (ir::Value* v : l->outputs()) {
      v->type().elem_type = DataType::kFloat;
      fg.add_output(v);
    }
    testing::TempDir dir;
    onnx_io::save_model(m, dir.file("q.onnx"));
    const auto ort = testing::ort_run(dir.file("q.onnx"), {{"x", xt}});
    const Tensor float_y = runtime::Executor(f).run({{"x", xt}})[0];
    EXPECT_GT(testing::max_abs_error(float_y, ort.at("y")), 1e-3) << direction;
  }
}


TEST(DynamicQuant, LstmBecomesDynamicQuantizeLstm) {
  std::mt19937 rng(10);
  const int64_t seq = 5, batch = 1, in = 6, hid = 4;
  ir::Model m;
  m.opset_imports = {{"", 14}};
  ir::Graph& g = *m.graph;
  ir::Node* l = g.add_node("LSTM",
                           {g.add_input("x", float_type({seq, batch, in})),
                            g.add_initializer("W", Tensor::from_vector<float>({1, 4 * hid, in}, gaussian(4 * hid * in, rng, 0.3f))),
                            g.add_initializer("R", Tensor::from_vector<float>({1, 4 * hid, hid}, gaussian(16 * hid, rng, 0.3f)))},
                           {"y", "y_h"}, "lstm");
  l->set_attr(ir::Attribute::make_int("hidden_size", hid));
  for (ir::Value* v : l->outputs()) {
    v->type().elem_type = DataType::kFloat;
    g.add_output(v);
  }
  const ir::Model fp = m.clone();
  const auto s = emit_dynamic(m, {});
  EXPECT_EQ(s.lstms, 1u);
  const ir::Node* q = m.graph->find_value("y")->producer();
  ASSERT_EQ(q->op_type(), "DynamicQuantizeLSTM");
  EXPECT_EQ(q->domain(), "com.microsoft");
  const Tensor* wq = q->input(1)->initializer();
  EXPECT_EQ(wq->dtype(), DataType::kUint8);
  EXPECT_EQ(wq->shape(), (Shape{1, in, 4 * hid}));  // transposed to [dirs, input, 4H]
  EXPECT_EQ(q->input(9)->initializer()->data<uint8_t>()[0], 128);
  EXPECT_EQ(q->input(8)->initializer()->shape(), (Shape{1, 4 * hid}));  // one scale per gate column
  // W's largest entry of gate column 0 maps to level 127 (+128).
  const Tensor* w = fp.graph->find_value("W")->initializer();
  int64_t arg = 0;
  for (int64_t c = 1; c < in; ++c)
    if (std::fabs(w->data<float>()[c]) > std::fabs(w->data<float>()[arg])) arg = c;
  EXPECT_EQ(wq->data<uint8_t>()[arg * 4 * hid], w->data<float>()[arg] > 0 ? 255 : 1);
  const std::map<std::string, Tensor> in_x{{"x", Tensor::from_vector<float>({seq, batch, in}, gaussian(seq * in, rng))}};
  const Tensor ref = runtime::Executor(fp).run(in_x)[0], got = runtime::Executor(m).run(in_x)[0];
  double num = 0, den = 0;
  for (int64_t i = 0; i < ref.numel(); ++i) {
    const double d = got.data<float>()[i] - ref.data<float>()[i];
    num += d * d;
    den += static_cast<double>(ref.data<float>()[i]) * ref.data<float>()[i];
  }
  EXPECT_GT(10 * std::log10(den / num), 30.0);
  EXPECT_LT(10 * std::log10(den / num), 80.0);  // quantized, not the float LSTM
  // --per-tensor: one scale (and zero point) per direction.
  ir::Model pt = fp.clone();
  DynamicOptions o;
  o.per_channel = false;
  emit_dynamic(pt, o);
  const ir::Node* p = pt.graph->find_value("y")->producer();
  EXPECT_EQ(p->input(8)->initializer()->shape(), (Shape{1}));
  EXPECT_EQ(p->input(9)->initializer()->shape(), (Shape{1}));
}


TEST(DynamicQuantOps, MatMulNBitsAccuracyLevel4AsOnnxRuntime) {
  QTOOL_REQUIRE_ORT();
  std::mt19937 rng(11);
  for (int64_t bits : {4, 8}) {
    const int64_t k = 80, n = 6, block = 32, nblk = (k + block - 1) / block;  // a partial last block
    ir::Model m;
    m.opset_imports = {{"", 21}, {"com.microsoft", 1}};
    ir::Graph& g = *m.graph;
    ir::Value* a = g.add_input("a", float_type({3, k}));
    std::vector<float> sc(static_cast<size_t>(n * nblk));
    for (auto& v : sc) v = 0.01f + 0.02f * std::uniform_real_distribution<float>(0, 1)(rng);
    ir::Node* node = g.add_node(
        "MatMulNBits",
        {a, g.add_initializer("B", random_q(DataType::kUint8, {n, nblk, block * bits / 8}, rng, 0, 255)),
         g.add_initializer("S", Tensor::from_vector<float>({n * nblk}, sc))},
        {"y"}, "nbits", "com.microsoft");
    for (auto [name, v] : {std::pair{"K", k}, {"N", n}, {"bits", bits}, {"block_size", block}, {"accuracy_level", int64_t{4}}})
      node->set_attr(ir::Attribute::make_int(name, v));
    node->output(0)->type().elem_type = DataType::kFloat;
    g.add_output(node->output(0));
    const std::map<std::string, Tensor> in{{"a", Tensor::from_vector<float>({3, k}, gaussian(3 * k, rng, 3.0f))}};
    EXPECT_LE(ort_gap(m, in), 1e-5) << bits << " bits";
    // With A left in float (accuracy_level 0) the same weights are visibly off ONNX Runtime's level 4.
    testing::TempDir dir;
    onnx_io::save_model(m, dir.file("l4.onnx"));
    const auto ort4 = testing::ort_run(dir.file("l4.onnx"), in);
    node->set_attr(ir::Attribute::make_int("accuracy_level", 0));
    EXPECT_GT(testing::max_abs_error(runtime::Executor(m).run(in)[0], ort4.at("y")), 1e-3) << bits << " bits";
  }
}

}  // namespace
}  // namespace qtool
