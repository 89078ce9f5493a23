// Creates the backend a user names ("cpu", or "cuda" in builds with the CUDA backend).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "kernels/backend.h"

namespace deltaserve::kernels {

struct BackendChoice {
  std::string device = "cpu";  // cpu | cuda
  int cpu_threads = 0;         // 0: all hardware threads
  int cuda_device = 0;
  int64_t device_memory_limit_bytes = 0;  // {Cpu,Cuda}BackendOptions::memory_limit_bytes
  bool cuda_graphs = true;                // CUDA: CudaBackendOptions::step_graphs
  // CUDA: CudaBackendOptions::skinny_matmul_max_weight_bytes where set (benchmarks).
  std::optional<int64_t> cuda_skinny_matmul_max_weight_bytes = std::nullopt;
  // CUDA: CudaBackendOptions::mla_expanded_window_keys.
  int64_t mla_expanded_window_keys = kMlaExpandedWindowKeysDefault;
};

// The parser of every --device flag: "cpu", "cuda" (GPU 0) or "cuda:N"; nullopt for anything
// else. cpu_threads is left at its default.
std::optional<BackendChoice> ParseBackendChoice(std::string_view device);

// Null with `error` set when the device is unknown, not built in, or not usable here.
std::unique_ptr<Backend> CreateBackend(const BackendChoice& choice, std::string* error);

// True when this build includes the CUDA backend.
bool CudaBackendBuilt();

}  // namespace deltaserve::kernels
