// Less common ops: Einsum (any equation, with ellipsis), Unique, window functions
// (Hann/Hamming/Blackman), MeanVarianceNormalization, NonMaxSuppression, GridSample, LRN and Det.
//
// Einsum is the reference form, not a GEMM: every label gets one size and, per operand, one
// stride (repeated labels add their strides, which reads diagonals; size-1 ellipsis dims get
// stride 0, which broadcasts); an odometer walks every label combination and accumulates
// prod(operands) into the output element. O(product of all label sizes), accumulating in double.
#include <algorithm>
#include <cmath>
#include <map>
#include <numbers>

#include "kernel_util.h"
#include "kernels.h"

namespace qtool::runtime::kernels {

namespace {

std::string strip_spaces(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c != ' ') out.push_back(c);
  }
  return out;
}

void einsum_kernel(KernelContext& ctx) {
  const ir::Node& n = ctx.node();
  const std::string eq = strip_spaces(n.required_attr("equation").s);
  const size_t arrow = eq.find("->");
  const std::string lhs = eq.substr(0, arrow);
  std::vector<std::string> terms;
  for (size_t p = 0;;) {
    const size_t c = lhs.find(',', p);
    terms.push_back(lhs.substr(p, c == std::string::npos ? std::string::npos : c - p));
    if (c == std::string::npos) break;
    p = c + 1;
  }
  QTOOL_CHECK(terms.size() == ctx.num_inputs(), ErrorCode::kInvalidModel, "{}: equation '{}' has {} operands but the node has {} inputs",
              n.describe(), eq, terms.size(), ctx.num_inputs());
  // Ellipsis dims become labels '\x01', '\x02', ... aligned from the right.
  int ell_rank = 0;
  for (size_t k = 0; k < terms.size(); ++k) {
    const size_t e = terms[k].find("...");
    if (e != std::string::npos) {
      ell_rank = std::max<int>(ell_rank, static_cast<int>(ctx.input(k).rank()) - static_cast<int>(terms[k].size() - 3));
    }
  }
  std::string ell;
  for (int i = 0; i < ell_rank; ++i) ell.push_back(static_cast<char>(1 + i));
  for (size_t k = 0; k < terms.size(); ++k) {
    const size_t e = terms[k].find("...");
    if (e == std::string::npos) continue;
    const int r = static_cast<int>(ctx.input(k).rank()) - static_cast<int>(terms[k].size() - 3);
    terms[k] = terms[k].substr(0, e) + ell.substr(ell_rank - r) + terms[k].substr(e + 3);
  }
  std::string out_labels;
  if (arrow != std::string::npos) {
    out_labels = eq.substr(arrow + 2);
    const size_t e = out_labels.find("...");
    if (e != std::string::npos) out_labels = out_labels.substr(0, e) + ell + out_labels.substr(e + 3);
  } else {  // implicit: ellipsis dims, then labels seen once, alphabetically
    std::map<char, int> count;
    for (const auto& t : terms)
      for (char c : t) ++count[c];
    out_labels = ell;
    for (const auto& [c, k] : count) {
      if (k == 1 && c > 26) out_labels.push_back(c);
    }
  }
  // Label sizes.
  std::map<char, int64_t> size;
  for (size_t k = 0; k < terms.size(); ++k) {
    const Tensor& t = ctx.input(k);
    QTOOL_CHECK(terms[k].size() == t.rank(), ErrorCode::kInvalidModel, "{}: term '{}' does not match input {} of shape {}",
                n.describe(), terms[k], k, shape_str(t.shape()));
    for (size_t d = 0; d < t.rank(); ++d) {
      int64_t& s = size[terms[k][d]];
      if (s <= 1) s = t.shape()[d];
      QTOOL_CHECK(t.shape()[d] == s || t.shape()[d] == 1, ErrorCode::kInvalidModel,
                  "{}: label '{}' has sizes {} and {}", n.describe(), terms[k][d], s, t.shape()[d]);
    }
  }
  std::vector<char> labels;
  for (const auto& [c, s] : size) labels.push_back(c);
  const size_t L = labels.size();
  auto label_index = [&](char c) { return static_cast<size_t>(std::find(labels.begin(), labels.end(), c) - labels.begin()); };
  // Per-operand and output strides per label.
  std::vector<std::vector<int64_t>> strides(terms.size() + 1, std::vector<int64_t>(L, 0));
  for (size_t k = 0; k < terms.size(); ++k) {
    const Tensor& t = ctx.input(k);
    const std::vector<int64_t> st = strides_of(t.shape());
    for (size_t d = 0; d < t.rank(); ++d) {
      if (t.shape()[d] != 1) strides[k][label_index(terms[k][d])] += st[d];
    }
  }
  Shape out_shape;
  for (char c : out_labels) {
    QTOOL_CHECK(size.count(c), ErrorCode::kInvalidModel, "{}: output label '{}' is not an input label",
                n.describe(), c);
    out_shape.push_back(size[c]);
  }
  const std::vector<int64_t> ost = strides_of(out_shape);
  for (size_t d = 0; d < out_labels.size(); ++d) strides.back()[label_index(out_labels[d])] = ost[d];
  std::vector<std::vector<double>> in;
  for (size_t k = 0; k < terms.size(); ++k) in.push_back(double_values(ctx.input(k)));
  std::vector<double> out(static_cast<size_t>(shape_numel(out_shape)), 0.0);
  std::vector<int64_t> dims(L);
  int64_t total = 1;
  for (size_t l = 0; l < L; ++l) total *= (dims[l] = size[labels[l]]);
  std::vector<int64_t> idx(L, 0), off(terms.size() + 1, 0);
  for (int64_t it = 0; it < total; ++it) {
    double p = 1.0;
    for (size_t k = 0; k < terms.size(); ++k) p *= in[k][off[k]];
    out[off.back()] += p;
    for (size_t l = L; l-- > 0;) {
      for (size_t k = 0; k < off.size(); ++k) off[k] += strides[k][l];
      if (++idx[l] < dims[l]) break;
      for (size_t k = 0; k < off.size(); ++k) off[k] -= strides[k][l] * dims[l];
      idx[l] = 0;
    }
  }
  ctx.set_output(0, Tensor::from_vector<double>(out_shape, out).cast(ctx.input(0).dtype()));
}

/// Unique: unique elements (no axis: of the flattened input) or unique slices along `axis`,
/// sorted (lexicographically for slices, the default) or in order of first occurrence; outputs
/// Y, the first index of each, the inverse indices and the counts.
void unique_kernel(KernelContext& ctx) {
  const ir::Node& n = ctx.node();
  const Tensor& x = ctx.input(0);
  const bool sorted = n.attr_int("sorted", 1) != 0;
  const bool has_axis = n.has_attr("axis");
  const int64_t r = static_cast<int64_t>(x.rank());
  const int64_t axis = has_axis ? normalize_axis(n.attr_int("axis", 0), r, n) : 0;
  int64_t outer = 1, dim = x.numel(), inner = 1;
  if (has_axis) {
    dim = x.shape()[axis];
    for (int64_t d = 0; d < axis; ++d) outer *= x.shape()[d];
    for (int64_t d = axis + 1; d < r; ++d) inner *= x.shape()[d];
  }
  const std::vector<double> v = double_values(x);
  std::vector<std::vector<double>> slices(dim);
  for (int64_t i = 0; i < dim; ++i)
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t k = 0; k < inner; ++k) slices[i].push_back(v[(o * dim + i) * inner + k]);
  std::vector<int64_t> first;  // index of the first occurrence of each unique slice
  std::map<std::vector<double>, int64_t> seen;
  std::vector<int64_t> which(dim);
  for (int64_t i = 0; i < dim; ++i) {
    auto [it, inserted] = seen.emplace(slices[i], static_cast<int64_t>(first.size()));
    if (inserted) first.push_back(i);
    which[i] = it->second;
  }
  std::vector<int64_t> order(first.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
  if (sorted) {
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return slices[first[a]] < slices[first[b]]; });
  }
  std::vector<int64_t> rank(order.size());
  for (size_t i = 0; i < order.size(); ++i) rank[order[i]] = static_cast<int64_t>(i);
  const int64_t u = static_cast<int64_t>(order.size());
  std::vector<int64_t> idx(u), counts(u, 0), inverse(dim);
  for (int64_t i = 0; i < u; ++i) idx[i] = first[order[i]];
  for (int64_t i = 0; i < dim; ++i) {
    inverse[i] = rank[which[i]];
    ++counts[inverse[i]];
  }
  Shape y_shape{u};
  if (has_axis) {
    y_shape = x.shape();
    y_shape[axis] = u;
  }
  std::vector<double> y(static_cast<size_t>(outer * u * inner));
  for (int64_t j = 0; j < u; ++j) {
    const std::vector<double>& sl = slices[idx[j]];
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t k = 0; k < inner; ++k) y[(o * u + j) * inner + k] = sl[o * inner + k];
  }
  ctx.set_output(0, Tensor::from_vector<double>(y_shape, y).cast(x.dtype()));
  if (ctx.wants_output(1)) ctx.set_output(1, Tensor::from_vector<int64_t>({u}, idx));
  if (ctx.wants_output(2)) ctx.set_output(2, Tensor::from_vector<int64_t>({dim}, inverse));
  if (ctx.wants_output(3)) ctx.set_output(3, Tensor::from_vector<int64_t>({u}, counts));
}

/// LRN: y = x / (bias + alpha/size * sum of x² over the `size` channels around c)^beta.
void lrn_kernel(KernelContext& ctx) {
  const ir::Node& n = ctx.node();
  const Tensor x = ctx.input(0).to_float();
  QTOOL_CHECK(x.rank() >= 2, ErrorCode::kInvalidModel, "{}: input must have rank >= 2", n.describe());
  const int64_t size = n.required_attr("size").i;
  const double alpha = n.attr_float("alpha", 1e-4f), beta = n.attr_float("beta", 0.75f), bias = n.attr_float("bias", 1.0f);
  const int64_t N = x.dim(0), C = x.dim(1), S = x.numel() / std::max<int64_t>(N * C, 1);
  const int64_t lo = (size - 1) / 2, hi = size - 1 - lo;
  const float* p = x.data<float>();
  Tensor out = Tensor::empty(DataType::kFloat, x.shape());
  float* o = out.mutable_data<float>();
  for (int64_t b = 0; b < N; ++b)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t s = 0; s < S; ++s) {
        double sq = 0;
        for (int64_t k = std::max<int64_t>(0, c - lo); k <= std::min(C - 1, c + hi); ++k) {
          const double v = p[(b * C + k) * S + s];
          sq += v * v;
        }
        const int64_t i = (b * C + c) * S + s;
        o[i] = static_cast<float>(p[i] / std::pow(bias + alpha / static_cast<double>(size) * sq, beta));
      }
  ctx.set_output(0, ctx.input(0).dtype() == DataType::kFloat ? std::move(out) : out.cast(ctx.input(0).dtype()));
}

/// Det over the last two dims: LU decomposition with partial pivoting, in double.
void det_kernel(KernelContext& ctx) {
  const ir::Node& n = ctx.node();
  const Tensor& x = ctx.input(0);
  QTOOL_CHECK(x.rank() >= 2 && x.dim(-1) == x.dim(-2), ErrorCode::kInvalidModel, "{}: input {} is not square",
              n.describe(), shape_str(x.shape()));
  const int64_t m = x.dim(-1);
  const int64_t mats = x.numel() / std::max<int64_t>(m * m, 1);
  const std::vector<double> v = double_values(x);
  std::vector<double> dets(mats);
  for (int64_t t = 0; t < mats; ++t) {
    std::vector<double> a(v.begin() + t * m * m, v.begin() + (t + 1) * m * m);
    double det = 1.0;
    for (int64_t c = 0; c < m; ++c) {
      int64_t piv = c;
      for (int64_t r = c + 1; r < m; ++r) {
        if (std::fabs(a[r * m + c]) > std::fabs(a[piv * m + c])) piv = r;
      }
      if (a[piv * m + c] == 0.0) {
        det = 0.0;
        break;
      }
      if (piv != c) {
        for (int64_t k = 0; k < m; ++k) std::swap(a[c * m + k], a[piv * m + k]);
        det = -det;
      }
      det *= a[c * m + c];
      for (int64_t r = c + 1; r < m; ++r) {
        const double f = a[r * m + c] / a[c * m + c];
        for (int64_t k = c; k < m; ++k) a[r * m + k] -= f * a[c * m + k];
      }
    }
    dets[t] = det;
  }
  const Shape out_shape(x.shape().begin(), x.shape().end() - 2);
  ctx.set_output(0, Tensor::from_vector<double>(out_shape, dets).cast(x.dtype()));
}

/// Generalised cosine windows: w[i] = a0 - a1 cos(2πi/N) + a2 cos(4πi/N), N = size (periodic) or size-1.
template <int kKind>
void window_kernel(KernelContext& ctx) {
  const int64_t size = static_cast<int64_t>(scalar_value(ctx.input(0), ctx.node(), "size"));
  const bool periodic = ctx.node().attr_int("periodic", 1) != 0;
  const DataType dt = static_cast<DataType>(ctx.node().attr_int("output_datatype", 1));
  double a0, a1, a2 = 0.0;
  if constexpr (kKind == 0) {  // Hann
    a0 = 0.5, a1 = 0.5;
  } else if constexpr (kKind == 1) {  // Hamming
    a0 = 25.0 / 46.0, a1 = 1.0 - 25.0 / 46.0;
  } else {  // Blackman
    a0 = 0.42, a1 = 0.5, a2 = 0.08;
  }
  const double N = static_cast<double>(periodic ? size : size - 1);
  std::vector<double> w(std::max<int64_t>(size, 0));
  for (int64_t i = 0; i < size; ++i) {
    const double t = 2.0 * std::numbers::pi * static_cast<double>(i) / N;
    w[i] = a0 - a1 * std::cos(t) + a2 * std::cos(2.0 * t);
  }
  ctx.set_output(0, Tensor::from_vector<double>({size}, w).cast(dt));
}

/// MeanVarianceNormalization: (x - mean) / sqrt(var) over `axes` (default [0, 2, 3]).
void mvn_kernel(KernelContext& ctx) {
  const ir::Node& n = ctx.node();
  const Tensor& x = ctx.input(0);
  const int64_t r = static_cast<int64_t>(x.rank());
  std::vector<char> reduce(r, 0);
  for (int64_t a : n.attr_ints("axes", {0, 2, 3})) reduce[normalize_axis(a, r, n)] = 1;
  Shape keep = x.shape();
  for (int64_t d = 0; d < r; ++d) {
    if (reduce[d]) keep[d] = 1;
  }
  const std::vector<double> v = double_values(x);
  const int64_t groups = shape_numel(keep);
  std::vector<double> sum(groups, 0.0), sq(groups, 0.0);
  std::vector<int64_t> where(v.size());
  const BroadcastPlan<1> plan({&keep}, x.shape());
  plan.for_rows(0, x.numel(), [&](int64_t pos, const std::array<int64_t, 1>& off, int64_t len,
                                  const std::array<int64_t, 1>& st) {
    for (int64_t i = 0; i < len; ++i) where[pos + i] = off[0] + i * st[0];
  });
  for (size_t i = 0; i < v.size(); ++i) {
    sum[where[i]] += v[i];
    sq[where[i]] += v[i] * v[i];
  }
  const double count = static_cast<double>(x.numel()) / static_cast<double>(std::max<int64_t>(groups, 1));
  std::vector<double> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    const double mean = sum[where[i]] / count;
    const double var = std::max(0.0, sq[where[i]] / count - mean * mean);
    out[i] = (v[i] - mean) / (std::sqrt(var) + 1e-9);
  }
  ctx.set_output(0, Tensor::from_vector<double>(x.shape(), out).cast(x.dtype()));
}

/// NonMaxSuppression: per (batch, class), greedily keeps the highest-scoring boxes whose IoU with
/// every kept box is <= iou_threshold, among scores > score_threshold, at most
/// max_output_boxes_per_class of them. Output rows are (batch, class, box).
void nms_kernel(KernelContext& ctx) {
  const ir::Node& n = ctx.node();
  const Tensor boxes = ctx.input(0).to_float();
  const Tensor scores = ctx.input(1).to_float();
  QTOOL_CHECK(boxes.rank() == 3 && boxes.dim(2) == 4 && scores.rank() == 3 && scores.dim(0) == boxes.dim(0) &&
                  scores.dim(2) == boxes.dim(1),
              ErrorCode::kInvalidModel, "{}: boxes {} and scores {} do not match", n.describe(),
              shape_str(boxes.shape()), shape_str(scores.shape()));
  const int64_t max_out = ctx.has_input(2) && ctx.input(2).numel() ? static_cast<int64_t>(ctx.input(2).get_as_double(0)) : 0;
  const float iou_thr = ctx.has_input(3) && ctx.input(3).numel() ? static_cast<float>(ctx.input(3).get_as_double(0)) : 0.0f;
  const bool has_score_thr = ctx.has_input(4) && ctx.input(4).numel();
  const float score_thr = has_score_thr ? static_cast<float>(ctx.input(4).get_as_double(0)) : 0.0f;
  const bool center = n.attr_int("center_point_box", 0) != 0;
  const int64_t B = boxes.dim(0), S = boxes.dim(1), C = scores.dim(1);
  const float* bx = boxes.data<float>();
  const float* sc = scores.data<float>();
  // Corners (y1, x1, y2, x2) with y1 <= y2, x1 <= x2.
  auto corners = [&](int64_t b, int64_t i) {
    const float* p = bx + (b * S + i) * 4;
    std::array<float, 4> c;
    if (center) {
      c = {p[1] - p[3] / 2, p[0] - p[2] / 2, p[1] + p[3] / 2, p[0] + p[2] / 2};
    } else {
      c = {std::min(p[0], p[2]), std::min(p[1], p[3]), std::max(p[0], p[2]), std::max(p[1], p[3])};
    }
    return c;
  };
  auto iou = [](const std::array<float, 4>& a, const std::array<float, 4>& b) {
    const float ih = std::max(0.0f, std::min(a[2], b[2]) - std::max(a[0], b[0]));
    const float iw = std::max(0.0f, std::min(a[3], b[3]) - std::max(a[1], b[1]));
    const float inter = ih * iw;
    const float uni = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    return uni > 0 ? inter / uni : 0.0f;
  };
  std::vector<int64_t> out;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t c = 0; c < C; ++c) {
      const float* s = sc + (b * C + c) * S;
      std::vector<int64_t> cand;
      for (int64_t i = 0; i < S; ++i) {
        if (!has_score_thr || s[i] > score_thr) cand.push_back(i);
      }
      std::stable_sort(cand.begin(), cand.end(), [&](int64_t x, int64_t y) { return s[x] > s[y]; });
      std::vector<std::array<float, 4>> kept;
      for (int64_t i : cand) {
        if (static_cast<int64_t>(kept.size()) >= max_out) break;
        const auto box = corners(b, i);
        bool keep = true;
        for (const auto& k : kept) {
          if (iou(box, k) > iou_thr) {
            keep = false;
            break;
          }
        }
        if (!keep) continue;
        kept.push_back(box);
        out.insert(out.end(), {b, c, i});
      }
    }
  }
  ctx.set_output(0, Tensor::from_vector<int64_t>({static_cast<int64_t>(out.size() / 3), 3}, out));
}

/// PyTorch's reflect_coordinates: reflects x into [twice_low/2, twice_high/2].
double reflect_coord(double x, double twice_low, double twice_high) {
  if (twice_low == twice_high) return 0.0;
  const double lo = twice_low / 2, span = (twice_high - twice_low) / 2;
  x = std::fabs(x - lo);
  const double extra = std::fmod(x, span);
  const int64_t flips = static_cast<int64_t>(std::floor(x / span));
  return flips % 2 == 0 ? extra + lo : span - extra + lo;
}

/// GridSample (opset 16, 4-D): samples X at the normalised grid positions (x, y in [-1, 1]),
/// bilinear / nearest / bicubic (A = -0.75), with zeros / border / reflection padding, following
/// the ONNX reference (which mirrors PyTorch's grid_sample).
void grid_sample_kernel(KernelContext& ctx) {
  const ir::Node& n = ctx.node();
  const Tensor x = ctx.input(0).to_float();
  const Tensor grid = ctx.input(1).to_float();
  QTOOL_CHECK(x.rank() == 4 && grid.rank() == 4 && grid.dim(3) == 2 && grid.dim(0) == x.dim(0),
              ErrorCode::kUnsupported, "{}: only 4-D inputs with an [N, H, W, 2] grid are supported (got {} and {})",
              n.describe(), shape_str(x.shape()), shape_str(grid.shape()));
  const bool align = n.attr_int("align_corners", 0) != 0;
  const std::string mode = n.attr_string("mode", "bilinear");
  const std::string pad = n.attr_string("padding_mode", "zeros");
  QTOOL_CHECK(mode == "bilinear" || mode == "linear" || mode == "nearest" || mode == "bicubic" || mode == "cubic",
              ErrorCode::kUnsupported, "{}: mode '{}' is not supported", n.describe(), mode);
  const int64_t N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3), Ho = grid.dim(1), Wo = grid.dim(2);
  const float* px = x.data<float>();
  const float* pg = grid.data<float>();
  Tensor out = Tensor::empty(DataType::kFloat, {N, C, Ho, Wo});
  float* po = out.mutable_data<float>();
  auto unnormalize = [&](double g, int64_t size) {
    return align ? (g + 1) / 2 * static_cast<double>(size - 1) : ((g + 1) * static_cast<double>(size) - 1) / 2;
  };
  // Padding applied to a coordinate (bilinear/nearest source positions and bicubic taps).
  auto pad_coord = [&](double c, int64_t size) {
    if (pad == "border") return std::clamp(c, 0.0, static_cast<double>(size - 1));
    if (pad == "reflection") {
      c = align ? reflect_coord(c, 0, 2.0 * static_cast<double>(size - 1))
                : reflect_coord(c, -1, 2.0 * static_cast<double>(size) - 1);
      return std::clamp(c, 0.0, static_cast<double>(size - 1));
    }
    return c;
  };
  auto at = [&](const float* plane, int64_t yy, int64_t xx) -> double {
    return (yy < 0 || yy >= H || xx < 0 || xx >= W) ? 0.0 : plane[yy * W + xx];
  };
  auto tap = [&](const float* plane, int64_t yy, int64_t xx) -> double {  // bicubic taps, padded
    if (pad != "zeros") {
      yy = static_cast<int64_t>(pad_coord(static_cast<double>(yy), H));
      xx = static_cast<int64_t>(pad_coord(static_cast<double>(xx), W));
    }
    return at(plane, yy, xx);
  };
  auto cubic = [](double t) {
    const double A = -0.75;
    auto c1 = [&](double v) { return ((A + 2) * v - (A + 3)) * v * v + 1; };
    auto c2 = [&](double v) { return ((A * v - 5 * A) * v + 8 * A) * v - 4 * A; };
    return std::array<double, 4>{c2(t + 1), c1(t), c1(1 - t), c2(2 - t)};
  };
  for (int64_t b = 0; b < N; ++b) {
    for (int64_t i = 0; i < Ho; ++i) {
      for (int64_t j = 0; j < Wo; ++j) {
        const float* g = pg + ((b * Ho + i) * Wo + j) * 2;
        double sx = unnormalize(g[0], W), sy = unnormalize(g[1], H);
        const bool is_cubic = mode == "bicubic" || mode == "cubic";
        if (!is_cubic) {
          sx = pad_coord(sx, W);
          sy = pad_coord(sy, H);
        }
        for (int64_t c = 0; c < C; ++c) {
          const float* plane = px + (b * C + c) * H * W;
          double v;
          if (mode == "nearest") {
            v = at(plane, static_cast<int64_t>(std::nearbyint(sy)), static_cast<int64_t>(std::nearbyint(sx)));
          } else if (!is_cubic) {
            const double x0 = std::floor(sx), y0 = std::floor(sy);
            const double fx = sx - x0, fy = sy - y0;
            const int64_t ix = static_cast<int64_t>(x0), iy = static_cast<int64_t>(y0);
            v = (1 - fy) * ((1 - fx) * at(plane, iy, ix) + fx * at(plane, iy, ix + 1)) +
                fy * ((1 - fx) * at(plane, iy + 1, ix) + fx * at(plane, iy + 1, ix + 1));
          } else {
            const double x0 = std::floor(sx), y0 = std::floor(sy);
            const auto wx = cubic(sx - x0), wy = cubic(sy - y0);
            const int64_t ix = static_cast<int64_t>(x0), iy = static_cast<int64_t>(y0);
            v = 0;
            for (int r = 0; r < 4; ++r) {
              double row = 0;
              for (int k = 0; k < 4; ++k) row += wx[k] * tap(plane, iy - 1 + r, ix - 1 + k);
              v += wy[r] * row;
            }
          }
          po[((b * C + c) * Ho + i) * Wo + j] = static_cast<float>(v);
        }
      }
    }
  }
  ctx.set_output(0, ctx.input(0).dtype() == DataType::kFloat ? std::move(out) : out.cast(ctx.input(0).dtype()));
}

}  // namespace

void register_misc_kernels(KernelRegistry& r) {
  r.add("", "Einsum", 12, einsum_kernel);
  r.add("", "Unique", 11, unique_kernel);
  r.add("", "HannWindow", 17, window_kernel<0>);
  r.add("", "HammingWindow", 17, window_kernel<1>);
  r.add("", "BlackmanWindow", 17, window_kernel<2>);
  r.add("", "MeanVarianceNormalization", 9, mvn_kernel);
  r.add("", "NonMaxSuppression", 10, nms_kernel);
  r.add("", "GridSample", 16, grid_sample_kernel);
  r.add("", "LRN", 1, lrn_kernel);
  r.add("", "Det", 11, det_kernel);
}

}  // namespace qtool::runtime::kernels
