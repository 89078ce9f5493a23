// Expanded MLA attention (prefill) on tensor cores, flash-attention style. The keys and values are
// first written once in bf16 key tiles (MlaExpandedKeysValuesKernel; mla_expanded_tc.h); then a
// block holds 64 query rows of one head (16 per warp, Q in registers as mma operands) and walks
// the causal keys in tiles of 64, each tile copied into shared memory with cp.async while the one
// before is in use (two stages). Scores on mma.sync, the online softmax in registers (log2
// domain), and P·V with the probabilities reused from the score accumulators as bf16 operands.
// The fp32 kernel in mla_attention.cu (CUDA cores) took ~0.76 s per layer at 32k tokens.
#include "kernels/cuda/mla_expanded_tc.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/mla_key_tiles.cuh"
#include "kernels/cuda/mla_softmax.cuh"
#include "kernels/cuda/mma_tiles.cuh"

namespace deltaserve::kernels::cuda {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kRows = static_cast<int>(kMlaExpandedTcRows);
static_assert(kRows == 16 * kWarps, "16 query rows per warp");
constexpr int kKeys = 64;  // keys per tile
constexpr int kNope = 128, kRope = 64, kQk = kNope + kRope, kV = 128;
// Shared row strides in bf16: rows 16-byte aligned, and 8 consecutive rows 16 bytes apart modulo
// 128 (conflict-free ldmatrix).
constexpr int kQkLd = kQk + 8, kVLd = kV + 8;
constexpr int kKeyChunks = kQk / 8, kValueChunks = kV / 8;  // 16-byte pieces of a row

struct Stage {
  bf16 k[kKeys][kQkLd];
  bf16 v[kKeys][kVLd];
};
static_assert(kRows == kKeys, "Q is staged in the second stage's key rows");

__device__ __forceinline__ void StoreBf16x4(bf16* dst, float4 v) { *reinterpret_cast<uint2*>(dst) = PackBf16(v); }

// Grid: ceil(heads * padded / 8) blocks of 8 warps (padded: the positions rounded up to whole
// tiles); warp w writes row 8·block + w of the [heads, padded] rows (head = row / padded,
// position first + row % padded) into its tile, zeros past the `length` positions.
__global__ void __launch_bounds__(256) MlaExpandedKeysValuesKernel(TensorView kv, const MlaSequence* seq,
                                                                   int64_t first, int64_t length, int heads,
                                                                   int64_t latent_width, int rank,
                                                                   unsigned char* key_tiles) {
  const int64_t padded = MlaExpandedKeyTiles(length) * kMlaExpandedTileKeys;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * 8 + threadIdx.x / 32;
  if (row >= padded * heads) return;
  const int lane = threadIdx.x % 32;
  const int h = static_cast<int>(row / padded);
  const int64_t j = row % padded;
  // 80 groups of four per row: 32 nope, 16 rope, 32 value; lane takes 0-31 then 32-63, then 64-79.
  float4 v[3];
#pragma unroll
  for (int u = 0; u < 3; ++u) v[u] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  if (j < length) {
    const int64_t position = first + j;
    const int64_t kv_col = static_cast<int64_t>(h) * (kNope + kV);
    const bool pe_bf16 = seq->cache.dtype == DType::kBF16;
    const float* pe = pe_bf16 ? nullptr : seq->cache.Row(position, latent_width) + rank;
    const bf16* pe16 = pe_bf16 ? seq->cache.PageOf<bf16>(position) : nullptr;
    const LatentRowPlacement pe_place =
        LatentRowPlacement::Place(DType::kBF16, latent_width, seq->cache.page_rows, position);
#pragma unroll
    for (int u = 0; u < 3; ++u) {
      const int c = 4 * (lane + 32 * u);
      if (c < kNope) {
        v[u] = Load4(kv, j, kv_col + c);
      } else if (c < kQk) {
        if (pe_bf16) {
          // Four consecutive elements from a multiple of 4: within one 16-byte chunk wherever it sits.
          v[u] = UnpackBf16(*reinterpret_cast<const uint2*>(pe16 + pe_place.Offset(rank + c - kNope)));
        } else {
          v[u] = __ldg(reinterpret_cast<const float4*>(pe + (c - kNope)));
        }
      } else if (c < kQk + kV) {
        v[u] = Load4(kv, j, kv_col + kNope + (c - kQk));
      }
    }
  }
  unsigned char* tile = key_tiles + KeyTileStart(h, length, j);
  const int r = static_cast<int>(j % kMlaExpandedTileKeys);
#pragma unroll
  for (int u = 0; u < 3; ++u) {
    const int c = 4 * (lane + 32 * u);  // keys' columns, then the values' from kQk
    if (c < kQk + kV) StoreBf16x4(reinterpret_cast<bf16*>(tile + KeyTileChunkOffset(r, c / 8) + (c % 8) * 2), v[u]);
  }
}

// Copies key tile `t` of one head (`tile`: its first byte) into a stage; commits the group.
__device__ __forceinline__ void LoadStage(Stage& st, const unsigned char* tile) {
  for (int i = threadIdx.x; i < kKeys * (kKeyChunks + kValueChunks); i += kThreads) {
    const int key = i / (kKeyChunks + kValueChunks), chunk = i % (kKeyChunks + kValueChunks);
    const unsigned char* from = tile + KeyTileChunkOffset(key, chunk);
    if (chunk < kKeyChunks) {
      CopyAsync16(&st.k[key][8 * chunk], from);
    } else {
      CopyAsync16(&st.v[key][8 * (chunk - kKeyChunks)], from);
    }
  }
  CommitAsync();
}

// Grid: (tiles, heads).
__global__ void __launch_bounds__(kThreads) MlaExpandedTcKernel(MlaExpandedArgs a) {
  extern __shared__ __align__(16) unsigned char raw[];
  Stage* stages = reinterpret_cast<Stage*>(raw);
  const MlaRowTile tile = a.call.tiles[blockIdx.x];
  const int h = blockIdx.y;
  const MlaSequence seq = a.call.seqs[tile.seq];
  const int rows = static_cast<int>(seq.rows.length - tile.row < kRows ? seq.rows.length - tile.row : kRows);
  const int64_t first_row = seq.rows.begin + tile.row;  // packed row of the block's first query
  const int64_t pos0 = seq.num_cached + tile.row;       // its position
  const int64_t max_key = pos0 + rows - 1;
  const WindowTiles keys = TilesInWindow(a.call.window, seq.num_cached + seq.rows.length, max_key);
  if (keys.count == 0) return;
  const SplitTiles part = TilesOfSplit(keys.count);
  const RowSink sink = SinkOf(a, first_row, kRows);
  if (part.count == 0) {
    MarkRowsUnreached(sink, rows, h, gridDim.y, threadIdx.x, kThreads);
    return;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const void* key_tiles = a.call.key_tiles[tile.seq];

  LoadStage(stages[0], KeyTile(key_tiles, h, keys.length, part.first * kKeys));
  bf16(*q_rows)[kQkLd] = stages[1].k;  // Q passes through the second stage before its first tile
  for (int i = threadIdx.x; i < kRows * kQk / 4; i += kThreads) {
    const int r = i / (kQk / 4), c = 4 * (i % (kQk / 4));
    float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (r < rows) v = __ldg(reinterpret_cast<const float4*>(RowF32(a.q, first_row + r) + h * kQk + c));
    StoreBf16x4(&q_rows[r][c], v);
  }
  __syncthreads();
  TileA16 qa[kQk / 16];
#pragma unroll
  for (int ks = 0; ks < kQk / 16; ++ks) LoadA(qa[ks], &q_rows[16 * warp][16 * ks], kQkLd, lane);

  TileAcc16 o[kV / 16];
#pragma unroll
  for (int vt = 0; vt < kV / 16; ++vt) ZeroTile(o[vt]);
  // This lane's two rows (half 0: row g, half 1: row g + 8 of the warp's 16); -1: no query.
  const int row_lo = 16 * warp + (lane >> 2);
  const int64_t pos[2] = {row_lo < rows ? pos0 + row_lo : -1, row_lo + 8 < rows ? pos0 + row_lo + 8 : -1};
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

  for (int64_t t = 0; t < part.count; ++t) {
    const int64_t j0 = keys.begin + (part.first + t) * kKeys;
    __syncthreads();  // the stage the next copy fills is free (first: Q is in registers)
    if (t + 1 < part.count) {
      LoadStage(stages[(t + 1) % 2], KeyTile(key_tiles, h, keys.length, (part.first + t + 1) * kKeys));
      WaitAsync<1>();
    } else {
      WaitAsync<0>();
    }
    __syncthreads();  // tile t is in stages[t % 2]
    const Stage& st = stages[t % 2];

    TileAcc16 p[kKeys / 16];  // scores, then probabilities
#pragma unroll
    for (int kt = 0; kt < kKeys / 16; ++kt) {
      ZeroTile(p[kt]);
#pragma unroll
      for (int ks = 0; ks < kQk / 16; ++ks) {
        TileB16 b;
        LoadBTransposed(b, &st.k[16 * kt][16 * ks], kQkLd, lane);
        MmaTile(p[kt], qa[ks], b);
      }
    }
    float s[kKeys / 2], alpha[2];
#pragma unroll
    for (int i = 0; i < kKeys / 2; ++i) s[i] = p[i / 8].x[i % 8];
    CausalSoftmaxTile<kKeys>(s, j0, pos0, pos, a.scale_log2, lane, m, l, alpha);
#pragma unroll
    for (int i = 0; i < kKeys / 2; ++i) p[i / 8].x[i % 8] = s[i];
    if (alpha[0] != 1.0f || alpha[1] != 1.0f) {  // a row's reference maximum moved (few tiles)
#pragma unroll
      for (int vt = 0; vt < kV / 16; ++vt)
#pragma unroll
        for (int i = 0; i < 8; ++i) o[vt].x[i] *= alpha[(i >> 1) & 1];
    }

#pragma unroll
    for (int kt = 0; kt < kKeys / 16; ++kt) {
      // The score accumulator's layout is the A operand's: rows g / g + 8, keys 2tq.. / 8 + 2tq..
      TileA16 pa;
      pa.x[0] = PackBf16(p[kt].x[0], p[kt].x[1]);
      pa.x[1] = PackBf16(p[kt].x[2], p[kt].x[3]);
      pa.x[2] = PackBf16(p[kt].x[4], p[kt].x[5]);
      pa.x[3] = PackBf16(p[kt].x[6], p[kt].x[7]);
#pragma unroll
      for (int vt = 0; vt < kV / 16; ++vt) {
        TileB16 b;
        LoadB(b, &st.v[16 * kt][16 * vt], kVLd, lane);
        MmaTile(o[vt], pa, b);
      }
    }
  }

  SumRowsOverQuad(l);
  RowFinish finish[2];
  FinishRows(sink.window, m, l, sink.first_row, row_lo, rows, h, gridDim.y, finish);
#pragma unroll
  for (int vt = 0; vt < kV / 16; ++vt)
#pragma unroll
    for (int i = 0; i < 8; i += 2) {
      const int half = (i >> 1) & 1, r = 16 * warp + AccRow(i, lane);
      if (r >= rows) continue;
      float* dst = RowF32(sink.out, sink.first_row + r) + h * kV + 16 * vt + AccCol(i, lane);
      StoreFinished(dst, finish[half], o[vt].x[i], o[vt].x[i + 1]);
    }
  StoreRowLse(sink.window, finish, sink.first_row, row_lo, rows, h, gridDim.y, lane);
}

// Grid: (tiles, heads), 8 warps: warp w merges rows w, w + 8, .. of the tile, lane the row's
// value columns 4·lane .. 4·lane + 3 (v 128), over the split blocks' outputs (MlaKeySplits) and,
// where the window merges, what out already holds.
__global__ void __launch_bounds__(256) MlaMergeSplitsKernel(MlaExpandedCall call, int tile_rows, TensorView out) {
  const MlaRowTile tile = call.tiles[blockIdx.x];
  const MlaSequence seq = call.seqs[tile.seq];
  const int rows = static_cast<int>(seq.rows.length - tile.row < tile_rows ? seq.rows.length - tile.row : tile_rows);
  const int h = blockIdx.y, heads = gridDim.y, lane = threadIdx.x % 32;
  const int splits = call.splits.count;
  const int64_t split_rows = static_cast<int64_t>(gridDim.x) * tile_rows;  // rows of one split's slice
  const MlaKeyWindow& window = call.window;
  for (int r = threadIdx.x / 32; r < rows; r += 8) {
    const int64_t row = seq.rows.begin + tile.row + r;
    const int64_t first_part = static_cast<int64_t>(blockIdx.x) * tile_rows + r;  // in split 0's slice
    const float before = window.merge ? window.lse[row * heads + h] : -INFINITY;
    float top = before;
    for (int z = 0; z < splits; ++z) top = fmaxf(top, call.splits.lse[(z * split_rows + first_part) * heads + h]);
    float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    float total = 0.0f;
    for (int z = 0; z < splits; ++z) {
      const float lse = call.splits.lse[(z * split_rows + first_part) * heads + h];
      if (lse == -INFINITY) continue;  // no key of this split reaches the row
      const float w = exp2f(lse - top);
      const float4 part = *reinterpret_cast<const float4*>(call.splits.out + (z * split_rows + first_part) * out.cols +
                                                           h * kV + 4 * lane);
      sum = make_float4(fmaf(w, part.x, sum.x), fmaf(w, part.y, sum.y), fmaf(w, part.z, sum.z), fmaf(w, part.w, sum.w));
      total += w;
    }
    float* dst = RowF32(out, row) + h * kV + 4 * lane;
    if (before != -INFINITY) {
      const float w = exp2f(before - top);
      const float4 earlier = *reinterpret_cast<const float4*>(dst);
      sum = make_float4(fmaf(w, earlier.x, sum.x), fmaf(w, earlier.y, sum.y), fmaf(w, earlier.z, sum.z),
                        fmaf(w, earlier.w, sum.w));
      total += w;
    }
    const float inv = 1.0f / total;
    *reinterpret_cast<float4*>(dst) = make_float4(sum.x * inv, sum.y * inv, sum.z * inv, sum.w * inv);
    __syncwarp();  // every lane has read the row's earlier log-sum-exp
    if (window.lse != nullptr && lane == 0) window.lse[row * heads + h] = top + log2f(total);
  }
}

}  // namespace

bool MlaExpandedTcShapes(const MlaParams& params) {
  // A positive scale: the softmax takes its maxima over the raw scores (mla_softmax.cuh).
  return params.qk_nope_dim == kNope && params.qk_rope_dim == kRope && params.v_dim == kV && params.scale > 0 &&
         params.num_heads >= 1 && params.num_heads <= 65535 && params.kv_lora_rank % 4 == 0;
}

bool MlaExpandedTcSupports(const MlaParams& params, TensorView q, TensorView out) {
  return MlaExpandedTcShapes(params) && q.dtype == DType::kF32 && out.dtype == DType::kF32 &&
         q.row_stride % 4 == 0 && IsAligned(q.data, 16) && out.row_stride % 2 == 0 && IsAligned(out.data, 8);
}

int MlaKeySplitCount(int64_t blocks, int64_t most_keys, int64_t multiprocessors) {
  constexpr int64_t kMostSplits = 16, kLeastTiles = 16;
  if (blocks < 1 || blocks >= multiprocessors) return 1;
  const int64_t by_keys = MlaExpandedKeyTiles(most_keys) / kLeastTiles;
  return static_cast<int>(std::max<int64_t>(1, std::min({multiprocessors / blocks, kMostSplits, by_keys})));
}

std::vector<MlaRowTile> MlaExpandedRowTiles(const MlaSequence* seqs, int64_t count, int64_t tile_rows) {
  std::vector<MlaRowTile> tiles;
  for (int64_t i = 0; i < count; ++i) {
    if (seqs[i].form == MlaForm::kAbsorbed) continue;
    for (int64_t row = 0; row < seqs[i].rows.length; row += tile_rows) {
      tiles.push_back({static_cast<int32_t>(i), static_cast<int32_t>(row)});
    }
  }
  const auto keys = [&](const MlaRowTile& t) {
    const MlaSequence& seq = seqs[t.seq];
    return seq.num_cached + std::min(seq.rows.length, t.row + tile_rows);
  };
  std::stable_sort(tiles.begin(), tiles.end(),
                   [&](const MlaRowTile& a, const MlaRowTile& b) { return keys(a) > keys(b); });
  return tiles;
}

int LaunchMlaExpandedKeysValues(const MlaParams& params, TensorView kv, const MlaSequence* seq, int64_t first,
                                int64_t length, void* key_tiles, Stream stream) {
  const int64_t heads = params.num_heads;
  const bool bf16_kv = kv.dtype == DType::kBF16;
  const int64_t alignment = bf16_kv ? 8 : 16;  // a group of four values
  if (params.qk_nope_dim != kNope || params.qk_rope_dim != kRope || params.v_dim != kV ||
      params.kv_lora_rank % 4 != 0 || (kv.dtype != DType::kF32 && !bf16_kv) || kv.cols != heads * (kNope + kV) ||
      kv.row_stride % 4 != 0 || !IsAligned(kv.data, alignment) || kv.rows < length || first < 0 ||
      !IsAligned(key_tiles, 16)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (length == 0) return 0;
  const int64_t blocks = (MlaExpandedKeyTiles(length) * kMlaExpandedTileKeys * heads + 7) / 8;
  if (seq == nullptr || !FitsGridX(blocks)) return static_cast<int>(cudaErrorInvalidValue);
  MlaExpandedKeysValuesKernel<<<static_cast<unsigned>(blocks), 256, 0, static_cast<cudaStream_t>(stream)>>>(
      kv, seq, first, length, static_cast<int>(heads), params.kv_lora_rank + kRope,
      static_cast<int>(params.kv_lora_rank), static_cast<unsigned char*>(key_tiles));
  return static_cast<int>(cudaGetLastError());
}

bool MlaExpandedCallValid(const MlaParams& params, TensorView q, const MlaExpandedCall& call, TensorView out) {
  const int64_t heads = params.num_heads;
  const MlaKeySplits& splits = call.splits;
  return MlaExpandedTcSupports(params, q, out) && q.cols == heads * kQk && out.cols == heads * kV &&
         out.rows == q.rows && call.num_tiles >= 0 && FitsGridX(call.num_tiles) &&
         (call.num_tiles == 0 || (call.seqs != nullptr && call.key_tiles != nullptr && call.tiles != nullptr)) &&
         MlaKeyWindowValid(call.window) && splits.count >= 1 && splits.count <= 65535 &&
         (splits.count == 1 || (splits.out != nullptr && splits.lse != nullptr));
}

int LaunchMlaExpandedTc(const MlaParams& params, TensorView q, const MlaExpandedCall& call, TensorView out,
                        Stream stream) {
  if (!MlaExpandedCallValid(params, q, call, out) || call.tile_maps != nullptr) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (call.num_tiles == 0) return 0;
  constexpr size_t kSmem = 2 * sizeof(Stage);
  if (const int error = AllowDynamicSmem(MlaExpandedTcKernel, kSmem); error != 0) return error;
  const dim3 grid(static_cast<unsigned>(call.num_tiles), static_cast<unsigned>(params.num_heads),
                  static_cast<unsigned>(call.splits.count));
  MlaExpandedTcKernel<<<grid, kThreads, kSmem, static_cast<cudaStream_t>(stream)>>>(
      MakeMlaExpandedArgs(params, q, call, out));
  return static_cast<int>(cudaGetLastError());
}

int LaunchMlaExpandedMergeSplits(const MlaParams& params, const MlaExpandedCall& call, int64_t tile_rows,
                                 TensorView out, Stream stream) {
  const MlaKeySplits& splits = call.splits;
  if (out.dtype != DType::kF32 || out.cols != params.num_heads * kV || out.row_stride % 4 != 0 ||
      !IsAligned(out.data, 16) || splits.count < 2 || splits.out == nullptr || splits.lse == nullptr ||
      tile_rows < 1 || tile_rows > 1024 || !MlaKeyWindowValid(call.window) || !FitsGridX(call.num_tiles)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (call.num_tiles == 0) return 0;
  if (call.seqs == nullptr || call.tiles == nullptr) return static_cast<int>(cudaErrorInvalidValue);
  MlaMergeSplitsKernel<<<dim3(static_cast<unsigned>(call.num_tiles), static_cast<unsigned>(params.num_heads)), 256,
                         0, static_cast<cudaStream_t>(stream)>>>(call, static_cast<int>(tile_rows), out);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace deltaserve::kernels::cuda
