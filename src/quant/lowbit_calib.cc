// Calibration statistics for GPTQ / AWQ / activation-weighted outliers, streamed through an
// executor observer: nothing but H, per-channel sums and a bounded sample of rows is kept.
#include <algorithm>
#include <cmath>

#include <spdlog/spdlog.h>

#include "lowbit_internal.h"
#include "qtool/core/error.h"
#include "qtool/data/sample_source.h"
#include "qtool/runtime/executor.h"

namespace qtool::quant::detail {

std::vector<float> InputStats::mean_abs() const {
  std::vector<float> m(k, 0.0f);
  if (rows > 0)
    for (int64_t c = 0; c < k; ++c) m[c] = static_cast<float>(sum_abs[c] / static_cast<double>(rows));
  return m;
}

std::vector<float> InputStats::energy() const {
  std::vector<float> m(k, 0.0f);
  if (rows > 0)
    for (int64_t c = 0; c < k; ++c) m[c] = static_cast<float>(sum_sq[c] / static_cast<double>(rows));
  return m;
}

namespace {

class StatsObserver : public runtime::Observer {
 public:
  StatsObserver(std::unordered_map<const ir::Value*, InputStats>& stats,
                const std::vector<std::pair<const ir::Value*, InputStats*>>& extra, int64_t rows_per_sample)
      : stats_(stats), extra_(extra), rows_per_sample_(rows_per_sample) {}

  void on_value(const ir::Value& value, const Tensor& tensor) override {
    auto it = stats_.find(&value);
    if (it != stats_.end()) add(it->second, value, tensor);
    for (const auto& [v, s] : extra_)
      if (v == &value) add(*s, value, tensor);
  }

  /// im2col rows of a 2-D NCHW input for the conv geometry of `s` (see InputStats::conv_geometry).
  static Tensor patches(const InputStats& s, const ir::Value& value, const Tensor& f) {
    const auto& g = s.conv_geometry;
    const int64_t kh = g[0], kw = g[1], sh = g[2], sw = g[3], pt = g[4], pl = g[5], pb = g[6], pr = g[7];
    const int64_t dh = g[8], dw = g[9];
    QTOOL_CHECK(f.rank() == 4 && f.dim(1) * kh * kw == s.k, ErrorCode::kInvalidInput,
                "calibration: '{}' has shape {}, but its {}x{} Conv expects {} patch elements", value.name(),
                shape_str(f.shape()), kh, kw, s.k);
    const int64_t n = f.dim(0), c_in = f.dim(1), h = f.dim(2), w = f.dim(3);
    const int64_t oh = std::max<int64_t>(1, (h + pt + pb - dh * (kh - 1) - 1) / sh + 1);
    const int64_t ow = std::max<int64_t>(1, (w + pl + pr - dw * (kw - 1) - 1) / sw + 1);
    const int64_t positions = oh * ow, take = std::min(positions, InputStats::kMaxPatchRows);
    std::vector<float> rows(n * take * s.k, 0.0f);
    const float* x = f.data<float>();
    for (int64_t b = 0; b < n; ++b)
      for (int64_t i = 0; i < take; ++i) {
        const int64_t p = take == positions ? i : (i * positions) / take;
        const int64_t oy = p / ow, ox = p % ow;
        float* row = rows.data() + (b * take + i) * s.k;
        for (int64_t c = 0; c < c_in; ++c)
          for (int64_t ky = 0; ky < kh; ++ky) {
            const int64_t iy = oy * sh - pt + ky * dh;
            if (iy < 0 || iy >= h) continue;
            for (int64_t kx = 0; kx < kw; ++kx) {
              const int64_t ix = ox * sw - pl + kx * dw;
              if (ix < 0 || ix >= w) continue;
              row[(c * kh + ky) * kw + kx] = x[((b * c_in + c) * h + iy) * w + ix];
            }
          }
      }
    return Tensor::from_vector<float>({n * take, s.k}, rows);
  }

  void add(InputStats& s, const ir::Value& value, const Tensor& tensor) {
    if (!dtype_is_float(tensor.dtype())) return;
    Tensor f = tensor.dtype() == DataType::kFloat ? tensor : tensor.to_float();
    if (!s.conv_geometry.empty()) {
      f = patches(s, value, f);
    } else if (s.channel_axis1) {
      // [N, C, spatial...] -> rows [N·spatial, C]: one row per pixel.
      QTOOL_CHECK(f.rank() >= 2 && f.dim(1) == s.k, ErrorCode::kInvalidInput,
                  "calibration: '{}' has shape {}, but its 1x1 Conv expects {} channels on axis 1", value.name(),
                  shape_str(f.shape()), s.k);
      const int64_t batch = f.dim(0), spatial = f.numel() / (batch * s.k);
      std::vector<float> rows(f.numel());
      const float* src = f.data<float>();
      for (int64_t b = 0; b < batch; ++b)
        for (int64_t c = 0; c < s.k; ++c)
          for (int64_t p = 0; p < spatial; ++p)
            rows[(b * spatial + p) * s.k + c] = src[(b * s.k + c) * spatial + p];
      f = Tensor::from_vector<float>({batch * spatial, s.k}, rows);
    }
    QTOOL_CHECK(f.rank() >= 1 && f.dim(-1) == s.k, ErrorCode::kInvalidInput,
                "calibration: '{}' has shape {}, but its weight layer expects {} input channels", value.name(),
                shape_str(f.shape()), s.k);
    if (s.sum_abs.empty()) {
      s.sum_abs.assign(s.k, 0.0);
      s.sum_sq.assign(s.k, 0.0);
      if (s.want_hessian) s.hessian = HessianAccumulator(s.k);
    }
    const int64_t n = f.numel() / s.k;
    const float* x = f.data<float>();
    for (int64_t r = 0; r < n; ++r)
      for (int64_t c = 0; c < s.k; ++c) {
        const double v = x[r * s.k + c];
        s.sum_abs[c] += std::fabs(v);
        s.sum_sq[c] += v * v;
      }
    s.rows += n;
    if (s.want_hessian) s.hessian.add(std::span<const float>(x, n * s.k), n);
    // Keep evenly spaced rows of this sample (deterministic), up to the per-sample budget.
    const int64_t take = std::min(n, rows_per_sample_);
    for (int64_t i = 0; i < take; ++i) {
      const int64_t r = take == n ? i : (i * n) / take;
      s.kept.insert(s.kept.end(), x + r * s.k, x + (r + 1) * s.k);
      ++s.kept_rows;
    }
  }

 private:
  std::unordered_map<const ir::Value*, InputStats>& stats_;
  const std::vector<std::pair<const ir::Value*, InputStats*>>& extra_;
  int64_t rows_per_sample_;
};

}  // namespace

void collect_input_stats(const ir::Model& model, const CalibrationInputs& calib, int threads, int64_t max_rows,
                         std::unordered_map<const ir::Value*, InputStats>& stats,
                         const std::vector<std::pair<const ir::Value*, InputStats*>>& extra) {
  size_t count = calib.source ? calib.source->size() : calib.samples.size();
  if (calib.max_samples > 0) count = std::min(count, calib.max_samples);
  QTOOL_CHECK(count > 0, ErrorCode::kConfig, "weight-only calibration: no calibration samples");
  runtime::ExecutorOptions opts;
  opts.threads = std::max(1, threads);
  runtime::Executor exec(model, opts);
  const int64_t per_sample = std::max<int64_t>(1, max_rows / static_cast<int64_t>(count));
  StatsObserver obs(stats, extra, per_sample);
  for (size_t i = 0; i < count; ++i) {
    std::map<std::string, Tensor> sample = calib.source ? calib.source->load(i) : calib.samples[i];
    // Graph inputs read directly by a weight layer are not "produced": feed them to the observer here.
    for (const auto& [name, t] : sample) {
      const ir::Value* v = model.graph->find_value(name);
      if (v) obs.on_value(*v, t);
    }
    with_context(fmt::format("while running calibration sample {} of {}", i + 1, count),
                 [&] { exec.run(sample, &obs); });
  }
  spdlog::debug("weight-only calibration: {} samples, {} layer inputs observed", count, stats.size());
}

}  // namespace qtool::quant::detail
