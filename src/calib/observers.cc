// Streaming per-tensor statistics (see observers.h).
#include "qtool/calib/observers.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "qtool/core/simd_clones.h"

namespace qtool::calib {

int resolve_channel_axis(int option, size_t rank) {
  if (option >= 0) return static_cast<size_t>(option) < rank ? option : -1;
  if (rank == 4 || rank == 5) return 1;
  if (rank == 2 || rank == 3) return static_cast<int>(rank) - 1;
  return -1;
}

double TensorStats::stddev() const { return count > 0 ? std::sqrt(m2 / static_cast<double>(count)) : 0.0; }
double TensorStats::absmax() const { return std::max(std::fabs(min), std::fabs(max)); }

namespace {

struct BlockStats {
  float mn = std::numeric_limits<float>::infinity();
  float mx = -std::numeric_limits<float>::infinity();
  double s1 = 0.0;  // sum of (x - shift)
  double s2 = 0.0;  // sum of (x - shift)^2
  uint64_t n = 0;
};

// One pass: min, max and shifted first/second moments (shift = a value near the mean, so that
// M2 = s2 - s1^2/n loses no precision in double). The finite fast path keeps 8 lanes of float
// partial sums over chunks of 512 values (relative error ~1e-5 on the moments, which only feed
// the reported mean and std) and adds each chunk into double: the loop vectorizes.
template <bool kCheckFinite>
inline __attribute__((always_inline)) void scan_block(const float* p, int64_t len, double shift, BlockStats& b) {
  float mn = b.mn, mx = b.mx;
  double a1 = 0.0, a2 = 0.0;
  uint64_t n = 0;
  int64_t i = 0;
  if constexpr (!kCheckFinite) {
    // GCC/Clang vector extensions: 8 float lanes (one AVX2 register, two SSE ones).
    typedef float v8f __attribute__((vector_size(32)));
    constexpr int kLanes = 8;
    constexpr int64_t kChunk = 512;
    v8f vmn = {mn, mn, mn, mn, mn, mn, mn, mn}, vmx = {mx, mx, mx, mx, mx, mx, mx, mx};
    const float fs = static_cast<float>(shift);
    const v8f vs = {fs, fs, fs, fs, fs, fs, fs, fs};
    while (i + kLanes <= len) {
      const int64_t end = std::min(len, i + kChunk);
      v8f f1 = {}, f2 = {};
      for (; i + kLanes <= end; i += kLanes) {
        v8f v;
        std::memcpy(&v, p + i, sizeof v);
        vmn = v < vmn ? v : vmn;
        vmx = v > vmx ? v : vmx;
        const v8f d = v - vs;
        f1 += d;
        f2 += d * d;
      }
      for (int k = 0; k < kLanes; ++k) a1 += f1[k], a2 += f2[k];
    }
    for (int k = 0; k < kLanes; ++k) mn = std::min(mn, vmn[k]), mx = std::max(mx, vmx[k]);
  }
  for (; i < len; ++i) {
    const float v = p[i];
    if constexpr (kCheckFinite) {
      if (!std::isfinite(v)) continue;
    }
    mn = v < mn ? v : mn;
    mx = v > mx ? v : mx;
    const double d = static_cast<double>(v) - shift;
    a1 += d;
    a2 += d * d;
    ++n;
  }
  b.mn = mn;
  b.mx = mx;
  b.s1 += a1;
  b.s2 += a2;
  b.n += kCheckFinite ? n : static_cast<uint64_t>(len);
}

// The scans, built for AVX2 as well as the portable baseline (core/simd_clones.h).

QTOOL_SIMD_CLONES void scan_finite(const float* p, int64_t len, double shift, BlockStats& b) {
  scan_block<false>(p, len, shift, b);
}
QTOOL_SIMD_CLONES void scan_checked(const float* p, int64_t len, double shift, BlockStats& b) {
  scan_block<true>(p, len, shift, b);
}

/// Per-channel min/max of `rows` rows of C channels (channel-last layout): vectorizes across
/// the channels.
QTOOL_SIMD_CLONES void minmax_rows(const float* p, int64_t rows, int64_t C, float* cmin, float* cmax) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = p + r * C;
    for (int64_t c = 0; c < C; ++c) {
      cmin[c] = row[c] < cmin[c] ? row[c] : cmin[c];
      cmax[c] = row[c] > cmax[c] ? row[c] : cmax[c];
    }
  }
}

/// Adds n finite values with extremes [mn, mx], mean `mean_b` and M2 `m2_b` to s (Chan et al.).
void add_moments(TensorStats& s, uint64_t n, double mn, double mx, double mean_b, double m2_b) {
  if (s.count == 0) {
    s.min = mn;
    s.max = mx;
    s.mean = mean_b;
    s.m2 = m2_b;
  } else {
    s.min = std::min(s.min, mn);
    s.max = std::max(s.max, mx);
    const double na = static_cast<double>(s.count), nb = static_cast<double>(n), nn = na + nb;
    const double d = mean_b - s.mean;
    s.mean += d * nb / nn;
    s.m2 += m2_b + d * d * na * nb / nn;
  }
  s.count += n;
}

}  // namespace

void TensorStats::observe(const Tensor& in, const ObserverOptions& o) {
  const Tensor t = in.dtype() == DataType::kFloat ? in : in.to_float();
  const float* data = t.data<float>();
  const int64_t n = t.numel();
  shape = t.shape();
  ++observations;
  if (n == 0) return;

  // Per-channel layout: outer x C x inner.
  int axis = o.per_channel ? resolve_channel_axis(o.channel_axis, t.rank()) : -1;
  if (axis >= 0 && t.dim(axis) > o.max_channels) axis = -1;
  if (axis >= 0 && channel_axis >= 0 && (axis != channel_axis || t.dim(axis) != static_cast<int64_t>(channel_min.size()))) {
    axis = -1;  // shape changed between observations: per-channel statistics no longer line up
    channel_axis = -1;
    channel_min.clear();
    channel_max.clear();
  } else if (axis >= 0 && observations > 1 && channel_axis < 0) {
    axis = -1;  // dropped earlier; stays dropped
  }
  const int64_t C = axis >= 0 ? t.dim(axis) : 1;
  int64_t outer = 1, inner = 1;
  if (axis >= 0) {
    for (int i = 0; i < axis; ++i) outer *= t.dim(i);
    for (size_t i = static_cast<size_t>(axis) + 1; i < t.rank(); ++i) inner *= t.dim(static_cast<int>(i));
  } else {
    inner = n;
  }
  if (axis >= 0 && channel_axis < 0) {
    channel_axis = axis;
    channel_min.assign(static_cast<size_t>(C), std::numeric_limits<float>::infinity());
    channel_max.assign(static_cast<size_t>(C), -std::numeric_limits<float>::infinity());
  }

  // One pass: per-channel min/max and shifted moments. The fast path assumes finite data and
  // checks the sums afterwards.
  double shift = count > 0 ? mean : static_cast<double>(data[0]);
  if (!std::isfinite(shift)) shift = 0.0;
  BlockStats total;
  auto pass1 = [&]<bool kCheck>() {
    total = BlockStats{};
    for (int64_t ob = 0; ob < outer; ++ob) {
      for (int64_t c = 0; c < C; ++c) {
        BlockStats b;
        if constexpr (kCheck) scan_checked(data + (ob * C + c) * inner, inner, shift, b);
        else scan_finite(data + (ob * C + c) * inner, inner, shift, b);
        if (axis >= 0 && b.n > 0) {
          channel_min[static_cast<size_t>(c)] = std::min(channel_min[static_cast<size_t>(c)], b.mn);
          channel_max[static_cast<size_t>(c)] = std::max(channel_max[static_cast<size_t>(c)], b.mx);
        }
        total.mn = std::min(total.mn, b.mn);
        total.mx = std::max(total.mx, b.mx);
        total.s1 += b.s1;
        total.s2 += b.s2;
        total.n += b.n;
      }
    }
  };
  const std::vector<float> saved_min = channel_min, saved_max = channel_max;
  if (axis >= 0 && inner == 1) {
    // Channel-last ([batch, seq, hidden]: one value per channel per row): one scan of the whole
    // tensor for the moments and the extremes, then a vectorized min/max across the channels of
    // each row, instead of a full scan (and its reductions) per single value. Same extremes; the
    // moments' float partial sums group differently (relative differences ~1e-6). (Tried for
    // planes under 1024 values too: the second pass over the data cost more than it saved.)
    total = BlockStats{};
    scan_finite(data, n, shift, total);
    if (std::isfinite(total.s2) && std::isfinite(total.mn) && std::isfinite(total.mx)) {
      minmax_rows(data, outer, C, channel_min.data(), channel_max.data());
    }
  } else {
    pass1.template operator()<false>();
  }
  const bool all_finite = std::isfinite(total.s2) && std::isfinite(total.mn) && std::isfinite(total.mx);
  if (!all_finite) {  // NaN/inf present: redo, skipping them
    channel_min = saved_min;
    channel_max = saved_max;
    pass1.template operator()<true>();
  }
  if (total.n == 0) {
    if (o.histogram) hist.add(data, static_cast<size_t>(n));  // counts the non-finite values
    return;
  }

  // Batch mean and M2 from the shifted sums, then Chan's merge.
  const double nb_d = static_cast<double>(total.n);
  add_moments(*this, total.n, total.mn, total.mx, shift + total.s1 / nb_d,
              std::max(0.0, total.s2 - total.s1 * total.s1 / nb_d));
  if (o.histogram) {
    if (all_finite) hist.add_finite(data, static_cast<size_t>(n), total.mn, total.mx);
    else hist.add(data, static_cast<size_t>(n));
  }
}

void TensorStats::merge(const TensorStats& o) {
  if (o.observations == 0) return;
  if (observations == 0) {
    *this = TensorStats(hist.max_bins());
    value = o.value;
    name = o.name;
    dtype = o.dtype;
    channel_axis = o.channel_axis;
    channel_min = o.channel_min;
    channel_max = o.channel_max;
  } else if (channel_axis < 0 || o.channel_axis != channel_axis || o.channel_min.size() != channel_min.size()) {
    channel_axis = -1;
    channel_min.clear();
    channel_max.clear();
  } else {
    for (size_t c = 0; c < channel_min.size(); ++c) {
      channel_min[c] = std::min(channel_min[c], o.channel_min[c]);
      channel_max[c] = std::max(channel_max[c], o.channel_max[c]);
    }
  }
  shape = o.shape;
  observations += o.observations;
  if (o.count > 0) add_moments(*this, o.count, o.min, o.max, o.mean, o.m2);
  hist.merge(o.hist);
}

void StatsObserver::merge(const StatsObserver& other) {
  for (const auto& o : other.order_) {
    TensorStats*& s = by_value_[o->value];
    if (!s) {
      order_.push_back(std::make_unique<TensorStats>(options_.bins));
      s = order_.back().get();
    }
    s->merge(*o);
  }
}

void StatsObserver::begin_batch(size_t) { ++batch_; }

void StatsObserver::on_value(const ir::Value& value, const Tensor& tensor) {
  const DataType dt = tensor.dtype();
  if (dt != DataType::kFloat && dt != DataType::kFloat16 && dt != DataType::kBFloat16 && dt != DataType::kDouble) return;
  if (value.is_initializer()) return;
  if (value.is_graph_input() && !options_.observe_inputs) return;
  if (value.owner() == nullptr || value.owner()->parent() == nullptr) {
    auto [it, fresh] = last_batch_.try_emplace(&value, batch_);
    if (!fresh) {
      if (it->second == batch_) return;  // already counted in this batch
      it->second = batch_;
    }
  }
  TensorStats*& s = by_value_[&value];
  if (!s) {
    order_.push_back(std::make_unique<TensorStats>(options_.bins));
    s = order_.back().get();
    s->value = &value;
    s->name = value.name();
    s->dtype = dt;
  }
  s->observe(tensor, options_);
}

const TensorStats* StatsObserver::find(const ir::Value* value) const {
  auto it = by_value_.find(value);
  return it == by_value_.end() ? nullptr : it->second;
}

size_t StatsObserver::memory_bytes() const {
  size_t b = 0;
  for (const auto& s : order_) {
    b += sizeof(TensorStats) + s->name.size() + s->hist.counts().capacity() * sizeof(uint64_t) +
         (s->channel_min.capacity() + s->channel_max.capacity()) * sizeof(float);
  }
  return b;
}

}  // namespace qtool::calib
