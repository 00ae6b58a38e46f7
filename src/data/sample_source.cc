// Sample sources: matching to model inputs, selection, and the folder layouts of --calib.
#include "qtool/data/sample_source.h"

#include <algorithm>
#include <filesystem>
#include <random>
#include <set>
#include <unordered_map>

#include <spdlog/spdlog.h>

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

std::string tensor_shape(const Tensor& t) { return qtool::shape_str(t.shape()); }

Tensor conform(Tensor t, const InputSpec& spec, const std::string& what) {
  if (t.dtype() != spec.dtype) {
    if (!widening_ok(t.dtype(), spec.dtype)) {
      fail(ErrorCode::kInvalidInput, "'{}': input '{}' expects {} but the sample holds {}", what, spec.name,
           dtype_name(spec.dtype), dtype_name(t.dtype()));
    }
    t = t.cast(spec.dtype);
  }
  if (!spec.has_shape) return t;
  const size_t rank = spec.dims.size();
  auto dims_match = [&](const Shape& s, size_t skip) {
    for (size_t i = skip; i < rank; ++i) {
      if (spec.dims[i].known() && spec.dims[i].value != s[i - skip]) return false;
    }
    return true;
  };
  if (t.rank() == rank && dims_match(t.shape(), 0)) return t;
  if (t.rank() + 1 == rank && rank >= 1 && (!spec.dims[0].known() || spec.dims[0].value == 1) &&
      dims_match(t.shape(), 1)) {
    Shape s = t.shape();
    s.insert(s.begin(), 1);
    return t.reshaped(s);
  }
  fail(ErrorCode::kInvalidInput, "'{}': input '{}' expects shape {} but the sample has shape {}", what, spec.name,
       spec.shape_str(), tensor_shape(t));
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

// Loads every tensor a file holds: (name, tensor) pairs; `name_hint` names a lone unnamed tensor.
void load_file_tensors(const fs::path& p, const std::string& name_hint,
                       std::vector<std::pair<std::string, Tensor>>& out) {
  if (has_ext(p, {".npz"})) {
    for (auto& a : read_npz(p.string())) out.push_back(std::move(a));
  } else if (has_ext(p, {".npy"})) {
    out.emplace_back(name_hint, read_npy(p.string()));
  } else if (has_ext(p, {".pb"})) {
    std::string name;
    Tensor t = onnx_io::load_tensor_pb(p.string(), &name);
    out.emplace_back(name_hint.empty() ? name : name_hint, std::move(t));
  } else {
    fail(ErrorCode::kInvalidInput, "'{}': not a .npy, .npz or .pb file", p.string());
  }
}

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
    std::vector<std::pair<std::string, Tensor>> raw;
    for (const auto& [name, file] : e.files) load_file_tensors(file, name, raw);
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
    Shape s = t_.shape();
    s[0] = 1;
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
    Image img = decode_image(what, p_.channels);
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
      : path_(std::move(path)), t_(std::move(t)), p_(std::move(p)), specs_(std::move(specs)) {}
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
    for (size_t f = 0; f < streams_.size(); ++f) {
      const size_t n = streams_[f].second.size() / static_cast<size_t>(seq_len_);
      for (size_t k = 0; k < n; ++k) index_.emplace_back(f, k * static_cast<size_t>(seq_len_));
    }
  }
  size_t size() const override { return index_.size(); }
  std::string describe(size_t i) const override {
    return fmt::format("{}[tokens {}..{}]", streams_[index_.at(i).first].first, index_[i].second,
                       index_[i].second + static_cast<size_t>(seq_len_));
  }
  std::string kind() const override { return "int32 token streams"; }
  Sample load(size_t i) override {
    const auto [f, off] = index_.at(i);
    std::vector<int64_t> ids(streams_[f].second.begin() + static_cast<std::ptrdiff_t>(off),
                             streams_[f].second.begin() + static_cast<std::ptrdiff_t>(off + seq_len_));
    return match_inputs({{"", Tensor::from_vector<int64_t>({1, seq_len_}, ids)}}, specs_, describe(i));
  }

 private:
  std::vector<std::pair<std::string, std::vector<int32_t>>> streams_;
  int64_t seq_len_;
  std::vector<InputSpec> specs_;
  std::vector<std::pair<size_t, size_t>> index_;
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
  for (const auto& f : files) streams.emplace_back(f.string(), read_token_stream(f.string()));
  auto src = std::make_shared<TokenSource>(std::move(streams), seq, specs);
  QTOOL_CHECK(src->size() > 0, ErrorCode::kInvalidInput, "'{}' holds fewer than {} tokens: no sequence of --seq-len",
              path, seq);
  return src;
}

std::shared_ptr<SampleSource> open_file(const fs::path& p, const std::vector<InputSpec>& specs,
                                        const SourceOptions& o) {
  const std::string path = p.string();
  if (has_ext(p, {".i32"})) return make_token_source({p}, o, specs, path);
  if (is_idx_file(p)) return std::make_shared<IdxSource>(path, read_idx(path), o.image, specs);
  if (is_image(p)) return std::make_shared<ImageSource>(std::vector<fs::path>{p}, o.image, specs);
  if (has_ext(p, {".npy"})) {
    Tensor t = read_npy(path);
    if (specs.size() == 1 && specs[0].has_shape && t.rank() == specs[0].dims.size() + 1 && t.dim(0) > 0) {
      return std::make_shared<StackedNpySource>(path, std::move(t), specs);
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
