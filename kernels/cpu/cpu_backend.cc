#include "kernels/cpu/cpu_backend.h"

#include <cstdlib>
#include <cstring>
#include <string>

#include "base/check.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/kda_chunk.h"
#include "kernels/cpu/kda_recurrent.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/mla_attention.h"
#include "kernels/cpu/moe.h"
#include "kernels/cpu/short_conv.h"

namespace deltaserve::kernels::cpu {
namespace {

constexpr size_t kAlignment = 64;

size_t RowBytes(TensorView view) { return static_cast<size_t>(view.cols) * DTypeSize(view.dtype); }

}  // namespace

CpuBackend::CpuBackend(const CpuBackendOptions& options)
    : pool_(options.num_threads > 0 ? options.num_threads : HardwareThreads()),
      budget_(options.memory_limit_bytes, failures_) {
  ConfigureBlasThreads();
}

BackendFailure CpuBackend::TakeFailure() {
  BackendFailure failure = failures_.Take();
  budget_.Checked(!failure.failed());
  return failure;
}

Tensor CpuBackend::Allocate(int64_t rows, int64_t cols, DType dtype) {
  return AllocateKind(rows, cols, dtype, /*state=*/false, /*leave_step_room=*/false);
}

Tensor CpuBackend::AllocateState(int64_t rows, int64_t cols, DType dtype, bool leave_step_room) {
  return AllocateKind(rows, cols, dtype, /*state=*/true, leave_step_room);
}

Tensor CpuBackend::AllocateKind(int64_t rows, int64_t cols, DType dtype, bool state, bool leave_step_room) {
  DS_CHECK(rows >= 0 && cols >= 0);
  size_t bytes = static_cast<size_t>(rows * cols) * DTypeSize(dtype);
  bytes = bytes == 0 ? kAlignment : (bytes + kAlignment - 1) / kAlignment * kAlignment;
  if (Skipped() || !budget_.Admit(bytes, state, leave_step_room, "aligned_alloc")) {
    return Tensor(this, nullptr, dtype, rows, cols);
  }
  void* data = std::aligned_alloc(kAlignment, bytes);
  if (data == nullptr) {
    failures_.Record(true, "aligned_alloc: host memory exhausted allocating " + std::to_string(bytes) + " bytes");
  }
  budget_.Settle(data, bytes, state);
  return Tensor(this, data, dtype, rows, cols);
}

void CpuBackend::Free(void* data) {
  budget_.Release(data);
  std::free(data);
}

void CpuBackend::Zero(TensorView dst) {
  if (Skipped()) return;
  for (int64_t r = 0; r < dst.rows; ++r) std::memset(dst.row<char>(r), 0, RowBytes(dst));
}

void CpuBackend::Upload(const void* host, TensorView dst) {
  if (Skipped()) return;
  const auto* src = static_cast<const char*>(host);
  for (int64_t r = 0; r < dst.rows; ++r) std::memcpy(dst.row<char>(r), src + r * RowBytes(dst), RowBytes(dst));
}

void CpuBackend::Download(TensorView src, void* host) {
  if (Skipped()) return;
  auto* dst = static_cast<char*>(host);
  for (int64_t r = 0; r < src.rows; ++r) std::memcpy(dst + r * RowBytes(src), src.row<char>(r), RowBytes(src));
}

void CpuBackend::Copy(TensorView src, TensorView dst) {
  if (Skipped()) return;
  DS_CHECK(src.rows == dst.rows && src.cols == dst.cols && src.dtype == dst.dtype);
  for (int64_t r = 0; r < src.rows; ++r) std::memmove(dst.row<char>(r), src.row<char>(r), RowBytes(src));
}

void CpuBackend::GatherRows(TensorView src, std::span<const int64_t> rows, TensorView dst) {
  if (Skipped()) return;
  DS_CHECK(static_cast<int64_t>(rows.size()) == dst.rows && src.cols == dst.cols &&
           src.dtype == dst.dtype);
  for (size_t i = 0; i < rows.size(); ++i) {
    DS_CHECK(rows[i] >= 0 && rows[i] < src.rows);
    std::memcpy(dst.row<char>(static_cast<int64_t>(i)), src.row<char>(rows[i]), RowBytes(src));
  }
}

void CpuBackend::Embed(std::span<const int32_t> ids, TensorView table, TensorView out) {
  if (Skipped()) return;
  cpu::Embed(pool_, ids, table, out);
}

void CpuBackend::MatMul(TensorView x, TensorView w, TensorView y) {
  if (Skipped()) return;
  cpu::MatMul(pool_, x, w, y);
}

void CpuBackend::Add(TensorView acc, TensorView x) {
  if (Skipped()) return;
  cpu::Add(pool_, acc, x);
}

void CpuBackend::RmsNorm(TensorView x, TensorView weight, float eps, TensorView out) {
  if (Skipped()) return;
  cpu::RmsNorm(pool_, x, weight, eps, out);
}

void CpuBackend::SwiGlu(TensorView gate, TensorView up, TensorView out) {
  if (Skipped()) return;
  cpu::SwiGlu(pool_, gate, up, out);
}

void CpuBackend::CausalConvSilu(TensorView x, TensorView weight,
                                std::span<const ConvSequence> seqs, TensorView out) {
  if (Skipped()) return;
  cpu::CausalConvSilu(pool_, x, weight, seqs, out);
}

void CpuBackend::KdaAttention(const KdaInputs& in, std::span<const KdaSequence> seqs,
                              TensorView out) {
  if (Skipped()) return;
  const KdaPreparer prep(in);
  const int64_t heads = in.num_heads;
  const int64_t state_size = in.head_dim * in.head_dim;
  pool_.ParallelFor(static_cast<int64_t>(seqs.size()) * heads, [&](int64_t task) {
    const KdaSequence& seq = seqs[task / heads];
    const int64_t h = task % heads;
    float* state = seq.state + h * state_size;
    if (seq.algorithm == KdaAlgorithm::kChunked) {
      KdaChunkHead(prep, seq.rows, h, state, out);
    } else {
      KdaRecurrentHead(prep, seq.rows, h, state, out);
    }
  });
}

void CpuBackend::GatedRmsNorm(TensorView x, TensorView gate, TensorView weight, int64_t head_dim,
                              float eps, TensorView out) {
  if (Skipped()) return;
  cpu::GatedRmsNorm(pool_, x, gate, weight, head_dim, eps, out);
}

void CpuBackend::MlaAttention(const MlaParams& params, TensorView q, TensorView latent,
                              TensorView kv_b, std::span<const MlaSequence> seqs, TensorView out) {
  if (Skipped()) return;
  cpu::MlaAttention(pool_, params, q, latent, kv_b, seqs, out,
                    [this](int64_t rows, int64_t cols) { return Allocate(rows, cols, DType::kF32); });
}

void CpuBackend::MoeRoute(TensorView router_logits, TensorView correction_bias,
                          const MoeRouting& routing, TensorView expert_ids, TensorView weights) {
  if (Skipped()) return;
  cpu::MoeRoute(pool_, router_logits, correction_bias, routing, expert_ids, weights);
}

void CpuBackend::MoeExperts(TensorView x, TensorView expert_ids,
                            std::span<const ExpertWeights> experts, int64_t first_expert,
                            TensorView slot_out) {
  if (Skipped()) return;
  cpu::MoeExperts(pool_, x, expert_ids, experts, first_expert, slot_out);
}

void CpuBackend::MoeCombine(TensorView slot_out, TensorView weights, TensorView out) {
  if (Skipped()) return;
  cpu::MoeCombine(pool_, slot_out, weights, out);
}

}  // namespace deltaserve::kernels::cpu
