// Expert products without a host round trip: the (token, slot) pairs are grouped by expert on the
// device (one block, or for large calls blocks that count, one that lays out the tiles, and
// blocks that place), then one launch computes every active expert's gate and up products
// with SwiGLU, and one its down products, scattering rows into slot_out. Here: tiles of BM = 16
// or 64 grouped rows × 64 output columns, bf16 tensor cores (ldmatrix + mma.sync, mma_tiles.cuh)
// with fp32 accumulation, operands streamed through shared memory by a 3-stage cp.async
// pipeline; where the warpgroup products run (sm_90a, and by default), 128-row tiles on them
// instead (moe_grouped_wgmma.cu). The grid covers an upper bound of the tile count; blocks past the real
// count (known only on the device) return at once.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/launchers.h"
#include "kernels/cuda/mma_tiles.cuh"
#include "kernels/cuda/moe_grouped.cuh"

namespace deltaserve::kernels::cuda {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kInvalid = static_cast<int>(cudaErrorInvalidValue);
constexpr int kThreads = 128;  // 4 warps
constexpr int kBN = 64;        // output columns per tile
constexpr int kBK = 64;        // reduction depth per pipeline stage
constexpr int kStages = 3;
constexpr int kLd = kBK + 8;   // shared row stride (bf16): rows 16 bytes apart in bank terms
constexpr int kLdC = kBN + 4;  // fp32 staging row stride

}  // namespace

GroupPlan CarvePlan(void* scratch, int64_t num_local, int64_t slots, int64_t max_tiles) {
  auto* base = static_cast<char*>(scratch);
  GroupPlan plan;
  plan.offsets = reinterpret_cast<int32_t*>(base);
  base += AlignScratch((num_local + 1) * sizeof(int32_t));
  plan.cursor = reinterpret_cast<int32_t*>(base);
  base += AlignScratch(num_local * sizeof(int32_t));
  plan.sorted_slots = reinterpret_cast<int32_t*>(base);
  base += AlignScratch(slots * sizeof(int32_t));
  plan.tile_expert = reinterpret_cast<int32_t*>(base);
  base += AlignScratch(max_tiles * sizeof(int32_t));
  plan.tile_begin = reinterpret_cast<int32_t*>(base);
  base += AlignScratch(max_tiles * sizeof(int32_t));
  plan.num_tiles = reinterpret_cast<int32_t*>(base);
  return plan;
}

size_t PlanBytes(int64_t num_local, int64_t slots, int64_t max_tiles) {
  return AlignScratch((num_local + 1) * sizeof(int32_t)) + AlignScratch(num_local * sizeof(int32_t)) +
         AlignScratch(slots * sizeof(int32_t)) + 2 * AlignScratch(max_tiles * sizeof(int32_t)) + AlignScratch(sizeof(int32_t));
}

int64_t MaxTiles(int64_t slots, int64_t num_local, int bm) {
  return slots / bm + (num_local < slots ? num_local : slots);
}

namespace {

// From per-expert row counts (in shared memory, turned into each expert's first position):
// offsets, the tile table and the tile count. Every thread of the block calls it.
__device__ void LayOutTiles(int* count_then_cursor, int* first_tile, int num_local, int bm, GroupPlan plan) {
  if (threadIdx.x == 0) {
    int offset = 0, tiles = 0;
    for (int e = 0; e < num_local; ++e) {
      const int count = count_then_cursor[e];
      plan.offsets[e] = offset;
      count_then_cursor[e] = offset;
      first_tile[e] = tiles;
      offset += count;
      tiles += (count + bm - 1) / bm;
    }
    plan.offsets[num_local] = offset;
    first_tile[num_local] = tiles;
    *plan.num_tiles = tiles;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < num_local; e += blockDim.x) {
    for (int i = first_tile[e]; i < first_tile[e + 1]; ++i) {
      plan.tile_expert[i] = e;
      plan.tile_begin[i] = count_then_cursor[e] + (i - first_tile[e]) * bm;
    }
  }
  __syncthreads();  // the cursors are read above before any placing advances them
}

// One block does all the grouping (calls of up to kOneBlockMaxSlots slots). Counting and placing
// use shared-memory atomics, so the order of an expert's rows is arbitrary; every row's result is
// independent of its neighbours, so outputs are not.
constexpr int64_t kOneBlockMaxSlots = 16384;
__global__ void MoeGroupKernel(Routing routing, int64_t slots, int bm, GroupPlan plan) {
  __shared__ int cursor[kMaxLocalExperts];
  __shared__ int first_tile[kMaxLocalExperts + 1];
  for (int e = threadIdx.x; e < routing.num_local; e += blockDim.x) cursor[e] = 0;
  __syncthreads();
  for (int64_t slot = threadIdx.x; slot < slots; slot += blockDim.x) {
    const int e = routing.LocalExpert(slot);
    if (e >= 0) atomicAdd(&cursor[e], 1);
  }
  __syncthreads();
  LayOutTiles(cursor, first_tile, routing.num_local, bm, plan);
  for (int64_t slot = threadIdx.x; slot < slots; slot += blockDim.x) {
    const int e = routing.LocalExpert(slot);
    if (e >= 0) plan.sorted_slots[atomicAdd(&cursor[e], 1)] = static_cast<int32_t>(slot);
  }
}

// Larger calls: blocks of kSlotsPerBlock slots count into plan.cursor (zeroed first), one block
// lays out the tiles, then the blocks place their slots, each reserving its range of every
// expert's positions with one global atomic.
constexpr int kGroupThreads = 256;
constexpr int kSlotsPerBlock = 4096;

// This block's per-expert counts of its slots, in shared memory.
__device__ void CountBlockSlots(const Routing& routing, int64_t slots, int* count) {
  for (int e = threadIdx.x; e < routing.num_local; e += blockDim.x) count[e] = 0;
  __syncthreads();
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * kSlotsPerBlock;
  const int64_t end = begin + kSlotsPerBlock < slots ? begin + kSlotsPerBlock : slots;
  for (int64_t slot = begin + threadIdx.x; slot < end; slot += blockDim.x) {
    const int e = routing.LocalExpert(slot);
    if (e >= 0) atomicAdd(&count[e], 1);
  }
  __syncthreads();
}

__global__ void MoeCountKernel(Routing routing, int64_t slots, GroupPlan plan) {
  __shared__ int count[kMaxLocalExperts];
  CountBlockSlots(routing, slots, count);
  for (int e = threadIdx.x; e < routing.num_local; e += blockDim.x) {
    if (count[e] > 0) atomicAdd(&plan.cursor[e], count[e]);
  }
}

__global__ void MoeLayOutKernel(int num_local, int bm, GroupPlan plan) {
  __shared__ int cursor[kMaxLocalExperts];
  __shared__ int first_tile[kMaxLocalExperts + 1];
  for (int e = threadIdx.x; e < num_local; e += blockDim.x) cursor[e] = plan.cursor[e];
  __syncthreads();
  LayOutTiles(cursor, first_tile, num_local, bm, plan);
  for (int e = threadIdx.x; e < num_local; e += blockDim.x) plan.cursor[e] = cursor[e];
}

__global__ void MoePlaceKernel(Routing routing, int64_t slots, GroupPlan plan) {
  __shared__ int count[kMaxLocalExperts];
  __shared__ int next[kMaxLocalExperts];
  CountBlockSlots(routing, slots, count);
  for (int e = threadIdx.x; e < routing.num_local; e += blockDim.x) {
    next[e] = count[e] > 0 ? atomicAdd(&plan.cursor[e], count[e]) : 0;
  }
  __syncthreads();
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * kSlotsPerBlock;
  const int64_t end = begin + kSlotsPerBlock < slots ? begin + kSlotsPerBlock : slots;
  for (int64_t slot = begin + threadIdx.x; slot < end; slot += blockDim.x) {
    const int e = routing.LocalExpert(slot);
    if (e >= 0) plan.sorted_slots[atomicAdd(&next[e], 1)] = static_cast<int32_t>(slot);
  }
}

}  // namespace

int LaunchGrouping(const Routing& routing, int64_t slots, int bm, const GroupPlan& plan, cudaStream_t stream) {
  if (slots <= kOneBlockMaxSlots) {
    MoeGroupKernel<<<1, 1024, 0, stream>>>(routing, slots, bm, plan);
    return static_cast<int>(cudaGetLastError());
  }
  const unsigned blocks = static_cast<unsigned>((slots + kSlotsPerBlock - 1) / kSlotsPerBlock);
  const cudaError_t error = cudaMemsetAsync(plan.cursor, 0, routing.num_local * sizeof(int32_t), stream);
  if (error != cudaSuccess) return static_cast<int>(error);
  MoeCountKernel<<<blocks, kGroupThreads, 0, stream>>>(routing, slots, plan);
  MoeLayOutKernel<<<1, 1024, 0, stream>>>(routing.num_local, bm, plan);
  MoePlaceKernel<<<blocks, kGroupThreads, 0, stream>>>(routing, slots, plan);
  return static_cast<int>(cudaGetLastError());
}

namespace {

// BM rows per tile; warps arranged kWarpsM × (4 / kWarpsM), each with FM × FN 16×16 fragments
// (per weight matrix). kGateUp: two weights and the SwiGLU epilogue; otherwise one and the scatter.
template <int BM, int kWarpsM, bool kGateUp>
struct Tile {
  static constexpr int kWarpsN = 4 / kWarpsM;
  static constexpr int FM = BM / 16 / kWarpsM;
  static constexpr int FN = kBN / 16 / kWarpsN;
  static constexpr int kMatrices = kGateUp ? 2 : 1;
  static constexpr int kStageElems = (BM + kMatrices * kBN) * kLd;
  static constexpr size_t kPipelineBytes = size_t{kStages} * kStageElems * sizeof(bf16);
  static constexpr size_t kEpilogueBytes = size_t{kMatrices} * BM * kLdC * sizeof(float);
  static constexpr size_t kSharedBytes =
      (kPipelineBytes > kEpilogueBytes ? kPipelineBytes : kEpilogueBytes) + BM * sizeof(int64_t);
  static_assert(FM >= 1 && FN >= 1 && FM * 16 * kWarpsM == BM && FN * 16 * kWarpsN == kBN);
};

template <int BM, int kWarpsM, bool kGateUp>
__global__ void __launch_bounds__(kThreads) MoeGroupedGemmKernel(GemmArgs args) {
  using T = Tile<BM, kWarpsM, kGateUp>;
  const int tile = blockIdx.x;
  if (tile >= *args.plan.num_tiles) return;
  const int expert = args.plan.tile_expert[tile];
  const int row_begin = args.plan.tile_begin[tile];
  const int row_end = args.plan.offsets[expert + 1];
  const int n0 = blockIdx.y * kBN;

  extern __shared__ __align__(128) unsigned char shared[];
  bf16* stages = reinterpret_cast<bf16*>(shared);
  // Source row of A for each tile row (-1: past the expert's rows, zero-filled).
  auto* a_row = reinterpret_cast<int64_t*>(shared + T::kSharedBytes - BM * sizeof(int64_t));
  for (int r = threadIdx.x; r < BM; r += kThreads) {
    const int position = row_begin + r;
    a_row[r] = position >= row_end ? -1
               : kGateUp            ? args.plan.sorted_slots[position] / args.top_k
                                    : position;
  }
  __syncthreads();

  const bf16* b[2] = {args.b0[expert], kGateUp ? args.b1[expert] : nullptr};
  const int k_tiles = (args.k + kBK - 1) / kBK;
  constexpr int kPieces = kBK / 8;  // 16-byte pieces per row and stage
  auto load_stage = [&](int kt, int slot) {
    bf16* st = stages + slot * T::kStageElems;
    const int k0 = kt * kBK;
    for (int i = threadIdx.x; i < BM * kPieces; i += kThreads) {
      const int r = i / kPieces, p = i % kPieces;
      const int64_t src = a_row[r];
      const bool valid = src >= 0 && k0 + p * 8 < args.k;
      CopyAsync16(st + r * kLd + p * 8, valid ? args.a + src * args.a_ld + k0 + p * 8 : args.a, valid);
    }
    for (int m = 0; m < T::kMatrices; ++m) {
      bf16* dst = st + (BM + m * kBN) * kLd;
      for (int i = threadIdx.x; i < kBN * kPieces; i += kThreads) {
        const int r = i / kPieces, p = i % kPieces;
        const bool valid = n0 + r < args.n && k0 + p * 8 < args.k;
        CopyAsync16(dst + r * kLd + p * 8,
                    valid ? b[m] + static_cast<int64_t>(n0 + r) * args.k + k0 + p * 8 : b[m], valid);
      }
    }
  };

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int warp_m = warp % kWarpsM, warp_n = warp / kWarpsM;
  TileAcc16 acc[T::kMatrices][T::FM][T::FN];
  for (int m = 0; m < T::kMatrices; ++m)
    for (int i = 0; i < T::FM; ++i)
      for (int j = 0; j < T::FN; ++j) ZeroTile(acc[m][i][j]);

  for (int s = 0; s < kStages - 1; ++s) {
    if (s < k_tiles) load_stage(s, s);
    CommitAsync();
  }
  for (int kt = 0; kt < k_tiles; ++kt) {
    WaitAsync<kStages - 2>();
    __syncthreads();  // stage kt is in; everyone is done with the slot refilled next
    if (kt + kStages - 1 < k_tiles) load_stage(kt + kStages - 1, (kt + kStages - 1) % kStages);
    CommitAsync();
    const bf16* st = stages + (kt % kStages) * T::kStageElems;
    for (int kk = 0; kk < kBK; kk += 16) {
      TileA16 fa[T::FM];
      for (int i = 0; i < T::FM; ++i) LoadA(fa[i], st + ((warp_m * T::FM + i) * 16) * kLd + kk, kLd, lane);
      for (int m = 0; m < T::kMatrices; ++m) {
        for (int j = 0; j < T::FN; ++j) {
          TileB16 fb;  // the weight's rows are B's columns
          LoadBTransposed(fb, st + (BM + m * kBN + (warp_n * T::FN + j) * 16) * kLd + kk, kLd, lane);
          for (int i = 0; i < T::FM; ++i) MmaTile(acc[m][i][j], fa[i], fb);
        }
      }
    }
  }
  WaitAsync<0>();
  __syncthreads();  // the pipeline's shared memory becomes the fp32 staging

  auto* staging = reinterpret_cast<float*>(shared);
  for (int m = 0; m < T::kMatrices; ++m)
    for (int i = 0; i < T::FM; ++i)
      for (int j = 0; j < T::FN; ++j) {
        float* dst = staging + m * BM * kLdC + ((warp_m * T::FM + i) * 16) * kLdC + (warp_n * T::FN + j) * 16;
        StoreTile(acc[m][i][j], dst, kLdC, lane);
      }
  __syncthreads();
  for (int i = threadIdx.x; i < BM * kBN; i += kThreads) {
    const int r = i / kBN, c = i % kBN;
    if (a_row[r] < 0 || n0 + c >= args.n) continue;
    const float value = staging[r * kLdC + c];
    if constexpr (kGateUp) {
      const float up = staging[BM * kLdC + r * kLdC + c];
      args.hidden[static_cast<int64_t>(row_begin + r) * args.n + n0 + c] = __float2bfloat16(SiluF(value) * up);
    } else {
      args.slot_out[args.plan.sorted_slots[row_begin + r] * args.slot_ld + n0 + c] = value;
    }
  }
}

template <int BM, int kWarpsM, bool kGateUp>
int LaunchGemm(const GemmArgs& args, int64_t max_tiles, cudaStream_t stream) {
  using T = Tile<BM, kWarpsM, kGateUp>;
  auto kernel = MoeGroupedGemmKernel<BM, kWarpsM, kGateUp>;
  if (const int error = AllowDynamicSmem(kernel, T::kSharedBytes); error != 0) return error;
  const dim3 grid(static_cast<unsigned>(max_tiles), static_cast<unsigned>((args.n + kBN - 1) / kBN));
  kernel<<<grid, kThreads, T::kSharedBytes, stream>>>(args);
  return static_cast<int>(cudaGetLastError());
}

// Small tiles when an expert averages few rows (decode), larger ones for prefill.
int TileRows(int64_t slots, int64_t num_local) { return slots >= 32 * num_local ? 64 : 16; }

}  // namespace

bool MoeGroupedSupports(int64_t hidden, int64_t inner, DType weight_dtype) {
  return weight_dtype == DType::kBF16 && hidden % 8 == 0 && inner % 8 == 0 && hidden > 0 && inner > 0;
}

size_t MoeGroupedScratchBytes(int64_t tokens, int64_t top_k, int64_t num_local, int64_t hidden,
                              int64_t inner) {
  const int64_t slots = tokens * top_k;
  const int64_t max_tiles = MaxTiles(slots, num_local, 16);
  return PlanBytes(num_local, slots, max_tiles) + AlignScratch(tokens * hidden * sizeof(bf16)) +
         AlignScratch(slots * inner * sizeof(bf16));
}

bool MoeGroupedWideTiles(int64_t slots, const MoeExpertTable& experts, int64_t wide_tiles_min_rows) {
  // The maps exist only where the tiles run here (EncodeMoeWideTileMaps checks MoeWgmmaRuns).
  return slots >= wide_tiles_min_rows * experts.num_local && experts.wide_tile_maps != nullptr;
}

int LaunchMoeGroupedExperts(TensorView x, TensorView expert_ids, const MoeExpertTable& experts,
                            void* scratch, TensorView slot_out, Stream stream, int64_t wide_tiles_min_rows) {
  const int64_t tokens = x.rows, hidden = x.cols, top_k = expert_ids.cols;
  const int64_t num_local = experts.num_local, inner = experts.inner;
  const bool bf16_slots = slot_out.dtype == DType::kBF16;
  if (x.dtype != DType::kF32 || expert_ids.dtype != DType::kI32 || (slot_out.dtype != DType::kF32 && !bf16_slots)) {
    return kInvalid;
  }
  if (!MoeGroupedSupports(hidden, inner, DType::kBF16) || num_local < 1 || num_local > kMaxLocalExperts ||
      expert_ids.rows != tokens || top_k < 1 || slot_out.rows != tokens * top_k || slot_out.cols != hidden) {
    return kInvalid;
  }
  if (tokens == 0) return 0;
  const int64_t slots = tokens * top_k;
  const bool wide = MoeGroupedWideTiles(slots, experts, wide_tiles_min_rows) && slot_out.row_stride % 2 == 0 &&
                    IsAligned(slot_out.data, 2 * DTypeSize(slot_out.dtype));
  if (bf16_slots && !wide) return kInvalid;  // only the wide tiles write bf16 slot rows
  const int bm = wide ? kWgmmaTileRows : TileRows(slots, num_local);
  const int64_t max_tiles = MaxTiles(slots, num_local, bm);
  if (slots > 0x7fffffffLL || !FitsGridX(max_tiles) || (hidden + kBN - 1) / kBN > 65535 ||
      (inner + kBN - 1) / kBN > 65535) {
    return kInvalid;
  }
  auto* s = static_cast<cudaStream_t>(stream);
  const int64_t plan_max_tiles = MaxTiles(slots, num_local, 16);
  GroupPlan plan = CarvePlan(scratch, num_local, slots, plan_max_tiles);
  char* after_plan = static_cast<char*>(scratch) + PlanBytes(num_local, slots, plan_max_tiles);
  bf16* x_bf16 = reinterpret_cast<bf16*>(after_plan);
  bf16* hidden_rows = reinterpret_cast<bf16*>(after_plan + AlignScratch(tokens * hidden * sizeof(bf16)));

  int error = LaunchConvertF32(x, DType::kBF16, x_bf16, stream);
  if (error != 0) return error;
  const Routing routing{static_cast<const int32_t*>(expert_ids.data), expert_ids.row_stride, static_cast<int>(top_k),
                        static_cast<int>(experts.first_expert), static_cast<int>(num_local)};
  error = LaunchGrouping(routing, slots, bm, plan, s);
  if (error != 0) return error;

  GemmArgs gate_up{x_bf16, hidden, reinterpret_cast<const bf16* const*>(experts.gate),
                   reinterpret_cast<const bf16* const*>(experts.up), static_cast<int>(inner),
                   static_cast<int>(hidden), static_cast<int>(top_k), plan, hidden_rows, nullptr, 0,
                   experts.wide_tile_maps};
  GemmArgs down{hidden_rows, inner, reinterpret_cast<const bf16* const*>(experts.down), nullptr,
                static_cast<int>(hidden), static_cast<int>(inner), static_cast<int>(top_k), plan,
                nullptr, bf16_slots ? nullptr : static_cast<float*>(slot_out.data), slot_out.row_stride,
                experts.wide_tile_maps, bf16_slots ? static_cast<bf16*>(slot_out.data) : nullptr};
  if (wide) {
    error = LaunchMoeWgmmaGemm(gate_up, true, max_tiles, slots, s);
    if (error == 0) error = LaunchMoeWgmmaGemm(down, false, max_tiles, slots, s);
  } else if (bm == 16) {
    error = LaunchGemm<16, 1, true>(gate_up, max_tiles, s);
    if (error == 0) error = LaunchGemm<16, 1, false>(down, max_tiles, s);
  } else {
    error = LaunchGemm<64, 2, true>(gate_up, max_tiles, s);
    if (error == 0) error = LaunchGemm<64, 2, false>(down, max_tiles, s);
  }
  return error;
}

}  // namespace deltaserve::kernels::cuda
