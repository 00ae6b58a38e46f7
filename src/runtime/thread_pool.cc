// ThreadPool: threads()-1 workers plus the calling thread share the chunks of one
// parallel_for at a time. Chunks are claimed with an atomic counter, so uneven chunks
// balance themselves; a parallel_for issued while another is running (or from inside a
// chunk) runs inline instead of deadlocking. Between jobs a worker polls for the next one for
// 300 microseconds before it sleeps on the condition variable (as ONNX Runtime's pool
// spins): a model's operators follow each other closely, and waking a sleeping thread for each
// of them cost more than the smaller operators themselves at batch 1.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>

#include "qtool/runtime/kernel.h"

namespace qtool::runtime {

namespace {
/// How long a thread polls before it sleeps: the time, not a count of pause instructions (a pause
/// takes ~60 cycles on AMD Zen 3 and ~140 on recent Intel cores, 10 on older ones).
constexpr auto kSpinTime = std::chrono::microseconds(300);

inline void pause() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

/// Polls done() for up to kSpinTime (the clock read every 16 pauses); true when it became true.
template <typename Done>
bool spin_until(Done&& done) {
  const auto end = std::chrono::steady_clock::now() + kSpinTime;
  for (;;) {
    for (int i = 0; i < 16; ++i) {
      if (done()) return true;
      pause();
    }
    if (std::chrono::steady_clock::now() >= end) return done();
  }
}
}  // namespace

struct ThreadPool::Impl {
  std::vector<std::thread> workers;
  std::mutex mu;
  std::condition_variable work_cv, done_cv;
  std::mutex dispatch_mu;  // one parallel_for at a time
  std::atomic<uint64_t> generation{0};
  bool stop = false;

  // The current job.
  const std::function<void(int64_t, int64_t)>* fn = nullptr;
  int64_t n = 0, chunk = 0, num_chunks = 0;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> remaining{0};
  std::exception_ptr error;
  std::atomic<int> active_workers{0};

  void run_chunks() {
    for (;;) {
      const int64_t c = next.fetch_add(1);
      if (c >= num_chunks) return;
      const int64_t b = c * chunk, e = std::min(n, b + chunk);
      try {
        (*fn)(b, e);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu);
        if (!error) error = std::current_exception();
      }
      if (remaining.fetch_sub(1) == 1) {
        std::lock_guard<std::mutex> lock(mu);
        done_cv.notify_all();
      }
    }
  }

  void worker_loop() {
    uint64_t seen = 0;
    for (;;) {
      // Poll first (the next operator's job usually comes within microseconds), then sleep.
      spin_until([&] { return generation.load(std::memory_order_acquire) != seen; });
      {
        std::unique_lock<std::mutex> lock(mu);
        work_cv.wait(lock, [&] { return stop || generation.load() != seen; });
        if (stop) return;
        seen = generation.load();
        ++active_workers;
      }
      run_chunks();
      {
        std::lock_guard<std::mutex> lock(mu);
        if (--active_workers == 0) done_cv.notify_all();
      }
    }
  }
};

ThreadPool::ThreadPool(int threads) : threads_(std::max(1, threads)) {
  if (threads_ > 1) {
    impl_ = new Impl;
    for (int i = 1; i < threads_; ++i) impl_->workers.emplace_back([this] { impl_->worker_loop(); });
  }
}

ThreadPool::~ThreadPool() {
  if (!impl_) return;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->stop = true;
  }
  impl_->work_cv.notify_all();
  for (auto& t : impl_->workers) t.join();
  delete impl_;
}

void ThreadPool::parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  if (!impl_ || n <= grain) {
    fn(0, n);
    return;
  }
  std::unique_lock<std::mutex> dispatch(impl_->dispatch_mu, std::try_to_lock);
  if (!dispatch.owns_lock()) {  // nested or concurrent use: run inline
    fn(0, n);
    return;
  }
  Impl& p = *impl_;
  // A few chunks per thread so that a slow thread does not hold everyone up.
  const int64_t max_chunks = std::min<int64_t>((n + grain - 1) / grain, int64_t{threads_} * 4);
  const int64_t chunk = (n + max_chunks - 1) / max_chunks;
  {
    // Workers that woke late for the previous job must leave before its fields are rewritten.
    std::unique_lock<std::mutex> lock(p.mu);
    p.done_cv.wait(lock, [&] { return p.active_workers == 0; });
    p.fn = &fn;
    p.n = n;
    p.chunk = chunk;
    p.num_chunks = (n + chunk - 1) / chunk;
    p.next.store(0);
    p.remaining.store(p.num_chunks);
    p.error = nullptr;
    ++p.generation;
  }
  p.work_cv.notify_all();
  p.run_chunks();
  std::exception_ptr err;
  // The workers finish their last chunks within microseconds: poll before sleeping.
  spin_until([&] { return p.remaining.load() == 0 && p.active_workers.load() == 0; });
  {
    std::unique_lock<std::mutex> lock(p.mu);
    p.done_cv.wait(lock, [&] { return p.remaining.load() == 0 && p.active_workers == 0; });
    err = p.error;
    p.fn = nullptr;
  }
  if (err) std::rethrow_exception(err);
}

}  // namespace qtool::runtime
