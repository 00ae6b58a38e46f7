// Observers that stream statistics of the executor's values during calibration.
//
// A StatsObserver keeps, per observed float tensor (keyed by ir::Value identity, never by name):
//  - exact min and max;
//  - min and max per channel along a channel axis;
//  - a widening power-of-two Histogram (see histogram.h);
//  - running moments (count, mean, M2) merged with Chan et al.'s parallel formula
//    (mean_ab = mean_a + d*n_b/n, M2_ab = M2_a + M2_b + d^2*n_a*n_b/n, d = mean_b - mean_a).
// Memory is O(tensors * (bins + channels)), independent of the number of samples. All of these
// statistics are functions of the multiset of values seen, so they do not depend on how samples
// are grouped into batches (moments up to floating-point rounding).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "qtool/calib/histogram.h"
#include "qtool/runtime/executor.h"

namespace qtool::calib {

/// An observer that wants to know where batches start and end (run_samples calls these).
class BatchObserver : public runtime::Observer {
 public:
  /// A batch of `samples` samples is about to run.
  virtual void begin_batch(size_t samples) { (void)samples; }
  /// The batch has run.
  virtual void end_batch() {}
};

/// What a StatsObserver collects.
struct ObserverOptions {
  /// Channel axis for per-channel min/max. -1 = automatic: axis 1 for rank 4-5 (NCHW/NCDHW
  /// activations), the last axis for rank 2-3 ([batch, features], [batch, seq, hidden]),
  /// none for rank 0-1. A non-negative axis applies to every tensor of higher rank.
  int channel_axis = -1;
  bool per_channel = true;
  /// Tensors with more channels than this keep no per-channel statistics (bounded memory).
  int64_t max_channels = 1 << 16;
  bool histogram = true;
  int bins = 4096;
  /// Also observe the model's graph inputs (run_samples reports them).
  bool observe_inputs = true;
  /// Also observe the values computed inside If/Loop/Scan bodies (every time a body runs). Their
  /// names may repeat between sibling branches: read them by value (TensorStats::value), not name.
  bool subgraphs = false;
};

/// Statistics of one tensor across every sample seen.
struct TensorStats {
  const ir::Value* value = nullptr;
  std::string name;
  DataType dtype = DataType::kFloat;
  Shape shape;               ///< shape of the last observation
  uint64_t count = 0;        ///< finite elements seen
  uint64_t observations = 0; ///< batches seen
  double min = 0.0, max = 0.0;
  double mean = 0.0, m2 = 0.0;
  int channel_axis = -1;     ///< -1: no per-channel statistics
  std::vector<float> channel_min, channel_max;
  Histogram hist;

  explicit TensorStats(int bins) : hist(bins) {}
  /// Population standard deviation.
  double stddev() const;
  /// max(|min|, |max|).
  double absmax() const;
  /// Adds one observation of this tensor (float32 data).
  void observe(const Tensor& t, const ObserverOptions& options);
  /// Adds the statistics of the same tensor observed elsewhere (another worker's samples): exact
  /// extremes and histogram, moments by Chan's formula; per-channel statistics are kept only when
  /// both sides have them on the same axis and channel count.
  void merge(const TensorStats& other);
};

/// Collects TensorStats for every float value the executor produces.
class StatsObserver : public BatchObserver {
 public:
  explicit StatsObserver(ObserverOptions options = {}) : options_(std::move(options)) {}

  void begin_batch(size_t samples) override;
  /// Observes float32/float16/bfloat16/float64 tensors; a main-graph value reported twice in one
  /// batch (a graph input reported by both run_samples and the executor) counts once (a Loop
  /// body's value counts once per iteration); initializers and integer tensors are ignored.
  void on_value(const ir::Value& value, const Tensor& tensor) override;
  bool observes_subgraphs() const override { return options_.subgraphs; }

  /// Adds another observer's statistics (same model, same options), tensor by tensor; tensors only
  /// it saw are appended in its order.
  void merge(const StatsObserver& other);

  /// Statistics in first-seen (execution) order.
  const std::vector<std::unique_ptr<TensorStats>>& stats() const { return order_; }
  /// nullptr if `value` was never observed.
  const TensorStats* find(const ir::Value* value) const;
  const ObserverOptions& options() const { return options_; }
  /// Approximate bytes held by the statistics (for the memory claims and tests).
  size_t memory_bytes() const;

 private:
  ObserverOptions options_;
  std::vector<std::unique_ptr<TensorStats>> order_;
  std::unordered_map<const ir::Value*, TensorStats*> by_value_;
  std::unordered_map<const ir::Value*, uint64_t> last_batch_;
  uint64_t batch_ = 0;
};

/// The channel axis ObserverOptions::channel_axis selects for a tensor of `rank` (-1: none).
int resolve_channel_axis(int option, size_t rank);

}  // namespace qtool::calib
