// The grouped expert products at prefill sizes on Hopper's warpgroup products (wgmma, sm_90a):
// a work item is 128 grouped rows × 256 weight rows (gate/up: 128 of gate and the same 128 of up,
// so a thread holds both factors of its SwiGLU outputs; down: 256 output columns). Persistent
// blocks (one per SM) stride over the work items. Warp-specialized: a producer warpgroup fills a
// ring of 4 shared stages in the 128-byte swizzle, each stage's landing counted on its `full`
// mbarrier; two consumer warpgroups (64 rows each) multiply a stage as it lands and release it on
// its `empty` mbarrier once their products are done. The producer runs ahead into the next work
// item while the consumers store the last one's outputs. Tiles of consecutive rows (the weights;
// down's grouped hidden rows) come through tensor maps, one copy-engine instruction a tile from
// one thread; gate/up's A rows are tokens gathered by slot, copied by the warpgroup's cp.async.
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <cudaTypedefs.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/launchers.h"
#include "kernels/cuda/moe_grouped.cuh"
#include "kernels/cuda/tensor_maps.cuh"
#include "kernels/cuda/wgmma.cuh"

namespace deltaserve::kernels::cuda {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kConsumerThreads = 256;  // two warpgroups (warps 0-7)
constexpr int kProducerThreads = 128;  // one warpgroup (warps 8-11)
constexpr int kThreads = kConsumerThreads + kProducerThreads;
// Registers per thread after the roles split (setmaxnreg): the consumers hold 128 fp32
// accumulators each; 128 x 64 + 256 x 216 fits the 168 x 384 the block starts with.
constexpr int kProducerRegisters = 64;
constexpr int kConsumerRegisters = 216;
constexpr int kRows = kWgmmaTileRows;
constexpr int kWeightRows = 256;
constexpr int kBK = 64;  // one 128-byte swizzled row
constexpr int kStages = 4;
constexpr uint32_t kATileBytes = kRows * kBK * 2;
constexpr uint32_t kBTileBytes = kWeightRows * kBK * 2;
constexpr uint32_t kStageBytes = kATileBytes + kBTileBytes;
constexpr size_t kSharedBytes = size_t{kStages} * kStageBytes + 2 * kStages * sizeof(uint64_t) + 1024;  // + alignment
// Per producer thread p and stage: 16-byte chunk p % 8 of rows p / 8 + 16 i of A and of B.
constexpr int kRowStep = kProducerThreads / 8;
constexpr int kARowsPerThread = kRows / kRowStep;

struct WorkItem {
  int expert, row_begin, row_end, n0;
};

template <bool kGateUp>
__device__ __forceinline__ WorkItem Item(const GemmArgs& args, int item, int col_tiles) {
  constexpr int kColumns = kGateUp ? kWeightRows / 2 : kWeightRows;
  WorkItem w;
  const int tile = item / col_tiles;
  w.expert = args.plan.tile_expert[tile];
  w.row_begin = args.plan.tile_begin[tile];
  w.row_end = args.plan.offsets[w.expert + 1];
  w.n0 = item % col_tiles * kColumns;
  return w;
}

// Tensor maps per local expert, in this order (EncodeMoeWideTileMaps).
constexpr int kGateMap = 0, kUpMap = 1, kDownMap = 2, kMapsPerExpert = 3;
// Down's grouped hidden rows arrive in boxes of 16 rows (two swizzle periods), so a tile copies
// only the boxes its expert's rows reach into.
constexpr int kRowsBox = 16;
constexpr uint32_t kRowsBoxBytes = kRowsBox * kBK * 2;

// Threads that arrive on a stage's `full` barrier: gate/up's whole producer warpgroup (each after
// its gathered rows land), down's one thread that issues the tensor copies.
template <bool kGateUp>
constexpr unsigned kFullArrivals = kGateUp ? kProducerThreads : 1;

template <bool kGateUp>
__device__ __forceinline__ void Produce(const GemmArgs& args, const CUtensorMap* rows_map, int items, int col_tiles,
                                        unsigned char* base, uint64_t* full, uint64_t* empty) {
  const int p = threadIdx.x - kConsumerThreads, chunk = p % 8, row0 = p / 8;
  if (!kGateUp && p != 0) return;
  // Rows row0 + kRowStep i share row0's swizzle: this thread's pieces sit kRowStep rows apart.
  const uint32_t first_piece = SwizzledChunkOffset(row0, chunk);
  constexpr uint32_t kPieceStride = kRowStep * 128;
  const int k_tiles = (args.k + kBK - 1) / kBK;
  const auto* maps = static_cast<const CUtensorMap*>(args.weight_maps);
  int iteration = 0;
  for (int item = blockIdx.x; item < items; item += gridDim.x) {
    const WorkItem w = Item<kGateUp>(args, item, col_tiles);
    const CUtensorMap* expert_maps = maps + kMapsPerExpert * w.expert;
    // The maps were copied into global memory by the host: the tensor-map proxy reads them only
    // after an acquire fence.
    if (p == 0) {
      for (int m = 0; m < kMapsPerExpert; ++m) AcquireTensorMap(expert_maps + m);
    }
    [[maybe_unused]] int a_row[kARowsPerThread];  // gate/up: rows of args.a; -1 past the expert's, zero-filled
    if constexpr (kGateUp) {
#pragma unroll
      for (int i = 0; i < kARowsPerThread; ++i) {
        const int position = w.row_begin + row0 + kRowStep * i;
        a_row[i] = position >= w.row_end ? -1 : args.plan.sorted_slots[position] / args.top_k;
      }
    }
    for (int kt = 0; kt < k_tiles; ++kt, ++iteration) {
      const int stage = iteration % kStages;
      WaitBarrier(&empty[stage], ((iteration / kStages) & 1) ^ 1);
      unsigned char* a_tile = base + stage * kStageBytes;
      unsigned char* b_tile = a_tile + kATileBytes;
      if constexpr (kGateUp) {
        if (p == 0) {
          ExpectBytes(&full[stage], kBTileBytes);
          TileToShared(b_tile, expert_maps + kGateMap, kt * kBK, w.n0, &full[stage]);
          TileToShared(b_tile + kBTileBytes / 2, expert_maps + kUpMap, kt * kBK, w.n0, &full[stage]);
        }
        const int k = kt * kBK + chunk * 8;
        const bool k_valid = k < args.k;
#pragma unroll
        for (int i = 0; i < kARowsPerThread; ++i) {
          const bool valid = k_valid && a_row[i] >= 0;
          CopyAsync16(a_tile + first_piece + i * kPieceStride,
                      valid ? args.a + static_cast<int64_t>(a_row[i]) * args.a_ld + k : args.a, valid);
        }
        ArriveWhenCopiesLand(&full[stage]);
      } else {
        // Only the boxes that hold the expert's rows: the tile's other rows keep what the stage
        // held before, and their products fill accumulator rows that are never stored.
        const int boxes = (min(w.row_end - w.row_begin, kRows) + kRowsBox - 1) / kRowsBox;
        ArriveExpectBytes(&full[stage], kBTileBytes + boxes * kRowsBoxBytes);
        for (int box = 0; box < boxes; ++box) {
          TileToShared(a_tile + box * kRowsBoxBytes, rows_map, kt * kBK, w.row_begin + box * kRowsBox, &full[stage]);
        }
        TileToShared(b_tile, expert_maps + kDownMap, kt * kBK, w.n0, &full[stage]);
      }
    }
  }
}

__device__ __forceinline__ void StorePair(bf16* at, float a, float b) {
  *reinterpret_cast<__nv_bfloat162*>(at) = __floats2bfloat162_rn(a, b);
}
__device__ __forceinline__ void StorePair(float* at, float a, float b) {
  *reinterpret_cast<float2*>(at) = make_float2(a, b);
}

// Down's accumulator row h of this lane (see Consume) into its slot row `out`, columns from n0,
// in pairs (n is a multiple of 8).
template <typename T>
__device__ __forceinline__ void StoreSlotRowPairs(T* out, const float* acc, int h, int n0, int n, int lane) {
#pragma unroll
  for (int j = 0; j < kWeightRows / 8; ++j) {
    const int c = n0 + 8 * j + 2 * (lane % 4);
    if (c >= n) continue;
    StorePair(out + c, acc[4 * j + 2 * h], acc[4 * j + 2 * h + 1]);
  }
}

template <bool kGateUp>
__device__ __forceinline__ void Consume(const GemmArgs& args, int items, int col_tiles, uint32_t base_address,
                                        uint64_t* full, uint64_t* empty) {
  constexpr int kColumns = kGateUp ? kWeightRows / 2 : kWeightRows;
  const int group = threadIdx.x / 128;
  const int lane = threadIdx.x % 32;
  const int warp_in_group = threadIdx.x / 32 % 4;
  const int k_tiles = (args.k + kBK - 1) / kBK;
  int iteration = 0;
  float acc[128];
  for (int item = blockIdx.x; item < items; item += gridDim.x) {
    const WorkItem w = Item<kGateUp>(args, item, col_tiles);
#pragma unroll
    for (int i = 0; i < 128; ++i) acc[i] = 0.0f;
    for (int kt = 0; kt < k_tiles; ++kt, ++iteration) {
      const int stage = iteration % kStages;
      WaitBarrier(&full[stage], (iteration / kStages) & 1);
      FenceProxyAsyncShared();  // the producer's cp.async writes, visible to the products' reads
      const uint32_t a_address = base_address + stage * kStageBytes + group * (kATileBytes / 2);
      const uint64_t a_descriptor = SwizzledTileDescriptor(a_address);
      const uint64_t b_descriptor = SwizzledTileDescriptor(base_address + stage * kStageBytes + kATileBytes);
      WgmmaFence();
#pragma unroll
      for (int kk = 0; kk < kBK / 16; ++kk) WgmmaM64N256K16(acc, a_descriptor + 2 * kk, b_descriptor + 2 * kk);
      WgmmaCommit();
      // Waiting for this batch, not the one before, frees a stage sooner for the producer (one
      // more in flight: 2% faster at 32k tokens); the other warpgroup's products fill the gap.
      WgmmaWait<0>();
      PinAccumulators(acc);
      ArriveBarrier(&empty[stage]);
    }

    // Accumulator element (j, h, e) of this lane: row 16 w + lane / 4 + 8 h of the warpgroup's
    // 64, column 8 j + 2 (lane % 4) + e.
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int position = w.row_begin + group * 64 + warp_in_group * 16 + lane / 4 + 8 * h;
      if (position >= w.row_end) continue;
      if constexpr (kGateUp) {
        bf16* out = args.hidden + static_cast<int64_t>(position) * args.n;
#pragma unroll
        for (int j = 0; j < kColumns / 8; ++j) {
          const int c = w.n0 + 8 * j + 2 * (lane % 4);
          if (c >= args.n) continue;  // n is a multiple of 8: c + 1 < n too
          const float* gate = acc + 4 * j + 2 * h;
          const float* up = acc + 4 * (j + kColumns / 8) + 2 * h;
          *reinterpret_cast<__nv_bfloat162*>(out + c) =
              __floats2bfloat162_rn(SiluF(gate[0]) * up[0], SiluF(gate[1]) * up[1]);
        }
      } else {
        const int64_t row = static_cast<int64_t>(args.plan.sorted_slots[position]) * args.slot_ld;
        if (args.slot_out_bf16 != nullptr) {
          StoreSlotRowPairs(args.slot_out_bf16 + row, acc, h, w.n0, args.n, lane);
        } else {
          StoreSlotRowPairs(args.slot_out + row, acc, h, w.n0, args.n, lane);
        }
      }
    }
  }
}

// rows_map: down's A, the grouped hidden rows (unused by gate/up).
template <bool kGateUp>
__global__ void __launch_bounds__(kThreads, 1)
    MoeWgmmaGemmKernel(const __grid_constant__ GemmArgs args, const __grid_constant__ CUtensorMap rows_map,
                       int col_tiles) {
  extern __shared__ unsigned char shared_raw[];
  uint32_t base_address;
  unsigned char* base = SwizzleAlignedShared(shared_raw, base_address);
  auto* full = reinterpret_cast<uint64_t*>(base + kStages * kStageBytes);
  uint64_t* empty = full + kStages;
  InitStageRing(full, empty, kStages, kFullArrivals<kGateUp>, kConsumerThreads);
  const int items = *args.plan.num_tiles * col_tiles;
  if (threadIdx.x >= kConsumerThreads) {
    SetMaxRegisters<kProducerRegisters, false>();
    Produce<kGateUp>(args, &rows_map, items, col_tiles, base, full, empty);
  } else {
    SetMaxRegisters<kConsumerRegisters, true>();
    Consume<kGateUp>(args, items, col_tiles, base_address, full, empty);
  }
}

}  // namespace

bool MoeWgmmaRuns() { return WgmmaRuns(); }

bool EncodeMoeWideTileMaps(const void* gate, const void* up, const void* down, int64_t inner, int64_t hidden,
                           MoeWideTileMaps& maps) {
  static_assert(sizeof(MoeWideTileMaps) == kMapsPerExpert * sizeof(CUtensorMap) &&
                alignof(MoeWideTileMaps) >= alignof(CUtensorMap));
  auto* out = reinterpret_cast<CUtensorMap*>(maps.bytes);
  return MoeWgmmaRuns() && EncodeBf16TileMap(out + kGateMap, gate, inner, hidden, hidden, kWeightRows / 2) &&
         EncodeBf16TileMap(out + kUpMap, up, inner, hidden, hidden, kWeightRows / 2) &&
         EncodeBf16TileMap(out + kDownMap, down, hidden, inner, inner, kWeightRows);
}

int LaunchMoeWgmmaGemm(const GemmArgs& args, bool gate_up, int64_t max_tiles, int64_t slots, cudaStream_t stream) {
  if (!MoeWgmmaRuns() || args.weight_maps == nullptr) return static_cast<int>(cudaErrorInvalidDeviceFunction);
  const int columns = gate_up ? kWeightRows / 2 : kWeightRows;
  const int64_t col_tiles = (args.n + columns - 1) / columns;
  if (!FitsGridX(max_tiles * col_tiles)) return static_cast<int>(cudaErrorInvalidValue);
  CUtensorMap rows_map{};
  if (!gate_up && (args.a_ld != args.k || !EncodeBf16TileMap(&rows_map, args.a, slots, args.k, args.k, kRowsBox))) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  auto kernel = gate_up ? MoeWgmmaGemmKernel<true> : MoeWgmmaGemmKernel<false>;
  if (const int error = AllowDynamicSmem(kernel, kSharedBytes); error != 0) return error;
  // Persistent: the real item count is known only on the device.
  const int64_t blocks = std::min<int64_t>(max_tiles * col_tiles, SmCount());
  kernel<<<static_cast<unsigned>(blocks), kThreads, kSharedBytes, stream>>>(args, rows_map,
                                                                              static_cast<int>(col_tiles));
  return static_cast<int>(cudaGetLastError());
}

}  // namespace deltaserve::kernels::cuda
