// The calibration driver: run samples through the executor with observers, then turn the
// statistics into ranges.
//
// run_samples() is the generic part (samples -> batches -> Executor::run with an observer,
// progress, Ctrl-C, sanity checks on the sample set) so that other observers (GPTQ/AWQ Hessian
// accumulators) reuse it; calibrate() adds a StatsObserver and a range method.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "qtool/calib/methods.h"
#include "qtool/calib/observers.h"
#include "qtool/calib/ranges.h"
#include "qtool/data/sample_source.h"
#include "qtool/runtime/executor.h"

namespace qtool::calib {

/// How run_samples feeds the executor.
struct RunOptions {
  /// Samples per Executor::run. > 1 concatenates samples along dim 0, only when every model input
  /// has a dynamic batch dimension (otherwise 1 with a log line). Statistics do not depend on it.
  size_t batch_size = 1;
  /// Progress bar on a terminal / log lines otherwise (only when spdlog's level is info or lower).
  bool progress = true;
  /// Word for the progress bar and messages ("calibrating").
  std::string label = "calibrating";
  /// Report the model's runtime inputs to the observer before each run (the executor reports
  /// only node outputs).
  bool observe_inputs = true;
  /// Check the sample set (duplicates, constant inputs, near-identical samples, too few) and warn.
  bool check_samples = true;
};

/// What run_samples measured.
struct RunSummary {
  size_t samples = 0;
  size_t batches = 0;
  double seconds = 0.0;
  size_t duplicates = 0;  ///< samples whose bytes equal an earlier sample's
  size_t constant = 0;    ///< samples with a constant input tensor
  double samples_per_second() const { return seconds > 0 ? static_cast<double>(samples) / seconds : 0.0; }
};

/// Runs every sample of `source` through `executor`, calling `observer` (a BatchObserver also gets
/// begin_batch/end_batch). Checks for Ctrl-C between batches (throws Error(kInterrupted) naming how
/// many samples ran); errors while loading or running a sample name the sample.
RunSummary run_samples(runtime::Executor& executor, data::SampleSource& source, runtime::Observer& observer,
                       const RunOptions& options = {});
/// The same on several executors of one model at once, executor w with observer w running batches
/// w, w + W, ... (W = executors.size()) on its own thread; samples load one at a time. The caller
/// merges the observers. The first error in sample order is rethrown.
RunSummary run_samples(const std::vector<runtime::Executor*>& executors, data::SampleSource& source,
                       const std::vector<runtime::Observer*>& observers, const RunOptions& options = {});

/// Everything calibrate() needs besides the model and the samples.
struct CalibConfig {
  std::string method = "minmax";
  RangeConfig range;
  ObserverOptions observe;
  RunOptions run;
  int threads = 1;           ///< executor intra-op threads
  std::string source;        ///< recorded in the ranges file
  std::string preprocess;    ///< recorded in the ranges file
};

/// The statistics and the ranges file made from them.
struct CalibrationResult {
  RangesFile ranges;
  std::unique_ptr<StatsObserver> stats;  ///< reusable: ranges_from_stats() with another method
  RunSummary run;
};

/// Calibrates `model` on `source`: StatsObserver + run_samples + ranges_from_stats. The
/// histograms are filled only for a method that reads them (not for minmax), so the stats of a
/// minmax run serve minmax only and its ranges file carries no histogram summaries.
CalibrationResult calibrate(const ir::Model& model, data::SampleSource& source, const CalibConfig& config);

/// Computes `method`'s range for every observed tensor and fills a RangesFile (model name and
/// fingerprint from model.source_path when set); tensors on up to `threads` workers, the same file
/// at any count.
RangesFile ranges_from_stats(const StatsObserver& stats, const ir::Model& model, const std::string& method,
                             const RangeConfig& config, uint64_t samples, int threads = 1);

/// Makes sure the process-wide SIGINT/SIGTERM handler of core/interrupt.h is installed (the first
/// signal sets interrupt_requested(); a second removes in-flight temporary files and exits 130).
class InterruptGuard {
 public:
  InterruptGuard();
  ~InterruptGuard();
  InterruptGuard(const InterruptGuard&) = delete;
  InterruptGuard& operator=(const InterruptGuard&) = delete;
};
/// True once SIGINT arrived under an InterruptGuard (or request_interrupt() was called).
bool interrupt_requested();
/// Sets (or clears) the flag, e.g. from tests.
void request_interrupt(bool value = true);

/// Progress reporting: a redrawn bar on a terminal (done/total, samples/s, ETA) at most every
/// 100 ms; on a non-terminal a log line every 10% (and at least every 30 s). Writes to stderr.
class Progress {
 public:
  Progress(std::string label, size_t total, bool enabled);
  ~Progress();
  void update(size_t done);
  /// Clears the bar and logs the summary line.
  void finish(size_t done);

 private:
  std::string label_;
  size_t total_;
  bool enabled_, tty_;
  bool finished_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
  size_t last_logged_decile_ = 0;
};

}  // namespace qtool::calib
