// Ctrl-C (SIGINT) and SIGTERM: stop cleanly in every phase, leave no file behind.
//
// The CLI installs the handler once for the whole run (install_interrupt_handler). The first signal
// only sets a flag; long loops (the executor between nodes, calibration between samples, GPTQ per
// layer, tuning per step, the experiment sweep per setting) call check_interrupt(), which throws
// Error(kInterrupted); the error unwinds through the RAII owners of temporary files (AtomicFile
// removes its temporary file), and main() exits 130. A second signal means "now": the handler
// removes every registered temporary file (unlink is async-signal-safe) and _exit(130)s.
#pragma once

#include <string_view>

namespace qtool {

/// Installs the SIGINT/SIGTERM handlers for the process (idempotent).
void install_interrupt_handler();
/// True once SIGINT/SIGTERM arrived (or request_interrupt() was called).
bool interrupt_requested();
/// Sets (or clears) the flag, e.g. from tests.
void request_interrupt(bool value = true);
/// Throws Error(kInterrupted, "interrupted <where>") when interrupt_requested().
void check_interrupt(std::string_view where);

/// Registers a temporary file that the second-signal path removes before exiting; returns a slot
/// (or -1 when the table is full: the file is then only removed by its owner).
int register_temp_file(const char* path);
/// Forgets a slot from register_temp_file (after the file was renamed into place or removed).
void unregister_temp_file(int slot);

}  // namespace qtool
