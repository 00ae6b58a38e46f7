// Calibration and evaluation samples: where they come from and how they are matched to a
// model's inputs.
//
// A SampleSource is a random-access list of samples (random access so that selection,
// splitting, shuffling and cycling are just index maps, see SelectedSource). Each sample is a
// map from the model's runtime input names to tensors that already have the shape and type
// the model expects (match_inputs): a sample loaded from disk is matched by input name when
// the file names its arrays (.npz, .pb, sub-folders), else by position.
//
// Memory: a source holds at most one decoded sample at a time (plus small per-file metadata),
// except the IDX, stacked .npy and token-stream sources, whose whole file is the unit of storage
// (MNIST's test set is 7.8 MB; a token stream a few MB).
//
// Files are untrusted (core/limits.h): every size a file declares (a .npy header, a ZIP directory,
// an .npz member's header, IDX dims, an image header) is checked against the file's real size and
// the limits before anything is allocated or inflated; one sample may take at most
// sample_byte_limit() bytes (a quarter of --max-memory), a whole-file source max_memory_bytes; and a
// sample whose header does not fit the model input it feeds is refused from the header, naming the
// file (and member) and the input. Only regular files are read: a FIFO or device is kIo at once.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "qtool/core/npy.h"
#include "qtool/core/tensor.h"
#include "qtool/data/image.h"
#include "qtool/ir/graph.h"

namespace qtool::data {

/// One sample: model input name -> tensor.
using Sample = std::map<std::string, Tensor>;

/// What the model expects for one runtime input (graph input that is not an initializer).
struct InputSpec {
  std::string name;
  DataType dtype = DataType::kFloat;
  bool has_shape = false;          ///< false: any rank
  std::vector<ir::Dim> dims;       ///< Dim::known() false for symbolic/unknown dims
  /// "[batch,3,244,244]" for messages.
  std::string shape_str() const;
  /// True when dim 0 exists and is not a fixed number: samples may be concatenated along it.
  bool batch_dynamic() const { return has_shape && !dims.empty() && !dims[0].known(); }
};

/// The runtime inputs of a model's main graph, in graph order.
std::vector<InputSpec> input_specs(const ir::Model& model);

/// Throws kInvalidInput when one sample needs more than sample_byte_limit() bytes (a quarter of
/// --max-memory): "<subject> needs N bytes, over the per-sample limit of M bytes".
void check_sample_bytes(uint64_t bytes, const std::string& subject);

/// Matches raw tensors loaded from `what` (a file or folder, named in errors) to the model's inputs.
///
/// `raw` holds (name, tensor) pairs in file order; names may be empty. Every model input is matched
/// by name when all raw tensors are named after model inputs, else by position (then the counts must
/// be equal). Each tensor is then checked against its InputSpec:
///  - dtype: equal, or a lossless widening (any integer of <= 32 bits -> int64/int32 of more bits,
///    float16/bfloat16 -> float32), which is applied; anything else is kInvalidInput naming file and input;
///  - shape: each known model dim must match; a tensor of rank one less than the model input whose
///    dims match dims[1:] gets a leading batch dimension of 1.
Sample match_inputs(std::vector<std::pair<std::string, Tensor>> raw, const std::vector<InputSpec>& specs,
                    const std::string& what);

/// A random-access list of samples.
class SampleSource {
 public:
  virtual ~SampleSource() = default;
  /// Number of samples.
  virtual size_t size() const = 0;
  /// Loads sample i (0 <= i < size()), matched to the model inputs. Errors name the file.
  virtual Sample load(size_t i) = 0;
  /// Where sample i comes from ("images/n01440764_tench.JPEG"), for messages.
  virtual std::string describe(size_t i) const = 0;
  /// What kind of source this is ("folder of .npy files", "JPEG/PNG images", ...).
  virtual std::string kind() const = 0;
};

/// How to pick samples from a source (applied in this order: split, list, shuffle, count).
struct SelectOptions {
  /// "all", "even" (positions 0,2,4,... of the sorted list: the shared data's calibration half) or
  /// "odd" (positions 1,3,5,...: the evaluation half).
  std::string split = "all";
  /// If not empty: a text file with one sample name per line (as given by describe()'s last path
  /// component); only those are kept, in the file's order.
  std::string list_file;
  /// Shuffle with a seeded generator (mt19937_64, Fisher-Yates), reproducible across runs.
  bool shuffle = false;
  uint64_t seed = 0;
  /// Number of samples; 0 = all available (capped at kMaxDefaultSamples).
  size_t samples = 0;
  /// Allow samples > available by cycling through the selection again (benchmarks only: repeated
  /// samples add no information). Without it a larger request is reduced with a warning.
  bool repeat_ok = false;
};

/// Default cap on the number of samples: 500-1000 diverse samples is the field's guidance, and
/// more cost time without improving ranges.
inline constexpr size_t kMaxDefaultSamples = 1000;
/// Below this many samples a calibration set is warned about.
inline constexpr size_t kRecommendedMinSamples = 500;

/// Samples kept once loaded, up to a budget of tensor bytes (the first ones loaded), returned again
/// without decoding; the tensors are shared with the callers, which never modify an input.
class SampleMemo {
 public:
  explicit SampleMemo(size_t max_bytes = 0) : max_bytes_(max_bytes) {}
  void set_budget(size_t max_bytes) { max_bytes_ = max_bytes; }
  /// Sample i of `source`: kept, or loaded (and kept while the budget has room).
  Sample load(SampleSource& source, size_t i);

 private:
  size_t max_bytes_ = 0, bytes_ = 0;
  std::map<size_t, Sample> kept_;
};

/// A view of another source through a list of indices.
class SelectedSource final : public SampleSource {
 public:
  SelectedSource(std::shared_ptr<SampleSource> base, std::vector<size_t> indices)
      : base_(std::move(base)), indices_(std::move(indices)) {}
  size_t size() const override { return indices_.size(); }
  Sample load(size_t i) override;
  std::string describe(size_t i) const override { return base_->describe(indices_.at(i)); }
  std::string kind() const override { return base_->kind(); }
  const std::vector<size_t>& indices() const { return indices_; }
  /// Keeps the samples it loads, up to `max_bytes` of tensors (the first ones loaded), and returns
  /// them again without decoding: for a selection read many times (the guard's held-out samples).
  /// The tensors are shared with the callers, which never modify an input.
  void keep_loaded(size_t max_bytes) { memo_.set_budget(max_bytes); }

 private:
  std::shared_ptr<SampleSource> base_;
  std::vector<size_t> indices_;
  SampleMemo memo_;
};

/// Applies `options` to `base` and returns the selection. Throws kConfig for a bad split name,
/// a list naming a sample that does not exist, or an empty result.
std::shared_ptr<SelectedSource> select_samples(std::shared_ptr<SampleSource> base, const SelectOptions& options);

/// Everything that decides how a --calib PATH is read.
struct SourceOptions {
  /// Image preprocessing (used for image folders and IDX files).
  ImagePreprocess image;
  /// Sequence length for token streams (.i32); 0 = the model input's static dim 1.
  int64_t seq_len = 0;
};

/// Opens `path` for a model with inputs `specs`. Recognised layouts (first match wins):
///  - a file: .npz (one sample), .npy (one sample, or N stacked samples when its rank is the model
///    input's rank + 1 and the model input has a fixed batch of 1 or a dynamic batch), .i32 (token
///    stream), an IDX file (MNIST, optionally .gz), a .pb TensorProto, a JPEG/PNG image;
///  - a folder holding test_data_set_* folders (ONNX model-zoo layout, input_k.pb each);
///  - a folder holding one sub-folder per model input, named after it (multi-input models; the k-th
///    file of each sub-folder, sorted by name, forms sample k);
///  - a folder of .npz files, of .npy files (single-input models), of .pb files (single-input),
///    of JPEG/PNG images, or of .i32 token streams.
/// Files are sorted by name (byte order); other files (labels.csv, README) are ignored.
/// Throws kIo for a missing path, kInvalidInput for a folder with nothing qtool can read.
std::shared_ptr<SampleSource> open_sample_source(const std::string& path, const std::vector<InputSpec>& specs,
                                                 const SourceOptions& options);

/// Called by the .npz reader for each member as soon as its .npy header is known, before its data
/// is allocated or inflated: `names` are all the archive's array names (".npy" removed), `index` the
/// member's position. Throw to refuse the member (the sample sources check the model input here).
using NpzHeaderCheck =
    std::function<void(const std::vector<std::string>& names, size_t index, const NpyHeader& header)>;

/// Parses a .npz archive held in memory (numpy.savez: ZIP stored; numpy.savez_compressed: deflate)
/// into (name, tensor) pairs in archive order; names lose their ".npy" suffix; `what` names it in
/// errors. ZIP64 fields are understood; CRC-32 is verified. The bytes are untrusted (fuzzers call this):
///  - every offset and size in the ZIP directories is checked against bytes.size();
///  - a stored member's two sizes must agree; a deflate member may not declare more than
///    1032 x its compressed size + 1 KiB (deflate's maximum expansion);
///  - each member's .npy header is parsed from its first bytes (at most kMaxNpyHeaderBytes inflated),
///    and what it declares must fill the member exactly, fit the limits (check_npy_data) and, with
///    the members before it, the per-sample limit (check_sample_bytes: an .npz is one sample); then
///    `check` runs; only then is the array allocated and the rest inflated into it, in a 64-bit
///    streaming loop that stops as soon as the output would pass the declared size.
/// Throws kInvalidInput (kUnsupported for other ZIP methods) naming `what` and the member.
std::vector<std::pair<std::string, Tensor>> parse_npz(std::string_view bytes, const std::string& what,
                                                      const NpzHeaderCheck& check = {});
/// Reads a .npz file (a regular file, else kIo) and parses it with parse_npz.
std::vector<std::pair<std::string, Tensor>> read_npz(const std::string& path, const NpzHeaderCheck& check = {});
/// Writes a .npz archive readable by numpy.load (compress = deflate like savez_compressed).
void write_npz(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& arrays,
               bool compress = false);

/// Reads an IDX file (MNIST's format; gzip-compressed or not) into a tensor of its element type
/// (ubyte -> uint8, int -> int32, float -> float32...) and dims. The dims are checked against the
/// file's size (x1032 when gzip-compressed) and the limits before the data is allocated; kIo for a
/// file that is not a regular file, kInvalidInput naming the file otherwise.
Tensor read_idx(const std::string& path);

/// Reads a raw little-endian int32 token stream (.i32); its size must be a multiple of 4 and within
/// max_memory_bytes.
std::vector<int32_t> read_token_stream(const std::string& path);

}  // namespace qtool::data
