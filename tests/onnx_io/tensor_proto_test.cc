// Tensor storage forms: every dtype in raw_data and in its typed field, packed 4-bit and 2-bit types,
// strings, and the errors for data that does not match its shape.
#include <gtest/gtest.h>

#include <onnx/onnx_pb.h>

#include "qtool/core/npy.h"
#include "qtool/onnx_io/onnx_io.h"
#include "test_util.h"

namespace qtool::onnx_io {
namespace {

// A model whose only content is initializer `w`, also the graph output.
onnx::ModelProto model_with(const onnx::TensorProto& w) {
  onnx::ModelProto mp;
  mp.set_ir_version(8);
  auto* op = mp.add_opset_import();
  op->set_domain("");
  op->set_version(17);
  auto* g = mp.mutable_graph();
  g->set_name("g");
  *g->add_initializer() = w;
  g->add_output()->set_name(w.name());
  return mp;
}

Tensor load_w(const onnx::TensorProto& w) {
  ir::Model m = parse_model(model_with(w).SerializeAsString(), "test.onnx", ".");
  const ir::Value* v = m.graph->find_value(w.name());
  EXPECT_TRUE(v && v->is_initializer());
  return *v->initializer();
}

onnx::TensorProto proto(const std::string& name, DataType dt, std::vector<int64_t> dims) {
  onnx::TensorProto tp;
  tp.set_name(name);
  tp.set_data_type(static_cast<int32_t>(dt));
  for (int64_t d : dims) tp.add_dims(d);
  return tp;
}

template <typename T>
std::vector<T> values_of(const Tensor& t) {
  const T* p = reinterpret_cast<const T*>(t.raw());
  return std::vector<T>(p, p + t.numel());
}

ErrorCode load_error(const onnx::TensorProto& w, std::string* msg = nullptr) {
  try {
    load_w(w);
  } catch (const Error& e) {
    if (msg) *msg = e.what();
    return e.code();
  }
  ADD_FAILURE() << "expected an error";
  return ErrorCode::kInternal;
}

TEST(TensorProto, FloatRawAndTyped) {
  auto a = proto("w", DataType::kFloat, {2, 2});
  for (float f : {1.5f, -2.0f, 3.25f, 0.0f}) a.add_float_data(f);
  Tensor ta = load_w(a);
  EXPECT_EQ(ta.shape(), (Shape{2, 2}));
  EXPECT_EQ(values_of<float>(ta), (std::vector<float>{1.5f, -2.0f, 3.25f, 0.0f}));
  auto b = proto("w", DataType::kFloat, {2, 2});
  std::vector<float> v{1.5f, -2.0f, 3.25f, 0.0f};
  b.set_raw_data(std::string(reinterpret_cast<const char*>(v.data()), 16));
  EXPECT_TRUE(tensors_equal(ta, load_w(b)));
}

TEST(TensorProto, WideTypedFields) {
  auto d = proto("w", DataType::kDouble, {2});
  d.add_double_data(0.1);
  d.add_double_data(-1e300);
  EXPECT_EQ(values_of<double>(load_w(d)), (std::vector<double>{0.1, -1e300}));
  auto i64 = proto("w", DataType::kInt64, {3});
  for (int64_t x : {int64_t{-5}, int64_t{1} << 40, int64_t{7}}) i64.add_int64_data(x);
  EXPECT_EQ(values_of<int64_t>(load_w(i64)), (std::vector<int64_t>{-5, int64_t{1} << 40, 7}));
  auto u64 = proto("w", DataType::kUint64, {1});
  u64.add_uint64_data(~uint64_t{0});
  EXPECT_EQ(values_of<uint64_t>(load_w(u64)), (std::vector<uint64_t>{~uint64_t{0}}));
  auto u32 = proto("w", DataType::kUint32, {2});
  u32.add_uint64_data(4000000000u);
  u32.add_uint64_data(3);
  EXPECT_EQ(values_of<uint32_t>(load_w(u32)), (std::vector<uint32_t>{4000000000u, 3}));
  auto i32 = proto("w", DataType::kInt32, {2});
  i32.add_int32_data(-70000);
  i32.add_int32_data(9);
  EXPECT_EQ(values_of<int32_t>(load_w(i32)), (std::vector<int32_t>{-70000, 9}));
}

TEST(TensorProto, NarrowTypesInInt32Data) {
  auto i8 = proto("w", DataType::kInt8, {3});
  for (int x : {-128, 5, 127}) i8.add_int32_data(x);
  EXPECT_EQ(values_of<int8_t>(load_w(i8)), (std::vector<int8_t>{-128, 5, 127}));
  auto u8 = proto("w", DataType::kUint8, {2});
  for (int x : {255, 0}) u8.add_int32_data(x);
  EXPECT_EQ(values_of<uint8_t>(load_w(u8)), (std::vector<uint8_t>{255, 0}));
  auto i16 = proto("w", DataType::kInt16, {2});
  for (int x : {-32768, 300}) i16.add_int32_data(x);
  EXPECT_EQ(values_of<int16_t>(load_w(i16)), (std::vector<int16_t>{-32768, 300}));
  auto u16 = proto("w", DataType::kUint16, {1});
  u16.add_int32_data(65535);
  EXPECT_EQ(values_of<uint16_t>(load_w(u16)), (std::vector<uint16_t>{65535}));
  auto b = proto("w", DataType::kBool, {3});
  for (int x : {1, 0, 1}) b.add_int32_data(x);
  EXPECT_EQ(values_of<uint8_t>(load_w(b)), (std::vector<uint8_t>{1, 0, 1}));
  // float16 / bfloat16: bit patterns, one per entry.
  auto h = proto("w", DataType::kFloat16, {2});
  h.add_int32_data(float_to_half(1.5f));
  h.add_int32_data(float_to_half(-0.25f));
  Tensor th = load_w(h);
  EXPECT_EQ(th.get_as_double(0), 1.5);
  EXPECT_EQ(th.get_as_double(1), -0.25);
  auto bf = proto("w", DataType::kBFloat16, {1});
  bf.add_int32_data(float_to_bf16(-3.0f));
  EXPECT_EQ(load_w(bf).get_as_double(0), -3.0);
}

TEST(TensorProto, Packed4BitIn32DataTwoPerEntry) {
  // int4 [-8, 7, 1, -1, 3]: bytes 0x78, 0xF1, 0x03 (first element in the low nibble).
  auto t = proto("w", DataType::kInt4, {5});
  for (int x : {0x78, 0xF1, 0x03}) t.add_int32_data(x);
  Tensor v = load_w(t);
  ASSERT_EQ(v.numel(), 5);
  std::vector<double> got;
  for (int64_t i = 0; i < 5; ++i) got.push_back(v.get_as_double(i));
  EXPECT_EQ(got, (std::vector<double>{-8, 7, 1, -1, 3}));
  EXPECT_EQ(v.nbytes(), 3u);
  // uint4 in raw_data.
  auto u = proto("w", DataType::kUint4, {3});
  u.set_raw_data(std::string("\xA5\x0F", 2));
  Tensor uv = load_w(u);
  EXPECT_EQ(uv.get_as_double(0), 5);
  EXPECT_EQ(uv.get_as_double(1), 10);
  EXPECT_EQ(uv.get_as_double(2), 15);
  // Wrong count: 5 int4 values need 3 entries.
  auto bad = proto("w", DataType::kInt4, {5});
  for (int x : {1, 2}) bad.add_int32_data(x);
  EXPECT_EQ(load_error(bad), ErrorCode::kInvalidModel);
}

TEST(TensorProto, Packed2BitFourPerByte) {
  // int2 [1, -2, -1, 0, 1]: byte0 = 01 | 10<<2 | 11<<4 | 00<<6 = 0x39, byte1 = 0x01.
  auto t = proto("w", DataType::kInt2, {5});
  for (int x : {0x39, 0x01}) t.add_int32_data(x);
  Tensor v = load_w(t);
  std::vector<double> got;
  for (int64_t i = 0; i < 5; ++i) got.push_back(v.get_as_double(i));
  EXPECT_EQ(got, (std::vector<double>{1, -2, -1, 0, 1}));
  auto u = proto("w", DataType::kUint2, {4});
  u.set_raw_data(std::string("\xE4", 1));  // 0,1,2,3
  Tensor uv = load_w(u);
  for (int64_t i = 0; i < 4; ++i) EXPECT_EQ(uv.get_as_double(i), static_cast<double>(i));
}

TEST(TensorProto, Strings) {
  auto s = proto("w", DataType::kString, {2});
  s.add_string_data("hello");
  s.add_string_data(std::string("a\0b", 3));
  Tensor t = load_w(s);
  ASSERT_EQ(t.strings().size(), 2u);
  EXPECT_EQ(t.strings()[1], std::string("a\0b", 3));
}

TEST(TensorProto, BadDataIsRefusedNamingTheTensor) {
  std::string msg;
  auto unknown = proto("weird_tensor", static_cast<DataType>(99), {1});
  unknown.set_raw_data("x");
  EXPECT_EQ(load_error(unknown, &msg), ErrorCode::kUnsupported);
  EXPECT_NE(msg.find("weird_tensor"), std::string::npos) << msg;
  EXPECT_NE(msg.find("99"), std::string::npos) << msg;

  auto short_raw = proto("w_short", DataType::kFloat, {4});
  short_raw.set_raw_data(std::string(12, '\0'));
  EXPECT_EQ(load_error(short_raw, &msg), ErrorCode::kInvalidModel);
  EXPECT_NE(msg.find("w_short"), std::string::npos) << msg;
  EXPECT_NE(msg.find("16"), std::string::npos) << msg;

  auto neg = proto("w", DataType::kFloat, {-3});
  EXPECT_EQ(load_error(neg), ErrorCode::kInvalidModel);

  // Dims claiming 2^80 elements overflow; 2^40 elements with 1 value mismatch (nothing is allocated).
  auto huge = proto("w", DataType::kFloat, {int64_t{1} << 40, int64_t{1} << 40});
  EXPECT_EQ(load_error(huge), ErrorCode::kInvalidModel);
  auto big = proto("w", DataType::kFloat, {int64_t{1} << 40});
  big.add_float_data(1.0f);
  EXPECT_EQ(load_error(big), ErrorCode::kInvalidModel);

  auto count = proto("w", DataType::kInt64, {3});
  count.add_int64_data(1);
  EXPECT_EQ(load_error(count, &msg), ErrorCode::kInvalidModel);
  EXPECT_NE(msg.find("int64_data"), std::string::npos) << msg;
}

TEST(TensorProto, EveryDtypeRoundTripsThroughSave) {
  qtool::testing::TempDir dir;
  ir::Model m;
  m.ir_version = 10;
  m.set_opset("", 21);
  std::vector<Tensor> ts{
      Tensor::from_vector<float>({2}, {1.0f, -2.5f}),
      Tensor::from_vector<double>({1}, {3.0}),
      Tensor::from_vector<int64_t>({2}, {-1, 1ll << 50}),
      Tensor::from_vector<int32_t>({1}, {-9}),
      Tensor::from_vector<int16_t>({1}, {-300}),
      Tensor::from_vector<uint16_t>({1}, {60000}),
      Tensor::from_vector<int8_t>({2}, {-128, 127}),
      Tensor::from_vector<uint8_t>({2}, {0, 255}),
      Tensor::from_vector<bool>({2}, {true, false}),
      Tensor::from_vector<uint16_t>({1}, {float_to_half(0.5f)}, DataType::kFloat16),
      Tensor::from_vector<uint16_t>({1}, {float_to_bf16(0.5f)}, DataType::kBFloat16),
      Tensor::from_vector<uint64_t>({1}, {42}),
      Tensor::from_vector<uint32_t>({1}, {7}),
      Tensor::from_strings({2}, {"x", "yz"}),
  };
  Tensor i4(DataType::kInt4, {5});
  for (int64_t i = 0; i < 5; ++i) packed_set(i4.mutable_raw(), i, 4, static_cast<int32_t>(i) - 3);
  ts.push_back(i4);
  Tensor u2(DataType::kUint2, {7});
  for (int64_t i = 0; i < 7; ++i) packed_set(u2.mutable_raw(), i, 2, static_cast<int32_t>(i % 4));
  ts.push_back(u2);
  for (size_t k = 0; k < ts.size(); ++k) {
    ir::Value* v = m.graph->add_initializer(fmt::format("t{}", k), ts[k]);
    m.graph->add_output(v);
  }
  save_model(m, dir.file("all.onnx"));
  ir::Model back = load_model(dir.file("all.onnx"));
  for (size_t k = 0; k < ts.size(); ++k) {
    const ir::Value* v = back.graph->find_value(fmt::format("t{}", k));
    ASSERT_TRUE(v && v->is_initializer());
    EXPECT_TRUE(tensors_equal(*v->initializer(), ts[k])) << k << " " << dtype_name(ts[k].dtype());
  }
  // Packed types are written as raw_data of ceil(n*bits/8) bytes.
  onnx::ModelProto mp;
  ASSERT_TRUE(mp.ParseFromString(read_file(dir.file("all.onnx"))));
  for (const auto& tp : mp.graph().initializer()) {
    if (tp.data_type() == static_cast<int>(DataType::kInt4)) {
      EXPECT_EQ(tp.raw_data().size(), 3u);
    }
    if (tp.data_type() == static_cast<int>(DataType::kUint2)) {
      EXPECT_EQ(tp.raw_data().size(), 2u);
    }
  }
}

TEST(TensorProto, TensorPbFilesRoundTrip) {
  qtool::testing::TempDir dir;
  Tensor t = Tensor::from_vector<float>({2, 3}, {1, 2, 3, 4, 5, 6});
  save_tensor_pb(dir.file("input_0.pb"), t, "x");
  std::string name;
  Tensor back = load_tensor_pb(dir.file("input_0.pb"), &name);
  EXPECT_EQ(name, "x");
  EXPECT_TRUE(tensors_equal(t, back));
  write_file_atomic(dir.file("junk.pb"), "\xff\xff\xff\xff not a tensor");
  EXPECT_THROW(load_tensor_pb(dir.file("junk.pb")), Error);
  EXPECT_THROW(load_tensor_pb(dir.file("missing.pb")), Error);
}

}  // namespace
}  // namespace qtool::onnx_io
