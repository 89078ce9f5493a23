// Creates the backend a user names ("cpu", or "cuda" in builds with the CUDA backend).
#pragma once

#include <memory>
#include <string>

#include "kernels/backend.h"

namespace deltaserve::kernels {

struct BackendChoice {
  std::string device = "cpu";  // cpu | cuda
  int cpu_threads = 0;         // 0: all hardware threads
  int cuda_device = 0;
};

// Null with `error` set when the device is unknown, not built in, or not usable here.
std::unique_ptr<Backend> CreateBackend(const BackendChoice& choice, std::string* error);

// True when this build includes the CUDA backend.
bool CudaBackendBuilt();

}  // namespace deltaserve::kernels
