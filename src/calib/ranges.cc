// Ranges JSON (schema in ranges.h).
#include "qtool/calib/ranges.h"

#include <limits>

#include <cmath>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "qtool/core/npy.h"

namespace qtool::calib {

using nlohmann::json;

std::vector<float> TensorRange::per_channel_absmax() const {
  std::vector<float> out(per_channel_min.size());
  for (size_t i = 0; i < out.size() && i < per_channel_max.size(); ++i) {
    out[i] = std::max(std::fabs(per_channel_min[i]), std::fabs(per_channel_max[i]));
  }
  return out;
}

const TensorRange* RangesFile::find(const std::string& name) const {
  for (const auto& t : tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

namespace {
const std::pair<const char*, double> kPercentiles[] = {
    {"0.001", 0.00001}, {"0.01", 0.0001}, {"0.1", 0.001},   {"1", 0.01},        {"50", 0.5},
    {"99", 0.99},       {"99.9", 0.999},  {"99.99", 0.9999}, {"99.999", 0.99999},
};
}  // namespace

TensorRange make_tensor_range(const TensorStats& s, const Range& r, int summary_bins) {
  TensorRange t;
  t.name = s.name;
  t.dtype = std::string(dtype_name(s.dtype));
  t.shape = s.shape;
  t.count = s.count;
  t.min = s.min;
  t.max = s.max;
  t.mean = s.mean;
  t.std = s.stddev();
  t.range_min = r.lo;
  t.range_max = r.hi;
  t.channel_axis = s.channel_axis;
  t.per_channel_min = s.channel_min;
  t.per_channel_max = s.channel_max;
  t.nonfinite = s.hist.nonfinite();
  const Histogram& h = s.hist;
  if (!h.empty()) {
    // Merge aligned groups of 2^d bins (exact) until at most summary_bins remain.
    const int64_t last = h.first_bin() + static_cast<int64_t>(h.counts().size()) - 1;
    int d = 0;
    while (((last >> d) - (h.first_bin() >> d) + 1) > summary_bins) ++d;
    const int64_t f = h.first_bin() >> d;
    t.hist_counts.assign(static_cast<size_t>((last >> d) - f + 1), 0);
    for (size_t i = 0; i < h.counts().size(); ++i) {
      t.hist_counts[static_cast<size_t>(((h.first_bin() + static_cast<int64_t>(i)) >> d) - f)] += h.counts()[i];
    }
    t.hist_lo = std::ldexp(static_cast<double>(f), h.exponent() + d);
    t.hist_hi = std::ldexp(static_cast<double>(f + static_cast<int64_t>(t.hist_counts.size())), h.exponent() + d);
    for (const auto& [key, q] : kPercentiles) t.percentiles[key] = h.quantile(q);
  }
  return t;
}

std::string ranges_to_json(const RangesFile& f) {
  json j;
  j["format"] = "qtool-ranges";
  j["version"] = f.version;
  j["model"] = {{"name", f.model_name}, {"fingerprint", f.model_fingerprint}};
  j["method"] = f.method;
  j["config"] = {{"bits", f.config.bits},
                 {"symmetric", f.config.symmetric},
                 {"percentile", f.config.percentile},
                 {"mse_candidates", f.config.mse_candidates},
                 {"bins", f.bins},
                 {"channel_axis", f.channel_axis}};
  j["samples"] = f.samples;
  j["source"] = f.source;
  j["preprocess"] = f.preprocess;
  json ts = json::array();
  for (const auto& t : f.tensors) {
    json e;
    e["name"] = t.name;
    e["dtype"] = t.dtype;
    e["shape"] = t.shape;
    e["count"] = t.count;
    e["min"] = t.min;
    e["max"] = t.max;
    e["mean"] = t.mean;
    e["std"] = t.std;
    e["range_min"] = t.range_min;
    e["range_max"] = t.range_max;
    if (t.channel_axis >= 0) {
      e["channel_axis"] = t.channel_axis;
      e["per_channel_min"] = t.per_channel_min;
      e["per_channel_max"] = t.per_channel_max;
      e["per_channel_absmax"] = t.per_channel_absmax();
    }
    if (!t.hist_counts.empty()) e["histogram"] = {{"lo", t.hist_lo}, {"hi", t.hist_hi}, {"counts", t.hist_counts}};
    if (!t.percentiles.empty()) e["percentiles"] = t.percentiles;
    e["nonfinite"] = t.nonfinite;
    ts.push_back(std::move(e));
  }
  j["tensors"] = std::move(ts);
  return j.dump(1) + "\n";
}

void save_ranges(const std::string& path, const RangesFile& f) { write_file_atomic(path, ranges_to_json(f)); }

namespace {
/// An integer field: a JSON integer within int's range (a float such as 3e83 converted to int would
/// be undefined behaviour; fuzz_config found it).
int small_int(const json& v, const char* key, const std::string& what) {
  const bool ok = v.is_number_integer() && v.get<int64_t>() >= std::numeric_limits<int>::min() &&
                  v.get<int64_t>() <= std::numeric_limits<int>::max();
  if (!ok) fail(ErrorCode::kInvalidInput, "'{}': \"{}\" must be an integer, got {}", what, key, v.dump());
  return static_cast<int>(v.get<int64_t>());
}
/// A list of floats: numbers within float's range (1e308 -> float would be undefined behaviour).
std::vector<float> float_list(const json& v, const char* key, const std::string& what) {
  if (!v.is_array()) fail(ErrorCode::kInvalidInput, "'{}': \"{}\" must be an array", what, key);
  std::vector<float> out;
  for (const json& x : v) {
    const double d = x.is_number() ? x.get<double>() : std::nan("");
    if (!(std::fabs(d) <= std::numeric_limits<float>::max()))
      fail(ErrorCode::kInvalidInput, "'{}': \"{}\" holds a value that is not a finite float", what, key);
    out.push_back(static_cast<float>(d));
  }
  return out;
}
}  // namespace

RangesFile parse_ranges(const std::string& text, const std::string& what) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    fail(ErrorCode::kInvalidInput, "'{}' is not valid JSON: {}", what, e.what());
  }
  RangesFile f;
  std::string where = "top level";
  try {
    if (!j.is_object() || j.value("format", "") != "qtool-ranges") {
      fail(ErrorCode::kInvalidInput, "'{}' is not a qtool ranges file (missing \"format\": \"qtool-ranges\")", what);
    }
    f.version = small_int(j.at("version"), "version", what);
    if (f.version > kRangesVersion || f.version < 1) {
      fail(ErrorCode::kUnsupported, "'{}' has ranges format version {}; this qtool reads version {}", what, f.version,
           kRangesVersion);
    }
    if (j.contains("model")) {
      f.model_name = j["model"].value("name", "");
      f.model_fingerprint = j["model"].value("fingerprint", "");
    }
    f.method = j.value("method", "");
    if (j.contains("config")) {
      const json& c = j["config"];
      f.config.bits = c.contains("bits") ? small_int(c["bits"], "bits", what) : 8;
      f.config.symmetric = c.value("symmetric", true);
      f.config.percentile = c.value("percentile", 99.999);
      f.config.mse_candidates = c.contains("mse_candidates") ? small_int(c["mse_candidates"], "mse_candidates", what) : 512;
      f.bins = c.contains("bins") ? small_int(c["bins"], "bins", what) : 4096;
      f.channel_axis = c.contains("channel_axis") ? small_int(c["channel_axis"], "channel_axis", what) : -1;
    }
    if (j.contains("samples")) {
      const json& n = j["samples"];
      if (!n.is_number_unsigned() && !(n.is_number_integer() && n.get<int64_t>() >= 0))
        fail(ErrorCode::kInvalidInput, "'{}': \"samples\" must be a non-negative integer", what);
      f.samples = n.get<uint64_t>();
    }
    f.source = j.value("source", "");
    f.preprocess = j.value("preprocess", "");
    for (const json& e : j.at("tensors")) {
      TensorRange t;
      t.name = e.at("name").get<std::string>();
      where = "tensor '" + t.name + "'";
      t.dtype = e.value("dtype", "float32");
      if (e.contains("shape")) t.shape = e["shape"].get<Shape>();
      t.count = e.value("count", uint64_t{0});
      t.min = e.at("min").get<double>();
      t.max = e.at("max").get<double>();
      t.mean = e.value("mean", 0.0);
      t.std = e.value("std", 0.0);
      t.range_min = e.at("range_min").get<double>();
      t.range_max = e.at("range_max").get<double>();
      if (!(t.range_min <= t.range_max)) {
        fail(ErrorCode::kInvalidInput, "'{}': {} has range_min {} > range_max {}", what, where, t.range_min,
             t.range_max);
      }
      if (e.contains("channel_axis")) {
        t.channel_axis = small_int(e["channel_axis"], "channel_axis", what);
        t.per_channel_min = float_list(e.at("per_channel_min"), "per_channel_min", what);
        t.per_channel_max = float_list(e.at("per_channel_max"), "per_channel_max", what);
        if (t.per_channel_min.size() != t.per_channel_max.size()) {
          fail(ErrorCode::kInvalidInput, "'{}': {} has {} per_channel_min but {} per_channel_max values", what, where,
               t.per_channel_min.size(), t.per_channel_max.size());
        }
      }
      if (e.contains("histogram")) {
        t.hist_lo = e["histogram"].at("lo").get<double>();
        t.hist_hi = e["histogram"].at("hi").get<double>();
        const json& counts = e["histogram"].at("counts");
        if (!counts.is_array()) fail(ErrorCode::kInvalidInput, "'{}': histogram counts must be an array", what);
        t.hist_counts.clear();
        for (const json& c : counts) {  // integers only: -1e308 -> uint64 would be undefined (fuzz_config)
          if (!c.is_number_unsigned() && !(c.is_number_integer() && c.get<int64_t>() >= 0))
            fail(ErrorCode::kInvalidInput, "'{}': histogram counts must be non-negative integers", what);
          t.hist_counts.push_back(c.get<uint64_t>());
        }
      }
      if (e.contains("percentiles")) t.percentiles = e["percentiles"].get<std::map<std::string, double>>();
      t.nonfinite = e.value("nonfinite", uint64_t{0});
      f.tensors.push_back(std::move(t));
    }
  } catch (const json::exception& e) {
    fail(ErrorCode::kInvalidInput, "'{}': bad or missing field in {}: {}", what, where, e.what());
  }
  return f;
}

RangesFile load_ranges(const std::string& path) {
  return with_context(fmt::format("while reading ranges '{}'", path),
                      [&] { return parse_ranges(read_file(path), path); });
}

std::string file_fingerprint(const std::string& path) {
  const std::string b = read_file(path);
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : b) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return fmt::format("fnv1a64:{:016x}", h);
}

}  // namespace qtool::calib
