// The budget search of the weight-only path (pipeline/budget.h): candidates per layer, their
// measured costs, the solver (quant/budget.h), and the size correction on the written file.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "budget_internal.h"
#include "qtool/core/error.h"
#include "qtool/onnx_io/onnx_io.h"
#include "qtool/pipeline/budget.h"
#include "qtool/pipeline/sensitivity.h"
#include "qtool/quant/budget.h"

namespace qtool::pipeline {

std::string SizeBudget::describe() const {
  switch (kind) {
    case Kind::kNone: return "none";
    case Kind::kBytes: return fmt::format("{:.0f} bytes", value);
    case Kind::kPercent: return fmt::format("{:g}% of the FP32 file", value);
    case Kind::kBitsPerWeight: return fmt::format("{:g} bits per weight", value);
  }
  return "";
}

int64_t SizeBudget::file_bytes(int64_t fp32_file_bytes) const {
  if (kind == Kind::kBytes) return static_cast<int64_t>(value);
  if (kind == Kind::kPercent) return static_cast<int64_t>(std::floor(value / 100.0 * static_cast<double>(fp32_file_bytes)));
  return 0;
}

SizeBudget parse_target_size(const std::string& text) {
  const std::string bad = fmt::format(
      "--target-size '{}': give a file size in bytes (1500000, 1.5MB, 800KiB) or a percentage of the FP32 file (15%)",
      text);
  QTOOL_CHECK(!text.empty(), ErrorCode::kConfig, "{}", bad);
  const char* begin = text.c_str();
  char* end = nullptr;
  const double v = std::strtod(begin, &end);
  QTOOL_CHECK(end != begin && std::isfinite(v) && v > 0, ErrorCode::kConfig, "{}", bad);
  std::string unit(end);
  SizeBudget b;
  if (unit == "%") {
    QTOOL_CHECK(v <= 100.0, ErrorCode::kConfig, "--target-size {}: a percentage of the FP32 file is at most 100%", text);
    b.kind = SizeBudget::Kind::kPercent;
    b.value = v;
    return b;
  }
  double scale = 0.0;
  for (const auto& [u, s] : {std::pair<const char*, double>{"", 1.0}, {"B", 1.0}, {"KB", 1e3}, {"kB", 1e3}, {"MB", 1e6},
                             {"GB", 1e9}, {"KiB", 1024.0}, {"MiB", 1048576.0}, {"GiB", 1073741824.0}})
    if (unit == u) scale = s;
  QTOOL_CHECK(scale > 0, ErrorCode::kConfig, "{}", bad);
  b.kind = SizeBudget::Kind::kBytes;
  b.value = std::floor(v * scale);
  QTOOL_CHECK(b.value >= 1, ErrorCode::kConfig, "{}", bad);
  return b;
}

SizeBudget target_bits_per_weight(double bits) {
  QTOOL_CHECK(std::isfinite(bits) && bits > 0 && bits <= 32, ErrorCode::kConfig,
              "--target-bpw {} must be in (0, 32] bits per weight", bits);
  return {SizeBudget::Kind::kBitsPerWeight, bits};
}

namespace detail {

int64_t bits_per_weight_budget(const SizeBudget& budget, int64_t params) {
  return static_cast<int64_t>(std::floor(budget.value * static_cast<double>(params) / 8.0));
}

std::optional<quant::BudgetPoint> fit_file_size(const std::vector<quant::BudgetLayer>& layers, const SizeBudget& budget,
                                                int64_t target, int64_t rest, int attempts,
                                                const std::function<int64_t(const quant::BudgetPoint&)>& write,
                                                const std::function<void(const quant::BudgetPoint&, int64_t)>& keep) {
  const int64_t smallest = quant::budget_curve(layers).front().bytes;
  std::optional<quant::BudgetPoint> kept;
  int64_t kept_size = 0;
  for (int attempt = 0; attempt < attempts; ++attempt) {
    const int64_t weights = target - rest;
    if (kept && weights < smallest) break;  // a fitting plan is kept; nothing smaller exists
    QTOOL_CHECK(weights > 0, ErrorCode::kConfig,
                "--target-size {}: {} bytes, but the model's other tensors and graph alone take about {} bytes",
                budget.describe(), target, rest);
    const quant::BudgetPoint p = quant::solve_budget(layers, weights);
    const int64_t size = write(p);
    spdlog::info("budget search: weights {} B -> file {} B (target {} B)", p.bytes, size, target);
    const bool fits = size <= target;
    if (fits && (!kept || size > kept_size)) {
      kept = p;
      kept_size = size;
      keep(p, weights);
    }
    if (fits && size >= target - target / 50) break;  // within 2% of the budget
    const int64_t next = size - p.bytes;
    if (next == rest && fits) break;  // nothing left to correct: the menu's steps are too coarse
    rest = next + (fits ? 0 : 1);
  }
  return kept;
}

void summarize_choice(report::BudgetSummary& sum, const std::vector<quant::BudgetLayer>& layers,
                      const quant::BudgetPoint& chosen) {
  int64_t params = 0;
  for (const auto& l : layers) params += l.params;
  sum.chosen = {chosen.bytes, sqnr_of_noise(chosen.noise)};
  sum.bits_per_weight = params > 0 ? 8.0 * static_cast<double>(chosen.bytes) / static_cast<double>(params) : 0.0;
  for (size_t i = 0; i < layers.size(); ++i) ++sum.layers_by_format[layers[i].candidates[chosen.choice[i]].format];
}

namespace {

/// One form of the menu: the rule-path settings that give it to every layer that can take it
/// (a layer that cannot, a conv with fewer input channels than the block, falls back as the rules do).
struct Form {
  std::string bits;
  int64_t block = 0;
};

/// The menu. Palettes join where nothing is tuned afterwards (tuning moves levels on a uniform grid).
std::vector<Form> menu(const quant::WeightOnlyConfig& cfg) {
  // Low bits first: their run collects the input Hessians that every later run then reads from the
  // statistics cache (an int8 run first would collect them without Hessians).
  std::vector<Form> forms{{"4", 32}, {"4", 128}, {"2", 16}, {"2", 32}, {"2", 64}};
  if (cfg.tune.steps == 0) {
    forms.push_back({"pal3", 0});
    forms.push_back({"pal4", 0});
    // Between 4 and 8 bits: a budget that holds more than 4 bits but not int8 everywhere fills with
    // it (the digits-size CNN: 95-100% of each budget instead of 90-98%, 25%: 45.2 -> 53.7 dB).
    forms.push_back({"pal6", 0});
  }
  forms.push_back({"8", 0});
  return forms;
}

bool pinned_by_user(const quant::WeightOnlyConfig& cfg, const quant::WeightOnlyLayer& l) {
  auto hit = [&](const std::string& pattern) {
    return quant::glob_match(pattern, l.node) || quant::glob_match(pattern, l.weight);
  };
  for (const auto& r : cfg.layer_bits)
    if (hit(r.pattern)) return true;
  for (const auto& e : cfg.exclude)
    if (hit(e)) return true;
  return false;
}

/// A plan written (untuned) by the search: its plan map, model and report.
struct Written {
  quant::LayerPlanMap plan;
  ir::Model model;
  quant::WeightOnlyReport report;
};

/// --max-drop and/or --min-sqnr: the smallest plan on the curve up to `largest` (the budget's plan,
/// or without a budget the least-noise one that quantizes anything) whose model, written and run
/// untuned on the held-out samples, keeps the top-1 agreement drop and the lowest output SQNR
/// (bisection: quality grows along the curve). Returns `largest` when none holds (the gate then
/// judges it); `res` gets the winner's plan (and model).
template <typename Write>
quant::BudgetPoint smallest_meeting_target(const BudgetSearchInputs& in, const std::vector<quant::BudgetPoint>& curve,
                                           const quant::BudgetPoint& largest, const Write& write,
                                           BudgetSearchResult& res) {
  std::vector<quant::BudgetPoint> pts;
  for (const quant::BudgetPoint& p : curve)
    if (p.bytes < largest.bytes) pts.push_back(p);
  pts.push_back(largest);
  report::CompareOptions co;
  co.threads = in.job.threads;
  co.per_layer = false;
  struct Try {
    bool ok = false;
    double drop = 0, sqnr = std::numeric_limits<double>::infinity();
    std::optional<Written> written;
  };
  // One try as the action tells it: the measures that are targets.
  auto describe = [&](const Try& t, int64_t bytes) {
    std::string s = fmt::format("{} B:", bytes);
    if (in.job.max_drop) s += fmt::format(" drop {:.2f}", t.drop);
    if (in.job.min_sqnr) s += std::isinf(t.sqnr) && t.sqnr > 0 ? " exact" : fmt::format(" SQNR {:.1f} dB", t.sqnr);
    return s;
  };
  auto attempt = [&](const quant::BudgetPoint& p) {
    Try t;
    t.written.emplace(write(p));
    double agree = 2.0;
    for (const auto& o : report::to_output_quality(
             report::compare_models(in.fp32, t.written->model, sample_provider(*in.held_out), co))) {
      if (!std::isnan(o.top1_agreement)) agree = std::min(agree, o.top1_agreement);
      t.sqnr = std::min(t.sqnr, std::isnan(o.sqnr_db) ? -std::numeric_limits<double>::infinity() : o.sqnr_db);
    }
    t.drop = agree <= 1.0 ? 100.0 * (1.0 - agree) : 0.0;
    t.ok = (!in.job.max_drop || t.drop <= *in.job.max_drop) && (!in.job.min_sqnr || t.sqnr >= *in.job.min_sqnr);
    return t;
  };
  size_t lo = 0, hi = pts.size() - 1;
  Try best = attempt(pts[hi]);
  std::string story = describe(best, pts[hi].bytes);
  if (best.ok) {
    while (lo < hi) {
      const size_t mid = lo + (hi - lo) / 2;
      Try t = attempt(pts[mid]);
      story += "; " + describe(t, pts[mid].bytes);
      if (t.ok) {
        hi = mid;
        best = std::move(t);
      } else {
        lo = mid + 1;
      }
    }
  }
  std::string target;
  if (in.job.max_drop) target = fmt::format("--max-drop {:.2f}", *in.job.max_drop);
  if (in.job.min_sqnr) target += fmt::format("{}--min-sqnr {:.1f}", target.empty() ? "" : " ", *in.job.min_sqnr);
  res.actions.push_back(fmt::format(
      "{} {}: the smallest plan on the curve that keeps it on the held-out samples (untuned): {} ({})", target,
      in.job.budget.active() ? "with a budget" : "without a size budget",
      best.ok ? fmt::format("{} B of weights", pts[hi].bytes)
              : in.job.budget.active() ? "none, the budget's plan is kept" : "none, the least-noise quantized plan is kept",
      story));
  if (!best.ok) return largest;
  res.plan = std::move(best.written->plan);
  if (in.cfg.tune.steps == 0) {  // else the final plan is quantized again, tuned
    res.model.emplace(std::move(best.written->model));
    res.report.emplace(std::move(best.written->report));
  }
  return pts[hi];
}

}  // namespace

BudgetSearchResult search_budget(const BudgetSearchInputs& in) {
  const auto t0 = clock_type::now();
  const QuantizeJob& job = in.job;
  QTOOL_CHECK(in.held_out != nullptr, ErrorCode::kConfig,
              "--target-size / --target-bpw measure each layer's forms on held-out samples: give --calib (and no "
              "--no-guard)");
  QTOOL_CHECK(!in.cfg.sparsity.active(), ErrorCode::kConfig,
              "--target-size / --target-bpw cannot be combined with --sparsity yet");
  QTOOL_CHECK(in.cfg.plan.empty(), ErrorCode::kConfig,
              "--target-size / --target-bpw choose the plan; --plan gives one: use one of them");
  BudgetSearchResult res;
  report::BudgetSummary& sum = res.summary;
  // --min-sqnr without a size budget: the smallest plan of the whole curve that keeps it.
  sum.target = job.budget.active() ? job.budget.describe() : fmt::format("--min-sqnr {:.1f} (no size budget)", *job.min_sqnr);

  // 1. Every layer quantized at every form of the menu, from the float model each time.
  std::vector<quant::BudgetLayer> layers;
  std::vector<std::vector<Tensor>> values;  // per layer, per candidate: the weight as written ("float": empty)
  std::map<std::string, size_t> index;
  std::vector<bool> pinned;
  const std::vector<Form> forms = menu(in.cfg);
  const bool has_palettes = std::any_of(forms.begin(), forms.end(), [](const Form& f) { return f.bits.rfind("pal", 0) == 0; });
  res.cast_form = in.cfg.cast_dequant || has_palettes;
  // A file budget (and the smallest plan of a quality target) also counts the graph a form adds
  // beyond its stored bytes (nodes, names, shapes, padding), per layer: each form's whole-model
  // file, less the prepared float model's and the stored bytes' change, spread evenly over its
  // quantized layers. Small models feel it: on mnist-8 (1.6 KB of weights in a 26 KB file) 6-bit
  // palettes add about 900 bytes a layer, and without counting them the size correction settled on
  // a plan 10 dB worse than the one it missed. Not for --target-bpw: bits per weight count the
  // stored bytes only.
  const bool file_budget = !(job.budget.active() && job.budget.kind == SizeBudget::Kind::kBitsPerWeight);
  const int64_t prepared_file = file_budget ? static_cast<int64_t>(onnx_io::serialize_model(in.fp32).size()) : 0;
  auto params_of = [&](const quant::WeightOnlyLayer& l) {
    const ir::Value* v = in.fp32.graph->find_value(l.weight);
    return v && v->initializer() ? v->initializer()->numel() : l.rows * l.cols;
  };
  for (const Form& f : forms) {
    quant::WeightOnlyConfig c = in.cfg;
    c.bits = quant::BitsChoice(f.bits);
    c.bits_first_last = c.bits;  // first and last layers are measured like any other
    c.bits_depthwise = c.bits;
    c.block_size = f.block;
    c.palette_block = 0;
    c.palette_group = 0;
    c.tune.steps = 0;
    c.keep_dequantized = true;
    c.embedding_low_bits = true;  // measured like the rest
    // Every form in the form its plan is written in: a plan with palettes writes every layer in the
    // Cast form (quant/lowbit.h, folded at load), whose blocks are padded to whole blocks.
    c.cast_dequant = in.cfg.cast_dequant || has_palettes;
    const std::string label = f.block > 0 && !c.bits.is_palette() && !c.bits.is_int8()
                                  ? fmt::format("{} bits, block {}", f.bits, f.block)
                                  : c.bits.is_int8() ? "int8 per channel" : f.bits + " per tensor";
    sum.candidates.push_back(label);
    ir::Model m = in.fp32.clone();
    quant::WeightOnlyReport r =
        with_context(fmt::format("while quantizing every layer as {} for the budget search", label),
                     [&] { return in.quantize(m, c); });
    int64_t graph_bytes = 0;  // per quantized layer of this form (file budgets)
    if (file_budget) {
      int64_t stored = 0, n = 0;
      for (const quant::WeightOnlyLayer& l : r.layers)
        if (!l.weight.empty() && l.format != "float") {
          stored += l.bytes - 4 * params_of(l);
          ++n;
        }
      const int64_t file = static_cast<int64_t>(onnx_io::serialize_model(m).size());
      if (n > 0) graph_bytes = std::max<int64_t>(0, (file - prepared_file - stored) / n);
      spdlog::debug("budget search: {}: file {} B, {} layers, {} B of graph a layer", label, file, n, graph_bytes);
    }
    for (quant::WeightOnlyLayer& l : r.layers) {
      if (l.weight.empty()) continue;
      auto [it, fresh] = index.emplace(l.weight, layers.size());
      if (fresh) {
        quant::BudgetLayer bl;
        bl.weight = l.weight;
        bl.params = params_of(l);
        pinned.push_back(pinned_by_user(in.cfg, l));
        if (!pinned.back() || l.format == "float") bl.candidates.push_back({"float", 4 * bl.params, 0.0});
        values.push_back(std::vector<Tensor>(bl.candidates.size()));
        layers.push_back(std::move(bl));
      }
      quant::BudgetLayer& bl = layers[it->second];
      if (l.format == "float" || l.dequantized.numel() == 0) continue;
      if (std::any_of(bl.candidates.begin(), bl.candidates.end(),
                      [&](const quant::BudgetCandidate& k) { return k.format == l.format; }))
        continue;
      bl.candidates.push_back({l.format, l.bytes + graph_bytes, 0.0});
      values[it->second].push_back(std::move(l.dequantized));
    }
  }
  // 2. The cost of each (layer, form): the model with only that weight replaced, on held-out samples.
  std::vector<WeightSwap> swaps;
  std::vector<std::pair<size_t, size_t>> where;
  for (size_t i = 0; i < layers.size(); ++i)
    for (size_t k = 0; k < layers[i].candidates.size(); ++k)
      if (layers[i].candidates[k].format != "float" && layers[i].candidates.size() > 1) {
        swaps.push_back({{layers[i].weight, values[i][k]}});
        where.emplace_back(i, k);
      }
  sum.samples = std::min(in.held_out->size(), kBudgetSamples);
  sum.measurements = swaps.size();
  spdlog::info("budget search: {} layers, {} forms measured on {} held-out samples", layers.size(), swaps.size(),
               sum.samples);
  const std::vector<Quality> q = score_weight_swaps(in.fp32, swaps, *in.held_out, sum.samples, job.threads);
  for (size_t j = 0; j < q.size(); ++j) layers[where[j].first].candidates[where[j].second].noise = noise_of(q[j]);
  values.clear();
  swaps.clear();

  // 3. The curve and the budget.
  int64_t params = 0;
  for (const auto& l : layers) params += l.params;
  const std::vector<quant::BudgetPoint> curve = quant::budget_curve(layers);
  for (const quant::BudgetPoint& p : curve) sum.curve.push_back({p.bytes, sqnr_of_noise(p.noise)});
  auto plan_of = [&](const quant::BudgetPoint& p) {
    quant::LayerPlanMap plan;
    for (size_t i = 0; i < layers.size(); ++i) {
      const std::string& f = layers[i].candidates[p.choice[i]].format;
      plan[layers[i].weight] = {f == "float" ? nullptr : quant::find_weight_format(f),
                                pinned[i] ? "--layer-bits / --exclude" : "budget search"};
    }
    return plan;
  };
  // One plan written untuned (sizes and the --max-drop tries do not depend on tuning).
  auto write = [&](const quant::BudgetPoint& p) {
    Written w{plan_of(p), in.fp32.clone(), {}};
    quant::WeightOnlyConfig c = in.cfg;
    c.plan = w.plan;
    c.cast_dequant = res.cast_form;
    c.tune.steps = 0;
    w.report = in.quantize(w.model, c);
    w.model.source_path.clear();
    return w;
  };
  quant::BudgetPoint chosen;
  if (!job.budget.active()) {
    // The least-noise plan that still quantizes something (the curve ends with every layer float):
    // the quality target picks the smallest plan below it, or the gate refuses it.
    chosen = curve.size() >= 2 ? curve[curve.size() - 2] : curve.back();
    res.plan = plan_of(chosen);
  } else if (job.budget.kind == SizeBudget::Kind::kBitsPerWeight) {
    sum.target_bits_per_weight = job.budget.value;
    sum.weight_budget_bytes = bits_per_weight_budget(job.budget, params);
    chosen = quant::solve_budget(layers, sum.weight_budget_bytes);
    res.plan = plan_of(chosen);
  } else {
    // A file size: what the rest of the file takes is measured on the written plan and corrected;
    // the first guess is the float model's non-weight bytes.
    const int64_t fp32_file = file_size(job.model_path);
    sum.target_file_bytes = job.budget.file_bytes(fp32_file);
    std::optional<Written> last;
    const std::optional<quant::BudgetPoint> fit = fit_file_size(
        layers, job.budget, sum.target_file_bytes, prepared_file - 4 * params, 5,
        [&](const quant::BudgetPoint& p) {
          last.emplace(write(p));
          return static_cast<int64_t>(onnx_io::serialize_model(last->model).size());
        },
        [&](const quant::BudgetPoint&, int64_t weights) {
          sum.weight_budget_bytes = weights;
          res.plan = last->plan;
          if (in.cfg.tune.steps == 0) {  // else the final plan is quantized again, tuned
            res.model.emplace(std::move(last->model));
            res.report.emplace(std::move(last->report));
          }
        });
    QTOOL_CHECK(fit.has_value(), ErrorCode::kConfig,
                "--target-size {}: no plan of the measured forms gives a file within {} bytes", job.budget.describe(),
                sum.target_file_bytes);
    chosen = *fit;
  }
  if (job.max_drop || job.min_sqnr) chosen = smallest_meeting_target(in, curve, chosen, write, res);
  summarize_choice(sum, layers, chosen);
  sum.seconds = seconds_since(t0);
  std::string formats;
  for (const auto& [f, n] : sum.layers_by_format) formats += fmt::format("{}{} {}", formats.empty() ? "" : ", ", n, f);
  res.actions.push_back(fmt::format(
      "budget search ({}): {} layers x {} forms measured on {} held-out samples, {} plans traced; chosen {} B of "
      "weights, {:.2f} bits per weight, predicted output SQNR {:.1f} dB: {} ({:.1f} s)",
      sum.target, layers.size(), sum.candidates.size(), sum.samples, sum.curve.size(), chosen.bytes,
      sum.bits_per_weight, sum.chosen.predicted_sqnr_db, formats, sum.seconds));
  return res;
}

}  // namespace detail
}  // namespace qtool::pipeline
