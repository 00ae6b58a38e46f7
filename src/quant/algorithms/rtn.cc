// RTN: round to nearest on each block's best grid (the clipping search of weight_quant.h; the
// exact optimum for ternary and binary). Needs no data.
#include <algorithm>
#include <exception>
#include <thread>

#include "../lowbit_internal.h"
#include "qtool/quant/weight_algorithms.h"

namespace qtool::quant {
namespace detail {
namespace {

/// quantize_rtn with its rows split over `threads` threads (RTN treats every row on its own, so
/// the result is identical to the single-threaded one).
QuantizedMatrix quantize_rtn_rows_parallel(std::span<const float> w, int64_t rows, int64_t cols, const QuantSpec& spec,
                                           int threads) {
  const int64_t parts = std::clamp<int64_t>(threads, 1, std::max<int64_t>(1, rows / 64));
  if (parts <= 1) return quantize_rtn(w, rows, cols, spec);
  std::vector<QuantizedMatrix> pieces(static_cast<size_t>(parts));
  std::vector<std::thread> pool;
  std::vector<std::exception_ptr> errors(static_cast<size_t>(parts));
  const int64_t per = (rows + parts - 1) / parts;
  for (int64_t p = 0; p < parts; ++p) {
    const int64_t r0 = std::min(rows, p * per), r1 = std::min(rows, r0 + per);
    pool.emplace_back([&, p, r0, r1] {
      try {
        pieces[static_cast<size_t>(p)] = quantize_rtn(w.subspan(static_cast<size_t>(r0 * cols), static_cast<size_t>((r1 - r0) * cols)),
                                                      r1 - r0, cols, spec);
      } catch (...) {
        errors[static_cast<size_t>(p)] = std::current_exception();
      }
    });
  }
  for (auto& th : pool) th.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  QuantizedMatrix q = std::move(pieces[0]);
  q.rows = rows;
  for (size_t p = 1; p < pieces.size(); ++p) {
    q.levels.insert(q.levels.end(), pieces[p].levels.begin(), pieces[p].levels.end());
    q.grids.insert(q.grids.end(), pieces[p].grids.begin(), pieces[p].grids.end());
    std::vector<int32_t>().swap(pieces[p].levels);
  }
  return q;
}

}  // namespace

std::vector<float> column_importance(const LayerJob& job) {
  const Target& t = job.t;
  if (job.patch_stats && job.patch_stats->hessian.samples() > 0 && !t.conv_blocked)
    return job.patch_stats->hessian.channel_energy();
  if (job.stats && job.stats->rows > 0 && t.kind != Kind::kGather && (t.kind != Kind::kConv || t.channels_first) &&
      job.stats->k == t.cols) {
    std::vector<float> e = job.stats->energy();
    if (job.awq_scales)
      for (int64_t c = 0; c < t.cols; ++c) e[c] /= (*job.awq_scales)[c] * (*job.awq_scales)[c];  // of x / s
    return e;
  }
  return {};
}

QuantizedMatrix quantize_palette_layer(const LayerJob& job, std::span<const float> importance) {
  const Target& t = job.t;
  PaletteSpec ps;
  ps.bits = t.format->bits;
  ps.group = t.format->group;
  ps.block = t.format->block_size;
  ps.fp16_table = job.spec.fp16_scale;
  ps.zero_entry = job.sparse();
  std::span<const uint8_t> pruned;
  if (job.pruned) pruned = *job.pruned;
  return quantize_palette(t.w, t.rows, t.cols, ps, importance, pruned, job.cfg.threads);
}

QuantizedMatrix quantize_rtn_layer(const LayerJob& job, std::string* label) {
  const Target& t = job.t;
  if (t.format->scheme == WeightScheme::kPalette) {
    const std::vector<float> importance = column_importance(job);
    *label = importance.empty() ? "k-means" : "weighted k-means";
    return quantize_palette_layer(job, importance);
  }
  *label = t.format->scheme == WeightScheme::kTernary  ? "optimal-ternary"
           : t.format->scheme == WeightScheme::kBinary ? "binary"
                                                       : "rtn";
  return quantize_rtn_rows_parallel(t.w, t.rows, t.cols, job.spec, job.cfg.threads);
}

}  // namespace detail

void register_rtn(std::vector<WeightAlgorithmInfo>& algorithms) {
  algorithms.push_back({WeightAlgorithm::kRtn, "rtn", "round to nearest, clipping search per block", false, false,
                        false, detail::quantize_rtn_layer});
}

}  // namespace qtool::quant
