#include "kernels/cuda/moe_cublas_grouped.h"

#include <vector>

#include "kernels/cuda/launchers.h"

namespace deltaserve::kernels::cuda {

bool RunMoeCublasGrouped(cublasHandle_t blas, cudaStream_t stream, CallFailures& failures, TensorView x,
                         TensorView expert_ids, std::span<const ExpertWeights> experts, int64_t first_expert,
                         void* scratch, TensorView slot_out) {
  const int64_t tokens = x.rows, hidden = x.cols, top_k = expert_ids.cols;
  if (tokens == 0) return true;
  const int64_t num_local = static_cast<int64_t>(experts.size()), inner = experts[0].gate.rows;
  const MoeGroupedRows rows = CarveMoeGroupedRows(scratch, tokens, top_k, num_local, hidden, inner);
  if (!failures.Ok(static_cast<cudaError_t>(LaunchMoeGroupRows(x, expert_ids, first_expert, num_local, rows, stream)),
                   "moe group rows")) {
    return false;
  }
  std::vector<int32_t> offsets(static_cast<size_t>(num_local + 1));
  if (!failures.Ok(cudaMemcpyAsync(offsets.data(), rows.offsets, offsets.size() * sizeof(int32_t),
                                   cudaMemcpyDeviceToHost, stream),
                   "moe expert row counts") ||
      !failures.Ok(cudaStreamSynchronize(stream), "moe expert row counts")) {
    return false;
  }
  const int64_t count = offsets.back();
  if (count == 0) return true;

  // One group per active expert: its gate and up products (two problems of one shape), then its
  // down product. Row-major [m, k] · [n, k]ᵀ is cuBLAS's column-major W·Xᵀ with W transposed.
  auto* x_rows = static_cast<const uint16_t*>(rows.x);
  auto* gate_rows = static_cast<uint16_t*>(rows.gate);
  auto* up_rows = static_cast<uint16_t*>(rows.up);
  std::vector<int> n;  // each group's rows
  std::vector<const void*> a_gate_up, b_gate_up, a_down, b_down;
  std::vector<void*> c_gate_up, c_down;
  for (int64_t e = 0; e < num_local; ++e) {
    const int64_t begin = offsets[e], m = offsets[e + 1] - begin;
    if (m == 0) continue;
    n.push_back(static_cast<int>(m));
    a_gate_up.insert(a_gate_up.end(), {experts[e].gate.data, experts[e].up.data});
    b_gate_up.insert(b_gate_up.end(), 2, x_rows + begin * hidden);
    c_gate_up.insert(c_gate_up.end(), {gate_rows + begin * inner, up_rows + begin * inner});
    a_down.push_back(experts[e].down.data);
    b_down.push_back(gate_rows + begin * inner);
    c_down.push_back(static_cast<uint16_t*>(rows.down) + begin * hidden);
  }
  const int groups = static_cast<int>(n.size());
  const std::vector<cublasOperation_t> trans_a(groups, CUBLAS_OP_T), trans_b(groups, CUBLAS_OP_N);
  const std::vector<int> hidden_dim(groups, static_cast<int>(hidden)), inner_dim(groups, static_cast<int>(inner));
  const std::vector<int> two(groups, 2), one(groups, 1);
  const std::vector<float> alpha(groups, 1.0f), beta(groups, 0.0f);

  // The operand arrays: cuBLAS reads them from device memory.
  std::vector<const void*> operands;
  for (const auto* list : {&a_gate_up, &b_gate_up}) operands.insert(operands.end(), list->begin(), list->end());
  operands.insert(operands.end(), c_gate_up.begin(), c_gate_up.end());
  operands.insert(operands.end(), a_down.begin(), a_down.end());
  operands.insert(operands.end(), b_down.begin(), b_down.end());
  operands.insert(operands.end(), c_down.begin(), c_down.end());
  if (!failures.Ok(cudaMemcpyAsync(rows.operands, operands.data(), operands.size() * sizeof(void*),
                                   cudaMemcpyHostToDevice, stream),
                   "moe grouped operands")) {
    return false;
  }
  const void* const* a_gu = rows.operands;
  const void* const* b_gu = a_gu + 2 * groups;
  void* const* c_gu = const_cast<void* const*>(b_gu + 2 * groups);
  const void* const* a_d = b_gu + 4 * groups;
  const void* const* b_d = a_d + groups;
  void* const* c_d = const_cast<void* const*>(b_d + groups);

  if (!failures.OkBlas(cublasGemmGroupedBatchedEx(blas, trans_a.data(), trans_b.data(), inner_dim.data(), n.data(),
                                                  hidden_dim.data(), alpha.data(), a_gu, CUDA_R_16BF,
                                                  hidden_dim.data(), b_gu, CUDA_R_16BF, hidden_dim.data(),
                                                  beta.data(), c_gu, CUDA_R_16BF, inner_dim.data(), groups,
                                                  two.data(), CUBLAS_COMPUTE_32F),
                       "moe grouped gate/up products") ||
      !failures.Ok(static_cast<cudaError_t>(LaunchMoeSwiGluRows(rows, count, inner, stream)), "moe swiglu rows") ||
      !failures.OkBlas(cublasGemmGroupedBatchedEx(blas, trans_a.data(), trans_b.data(), hidden_dim.data(), n.data(),
                                                  inner_dim.data(), alpha.data(), a_d, CUDA_R_16BF,
                                                  inner_dim.data(), b_d, CUDA_R_16BF, inner_dim.data(),
                                                  beta.data(), c_d, CUDA_R_16BF, hidden_dim.data(), groups,
                                                  one.data(), CUBLAS_COMPUTE_32F),
                       "moe grouped down products")) {
    return false;
  }
  return failures.Ok(static_cast<cudaError_t>(LaunchMoeScatterGroupedRows(rows, count, slot_out, stream)),
                     "moe scatter rows");
}

}  // namespace deltaserve::kernels::cuda
