// The calibration driver: samples -> executor -> observers -> ranges.
#include "qtool/calib/calibrate.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <thread>
#include <unordered_set>

#include <spdlog/spdlog.h>

#include "qtool/core/hash.h"
#include "qtool/core/interrupt.h"

namespace qtool::calib {

// ---------------------------------------------------------------------------------------------
// Ctrl-C

// The process-wide handler of core/interrupt.h: the CLI installs it for the whole run; a guard
// installs it for library users that did not.
InterruptGuard::InterruptGuard() { install_interrupt_handler(); }
InterruptGuard::~InterruptGuard() = default;

bool interrupt_requested() { return qtool::interrupt_requested(); }
void request_interrupt(bool value) { qtool::request_interrupt(value); }

// ---------------------------------------------------------------------------------------------
// Progress

namespace {
std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const auto t = static_cast<int64_t>(s + 0.5);
  if (t >= 3600) return fmt::format("{}:{:02}:{:02}", t / 3600, (t / 60) % 60, t % 60);
  return fmt::format("{}:{:02}", t / 60, t % 60);
}
}  // namespace

Progress::Progress(std::string label, size_t total, bool enabled)
    : label_(std::move(label)),
      total_(total),
      enabled_(enabled),
      tty_(enabled && ::isatty(::fileno(stderr)) != 0),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

Progress::~Progress() {
  if (tty_ && !finished_) std::fputs("\r\033[K", stderr);
}

void Progress::update(size_t done) {
  if (!enabled_ || total_ == 0) return;
  const auto now = std::chrono::steady_clock::now();
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const double rate = elapsed > 0 ? static_cast<double>(done) / elapsed : 0.0;
  const double eta = rate > 0 ? static_cast<double>(total_ - std::min(done, total_)) / rate : -1.0;
  if (tty_) {
    if (done < total_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
    last_draw_ = now;
    constexpr int kWidth = 30;
    const int filled = static_cast<int>(kWidth * std::min(done, total_) / total_);
    std::string bar(static_cast<size_t>(filled), '=');
    if (filled < kWidth) bar += '>' + std::string(static_cast<size_t>(kWidth - filled - 1), ' ');
    std::fprintf(stderr, "\r\033[K%s [%s] %zu/%zu  %.1f samples/s  ETA %s", label_.c_str(), bar.c_str(), done, total_,
                 rate, format_duration(eta).c_str());
    std::fflush(stderr);
  } else {
    const size_t decile = done * 10 / total_;
    const bool slow = now - last_draw_ > std::chrono::seconds(30);
    if (decile > last_logged_decile_ || (slow && done < total_)) {
      last_logged_decile_ = decile;
      last_draw_ = now;
      if (done < total_) {
        spdlog::info("{}: {}/{} samples, {:.1f} samples/s, ETA {}", label_, done, total_, rate,
                     format_duration(eta));
      }
    }
  }
}

void Progress::finish(size_t done) {
  if (!enabled_ || finished_) return;
  finished_ = true;
  if (tty_) std::fputs("\r\033[K", stderr);
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  spdlog::info("{}: {} samples in {}, {:.1f} samples/s", label_, done, format_duration(elapsed),
               elapsed > 0 ? static_cast<double>(done) / elapsed : 0.0);
}

// ---------------------------------------------------------------------------------------------
// Sample-set checks

namespace {

struct SampleChecker {
  std::unordered_set<uint64_t> hashes;
  size_t duplicates = 0, constant = 0;
  std::vector<std::pair<double, double>> moments;  // (mean, std) of distinct samples' first float input

  void add(const data::Sample& s) {
    uint64_t h = 0xcbf29ce484222325ull;
    bool is_const = false;
    bool first_float = true;
    for (const auto& [name, t] : s) {
      h = hash_bytes(reinterpret_cast<const uint8_t*>(name.data()), name.size(), h);
      if (t.raw()) h = hash_bytes(t.raw(), t.nbytes(), h);
      if (t.numel() > 1 && t.dtype() != DataType::kString) {
        const Tensor f = t.to_float();
        const float* d = f.data<float>();
        const int64_t n = f.numel();
        // Constant when every value equals the first (NaNs compare unequal, as minmax_element's did).
        bool same = true;
        for (int64_t i = 1; i < n; ++i) same &= d[i] == d[0];
        if (same) is_const = true;
        if (first_float && dtype_is_float(t.dtype())) {
          first_float = false;
          // Eight partial sums (vectorizable), added in double per block of 4096 values.
          double sum = 0, sq = 0;
          for (int64_t b = 0; b < n; b += 4096) {
            float s8[8] = {}, q8[8] = {};
            const int64_t e = std::min<int64_t>(n, b + 4096);
            int64_t i = b;
            for (; i + 8 <= e; i += 8) {
              for (int k = 0; k < 8; ++k) s8[k] += d[i + k], q8[k] += d[i + k] * d[i + k];
            }
            for (; i < e; ++i) sum += d[i], sq += static_cast<double>(d[i]) * d[i];
            for (int k = 0; k < 8; ++k) sum += s8[k], sq += q8[k];
          }
          const double m = sum / static_cast<double>(n);
          moments_pending = {m, std::sqrt(std::max(0.0, sq / static_cast<double>(n) - m * m))};
          has_pending = true;
        }
      }
    }
    constant += is_const;
    if (!hashes.insert(h).second) {
      ++duplicates;
    } else if (has_pending) {
      moments.push_back(moments_pending);
    }
    has_pending = false;
  }

  // True when the distinct samples' means and standard deviations hardly differ.
  bool near_identical() const {
    if (moments.size() < 2) return false;
    double mlo = moments[0].first, mhi = mlo, slo = moments[0].second, shi = slo;
    for (const auto& [m, s] : moments) {
      mlo = std::min(mlo, m), mhi = std::max(mhi, m), slo = std::min(slo, s), shi = std::max(shi, s);
    }
    const double scale = std::max({std::fabs(mlo), std::fabs(mhi), shi, 1e-12});
    return (mhi - mlo) < 1e-4 * scale && (shi - slo) < 1e-4 * scale;
  }

  std::pair<double, double> moments_pending{};
  bool has_pending = false;
};

Tensor concat_batch(const std::vector<data::Sample>& samples, const std::string& name) {
  const Tensor& first = samples[0].at(name);
  Shape shape = first.shape();
  int64_t rows = 0;
  for (const auto& s : samples) {
    const Tensor& t = s.at(name);
    Shape a = t.shape(), b = shape;
    a.erase(a.begin());
    b.erase(b.begin());
    QTOOL_CHECK(a == b && t.dtype() == first.dtype(), ErrorCode::kInvalidInput,
                "input '{}': samples of shapes {} and {} cannot form a batch (use --batch-size 1)", name,
                shape_str(first.shape()), shape_str(t.shape()));
    rows += t.dim(0);
  }
  shape[0] = rows;
  Tensor out = Tensor::empty(first.dtype(), shape);
  uint8_t* dst = out.mutable_raw();
  for (const auto& s : samples) {
    const Tensor& t = s.at(name);
    std::memcpy(dst, t.raw(), t.nbytes());
    dst += t.nbytes();
  }
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// run_samples

RunSummary run_samples(runtime::Executor& executor, data::SampleSource& source, runtime::Observer& observer,
                       const RunOptions& options) {
  return run_samples(std::vector<runtime::Executor*>{&executor}, source, std::vector<runtime::Observer*>{&observer},
                     options);
}

RunSummary run_samples(const std::vector<runtime::Executor*>& executors, data::SampleSource& source,
                       const std::vector<runtime::Observer*>& observers, const RunOptions& options) {
  QTOOL_CHECK(!executors.empty() && executors.size() == observers.size(), ErrorCode::kInternal,
              "run_samples: {} executors for {} observers", executors.size(), observers.size());
  const ir::Model& model = executors[0]->model();
  const std::vector<data::InputSpec> specs = data::input_specs(model);
  size_t batch = std::max<size_t>(options.batch_size, 1);
  if (batch > 1) {
    const bool dynamic = !specs.empty() && std::all_of(specs.begin(), specs.end(),
                                                       [](const data::InputSpec& s) { return s.batch_dynamic(); });
    if (!dynamic) {
      spdlog::info("the model's batch dimension is fixed: running one sample at a time");
      batch = 1;
    }
  }
  std::vector<const ir::Value*> input_values;
  for (const auto& s : specs) input_values.push_back(model.graph->find_value(s.name));

  const size_t n = source.size();
  const size_t batches = (n + batch - 1) / batch;
  const size_t workers = std::min(executors.size(), std::max<size_t>(batches, 1));
  RunSummary summary;
  SampleChecker checker;
  InterruptGuard guard;
  Progress progress(options.label, n, options.progress && spdlog::should_log(spdlog::level::info));
  const auto start = std::chrono::steady_clock::now();
  std::mutex load_mutex;  // the source and the checker are not thread-safe: samples load one at a time
  std::atomic<size_t> done{0}, batches_run{0};
  // Batches from stop_at on are not started: lowered to a failing batch (the batches before it still
  // run, so the earliest error is found whichever worker fails first), or to 0 on Ctrl-C.
  std::atomic<size_t> stop_at{batches};
  std::atomic<bool> interrupted{false};
  auto stop_from = [&](size_t b) {
    for (size_t cur = stop_at.load(); b < cur && !stop_at.compare_exchange_weak(cur, b);) {
    }
  };
  std::vector<std::exception_ptr> errors(workers);
  std::vector<size_t> failed_at(workers, batches);
  // Worker w runs batches w, w + workers, ...: each executor with its own observer (which the
  // caller merges; StatsObserver's statistics do not depend on how samples are split).
  auto work = [&](size_t w) {
    runtime::Observer& observer = *observers[w];
    auto* batch_observer = dynamic_cast<BatchObserver*>(&observer);
    size_t b = w;
    try {
      for (; b < stop_at.load(); b += workers) {
        if (interrupt_requested()) {
          interrupted = true;
          stop_from(0);
          break;
        }
        const size_t i = b * batch, k = std::min(batch, n - i);
        std::vector<data::Sample> samples;
        {
          std::lock_guard<std::mutex> lock(load_mutex);
          for (size_t j = i; j < i + k; ++j) {
            samples.push_back(with_context(fmt::format("while loading sample '{}'", source.describe(j)),
                                           [&] { return source.load(j); }));
            if (options.check_samples) checker.add(samples.back());
          }
        }
        data::Sample in;
        if (k == 1) {
          in = std::move(samples[0]);
        } else {
          for (const auto& s : specs) in[s.name] = concat_batch(samples, s.name);
        }
        samples.clear();
        if (batch_observer) batch_observer->begin_batch(k);
        if (options.observe_inputs) {
          for (size_t q = 0; q < specs.size(); ++q)
            if (input_values[q]) observer.on_value(*input_values[q], in.at(specs[q].name));
        }
        const std::string what = k == 1 ? fmt::format("sample '{}'", source.describe(i))
                                        : fmt::format("samples '{}' .. '{}'", source.describe(i), source.describe(i + k - 1));
        with_context("while running " + what, [&] { executors[w]->run(in, &observer); });
        if (batch_observer) batch_observer->end_batch();
        done += k;
        ++batches_run;
        if (w == 0) progress.update(done);
      }
    } catch (const Error& e) {
      if (e.code() == ErrorCode::kInterrupted) {  // Ctrl-C inside a sample: reported below
        interrupted = true;
        stop_from(0);
      } else {
        errors[w] = std::current_exception();
        failed_at[w] = b;
        stop_from(b);
      }
    } catch (...) {
      errors[w] = std::current_exception();
      failed_at[w] = b;
      stop_from(b);
    }
  };
  std::vector<std::thread> pool;
  for (size_t w = 1; w < workers; ++w) pool.emplace_back(work, w);
  work(0);
  for (auto& t : pool) t.join();
  // The error of the earliest failing batch (what a one-worker run would have met first).
  size_t first = workers;
  for (size_t w = 0; w < workers; ++w)
    if (errors[w] && (first == workers || failed_at[w] < failed_at[first])) first = w;
  if (first < workers) std::rethrow_exception(errors[first]);
  summary.samples = done;
  summary.batches = batches_run;
  if (interrupted || interrupt_requested()) {
    progress.finish(summary.samples);
    fail(ErrorCode::kInterrupted, "interrupted after {} of {} samples", summary.samples, n);
  }
  progress.finish(summary.samples);
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  summary.duplicates = checker.duplicates;
  summary.constant = checker.constant;
  if (options.check_samples) {
    const size_t distinct = summary.samples - checker.duplicates;
    if (checker.duplicates > 0) {
      spdlog::warn("{} of {} samples repeat an earlier sample exactly", checker.duplicates, summary.samples);
    }
    if (checker.constant > 0) {
      spdlog::warn("{} samples have a constant input tensor (every element equal): check the data and preprocessing",
                   checker.constant);
    }
    if (checker.near_identical()) {
      spdlog::warn("the {} distinct samples have nearly identical statistics (mean and std within 0.01%): the set looks "
                   "degenerate",
                   distinct);
    }
    if (distinct < data::kRecommendedMinSamples) {
      spdlog::warn("calibrating on {} distinct samples; 500-1000 diverse samples are recommended", distinct);
    }
  }
  return summary;
}

// ---------------------------------------------------------------------------------------------
// calibrate

RangesFile ranges_from_stats(const StatsObserver& stats, const ir::Model& model, const std::string& method,
                             const RangeConfig& config, uint64_t samples, int threads) {
  find_method(method);  // fail early on an unknown name
  RangesFile f;
  f.method = method;
  f.config = config;
  f.samples = samples;
  f.bins = stats.options().bins;
  f.channel_axis = stats.options().channel_axis;
  if (!model.source_path.empty()) {
    f.model_name = std::filesystem::path(model.source_path).filename().string();
    std::error_code ec;
    if (std::filesystem::is_regular_file(model.source_path, ec)) f.model_fingerprint = file_fingerprint(model.source_path);
  } else {
    f.model_name = model.graph->name();
  }
  // Each tensor's range alone (entropy's threshold search is O(bins²) per tensor): tensors on up to
  // `threads` workers, each writing its own slot, so the file is the same at any thread count.
  const auto& all = stats.stats();
  std::vector<Range> ranges(all.size());
  std::vector<std::exception_ptr> errors(all.size());
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t i = next++; i < all.size(); i = next++) {
      try {
        ranges[i] = with_context(fmt::format("while computing the {} range of tensor '{}'", method, all[i]->name),
                                 [&] { return compute_range(method, *all[i], config); });
      } catch (...) {
        errors[i] = std::current_exception();
      }
    }
  };
  std::vector<std::thread> pool;
  for (int w = 1; w < std::min<int>(std::max(threads, 1), static_cast<int>(all.size())); ++w) pool.emplace_back(work);
  work();
  for (std::thread& t : pool) t.join();
  for (const std::exception_ptr& e : errors)  // the first tensor's error, as one worker would meet it
    if (e) std::rethrow_exception(e);
  size_t with_nonfinite = 0;
  for (size_t i = 0; i < all.size(); ++i) {
    f.tensors.push_back(make_tensor_range(*all[i], ranges[i]));
    with_nonfinite += all[i]->hist.nonfinite() > 0;
  }
  if (with_nonfinite > 0) {
    spdlog::warn("{} tensors held NaN or infinite values during calibration (ignored for their ranges)",
                 with_nonfinite);
  }
  return f;
}

CalibrationResult calibrate(const ir::Model& model, data::SampleSource& source, const CalibConfig& config) {
  const MethodInfo& method = find_method(config.method);
  CalibrationResult res;
  ObserverOptions observe = config.observe;
  observe.histogram = observe.histogram && method.needs_histogram;  // minmax: no histogram to fill
  res.stats = std::make_unique<StatsObserver>(observe);
  // With several threads and several samples, whole samples run side by side (one single-threaded
  // executor and observer each, merged below): the observers and the sample loading then run in
  // parallel too, which intra-op threads leave serial. Same statistics (observers.h).
  const size_t threads = static_cast<size_t>(std::max(config.threads, 1));
  const size_t workers = source.size() >= 2 * threads ? threads : 1;
  runtime::ExecutorOptions eo;
  eo.threads = workers > 1 ? 1 : static_cast<int>(threads);
  std::vector<std::unique_ptr<runtime::Executor>> executors;
  std::vector<std::unique_ptr<StatsObserver>> extra;
  std::vector<runtime::Executor*> exec_ptrs;
  std::vector<runtime::Observer*> observer_ptrs{res.stats.get()};
  for (size_t w = 0; w < workers; ++w) {
    executors.push_back(std::make_unique<runtime::Executor>(model, eo));
    exec_ptrs.push_back(executors.back().get());
    if (w == 0) continue;
    extra.push_back(std::make_unique<StatsObserver>(observe));
    observer_ptrs.push_back(extra.back().get());
  }
  res.run = run_samples(exec_ptrs, source, observer_ptrs, config.run);
  for (const auto& o : extra) res.stats->merge(*o);
  res.ranges = ranges_from_stats(*res.stats, model, config.method, config.range, res.run.samples, config.threads);
  res.ranges.source = config.source;
  res.ranges.preprocess = config.preprocess;
  return res;
}

}  // namespace qtool::calib
