#include "kernels/failure_record.h"

#include <utility>

namespace deltaserve::kernels {

bool FailureRecord::held() const {
  if (count_.load(std::memory_order_acquire) == 0) return false;
  std::lock_guard<std::mutex> lock(mutex_);
  return by_thread_.count(std::this_thread::get_id()) > 0;
}

void FailureRecord::Record(bool out_of_memory, std::string message) {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto [it, inserted] = by_thread_.try_emplace(std::this_thread::get_id());
  if (!inserted) return;
  it->second.out_of_memory = out_of_memory;
  it->second.message = std::move(message);
  count_.fetch_add(1, std::memory_order_release);
}

BackendFailure FailureRecord::Take() {
  if (count_.load(std::memory_order_acquire) == 0) return {};
  std::lock_guard<std::mutex> lock(mutex_);
  const auto it = by_thread_.find(std::this_thread::get_id());
  if (it == by_thread_.end()) return {};
  BackendFailure failure = std::move(it->second);
  by_thread_.erase(it);
  count_.fetch_sub(1, std::memory_order_release);
  return failure;
}

}  // namespace deltaserve::kernels
