// Backend::MoeExperts through cuBLAS's grouped products (cublasGemmGroupedBatchedEx): the slots
// grouped by local expert on the device with x's rows gathered in that order, the experts' row
// counts read back (one host round trip), then one grouped call for every active expert's gate
// and up products, SwiGLU, one for the down products, and the rows scattered back to their slots
// (the device steps: moe_grouped_rows.cu). bf16 weights and products with fp32 accumulation, as
// the grouped kernels, but the gate and up rows are rounded to bf16 before SwiGLU and the down
// rows before they are widened into slot_out (cuBLAS 13.1's grouped products write no fp32 from
// bf16 inputs), where our kernels apply SwiGLU to the fp32 sums and write fp32 slot rows.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <span>

#include "kernels/cuda/call_failures.h"
#include "kernels/ops.h"

namespace deltaserve::kernels::cuda {

// False with the failure recorded in `failures`. scratch: MoeGroupedRowsScratchBytes.
bool RunMoeCublasGrouped(cublasHandle_t blas, cudaStream_t stream, CallFailures& failures, TensorView x,
                         TensorView expert_ids, std::span<const ExpertWeights> experts, int64_t first_expert,
                         void* scratch, TensorView slot_out);

}  // namespace deltaserve::kernels::cuda
