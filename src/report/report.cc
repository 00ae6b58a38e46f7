// Quantize reports: weight analysis of the emitted model, summary table, JSON and HTML (see report.h).
#include "qtool/report/report.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <set>

#include <fmt/format.h>

#include "qtool/core/compressed_size.h"
#include "qtool/core/npy.h"

namespace qtool::report {

// ---------------------------------------------------------------------------------------------
// QuantizeReport

int64_t QuantizeReport::total_params() const {
  int64_t n = 0;
  for (const auto& l : layers) n += l.params;
  return n;
}
int64_t QuantizeReport::total_weight_bytes() const {
  int64_t n = 0;
  for (const auto& l : layers) n += l.bytes;
  return n;
}
double QuantizeReport::bits_per_weight() const {
  const int64_t p = total_params();
  return p > 0 ? 8.0 * static_cast<double>(total_weight_bytes()) / static_cast<double>(p) : kNotMeasured;
}
double QuantizeReport::size_percent() const {
  if (fp32_file_bytes <= 0 || output_file_bytes <= 0) return kNotMeasured;
  return 100.0 * static_cast<double>(output_file_bytes) / static_cast<double>(fp32_file_bytes);
}

// ---------------------------------------------------------------------------------------------
// analyze_quantized_weights

namespace {

ScaleStats scale_stats(const Tensor* scale) {
  ScaleStats s;
  if (!scale || !scale->defined() || scale->numel() == 0) return s;
  const Tensor f = scale->to_float();
  const float* p = f.data<float>();
  s.count = f.numel();
  s.min = s.max = p[0];
  double sum = 0;
  for (int64_t i = 0; i < s.count; ++i) {
    s.min = std::min<double>(s.min, p[i]);
    s.max = std::max<double>(s.max, p[i]);
    sum += p[i];
  }
  s.mean = sum / static_cast<double>(s.count);
  return s;
}

const Tensor* init_of(const ir::Node& n, size_t i) {
  const ir::Value* v = n.input(i);
  return v ? v->initializer() : nullptr;
}

/// The constant scale of a DequantizeLinear: an initializer, or a float16 initializer behind the
/// Cast the low-bit writer puts in front of the scale input (half-size scales).
const Tensor* scale_of(const ir::Node& n, size_t i) {
  if (const Tensor* t = init_of(n, i)) return t;
  const ir::Value* v = n.input(i);
  const ir::Node* cast = v ? v->producer() : nullptr;
  if (!cast || cast->op_type() != "Cast" || !cast->domain().empty()) return nullptr;
  return init_of(*cast, 0);
}

int64_t bytes_of(const Tensor* t) { return t ? static_cast<int64_t>(t->nbytes()) : 0; }

bool zero_points_zero(const Tensor* zp) {
  if (!zp) return true;
  for (int64_t i = 0; i < zp->numel(); ++i)
    if (zp->get_as_double(i) != 0.0) return false;
  return true;
}

std::string precision_name(const Tensor& q) {
  std::string name(dtype_name(q.dtype()));
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
  if (dtype_bits(q.dtype()) == 2 && q.dtype() == DataType::kInt2) {
    // Ternary {-1,0,1} and binary {-1,1} codes are stored as int2.
    bool has_zero = false, only_pm1 = true;
    for (int64_t i = 0; i < q.numel() && only_pm1; ++i) {
      const double v = q.get_as_double(i);
      if (v == 0.0) has_zero = true;
      else if (v != 1.0 && v != -1.0) only_pm1 = false;
    }
    if (only_pm1) return has_zero ? "ternary" : "binary";
  }
  return name;
}

/// The first node reading `v`, for the layer's name.
const ir::Node* first_consumer(const ir::Value* v) {
  if (!v) return nullptr;
  for (const auto& u : v->uses())
    if (u.node) return u.node;
  return nullptr;
}

bool is_weighted_op(const std::string& op) {
  return op == "Conv" || op == "ConvTranspose" || op == "Gemm" || op == "MatMul";
}

}  // namespace

std::vector<LayerReport> analyze_quantized_weights(const ir::Model& model, int64_t min_float_params) {
  std::vector<LayerReport> out;
  if (!model.graph) return out;
  const ir::Graph& g = *model.graph;
  std::set<const ir::Value*> seen;
  for (const auto& np : g.nodes()) {
    const ir::Node& n = *np;
    try {
      if (n.op_type() == "DequantizeLinear" && n.domain().empty()) {
        // Levels are an initializer, or one behind a Cast (W4A8: packed int4 read as int8).
        const Tensor* q = scale_of(n, 0);
        const Tensor* scale = scale_of(n, 1);
        if (!q || !scale || !n.output(0)) continue;
        const int bits = dtype_bits(q->dtype());
        const bool is_int = q->dtype() != DataType::kFloat && q->dtype() != DataType::kFloat16 &&
                            q->dtype() != DataType::kBFloat16 && q->dtype() != DataType::kDouble;
        if (!is_int || bits > 16) continue;  // int32 biases and float inputs are not weights
        if (!seen.insert(n.input(0)).second) continue;
        LayerReport l;
        const ir::Node* consumer = first_consumer(n.output(0));
        // A DQ feeding a Transpose/Reshape (e.g. MatMul weights) names the layer after the op behind it.
        if (consumer && !is_weighted_op(consumer->op_type()) && consumer->op_type() != "Gather" &&
            consumer->output(0)) {
          if (const ir::Node* next = first_consumer(consumer->output(0))) consumer = next;
        }
        l.node = consumer ? consumer->name() : n.input(0)->name();
        l.op_type = consumer ? consumer->op_type() : "";
        l.weight = init_of(n, 0) ? n.input(0)->name() : n.input(0)->producer()->input(0)->name();
        l.precision = precision_name(*q);
        l.bits = bits;
        const int64_t axis = n.attr_int("axis", 1);
        const int64_t block = n.attr_int("block_size", 0);
        if (scale->numel() == 1) l.scheme = "per-tensor";
        else if (block > 0) l.scheme = fmt::format("block({}, axis={})", block, axis);
        else l.scheme = fmt::format("per-channel(axis={})", axis);
        const Tensor* zp = init_of(n, 2);
        l.symmetric = zero_points_zero(zp);
        l.params = q->numel();
        l.fp32_bytes = 4 * l.params;
        l.bytes = bytes_of(q) + bytes_of(scale) + bytes_of(zp);
        l.scales = scale_stats(scale);
        out.push_back(std::move(l));
      } else if (n.op_type() == "MatMulNBits") {
        const Tensor* b = init_of(n, 1);
        const Tensor* scale = init_of(n, 2);
        if (!b || !scale) continue;
        LayerReport l;
        l.node = n.name();
        l.op_type = n.op_type();
        l.weight = n.input(1)->name();
        l.bits = static_cast<int>(n.attr_int("bits", 4));
        l.precision = fmt::format("uint{}", l.bits);
        const int64_t block = n.attr_int("block_size", 0);
        l.scheme = fmt::format("matmulnbits(block {})", block);
        const Tensor* zp = init_of(n, 3);
        l.symmetric = zp == nullptr;
        l.params = n.attr_int("K", 0) * n.attr_int("N", 0);
        l.fp32_bytes = 4 * l.params;
        l.bytes = bytes_of(b) + bytes_of(scale) + bytes_of(zp);
        l.scales = scale_stats(scale);
        out.push_back(std::move(l));
      } else if ((n.op_type() == "QLinearConv" || n.op_type() == "QLinearMatMul") && n.domain().empty()) {
        const Tensor* w = init_of(n, 3);
        const Tensor* scale = init_of(n, 4);
        if (!w || !scale) continue;
        LayerReport l;
        l.node = n.name();
        l.op_type = n.op_type();
        l.weight = n.input(3)->name();
        l.precision = precision_name(*w);
        l.bits = dtype_bits(w->dtype());
        l.scheme = scale->numel() == 1 ? "per-tensor" : "per-channel(axis=0)";
        const Tensor* zp = init_of(n, 5);
        l.symmetric = zero_points_zero(zp);
        l.params = w->numel();
        l.fp32_bytes = 4 * l.params;
        l.bytes = bytes_of(w) + bytes_of(scale) + bytes_of(zp);
        l.scales = scale_stats(scale);
        out.push_back(std::move(l));
      } else if (is_weighted_op(n.op_type()) && n.domain().empty()) {
        const ir::Value* wv = n.input(1);
        const Tensor* w = wv ? wv->initializer() : nullptr;
        if (!w || (w->dtype() != DataType::kFloat && w->dtype() != DataType::kFloat16 &&
                   w->dtype() != DataType::kBFloat16))
          continue;
        if (w->numel() < min_float_params || !seen.insert(wv).second) continue;
        LayerReport l;
        l.node = n.name();
        l.op_type = n.op_type();
        l.weight = wv->name();
        l.precision = w->dtype() == DataType::kFloat ? "fp32" : (w->dtype() == DataType::kFloat16 ? "fp16" : "bf16");
        l.bits = dtype_bits(w->dtype());
        l.scheme = "float";
        l.params = w->numel();
        l.fp32_bytes = 4 * l.params;
        l.bytes = bytes_of(w);
        out.push_back(std::move(l));
      }
    } catch (const Error&) {
      // An unusual node (e.g. a malformed attribute) is left out of the report, never fatal.
    }
  }
  return out;
}

QuantizeReport make_quantize_report(const std::string& input_path, const std::string& output_path,
                                    const ir::Model& quantized, const std::string& precision) {
  QuantizeReport r;
  r.input_model = input_path;
  r.output_model = output_path;
  r.precision = precision;
  std::error_code ec;
  const auto in_size = std::filesystem::file_size(input_path, ec);
  r.fp32_file_bytes = ec ? 0 : static_cast<int64_t>(in_size);
  const auto out_size = std::filesystem::file_size(output_path, ec);
  r.output_file_bytes = ec ? 0 : static_cast<int64_t>(out_size);
  r.layers = analyze_quantized_weights(quantized);
  return r;
}

void measure_output_file(QuantizeReport& r) {
  std::error_code ec;
  const auto out_size = std::filesystem::file_size(r.output_model, ec);
  r.output_file_bytes = ec ? 0 : static_cast<int64_t>(out_size);
  r.output_zstd_bytes = ec || r.output_model.empty() ? 0 : zstd_compressed_size(r.output_model);
}

// ---------------------------------------------------------------------------------------------
// Summary table

namespace {
std::string group_digits(int64_t v) {
  const std::string digits = std::to_string(v < 0 ? -v : v);
  std::string s;
  if (v < 0) s.push_back('-');
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) s.push_back(',');
    s.push_back(digits[i]);
  }
  return s;
}
std::string fmt_db(double v) {
  if (std::isnan(v)) return "-";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  return fmt::format("{:.1f} dB", v);
}
std::string fmt_pct(double f) { return std::isnan(f) ? "-" : fmt::format("{:.1f}%", 100.0 * f); }

/// The worst (lowest) SQNR and top-1 agreement over the outputs.
std::pair<double, double> worst_quality(const QuantizeReport& r) {
  double sqnr = kNotMeasured, agree = kNotMeasured;
  for (const auto& o : r.outputs) {
    if (!std::isnan(o.sqnr_db)) sqnr = std::isnan(sqnr) ? o.sqnr_db : std::min(sqnr, o.sqnr_db);
    if (!std::isnan(o.top1_agreement))
      agree = std::isnan(agree) ? o.top1_agreement : std::min(agree, o.top1_agreement);
  }
  return {sqnr, agree};
}
}  // namespace

std::string format_summary_table(const QuantizeReport& r) {
  struct Row {
    std::string cells[6];
  };
  std::vector<Row> rows;
  rows.push_back({{"precision", "size", "bits/weight", "output SQNR", "top-1 agree", "samples"}});
  const std::string fp32_size = r.fp32_file_bytes > 0 ? group_digits(r.fp32_file_bytes) + " B (100%)" : "-";
  rows.push_back({{"FP32", fp32_size, "32.00", "-", "-", "-"}});
  std::string size = r.output_file_bytes > 0 ? group_digits(r.output_file_bytes) + " B" : "-";
  if (!std::isnan(r.size_percent())) size += fmt::format(" ({:.1f}%)", r.size_percent());
  const double bpw = r.bits_per_weight();
  const auto [sqnr, agree] = worst_quality(r);
  rows.push_back({{r.precision.empty() ? "quantized" : r.precision, size,
                   std::isnan(bpw) ? "-" : fmt::format("{:.2f}", bpw), fmt_db(sqnr), fmt_pct(agree),
                   r.eval_samples > 0 ? std::to_string(r.eval_samples) : "-"}});
  size_t w[6] = {};
  for (const auto& row : rows)
    for (int c = 0; c < 6; ++c) w[c] = std::max(w[c], row.cells[c].size());
  std::string s;
  for (const auto& row : rows) {
    std::string line;
    for (int c = 0; c < 6; ++c) line += fmt::format("{:<{}}  ", row.cells[c], w[c]);
    while (!line.empty() && line.back() == ' ') line.pop_back();
    s += line + "\n";
  }
  // Layer counts by precision: "layers: 3 int4, 2 int8, 1 fp32".
  std::map<std::string, int> by_precision;
  for (const auto& l : r.layers) ++by_precision[l.precision];
  if (!by_precision.empty()) {
    std::string parts;
    for (const auto& [p, n] : by_precision) parts += fmt::format("{}{} {}", parts.empty() ? "" : ", ", n, p);
    s += fmt::format("weights: {} ({} parameters)\n", parts, group_digits(r.total_params()));
  }
  // Pruned layers: how many and their zeros.
  int pruned = 0;
  int64_t zeros = 0, pruned_params = 0;
  for (const auto& l : r.layers)
    if (!l.pruning.empty()) {
      ++pruned;
      pruned_params += l.params;
      zeros += static_cast<int64_t>(std::llround(l.sparsity * static_cast<double>(l.params)));
    }
  if (pruned > 0)
    s += fmt::format("pruned: {} layers, {:.1f}% of their weights zero ({} stored as mask + kept levels)\n", pruned,
                     100.0 * static_cast<double>(zeros) / static_cast<double>(pruned_params),
                     std::count_if(r.layers.begin(), r.layers.end(), [](const LayerReport& l) { return l.sparse_storage; }));
  if (r.output_zstd_bytes > 0 && r.fp32_file_bytes > 0)
    s += fmt::format("zstd-compressed: {} B ({:.1f}% of FP32)\n", group_digits(r.output_zstd_bytes),
                     100.0 * static_cast<double>(r.output_zstd_bytes) / static_cast<double>(r.fp32_file_bytes));
  for (const auto& an : r.actions) s += "action: " + an + "\n";
  for (const auto& wn : r.warnings) s += "warning: " + wn + "\n";
  return s;
}

// ---------------------------------------------------------------------------------------------
// JSON

namespace {
nlohmann::json num(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }
}  // namespace

nlohmann::json report_to_json(const QuantizeReport& r) {
  nlohmann::json j;
  j["schema"] = "qtool.quantize_report";
  j["schema_version"] = kQuantizeReportSchemaVersion;
  j["qtool_version"] = r.qtool_version;
  j["input_model"] = r.input_model;
  j["output_model"] = r.output_model;
  j["precision"] = r.precision;
  j["settings"] = r.settings;
  j["size"] = {{"fp32_file_bytes", r.fp32_file_bytes},
               {"output_file_bytes", r.output_file_bytes},
               {"output_zstd_bytes", r.output_zstd_bytes},
               {"percent_of_fp32", num(r.size_percent())},
               {"weight_params", r.total_params()},
               {"weight_bytes", r.total_weight_bytes()},
               {"bits_per_weight", num(r.bits_per_weight())}};
  j["layers"] = nlohmann::json::array();
  for (const auto& l : r.layers) {
    j["layers"].push_back({{"node", l.node},
                           {"op_type", l.op_type},
                           {"weight", l.weight},
                           {"precision", l.precision},
                           {"bits", l.bits},
                           {"scheme", l.scheme},
                           {"method", l.method},
                           {"symmetric", l.symmetric},
                           {"params", l.params},
                           {"fp32_bytes", l.fp32_bytes},
                           {"bytes", l.bytes},
                           {"bits_per_weight", num(l.bits_per_weight())},
                           {"scales",
                            {{"count", l.scales.count},
                             {"min", l.scales.min},
                             {"max", l.scales.max},
                             {"mean", l.scales.mean}}},
                           {"weight_sqnr_db", num(l.weight_sqnr_db)},
                           {"output_sqnr_db", num(l.output_sqnr_db)},
                           {"sparsity", num(l.sparsity)},
                           {"pruning", l.pruning},
                           {"sparse_storage", l.sparse_storage},
                           {"note", l.note}});
  }
  j["evaluation"] = {{"samples", r.eval_samples}, {"layer_samples", r.layer_samples}, {"outputs", nlohmann::json::array()}};
  for (const auto& o : r.outputs) {
    j["evaluation"]["outputs"].push_back({{"name", o.name},
                                          {"samples", o.samples},
                                          {"sqnr_db", num(o.sqnr_db)},
                                          {"identical", std::isinf(o.sqnr_db) && o.sqnr_db > 0},
                                          {"cosine", num(o.cosine)},
                                          {"top1_agreement", num(o.top1_agreement)},
                                          {"top5_agreement", num(o.top5_agreement)},
                                          {"mask_iou", num(o.mask_iou)}});
  }
  j["timings"] = nlohmann::json::array();
  double total = 0;
  for (const auto& t : r.timings) {
    j["timings"].push_back({{"phase", t.phase}, {"seconds", t.seconds}});
    total += t.seconds;
  }
  j["total_seconds"] = total;
  j["actions"] = r.actions;
  j["warnings"] = r.warnings;
  if (r.budget) {
    const BudgetSummary& b = *r.budget;
    auto point = [&](const BudgetCurvePoint& p) {
      return nlohmann::json{{"weight_bytes", p.weight_bytes}, {"predicted_sqnr_db", num(p.predicted_sqnr_db)}};
    };
    nlohmann::json curve = nlohmann::json::array();
    for (const auto& p : b.curve) curve.push_back(point(p));
    j["budget"] = {{"target", b.target},
                   {"target_file_bytes", b.target_file_bytes},
                   {"target_bits_per_weight", b.target_bits_per_weight},
                   {"weight_budget_bytes", b.weight_budget_bytes},
                   {"candidates", b.candidates},
                   {"measurements", b.measurements},
                   {"samples", b.samples},
                   {"chosen", point(b.chosen)},
                   {"bits_per_weight", b.bits_per_weight},
                   {"layers_by_format", b.layers_by_format},
                   {"seconds", b.seconds},
                   {"curve", std::move(curve)}};
  }
  return j;
}

// ---------------------------------------------------------------------------------------------
// HTML

namespace {
std::string esc(const std::string& s) {
  std::string o;
  o.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      case '\'': o += "&#39;"; break;
      default: o += c;
    }
  }
  return o;
}

const char* precision_color(const std::string& p) {
  if (p == "fp32" || p == "fp16" || p == "bf16") return "#9aa5b1";
  if (p == "int8" || p == "uint8") return "#2f80ed";
  if (p == "int16" || p == "uint16") return "#56ccf2";
  if (p == "int4" || p == "uint4") return "#27ae60";
  if (p == "int2" || p == "uint2") return "#f2994a";
  if (p == "ternary") return "#eb5757";
  if (p == "binary") return "#9b51e0";
  return "#828282";
}

/// The error figure drawn per layer: output SQNR when measured, else weight SQNR.
double layer_error_db(const LayerReport& l) { return std::isnan(l.output_sqnr_db) ? l.weight_sqnr_db : l.output_sqnr_db; }

/// Horizontal bar chart of per-layer SQNR (longer = better); layers without a figure are skipped.
std::string svg_layer_error(const QuantizeReport& r) {
  std::vector<const LayerReport*> ls;
  for (const auto& l : r.layers)
    if (!std::isnan(layer_error_db(l))) ls.push_back(&l);
  const int row_h = 18, label_w = 220, bar_w = 420, top = 24;
  const int h = top + row_h * static_cast<int>(std::max<size_t>(ls.size(), 1)) + 24;
  std::string s = fmt::format(
      "<svg id=\"chart-layer-error\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" "
      "role=\"img\" aria-label=\"per-layer SQNR\">\n",
      label_w + bar_w + 90, h);
  s += fmt::format("<text x=\"0\" y=\"14\" class=\"ct\">per-layer SQNR in dB (longer is better; {})</text>\n",
                   ls.empty() ? "not measured" : "output SQNR where measured, else weight SQNR");
  double max_db = 1.0;
  for (const auto* l : ls) max_db = std::max(max_db, std::isinf(layer_error_db(*l)) ? 0.0 : layer_error_db(*l));
  for (size_t i = 0; i < ls.size(); ++i) {
    const auto& l = *ls[i];
    const double db = layer_error_db(l);
    const double shown = std::isinf(db) ? max_db : std::clamp(db, 0.0, max_db);
    const int y = top + static_cast<int>(i) * row_h;
    const int w = static_cast<int>(std::lround(bar_w * shown / max_db));
    std::string label = l.node.size() > 32 ? l.node.substr(0, 30) + ".." : l.node;
    s += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"end\" class=\"lb\">{}</text>", label_w - 6, y + 13,
                     esc(label));
    s += fmt::format("<rect class=\"bar\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\"><title>{} ({}): "
                     "{}</title></rect>",
                     label_w, y + 2, std::max(w, 1), row_h - 4, precision_color(l.precision), esc(l.node),
                     esc(l.precision), std::isinf(db) ? "exact" : fmt::format("{:.2f} dB", db));
    s += fmt::format("<text x=\"{}\" y=\"{}\" class=\"lb\">{}</text>\n", label_w + std::max(w, 1) + 4, y + 13,
                     std::isinf(db) ? "exact" : fmt::format("{:.1f}", db));
  }
  s += "</svg>\n";
  return s;
}

/// The budget search's curve: predicted output SQNR against the searched weights' bytes, one dot
/// per plan, the chosen one ringed.
std::string svg_budget_curve(const BudgetSummary& b) {
  const int w = 640, h = 300, left = 60, bottom = 40, top = 24, right = 20;
  int64_t x0 = std::numeric_limits<int64_t>::max(), x1 = 0;
  double y0 = 1e300, y1 = -1e300;
  for (const auto& p : b.curve) {
    if (!std::isfinite(p.predicted_sqnr_db)) continue;
    x0 = std::min(x0, p.weight_bytes);
    x1 = std::max(x1, p.weight_bytes);
    y0 = std::min(y0, p.predicted_sqnr_db);
    y1 = std::max(y1, p.predicted_sqnr_db);
  }
  std::string s = fmt::format("<svg id=\"chart-budget\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" "
                              "role=\"img\" aria-label=\"size against quality\">\n",
                              w, h);
  s += "<text x=\"0\" y=\"14\" class=\"ct\">predicted output SQNR (dB) against weight bytes, one dot per plan; "
       "the chosen plan ringed</text>\n";
  if (x1 <= x0 || y1 <= y0) return s + "</svg>\n";
  auto px = [&](int64_t x) {
    return left + (w - left - right) * static_cast<double>(x - x0) / static_cast<double>(x1 - x0);
  };
  auto py = [&](double y) { return top + (h - top - bottom) * (1.0 - (y - y0) / (y1 - y0)); };
  s += fmt::format("<text x=\"{}\" y=\"{}\" class=\"lb\">{} B</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\" "
                   "class=\"lb\">{} B</text>\n",
                   left, h - 8, x0, w - right, h - 8, x1);
  s += fmt::format("<text x=\"2\" y=\"{:.0f}\" class=\"lb\">{:.1f}</text><text x=\"2\" y=\"{:.0f}\" "
                   "class=\"lb\">{:.1f}</text>\n",
                   py(y1) + 4, y1, py(y0) + 4, y0);
  for (const auto& p : b.curve)
    if (std::isfinite(p.predicted_sqnr_db))
      s += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"2.5\" fill=\"#2f80ed\"><title>{} B: {:.2f} dB</title></circle>",
                       px(p.weight_bytes), py(p.predicted_sqnr_db), p.weight_bytes, p.predicted_sqnr_db);
  if (std::isfinite(b.chosen.predicted_sqnr_db))
    s += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"7\" fill=\"none\" stroke=\"#eb5757\" stroke-width=\"2\">"
                     "<title>chosen: {} B, {:.2f} dB</title></circle>",
                     px(b.chosen.weight_bytes), py(std::clamp(b.chosen.predicted_sqnr_db, y0, y1)), b.chosen.weight_bytes,
                     b.chosen.predicted_sqnr_db);
  return s + "\n</svg>\n";
}

/// Stacked bar: stored weight bytes by precision, against the FP32 bytes of the same weights.
std::string svg_size_breakdown(const QuantizeReport& r) {
  std::map<std::string, int64_t> by;
  int64_t fp32 = 0;
  for (const auto& l : r.layers) {
    by[l.precision] += l.bytes;
    fp32 += l.fp32_bytes;
  }
  const int bar_w = 600, left = 90;
  std::string s = fmt::format(
      "<svg id=\"chart-size\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" role=\"img\" "
      "aria-label=\"size breakdown\">\n",
      left + bar_w + 20, 110 + 18 * static_cast<int>(by.size()));
  s += "<text x=\"0\" y=\"14\" class=\"ct\">weight bytes by precision (scales and zero points included)</text>\n";
  s += fmt::format("<text x=\"{}\" y=\"42\" text-anchor=\"end\" class=\"lb\">FP32</text>", left - 6);
  s += fmt::format("<rect class=\"bar\" x=\"{}\" y=\"28\" width=\"{}\" height=\"20\" fill=\"#9aa5b1\"><title>FP32: {} "
                   "bytes</title></rect>\n",
                   left, bar_w, fp32);
  s += fmt::format("<text x=\"{}\" y=\"72\" text-anchor=\"end\" class=\"lb\">quantized</text>", left - 6);
  double x = left;
  int legend_y = 100;
  for (const auto& [p, b] : by) {
    const double w = fp32 > 0 ? bar_w * static_cast<double>(b) / static_cast<double>(fp32) : 0.0;
    s += fmt::format("<rect class=\"bar\" x=\"{:.1f}\" y=\"58\" width=\"{:.1f}\" height=\"20\" fill=\"{}\"><title>{}: {} "
                     "bytes</title></rect>",
                     x, std::max(w, 0.5), precision_color(p), esc(p), b);
    x += w;
    s += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"{}\" "
                     "class=\"lb\">{}: {} bytes ({:.1f}% of FP32)</text>\n",
                     left, legend_y - 10, precision_color(p), left + 18, legend_y, esc(p), b,
                     fp32 > 0 ? 100.0 * static_cast<double>(b) / static_cast<double>(fp32) : 0.0);
    legend_y += 18;
  }
  s += "</svg>\n";
  return s;
}

std::string html_num(double v, const char* f = "{:.2f}") {
  if (std::isnan(v)) return "-";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  return fmt::format(fmt::runtime(f), v);
}
}  // namespace

std::string render_html(const QuantizeReport& r) {
  std::string h;
  h += "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n";
  h += "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n";
  h += fmt::format("<title>qtool report: {}</title>\n", esc(r.output_model));
  h += R"(<style>
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1100px;color:#1f2933;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #e4e7eb}
table{border-collapse:collapse;font-size:.9em}td,th{padding:3px 10px;border-bottom:1px solid #e4e7eb;text-align:left}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}.warn{color:#b42318;font-weight:600}
.ct{font-size:13px;font-weight:600;fill:#1f2933}.lb{font-size:11px;fill:#3e4c59}.bar{stroke:none}
.kv td:first-child{color:#616e7c}
</style></head><body>
)";
  h += "<h1>qtool quantization report</h1>\n<table class=\"kv\">\n";
  auto kv = [&](const std::string& k, const std::string& v) {
    h += fmt::format("<tr><td>{}</td><td>{}</td></tr>\n", esc(k), esc(v));
  };
  kv("input model", r.input_model);
  kv("output model", r.output_model);
  kv("precision", r.precision);
  kv("size", r.output_file_bytes > 0
                 ? fmt::format("{} bytes ({} of FP32's {} bytes); zstd-compressed {} bytes", r.output_file_bytes,
                               std::isnan(r.size_percent()) ? "-" : fmt::format("{:.1f}%", r.size_percent()),
                               r.fp32_file_bytes, r.output_zstd_bytes)
                 : "-");
  kv("bits per weight", html_num(r.bits_per_weight()));
  kv("qtool", r.qtool_version);
  h += "</table>\n";
  if (!r.actions.empty()) {
    h += "<h2>Actions</h2><ul>\n";
    for (const auto& a : r.actions) h += "<li>" + esc(a) + "</li>\n";
    h += "</ul>\n";
  }
  if (!r.warnings.empty()) {
    h += "<h2>Warnings</h2><ul>\n";
    for (const auto& w : r.warnings) h += "<li class=\"warn\">" + esc(w) + "</li>\n";
    h += "</ul>\n";
  }
  h += "<h2>Output quality on held-out data</h2>\n";
  if (r.outputs.empty()) {
    h += "<p>Not measured (no calibration data given).</p>\n";
  } else {
    h += "<table><tr><th>output</th><th class=\"n\">samples</th><th class=\"n\">SQNR dB</th><th "
         "class=\"n\">cosine</th><th class=\"n\">top-1 agree</th><th class=\"n\">top-5 agree</th></tr>\n";
    for (const auto& o : r.outputs) {
      h += fmt::format("<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td "
                       "class=\"n\">{}</td><td class=\"n\">{}</td></tr>\n",
                       esc(o.name), o.samples, html_num(o.sqnr_db), html_num(o.cosine, "{:.6f}"),
                       std::isnan(o.top1_agreement) ? "-" : fmt::format("{:.2f}%", 100 * o.top1_agreement),
                       std::isnan(o.top5_agreement) ? "-" : fmt::format("{:.2f}%", 100 * o.top5_agreement));
    }
    h += "</table>\n";
  }
  if (r.budget) {
    const BudgetSummary& b = *r.budget;
    std::string formats;
    for (const auto& [f, n] : b.layers_by_format) formats += fmt::format("{}{} {}", formats.empty() ? "" : ", ", n, f);
    h += fmt::format("<h2>Size budget</h2>\n<p>target {}: {} plans traced, {} layer forms measured on {} held-out "
                     "samples in {:.1f} s; chosen: {} B of weights, {:.2f} bits per weight ({}).</p>\n",
                     esc(b.target), b.curve.size(), b.measurements, b.samples, b.seconds, b.chosen.weight_bytes,
                     b.bits_per_weight, esc(formats));
    h += svg_budget_curve(b);
  }
  h += "<h2>Per-layer error</h2>\n" + svg_layer_error(r);
  h += "<h2>Size breakdown</h2>\n" + svg_size_breakdown(r);
  h += "<h2>Layers</h2>\n<table><tr><th>node</th><th>op</th><th>weight</th><th>precision</th><th>scheme</th>"
       "<th>method</th><th class=\"n\">params</th><th class=\"n\">bytes</th><th class=\"n\">bits/w</th><th "
       "class=\"n\">scales (min / mean / max)</th><th class=\"n\">weight SQNR</th><th class=\"n\">output "
       "SQNR</th><th>note</th></tr>\n";
  for (const auto& l : r.layers) {
    h += fmt::format(
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td "
        "class=\"n\">{}</td><td class=\"n\">{:.2f}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td "
        "class=\"n\">{}</td><td>{}</td></tr>\n",
        esc(l.node), esc(l.op_type), esc(l.weight), esc(l.precision), esc(l.scheme), esc(l.method), l.params, l.bytes,
        l.bits_per_weight(),
        l.scales.count ? fmt::format("{:.3g} / {:.3g} / {:.3g}", l.scales.min, l.scales.mean, l.scales.max) : "-",
        html_num(l.weight_sqnr_db), html_num(l.output_sqnr_db), esc(l.note));
  }
  h += "</table>\n";
  if (!r.settings.empty()) {
    h += "<h2>Settings</h2>\n<table class=\"kv\">\n";
    for (const auto& [k, v] : r.settings) kv(k, v);
    h += "</table>\n";
  }
  if (!r.timings.empty()) {
    h += "<h2>Timings</h2>\n<table><tr><th>phase</th><th class=\"n\">seconds</th></tr>\n";
    for (const auto& t : r.timings)
      h += fmt::format("<tr><td>{}</td><td class=\"n\">{:.3f}</td></tr>\n", esc(t.phase), t.seconds);
    h += "</table>\n";
  }
  h += "</body></html>\n";
  return h;
}

void write_report(const QuantizeReport& report, const std::string& path) {
  auto ends_with = [&](const char* suf) {
    const std::string s(suf);
    if (path.size() < s.size()) return false;
    std::string tail = path.substr(path.size() - s.size());
    std::transform(tail.begin(), tail.end(), tail.begin(), [](unsigned char c) { return std::tolower(c); });
    return tail == s;
  };
  const std::string text =
      ends_with(".html") || ends_with(".htm") ? render_html(report) : report_to_json(report).dump(2) + "\n";
  with_context(fmt::format("while writing the report '{}'", path), [&] {
    write_file_atomic(path, text);
    return 0;
  });
}

}  // namespace qtool::report
