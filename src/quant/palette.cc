// Weighted 1-D k-means and palettized matrices (see palette.h).
#include "qtool/quant/palette.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <limits>
#include <numeric>
#include <thread>

#include <Eigen/Cholesky>
#include <Eigen/Core>

#include "qtool/core/dtype.h"
#include "qtool/core/error.h"

namespace qtool::quant {
namespace {

/// splitmix64: a fixed, portable random stream (std:: distributions differ between libraries).
struct Rng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return static_cast<double>(next() >> 11) * (1.0 / 9007199254740992.0); }
};

/// The distinct values, ascending, with their summed weights and prefix sums of w, w·x, w·x².
struct Sorted {
  std::vector<double> x, w;
  std::vector<double> pw, pwx, pwxx;  ///< size n + 1
  size_t size() const { return x.size(); }
  /// Σ over [a, b) of w, w·x and the weighted squared error around the best centroid.
  double weight(size_t a, size_t b) const { return pw[b] - pw[a]; }
  double mean(size_t a, size_t b) const { return (pwx[b] - pwx[a]) / (pw[b] - pw[a]); }
  double cost_around(size_t a, size_t b, double c) const {
    // Σ w (x − c)² = Σwx² − 2cΣwx + c²Σw
    const double v = (pwxx[b] - pwxx[a]) - 2.0 * c * (pwx[b] - pwx[a]) + c * c * (pw[b] - pw[a]);
    return std::max(0.0, v);
  }
};

Sorted sort_values(std::span<const float> x, std::span<const float> e) {
  std::vector<std::pair<float, float>> v(x.size());
  for (size_t i = 0; i < x.size(); ++i) v[i] = {x[i], e.empty() ? 1.0f : std::max(0.0f, e[i])};
  std::sort(v.begin(), v.end());
  Sorted s;
  for (const auto& [xv, wv] : v) {
    if (!s.x.empty() && s.x.back() == xv) {
      s.w.back() += wv;
    } else {
      s.x.push_back(xv);
      s.w.push_back(wv);
    }
  }
  const size_t n = s.x.size();
  s.pw.assign(n + 1, 0.0);
  s.pwx.assign(n + 1, 0.0);
  s.pwxx.assign(n + 1, 0.0);
  for (size_t i = 0; i < n; ++i) {
    s.pw[i + 1] = s.pw[i] + s.w[i];
    s.pwx[i + 1] = s.pwx[i] + s.w[i] * s.x[i];
    s.pwxx[i + 1] = s.pwxx[i] + s.w[i] * s.x[i] * s.x[i];
  }
  return s;
}

/// Lloyd's iterations on sorted data from centroids c (ascending; fixed[j] never moves). Returns
/// the error; c is updated in place.
double lloyd(const Sorted& s, std::vector<double>& c, const std::vector<char>& fixed, int max_iterations,
             int* iterations) {
  const size_t k = c.size(), n = s.size();
  std::vector<size_t> bound(k + 1);
  double sse = 0;
  int it = 0;
  for (;; ++it) {
    bound[0] = 0;
    bound[k] = n;
    for (size_t j = 0; j + 1 < k; ++j) {
      const double mid = 0.5 * (c[j] + c[j + 1]);
      // Values at the midpoint go to the lower centroid (as Palette::nearest does).
      bound[j + 1] = static_cast<size_t>(std::upper_bound(s.x.begin(), s.x.end(), mid) - s.x.begin());
      bound[j + 1] = std::max(bound[j + 1], bound[j]);
    }
    bool moved = false;
    sse = 0;
    for (size_t j = 0; j < k; ++j) {
      const size_t a = bound[j], b = bound[j + 1];
      if (!fixed[j] && b > a && s.weight(a, b) > 0) {
        const double m = s.mean(a, b);
        if (m != c[j]) moved = true;
        c[j] = m;
      }
      if (b > a) sse += s.cost_around(a, b, c[j]);
    }
    // The centroids stay ascending: each is the mean of a run lying between its neighbours' runs.
    if (!moved || it + 1 >= max_iterations) break;
  }
  *iterations = it + 1;
  return sse;
}

/// k-means++ seeding on the distinct values (probability ∝ w·D²), `free` centroids besides `preset`.
std::vector<double> seed_plus_plus(const Sorted& s, size_t free, const std::vector<double>& preset, Rng& rng) {
  const size_t n = s.size();
  std::vector<double> c = preset;
  std::vector<double> d2(n, std::numeric_limits<double>::infinity());
  auto update = [&](double centre) {
    for (size_t i = 0; i < n; ++i) d2[i] = std::min(d2[i], (s.x[i] - centre) * (s.x[i] - centre));
  };
  for (double p : preset) update(p);
  if (c.empty()) {  // the first centre ∝ weight
    const double r = rng.uniform() * s.pw[n];
    const size_t i = std::min(n - 1, static_cast<size_t>(std::upper_bound(s.pw.begin() + 1, s.pw.end(), r) - s.pw.begin() - 1));
    c.push_back(s.x[i]);
    update(s.x[i]);
    --free;
  }
  for (size_t added = 0; added < free; ++added) {
    double total = 0;
    for (size_t i = 0; i < n; ++i) total += s.w[i] * d2[i];
    size_t pick = 0;
    if (total > 0) {
      const double r = rng.uniform() * total;
      double acc = 0;
      pick = n - 1;
      for (size_t i = 0; i < n; ++i) {
        acc += s.w[i] * d2[i];
        if (acc > r) {
          pick = i;
          break;
        }
      }
    }
    c.push_back(s.x[pick]);
    update(s.x[pick]);
  }
  std::sort(c.begin(), c.end());
  return c;
}

/// Weighted quantiles (j + 0.5) / free of the values, plus `preset`.
std::vector<double> seed_quantiles(const Sorted& s, size_t free, const std::vector<double>& preset) {
  std::vector<double> c = preset;
  const double total = s.pw.back();
  for (size_t j = 0; j < free; ++j) {
    const double r = (static_cast<double>(j) + 0.5) / static_cast<double>(free) * total;
    size_t i = static_cast<size_t>(std::lower_bound(s.pw.begin() + 1, s.pw.end(), r) - s.pw.begin() - 1);
    c.push_back(s.x[std::min(i, s.size() - 1)]);
  }
  std::sort(c.begin(), c.end());
  return c;
}

}  // namespace

KMeansResult kmeans_1d(std::span<const float> x, std::span<const float> e, int k, bool zero_entry,
                       int max_iterations) {
  QTOOL_CHECK(k >= 1 && (!zero_entry || k >= 2), ErrorCode::kInternal, "k-means with {} centroids", k);
  QTOOL_CHECK(e.empty() || e.size() == x.size(), ErrorCode::kInternal, "k-means weights size");
  KMeansResult r;
  const Sorted s = sort_values(x, e);
  const size_t free = static_cast<size_t>(zero_entry ? k - 1 : k);
  const std::vector<double> preset = zero_entry ? std::vector<double>{0.0} : std::vector<double>{};
  std::vector<double> best;
  if (s.size() <= free || s.pw.back() <= 0) {
    best = preset;
    for (double v : s.x) best.push_back(v);
    std::sort(best.begin(), best.end());
    r.sse = 0;
  } else {
    Rng rng{0x5DEECE66Dull + static_cast<uint64_t>(s.size()) * 31u + static_cast<uint64_t>(k)};
    double best_sse = -1;
    for (int start = 0; start < 2; ++start) {
      std::vector<double> c = start == 0 ? seed_quantiles(s, free, preset) : seed_plus_plus(s, free, preset, rng);
      std::vector<char> fixed(c.size(), 0);
      if (zero_entry) fixed[static_cast<size_t>(std::find(c.begin(), c.end(), 0.0) - c.begin())] = 1;
      int iters = 0;
      const double sse = lloyd(s, c, fixed, max_iterations, &iters);
      if (best_sse < 0 || sse < best_sse) {
        best_sse = sse;
        best = c;
        r.iterations = iters;
      }
    }
    r.sse = best_sse;
  }
  if (best.empty()) best.push_back(0.0);
  // Table order: ascending, with zero_entry 0 first; padded with repeats of the largest.
  if (zero_entry) {
    best.erase(std::find(best.begin(), best.end(), 0.0));
    best.insert(best.begin(), 0.0);
  }
  while (best.size() < static_cast<size_t>(k)) best.push_back(best.back());
  r.centroids.assign(best.begin(), best.end());
  return r;
}

QuantizedMatrix quantize_palette(std::span<const float> w, int64_t rows, int64_t cols, const PaletteSpec& spec,
                                 std::span<const float> col_importance, std::span<const uint8_t> pruned, int threads) {
  QTOOL_CHECK(static_cast<int64_t>(w.size()) == rows * cols, ErrorCode::kInternal, "palette: W size");
  QTOOL_CHECK(spec.bits >= 1 && spec.bits <= 8, ErrorCode::kInternal, "palette bits {}", spec.bits);
  QTOOL_CHECK(pruned.empty() || spec.zero_entry, ErrorCode::kInternal, "palette: pruned weights need a zero entry");
  QTOOL_CHECK(col_importance.empty() || static_cast<int64_t>(col_importance.size()) == cols, ErrorCode::kInternal,
              "palette: importance size");
  const int64_t group = spec.group > 0 ? spec.group : rows;
  const int64_t groups = (rows + group - 1) / group;
  const int k = 1 << spec.bits;
  // Rows of similar spread share a table: the rows ordered by their RMS (ties: by index), then taken
  // `group` at a time (the stored table offset is per row, so a group need not be contiguous).
  std::vector<int64_t> order(static_cast<size_t>(rows));
  std::iota(order.begin(), order.end(), 0);
  if (group < rows) {
    std::vector<double> rms(static_cast<size_t>(rows), 0.0);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) rms[r] += static_cast<double>(w[r * cols + c]) * w[r * cols + c];
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return rms[a] < rms[b]; });
  }
  QuantizedMatrix q;
  q.rows = rows;
  q.cols = cols;
  const int64_t bs = spec.block > 0 ? spec.block : cols, kb = (cols + bs - 1) / bs;
  q.block_size = bs;
  q.levels.assign(static_cast<size_t>(rows * cols), 0);
  q.grids.assign(static_cast<size_t>(rows * kb), BlockGrid{});
  auto is_pruned = [&](int64_t i) { return !pruned.empty() && pruned[static_cast<size_t>(i)]; };
  auto rounded = [&](float v) { return spec.fp16_table ? half_to_float(float_to_half(v)) : v; };
  // Block scales (spec.block > 0): the absmax of each block's kept values, the table fitted to w / scale.
  std::vector<float> scale(static_cast<size_t>(rows * kb), 1.0f);
  if (spec.block > 0)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t b = 0; b < kb; ++b) {
        float amax = 0.0f;
        for (int64_t c = b * bs; c < std::min(cols, (b + 1) * bs); ++c)
          if (!is_pruned(r * cols + c)) amax = std::max(amax, std::fabs(w[r * cols + c]));
        const float sv = rounded(amax);
        scale[r * kb + b] = sv > 0.0f && std::isfinite(sv) ? sv : 1.0f;
      }
  auto fit_group = [&](int64_t gi) {
    const int64_t r0 = gi * group, r1 = std::min(rows, r0 + group);
    std::vector<float> xs, es;
    xs.reserve(static_cast<size_t>((r1 - r0) * cols));
    for (int64_t ri = r0; ri < r1; ++ri)
      for (int64_t c = 0, r = order[ri]; c < cols; ++c) {
        const int64_t i = r * cols + c;
        if (is_pruned(i)) continue;
        const float sv = scale[r * kb + c / bs];
        xs.push_back(w[static_cast<size_t>(i)] / sv);
        // The error of w is scale² times the error of w / scale.
        if (!col_importance.empty() || spec.block > 0)
          es.push_back((col_importance.empty() ? 1.0f : col_importance[static_cast<size_t>(c)]) * sv * sv);
      }
    std::vector<float> table = kmeans_1d(xs, es, k, spec.zero_entry).centroids;
    for (float& v : table) v = rounded(v);
    BlockGrid g;
    g.lo = 0;
    g.hi = k - 1;
    g.palette = Palette::make(std::move(table));
    const Palette& p = *g.palette;
    for (int64_t ri = r0; ri < r1; ++ri) {
      const int64_t r = order[ri];
      for (int64_t b = 0; b < kb; ++b) {
        const int64_t c0 = b * bs, c1 = std::min(cols, c0 + bs);
        BlockGrid gb = g;
        gb.scale = scale[r * kb + b];
        auto assign = [&](const BlockGrid& grid) {
          double err = 0;
          for (int64_t c = c0; c < c1; ++c) {
            const int64_t i = r * cols + c;
            const int32_t lv = is_pruned(i) ? 0 : grid.quantize(w[i]);
            q.levels[i] = lv;
            const double d = w[i] - grid.dequantize(lv);
            err += (col_importance.empty() ? 1.0 : col_importance[c]) * d * d;
          }
          return err;
        };
        double err = assign(gb);
        // Scaled blocks: least-squares scale for the chosen indices, kept while it lowers the error.
        for (int it = 0; spec.block > 0 && it < 2; ++it) {
          double num = 0, den = 0;
          for (int64_t c = c0; c < c1; ++c) {
            const double t = p.values[q.levels[r * cols + c]];
            const double e = col_importance.empty() ? 1.0 : col_importance[c];
            num += e * w[r * cols + c] * t;
            den += e * t * t;
          }
          if (den <= 0) break;
          BlockGrid cand = gb;
          cand.scale = rounded(static_cast<float>(num / den));
          if (!(cand.scale > 0.0f) || !std::isfinite(cand.scale) || cand.scale == gb.scale) break;
          std::vector<int32_t> keep(q.levels.begin() + r * cols + c0, q.levels.begin() + r * cols + c1);
          const double e2 = assign(cand);
          if (e2 < err) {
            err = e2;
            gb = cand;
          } else {
            std::copy(keep.begin(), keep.end(), q.levels.begin() + r * cols + c0);
            break;
          }
        }
        q.grids[static_cast<size_t>(r * kb + b)] = gb;
      }
    }
  };
  const int64_t parts = std::clamp<int64_t>(threads, 1, groups);
  if (parts <= 1) {
    for (int64_t gi = 0; gi < groups; ++gi) fit_group(gi);
    return q;
  }
  std::vector<std::thread> pool;
  std::vector<std::exception_ptr> errors(static_cast<size_t>(parts));
  for (int64_t p = 0; p < parts; ++p)
    pool.emplace_back([&, p] {
      try {
        for (int64_t gi = p; gi < groups; gi += parts) fit_group(gi);
      } catch (...) {
        errors[static_cast<size_t>(p)] = std::current_exception();
      }
    });
  for (auto& th : pool) th.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  return q;
}

std::vector<std::vector<int64_t>> palette_groups(const QuantizedMatrix& q) {
  std::vector<std::vector<int64_t>> groups;
  std::vector<const Palette*> seen;
  const int64_t kb = q.k_blocks();
  for (int64_t r = 0; r < q.rows; ++r) {
    const Palette* p = q.grids[static_cast<size_t>(r * kb)].palette.get();
    QTOOL_CHECK(p != nullptr, ErrorCode::kInternal, "palette_groups: row {} has no palette", r);
    const auto it = std::find(seen.begin(), seen.end(), p);
    if (it == seen.end()) {
      seen.push_back(p);
      groups.push_back({r});
    } else {
      groups[static_cast<size_t>(it - seen.begin())].push_back(r);
    }
  }
  return groups;
}

double refine_palettes(QuantizedMatrix& q, std::span<const float> w, std::span<const double> h, bool fp16,
                       bool zero_entry) {
  const int64_t rows = q.rows, cols = q.cols;
  const int64_t kb = q.k_blocks();
  QTOOL_CHECK(static_cast<int64_t>(w.size()) == rows * cols && static_cast<int64_t>(h.size()) == cols * cols &&
                  static_cast<int64_t>(q.grids.size()) == rows * kb,
              ErrorCode::kInternal, "refine_palettes: sizes");
  double total = 0;
  std::vector<double> sc(static_cast<size_t>(cols));
  for (const std::vector<int64_t>& members : palette_groups(q)) {
    const std::shared_ptr<const Palette> pal = q.grids[members.front() * kb].palette;
    const int64_t k = static_cast<int64_t>(pal->values.size());
    Eigen::MatrixXd M = Eigen::MatrixXd::Zero(k, k);
    Eigen::VectorXd b = Eigen::VectorXd::Zero(k);
    // Σ_r dᵀ H d for table t: the quadratic form in c plus the constant Σ wᵀ H w.
    double whw = 0;
    for (int64_t r : members) {
      const int32_t* idx = q.levels.data() + r * cols;
      const float* wr = w.data() + r * cols;
      for (int64_t i = 0; i < cols; ++i) sc[i] = q.grid(r, i).scale;  // element i's value is table[idx_i]·sc_i
      for (int64_t i = 0; i < cols; ++i) {
        const double* hi = h.data() + i * cols;
        double hw = 0;
        for (int64_t j = 0; j < cols; ++j) {
          M(idx[i], idx[j]) += sc[i] * sc[j] * hi[j];
          hw += hi[j] * wr[j];
        }
        b(idx[i]) += sc[i] * hw;
        whw += wr[i] * hw;
      }
    }
    Eigen::VectorXd c_old(k);
    for (int64_t j = 0; j < k; ++j) c_old(j) = pal->values[static_cast<size_t>(j)];
    auto error = [&](const Eigen::VectorXd& c) { return c.dot(M * c) - 2.0 * c.dot(b) + whw; };
    const double e_old = error(c_old);
    // Unused entries and the fixed zero keep their values: pin them (identity rows).
    Eigen::MatrixXd Ms = M;
    Eigen::VectorXd bs = b;
    for (int64_t j = 0; j < k; ++j) {
      if (M(j, j) > 0 && !(zero_entry && j == 0)) continue;
      for (int64_t i = 0; i < k; ++i) {
        bs(i) -= Ms(i, j) * c_old(j);
        Ms(i, j) = 0;
        Ms(j, i) = 0;
      }
      Ms(j, j) = 1;
      bs(j) = c_old(j);
    }
    // A little ridge keeps nearly dependent entries (tiny clusters) well posed.
    double tr = 0;
    for (int64_t j = 0; j < k; ++j) tr += Ms(j, j);
    Ms.diagonal().array() += 1e-9 * tr / static_cast<double>(k);
    Eigen::VectorXd c = Ms.ldlt().solve(bs);
    bool ok = c.allFinite();
    if (ok) {
      for (int64_t j = 0; j < k; ++j)
        if (fp16) c(j) = half_to_float(float_to_half(static_cast<float>(c(j))));
      if (zero_entry) c(0) = 0.0;
    }
    const double e_new = ok ? error(c) : e_old;
    if (ok && e_new < e_old) {
      std::vector<float> table(static_cast<size_t>(k));
      for (int64_t j = 0; j < k; ++j) table[static_cast<size_t>(j)] = static_cast<float>(c(j));
      const std::shared_ptr<const Palette> np = Palette::make(std::move(table));
      for (int64_t r : members)
        for (int64_t bk = 0; bk < kb; ++bk) q.grids[r * kb + bk].palette = np;
      total += e_new;
    } else {
      total += e_old;
    }
  }
  return total;
}

}  // namespace qtool::quant
