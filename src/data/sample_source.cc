// Sample sources: matching to model inputs, selection, and the folder layouts of --calib.
#include "qtool/data/sample_source.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <limits>
#include <random>
#include <set>
#include <unordered_map>

#include <spdlog/spdlog.h>

#include "qtool/core/limits.h"
#include "qtool/core/npy.h"
#include "qtool/onnx_io/onnx_io.h"

namespace fs = std::filesystem;

namespace qtool::data {

// ---------------------------------------------------------------------------------------------
// Input specs and matching

std::string InputSpec::shape_str() const {
  if (!has_shape) return "[any rank]";
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) {
    if (i) s += ",";
    s += dims[i].known() ? std::to_string(dims[i].value) : (dims[i].param.empty() ? "?" : dims[i].param);
  }
  return s + "]";
}

std::vector<InputSpec> input_specs(const ir::Model& model) {
  std::vector<InputSpec> specs;
  for (const ir::Value* v : model.graph->runtime_inputs()) {
    InputSpec s;
    s.name = v->name();
    s.dtype = v->type().elem_type == DataType::kUndefined ? DataType::kFloat : v->type().elem_type;
    s.has_shape = v->type().has_shape;
    s.dims = v->type().dims;
    specs.push_back(std::move(s));
  }
  return specs;
}

namespace {

// Lossless conversions applied silently; everything else is an error.
bool widening_ok(DataType from, DataType to) {
  if (to == DataType::kFloat) return from == DataType::kFloat16 || from == DataType::kBFloat16;
  if (to == DataType::kInt64 || to == DataType::kInt32) {
    if (!dtype_is_integer(from) || dtype_is_packed(from)) return false;
    if (from == DataType::kUint64 || from == DataType::kInt64) return false;
    if (to == DataType::kInt32) return dtype_bits(from) < 32;
    return from != DataType::kUint64;
  }
  return false;
}

// The shape rule of conform: each known model dim matches, or the tensor lacks only a leading batch
// dim of 1 (true when `shape` fits as it is or after adding that dim).
bool shape_fits(const InputSpec& spec, const Shape& shape) {
  if (!spec.has_shape) return true;
  const size_t rank = spec.dims.size();
  auto dims_match = [&](size_t skip) {
    for (size_t i = skip; i < rank; ++i) {
      if (spec.dims[i].known() && spec.dims[i].value != shape[i - skip]) return false;
    }
    return true;
  };
  if (shape.size() == rank && dims_match(0)) return true;
  return shape.size() + 1 == rank && (!spec.dims[0].known() || spec.dims[0].value == 1) && dims_match(1);
}

[[noreturn]] void wrong_dtype(const InputSpec& spec, DataType got, const std::string& what) {
  fail(ErrorCode::kInvalidInput, "'{}': input '{}' expects {} but the sample holds {}", what, spec.name,
       dtype_name(spec.dtype), dtype_name(got));
}

[[noreturn]] void wrong_shape(const InputSpec& spec, const Shape& got, const std::string& what) {
  fail(ErrorCode::kInvalidInput, "'{}': input '{}' expects shape {} but the sample has shape {}", what, spec.name,
       spec.shape_str(), qtool::shape_str(got));
}

Tensor conform(Tensor t, const InputSpec& spec, const std::string& what) {
  if (t.dtype() != spec.dtype) {
    if (!widening_ok(t.dtype(), spec.dtype)) wrong_dtype(spec, t.dtype(), what);
    t = t.cast(spec.dtype);
  }
  if (!shape_fits(spec, t.shape())) wrong_shape(spec, t.shape(), what);
  if (spec.has_shape && t.rank() + 1 == spec.dims.size()) {
    Shape s = t.shape();
    s.insert(s.begin(), 1);
    return t.reshaped(s);
  }
  return t;
}

// The same checks as conform, from a header (dtype and shape only), before the data is read; also
// bounds the tensor after widening to the model's type by the per-sample limit.
void check_header(const InputSpec& spec, DataType dtype, const Shape& shape, const std::string& what) {
  if (dtype != spec.dtype && !widening_ok(dtype, spec.dtype)) wrong_dtype(spec, dtype, what);
  if (!shape_fits(spec, shape)) wrong_shape(spec, shape, what);
  const uint64_t numel = static_cast<uint64_t>(shape_numel(shape));
  const uint64_t widened = numel * (static_cast<uint64_t>(dtype_bits(spec.dtype)) / 8);
  if (dtype != spec.dtype && numel <= (uint64_t{1} << 60)) {
    check_sample_bytes(widened, fmt::format("'{}' as input '{}' ({} of {})", what, spec.name, dtype_name(spec.dtype),
                                            qtool::shape_str(shape)));
  }
}

// The spec match_inputs will give tensor `index` of a sample whose tensors are named `names`, known
// before the tensors are loaded: by name when every name is a distinct model input, else by position
// when the counts agree; nullptr when match_inputs will refuse the sample anyway.
const InputSpec* expected_spec(const std::vector<std::string>& names, size_t index,
                               const std::vector<InputSpec>& specs) {
  std::set<std::string> seen;
  bool by_name = !names.empty();
  for (const auto& n : names) {
    bool known = false;
    for (const auto& s : specs) known = known || s.name == n;
    if (n.empty() || !known || !seen.insert(n).second) by_name = false;
  }
  if (by_name) {
    for (const auto& s : specs) {
      if (s.name == names[index]) return &s;
    }
  }
  if (!by_name && names.size() == specs.size()) return &specs[index];
  return nullptr;
}

}  // namespace

Sample match_inputs(std::vector<std::pair<std::string, Tensor>> raw, const std::vector<InputSpec>& specs,
                    const std::string& what) {
  Sample out;
  std::set<std::string> spec_names;
  for (const auto& s : specs) spec_names.insert(s.name);
  bool by_name = !raw.empty();
  std::set<std::string> seen;
  for (const auto& [name, t] : raw) {
    if (name.empty() || !spec_names.count(name) || !seen.insert(name).second) by_name = false;
  }
  if (by_name && raw.size() == specs.size()) {
    std::unordered_map<std::string, Tensor*> by;
    for (auto& [name, t] : raw) by[name] = &t;
    for (const auto& s : specs) out[s.name] = conform(*by.at(s.name), s, what);
    return out;
  }
  if (by_name) {
    std::string missing;
    for (const auto& s : specs) {
      if (!seen.count(s.name)) missing += (missing.empty() ? "'" : ", '") + s.name + "'";
    }
    fail(ErrorCode::kInvalidInput, "'{}' has no tensor for model input(s) {}", what, missing);
  }
  if (raw.size() != specs.size()) {
    std::string names;
    for (const auto& s : specs) names += (names.empty() ? "'" : ", '") + s.name + "'";
    fail(ErrorCode::kInvalidInput,
         "'{}' holds {} tensor(s) not named after the model's inputs, but the model has {} input(s) ({}); "
         "name the arrays after the inputs (.npz keys, .pb names or sub-folders)",
         what, raw.size(), specs.size(), names);
  }
  for (size_t i = 0; i < specs.size(); ++i) out[specs[i].name] = conform(std::move(raw[i].second), specs[i], what);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Selection

Sample SampleMemo::load(SampleSource& source, size_t i) {
  if (const auto it = kept_.find(i); it != kept_.end()) return it->second;
  Sample s = source.load(i);
  size_t bytes = 0;
  for (const auto& entry : s) bytes += entry.second.nbytes();
  if (bytes_ + bytes <= max_bytes_) {
    bytes_ += bytes;
    kept_.emplace(i, s);
  }
  return s;
}

Sample SelectedSource::load(size_t i) { return memo_.load(*base_, indices_.at(i)); }

std::shared_ptr<SelectedSource> select_samples(std::shared_ptr<SampleSource> base, const SelectOptions& o) {
  std::vector<size_t> idx;
  const size_t n = base->size();
  if (o.split == "all") {
    for (size_t i = 0; i < n; ++i) idx.push_back(i);
  } else if (o.split == "even" || o.split == "odd") {
    for (size_t i = o.split == "even" ? 0 : 1; i < n; i += 2) idx.push_back(i);
  } else {
    fail(ErrorCode::kConfig, "unknown split '{}' (use all, even or odd)", o.split);
  }
  if (!o.list_file.empty()) {
    std::unordered_map<std::string, size_t> by_name;
    for (size_t i : idx) by_name[fs::path(base->describe(i)).filename().string()] = i;
    std::vector<size_t> listed;
    std::string text = read_file(o.list_file);
    size_t pos = 0, line_no = 0;
    while (pos < text.size()) {
      size_t end = text.find('\n', pos);
      if (end == std::string::npos) end = text.size();
      std::string line = text.substr(pos, end - pos);
      pos = end + 1;
      ++line_no;
      while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\t')) line.pop_back();
      size_t b = line.find_first_not_of(" \t");
      if (b == std::string::npos || line[b] == '#') continue;
      line = fs::path(line.substr(b)).filename().string();
      auto it = by_name.find(line);
      if (it == by_name.end()) {
        fail(ErrorCode::kConfig, "'{}' line {}: no sample named '{}' in the {} selection", o.list_file, line_no,
             line, o.split);
      }
      listed.push_back(it->second);
    }
    idx = std::move(listed);
  }
  if (o.shuffle) {
    std::mt19937_64 rng(o.seed);
    for (size_t i = idx.size(); i > 1; --i) std::swap(idx[i - 1], idx[rng() % i]);
  }
  QTOOL_CHECK(!idx.empty(), ErrorCode::kConfig, "no samples selected (source has {}, split '{}')", n, o.split);
  size_t want = o.samples;
  if (want == 0) {
    want = std::min(idx.size(), kMaxDefaultSamples);
    if (idx.size() > kMaxDefaultSamples) {
      spdlog::info("using {} of {} samples (the default cap; pass --samples N to change)", want, idx.size());
    }
  } else if (want > idx.size()) {
    if (o.repeat_ok) {
      spdlog::info("cycling through {} samples to make {} (--repeat-ok)", idx.size(), want);
    } else {
      spdlog::warn("asked for {} samples but only {} are available; using {}", want, idx.size(), idx.size());
      want = idx.size();
    }
  }
  std::vector<size_t> out(want);
  for (size_t i = 0; i < want; ++i) out[i] = idx[i % idx.size()];
  return std::make_shared<SelectedSource>(std::move(base), std::move(out));
}

// ---------------------------------------------------------------------------------------------
// Sources

namespace {

bool has_ext(const fs::path& p, std::initializer_list<const char*> exts) {
  std::string e = p.extension().string();
  std::transform(e.begin(), e.end(), e.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  for (const char* x : exts) {
    if (e == x) return true;
  }
  return false;
}

bool is_image(const fs::path& p) { return has_ext(p, {".jpg", ".jpeg", ".png"}); }

std::vector<fs::path> sorted_entries(const fs::path& dir, bool dirs) {
  std::vector<fs::path> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (dirs ? e.is_directory() : e.is_regular_file()) out.push_back(e.path());
  }
  if (ec) fail(ErrorCode::kIo, "cannot list folder '{}': {}", dir.string(), ec.message());
  std::sort(out.begin(), out.end(), [](const fs::path& a, const fs::path& b) {
    return a.filename().string() < b.filename().string();
  });
  return out;
}

/// Loads the tensors of one sample from its files, checking each file's header against the model
/// input it will feed and the per-sample limit before its data is read (a .npy header, each .npz
/// member's header, a .pb's size), so that a wrong or oversized sample fails naming the file and
/// input without being loaded or inflated.
class SampleLoader {
 public:
  SampleLoader(const std::vector<InputSpec>& specs, std::vector<std::string> names)
      : specs_(specs), names_(std::move(names)) {}

  /// Appends the tensors of `p` to `out`; `name_hint` names a lone unnamed tensor.
  void load(const fs::path& p, const std::string& name_hint, std::vector<std::pair<std::string, Tensor>>& out) {
    const std::string path = p.string();
    if (has_ext(p, {".npz"})) {
      const bool alone = names_.size() == 1;  // the archive is the whole sample: its names decide
      auto check = [&](const std::vector<std::string>& names, size_t k, const NpyHeader& h) {
        const InputSpec* s = alone ? expected_spec(names, k, specs_) : nullptr;
        if (s) check_header(*s, h.dtype, h.shape, fmt::format("{}:{}.npy", path, names[k]));
      };
      for (auto& a : read_npz(path, check)) {
        total_ += a.second.nbytes();
        out.push_back(std::move(a));
      }
      // parse_npz checked the archive's own total; the sample may hold more files.
      check_sample_bytes(total_, fmt::format("'{}'", path));
    } else if (has_ext(p, {".npy"})) {
      const NpyHeader h = read_npy_header(path);
      total_ += h.data_bytes;
      check_sample_bytes(total_, fmt::format("'{}'", path));
      if (const InputSpec* s = expected_spec(names_, out.size(), specs_)) check_header(*s, h.dtype, h.shape, path);
      out.emplace_back(name_hint, read_npy(path));
    } else if (has_ext(p, {".pb"})) {
      const RegularFile f(path);  // kIo for FIFOs and devices before protobuf reads it
      total_ += f.size();
      check_sample_bytes(total_, fmt::format("'{}'", path));
      std::string name;
      Tensor t = onnx_io::load_tensor_pb(path, &name);
      out.emplace_back(name_hint.empty() ? name : name_hint, std::move(t));
    } else {
      fail(ErrorCode::kInvalidInput, "'{}': not a .npy, .npz or .pb file", path);
    }
  }

 private:
  const std::vector<InputSpec>& specs_;
  std::vector<std::string> names_;  ///< the tensor names match_inputs will see, when known up front
  uint64_t total_ = 0;
};

/// Samples made of files: each sample is a list of (input name or "", file).
class FileSetSource final : public SampleSource {
 public:
  struct Entry {
    std::string label;
    std::vector<std::pair<std::string, fs::path>> files;
  };
  FileSetSource(std::string kind, std::vector<Entry> entries, std::vector<InputSpec> specs)
      : kind_(std::move(kind)), entries_(std::move(entries)), specs_(std::move(specs)) {}
  size_t size() const override { return entries_.size(); }
  std::string describe(size_t i) const override { return entries_.at(i).label; }
  std::string kind() const override { return kind_; }
  Sample load(size_t i) override {
    const Entry& e = entries_.at(i);
    // The names match_inputs will see are the hints when every file is a .npy (one tensor each, named
    // by its sub-folder or unnamed); a .pb's name is inside it, and a lone .npz names its own arrays.
    std::vector<std::string> names;
    bool all_npy = true;
    for (const auto& [name, file] : e.files) {
      names.push_back(name);
      all_npy = all_npy && has_ext(file, {".npy"});
    }
    if (!all_npy) names.assign(e.files.size() == 1 && has_ext(e.files[0].second, {".npz"}) ? 1 : 0, "");
    SampleLoader loader(specs_, std::move(names));
    std::vector<std::pair<std::string, Tensor>> raw;
    for (const auto& [name, file] : e.files) loader.load(file, name, raw);
    return match_inputs(std::move(raw), specs_, e.label);
  }

 private:
  std::string kind_;
  std::vector<Entry> entries_;
  std::vector<InputSpec> specs_;
};

/// One .npy file holding N stacked samples along dim 0.
class StackedNpySource final : public SampleSource {
 public:
  StackedNpySource(std::string path, Tensor t, std::vector<InputSpec> specs)
      : path_(std::move(path)), t_(std::move(t)), specs_(std::move(specs)) {}
  size_t size() const override { return static_cast<size_t>(t_.dim(0)); }
  std::string describe(size_t i) const override { return fmt::format("{}[{}]", path_, i); }
  std::string kind() const override { return "stacked .npy samples"; }
  Sample load(size_t i) override {
    // Sample i is t_[i]: the leading (stacking) dim dropped, so that it has the model input's rank.
    Shape s(t_.shape().begin() + 1, t_.shape().end());
    const size_t bytes = t_.nbytes() / static_cast<size_t>(t_.dim(0));
    Tensor one = Tensor::empty(t_.dtype(), s);
    std::memcpy(one.mutable_raw(), t_.raw() + i * bytes, bytes);
    return match_inputs({{"", one}}, specs_, describe(i));
  }

 private:
  std::string path_;
  Tensor t_;
  std::vector<InputSpec> specs_;
};

class ImageSource final : public SampleSource {
 public:
  ImageSource(std::vector<fs::path> files, ImagePreprocess p, std::vector<InputSpec> specs)
      : files_(std::move(files)), p_(std::move(p)), specs_(std::move(specs)) {}
  size_t size() const override { return files_.size(); }
  std::string describe(size_t i) const override { return files_.at(i).string(); }
  std::string kind() const override { return "JPEG/PNG images"; }
  Sample load(size_t i) override {
    const std::string what = describe(i);
    const std::string bytes = read_file(what);
    // The header gives the preprocessed shape: a wrong size is refused before decoding.
    const ImageInfo info = image_info_memory(bytes, what);
    if (const InputSpec* s = expected_spec({""}, 0, specs_)) {
      check_header(*s, DataType::kFloat, preprocessed_shape(info.width, info.height, p_), what);
    }
    Image img = decode_image_memory(bytes, what, p_.channels);
    return match_inputs({{"", preprocess_image(img, p_, what)}}, specs_, what);
  }

 private:
  std::vector<fs::path> files_;
  ImagePreprocess p_;
  std::vector<InputSpec> specs_;
};

/// An IDX image file ([N,H,W] uint8, MNIST): each image goes through the image preprocessing.
class IdxSource final : public SampleSource {
 public:
  IdxSource(std::string path, Tensor t, ImagePreprocess p, std::vector<InputSpec> specs)
      : path_(std::move(path)), t_(std::move(t)), p_(std::move(p)), specs_(std::move(specs)) {
    QTOOL_CHECK(t_.dtype() == DataType::kUint8 && (t_.rank() == 3 || t_.rank() == 4), ErrorCode::kInvalidInput,
                "'{}' holds {} {} data, not images (IDX images are uint8 [N,H,W] or [N,H,W,C])", path_,
                dtype_name(t_.dtype()), qtool::shape_str(t_.shape()));
    for (size_t d = 1; d < t_.rank(); ++d) {
      QTOOL_CHECK(t_.dim(d) > 0 && t_.dim(d) <= std::numeric_limits<int>::max(), ErrorCode::kInvalidInput,
                  "'{}': IDX images of shape {} are not decodable images", path_, qtool::shape_str(t_.shape()));
    }
    check_sample_bytes(static_cast<uint64_t>(t_.nbytes() / std::max<int64_t>(t_.dim(0), 1)),
                       fmt::format("one image of '{}'", path_));
  }
  size_t size() const override { return static_cast<size_t>(t_.dim(0)); }
  std::string describe(size_t i) const override { return fmt::format("{}[{}]", path_, i); }
  std::string kind() const override { return "IDX images"; }
  Sample load(size_t i) override {
    Image img;
    img.height = static_cast<int>(t_.dim(1));
    img.width = static_cast<int>(t_.dim(2));
    img.channels = t_.rank() == 4 ? static_cast<int>(t_.dim(3)) : 1;
    const size_t n = static_cast<size_t>(img.height) * img.width * img.channels;
    const uint8_t* px = t_.data<uint8_t>() + i * n;
    img.pixels.assign(px, px + n);
    ImagePreprocess p = p_;
    if (img.channels != p.channels) {
      QTOOL_CHECK(img.channels == 1 && p.mean.size() <= 1, ErrorCode::kConfig,
                  "'{}' holds {}-channel images but the preprocessing wants {} channels (use --preprocess mnist-raw "
                  "or mnist-pytorch)",
                  path_, img.channels, p.channels);
      p.channels = 1;
    }
    if (p.mean.size() != 1) p.mean = {p.mean.empty() ? 0.0f : p.mean[0]};
    if (p.std.size() != 1) p.std = {p.std.empty() ? 1.0f : p.std[0]};
    const std::string what = describe(i);
    return match_inputs({{"", preprocess_image(img, p, what)}}, specs_, what);
  }

 private:
  std::string path_;
  Tensor t_;
  ImagePreprocess p_;
  std::vector<InputSpec> specs_;
};

/// Token streams cut into sequences of seq_len tokens ([1, seq_len] int64 each; tails dropped).
class TokenSource final : public SampleSource {
 public:
  TokenSource(std::vector<std::pair<std::string, std::vector<int32_t>>> streams, int64_t seq_len,
              std::vector<InputSpec> specs)
      : streams_(std::move(streams)), seq_len_(seq_len), specs_(std::move(specs)) {
    // Cumulative sequence counts per stream, not one index entry per sequence: with a short
    // sequence length a per-sequence index would be several times the size of the tokens.
    size_t total = 0;
    for (const auto& s : streams_) {
      total += s.second.size() / static_cast<size_t>(seq_len_);
      ends_.push_back(total);
    }
  }
  size_t size() const override { return ends_.empty() ? 0 : ends_.back(); }
  std::string describe(size_t i) const override {
    const auto [f, off] = locate(i);
    return fmt::format("{}[tokens {}..{}]", streams_[f].first, off, off + static_cast<size_t>(seq_len_));
  }
  std::string kind() const override { return "int32 token streams"; }
  Sample load(size_t i) override {
    const auto [f, off] = locate(i);
    std::vector<int64_t> ids(streams_[f].second.begin() + static_cast<std::ptrdiff_t>(off),
                             streams_[f].second.begin() + static_cast<std::ptrdiff_t>(off + seq_len_));
    return match_inputs({{"", Tensor::from_vector<int64_t>({1, seq_len_}, ids)}}, specs_, describe(i));
  }

 private:
  // (stream, first token) of sequence i.
  std::pair<size_t, size_t> locate(size_t i) const {
    QTOOL_CHECK(i < size(), ErrorCode::kInternal, "token sequence {} out of range ({})", i, size());
    const size_t f = static_cast<size_t>(std::upper_bound(ends_.begin(), ends_.end(), i) - ends_.begin());
    const size_t k = i - (f ? ends_[f - 1] : 0);
    return {f, k * static_cast<size_t>(seq_len_)};
  }

  std::vector<std::pair<std::string, std::vector<int32_t>>> streams_;
  int64_t seq_len_;
  std::vector<InputSpec> specs_;
  std::vector<size_t> ends_;  ///< ends_[f]: sequences in streams 0..f
};

bool is_idx_file(const fs::path& p) {
  const std::string n = p.filename().string();
  return n.find("-idx") != std::string::npos || has_ext(p, {".idx"}) ||
         (has_ext(p, {".gz"}) && n.find("idx") != std::string::npos);
}

int64_t token_seq_len(const SourceOptions& o, const std::vector<InputSpec>& specs, const std::string& path) {
  if (o.seq_len > 0) return o.seq_len;
  if (specs.size() == 1 && specs[0].has_shape && specs[0].dims.size() == 2 && specs[0].dims[1].known()) {
    return specs[0].dims[1].value;
  }
  fail(ErrorCode::kConfig, "'{}' is a token stream and the model's sequence length is not fixed: pass --seq-len",
       path);
}

std::shared_ptr<SampleSource> make_token_source(const std::vector<fs::path>& files, const SourceOptions& o,
                                                const std::vector<InputSpec>& specs, const std::string& path) {
  QTOOL_CHECK(specs.size() == 1, ErrorCode::kInvalidInput,
              "'{}' holds token streams, which feed single-input models; this model has {} inputs", path,
              specs.size());
  const int64_t seq = token_seq_len(o, specs, path);
  std::vector<std::pair<std::string, std::vector<int32_t>>> streams;
  uint64_t total = 0;
  for (const auto& f : files) {
    streams.emplace_back(f.string(), read_token_stream(f.string()));
    total += streams.back().second.size() * sizeof(int32_t);
    check_allocation(total, fmt::format("the token streams in '{}'", path));
  }
  auto src = std::make_shared<TokenSource>(std::move(streams), seq, specs);
  QTOOL_CHECK(src->size() > 0, ErrorCode::kInvalidInput, "'{}' holds fewer than {} tokens: no sequence of --seq-len",
              path, seq);
  return src;
}

std::shared_ptr<SampleSource> open_file(const fs::path& p, const std::vector<InputSpec>& specs,
                                        const SourceOptions& o) {
  const std::string path = p.string();
  { const RegularFile f(path); }  // a FIFO, device or socket: kIo now, not a hang at load time
  if (has_ext(p, {".i32"})) return make_token_source({p}, o, specs, path);
  if (is_idx_file(p)) return std::make_shared<IdxSource>(path, read_idx(path), o.image, specs);
  if (is_image(p)) return std::make_shared<ImageSource>(std::vector<fs::path>{p}, o.image, specs);
  if (has_ext(p, {".npy"})) {
    // Stacked samples, decided and checked from the header before the data is read.
    const NpyHeader h = read_npy_header(path);
    if (specs.size() == 1 && specs[0].has_shape && h.shape.size() == specs[0].dims.size() + 1 && h.shape[0] > 0) {
      const Shape one(h.shape.begin() + 1, h.shape.end());
      check_header(specs[0], h.dtype, one, fmt::format("{}[0]", path));
      check_sample_bytes(h.data_bytes / static_cast<uint64_t>(h.shape[0]), fmt::format("one sample of '{}'", path));
      return std::make_shared<StackedNpySource>(path, read_npy(path), specs);
    }
  }
  if (has_ext(p, {".npy", ".npz", ".pb"})) {
    return std::make_shared<FileSetSource>("single file", std::vector<FileSetSource::Entry>{{path, {{"", p}}}}, specs);
  }
  fail(ErrorCode::kInvalidInput,
       "'{}': unknown sample file type (expected .npy, .npz, .pb, .i32, an IDX file or a JPEG/PNG image)", path);
}

}  // namespace

std::shared_ptr<SampleSource> open_sample_source(const std::string& path, const std::vector<InputSpec>& specs,
                                                 const SourceOptions& o) {
  return with_context(fmt::format("while opening samples '{}'", path), [&]() -> std::shared_ptr<SampleSource> {
    const fs::path root(path);
    std::error_code ec;
    if (!fs::exists(root, ec)) fail(ErrorCode::kIo, "'{}' does not exist", path);
    if (!fs::is_directory(root, ec)) return open_file(root, specs, o);

    // ONNX model-zoo layout: test_data_set_*/input_k.pb.
    std::vector<fs::path> subdirs = sorted_entries(root, true);
    std::vector<FileSetSource::Entry> entries;
    for (const auto& d : subdirs) {
      if (d.filename().string().rfind("test_data_set_", 0) != 0) continue;
      std::vector<std::pair<int, fs::path>> inputs;
      for (const auto& f : sorted_entries(d, false)) {
        const std::string n = f.filename().string();
        if (n.rfind("input_", 0) == 0 && has_ext(f, {".pb"})) {
          try {
            inputs.emplace_back(std::stoi(n.substr(6)), f);
          } catch (const std::exception&) {
          }
        }
      }
      std::sort(inputs.begin(), inputs.end());
      FileSetSource::Entry e{d.string(), {}};
      for (auto& [k, f] : inputs) e.files.emplace_back("", f);
      if (!e.files.empty()) entries.push_back(std::move(e));
    }
    if (!entries.empty()) return std::make_shared<FileSetSource>("ONNX test_data_set folders", entries, specs);

    // One sub-folder per model input.
    if (!specs.empty()) {
      bool all = true;
      for (const auto& s : specs) all = all && fs::is_directory(root / s.name, ec);
      if (all) {
        std::vector<std::vector<fs::path>> per;
        for (const auto& s : specs) {
          std::vector<fs::path> files;
          for (const auto& f : sorted_entries(root / s.name, false)) {
            if (has_ext(f, {".npy", ".pb"})) files.push_back(f);
          }
          if (!per.empty() && files.size() != per[0].size()) {
            fail(ErrorCode::kInvalidInput, "sub-folder '{}' holds {} samples but '{}' holds {}", s.name,
                 files.size(), specs[0].name, per[0].size());
          }
          per.push_back(std::move(files));
        }
        for (size_t i = 0; i < per[0].size(); ++i) {
          FileSetSource::Entry e{per[0][i].string(), {}};
          for (size_t k = 0; k < specs.size(); ++k) e.files.emplace_back(specs[k].name, per[k][i]);
          entries.push_back(std::move(e));
        }
        QTOOL_CHECK(!entries.empty(), ErrorCode::kInvalidInput, "the per-input sub-folders hold no .npy/.pb files");
        return std::make_shared<FileSetSource>("per-input sub-folders", entries, specs);
      }
    }

    // A flat folder: the most specific kind of file wins.
    std::vector<fs::path> files = sorted_entries(root, false);
    auto pick = [&](std::initializer_list<const char*> exts) {
      std::vector<fs::path> out;
      for (const auto& f : files) {
        if (has_ext(f, exts)) out.push_back(f);
      }
      return out;
    };
    auto as_entries = [](const std::vector<fs::path>& fs_) {
      std::vector<FileSetSource::Entry> es;
      for (const auto& f : fs_) es.push_back({f.string(), {{"", f}}});
      return es;
    };
    if (auto npz = pick({".npz"}); !npz.empty()) {
      return std::make_shared<FileSetSource>("folder of .npz files", as_entries(npz), specs);
    }
    for (const char* ext : {".npy", ".pb"}) {
      if (auto one = pick({ext}); !one.empty()) {
        if (specs.size() != 1) {
          fail(ErrorCode::kInvalidInput,
               "a folder of {} files feeds single-input models, but this model has {} inputs: use .npz files named "
               "after the inputs, or one sub-folder per input",
               ext, specs.size());
        }
        return std::make_shared<FileSetSource>(fmt::format("folder of {} files", ext), as_entries(one), specs);
      }
    }
    std::vector<fs::path> images;
    for (const auto& f : files) {
      if (is_image(f)) images.push_back(f);
    }
    if (!images.empty()) return std::make_shared<ImageSource>(std::move(images), o.image, specs);
    if (auto tok = pick({".i32"}); !tok.empty()) return make_token_source(tok, o, specs, path);
    for (const auto& f : files) {
      if (is_idx_file(f) && f.filename().string().find("images") != std::string::npos) return open_file(f, specs, o);
    }
    fail(ErrorCode::kInvalidInput,
         "'{}' holds no samples qtool can read (.npy, .npz, test_data_set_*/input_k.pb, per-input sub-folders, "
         "JPEG/PNG images, .i32 token streams, IDX files)",
         path);
  });
}

}  // namespace qtool::data
