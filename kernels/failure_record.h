// The per-thread record behind Backend::TakeFailure: a thread's first failure is kept, and the
// backend skips that thread's later operations, until the thread takes it.
#pragma once

#include <atomic>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>

#include "kernels/backend.h"

namespace deltaserve::kernels {

class FailureRecord {
 public:
  // Whether the calling thread holds a failure.
  bool held() const;
  // Keeps the calling thread's failure unless it already holds one.
  void Record(bool out_of_memory, std::string message);
  // The calling thread's failure (none when it holds none), forgotten.
  BackendFailure Take();

 private:
  std::atomic<int> count_{0};  // failures held by all threads: the common case takes no lock
  mutable std::mutex mutex_;
  std::unordered_map<std::thread::id, BackendFailure> by_thread_;
};

}  // namespace deltaserve::kernels
