// Sample sources: layouts, matching to model inputs, selection, images, npz, IDX, tokens.
#include <zlib.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "qtool/core/npy.h"
#include "qtool/data/image.h"
#include "qtool/data/sample_source.h"
#include "qtool/onnx_io/onnx_io.h"
#include "test_util.h"

#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#endif
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb/stb_image_write.h>
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

namespace fs = std::filesystem;

namespace qtool::data {
namespace {

using testing::TempDir;

// Channel means of ../shared/data/imagenet-sample/images/n01440764_tench.JPEG as decoded here.
constexpr double kTenchMeanR = 106.47, kTenchMeanG = 111.28, kTenchMeanB = 94.72;

InputSpec spec(const std::string& name, DataType dt, std::vector<int64_t> dims) {
  InputSpec s;
  s.name = name;
  s.dtype = dt;
  s.has_shape = true;
  for (int64_t d : dims) {
    ir::Dim dim;
    if (d >= 0) dim.value = d; else dim.param = "batch";
    s.dims.push_back(dim);
  }
  return s;
}

Tensor ramp(Shape shape, float start) {
  Tensor t(DataType::kFloat, shape);
  float* d = t.mutable_data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) d[i] = start + static_cast<float>(i);
  return t;
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(NpyFolder, LoadsOneSamplePerFileSortedAndAddsBatchDim) {
  TempDir dir;
  write_npy(dir.file("b.npy"), ramp({3, 2, 2}, 100));
  write_npy(dir.file("a.npy"), ramp({1, 3, 2, 2}, 0));
  std::ofstream(dir.file("labels.csv")) << "ignored\n";
  auto src = open_sample_source(dir.path(), {spec("x", DataType::kFloat, {-1, 3, 2, 2})}, {});
  ASSERT_EQ(src->size(), 2u);
  EXPECT_EQ(fs::path(src->describe(0)).filename(), "a.npy");
  Sample s = src->load(1);  // b.npy, [3,2,2] -> [1,3,2,2]
  ASSERT_EQ(s.count("x"), 1u);
  EXPECT_EQ(s["x"].shape(), (Shape{1, 3, 2, 2}));
  EXPECT_EQ(s["x"].data<float>()[5], 105.0f);
}

TEST(NpyFolder, WrongShapeAndDtypeNameFileAndInput) {
  TempDir dir;
  write_npy(dir.file("bad.npy"), ramp({1, 3, 5, 5}, 0));
  auto src = open_sample_source(dir.path(), {spec("image", DataType::kFloat, {-1, 3, 2, 2})}, {});
  std::string msg = error_of([&] { src->load(0); });
  EXPECT_NE(msg.find("bad.npy"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'image'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[1,3,5,5]"), std::string::npos) << msg;

  TempDir dir2;
  write_npy(dir2.file("d.npy"), Tensor::from_vector<double>({1, 3, 2, 2}, std::vector<double>(12, 1.0)));
  auto src2 = open_sample_source(dir2.path(), {spec("image", DataType::kFloat, {-1, 3, 2, 2})}, {});
  msg = error_of([&] { src2->load(0); });
  EXPECT_NE(msg.find("d.npy"), std::string::npos) << msg;
  EXPECT_NE(msg.find("expects float32"), std::string::npos) << msg;
}

TEST(NpyFolder, IntegerTokensWidenToInt64) {
  TempDir dir;
  write_npy(dir.file("t.npy"), Tensor::from_vector<int32_t>({1, 4}, {1, 5, 7, 9}));
  auto src = open_sample_source(dir.path(), {spec("ids", DataType::kInt64, {-1, -1})}, {});
  Sample s = src->load(0);
  EXPECT_EQ(s["ids"].dtype(), DataType::kInt64);
  EXPECT_EQ(s["ids"].data<int64_t>()[3], 9);
}

TEST(NpyFolder, MultiInputModelRefusesBareNpyFolder) {
  TempDir dir;
  write_npy(dir.file("a.npy"), ramp({2}, 0));
  std::string msg = error_of([&] {
    open_sample_source(dir.path(), {spec("a", DataType::kFloat, {2}), spec("b", DataType::kFloat, {2})}, {});
  });
  EXPECT_NE(msg.find("single-input"), std::string::npos) << msg;
}

TEST(Npz, StoredAndDeflateRoundTripAndMatchByName) {
  TempDir dir;
  const std::vector<InputSpec> specs = {spec("a", DataType::kFloat, {2, 3}), spec("b", DataType::kInt64, {2})};
  // Written in the opposite order of the model's inputs: matched by name.
  write_npz(dir.file("s0.npz"), {{"b", Tensor::from_vector<int64_t>({2}, {7, 8})}, {"a", ramp({2, 3}, 1)}}, false);
  write_npz(dir.file("s1.npz"), {{"b", Tensor::from_vector<int64_t>({2}, {9, 10})}, {"a", ramp({2, 3}, 50)}}, true);
  auto raw = read_npz(dir.file("s1.npz"));
  ASSERT_EQ(raw.size(), 2u);
  EXPECT_EQ(raw[0].first, "b");
  auto src = open_sample_source(dir.path(), specs, {});
  ASSERT_EQ(src->size(), 2u);
  Sample s = src->load(1);
  EXPECT_EQ(s["a"].data<float>()[5], 55.0f);
  EXPECT_EQ(s["b"].data<int64_t>()[1], 10);
  // Compressed really is deflate: a constant array shrinks.
  write_npz(dir.file("big.npz.tmp"), {{"a", Tensor(DataType::kFloat, {1000})}}, true);
  EXPECT_LT(fs::file_size(dir.file("big.npz.tmp")), 1000u);
}

TEST(Npz, CorruptArchiveIsAClearError) {
  TempDir dir;
  write_npz(dir.file("s.npz"), {{"a", ramp({4}, 0)}}, false);
  std::string bytes = read_file(dir.file("s.npz"));
  bytes[bytes.find("\x93NUMPY") + 70] ^= 0x55;  // flip a data byte: CRC mismatch
  write_file_atomic(dir.file("s.npz"), bytes);
  std::string msg = error_of([&] { read_npz(dir.file("s.npz")); });
  EXPECT_NE(msg.find("CRC"), std::string::npos) << msg;
  EXPECT_NE(msg.find("s.npz:a.npy"), std::string::npos) << msg;
}

TEST(OnnxTestDataSets, ReadsInputPbInOrder) {
  TempDir dir;
  for (int k = 0; k < 2; ++k) {
    const std::string d = dir.file("test_data_set_" + std::to_string(k));
    fs::create_directory(d);
    onnx_io::save_tensor_pb(d + "/input_0.pb", ramp({1, 2}, 10.0f * k), "x");
    onnx_io::save_tensor_pb(d + "/input_1.pb", Tensor::from_vector<int64_t>({1}, {k}), "");
    onnx_io::save_tensor_pb(d + "/output_0.pb", ramp({1}, 0), "y");
  }
  auto src = open_sample_source(dir.path(), {spec("x", DataType::kFloat, {1, 2}), spec("n", DataType::kInt64, {1})}, {});
  EXPECT_EQ(src->kind(), "ONNX test_data_set folders");
  ASSERT_EQ(src->size(), 2u);
  Sample s = src->load(1);  // names incomplete: matched by position
  EXPECT_EQ(s["x"].data<float>()[1], 11.0f);
  EXPECT_EQ(s["n"].data<int64_t>()[0], 1);
}

TEST(PerInputFolders, KthFileOfEachFolderFormsSampleK) {
  TempDir dir;
  fs::create_directory(dir.file("input_ids"));
  fs::create_directory(dir.file("mask"));
  for (int k = 0; k < 3; ++k) {
    write_npy(dir.file("input_ids/" + std::to_string(k) + ".npy"), Tensor::from_vector<int64_t>({1, 2}, {k, k + 1}));
    write_npy(dir.file("mask/" + std::to_string(k) + ".npy"), Tensor::from_vector<int64_t>({1, 2}, {1, k}));
  }
  auto src = open_sample_source(
      dir.path(), {spec("input_ids", DataType::kInt64, {1, 2}), spec("mask", DataType::kInt64, {1, 2})}, {});
  ASSERT_EQ(src->size(), 3u);
  Sample s = src->load(2);
  EXPECT_EQ(s["input_ids"].data<int64_t>()[1], 3);
  EXPECT_EQ(s["mask"].data<int64_t>()[1], 2);
}

TEST(Tokens, Int32StreamCutIntoSequences) {
  TempDir dir;
  std::vector<int32_t> toks(11);
  for (int i = 0; i < 11; ++i) toks[i] = 100 + i;
  std::ofstream(dir.file("s.tok512.i32"), std::ios::binary)
      .write(reinterpret_cast<const char*>(toks.data()), static_cast<std::streamsize>(toks.size() * 4));
  SourceOptions o;
  o.seq_len = 4;
  auto src = open_sample_source(dir.path(), {spec("input_ids", DataType::kInt64, {-1, -1})}, o);
  ASSERT_EQ(src->size(), 2u);  // 11 tokens -> 2 sequences of 4, tail of 3 dropped
  Sample s = src->load(1);
  EXPECT_EQ(s["input_ids"].shape(), (Shape{1, 4}));
  EXPECT_EQ(s["input_ids"].data<int64_t>()[0], 104);
  // Without --seq-len and a dynamic sequence dim: a config error.
  std::string msg = error_of([&] { open_sample_source(dir.path(), {spec("input_ids", DataType::kInt64, {-1, -1})}, {}); });
  EXPECT_NE(msg.find("--seq-len"), std::string::npos) << msg;
}

TEST(Idx, GzipImagesWithMnistPresets) {
  TempDir dir;
  // 2 images of 28x28: image k has every pixel = 10 + k.
  std::string idx = std::string("\0\0\x08\x03", 4) + std::string("\0\0\0\x02\0\0\0\x1c\0\0\0\x1c", 12);
  for (int k = 0; k < 2; ++k) idx += std::string(784, static_cast<char>(10 + k));
  gzFile f = gzopen(dir.file("imgs-idx3-ubyte.gz").c_str(), "wb");
  gzwrite(f, idx.data(), static_cast<unsigned>(idx.size()));
  gzclose(f);
  Tensor t = read_idx(dir.file("imgs-idx3-ubyte.gz"));
  EXPECT_EQ(t.shape(), (Shape{2, 28, 28}));
  SourceOptions o;
  o.image = image_preset("mnist-pytorch");
  auto src = open_sample_source(dir.file("imgs-idx3-ubyte.gz"), {spec("x", DataType::kFloat, {1, 1, 28, 28})}, o);
  ASSERT_EQ(src->size(), 2u);
  Sample s = src->load(1);
  EXPECT_NEAR(s["x"].data<float>()[300], (11.0f / 255.0f - 0.1307f) / 0.3081f, 1e-6);
  o.image = image_preset("mnist-raw");
  src = open_sample_source(dir.file("imgs-idx3-ubyte.gz"), {spec("x", DataType::kFloat, {1, 1, 28, 28})}, o);
  EXPECT_EQ(src->load(0)["x"].data<float>()[0], 10.0f);
}

TEST(Image, PilBilinearDownscaleMatchesHandComputedWeights) {
  // 4x1 -> 2x1, scale 2: PIL's support widens to 2 pixels. Output 0 (centre 1.0) has weights
  // 0.75, 0.75, 0.25 on pixels 0..2 (normalised by 1.75): (0*.75 + 100*.75 + 200*.25)/1.75 = 71.43.
  // Output 1 (centre 3.0): 0.25, 0.75, 0.75 on pixels 1..3: (25 + 150 + 191.25)/1.75 = 209.29.
  Image img;
  img.width = 4;
  img.height = 1;
  img.channels = 1;
  img.pixels = {0, 100, 200, 255};
  Image out = resize_bilinear(img, 2, 1);
  ASSERT_EQ(out.pixels.size(), 2u);
  EXPECT_EQ(out.pixels[0], 71);
  EXPECT_EQ(out.pixels[1], 209);
  // Upscaling 2 -> 4 interpolates (support 1): centres 0.25, 0.75, 1.25, 1.75 map to 0, 25, 75, 100.
  Image two;
  two.width = 2;
  two.height = 1;
  two.channels = 1;
  two.pixels = {0, 100};
  Image up = resize_bilinear(two, 4, 1);
  EXPECT_EQ(up.pixels, (std::vector<uint8_t>{0, 25, 75, 100}));
}

TEST(Image, PngWithImagenetAndCaffePresets) {
  TempDir dir;
  // 300x400 (w x h) image: left half (x < 150) red-ish (200,100,50), right half (50,100,200).
  const int w = 300, h = 400;
  std::vector<uint8_t> px(static_cast<size_t>(w) * h * 3);
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      uint8_t* p = &px[(static_cast<size_t>(y) * w + x) * 3];
      const bool left = x < w / 2;
      p[0] = left ? 200 : 50;
      p[1] = 100;
      p[2] = left ? 50 : 200;
    }
  }
  ASSERT_TRUE(stbi_write_png(dir.file("img.png").c_str(), w, h, 3, px.data(), w * 3));
  SourceOptions o;
  o.image = image_preset("imagenet");
  auto src = open_sample_source(dir.path(), {spec("image", DataType::kFloat, {-1, 3, 224, 224})}, o);
  EXPECT_EQ(src->kind(), "JPEG/PNG images");
  Tensor t = src->load(0)["image"];
  ASSERT_EQ(t.shape(), (Shape{1, 3, 224, 224}));
  const float* d = t.data<float>();
  // Resize short side 300 -> 256 (long 400 -> 341), crop 224. Pixel (y=0, x=0) is far from the
  // colour edge: R = 200.
  EXPECT_NEAR(d[0], (200.0f / 255.0f - 0.485f) / 0.229f, 1e-5);
  EXPECT_NEAR(d[224 * 224], (100.0f / 255.0f - 0.456f) / 0.224f, 1e-5);
  EXPECT_NEAR(d[2 * 224 * 224 + 223], (200.0f / 255.0f - 0.406f) / 0.225f, 1e-5);  // B at x=223 (right half)

  o.image = image_preset("caffe-bgr");
  src = open_sample_source(dir.file("img.png"), {spec("data_0", DataType::kFloat, {1, 3, 224, 224})}, o);
  t = src->load(0)["data_0"];
  d = t.data<float>();
  EXPECT_FLOAT_EQ(d[0], 50.0f - 104.0f);                  // channel 0 = B
  EXPECT_FLOAT_EQ(d[2 * 224 * 224], 200.0f - 123.0f);    // channel 2 = R

  o.image = image_preset("imagenet");
  o.image.nhwc = true;
  src = open_sample_source(dir.file("img.png"), {spec("x", DataType::kFloat, {1, 224, 224, 3})}, o);
  t = src->load(0)["x"];
  EXPECT_NEAR(t.data<float>()[2], (50.0f / 255.0f - 0.406f) / 0.225f, 1e-5);  // B of pixel (0,0)

  // A 224 crop fed to the 244x244 model is a clear error that points at the fix.
  std::string msg = error_of([&] {
    o.image = image_preset("imagenet");
    open_sample_source(dir.path(), {spec("image", DataType::kFloat, {-1, 3, 244, 244})}, o)->load(0);
  });
  EXPECT_NE(msg.find("img.png"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[1,3,224,224]"), std::string::npos) << msg;
}

TEST(Image, UnknownPresetAndUndecodableFile) {
  EXPECT_NE(error_of([] { image_preset("vgg"); }).find("mobilenetv2-244"), std::string::npos);
  TempDir dir;
  std::ofstream(dir.file("broken.jpg")) << "not a jpeg";
  std::string msg = error_of([&] { decode_image(dir.file("broken.jpg")); });
  EXPECT_NE(msg.find("broken.jpg"), std::string::npos) << msg;
}

TEST(Image, SharedImagenetJpegDecodes) {
  QTOOL_REQUIRE_SHARED();
  const std::string path = testing::shared_path("data/imagenet-sample/images/n01440764_tench.JPEG");
  Image img = decode_image(path);
  // The JPEG header says 500x375, 3 components.
  ASSERT_EQ(img.width, 500);
  ASSERT_EQ(img.height, 375);
  double sum[3] = {0, 0, 0};
  for (size_t i = 0; i < img.pixels.size(); ++i) sum[i % 3] += img.pixels[i];
  const double n = 500.0 * 375.0;
  // Channel means pinned from this decoder (stb_image); other decoders differ by < 1 level on average.
  EXPECT_NEAR(sum[0] / n, kTenchMeanR, 1.0);
  EXPECT_NEAR(sum[1] / n, kTenchMeanG, 1.0);
  EXPECT_NEAR(sum[2] / n, kTenchMeanB, 1.0);
  // Preset for the shared MobileNetV2: 1x3x244x244.
  Tensor t = preprocess_image(img, image_preset("mobilenetv2-244"), path);
  EXPECT_EQ(t.shape(), (Shape{1, 3, 244, 244}));
}

TEST(Select, SplitsShuffleCapAndRepeat) {
  TempDir dir;
  for (int i = 0; i < 10; ++i) write_npy(dir.file(fmt::format("s{:02}.npy", i)), ramp({1}, static_cast<float>(i)));
  auto base = open_sample_source(dir.path(), {spec("x", DataType::kFloat, {1})}, {});
  SelectOptions o;
  o.split = "even";
  auto even = select_samples(base, o);
  EXPECT_EQ(even->indices(), (std::vector<size_t>{0, 2, 4, 6, 8}));
  o.split = "odd";
  o.samples = 2;
  EXPECT_EQ(select_samples(base, o)->indices(), (std::vector<size_t>{1, 3}));
  // Seeded shuffle: a permutation, reproducible, different from the identity for this seed.
  o = {};
  o.shuffle = true;
  o.seed = 42;
  auto a = select_samples(base, o)->indices(), b = select_samples(base, o)->indices();
  EXPECT_EQ(a, b);
  std::vector<size_t> sorted = a;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(sorted, (std::vector<size_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
  EXPECT_NE(a, sorted);
  // More than available: reduced, unless repeat_ok cycles.
  o = {};
  o.samples = 25;
  EXPECT_EQ(select_samples(base, o)->size(), 10u);
  o.repeat_ok = true;
  auto rep = select_samples(base, o);
  ASSERT_EQ(rep->size(), 25u);
  EXPECT_EQ(rep->indices()[23], 3u);
  // A list file.
  std::ofstream(dir.file("list.txt")) << "# calibration\ns07.npy\n  s02.npy\n";
  o = {};
  o.list_file = dir.file("list.txt");
  EXPECT_EQ(select_samples(base, o)->indices(), (std::vector<size_t>{7, 2}));
  std::ofstream(dir.file("bad.txt")) << "nope.npy\n";
  o.list_file = dir.file("bad.txt");
  EXPECT_NE(error_of([&] { select_samples(base, o); }).find("nope.npy"), std::string::npos);
  o = {};
  o.split = "thirds";
  EXPECT_NE(error_of([&] { select_samples(base, o); }).find("thirds"), std::string::npos);
}

/// Counts the loads that reach it.
class CountingSource final : public SampleSource {
 public:
  size_t size() const override { return 4; }
  Sample load(size_t i) override {
    ++loads;
    return {{"x", Tensor::from_vector<float>({256}, std::vector<float>(256, static_cast<float>(i)))}};
  }
  std::string describe(size_t i) const override { return "s" + std::to_string(i); }
  std::string kind() const override { return "counting"; }
  size_t loads = 0;
};

TEST(Select, KeepLoadedReturnsKeptSamplesUpToItsBudget) {
  auto base = std::make_shared<CountingSource>();
  SelectedSource sel(base, {3, 1, 2});
  sel.keep_loaded(2 * 1024);  // room for two samples of 1 KiB
  for (int round = 0; round < 3; ++round)
    for (size_t i = 0; i < 3; ++i) EXPECT_EQ(sel.load(i).at("x").data<float>()[0], static_cast<float>(sel.indices()[i]));
  // The first two stay in memory; the third, over the budget, is loaded every time.
  EXPECT_EQ(base->loads, 3u + 2u);
  SelectedSource plain(base, {0});
  plain.load(0);
  plain.load(0);
  EXPECT_EQ(base->loads, 7u);  // without keep_loaded every load reaches the source
}

TEST(Select, DefaultCapIs1000) {
  auto big = std::make_shared<SelectedSource>(nullptr, std::vector<size_t>(1500, 0));
  EXPECT_EQ(select_samples(big, {})->size(), kMaxDefaultSamples);
}

}  // namespace
}  // namespace qtool::data
