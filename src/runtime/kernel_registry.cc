// KernelRegistry and KernelContext: kernels keyed by "domain:op_type", each kept sorted by the
// first opset version it implements, so find() is a hash lookup plus a scan of a few versions.
#include <algorithm>

#include "qtool/runtime/kernel.h"

namespace qtool::runtime {

namespace {
std::string key_of(std::string_view domain, std::string_view op_type) {
  std::string k;
  k.reserve(domain.size() + op_type.size() + 1);
  k.append(domain == "ai.onnx" ? std::string_view{} : domain);
  k.push_back(':');
  k.append(op_type);
  return k;
}
}  // namespace

const Tensor& KernelContext::input(size_t i) const {
  if (!has_input(i)) {
    fail(ErrorCode::kInvalidModel, "node {} is missing its required input {}", node_.describe(),
         i);
  }
  return *inputs_[i];
}

Tensor KernelContext::take_input(size_t i) {
  QTOOL_CHECK(can_reuse_input(i), ErrorCode::kInternal, "kernel {} took input {} that is not reusable",
              node_.op_type(), i);
  Tensor t = std::move(*reusable_[i]);
  *reusable_[i] = Tensor();
  inputs_[i] = nullptr;
  reusable_[i] = nullptr;
  return t;
}

void KernelContext::set_output(size_t i, Tensor t) {
  QTOOL_CHECK(i < outputs_->size(), ErrorCode::kInternal, "kernel {} set output {} but the node has {} outputs",
              node_.op_type(), i, outputs_->size());
  (*outputs_)[i] = std::move(t);
}

void KernelRegistry::add(std::string_view domain, std::string_view op_type, int since_version, KernelFn fn) {
  auto& versions = kernels_[key_of(domain, op_type)];
  auto it = std::find_if(versions.begin(), versions.end(), [&](const auto& p) { return p.first == since_version; });
  if (it != versions.end()) {
    it->second = fn;  // a later registration replaces an earlier one for the same version
  } else {
    versions.emplace_back(since_version, fn);
    std::sort(versions.begin(), versions.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  }
}

KernelFn KernelRegistry::find(std::string_view domain, std::string_view op_type, int64_t opset) const {
  auto it = kernels_.find(key_of(domain, op_type));
  if (it == kernels_.end()) return nullptr;
  KernelFn best = nullptr;
  for (const auto& [since, fn] : it->second) {
    if (since <= opset) best = fn;
  }
  return best;
}

std::vector<std::string> KernelRegistry::ops() const {
  std::vector<std::string> out;
  out.reserve(kernels_.size());
  for (const auto& [k, v] : kernels_) out.push_back(k);
  std::sort(out.begin(), out.end());
  return out;
}

const KernelRegistry& KernelRegistry::global() {
  // Built on first use (thread-safe local static), not by static initializers in kernel files.
  static const KernelRegistry registry = [] {
    KernelRegistry r;
    register_all_kernels(r);
    return r;
  }();
  return registry;
}

}  // namespace qtool::runtime
