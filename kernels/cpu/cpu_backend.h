// The CPU backend: fp32 arithmetic over host memory, matrix products through OpenBLAS,
// data-parallel over a thread pool. The embedded default and the reference for other backends.
#pragma once

#include <cstdint>
#include <memory>

#include "kernels/backend.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/failure_record.h"
#include "kernels/memory_budget.h"

namespace deltaserve::kernels::cpu {

struct CpuBackendOptions {
  int num_threads = 0;  // 0: all hardware threads
  // The most bytes this backend allocates at once: sequence states, latent pages and step buffers
  // (the weights it adopts in place are the checkpoint's memory and are not counted); 0: no
  // limit. An allocation past it fails as out of memory (TakeFailure), as on a GPU.
  int64_t memory_limit_bytes = 0;
};

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(const CpuBackendOptions& options = {});

  std::string_view name() const override { return "cpu"; }
  int num_threads() const { return pool_.num_threads(); }
  ThreadPool& pool() { return pool_; }

  // A failed allocation (past the memory limit, or host memory exhausted) comes back empty and is
  // held as the calling thread's failure; that thread's operations then do nothing until it
  // takes the failure, as on the CUDA backend.
  BackendFailure TakeFailure() override;
  MemoryUse memory_use() const override { return budget_.Use(); }
  Tensor Allocate(int64_t rows, int64_t cols, DType dtype) override;
  // With leave_step_room, refused (out of memory) where it would leave less under the memory
  // limit than the steps' buffers have held at once (StepRoom).
  Tensor AllocateState(int64_t rows, int64_t cols, DType dtype, bool leave_step_room = true) override;
  void Free(void* data) override;
  void Zero(TensorView dst) override;
  void Upload(const void* host, TensorView dst) override;
  void Download(TensorView src, void* host) override;
  void Copy(TensorView src, TensorView dst) override;
  void GatherRows(TensorView src, std::span<const int64_t> rows, TensorView dst) override;
  TensorView AdoptWeight(TensorView host_weight) override { return host_weight; }

  void Embed(std::span<const int32_t> ids, TensorView table, TensorView out) override;
  void MatMul(TensorView x, TensorView w, TensorView y) override;
  void Add(TensorView acc, TensorView x) override;
  void RmsNorm(TensorView x, TensorView weight, float eps, TensorView out) override;
  void SwiGlu(TensorView gate, TensorView up, TensorView out) override;
  void CausalConvSilu(TensorView x, TensorView weight, std::span<const ConvSequence> seqs,
                      TensorView out) override;
  void KdaAttention(const KdaInputs& in, std::span<const KdaSequence> seqs,
                    TensorView out) override;
  void GatedRmsNorm(TensorView x, TensorView gate, TensorView weight, int64_t head_dim, float eps,
                    TensorView out) override;
  void MlaAttention(const MlaParams& params, TensorView q, TensorView latent, TensorView kv_b,
                    std::span<const MlaSequence> seqs, TensorView out) override;
  void MoeRoute(TensorView router_logits, TensorView correction_bias, const MoeRouting& routing,
                TensorView expert_ids, TensorView weights) override;
  void MoeExperts(TensorView x, TensorView expert_ids, std::span<const ExpertWeights> experts,
                  int64_t first_expert, TensorView slot_out) override;
  void MoeCombine(TensorView slot_out, TensorView weights, TensorView out) override;

 private:
  Tensor AllocateKind(int64_t rows, int64_t cols, DType dtype, bool state, bool leave_step_room);
  // Whether the calling thread holds a failure, so its operations do nothing.
  bool Skipped() const { return failures_.held(); }

  ThreadPool pool_;
  FailureRecord failures_;
  MemoryBudget budget_;
};

}  // namespace deltaserve::kernels::cpu
