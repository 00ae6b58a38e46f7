// qtool's one error type: a code, a message and a context stack.
//
// Library code throws qtool::Error and never prints or exits; the CLI front end
// (tools/qtool) is the only place that catches it and turns the code into an exit
// status. Context is pushed while the error unwinds ("while loading 'm.onnx'",
// "in node 'Conv_12' (Conv)"), so the final message reads outermost first.
#pragma once

#include <exception>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>

namespace qtool {

/// What kind of failure this is; decides the CLI exit code (see exit_code_for).
enum class ErrorCode {
  kInvalidModel,   ///< the model file is malformed (bad protobuf, cycle, dangling input...)
  kUnsupported,    ///< valid input that qtool does not handle (unknown op, dtype...)
  kIo,             ///< a file is missing, unreadable, unwritable or too short
  kConfig,         ///< bad options or option combinations given by the user
  kInvalidInput,   ///< bad data (calibration sample, input tensor) given by the user
  kQualityGate,    ///< a requested quality gate was violated
  kInterrupted,    ///< the user interrupted the run (Ctrl-C)
  kInternal,       ///< a bug in qtool
};

/// Human-readable name of an error code ("invalid model", "unsupported", ...).
std::string_view error_code_name(ErrorCode code);

/// Documented process exit codes (README "Exit codes").
namespace exit_code {
inline constexpr int kOk = 0;
inline constexpr int kInternal = 1;
inline constexpr int kBadInput = 2;      ///< bad usage, bad options, bad or unsupported input
inline constexpr int kQualityGate = 3;   ///< the run worked but a quality gate failed
inline constexpr int kInterrupted = 130; ///< stopped by SIGINT, like a shell
}  // namespace exit_code

/// Maps an error code to the process exit status documented in the README.
int exit_code_for(ErrorCode code);

/// The single exception type of qtool.
class Error : public std::exception {
 public:
  Error(ErrorCode code, std::string message) : code_(code), message_(std::move(message)) { rebuild(); }

  ErrorCode code() const noexcept { return code_; }
  /// The innermost message, without context.
  const std::string& message() const noexcept { return message_; }
  /// Context frames, innermost first (as pushed while unwinding).
  const std::vector<std::string>& context() const noexcept { return context_; }
  /// "outer: inner: message".
  const char* what() const noexcept override { return full_.c_str(); }

  /// Adds an outer context frame, e.g. "while loading 'model.onnx'".
  Error& add_context(std::string frame) {
    context_.push_back(std::move(frame));
    rebuild();
    return *this;
  }

 private:
  void rebuild();

  ErrorCode code_;
  std::string message_;
  std::vector<std::string> context_;
  std::string full_;
};

/// Throws Error(code, fmt::format(...)).
template <typename... Args>
[[noreturn]] void fail(ErrorCode code, fmt::format_string<Args...> f, Args&&... args) {
  throw Error(code, fmt::format(f, std::forward<Args>(args)...));
}

/// Runs fn(); if it throws Error, adds `frame` as context and rethrows. Other
/// std::exceptions (bad_alloc, protobuf, ...) become kInternal errors with the frame.
template <typename Fn>
decltype(auto) with_context(const std::string& frame, Fn&& fn) {
  try {
    return fn();
  } catch (Error& e) {
    e.add_context(frame);
    throw;
  } catch (const std::bad_alloc&) {
    Error e(ErrorCode::kInternal, "out of memory");
    e.add_context(frame);
    throw e;
  }
}

namespace detail {
[[noreturn]] void check_failed(ErrorCode code, const char* file, int line, const char* cond,
                               const std::string& msg);
}  // namespace detail

}  // namespace qtool

/// QTOOL_CHECK(cond, code, "fmt", args...): throws qtool::Error with the message
/// when cond is false. Internal invariants (code kInternal) also record file:line.
#define QTOOL_CHECK(cond, code, ...)                                                    \
  do {                                                                                  \
    if (!(cond)) [[unlikely]]                                                           \
      ::qtool::detail::check_failed((code), __FILE__, __LINE__, #cond,                  \
                                    ::fmt::format(__VA_ARGS__));                        \
  } while (0)

/// Internal invariant: a failure is a qtool bug, never a property of user input.
#define QTOOL_ASSERT(cond) QTOOL_CHECK(cond, ::qtool::ErrorCode::kInternal, "assertion failed")
