#include "qtool/core/interrupt.h"

#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstring>

#include "qtool/core/error.h"

namespace qtool {
namespace {

volatile std::sig_atomic_t g_interrupted = 0;
std::atomic<bool> g_installed{false};

// Temporary files in flight: fixed slots of fixed-size paths, written by the owning thread under
// a spin flag, read by the signal handler (which only reads and unlinks).
constexpr int kSlots = 64;
constexpr size_t kPathMax = 4096;
struct Slot {
  std::atomic<bool> used{false};
  std::atomic<bool> ready{false};
  char path[kPathMax];
};
Slot g_slots[kSlots];

void remove_temp_files() {
  for (auto& s : g_slots) {
    if (s.ready.load(std::memory_order_acquire)) ::unlink(s.path);
  }
}

extern "C" void on_signal(int sig) {
  if (g_interrupted) {  // second signal: remove what is in flight and stop now
    remove_temp_files();
    static const char msg[] = "\nqtool: interrupted\n";
    (void)!::write(2, msg, sizeof msg - 1);
    ::_exit(sig == SIGTERM ? 143 : 130);
  }
  g_interrupted = 1;
  static const char msg[] = "\nqtool: stopping (Ctrl-C again to stop at once)\n";
  (void)!::write(2, msg, sizeof msg - 1);
}

}  // namespace

void install_interrupt_handler() {
  if (g_installed.exchange(true)) return;
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

bool interrupt_requested() { return g_interrupted != 0; }
void request_interrupt(bool value) { g_interrupted = value ? 1 : 0; }

void check_interrupt(std::string_view where) {
  if (g_interrupted) fail(ErrorCode::kInterrupted, "interrupted {}", where);
}

int register_temp_file(const char* path) {
  const size_t n = std::strlen(path);
  if (n >= kPathMax) return -1;
  for (int i = 0; i < kSlots; ++i) {
    bool expected = false;
    if (g_slots[i].used.compare_exchange_strong(expected, true)) {
      std::memcpy(g_slots[i].path, path, n + 1);
      g_slots[i].ready.store(true, std::memory_order_release);
      return i;
    }
  }
  return -1;
}

void unregister_temp_file(int slot) {
  if (slot < 0 || slot >= kSlots) return;
  g_slots[slot].ready.store(false, std::memory_order_release);
  g_slots[slot].used.store(false, std::memory_order_release);
}

}  // namespace qtool
