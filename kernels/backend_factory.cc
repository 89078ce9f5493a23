#include "kernels/backend_factory.h"

#include "kernels/cpu/cpu_backend.h"
#ifdef DELTASERVE_WITH_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif

namespace deltaserve::kernels {

bool CudaBackendBuilt() {
#ifdef DELTASERVE_WITH_CUDA
  return true;
#else
  return false;
#endif
}

std::unique_ptr<Backend> CreateBackend(const BackendChoice& choice, std::string* error) {
  if (choice.device == "cpu") {
    return std::make_unique<cpu::CpuBackend>(cpu::CpuBackendOptions{.num_threads = choice.cpu_threads});
  }
  if (choice.device == "cuda") {
#ifdef DELTASERVE_WITH_CUDA
    return cuda::CudaBackend::Create({.device = choice.cuda_device}, error);
#else
    *error = "this build has no CUDA backend (no CUDA toolkit at build time)";
    return nullptr;
#endif
  }
  *error = "unknown device '" + choice.device + "' (cpu or cuda)";
  return nullptr;
}

}  // namespace deltaserve::kernels
