#include "kernels/cuda/call_failures.h"

#include <cstdio>
#include <cstdlib>
#include <utility>

namespace deltaserve::kernels::cuda {
namespace {

// Errors after which the device still works: the call did nothing (no memory, a launch refused
// before it ran).
bool Recoverable(cudaError_t error) {
  switch (error) {
    case cudaErrorMemoryAllocation:
    case cudaErrorInvalidValue:
    case cudaErrorInvalidConfiguration:
    case cudaErrorLaunchOutOfResources:
    case cudaErrorInvalidDeviceFunction:
    case cudaErrorNoKernelImageForDevice:
    case cudaErrorNotSupported:
      return true;
    default:
      return false;
  }
}

}  // namespace

void FatalCudaFailure(const char* what, const char* why) {
  std::fprintf(stderr, "deltaserve cuda: %s failed: %s; the device is unusable\n", what, why);
  std::abort();
}

void CheckFatal(cudaError_t error, const char* what) {
  if (error != cudaSuccess) FatalCudaFailure(what, cudaGetErrorString(error));
}

bool CallFailures::held() const {
  if (count_.load(std::memory_order_acquire) == 0) return false;
  std::lock_guard<std::mutex> lock(mutex_);
  return by_thread_.count(std::this_thread::get_id()) > 0;
}

bool CallFailures::Ok(cudaError_t error, const char* what) {
  if (error == cudaSuccess) return true;
  if (!Recoverable(error)) FatalCudaFailure(what, cudaGetErrorString(error));
  (void)cudaGetLastError();  // clears the recorded launch error
  Record(error == cudaErrorMemoryAllocation, std::string(what) + ": " + cudaGetErrorString(error));
  return false;
}

bool CallFailures::OkBlas(cublasStatus_t status, const char* what) {
  if (status == CUBLAS_STATUS_SUCCESS) return true;
  (void)cudaGetLastError();
  Record(status == CUBLAS_STATUS_ALLOC_FAILED,
         std::string(what) + ": cuBLAS status " + std::to_string(static_cast<int>(status)));
  return false;
}

void CallFailures::Record(bool out_of_memory, std::string message) {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto [it, inserted] = by_thread_.try_emplace(std::this_thread::get_id());
  if (!inserted) return;
  it->second.out_of_memory = out_of_memory;
  it->second.message = std::move(message);
  count_.fetch_add(1, std::memory_order_release);
}

BackendFailure CallFailures::Take() {
  if (count_.load(std::memory_order_acquire) == 0) return {};
  std::lock_guard<std::mutex> lock(mutex_);
  const auto it = by_thread_.find(std::this_thread::get_id());
  if (it == by_thread_.end()) return {};
  BackendFailure failure = std::move(it->second);
  by_thread_.erase(it);
  count_.fetch_sub(1, std::memory_order_release);
  return failure;
}

}  // namespace deltaserve::kernels::cuda
