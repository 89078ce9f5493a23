#include "kernels/cuda/call_failures.h"

#include <cstdio>
#include <cstdlib>
#include <string>

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

}  // namespace deltaserve::kernels::cuda
