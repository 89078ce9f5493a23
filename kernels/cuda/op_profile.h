// Per-operation timing of a CudaBackend, for finding where a step's time goes without a
// profiler: for every outermost backend call, the host time spent issuing it and the GPU time
// between CUDA events recorded before and after its work, plus the GPU time between calls
// (the device waiting for the host). Enabled with DELTASERVE_CUDA_OP_PROFILE=1; the table is
// printed to stderr when the backend is destroyed. The events cost a few microseconds per call.
#pragma once

#include <cuda_runtime.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace deltaserve::kernels::cuda {

class OpProfile {
 public:
  explicit OpProfile(cudaStream_t stream) : stream_(stream) {}
  ~OpProfile();
  OpProfile(const OpProfile&) = delete;
  OpProfile& operator=(const OpProfile&) = delete;

  // Brackets one outermost call; nested calls (an operation built from others) are not counted
  // apart.
  void Begin(const char* op);
  void End();
  // Reads back every pending event pair (synchronises the stream's recorded events).
  void Collect();
  std::string Table();

 private:
  struct Totals {
    int64_t calls = 0;
    double host_ms = 0;
    double gpu_ms = 0;
  };
  struct Pending {
    const char* op;
    cudaEvent_t start, end;
  };
  cudaEvent_t TakeEvent();

  cudaStream_t stream_;
  int depth_ = 0;
  const char* current_ = nullptr;
  cudaEvent_t current_start_ = nullptr;
  std::chrono::steady_clock::time_point host_start_;
  std::vector<Pending> pending_;
  std::vector<cudaEvent_t> free_events_;
  cudaEvent_t last_end_ = nullptr;  // of the previous collected call, for the gaps
  double gap_ms_ = 0;
  std::map<std::string, Totals> totals_;
};

// RAII bracket; a null profile does nothing.
class OpScope {
 public:
  OpScope(OpProfile* profile, const char* op) : profile_(profile) {
    if (profile_ != nullptr) profile_->Begin(op);
  }
  ~OpScope() {
    if (profile_ != nullptr) profile_->End();
  }
  OpScope(const OpScope&) = delete;
  OpScope& operator=(const OpScope&) = delete;

 private:
  OpProfile* profile_;
};

}  // namespace deltaserve::kernels::cuda
