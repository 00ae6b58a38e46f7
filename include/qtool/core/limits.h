// Resource limits: how much memory and how many tensor elements a run may ask for when the size
// comes from the user's files (a .npy header, a ZIP directory, an image header, a Expand/
// ConstantOfShape shape, a Loop trip count).
//
// Sizes declared by a file are untrusted: a 806-byte .npz can claim a 3 GiB member, an .npy header
// 4e15 bytes, a 50-byte model an Expand to [1e5]^3. Every reader and kernel that allocates from
// such a size checks it here first and fails with a clear error (exit 2) naming the file, node or
// tensor, instead of allocating and dying of "out of memory". The limits are process-wide,
// set once by the CLI from --max-memory / --max-tensor-elements / --max-loop-iterations
// (README "Resource limits"); library code only reads them.
#pragma once

#include <cstdint>
#include <string_view>

#include "qtool/core/error.h"

namespace qtool {

/// The limits in force (see resource_limits()).
struct ResourceLimits {
  /// Largest single buffer sized from untrusted input, in bytes (--max-memory). A calibration or
  /// evaluation sample may use at most a quarter of it (sample_byte_limit()).
  uint64_t max_memory_bytes = 0;
  /// Largest tensor a kernel may create, in elements (--max-tensor-elements).
  int64_t max_tensor_elements = 0;
  /// Largest Loop trip count the executor runs (--max-loop-iterations).
  int64_t max_loop_iterations = 0;
};

/// Defaults: max_memory_bytes = half the machine's physical memory, at least 1 GiB (12 GiB on the
/// 24 GiB CI machine); max_tensor_elements = 2^32; max_loop_iterations = 10^7.
ResourceLimits default_resource_limits();
/// The process-wide limits (the defaults until set_resource_limits()).
const ResourceLimits& resource_limits();
/// Replaces the process-wide limits (the CLI, once, before any work; tests).
void set_resource_limits(const ResourceLimits& limits);

/// Bytes one sample (all its input tensors) may occupy: a quarter of max_memory_bytes.
uint64_t sample_byte_limit();

/// Throws Error(code) when `bytes` exceeds max_memory_bytes (or `limit` when non-zero):
/// "<what> needs N bytes, over the memory limit of M bytes (--max-memory)".
void check_allocation(uint64_t bytes, std::string_view what, ErrorCode code = ErrorCode::kInvalidInput,
                      uint64_t limit = 0);
/// Throws Error(code) when `elements` is negative or exceeds max_tensor_elements, or when the
/// tensor's bytes (elements * element_bytes, overflow-checked) exceed max_memory_bytes.
void check_tensor_size(int64_t elements, double element_bytes, std::string_view what,
                       ErrorCode code = ErrorCode::kInvalidModel);

/// Parses a byte count: "123", "512M", "4G", "1.5GiB", "800MB" (K/M/G/T are powers of 1024).
/// Throws kConfig naming `option` for anything else or for 0.
uint64_t parse_byte_size(std::string_view text, std::string_view option);

}  // namespace qtool
