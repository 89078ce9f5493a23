// Expert products for a few slots (decode: one token per sequence, top-k slots each), where
// reading each routed expert's weights once is the whole cost and grouping by expert would leave
// most of the GPU idle (one token gives 8 experts, too few tiles). One warp per output column
// of one slot: gate and up rows dotted with the token's fp32 row, SwiGLU, fp32 hidden row; then
// two output columns per warp of the down product. For a whole MoE FFN (LaunchMoeDecodeFfn) the
// shared expert joins as each token's first slot and the down product sums a token's slots into
// the layer's output itself. No tensor cores, no rounding of activations: every weight element
// is loaded once with 16-byte loads and multiplied in fp32.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/launchers.h"

namespace deltaserve::kernels::cuda {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kLaneElems = 8;                 // one 16-byte load of bf16 per lane
constexpr int kWarpElems = 32 * kLaneElems;   // reduction elements per warp step
// Output columns per warp in the down product. Measured on an H200 (cuda_moe_bench, the 48B
// shape): 2 against 1, 0.0375 → 0.0362 ms at 1 token and 0.1247 → 0.1222 at 4; 4 in between.
constexpr int kDownColumnsPerWarp = 2;

// acc += Σ_i w[i]·x[i] over the 8 bf16 weights in `raw` and 8 fp32 activations at x (16-byte
// aligned).
__device__ __forceinline__ void Accumulate8(uint4 raw, const float* x, float& acc) {
  const float4 a = *reinterpret_cast<const float4*>(x);
  const float4 b = *reinterpret_cast<const float4*>(x + 4);
  const auto* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
  const float2 w0 = __bfloat1622float2(h[0]), w1 = __bfloat1622float2(h[1]);
  const float2 w2 = __bfloat1622float2(h[2]), w3 = __bfloat1622float2(h[3]);
  acc = fmaf(w0.x, a.x, acc), acc = fmaf(w0.y, a.y, acc), acc = fmaf(w1.x, a.z, acc), acc = fmaf(w1.y, a.w, acc);
  acc = fmaf(w2.x, b.x, acc), acc = fmaf(w2.y, b.y, acc), acc = fmaf(w3.x, b.z, acc), acc = fmaf(w3.y, b.w, acc);
}

// Asks a weight row into L2 as a warp's lanes will load it (lane l: elements 8l, 8l + 256, ...),
// before the wait for the kernels ahead (no kernel writes weights).
__device__ __forceinline__ void PrefetchWarpRow(const bf16* row, int length, int lane) {
  for (int k = lane * kLaneElems; k < length; k += kWarpElems) {
    asm volatile("prefetch.global.L2 [%0];" ::"l"(row + k));
  }
}

// Which expert each slot goes to: expert_ids [tokens, top_k], local experts [first, first + num).
// With a shared expert (shared_slots 1) each token's slots start with it, the expert tables'
// entry num_local, and its routed slots follow.
struct Routing {
  const int32_t* ids;
  int64_t ids_ld;
  int top_k, first_expert, num_local;
  int shared_slots;  // 0 or 1

  __host__ __device__ int per_token() const { return shared_slots + top_k; }
  // The local expert of token t's slot j (-1: on another shard). Past L1 (ld.global.cg): the
  // down kernels read the ids before they wait for the kernel before them.
  __device__ int ExpertOf(int t, int j) const {
    if (j < shared_slots) return num_local;
    const int e = __ldcg(ids + t * ids_ld + j - shared_slots) - first_expert;
    return e >= 0 && e < num_local ? e : -1;
  }
};

// A warp's work: output column `column` of slot `slot` (of token `token`), whose local expert is
// `expert`.
struct WarpTask {
  int slot, token, column, expert;
};

// This warp's task in a grid of (columns / (kWarps × cols_per_warp) rounded up, slots): its first
// column; false where it has none (past the columns, or the slot's expert is on another shard).
__device__ __forceinline__ bool TakeWarpTask(const Routing& r, int columns, int cols_per_warp, WarpTask& task) {
  task.slot = blockIdx.y;
  task.token = task.slot / r.per_token();
  task.column = (blockIdx.x * kWarps + threadIdx.x / 32) * cols_per_warp;
  task.expert = r.ExpertOf(task.token, task.slot % r.per_token());
  return task.expert >= 0 && task.column < columns;
}

struct GateUpArgs {
  const float* x;
  int64_t x_ld;
  Routing routing;
  const bf16* const* gate;
  const bf16* const* up;
  int inner, hidden;
  float* out;  // [slots, inner]
};

// hidden row of each slot = silu(x·gateᵀ) ⊙ (x·upᵀ), one column per warp.
__global__ void __launch_bounds__(kThreads) MoeDecodeGateUpKernel(GateUpArgs a) {
  // The shared expert's slots need no routing: their weight rows are asked into L2 before the
  // wait for the kernels ahead (the routing).
  const Routing& r = a.routing;
  if (static_cast<int>(blockIdx.y) % r.per_token() < r.shared_slots) {
    const int64_t column = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
    if (column < a.inner) {
      PrefetchWarpRow(a.gate[r.num_local] + column * a.hidden, a.hidden, threadIdx.x % 32);
      PrefetchWarpRow(a.up[r.num_local] + column * a.hidden, a.hidden, threadIdx.x % 32);
    }
  }
  FollowPriorKernels();
  WarpTask task;
  if (!TakeWarpTask(a.routing, a.inner, 1, task)) return;
  const int lane = threadIdx.x % 32;
  const float* x = a.x + task.token * a.x_ld;
  const bf16* g = a.gate[task.expert] + static_cast<int64_t>(task.column) * a.hidden;
  const bf16* u = a.up[task.expert] + static_cast<int64_t>(task.column) * a.hidden;
  float gate = 0.0f, up = 0.0f;
#pragma unroll 4
  for (int k = lane * kLaneElems; k < a.hidden; k += kWarpElems) {
    const uint4 graw = __ldg(reinterpret_cast<const uint4*>(g + k));
    const uint4 uraw = __ldg(reinterpret_cast<const uint4*>(u + k));
    Accumulate8(graw, x + k, gate);
    Accumulate8(uraw, x + k, up);
  }
  gate = WarpSum(gate);
  up = WarpSum(up);
  if (lane == 0) a.out[static_cast<int64_t>(task.slot) * a.inner + task.column] = SiluF(gate) * up;
}

// acc[c] += this lane's share of the hidden row h · down row w[c] (16-byte loads of every row in
// flight together; the warp's lanes cover the row).
template <int kCols>
__device__ __forceinline__ void DotDownRows(const bf16* const (&w)[kCols], const float* h, int inner, int lane,
                                            float (&acc)[kCols], int first_slice = 0) {
#pragma unroll 4
  for (int k = lane * kLaneElems + first_slice * kWarpElems; k < inner; k += kWarpElems) {
    uint4 raw[kCols];
#pragma unroll
    for (int c = 0; c < kCols; ++c) raw[c] = __ldg(reinterpret_cast<const uint4*>(w[c] + k));
#pragma unroll
    for (int c = 0; c < kCols; ++c) Accumulate8(raw[c], h + k, acc[c]);
  }
}

struct DownArgs {
  const float* hidden_rows;  // [slots, inner]
  Routing routing;
  const bf16* const* down;
  int inner, hidden;
  float* slot_out;
  int64_t slot_ld;
};

// slot_out row of each slot = hidden row · downᵀ, kCols columns per warp (its rows are short:
// more than one keeps more loads in flight per warp and halves the blocks). Launched as
// programmatic it may start while the gate/up kernel still runs: it asks for the weight rows of
// the expert the ids name meanwhile (a hint: the routing may still be running too), then waits
// and reads them again.
template <int kCols>
__global__ void __launch_bounds__(kThreads) MoeDecodeDownKernel(DownArgs a) {
  WarpTask task;
  const int lane = threadIdx.x % 32;
  if (TakeWarpTask(a.routing, a.hidden, kCols, task)) {
    for (int c = 0; c < kCols && task.column + c < a.hidden; ++c) {
      PrefetchWarpRow(a.down[task.expert] + static_cast<int64_t>(task.column + c) * a.inner, a.inner, lane);
    }
  }
  FollowPriorKernels();
  if (!TakeWarpTask(a.routing, a.hidden, kCols, task)) return;
  const bf16* w[kCols];
#pragma unroll
  for (int c = 0; c < kCols; ++c) {
    const int column = task.column + c < a.hidden ? task.column + c : task.column;
    w[c] = a.down[task.expert] + static_cast<int64_t>(column) * a.inner;
  }
  float acc[kCols] = {};
  DotDownRows(w, a.hidden_rows + static_cast<int64_t>(task.slot) * a.inner, a.inner, lane, acc);
#pragma unroll
  for (int c = 0; c < kCols; ++c) {
    acc[c] = WarpSum(acc[c]);
    if (lane == 0 && task.column + c < a.hidden) a.slot_out[task.slot * a.slot_ld + task.column + c] = acc[c];
  }
}

struct DownCombineArgs {
  const float* hidden_rows;  // [tokens × slots per token, inner]
  Routing routing;
  const bf16* const* down;
  const float* weights;  // [tokens, top_k]
  int64_t weights_ld;
  int inner, hidden;
  float* out;
  int64_t out_ld;
};

constexpr int kCombineColumns = 2;  // output columns per block of the down-and-combine kernel

// Slices of a down row (8 bf16 a lane, 256 a warp) a warp loads into registers before the wait for
// the gate/up kernel; the rest it asks into L2. Measured on an H200 (cuda_moe_bench, the 48B
// shape, two passes): 0 / 2 / 4 slices 0.0472 / 0.0468 / 0.0467 ms at 1 token and 0.0807 /
// 0.0787 / 0.0789-0.0794 at 2; 2 keeps the kernel at 46 registers, 4 takes 56 and spills.
constexpr int kDownEarlySlices = 2;

// out[t, c] = the shared expert's hidden row · down row c, then + weights[t, s] · (slot s's hidden
// row · its expert's down row c) for s = 0, 1, ... (products and sums rounded separately, as
// MoeCombine). A block per kCombineColumns columns of a token, a warp per slot (the shared
// expert's first; a row of each column, all loads in flight at once, as in MoeDecodeDownKernel),
// the sums in shared memory.
// Launched as programmatic it loads the first kDownEarlySlices of its weight rows into registers,
// and asks for the rest into L2, before it waits, for the expert the ids name then; after the
// wait it reads the ids again and loads the rows again where they changed (the routing may not
// have finished when this kernel starts).
__global__ void __launch_bounds__(32 * kMoeDecodeFfnMaxSlots) MoeDecodeDownCombineKernel(DownCombineArgs a) {
  constexpr int kEarly = kDownEarlySlices;
  __shared__ float dots[kMoeDecodeFfnMaxSlots][kCombineColumns];
  const Routing& r = a.routing;
  const int lane = threadIdx.x % 32, slot = threadIdx.x / 32, token = blockIdx.y, slots = r.per_token();
  const int column = blockIdx.x * kCombineColumns;
  const auto row_of = [&](int expert, int c) {
    return a.down[expert] + static_cast<int64_t>(column + c < a.hidden ? column + c : column) * a.inner;
  };
  int expert = r.ExpertOf(token, slot);
  uint4 raw[kEarly][kCombineColumns];
  if (expert >= 0) {
#pragma unroll
    for (int i = 0; i < kEarly; ++i) {
      const int k = lane * kLaneElems + i * kWarpElems;
#pragma unroll
      for (int c = 0; c < kCombineColumns; ++c) {
        raw[i][c] = k < a.inner ? __ldg(reinterpret_cast<const uint4*>(row_of(expert, c) + k)) : uint4{};
      }
    }
    for (int c = 0; c < kCombineColumns && column + c < a.hidden; ++c) {
      if (a.inner > kEarly * kWarpElems) {
        PrefetchWarpRow(row_of(expert, c) + kEarly * kWarpElems, a.inner - kEarly * kWarpElems, lane);
      }
    }
  }
  FollowPriorKernels();
  const int settled = r.ExpertOf(token, slot);
  const bool loaded = settled == expert;
  expert = settled;
  float acc[kCombineColumns] = {};
  if (expert >= 0) {
    const float* h = a.hidden_rows + static_cast<int64_t>(token * slots + slot) * a.inner;
    if (loaded) {  // the same order of sums as DotDownRows
#pragma unroll
      for (int i = 0; i < kEarly; ++i) {
        const int k = lane * kLaneElems + i * kWarpElems;
        if (k >= a.inner) break;
#pragma unroll
        for (int c = 0; c < kCombineColumns; ++c) Accumulate8(raw[i][c], h + k, acc[c]);
      }
    }
    const bf16* w[kCombineColumns];
#pragma unroll
    for (int c = 0; c < kCombineColumns; ++c) w[c] = row_of(expert, c);
    DotDownRows(w, h, a.inner, lane, acc, loaded ? kEarly : 0);
  }
#pragma unroll
  for (int c = 0; c < kCombineColumns; ++c) {
    acc[c] = WarpSum(acc[c]);
    if (lane == 0) dots[slot][c] = acc[c];
  }
  __syncthreads();
  const int c = threadIdx.x;
  if (c >= kCombineColumns || column + c >= a.hidden) return;
  const float* weights = a.weights + token * a.weights_ld;
  float sum = 0.0f;
  for (int j = 0; j < slots; ++j) {
    const int routed = j - r.shared_slots;  // the slot's index among the routed ones
    sum = routed < 0 ? dots[j][c] : __fadd_rn(sum, __fmul_rn(weights[routed], dots[j][c]));
  }
  a.out[token * a.out_ld + column + c] = sum;
}

// Every slot's hidden row (gate/up products, SwiGLU) into hidden_rows.
int LaunchGateUp(TensorView x, const Routing& routing, const MoeExpertTable& experts, int64_t slots,
                 float* hidden_rows, cudaStream_t stream) {
  const GateUpArgs gate_up{static_cast<const float*>(x.data), x.row_stride, routing,
                           reinterpret_cast<const bf16* const*>(experts.gate),
                           reinterpret_cast<const bf16* const*>(experts.up), static_cast<int>(experts.inner),
                           static_cast<int>(x.cols), hidden_rows};
  const dim3 grid(static_cast<unsigned>((experts.inner + kWarps - 1) / kWarps), static_cast<unsigned>(slots));
  return LaunchAfterPrior(MoeDecodeGateUpKernel, grid, dim3(kThreads), 0, stream, gate_up);
}

Routing RoutingOf(TensorView expert_ids, const MoeExpertTable& experts, bool with_shared) {
  return {static_cast<const int32_t*>(expert_ids.data), expert_ids.row_stride, static_cast<int>(expert_ids.cols),
          static_cast<int>(experts.first_expert), static_cast<int>(experts.num_local), with_shared ? 1 : 0};
}

}  // namespace

bool MoeDecodeSupports(TensorView x, int64_t slots) {
  return slots <= 65535 && x.dtype == DType::kF32 && x.row_stride % 4 == 0 && IsAligned(x.data, 16);
}

size_t MoeDecodeScratchBytes(int64_t slots, int64_t inner) {
  return static_cast<size_t>(slots * inner) * sizeof(float);
}

int LaunchMoeDecodeExperts(TensorView x, TensorView expert_ids, const MoeExpertTable& experts,
                           void* scratch, TensorView slot_out, Stream stream, bool programmatic) {
  const int64_t tokens = x.rows, hidden = x.cols, top_k = expert_ids.cols, inner = experts.inner;
  const int64_t slots = tokens * top_k;
  if (!MoeDecodeSupports(x, slots) || hidden % 8 != 0 || inner % 8 != 0) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (slots == 0) return 0;
  auto* s = static_cast<cudaStream_t>(stream);
  auto* hidden_rows = static_cast<float*>(scratch);
  const Routing routing = RoutingOf(expert_ids, experts, false);
  const int error = LaunchGateUp(x, routing, experts, slots, hidden_rows, s);
  if (error != 0) return error;
  const DownArgs down{hidden_rows, routing, reinterpret_cast<const bf16* const*>(experts.down), static_cast<int>(inner),
                      static_cast<int>(hidden), static_cast<float*>(slot_out.data), slot_out.row_stride};
  constexpr int kDownColumnsPerBlock = kWarps * kDownColumnsPerWarp;
  const auto column_blocks = static_cast<unsigned>((hidden + kDownColumnsPerBlock - 1) / kDownColumnsPerBlock);
  return LaunchMaybeAfterPrior(programmatic, MoeDecodeDownKernel<kDownColumnsPerWarp>,
                               dim3(column_blocks, static_cast<unsigned>(slots)), dim3(kThreads), 0, s, down);
}

int LaunchMoeDecodeFfn(TensorView x, TensorView expert_ids, TensorView weights, const MoeExpertTable& experts,
                       bool with_shared, void* scratch, TensorView out, Stream stream, bool programmatic) {
  const int64_t tokens = x.rows, hidden = x.cols, top_k = expert_ids.cols, inner = experts.inner;
  const int64_t per_token = top_k + (with_shared ? 1 : 0);
  const auto f32_rows = [&](const TensorView& v, int64_t cols) {
    return v.dtype == DType::kF32 && v.rows == tokens && v.cols == cols;
  };
  if (!MoeDecodeSupports(x, tokens * per_token) || hidden % 8 != 0 || inner % 8 != 0 ||
      per_token > kMoeDecodeFfnMaxSlots || expert_ids.dtype != DType::kI32 || expert_ids.rows != tokens ||
      !f32_rows(weights, top_k) || !f32_rows(out, hidden)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (tokens == 0) return 0;
  auto* s = static_cast<cudaStream_t>(stream);
  auto* hidden_rows = static_cast<float*>(scratch);
  const Routing routing = RoutingOf(expert_ids, experts, with_shared);
  const int error = LaunchGateUp(x, routing, experts, tokens * per_token, hidden_rows, s);
  if (error != 0) return error;
  const DownCombineArgs down{hidden_rows,
                             routing,
                             reinterpret_cast<const bf16* const*>(experts.down),
                             static_cast<const float*>(weights.data),
                             weights.row_stride,
                             static_cast<int>(inner),
                             static_cast<int>(hidden),
                             static_cast<float*>(out.data),
                             out.row_stride};
  return LaunchMaybeAfterPrior(
      programmatic, MoeDecodeDownCombineKernel,
      dim3(static_cast<unsigned>((hidden + kCombineColumns - 1) / kCombineColumns), static_cast<unsigned>(tokens)),
      dim3(static_cast<unsigned>(32 * per_token)), 0, s, down);
}

}  // namespace deltaserve::kernels::cuda
