// Which CUDA failures a backend survives, kept in the per-thread record behind
// Backend::TakeFailure (FailureRecord).
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "kernels/failure_record.h"

namespace deltaserve::kernels::cuda {

// Ends the process naming the call: the CUDA context cannot be used any more.
[[noreturn]] void FatalCudaFailure(const char* what, const char* why);
// FatalCudaFailure unless `error` is cudaSuccess.
void CheckFatal(cudaError_t error, const char* what);

class CallFailures : public FailureRecord {
 public:
  // False (and the failure recorded for the calling thread) when `error` is one; ends the
  // process on an error that leaves the device unusable (a faulted kernel, a lost device).
  bool Ok(cudaError_t error, const char* what);
  bool OkBlas(cublasStatus_t status, const char* what);
};

}  // namespace deltaserve::kernels::cuda
