// Which CUDA failures a backend survives, and the per-thread record of them behind
// Backend::TakeFailure: a thread's first failure is kept, and the thread's later operations are
// skipped, until the thread takes it.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <atomic>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>

#include "kernels/backend.h"

namespace deltaserve::kernels::cuda {

// Ends the process naming the call: the CUDA context cannot be used any more.
[[noreturn]] void FatalCudaFailure(const char* what, const char* why);
// FatalCudaFailure unless `error` is cudaSuccess.
void CheckFatal(cudaError_t error, const char* what);

class CallFailures {
 public:
  // Whether the calling thread holds a failure.
  bool held() const;
  // False (and the failure recorded for the calling thread) when `error` is one; ends the
  // process on an error that leaves the device unusable (a faulted kernel, a lost device).
  bool Ok(cudaError_t error, const char* what);
  bool OkBlas(cublasStatus_t status, const char* what);
  // Keeps the calling thread's failure unless it already holds one.
  void Record(bool out_of_memory, std::string message);
  // The calling thread's failure (none when it holds none), forgotten.
  BackendFailure Take();

 private:
  std::atomic<int> count_{0};  // failures held by all threads: the common case takes no lock
  mutable std::mutex mutex_;
  std::unordered_map<std::thread::id, BackendFailure> by_thread_;
};

}  // namespace deltaserve::kernels::cuda
