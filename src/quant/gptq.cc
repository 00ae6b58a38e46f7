// GPTQ on a plain weight matrix (see gptq.h for the math). Follows the reference implementation
// (IST-DASLab/gptq, fasterquant): dead-input handling, dampening, Cholesky of H⁻¹ (upper), lazy
// block updates, static groups with act_order.
#include <algorithm>
#include <cmath>
#include <numeric>

#include <Eigen/Cholesky>
#include <Eigen/Core>

#include "qtool/core/error.h"
#include "qtool/quant/gptq.h"
#include "qtool/runtime/kernel.h"

namespace qtool::quant {

HessianAccumulator::HessianAccumulator(int64_t dim) : dim_(dim), h_(dim * dim, 0.0) {}

void HessianAccumulator::add(std::span<const float> x, int64_t n) {
  QTOOL_CHECK(static_cast<int64_t>(x.size()) == n * dim_, ErrorCode::kInternal, "Hessian: {} values for {} rows of {}",
              x.size(), n, dim_);
  if (n == 0) return;
  // H += Xᵀ X: one call's rows (a sample's) multiplied in float by the executor's GEMM (several
  // times Eigen's double rank update), accumulated across calls in double.
  std::vector<float> part(static_cast<size_t>(dim_ * dim_));
  runtime::gemm_f32(true, false, dim_, dim_, n, 1.0f, x.data(), dim_, x.data(), dim_, 0.0f, part.data(), dim_);
  for (int64_t j = 0; j < dim_; ++j)  // h_ is column-major: (i, j) with i >= j at j·dim + i; part is symmetric
    for (int64_t i = j; i < dim_; ++i) h_[j * dim_ + i] += static_cast<double>(part[j * dim_ + i]);
  samples_ += n;
}

std::vector<double> HessianAccumulator::hessian() const {
  std::vector<double> out(dim_ * dim_);
  const double inv = samples_ > 0 ? 1.0 / static_cast<double>(samples_) : 1.0;
  for (int64_t i = 0; i < dim_; ++i)
    for (int64_t j = 0; j <= i; ++j) {
      // h_ is column-major in the Eigen map; the lower triangle holds (row i, col j) with i >= j.
      const double v = h_[j * dim_ + i] * inv;
      out[i * dim_ + j] = v;
      out[j * dim_ + i] = v;
    }
  return out;
}

std::vector<float> HessianAccumulator::channel_energy() const {
  std::vector<float> e(dim_);
  const double inv = samples_ > 0 ? 1.0 / static_cast<double>(samples_) : 1.0;
  for (int64_t i = 0; i < dim_; ++i) e[i] = static_cast<float>(h_[i * dim_ + i] * inv);
  return e;
}

namespace {

using RowMat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// The grid groups of a row's columns, and how a group's grid is found. Column c belongs to group
/// of(c) (kb groups per row): col_group[c] when given, else contiguous blocks of `group` columns.
struct ColumnGroups {
  const QuantSpec& spec;
  bool output_clip = false;
  std::span<const int64_t> col_group;
  bool custom = false;
  int64_t group = 1, kb = 1;
  std::vector<std::vector<int64_t>> members;  ///< columns of each group
  std::vector<std::vector<float>> gdiag;      ///< diag(H) of its columns (error weights)
  std::vector<std::vector<double>> hblocks;   ///< with output_clip: its diagonal block of H

  ColumnGroups(const QuantSpec& quant_spec, const GptqOptions& options, std::span<const int64_t> column_group,
               int64_t num_groups, int64_t group_width, int64_t cols, const Eigen::MatrixXd& H)
      : spec(quant_spec), output_clip(options.output_clip), col_group(column_group), custom(!column_group.empty()),
        group(group_width), kb(num_groups), members(num_groups), gdiag(num_groups),
        hblocks(options.output_clip ? num_groups : 0) {
    for (int64_t c = 0; c < cols; ++c) members[of(c)].push_back(c);
    for (int64_t b = 0; b < kb; ++b) {
      const auto& m = members[b];
      for (int64_t c : m) gdiag[b].push_back(static_cast<float>(H(c, c)));
      if (output_clip) {
        hblocks[b].resize(m.size() * m.size());
        for (size_t i = 0; i < m.size(); ++i)
          for (size_t j = 0; j < m.size(); ++j) hblocks[b][i * m.size() + j] = H(m[i], m[j]);
      }
    }
  }
  int64_t of(int64_t c) const { return custom ? col_group[c] : c / group; }
  /// Grid of group b for the values x of its columns (a palette's grid `preset`: its table kept, the
  /// block's scale fitted to x).
  BlockGrid grid(std::span<const float> x, int64_t b, const BlockGrid* preset = nullptr) const {
    if (preset && preset->palette) return palette_scale(x, gdiag[b], *preset);
    if (output_clip) return find_block_grid_hessian(x, spec, hblocks[b]);
    return find_block_grid(x, spec, gdiag[b]);
  }
  /// The scale of a scaled palette's block for x: absmax·r over the clipping ratios r in [0.6, 1],
  /// the least Σ e (x − Q(x))² kept, then refined by least squares on its indices.
  BlockGrid palette_scale(std::span<const float> x, std::span<const float> e, BlockGrid g) const {
    float amax = 0.0f;
    for (float v : x) amax = std::max(amax, std::fabs(v));
    if (amax <= 0.0f) return g;
    auto err = [&](const BlockGrid& c) {
      double s = 0;
      for (size_t i = 0; i < x.size(); ++i) {
        const double d = x[i] - c.dequantize(c.quantize(x[i]));
        s += (e.empty() ? 1.0 : e[i]) * d * d;
      }
      return s;
    };
    BlockGrid best = g;
    double best_err = -1;
    for (int i = 0; i <= 8; ++i) {
      BlockGrid c = g;
      c.scale = spec.stored_scale(amax * (1.0f - 0.05f * static_cast<float>(i)));
      if (!(c.scale > 0.0f)) continue;
      const double ce = err(c);
      if (best_err < 0 || ce < best_err) {
        best_err = ce;
        best = c;
      }
    }
    double num = 0, den = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      const double t = best.palette->values[static_cast<size_t>(best.quantize(x[i]))];
      num += (e.empty() ? 1.0 : e[i]) * x[i] * t;
      den += (e.empty() ? 1.0 : e[i]) * t * t;
    }
    if (den > 0) {
      BlockGrid c = best;
      c.scale = spec.stored_scale(static_cast<float>(num / den));
      if (c.scale > 0.0f && std::isfinite(c.scale) && err(c) < best_err) best = c;
    }
    return best;
  }
};

/// Static grids of every (row, group), from W's values of the group's columns.
void compute_static_grids(QuantizedMatrix& q, const RowMat& W, const ColumnGroups& groups) {
  std::vector<float> buf;
  for (int64_t r = 0; r < q.rows; ++r)
    for (int64_t b = 0; b < groups.kb; ++b) {
      buf.clear();
      for (int64_t c : groups.members[b]) buf.push_back(static_cast<float>(W(r, c)));
      q.grids[r * groups.kb + b] = buf.empty() ? BlockGrid{} : groups.grid(buf, b);
    }
}

/// Processing order of the columns: natural, or by decreasing H_jj (act_order; stable).
std::vector<int64_t> column_order(const Eigen::MatrixXd& H, int64_t cols, bool act_order) {
  std::vector<int64_t> perm(cols);
  std::iota(perm.begin(), perm.end(), 0);
  if (act_order)
    std::stable_sort(perm.begin(), perm.end(), [&](int64_t a, int64_t b) { return H(a, a) > H(b, b); });
  return perm;
}

/// Upper Cholesky factor of (H + damp·I)⁻¹, retrying with more dampening if H is not positive definite.
Eigen::MatrixXd upper_cholesky_of_inverse(const Eigen::MatrixXd& Hp, int64_t cols, double percdamp) {
  // Mean of the diagonal, summed by hand: Eigen's redux on a Diagonal view of a dynamic matrix
  // trips GCC's -Wmaybe-uninitialized in Release builds (it cannot see that cols > 0 here).
  double diag_sum = 0.0;
  for (int64_t i = 0; i < cols; ++i) diag_sum += Hp(i, i);
  const double mean_diag = cols > 0 ? diag_sum / static_cast<double>(cols) : 0.0;
  double damp = percdamp * mean_diag;
  Eigen::MatrixXd U;
  for (int attempt = 0;; ++attempt) {
    Eigen::MatrixXd Hd = Hp;
    Hd.diagonal().array() += damp;
    Eigen::LLT<Eigen::MatrixXd> llt(Hd);
    if (llt.info() == Eigen::Success) {
      const Eigen::MatrixXd Hinv = llt.solve(Eigen::MatrixXd::Identity(cols, cols));
      Eigen::LLT<Eigen::MatrixXd> llt2(Hinv);
      if (llt2.info() == Eigen::Success) {
        U = llt2.matrixU();
        break;
      }
    }
    QTOOL_CHECK(attempt < 6, ErrorCode::kInternal, "GPTQ: Hessian not positive definite even with dampening {}",
                damp);
    damp = damp > 0 ? damp * 10.0 : 1e-6 * std::max(1.0, mean_diag);
  }
  return U;
}

/// The GPTQ sweep: quantizes the permuted columns of Wp in blocks of bc, spreading each column's
/// error over the columns after it (within the block at once, onto the rest after the block).
/// Without static groups, a group's grid is taken when the sweep reaches its first column.
/// SparseGPT's mask choice for the block of columns [i1, i1 + count) of W1 (unstructured: the
/// lowest saliency w²/d² of each row within the block; N:M is chosen per run as the sweep reaches it).
void choose_block_mask(const RowMat& W1, const Eigen::MatrixXd& U, int64_t i1, int64_t count, const SparsitySpec& sp,
                       const std::vector<int64_t>& perm, int64_t cols, std::vector<uint8_t>& mask) {
  if (sp.structured() || sp.fraction <= 0) return;
  const int64_t rows = W1.rows();
  std::vector<float> tmp(static_cast<size_t>(rows * count));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < count; ++i) {
      const double d = U(i1 + i, i1 + i);
      tmp[static_cast<size_t>(r * count + i)] = static_cast<float>(W1(r, i) * W1(r, i) / (d * d));
    }
  // Per output row (Wanda's comparison group): measured better than one threshold over the block
  // (stories260K 50%: +101% / +26% NLL against +120% / +28%).
  const std::vector<uint8_t> m = prune_mask(tmp, rows, count, sp, /*per_row=*/true);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < count; ++i)
      if (m[static_cast<size_t>(r * count + i)]) mask[static_cast<size_t>(r * cols + perm[i1 + i])] = 1;
}

/// SparseGPT N:M: the run of columns [i, i + m) (local to the block) is chosen when the sweep reaches it.
void choose_run_mask(const RowMat& W1, const Eigen::MatrixXd& U, int64_t i1, int64_t i, int64_t count,
                     const SparsitySpec& sp, const std::vector<int64_t>& perm, int64_t cols, std::vector<uint8_t>& mask) {
  const int64_t rows = W1.rows(), len = std::min<int64_t>(sp.m, count - i);
  std::vector<float> tmp(static_cast<size_t>(rows * len));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < len; ++j) {
      const double d = U(i1 + i + j, i1 + i + j);
      tmp[static_cast<size_t>(r * len + j)] = static_cast<float>(W1(r, i + j) * W1(r, i + j) / (d * d));
    }
  const std::vector<uint8_t> m = prune_mask(tmp, rows, len, sp, false);  // one run of (at most) m per row
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < len; ++j)
      if (m[static_cast<size_t>(r * len + j)]) mask[static_cast<size_t>(r * cols + perm[i1 + i + j])] = 1;
}

void quantize_columns(QuantizedMatrix& q, RowMat& Wp, const Eigen::MatrixXd& U, const std::vector<int64_t>& perm,
                      const ColumnGroups& groups, bool static_groups, int64_t bc, bool keep_latent,
                      std::vector<uint8_t>& mask, const SparsitySpec& adaptive) {
  const int64_t rows = q.rows, cols = q.cols, kb = groups.kb, group = groups.group;
  const bool pruning = !mask.empty();
  std::vector<float> buf;
  for (int64_t i1 = 0; i1 < cols; i1 += bc) {
    const int64_t i2 = std::min(cols, i1 + bc), count = i2 - i1;
    RowMat W1 = Wp.middleCols(i1, count);
    RowMat Err1 = RowMat::Zero(rows, count);
    if (adaptive.active()) choose_block_mask(W1, U, i1, count, adaptive, perm, cols, mask);
    for (int64_t i = 0; i < count; ++i) {
      const int64_t col = perm[i1 + i];  // original column index
      const int64_t b = groups.of(col);
      if (adaptive.structured() && (i1 + i) % adaptive.m == 0) choose_run_mask(W1, U, i1, i, count, adaptive, perm, cols, mask);
      if (!static_groups && col % group == 0) {
        // Group starting here (natural order): grids from the updated values of its columns.
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t c1 = std::min(cols, col + group);
          buf.resize(c1 - col);
          for (int64_t c = col; c < c1; ++c) {
            const int64_t local = c - i1;
            buf[c - col] = static_cast<float>(local < count ? W1(r, local) : Wp(r, c));
          }
          BlockGrid& gr = q.grids[r * kb + b];
          gr = groups.grid(buf, b, gr.palette ? &gr : nullptr);
        }
      }
      const double d = U(i1 + i, i1 + i);
      for (int64_t r = 0; r < rows; ++r) {
        const BlockGrid& g = q.grids[r * kb + b];
        const float wv = static_cast<float>(W1(r, i));
        const int32_t lv = pruning && mask[static_cast<size_t>(r * cols + col)] ? g.quantize(0.0f) : g.quantize(wv);
        q.levels[r * cols + col] = lv;
        if (keep_latent) q.rounded_from[r * cols + col] = wv;
        const double err = (W1(r, i) - g.dequantize(lv)) / d;
        Err1(r, i) = err;
      }
      if (i + 1 < count)
        W1.rightCols(count - i - 1).noalias() -= Err1.col(i) * U.row(i1 + i).segment(i1 + i + 1, count - i - 1);
    }
    if (i2 < cols) Wp.rightCols(cols - i2).noalias() -= Err1 * U.block(i1, i2, count, cols - i2);
  }
}

/// Coordinate descent on the layer objective E = dᵀ H d per row (d = w − Q(w), the original w):
/// move one level by ±1 when that lowers E exactly (ΔE = −2δ·(Hd)_j + δ²·H_jj for a step δ of the
/// dequantized value), keeping the grids. Monotone: E never increases.
void coordinate_descent(QuantizedMatrix& q, const RowMat& W, const Eigen::MatrixXd& H, const ColumnGroups& groups,
                        int passes, const std::vector<uint8_t>& mask) {
  const int64_t rows = q.rows, cols = q.cols, kb = groups.kb;
  for (int pass = 0; pass < passes; ++pass) {
    Eigen::VectorXd d(cols), hd(cols);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        const BlockGrid& g = q.grids[r * kb + groups.of(c)];
        d(c) = W(r, c) - g.dequantize(q.levels[r * cols + c]);
      }
      hd.noalias() = H * d;
      for (int64_t c = 0; c < cols; ++c) {
        const BlockGrid& g = q.grids[r * kb + groups.of(c)];
        if (g.binary || g.float_codes() || g.palette) continue;  // codes are not a ±1 ladder (fp8/fp4: sign bit, NaN code)
        if (!mask.empty() && mask[static_cast<size_t>(r * cols + c)]) continue;  // pruned: stays 0
        const int32_t l = q.levels[r * cols + c];
        for (int32_t step : {1, -1}) {
          const int32_t nl = l + step;
          if (nl < g.lo || nl > g.hi) continue;
          const double delta = static_cast<double>(g.dequantize(nl)) - g.dequantize(l);
          const double de = -2.0 * delta * hd(c) + delta * delta * H(c, c);
          if (de < 0.0) {
            q.levels[r * cols + c] = nl;
            d(c) -= delta;
            hd.noalias() -= delta * H.col(c);
            break;
          }
        }
      }
    }
  }
}

/// GPTQ core. Column c belongs to grid col_group[c] of its row (ng grids per row); empty col_group
/// means contiguous blocks of spec.block_size along the columns (grids computed lazily from the
/// updated weights unless act_order or per channel), else grids are static (computed up front).
QuantizedMatrix gptq_impl(std::span<const float> w_in, int64_t rows, int64_t cols, std::span<const double> hessian,
                          const QuantSpec& spec, const GptqOptions& options, std::span<const int64_t> col_group,
                          int64_t ng, const GptqPruning& pruning = {}) {
  QTOOL_CHECK(static_cast<int64_t>(w_in.size()) == rows * cols, ErrorCode::kInternal, "gptq: W size");
  QTOOL_CHECK(static_cast<int64_t>(hessian.size()) == cols * cols, ErrorCode::kInternal, "gptq: H size");
  RowMat W = Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(w_in.data(), rows,
                                                                                                       cols)
                 .cast<double>();
  Eigen::MatrixXd H = Eigen::Map<const RowMat>(hessian.data(), cols, cols);

  for (int64_t j = 0; j < cols; ++j)
    if (H(j, j) == 0.0) {  // dead input: never active, its weight cannot matter
      H(j, j) = 1.0;
      W.col(j).setZero();
    }

  QuantizedMatrix q;
  q.rows = rows;
  q.cols = cols;
  q.block_size = spec.block_size > 0 ? spec.block_size : cols;
  const int64_t group = q.block_size;
  const int64_t kb = !col_group.empty() ? ng : q.k_blocks();
  const ColumnGroups groups(spec, options, col_group, kb, group, cols, H);
  q.levels.assign(rows * cols, 0);
  q.grids.assign(rows * kb, BlockGrid{});
  if (options.keep_latent) q.rounded_from.assign(rows * cols, 0.0f);

  // Static grids: per channel (one group), act_order (groups fixed before the column permutation),
  // or custom (non-contiguous) groups.
  const bool act_order = options.act_order && !pruning.adaptive.active();
  const bool presets = !pruning.row_grids.empty();
  // A palette scaled per block keeps its table; each block's scale is fitted when the sweep reaches
  // it, to the weights as GPTQ has updated them (as integer blocks get their grids).
  const bool lazy_scales = presets && spec.scheme == WeightScheme::kPalette && kb > 1 && !act_order && !groups.custom;
  const bool static_groups = act_order || kb == 1 || groups.custom || (presets && !lazy_scales);
  if (presets) {
    QTOOL_CHECK(static_cast<int64_t>(pruning.row_grids.size()) == rows * kb, ErrorCode::kInternal,
                "gptq: {} preset grids for {} rows of {} blocks", pruning.row_grids.size(), rows, kb);
    q.grids.assign(pruning.row_grids.begin(), pruning.row_grids.end());
  } else if (static_groups) {
    compute_static_grids(q, W, groups);
  }
  std::vector<uint8_t> mask;
  if (!pruning.pruned.empty()) {
    QTOOL_CHECK(static_cast<int64_t>(pruning.pruned.size()) == rows * cols, ErrorCode::kInternal, "gptq: mask size");
    mask.assign(pruning.pruned.begin(), pruning.pruned.end());
  } else if (pruning.adaptive.active()) {
    mask.assign(static_cast<size_t>(rows * cols), 0);
  }

  const std::vector<int64_t> perm = column_order(H, cols, act_order);
  RowMat Wp(rows, cols);
  Eigen::MatrixXd Hp(cols, cols);
  for (int64_t j = 0; j < cols; ++j) Wp.col(j) = W.col(perm[j]);
  for (int64_t i = 0; i < cols; ++i)
    for (int64_t j = 0; j < cols; ++j) Hp(i, j) = H(perm[i], perm[j]);
  const Eigen::MatrixXd U = upper_cholesky_of_inverse(Hp, cols, options.percdamp);

  // Lazy-update block width: a multiple of the group so that a group's grid is taken from W1.
  int64_t bc = std::max<int64_t>(1, options.block_columns);
  if (!static_groups) bc = std::max<int64_t>(group, bc / group * group);
  if (pruning.adaptive.structured()) bc = std::lcm(bc, static_cast<int64_t>(pruning.adaptive.m));  // runs never straddle blocks
  quantize_columns(q, Wp, U, perm, groups, static_groups, bc, options.keep_latent, mask, pruning.adaptive);
  coordinate_descent(q, W, H, groups, options.cd_passes, mask);
  if (pruning.mask_out) *pruning.mask_out = std::move(mask);
  return q;
}

}  // namespace

QuantizedMatrix quantize_gptq(std::span<const float> w, int64_t rows, int64_t cols, std::span<const double> hessian,
                              const QuantSpec& spec, const GptqOptions& options) {
  return gptq_impl(w, rows, cols, hessian, spec, options, {}, 0);
}

QuantizedMatrix quantize_gptq_pruned(std::span<const float> w, int64_t rows, int64_t cols,
                                     std::span<const double> hessian, const QuantSpec& spec,
                                     const GptqOptions& options, const GptqPruning& pruning) {
  return gptq_impl(w, rows, cols, hessian, spec, options, {}, 0, pruning);
}

QuantizedMatrix quantize_gptq_grouped(std::span<const float> w, int64_t rows, int64_t cols,
                                      std::span<const double> hessian, const QuantSpec& spec,
                                      std::span<const int64_t> column_group, int64_t num_groups,
                                      const GptqOptions& options, const GptqPruning* pruning) {
  QTOOL_CHECK(static_cast<int64_t>(column_group.size()) == cols && num_groups > 0, ErrorCode::kInternal,
              "gptq: column groups");
  for (int64_t g : column_group)
    QTOOL_CHECK(g >= 0 && g < num_groups, ErrorCode::kInternal, "gptq: column group {} out of {}", g, num_groups);
  return gptq_impl(w, rows, cols, hessian, spec, options, column_group, num_groups,
                   pruning ? *pruning : GptqPruning{});
}

double refine_scales(QuantizedMatrix& q, std::span<const float> w, std::span<const double> h, bool fp16) {
  const int64_t rows = q.rows, cols = q.cols, kb = q.k_blocks(), bs = q.block_size;
  QTOOL_CHECK(static_cast<int64_t>(w.size()) == rows * cols, ErrorCode::kInternal, "refine_scales: W size");
  QTOOL_CHECK(static_cast<int64_t>(h.size()) == cols * cols, ErrorCode::kInternal, "refine_scales: H size");
  using RowMat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const Eigen::Map<const RowMat> H(h.data(), cols, cols);
  Eigen::VectorXd wr(cols), qr(cols);
  RowMat A(cols, kb);
  double total = 0;
  auto row_error = [&](const Eigen::VectorXd& d) { return d.dot(H * d); };
  for (int64_t r = 0; r < rows; ++r) {
    A.setZero();
    for (int64_t c = 0; c < cols; ++c) {
      const BlockGrid& g = q.grids[r * kb + c / bs];
      wr(c) = w[r * cols + c];
      A(c, c / bs) = g.binary   ? static_cast<double>(q.levels[r * cols + c])
                     : g.float_codes() ? static_cast<double>(g.code_value(q.levels[r * cols + c]))
                                       : static_cast<double>(q.levels[r * cols + c] - g.zero_point);
    }
    Eigen::VectorXd s_old(kb);
    for (int64_t b = 0; b < kb; ++b) s_old(b) = q.grids[r * kb + b].scale;
    const double e_old = row_error(wr - A * s_old);
    const RowMat HA = H * A;
    Eigen::MatrixXd M = A.transpose() * HA;
    const Eigen::VectorXd rhs = HA.transpose() * wr;
    // Blocks whose levels are all zero have no say: pin them (identity row) to keep their scale.
    for (int64_t b = 0; b < kb; ++b)
      if (A.col(b).cwiseAbs().sum() == 0.0) {
        M.row(b).setZero();
        M.col(b).setZero();
        M(b, b) = 1.0;
      }
    Eigen::VectorXd s_new = M.ldlt().solve(rhs);
    for (int64_t b = 0; b < kb; ++b)
      if (A.col(b).cwiseAbs().sum() == 0.0) s_new(b) = s_old(b);
    bool ok = s_new.allFinite();
    for (int64_t b = 0; b < kb && ok; ++b) {
      float v = static_cast<float>(s_new(b));
      if (fp16) v = half_to_float(float_to_half(v));
      ok = v > 0.0f && std::isfinite(v);
      s_new(b) = v;
    }
    const double e_new = ok ? row_error(wr - A * s_new) : e_old;
    if (ok && e_new < e_old) {
      for (int64_t b = 0; b < kb; ++b) q.grids[r * kb + b].scale = static_cast<float>(s_new(b));
      total += e_new;
    } else {
      total += e_old;
    }
  }
  return total;
}

}  // namespace qtool::quant
