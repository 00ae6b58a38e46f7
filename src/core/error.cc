#include "qtool/core/error.h"

namespace qtool {

std::string_view error_code_name(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidModel: return "invalid model";
    case ErrorCode::kUnsupported: return "unsupported";
    case ErrorCode::kIo: return "I/O error";
    case ErrorCode::kConfig: return "bad option";
    case ErrorCode::kInvalidInput: return "invalid input";
    case ErrorCode::kQualityGate: return "quality gate failed";
    case ErrorCode::kInterrupted: return "interrupted";
    case ErrorCode::kInternal: return "internal error";
  }
  return "error";
}

int exit_code_for(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInternal: return exit_code::kInternal;
    case ErrorCode::kQualityGate: return exit_code::kQualityGate;
    case ErrorCode::kInterrupted: return exit_code::kInterrupted;
    default: return exit_code::kBadInput;
  }
}

void Error::rebuild() {
  full_.clear();
  for (auto it = context_.rbegin(); it != context_.rend(); ++it) {
    full_ += *it;
    full_ += ": ";
  }
  full_ += message_;
}

namespace detail {
void check_failed(ErrorCode code, const char* file, int line, const char* cond, const std::string& msg) {
  if (code == ErrorCode::kInternal) {
    throw Error(code, fmt::format("{} ({} at {}:{})", msg, cond, file, line));
  }
  throw Error(code, msg);
}
}  // namespace detail

}  // namespace qtool
