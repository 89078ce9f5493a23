// The device steps around cuBLAS's grouped expert products (moe_cublas_grouped.cc): the slots
// grouped by local expert with x's rows gathered in that order, SwiGLU over the gate and up rows,
// and the down rows scattered back to their slots, widened to fp32.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/launchers.h"
#include "kernels/cuda/moe_grouped.cuh"

namespace deltaserve::kernels::cuda {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kInvalid = static_cast<int>(cudaErrorInvalidValue);
constexpr int kPlanTileRows = 16;  // the plan's tiles are not used here; any size will do
constexpr int kRowThreads = 256;

int64_t PlanTiles(int64_t slots, int64_t num_local) { return MaxTiles(slots, num_local, kPlanTileRows); }

// Block p: row p of the grouped rows, once p is below the placed count.
__global__ void GatherKernel(const float* x, int64_t x_ld, int hidden, int top_k, const int32_t* placed,
                             const int32_t* sorted_slots, bf16* rows) {
  const int64_t p = blockIdx.x;
  if (p >= *placed) return;
  const float* src = x + (sorted_slots[p] / top_k) * x_ld;
  bf16* dst = rows + p * hidden;
  for (int c = threadIdx.x; c < hidden; c += blockDim.x) dst[c] = __float2bfloat16(src[c]);
}

__global__ void SwiGluKernel(bf16* gate, const bf16* up, int64_t cols) {
  int64_t r, c;
  if (!ThisElement(cols, r, c)) return;
  const int64_t i = r * cols + c;
  gate[i] = __float2bfloat16(SiluF(__bfloat162float(gate[i])) * __bfloat162float(up[i]));
}

__global__ void ScatterKernel(const bf16* down, int hidden, const int32_t* sorted_slots, float* slot_out,
                              int64_t slot_ld) {
  const int64_t p = blockIdx.x;
  const bf16* src = down + p * hidden;
  float* dst = slot_out + sorted_slots[p] * slot_ld;
  for (int c = threadIdx.x; c < hidden; c += blockDim.x) dst[c] = __bfloat162float(src[c]);
}

}  // namespace

size_t MoeGroupedRowsScratchBytes(int64_t tokens, int64_t top_k, int64_t num_local, int64_t hidden,
                                  int64_t inner) {
  const int64_t slots = tokens * top_k;
  return PlanBytes(num_local, slots, PlanTiles(slots, num_local)) + AlignScratch(slots * hidden * sizeof(bf16)) +
         2 * AlignScratch(slots * inner * sizeof(bf16)) + AlignScratch(slots * hidden * sizeof(bf16)) +
         AlignScratch(kMoeGroupedRowsOperands * num_local * sizeof(void*));
}

MoeGroupedRows CarveMoeGroupedRows(void* scratch, int64_t tokens, int64_t top_k, int64_t num_local,
                                   int64_t hidden, int64_t inner) {
  const int64_t slots = tokens * top_k;
  const GroupPlan plan = CarvePlan(scratch, num_local, slots, PlanTiles(slots, num_local));
  char* next = static_cast<char*>(scratch) + PlanBytes(num_local, slots, PlanTiles(slots, num_local));
  auto take = [&](size_t bytes) {
    char* at = next;
    next += AlignScratch(bytes);
    return at;
  };
  MoeGroupedRows rows;
  rows.plan = scratch;
  rows.offsets = plan.offsets;
  rows.sorted_slots = plan.sorted_slots;
  rows.x = take(slots * hidden * sizeof(bf16));
  rows.gate = take(slots * inner * sizeof(bf16));
  rows.up = take(slots * inner * sizeof(bf16));
  rows.down = take(slots * hidden * sizeof(bf16));
  rows.operands = reinterpret_cast<const void**>(take(kMoeGroupedRowsOperands * num_local * sizeof(void*)));
  return rows;
}

int LaunchMoeGroupRows(TensorView x, TensorView expert_ids, int64_t first_expert, int64_t num_local,
                       const MoeGroupedRows& rows, Stream stream) {
  const int64_t tokens = x.rows, top_k = expert_ids.cols, slots = tokens * top_k;
  if (x.dtype != DType::kF32 || expert_ids.dtype != DType::kI32 || expert_ids.rows != tokens || top_k < 1 ||
      num_local < 1 || num_local > kMaxLocalExperts || slots > 0x7fffffffLL) {
    return kInvalid;
  }
  if (tokens == 0) return 0;
  auto* s = static_cast<cudaStream_t>(stream);
  const GroupPlan plan = CarvePlan(rows.plan, num_local, slots, PlanTiles(slots, num_local));
  const Routing routing{static_cast<const int32_t*>(expert_ids.data), expert_ids.row_stride, static_cast<int>(top_k),
                        static_cast<int>(first_expert), static_cast<int>(num_local)};
  const int error = LaunchGrouping(routing, slots, kPlanTileRows, plan, s);
  if (error != 0) return error;
  GatherKernel<<<static_cast<unsigned>(slots), kRowThreads, 0, s>>>(
      static_cast<const float*>(x.data), x.row_stride, static_cast<int>(x.cols), static_cast<int>(top_k),
      plan.offsets + num_local, plan.sorted_slots, static_cast<bf16*>(rows.x));
  return static_cast<int>(cudaGetLastError());
}

int LaunchMoeSwiGluRows(const MoeGroupedRows& rows, int64_t count, int64_t inner, Stream stream) {
  if (count == 0) return 0;
  const unsigned blocks = ElementBlocks(count, inner);
  if (blocks == 0) return kInvalid;
  SwiGluKernel<<<blocks, kElementThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      static_cast<bf16*>(rows.gate), static_cast<const bf16*>(rows.up), inner);
  return static_cast<int>(cudaGetLastError());
}

int LaunchMoeScatterGroupedRows(const MoeGroupedRows& rows, int64_t count, TensorView slot_out, Stream stream) {
  if (slot_out.dtype != DType::kF32) return kInvalid;
  if (count == 0) return 0;
  if (!FitsGridX(count)) return kInvalid;
  ScatterKernel<<<static_cast<unsigned>(count), kRowThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      static_cast<const bf16*>(rows.down), static_cast<int>(slot_out.cols), rows.sorted_slots,
      static_cast<float*>(slot_out.data), slot_out.row_stride);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace deltaserve::kernels::cuda
