#include "kernels/backend_factory.h"

#include <charconv>
#include <system_error>

#include "kernels/cpu/cpu_backend.h"
#ifdef DELTASERVE_WITH_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif

namespace deltaserve::kernels {

std::optional<BackendChoice> ParseBackendChoice(std::string_view device) {
  if (device == "cpu" || device == "cuda") return BackendChoice{.device = std::string(device)};
  constexpr std::string_view kCudaPrefix = "cuda:";
  if (!device.starts_with(kCudaPrefix)) return std::nullopt;
  const std::string_view index_text = device.substr(kCudaPrefix.size());
  int index = 0;
  const char* end = index_text.data() + index_text.size();
  const auto [parsed_end, error] = std::from_chars(index_text.data(), end, index);
  if (index_text.empty() || error != std::errc() || parsed_end != end || index < 0) {
    return std::nullopt;
  }
  return BackendChoice{.device = "cuda", .cuda_device = index};
}

bool CudaBackendBuilt() {
#ifdef DELTASERVE_WITH_CUDA
  return true;
#else
  return false;
#endif
}

std::unique_ptr<Backend> CreateBackend(const BackendChoice& choice, std::string* error) {
  if (choice.device == "cpu") {
    return std::make_unique<cpu::CpuBackend>(cpu::CpuBackendOptions{
        .num_threads = choice.cpu_threads, .memory_limit_bytes = choice.device_memory_limit_bytes});
  }
  if (choice.device == "cuda") {
#ifdef DELTASERVE_WITH_CUDA
    cuda::CudaBackendOptions options{.device = choice.cuda_device,
                                     .mla_expanded_window_keys = choice.mla_expanded_window_keys,
                                     .memory_limit_bytes = choice.device_memory_limit_bytes,
                                     .step_graphs = choice.cuda_graphs};
    if (choice.cuda_skinny_matmul_max_weight_bytes) {
      options.skinny_matmul_max_weight_bytes = *choice.cuda_skinny_matmul_max_weight_bytes;
    }
    return cuda::CudaBackend::Create(options, error);
#else
    *error = "this build has no CUDA backend (no CUDA toolkit at build time)";
    return nullptr;
#endif
  }
  *error = "unknown device '" + choice.device + "' (cpu or cuda)";
  return nullptr;
}

}  // namespace deltaserve::kernels
