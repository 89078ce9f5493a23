// A backend's memory limit (CpuBackendOptions / CudaBackendOptions::memory_limit_bytes): the bytes
// it holds, counted against a cap.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <unordered_map>

namespace deltaserve::kernels {

class MemoryLimit {
 public:
  explicit MemoryLimit(int64_t limit_bytes) : limit_(limit_bytes) {}
  int64_t limit() const { return limit_; }
  // The bytes counted now (0 with no limit).
  int64_t held() const;

  // Counts `bytes` against the limit when they fit (always with no limit); false when they do
  // not, with the bytes held so far in *held.
  bool Reserve(size_t bytes, int64_t* held);
  // After a successful Reserve: the allocation at `data` holds the bytes; null gives them back.
  void Settle(void* data, size_t bytes);
  // The allocation at `data` is freed.
  void Release(void* data);

 private:
  const int64_t limit_;  // 0: none
  mutable std::mutex mutex_;
  int64_t held_ = 0;
  std::unordered_map<void*, int64_t> bytes_;
};

}  // namespace deltaserve::kernels
