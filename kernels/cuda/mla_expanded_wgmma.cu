// Expanded MLA attention (prefill) on Hopper's warpgroup products (wgmma, sm_90a), the same work
// as mla_expanded_tc.cu's mma.sync kernel. A block holds 128 query rows of one head: a producer
// thread copies each causal key tile (64 keys: K and V) into a ring of 4 shared stages, each
// landing on its stage's `full` mbarrier: five boxes through the sequence's tensor maps
// (MlaExpandedTileMaps: the kv product's and the latent's rows, swizzled on the way), or where it
// has key tiles (laid out in global memory as the stages hold them, mla_expanded_tc.h) one bulk
// copy (a warpgroup of threads issuing 16-byte copies took half the kernel's instructions and kept
// the consumers waiting for tiles a fifth of the time); two consumer warpgroups of 64 rows each (Q
// in shared memory) compute scores S = Q·Kᵀ from shared memory and O += P·V with the
// probabilities as register operands and V read MN-major. Each consumer issues the next tile's
// scores beside the current tile's P·V and runs the next softmax while that product runs (flash
// attention 3's in-warpgroup overlap), then releases the stage on its `empty` mbarrier.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/mla_expanded_tc.h"
#include "kernels/cuda/mla_key_tiles.cuh"
#include "kernels/cuda/mla_softmax.cuh"
#include "kernels/cuda/mma_tiles.cuh"
#include "kernels/cuda/tensor_maps.cuh"
#include "kernels/cuda/wgmma.cuh"

namespace deltaserve::kernels::cuda {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kConsumerThreads = 256;  // warpgroups 0 and 1: 64 query rows each
constexpr int kProducerThreads = 32;   // warp 8, one thread of which issues the copies
constexpr int kThreads = kConsumerThreads + kProducerThreads;
constexpr int kRows = static_cast<int>(kMlaExpandedWgmmaRows);
static_assert(kRows == 128, "two warpgroups of m64 products");
constexpr int kKeys = 64;  // keys per tile
constexpr int kNope = 128, kRope = 64, kQk = kNope + kRope, kV = 128;
// Swizzled tiles: 64 bf16 (128 bytes) per row, a block of 64 rows is 8 KiB.
constexpr uint32_t kBlockBytes = 64 * 128;
constexpr uint32_t kQGroupBytes = (kQk / 64) * kBlockBytes;  // a warpgroup's 64 rows of Q
constexpr uint32_t kKBytes = (kQk / 64) * kBlockBytes;       // K: 3 column blocks of 64 keys
constexpr uint32_t kVBytes = (kV / 64) * kBlockBytes;        // V: 2 column blocks of 64 keys
constexpr uint32_t kStageBytes = kKBytes + kVBytes;
static_assert(kStageBytes == kMlaExpandedTileBytes && kKeys == kMlaExpandedTileKeys, "a stage holds a key tile");
constexpr int kStages = 4;
constexpr size_t kSharedBytes = 2 * kQGroupBytes + kStages * kStageBytes + 2 * kStages * sizeof(uint64_t) + 1024;

// Byte offset of 16-byte piece `piece` of row `row` in a tile of 64-column swizzled blocks.
__device__ __forceinline__ uint32_t PieceOffset(int row, int piece) {
  return (piece / 8) * kBlockBytes + SwizzledChunkOffset(row, piece % 8);
}

__device__ __forceinline__ void SyncGroup(int group) { cuda::SyncGroup<128>(group); }

// The producer thread: key tiles 0 .. tiles - 1 (from `first`, consecutive) into the ring.
__device__ __forceinline__ void Produce(const unsigned char* first, int64_t tiles, unsigned char* stages,
                                        uint64_t* full, uint64_t* empty) {
  for (int64_t t = 0; t < tiles; ++t) {
    const int stage = static_cast<int>(t % kStages);
    WaitBarrier(&empty[stage], static_cast<unsigned>((t / kStages) & 1) ^ 1u);
    ArriveExpectBytes(&full[stage], kStageBytes);
    BulkCopyToShared(stages + stage * kStageBytes, first + t * kStageBytes, kStageBytes, &full[stage]);
  }
}

// Tiles first .. first + tiles - 1 through a sequence's tensor maps (MlaExpandedTileMaps): per tile, the keys' nope
// columns of head h (two boxes), their rope part, the values' columns (two boxes).
__device__ __forceinline__ void ProduceFromMaps(const CUtensorMap* maps, int h, int64_t first, int64_t tiles,
                                                unsigned char* stages, uint64_t* full, uint64_t* empty) {
  const CUtensorMap* kv = maps;
  const CUtensorMap* rope = maps + 1;
  AcquireTensorMap(kv);
  AcquireTensorMap(rope);
  const int head_col = h * (kNope + kV);
  for (int64_t t = 0; t < tiles; ++t) {
    const int stage = static_cast<int>(t % kStages);
    WaitBarrier(&empty[stage], static_cast<unsigned>((t / kStages) & 1) ^ 1u);
    ArriveExpectBytes(&full[stage], kStageBytes);
    unsigned char* st = stages + stage * kStageBytes;
    const int row = static_cast<int>((first + t) * kKeys);
    TileToShared(st, kv, head_col, row, &full[stage]);
    TileToShared(st + kBlockBytes, kv, head_col + 64, row, &full[stage]);
    TileToShared(st + 2 * kBlockBytes, rope, 0, row, &full[stage]);
    TileToShared(st + kKBytes, kv, head_col + kNope, row, &full[stage]);
    TileToShared(st + kKBytes + kBlockBytes, kv, head_col + kNope + 64, row, &full[stage]);
  }
}

// The probabilities as A operands of P·V: the score accumulator's layout is the A operand's
// (rows g / g + 8, keys 2tq.. / 8 + 2tq..).
__device__ __forceinline__ void PackProbabilities(const float (&s)[kKeys / 2], uint32_t (&pa)[kKeys / 16][4]) {
#pragma unroll
  for (int kt = 0; kt < kKeys / 16; ++kt)
#pragma unroll
    for (int r = 0; r < 4; ++r) pa[kt][r] = PackBf16(s[8 * kt + 2 * r], s[8 * kt + 2 * r + 1]);
}

__device__ __forceinline__ void IssueScores(float (&s)[kKeys / 2], uint32_t q_address, uint32_t k_address) {
#pragma unroll
  for (int i = 0; i < kKeys / 2; ++i) s[i] = 0.0f;
  WgmmaFence();
#pragma unroll
  for (int kk = 0; kk < kQk / 16; ++kk) {
    const uint32_t within = (kk / 4) * kBlockBytes + (kk % 4) * 32;
    WgmmaM64N64K16(s, SwizzledTileDescriptor(q_address + within), SwizzledTileDescriptor(k_address + within));
  }
  WgmmaCommit();
}

__device__ __forceinline__ void IssueValues(float (&o)[kV / 2], const uint32_t (&pa)[kKeys / 16][4],
                                            uint32_t v_address) {
  WgmmaFence();
#pragma unroll
  for (int kt = 0; kt < kKeys / 16; ++kt) {
    WgmmaM64N128K16RegisterA(o, pa[kt], SwizzledMnMajorDescriptor(v_address + kt * 16 * 128, kBlockBytes));
  }
  WgmmaCommit();
}

// Attends the block's rows (q rows from first_row, positions from pos0) to `tiles` key tiles from
// position key0, written to `sink`.
__device__ __forceinline__ void Consume(const MlaExpandedArgs& a, const RowSink& sink, int64_t pos0,
                                        int64_t first_row, int rows, int h, int64_t key0, int64_t tiles,
                                        unsigned char* q_tiles, uint32_t base_address,
                                        uint32_t stages_address, uint64_t* full, uint64_t* empty) {
  const int group = threadIdx.x / 128;
  const int warp = threadIdx.x / 32 % 4, lane = threadIdx.x % 32;
  // This warpgroup's 64 rows of Q, rounded to bf16, into its swizzled tile.
  unsigned char* q_tile = q_tiles + group * kQGroupBytes;
  const int group_row0 = 64 * group;
  for (int i = threadIdx.x % 128; i < 64 * kQk / 8; i += 128) {
    const int r = i / (kQk / 8), piece = i % (kQk / 8);
    float4 lo = make_float4(0.0f, 0.0f, 0.0f, 0.0f), hi = lo;
    if (group_row0 + r < rows) {
      const float4* src =
          reinterpret_cast<const float4*>(RowF32(a.q, first_row + group_row0 + r) + h * kQk + 8 * piece);
      lo = __ldg(src);
      hi = __ldg(src + 1);
    }
    *reinterpret_cast<uint4*>(q_tile + PieceOffset(r, piece)) =
        make_uint4(PackBf16(lo.x, lo.y), PackBf16(lo.z, lo.w), PackBf16(hi.x, hi.y), PackBf16(hi.z, hi.w));
  }
  FenceProxyAsyncShared();  // Q's stores, visible to the products
  SyncGroup(group);
  const uint32_t q_address = base_address + group * kQGroupBytes;

  float o[kV / 2];  // 64 x 128 accumulator: n8 block j at o[4j ..]
#pragma unroll
  for (int i = 0; i < kV / 2; ++i) o[i] = 0.0f;
  // This lane's two rows (half 0: row g, half 1: row g + 8 of the warp's 16); -1: no query.
  const int row_lo = group_row0 + 16 * warp + (lane >> 2);
  const int64_t pos[2] = {row_lo < rows ? pos0 + row_lo : -1, row_lo + 8 < rows ? pos0 + row_lo + 8 : -1};
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}, alpha[2];
  float s[kKeys / 2];  // 64 x 64 scores, then probabilities: n8 block j at s[4j ..]
  uint32_t pa[kKeys / 16][4];

  WaitBarrier(&full[0], 0);  // bulk copies and products are both the async proxy: no fence
  IssueScores(s, q_address, stages_address);
  WgmmaWait<0>();
  PinAccumulators(s);
  CausalSoftmaxTile<kKeys>(s, key0, pos0, pos, a.scale_log2, lane, m, l, alpha);
  PackProbabilities(s, pa);
  for (int64_t t = 1; t < tiles; ++t) {
    const int stage = static_cast<int>(t % kStages), previous = static_cast<int>((t - 1) % kStages);
    WaitBarrier(&full[stage], static_cast<unsigned>((t / kStages) & 1));
    IssueScores(s, q_address, stages_address + stage * kStageBytes);
    IssueValues(o, pa, stages_address + previous * kStageBytes + kKBytes);
    WgmmaWait<1>();  // the scores are in; P·V of the tile before may still run
    PinAccumulators(s);
    CausalSoftmaxTile<kKeys>(s, key0 + t * kKeys, pos0, pos, a.scale_log2, lane, m, l, alpha);
    WgmmaWait<0>();
    PinAccumulators(o);
    ArriveBarrier(&empty[previous]);
    PackProbabilities(s, pa);
    if (alpha[0] != 1.0f || alpha[1] != 1.0f) {  // a row's reference maximum moved (few tiles)
#pragma unroll
      for (int i = 0; i < kV / 2; ++i) o[i] *= alpha[(i >> 1) & 1];
    }
  }
  const int last = static_cast<int>((tiles - 1) % kStages);
  IssueValues(o, pa, stages_address + last * kStageBytes + kKBytes);
  WgmmaWait<0>();
  PinAccumulators(o);
  ArriveBarrier(&empty[last]);

  SumRowsOverQuad(l);
  RowFinish finish[2];
  FinishRows(sink.window, m, l, sink.first_row, row_lo, rows, h, gridDim.y, finish);
#pragma unroll
  for (int j = 0; j < kV / 8; ++j)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = row_lo + 8 * half;
      if (r >= rows) continue;
      float* dst = RowF32(sink.out, sink.first_row + r) + h * kV + 8 * j + 2 * (lane & 3);
      StoreFinished(dst, finish[half], o[4 * j + 2 * half], o[4 * j + 2 * half + 1]);
    }
  StoreRowLse(sink.window, finish, sink.first_row, row_lo, rows, h, gridDim.y, lane);
}

// Grid: (tiles, heads, key splits).
__global__ void __launch_bounds__(kThreads, 1) MlaExpandedWgmmaKernel(MlaExpandedArgs a) {
  extern __shared__ unsigned char raw[];
  uint32_t base_address;
  unsigned char* q_tiles = SwizzleAlignedShared(raw, base_address);
  unsigned char* stages = q_tiles + 2 * kQGroupBytes;
  const uint32_t stages_address = base_address + 2 * kQGroupBytes;
  auto* full = reinterpret_cast<uint64_t*>(stages + kStages * kStageBytes);
  uint64_t* empty = full + kStages;
  InitStageRing(full, empty, kStages, 1, kConsumerThreads);

  const MlaRowTile tile = a.call.tiles[blockIdx.x];
  const int h = blockIdx.y;
  const MlaSequence seq = a.call.seqs[tile.seq];
  const int rows = static_cast<int>(seq.rows.length - tile.row < kRows ? seq.rows.length - tile.row : kRows);
  const int64_t first_row = seq.rows.begin + tile.row;  // packed row of the block's first query
  const int64_t pos0 = seq.num_cached + tile.row;       // its position
  const WindowTiles keys = TilesInWindow(a.call.window, seq.num_cached + seq.rows.length, pos0 + rows - 1);
  if (keys.count == 0) return;
  const SplitTiles part = TilesOfSplit(keys.count);
  const RowSink sink = SinkOf(a, first_row, kRows);
  if (part.count == 0) {
    if (threadIdx.x < kConsumerThreads) MarkRowsUnreached(sink, rows, h, gridDim.y, threadIdx.x, kConsumerThreads);
    return;
  }
  if (threadIdx.x >= kConsumerThreads) {
    if (threadIdx.x == kConsumerThreads) {
      const void* key_tiles = a.call.key_tiles[tile.seq];
      if (key_tiles != nullptr) {
        Produce(KeyTile(key_tiles, h, keys.length, part.first * kKeys), part.count, stages, full, empty);
      } else {
        const auto* maps = reinterpret_cast<const CUtensorMap*>(a.call.tile_maps[tile.seq].bytes);
        ProduceFromMaps(maps, h, part.first, part.count, stages, full, empty);
      }
    }
  } else {
    Consume(a, sink, pos0, first_row, rows, h, keys.begin + part.first * kKeys, part.count, q_tiles, base_address,
            stages_address, full, empty);
  }
}

}  // namespace

bool MlaExpandedWgmmaRuns() { return WgmmaRuns(); }

bool EncodeMlaExpandedTileMaps(const MlaParams& params, TensorView kv, TensorView rope, MlaExpandedTileMaps& maps) {
  static_assert(sizeof(MlaExpandedTileMaps) == 2 * sizeof(CUtensorMap) && alignof(MlaExpandedTileMaps) >= 64);
  auto* out = reinterpret_cast<CUtensorMap*>(maps.bytes);
  return MlaExpandedWgmmaRuns() && MlaExpandedTcShapes(params) && kv.dtype == DType::kBF16 &&
         rope.dtype == DType::kBF16 && kv.cols == params.num_heads * (kNope + kV) && rope.cols == kRope &&
         kv.rows == rope.rows &&
         EncodeBf16TileMap(out, kv.data, kv.rows, kv.cols, kv.row_stride, kKeys) &&
         EncodeBf16TileMap(out + 1, rope.data, rope.rows, rope.cols, rope.row_stride, kKeys);
}

int LaunchMlaExpandedWgmma(const MlaParams& params, TensorView q, const MlaExpandedCall& call, TensorView out,
                           Stream stream) {
  if (!MlaExpandedWgmmaRuns()) return static_cast<int>(cudaErrorInvalidDeviceFunction);
  if (!MlaExpandedCallValid(params, q, call, out)) return static_cast<int>(cudaErrorInvalidValue);
  if (call.num_tiles == 0) return 0;
  if (const int error = AllowDynamicSmem(MlaExpandedWgmmaKernel, kSharedBytes); error != 0) return error;
  const dim3 grid(static_cast<unsigned>(call.num_tiles), static_cast<unsigned>(params.num_heads),
                  static_cast<unsigned>(call.splits.count));
  MlaExpandedWgmmaKernel<<<grid, kThreads, kSharedBytes, static_cast<cudaStream_t>(stream)>>>(
      MakeMlaExpandedArgs(params, q, call, out));
  return static_cast<int>(cudaGetLastError());
}

}  // namespace deltaserve::kernels::cuda
