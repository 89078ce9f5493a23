// Absorbed MLA decode on tensor cores (serving precision), on Hopper's warpgroup products (wgmma,
// sm_90a). The query heads of one row share one latent key/value stream, so the attention is a
// [32 heads × 576] by [keys × 576] product per row, computed transposed so that no row of a
// product is padding at 32 heads: Sᵀ = K·Q_absᵀ (64 keys × 32 heads, the key tile as A) and
// Oᵀ += Vᵀ·Pᵀ (512 latent columns × 32 heads, the key tile read MN-major as Vᵀ).
// Two launches: q absorbed into the latent space (q_lat = W_UKᵀ q_nope, then q_pe) as bf16, then
// the attention. The absorbed rows' 64-key tiles are cut into one equal run per block (one block
// per SM; BuildMlaKeySplit), so that unequal histories keep every SM busy to the end; a block
// takes its run a row at a time and writes each segment's (a row's part of the run) unnormalised
// state, which MlaAbsorbedMergeKernel merges (more than one block) and MlaAbsorbedProjectKernel
// multiplies by W_UV (mla_attention.cu). In the attention a producer warp copies each tile's nine
// column groups (64 keys × 128 bytes) with one bulk copy each (per page piece where a tile spans
// pages) into one of two stages; the pages hold each group's rows already in the 128-byte swizzle
// of the operand tiles (kernels::LatentOffset). Two consumer warpgroups split QK over the dot
// dimension, their partial scores meeting in shared memory; all 256 consumer threads then run
// the online softmax (8 per head) and write Pᵀ in bf16, and each warpgroup accumulates Oᵀ for 256
// latent columns in registers. Two consumer barriers per 64 keys.
#include "kernels/cuda/mla_absorbed_tc.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/mla_rows.cuh"
#include "kernels/cuda/wgmma.cuh"

namespace deltaserve::kernels::cuda {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kThreads = 256;  // the absorb kernel's block
constexpr int kWarps = kThreads / 32;
constexpr int kAbsorbRows = 8; // rows per block in the absorb kernel
constexpr int kAbsorbCols = 16 * 8;  // latent columns per absorb block: 8 per lane of a half-warp
constexpr int kMaxNope = 256;        // q_nope columns the absorb kernel holds per row

// The attention kernel's shapes are compile-time: Kimi's.
constexpr int kConsumerThreads = 256;  // warpgroups 0 and 1
constexpr int kProducerThreads = 32;   // warp 8: the bulk copies
constexpr int kAttentionThreads = kConsumerThreads + kProducerThreads;
constexpr int kHeadRows = 32;  // query heads per row, padded: the products' n
constexpr int kRank = 512, kRope = 64, kDot = kRank + kRope;
constexpr int kKeys = 64;      // keys per tile: one m64 product of QK
constexpr int kGroups = kDot / 64;       // 128-byte column groups of a latent row
constexpr int kRankGroups = kRank / 64;  // those of the values (the latent part)
constexpr int kQkSteps = kDot / 16 / 2;  // QK's k16 steps per warpgroup: half the dot each
constexpr uint32_t kGroupBytes = kKeys * 128;           // one column group of a tile: 8 KiB
constexpr uint32_t kTileBytes = kGroups * kGroupBytes;  // 72 KiB
constexpr int kStages = 2;
constexpr uint32_t kQGroupBytes = kHeadRows * 128;  // Q_abs: 32 heads × 64 columns per group
constexpr uint32_t kQBytes = kGroups * kQGroupBytes;
constexpr uint32_t kPBytes = kHeadRows * 128;  // Pᵀ as [heads, keys] (a K-major B)
constexpr int kSLd = kHeadRows + 4;  // partial scores [key][head], fp32: conflict-free reads
constexpr uint32_t kScoreBytes = sizeof(float) * 2 * kKeys * kSLd;
constexpr uint32_t kStatBytes = sizeof(float) * 3 * kHeadRows;  // m (log2), l, alpha per head
constexpr size_t kAttentionSmemBytes =
    1024 + kStages * kTileBytes + kQBytes + kPBytes + kScoreBytes + kStatBytes + 2 * kStages * sizeof(uint64_t);
constexpr int kSoftmaxThreads = kConsumerThreads / kHeadRows;  // per head: keys sub + 8i
static_assert(kSoftmaxThreads * 8 == kKeys, "each softmax thread takes 8 keys of a tile");
constexpr float kMaxLag = 8.0f;  // log2 units a tile may exceed the reference max by before it moves

// Grid (heads, kRank / kAbsorbCols, ceil(T / 8)). q_abs[t][h] = [W_UK[h]ᵀ q_nope[t, h] (rank) ‖
// q_pe[t, h] (rope)] in bf16, for every packed row (rows of other forms are computed too and never
// read). Half-warp j of warp w reduces the W_UK rows c ≡ 2w + j (mod 16), each lane 8 latent
// columns per 16-byte load; the half-warps meet over a shuffle, the warps in shared memory. In the
// serving layout the thread's first W_UK rows (at Kimi's nope, all of them) are loaded before the
// block waits for the kernels ahead (no kernel writes weights; other layouts are asked into L2),
// and the rows' q (nope and rope) is read by one pass of loads after it: at small batches this
// kernel is all latency (reading each row's rope between barriers cost ~1 µs a row at 8 rows).
// Where `append` has data, blocks (0, 0, z) also append its rows 8z.. to their sequences' caches
// (warp w row 8z + w, as MlaAppendKernel), so that a decode step needs no append launch.
__global__ void __launch_bounds__(kThreads) MlaAbsorbQKernel(TensorView q, TensorView kv_b, int heads, int nope,
                                                             int rope, int v_dim, bf16* q_abs, TensorView append,
                                                             const MlaSequence* seqs, int64_t num_seqs) {
  __shared__ float q_nope[kAbsorbRows][kMaxNope];
  __shared__ float q_rope[kAbsorbRows][kRope];
  __shared__ float partial[kWarps][kAbsorbRows][kAbsorbCols];
  __shared__ int append_seq[kAbsorbRows];
  const int h = blockIdx.x;
  const int r0 = blockIdx.y * kAbsorbCols;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int first_row = 2 * warp + lane / 16, col = r0 + (lane % 16) * 8;
  constexpr int kRowStep = 2 * kWarps;
  constexpr int kEarlyRows = 8;  // W_UK rows a thread loads before the wait: all of them at nope 128
  const int64_t w_row = static_cast<int64_t>(h) * (nope + v_dim);
  const auto* w_bf16 = static_cast<const bf16*>(kv_b.data) + (w_row * kv_b.row_stride + col);
  const bool serving =
      kv_b.dtype == DType::kBF16 && kv_b.row_stride % 8 == 0 && reinterpret_cast<uintptr_t>(kv_b.data) % 16 == 0;
  uint4 early[kEarlyRows];  // row first_row + u · kRowStep
  if (serving) {
#pragma unroll
    for (int u = 0; u < kEarlyRows; ++u) {
      const int c = first_row + u * kRowStep;
      if (c < nope) early[u] = __ldg(reinterpret_cast<const uint4*>(w_bf16 + c * kv_b.row_stride));
    }
  } else {
    const int element = kv_b.dtype == DType::kF32 ? 4 : 2;
    for (int c = first_row; c < nope; c += kRowStep) {
      const char* p = static_cast<const char*>(kv_b.data) + ((w_row + c) * kv_b.row_stride + col) * element;
      asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
    }
  }
  const int64_t t0 = static_cast<int64_t>(blockIdx.z) * kAbsorbRows;
  const int rows = static_cast<int>(q.rows - t0 < kAbsorbRows ? q.rows - t0 : kAbsorbRows);
  const bool appends = append.data != nullptr && blockIdx.x == 0 && blockIdx.y == 0;
  if (appends) MapRows(seqs, num_seqs, -1, t0, rows, append_seq);  // the uploaded descriptors
  FollowPriorKernels();
  const int qk = nope + rope, dot = kRank + rope;
  for (int i = threadIdx.x; i < kAbsorbRows * qk; i += kThreads) {
    const int r = i / qk, c = i % qk;
    const float v = r < rows ? RowF32(q, t0 + r)[h * qk + c] : 0.0f;
    if (c < nope) {
      q_nope[r][c] = v;
    } else {
      q_rope[r][c - nope] = v;
    }
  }
  if (appends && warp < rows && append_seq[warp] >= 0) AppendLatentRow(append, seqs[append_seq[warp]], t0 + warp);
  __syncthreads();
  float acc[kAbsorbRows][8] = {};
  auto accumulate = [&](const float (&w)[8], int c) {
#pragma unroll
    for (int r = 0; r < kAbsorbRows; ++r) {
      const float qv = q_nope[r][c];
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[r][i] = fmaf(w[i], qv, acc[r][i]);
    }
  };
  const auto accumulate_raw = [&](const uint4& raw, int c) {
    const auto* pairs = reinterpret_cast<const __nv_bfloat162*>(&raw);
    float w[8];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 f = __bfloat1622float2(pairs[i]);
      w[2 * i] = f.x, w[2 * i + 1] = f.y;
    }
    accumulate(w, c);
  };
  if (serving) {
#pragma unroll
    for (int u = 0; u < kEarlyRows; ++u) {
      const int c = first_row + u * kRowStep;
      if (c < nope) accumulate_raw(early[u], c);
    }
    // Past the early rows (nope over 128): several rows in flight.
#pragma unroll 8
    for (int c = first_row + kEarlyRows * kRowStep; c < nope; c += kRowStep) {
      accumulate_raw(__ldg(reinterpret_cast<const uint4*>(w_bf16 + c * kv_b.row_stride)), c);
    }
  } else {
    for (int c = first_row; c < nope; c += kRowStep) {
      float w[8];
      Load8(kv_b, w_row + c, col, w);
      accumulate(w, c);
    }
  }
#pragma unroll
  for (int r = 0; r < kAbsorbRows; ++r) {
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[r][i] += __shfl_xor_sync(0xffffffffu, acc[r][i], 16);
    if (lane < 16) {
#pragma unroll
      for (int i = 0; i < 8; ++i) partial[warp][r][lane * 8 + i] = acc[r][i];
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < rows * kAbsorbCols; i += kThreads) {
    const int r = i / kAbsorbCols, j = i % kAbsorbCols;
    float sum = 0.0f;
#pragma unroll
    for (int v = 0; v < kWarps; ++v) sum += partial[v][r][j];
    q_abs[((t0 + r) * heads + h) * dot + r0 + j] = __float2bfloat16(sum);
  }
  if (blockIdx.y == 0) {
    for (int i = threadIdx.x; i < rows * rope; i += kThreads) {
      const int r = i / rope, c = i % rope;
      q_abs[((t0 + r) * heads + h) * dot + kRank + c] = __float2bfloat16(q_rope[r][c]);
    }
  }
}

struct AttentionArgs {
  const MlaSequence* seqs;
  const bf16* q_abs;  // [T, heads, dot]
  int heads;
  float scale;
  const MlaKeySplitBlock* blocks;  // [gridDim.x]
  const MlaKeySplitRow* rows;      // the absorbed rows, in order
  float* partial;  // [segment slots, heads, rank + 2]: m, l, Σ p c_n
};

// A block's run, a segment (its part of one absorbed row) at a time: the row's index among the
// absorbed rows (its slot is row + block), its packed row, the query's position, the sequence,
// and the segment's first tile in the row and tile count. Producer and consumers walk it alike.
struct Segment {
  int row;
  int64_t t, pos;
  MlaSequence seq;
  int first, count;
};

template <typename Body>
__device__ __forceinline__ void ForEachSegment(const AttentionArgs& a, Body body) {
  const MlaKeySplitBlock run = a.blocks[blockIdx.x];
  for (int row = run.row, first = run.first_tile, left = run.tiles; left > 0; ++row, first = 0) {
    const MlaKeySplitRow piece = row == run.row ? run.first_row : a.rows[row];
    const int count = piece.tiles - first < left ? piece.tiles - first : left;
    left -= count;
    const MlaSequence seq = a.seqs[piece.seq];
    body(Segment{row, piece.t, seq.num_cached + (piece.t - seq.rows.begin), seq, first, count});
  }
}

// The producer warp: each tile's live rows (those up to the query's position) by one bulk copy
// per column group and page piece, completing on the stage's `full` barrier; rows past the
// position zero-filled by ordinary stores first (they may hold anything, and a zero probability
// times NaN is NaN), fenced before any later bulk copy into the stage. Tiles wholly before the
// call's own rows are asked for before the kernel waits for the kernels ahead (the absorb, which
// appends a decode call's rows, or the append): earlier calls appended them, and every call starts
// with the upload of its inputs, which no later launch overtakes.
__device__ void ProduceTiles(const AttentionArgs& a, unsigned char* stages, uint64_t* full, uint64_t* empty) {
  const int lane = threadIdx.x % 32;
  int tile_count = 0;
  bool waited = false;
  ForEachSegment(a, [&](const Segment& s) {
    const int64_t page_rows = s.seq.cache.page_rows;
    for (int lt = 0; lt < s.count; ++lt, ++tile_count) {
      const int stage = tile_count % kStages;
      WaitBarrier(&empty[stage], static_cast<unsigned>((tile_count / kStages) & 1) ^ 1u);
      const int64_t key0 = static_cast<int64_t>(s.first + lt) * kKeys;
      if (!waited && key0 + kKeys > s.seq.num_cached) {
        WaitForPriorKernels();
        waited = true;
      }
      const int live = s.pos - key0 + 1 < kKeys ? static_cast<int>(s.pos - key0 + 1) : kKeys;
      unsigned char* tile = stages + stage * kTileBytes;
      if (live < kKeys) {
        for (int i = lane; i < (kKeys - live) * kGroups * 8; i += 32) {
          const int r = live + i / (kGroups * 8), chunk = i % (kGroups * 8);
          *reinterpret_cast<uint4*>(tile + (chunk / 8) * kGroupBytes + r * 128 + (chunk % 8) * 16) =
              make_uint4(0u, 0u, 0u, 0u);
        }
        FenceProxyAsyncShared();
        __syncwarp();
      }
      if (lane == 0) {
        ArriveExpectBytes(&full[stage], static_cast<unsigned>(live) * kDot * sizeof(bf16));
        for (int r = 0; r < live;) {
          const int64_t row = key0 + r, in_page = row % page_rows;
          const int n = page_rows - in_page < live - r ? static_cast<int>(page_rows - in_page) : live - r;
          // The piece's rows of each group are consecutive in the page (LatentRowPlacement).
          const LatentRowPlacement place = LatentRowPlacement::Place(DType::kBF16, kDot, page_rows, row);
          const bf16* first = s.seq.cache.PageOf<const bf16>(row) + place.start;
          for (int g = 0; g < kGroups; ++g) {
            BulkCopyToShared(tile + g * kGroupBytes + r * 128, first + g * place.group_stride, n * 128u, &full[stage]);
          }
          r += n;
        }
      }
      __syncwarp();
    }
  });
  if (!waited) WaitForPriorKernels();
}

__device__ __forceinline__ void SyncConsumers() { SyncGroup<kConsumerThreads>(0); }

// Consumer thread c (0..255) of warpgroup c / 128. QK: warpgroup w takes the dot's k16 steps
// [18w, 18w + 18) (the same code for both, no divergent products) into Sᵀ (keys 16 warp + g and
// + 8, heads 8j + 2tq and + 1), stored to its partial scores. Softmax: 8 threads per head, keys
// sub + 8i, the head's max and sum over shuffles, in the log2 domain, Pᵀ stored where its
// swizzled K-major tile puts it. PV: warpgroup w accumulates Oᵀ for latent columns
// [256w, 256w + 256), four m64 products of the tile's groups read MN-major. The partial states'
// m is a reference max (not always the running max, see kMaxLag), stored in natural-log units;
// m, l and O agree, which is all the merge needs.
__device__ void ConsumeTiles(const AttentionArgs& a, uint32_t stages_address, unsigned char* q_tile,
                             uint32_t q_address, unsigned char* p_tile, uint32_t p_address, float* scores,
                             float* stats, uint64_t* full, uint64_t* empty) {
  const int c = threadIdx.x, group = c / 128;
  const int warp = c / 32 % 4, lane = c % 32, g = lane >> 2, tq = lane & 3;
  const int heads = a.heads;
  float* m_row = stats;  // log2 domain
  float* l_row = stats + kHeadRows;
  float* alpha_row = stats + 2 * kHeadRows;
  const int s_head = c / kSoftmaxThreads, s_sub = c % kSoftmaxThreads;
  const float scale_log2 = a.scale * 1.4426950408889634f;
  WaitForPriorKernels();  // q_abs
  int tile_count = 0;
  ForEachSegment(a, [&](const Segment& s) {
    // The row's Q_abs into its swizzled K-major tile (zero past the real heads).
    for (int i = c; i < kHeadRows * (kDot / 8); i += kConsumerThreads) {
      const int h = i / (kDot / 8), piece = i % (kDot / 8);
      uint4 v = make_uint4(0u, 0u, 0u, 0u);
      if (h < heads) v = *reinterpret_cast<const uint4*>(a.q_abs + (s.t * heads + h) * kDot + 8 * piece);
      *reinterpret_cast<uint4*>(q_tile + (piece / 8) * kQGroupBytes + SwizzledChunkOffset(h, piece % 8)) = v;
    }
    if (c < kHeadRows) {
      m_row[c] = -INFINITY;
      l_row[c] = 0.0f;
    }
    FenceProxyAsyncShared();  // Q's stores, visible to the products
    SyncConsumers();
    float o[kRankGroups / 2][16];  // Oᵀ: this warpgroup's 4 column groups × 32 heads
#pragma unroll
    for (int mt = 0; mt < kRankGroups / 2; ++mt)
#pragma unroll
      for (int i = 0; i < 16; ++i) o[mt][i] = 0.0f;
    for (int lt = 0; lt < s.count; ++lt, ++tile_count) {
      const int stage = tile_count % kStages;
      const uint32_t tile_address = stages_address + stage * kTileBytes;
      WaitBarrier(&full[stage], static_cast<unsigned>((tile_count / kStages) & 1));
      {
        float partial_scores[16];
#pragma unroll
        for (int i = 0; i < 16; ++i) partial_scores[i] = 0.0f;
        WgmmaFence();
#pragma unroll
        for (int i = 0; i < kQkSteps; ++i) {
          const int step = kQkSteps * group + i, within = 32 * (step % 4);
          WgmmaM64N32K16<false>(partial_scores,
                                SwizzledTileDescriptor(tile_address + (step / 4) * kGroupBytes + within),
                                SwizzledTileDescriptor(q_address + (step / 4) * kQGroupBytes + within));
        }
        WgmmaCommit();
        WgmmaWait<0>();
        PinAccumulators(partial_scores);
        float* out = scores + group * kKeys * kSLd;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int key = 16 * warp + g, h = 8 * j + 2 * tq;
          const float* n8 = partial_scores + 4 * j;  // n8 block j: row key (0, 1), row key + 8 (2, 3)
          *reinterpret_cast<float2*>(out + key * kSLd + h) = make_float2(n8[0], n8[1]);
          *reinterpret_cast<float2*>(out + (key + 8) * kSLd + h) = make_float2(n8[2], n8[3]);
        }
      }
      SyncConsumers();  // both partial scores are in; the last tile's P·V has read Pᵀ
      {
        const int64_t key0 = static_cast<int64_t>(s.first + lt) * kKeys;
        float logits[8];  // scaled to the log2 domain, -inf past the query
        float step_max = -INFINITY;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const int key = s_sub + 8 * i;
          const float v = scores[key * kSLd + s_head] + scores[(kKeys + key) * kSLd + s_head];
          logits[i] = key0 + key <= s.pos ? v * scale_log2 : -INFINITY;
          step_max = fmaxf(step_max, logits[i]);
        }
#pragma unroll
        for (int x = 1; x < kSoftmaxThreads; x *= 2) {
          step_max = fmaxf(step_max, __shfl_xor_sync(0xffffffffu, step_max, x));
        }
        // The row's reference max moves only when the tile's exceeds it by more than kMaxLag
        // (log2): probabilities stay <= 2^kMaxLag, and most tiles need no rescaling of O.
        const float m_old = m_row[s_head];
        const float m_new = step_max > m_old + kMaxLag ? step_max : m_old;
        float e_sum = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; ++i) {  // key s_sub + 8i: chunk i of the head's row, element s_sub
          const float e = logits[i] == -INFINITY ? 0.0f : exp2f(logits[i] - m_new);
          e_sum += e;
          *reinterpret_cast<bf16*>(p_tile + SwizzledChunkOffset(s_head, i) + 2 * s_sub) = __float2bfloat16(e);
        }
#pragma unroll
        for (int x = 1; x < kSoftmaxThreads; x *= 2) e_sum += __shfl_xor_sync(0xffffffffu, e_sum, x);
        __syncwarp();  // every thread of the head has read m_row before it is replaced
        if (s_sub == 0) {
          const float alpha = m_new == -INFINITY ? 1.0f : exp2f(m_old - m_new);
          m_row[s_head] = m_new;
          l_row[s_head] = l_row[s_head] * alpha + e_sum;
          alpha_row[s_head] = alpha;
        }
      }
      FenceProxyAsyncShared();  // Pᵀ's stores, visible to the products
      SyncConsumers();
      {
        float2 alpha[4];
        bool rescale = false;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          alpha[j] = *reinterpret_cast<const float2*>(alpha_row + 8 * j + 2 * tq);
          rescale = rescale || alpha[j].x != 1.0f || alpha[j].y != 1.0f;
        }
        if (__any_sync(0xffffffffu, rescale)) {
#pragma unroll
          for (int mt = 0; mt < kRankGroups / 2; ++mt)
#pragma unroll
            for (int j = 0; j < 4; ++j) {
              o[mt][4 * j] *= alpha[j].x, o[mt][4 * j + 1] *= alpha[j].y;
              o[mt][4 * j + 2] *= alpha[j].x, o[mt][4 * j + 3] *= alpha[j].y;
            }
        }
      }
      WgmmaFence();
#pragma unroll
      for (int mt = 0; mt < kRankGroups / 2; ++mt) {
        const uint32_t values = tile_address + (group * (kRankGroups / 2) + mt) * kGroupBytes;
#pragma unroll
        for (int k = 0; k < kKeys / 16; ++k) {
          WgmmaM64N32K16<true>(o[mt], SwizzledMnMajorDescriptor(values + k * 16 * 128, kGroupBytes),
                               SwizzledTileDescriptor(p_address + 32 * k));
        }
      }
      WgmmaCommit();
      WgmmaWait<0>();
#pragma unroll
      for (int mt = 0; mt < kRankGroups / 2; ++mt) PinAccumulators(o[mt]);
      ArriveBarrier(&empty[stage]);
    }

    // The segment's state: m (back to the natural log the merge uses), l, and Oᵀ's columns. The
    // thread that writes a head's m and l is the one that resets them for the next segment.
    const int64_t slot = s.row + static_cast<int64_t>(blockIdx.x);
    float* entries = a.partial + slot * heads * (kRank + 2);
    if (c < heads) {
      entries[c * (kRank + 2)] = m_row[c] * 0.6931471805599453f;
      entries[c * (kRank + 2) + 1] = l_row[c];
    }
#pragma unroll
    for (int mt = 0; mt < kRankGroups / 2; ++mt)
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int half = 0; half < 2; ++half)
#pragma unroll
          for (int odd = 0; odd < 2; ++odd) {
            const int h = 8 * j + 2 * tq + odd;
            const int column = 64 * (group * (kRankGroups / 2) + mt) + 16 * warp + g + 8 * half;
            if (h < heads) entries[h * (kRank + 2) + 2 + column] = o[mt][4 * j + 2 * half + odd];
          }
  });
}

// Grid: the key split's blocks, one per SM.
__global__ void __launch_bounds__(kAttentionThreads, 1) MlaLatentAttentionKernel(AttentionArgs a) {
  AllowDependentLaunch();
  extern __shared__ unsigned char raw[];
  uint32_t base_address;
  unsigned char* stages = SwizzleAlignedShared(raw, base_address);
  unsigned char* q_tile = stages + kStages * kTileBytes;
  unsigned char* p_tile = q_tile + kQBytes;
  auto* scores = reinterpret_cast<float*>(p_tile + kPBytes);
  float* stats = scores + 2 * kKeys * kSLd;
  auto* full = reinterpret_cast<uint64_t*>(stats + 3 * kHeadRows);
  uint64_t* empty = full + kStages;
  InitStageRing(full, empty, kStages, 1, kConsumerThreads);
  if (threadIdx.x >= kConsumerThreads) {
    ProduceTiles(a, stages, full, empty);
  } else {
    const uint32_t q_address = base_address + kStages * kTileBytes;
    ConsumeTiles(a, base_address, q_tile, q_address, p_tile, q_address + kQBytes, scores, stats, full, empty);
  }
}

}  // namespace

bool MlaAbsorbedTcRuns() { return WgmmaRuns(); }

bool MlaAbsorbedTcSupports(const MlaParams& params) {
  return params.num_heads >= 1 && params.num_heads <= kHeadRows && params.kv_lora_rank == kRank &&
         params.qk_rope_dim == kRope && params.qk_nope_dim <= kMaxNope;
}

// One block per SM is resident and every block takes an equal run of tiles, so the blocks are the
// SMs (one wave: a second would add a pipeline fill per block and more states to merge), fewer
// where that would leave a block without a tile of `rows` rows of max_keys keys.
int64_t MlaKeySplitBlocks(int64_t rows, int64_t max_keys) {
  const int64_t tiles = std::max<int64_t>(rows, 1) * ((max_keys + kKeys - 1) / kKeys);
  return std::max<int64_t>(1, std::min<int64_t>(SmCount(), tiles));
}

MlaKeySplit BuildMlaKeySplit(const MlaSequence* seqs, int64_t num_seqs, int64_t rows, int64_t blocks) {
  // The absorbed rows in order (those outside [0, rows) left out, as the kernels leave them), and
  // the first tile of each in the blocks' common order.
  std::vector<MlaKeySplitRow> pieces;
  std::vector<int64_t> first_tile;
  int64_t total = 0;
  for (int64_t i = 0; i < num_seqs; ++i) {
    const MlaSequence& seq = seqs[i];
    if (seq.form != MlaForm::kAbsorbed) continue;
    for (int64_t j = 0; j < seq.rows.length; ++j) {
      const int64_t t = seq.rows.begin + j;
      if (t < 0 || t >= rows || static_cast<int64_t>(pieces.size()) == rows) continue;
      const int64_t tiles = (seq.num_cached + j) / kKeys + 1;  // keys 0 .. num_cached + j
      pieces.push_back({static_cast<int32_t>(t), static_cast<int32_t>(i), static_cast<int32_t>(tiles)});
      first_tile.push_back(total);
      total += tiles;
    }
  }
  first_tile.push_back(total);
  const int absorbed = static_cast<int>(pieces.size());
  // Block b takes tiles [b·total/blocks, (b + 1)·total/blocks), or tile b alone when there are
  // fewer tiles than blocks (the rest none): a row's blocks are then consecutive and each has a
  // piece of it, so the slots a row lists are all written. The state of (row r, block b)'s
  // segment goes to slot r + b, distinct for every segment since both grow along the tiles.
  std::vector<MlaKeySplitBlock> runs(static_cast<size_t>(blocks));
  std::vector<int32_t> first_block(absorbed, -1), last_block(absorbed, -1);
  int row = 0;
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t lo = total < blocks ? std::min(b, total) : total * b / blocks;
    const int64_t hi = total < blocks ? std::min(b + 1, total) : total * (b + 1) / blocks;
    while (row + 1 < absorbed && first_tile[row + 1] <= lo) ++row;
    runs[b] = {row, static_cast<int32_t>(lo - first_tile[row]), static_cast<int32_t>(hi - lo),
               absorbed > 0 ? pieces[row] : MlaKeySplitRow{}};
    for (int r = row; hi > lo && r < absorbed && first_tile[r] < hi; ++r) {
      if (first_block[r] < 0) first_block[r] = static_cast<int32_t>(b);
      last_block[r] = static_cast<int32_t>(b);
    }
  }
  std::vector<MlaRowSlots> slots(static_cast<size_t>(rows), MlaRowSlots{0, 0});
  for (int r = 0; r < absorbed; ++r) {
    slots[pieces[r].t] = {r + first_block[r], last_block[r] - first_block[r] + 1};
  }
  pieces.resize(static_cast<size_t>(rows), MlaKeySplitRow{});
  MlaKeySplit split;
  split.blocks = blocks;
  split.table.resize(static_cast<size_t>(MlaKeySplitSlotsAt(blocks, rows) + 2 * rows));
  std::memcpy(split.table.data(), runs.data(), runs.size() * sizeof(MlaKeySplitBlock));
  std::memcpy(split.table.data() + MlaKeySplitRowsAt(blocks), pieces.data(), pieces.size() * sizeof(MlaKeySplitRow));
  std::memcpy(split.table.data() + MlaKeySplitSlotsAt(blocks, rows), slots.data(), slots.size() * sizeof(MlaRowSlots));
  return split;
}

size_t MlaAbsorbedTcScratchBytes(const MlaParams& params, int64_t rows, int64_t max_keys) {
  const int64_t slots = rows + MlaKeySplitBlocks(rows, max_keys);
  return AlignScratch(sizeof(float) * slots * params.num_heads * (kRank + 2)) +
         AlignScratch(sizeof(bf16) * rows * params.num_heads * (kRank + params.qk_rope_dim));
}

int LaunchMlaAbsorbedTc(const MlaParams& params, TensorView q, TensorView kv_b, const MlaSequence* seqs,
                        int64_t num_seqs, const int32_t* key_split, int64_t max_keys, TensorView append,
                        void* scratch, float** partial, int64_t* blocks_out, Stream stream) {
  if (!MlaAbsorbedTcRuns()) return static_cast<int>(cudaErrorInvalidDeviceFunction);
  if (!MlaAbsorbedTcSupports(params) || scratch == nullptr || key_split == nullptr) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  const int64_t rows = q.rows;
  const int64_t blocks = MlaKeySplitBlocks(rows, max_keys);
  const int heads = static_cast<int>(params.num_heads), rope = static_cast<int>(params.qk_rope_dim);
  auto* base = static_cast<char*>(scratch);
  *partial = reinterpret_cast<float*>(base);
  *blocks_out = blocks;
  auto* q_abs = reinterpret_cast<bf16*>(base + AlignScratch(sizeof(float) * (rows + blocks) * heads * (kRank + 2)));
  if (rows > 65535 * int64_t{kAbsorbRows} || !FitsGridX(rows)) return static_cast<int>(cudaErrorInvalidValue);
  auto s = static_cast<cudaStream_t>(stream);
  const int absorb_error = LaunchAfterPrior(
      MlaAbsorbQKernel, dim3(heads, kRank / kAbsorbCols, static_cast<unsigned>((rows + kAbsorbRows - 1) / kAbsorbRows)),
      dim3(kThreads), 0, s, q, kv_b, heads, static_cast<int>(params.qk_nope_dim), rope,
      static_cast<int>(params.v_dim), q_abs, append, seqs, num_seqs);
  if (absorb_error != 0) return absorb_error;
  if (const int error = AllowDynamicSmem(MlaLatentAttentionKernel, kAttentionSmemBytes); error != 0) return error;
  const AttentionArgs args{seqs,
                           q_abs,
                           heads,
                           params.scale,
                           reinterpret_cast<const MlaKeySplitBlock*>(key_split),
                           reinterpret_cast<const MlaKeySplitRow*>(key_split + MlaKeySplitRowsAt(blocks)),
                           *partial};
  return LaunchAfterPrior(MlaLatentAttentionKernel, dim3(static_cast<unsigned>(blocks)), dim3(kAttentionThreads),
                          kAttentionSmemBytes, s, args);
}

}  // namespace deltaserve::kernels::cuda
