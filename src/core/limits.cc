#include "qtool/core/limits.h"

#include <unistd.h>

#include <atomic>
#include <cctype>
#include <charconv>
#include <cmath>
#include <limits>
#include <string>

namespace qtool {
namespace {

uint64_t physical_memory_bytes() {
  const long pages = ::sysconf(_SC_PHYS_PAGES);
  const long page = ::sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page <= 0) return uint64_t{8} << 30;
  return static_cast<uint64_t>(pages) * static_cast<uint64_t>(page);
}

ResourceLimits& limits_storage() {
  static ResourceLimits limits = default_resource_limits();
  return limits;
}

}  // namespace

ResourceLimits default_resource_limits() {
  ResourceLimits l;
  l.max_memory_bytes = std::max<uint64_t>(uint64_t{1} << 30, physical_memory_bytes() / 2);
  l.max_tensor_elements = int64_t{1} << 32;
  l.max_loop_iterations = 10'000'000;
  return l;
}

const ResourceLimits& resource_limits() { return limits_storage(); }

void set_resource_limits(const ResourceLimits& limits) { limits_storage() = limits; }

uint64_t sample_byte_limit() { return resource_limits().max_memory_bytes / 4; }

void check_allocation(uint64_t bytes, std::string_view what, ErrorCode code, uint64_t limit) {
  const uint64_t max = limit ? limit : resource_limits().max_memory_bytes;
  if (bytes > max) {
    fail(code, "{} needs {} bytes, over the memory limit of {} bytes{}", what, bytes, max,
         limit ? "" : " (--max-memory)");
  }
}

void check_tensor_size(int64_t elements, double element_bytes, std::string_view what, ErrorCode code) {
  const ResourceLimits& l = resource_limits();
  if (elements < 0) fail(code, "{} would have a negative number of elements ({})", what, elements);
  if (elements > l.max_tensor_elements) {
    fail(code, "{} would have {} elements, over the limit of {} (--max-tensor-elements)", what, elements,
         l.max_tensor_elements);
  }
  const double bytes = static_cast<double>(elements) * element_bytes;
  if (bytes > static_cast<double>(l.max_memory_bytes)) {
    fail(code, "{} would need {:.0f} bytes, over the memory limit of {} bytes (--max-memory)", what, bytes,
         l.max_memory_bytes);
  }
}

uint64_t parse_byte_size(std::string_view text, std::string_view option) {
  std::string s(text);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  size_t pos = 0;
  double value = 0;
  const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  pos = static_cast<size_t>(p - s.data());
  if (ec != std::errc() || pos == 0 || !(value > 0) || !std::isfinite(value)) {
    fail(ErrorCode::kConfig, "{} must be a positive size such as 4G, 512M or 1000000, got '{}'", option, text);
  }
  std::string unit = s.substr(pos);
  for (auto& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  double mult = 1;
  if (unit.empty() || unit == "B") mult = 1;
  else if (unit == "K" || unit == "KB" || unit == "KIB") mult = 1024.0;
  else if (unit == "M" || unit == "MB" || unit == "MIB") mult = 1024.0 * 1024;
  else if (unit == "G" || unit == "GB" || unit == "GIB") mult = 1024.0 * 1024 * 1024;
  else if (unit == "T" || unit == "TB" || unit == "TIB") mult = 1024.0 * 1024 * 1024 * 1024;
  else fail(ErrorCode::kConfig, "{}: unknown unit '{}' in '{}' (use K, M, G or T)", option, unit, text);
  const double bytes = value * mult;
  if (bytes < 1 || bytes > 1.8e19) fail(ErrorCode::kConfig, "{} is out of range: '{}'", option, text);
  return static_cast<uint64_t>(bytes);
}

}  // namespace qtool
