#include "kernels/memory_limit.h"

namespace deltaserve::kernels {

bool MemoryLimit::Reserve(size_t bytes, int64_t* held) {
  if (limit_ <= 0) return true;
  std::lock_guard<std::mutex> lock(mutex_);
  *held = held_;
  if (held_ + static_cast<int64_t>(bytes) > limit_) return false;
  held_ += static_cast<int64_t>(bytes);
  return true;
}

int64_t MemoryLimit::held() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return held_;
}

void MemoryLimit::Settle(void* data, size_t bytes) {
  if (limit_ <= 0) return;
  std::lock_guard<std::mutex> lock(mutex_);
  if (data == nullptr) {
    held_ -= static_cast<int64_t>(bytes);
  } else {
    bytes_[data] = static_cast<int64_t>(bytes);
  }
}

void MemoryLimit::Release(void* data) {
  if (limit_ <= 0) return;
  std::lock_guard<std::mutex> lock(mutex_);
  const auto it = bytes_.find(data);
  if (it == bytes_.end()) return;
  held_ -= it->second;
  bytes_.erase(it);
}

}  // namespace deltaserve::kernels
