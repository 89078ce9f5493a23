// Absorbed MLA decode on tensor cores (serving precision). The query heads of one row share one
// latent key/value stream, so the attention is a [32 heads × 576] by [keys × 576] product per
// row. The absorbed rows' key tiles are cut into one equal run per block (one block per SM;
// BuildMlaKeySplit), so that unequal histories keep every SM busy to the end; a block takes its
// run a row at a time and streams 16-key tiles of the bf16 latent cache through an 8-stage
// pipeline (one bulk copy per tile, six tiles in flight while two are used; the pages' swizzled
// rows, kernels::LatentPosition, keep the fragment loads free of bank conflicts) and runs QKᵀ and
// PV on mma.sync (fp32 accumulation) with an online softmax over two tiles per step (a step's
// three block barriers and softmax pass cost as much for 32 keys as for 16); O stays in registers.
// Two launches: q absorbed into the latent space (q_lat = W_UKᵀ q_nope, then q_pe) as bf16, then
// the attention writing each segment's (a row's part of a run) unnormalised state, which
// MlaAbsorbedMergeKernel merges (more than one block) and MlaAbsorbedProjectKernel multiplies by
// W_UV (mla_attention.cu).
#include "kernels/cuda/mla_absorbed_tc.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/mla_rows.cuh"
#include "kernels/cuda/mma_tiles.cuh"

namespace deltaserve::kernels::cuda {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kHeadRows = 32;  // query heads per row, padded: two m16 tiles
constexpr int kRank = 512;     // latent rank: each warp owns 64 output columns
constexpr int kKeys = 16;      // keys per shared-memory tile
constexpr int kStages = 8;     // key tiles in shared memory: 6 in flight while two are used
constexpr int kTilesPerStep = 2;  // tiles scored, softmaxed and accumulated per loop step
constexpr int kStepKeys = kTilesPerStep * kKeys;
static_assert(kMlaTensorCorePageRows % kKeys == 0, "a key tile lies in one latent page");
constexpr int kAbsorbRows = 8; // rows per block in the absorb kernel
constexpr int kAbsorbCols = 16 * 8;  // latent columns per absorb block: 8 per lane of a half-warp
constexpr int kRope = 64;      // the attention kernel's shapes are compile-time: Kimi's
constexpr int kDot = kRank + kRope;
constexpr int kDotSlices = 4;  // QK's dot dimension split over warps, two head tiles each
constexpr int kSliceSteps = kDot / 16 / kDotSlices;  // k16 steps per slice
static_assert(kSliceSteps * 16 * kDotSlices == kDot, "the dot slices tile the dot dimension");
constexpr int kPLd = kStepKeys + 8;  // P's row stride (bf16): conflict-free A fragments
constexpr int kSLd = kStepKeys + 8;  // the partial scores' (fp32): conflict-free 64-bit stores
constexpr float kMaxLag = 8.0f;
constexpr int kRowThreads = kThreads / kHeadRows;  // softmax threads per head row
static_assert(kRowThreads * 2 == kKeys, "each softmax thread takes two keys of each tile");
static_assert(kWarps / kDotSlices == kTilesPerStep, "a QK warp per (tile, dot slice)");

// A key tile in shared memory: its rows as the page holds them, unpadded (so one bulk copy brings
// the tile), each row's 16-byte chunks swizzled by the row (kernels::LatentPosition).
constexpr int kStageLd = kDot;
static_assert(kDot % 64 == 0, "the pages swizzle rows of whole 128-byte groups");
constexpr int kStageElems = kKeys * kStageLd;
// Where element e of stage row r sits (the tile's first row is a multiple of 16, so r's swizzle is
// its cache row's).
__device__ __forceinline__ int SwizzledAt(int r, int e) {
  return static_cast<int>(LatentPosition(DType::kBF16, kDot, r, e));
}

// Shared memory of the attention kernel: the key stages, the partial scores of each dot slice,
// the row stats and P.
constexpr size_t kAttentionSmemBytes =
    sizeof(bf16) * static_cast<size_t>(kStages) * kStageElems +
    sizeof(float) * (kDotSlices * kHeadRows * kSLd + 3 * kHeadRows) + sizeof(bf16) * kHeadRows * kPLd;

__device__ __forceinline__ uint32_t Load32(const bf16* p) { return *reinterpret_cast<const uint32_t*>(p); }


// Grid (heads, kRank / kAbsorbCols, ceil(T / 8)). q_abs[t][h] = [W_UK[h]ᵀ q_nope[t, h] (rank) ‖
// q_pe[t, h] (rope)] in bf16, for every packed row (rows of other forms are computed too and never
// read). Half-warp j of warp w reduces the W_UK rows c ≡ 2w + j (mod 16), each lane 8 latent
// columns per 16-byte load, several loads in flight; the half-warps meet over a shuffle, the warps
// in shared memory. The block's W_UK rows are requested into L2 before it waits for the kernels
// ahead (no kernel writes weights): at batch 1 this kernel is all latency.
__global__ void __launch_bounds__(kThreads) MlaAbsorbQKernel(TensorView q, TensorView kv_b, int heads, int nope,
                                                             int rope, int v_dim, bf16* q_abs) {
  __shared__ float q_nope[kAbsorbRows][256];
  __shared__ float partial[kWarps][kAbsorbCols];
  const int h = blockIdx.x;
  const int r0 = blockIdx.y * kAbsorbCols;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int first_row = 2 * warp + lane / 16, col = r0 + (lane % 16) * 8;
  constexpr int kRowStep = 2 * kWarps;
  const int64_t w_row = static_cast<int64_t>(h) * (nope + v_dim);
  {
    const int element = kv_b.dtype == DType::kF32 ? 4 : 2;
    for (int c = first_row; c < nope; c += kRowStep) {
      const char* p = static_cast<const char*>(kv_b.data) + ((w_row + c) * kv_b.row_stride + col) * element;
      asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
    }
  }
  FollowPriorKernels();
  const int64_t t0 = static_cast<int64_t>(blockIdx.z) * kAbsorbRows;
  const int rows = static_cast<int>(q.rows - t0 < kAbsorbRows ? q.rows - t0 : kAbsorbRows);
  const int qk = nope + rope, dot = kRank + rope;
  for (int i = threadIdx.x; i < kAbsorbRows * nope; i += kThreads) {
    const int r = i / nope, c = i % nope;
    q_nope[r][c] = r < rows ? RowF32(q, t0 + r)[h * qk + c] : 0.0f;
  }
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
  const auto* w_bf16 = static_cast<const bf16*>(kv_b.data) + (w_row * kv_b.row_stride + col);
  if (kv_b.dtype == DType::kBF16 && kv_b.row_stride % 8 == 0 && reinterpret_cast<uintptr_t>(kv_b.data) % 16 == 0) {
    // The serving layout: unconditional 16-byte loads, several rows in flight.
#pragma unroll 8
    for (int c = first_row; c < nope; c += kRowStep) {
      const uint4 raw = __ldg(reinterpret_cast<const uint4*>(w_bf16 + c * kv_b.row_stride));
      const auto* pairs = reinterpret_cast<const __nv_bfloat162*>(&raw);
      float w[8];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float2 f = __bfloat1622float2(pairs[i]);
        w[2 * i] = f.x, w[2 * i + 1] = f.y;
      }
      accumulate(w, c);
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
  }
#pragma unroll
  for (int r = 0; r < kAbsorbRows; ++r) {
    if (r >= rows) break;
    if (lane < 16) {
#pragma unroll
      for (int i = 0; i < 8; ++i) partial[warp][lane * 8 + i] = acc[r][i];
    }
    __syncthreads();
    bf16* dst = q_abs + ((t0 + r) * heads + h) * dot;
    for (int j = threadIdx.x; j < kAbsorbCols; j += kThreads) {
      float sum = 0.0f;
#pragma unroll
      for (int v = 0; v < kWarps; ++v) sum += partial[v][j];
      dst[r0 + j] = __float2bfloat16(sum);
    }
    if (blockIdx.y == 0) {
      for (int c = threadIdx.x; c < rope; c += kThreads) {
        dst[kRank + c] = __float2bfloat16(RowF32(q, t0 + r)[h * qk + nope + c]);
      }
    }
    __syncthreads();
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

// Copies a segment's bf16 key tiles in order into the stages, one bulk copy per tile (its rows are
// consecutive in the page) issued by lane 0 of warp 0 and completing on the stage's barrier. Rows
// past `pos` are zero-filled by ordinary stores first (they may hold anything, and a zero
// probability times NaN is NaN); only a row's last tile has such rows and it is its segment's last
// copy, so a bulk copy follows those stores into the stage only in a later segment, after
// fence.proxy.async. Pages are walked tile by tile (a 64-bit division per tile cost 5-8%), each
// page's address read a page ahead. Pages hold a multiple of kKeys rows (kMlaTensorCorePageRows,
// the caller's check).
struct TileCopier {
  static constexpr unsigned kRowBytes = kDot * sizeof(bf16);
  static_assert(kKeys <= 32 && kRowBytes % 16 == 0 && (kStageLd * sizeof(bf16)) % 16 == 0, "bulk-copyable rows");
  void* const* pages;
  int64_t pos;
  int tiles_per_page;
  int64_t tile, end, page;  // end: one past the segment's last tile
  int in_page;
  const bf16* page_base;
  const bf16* next_base;  // the next page's, read a page ahead (nullptr: the segment ends first)

  __device__ TileCopier(void* const* pages_in, int64_t pos_in, int tiles_per_page_in, int64_t first, int64_t end_in)
      : pages(pages_in), pos(pos_in), tiles_per_page(tiles_per_page_in), tile(first), end(end_in),
        page(first / tiles_per_page_in), in_page(static_cast<int>(first % tiles_per_page_in)),
        page_base(first < end_in ? static_cast<const bf16*>(pages_in[page]) : nullptr), next_base(NextPage()) {}

  // Called by every lane of warp 0.
  __device__ void IssueNext(bf16* stage, uint64_t* full, int lane) {
    const bf16* rows = page_base + static_cast<int64_t>(in_page) * kKeys * kDot;
    const int64_t live64 = pos - tile * kKeys + 1;
    const int live_rows = live64 >= kKeys ? kKeys : static_cast<int>(live64);
    if (live_rows < kKeys) {
      constexpr int kChunks = kDot / 8;  // 16 bytes each
      for (int i = lane; i < (kKeys - live_rows) * kChunks; i += 32) {
        const int r = live_rows + i / kChunks;
        *reinterpret_cast<uint4*>(stage + r * kStageLd + 8 * (i % kChunks)) = make_uint4(0u, 0u, 0u, 0u);
      }
      __syncwarp();
    }
    if (lane == 0) {
      ArriveExpectBytes(full, live_rows * kRowBytes);
      BulkCopyToShared(stage, rows, live_rows * kRowBytes, full);
    }
    ++tile;
    if (++in_page == tiles_per_page) {
      in_page = 0, ++page;
      page_base = next_base;
      next_base = NextPage();
    }
  }

  // Page page + 1's rows if the segment reaches it (the page table may end before).
  __device__ const bf16* NextPage() const {
    return (page + 1) * tiles_per_page < end ? static_cast<const bf16*>(pages[page + 1]) : nullptr;
  }
};

// Grid: the key split's blocks, one per SM (kStages bf16 key tiles in shared memory). A block
// attends to its run of key tiles (BuildMlaKeySplit) one segment at a time, a segment being the
// part of the run in one absorbed row, and writes each segment's state to its slot. Fragments are
// loaded straight from the stages. A step takes two tiles (a segment's last step may have one). QK:
// warp w holds the A fragments of both head tiles over dot slice w / 2 in registers for the whole
// segment and scores the 16 keys of the step's tile w % 2; the slices meet in shared memory. Within
// each 16-wide k step, fragment k slots 2tq, 2tq + 1 hold dot elements 4tq, 4tq + 1 and slots
// 2tq + 8, 2tq + 9 hold 4tq + 2, 4tq + 3 (in A and B alike, so the sum is the same): a lane's B
// fragment is then one 64-bit load, and with the rows' swizzle a half-warp's loads cover all 32
// banks.
// Softmax: kRowThreads threads per head row, two keys of each tile, the row's max and sum over
// shuffles, in the log2 domain. PV: warp w accumulates O for all 32 head rows and latent columns
// [64w, 64w + 64). The partial states' m is a reference max (not always the running max, see
// kMaxLag), stored in natural-log units; m, l and O agree, which is all the merge needs.
// At most 224 registers a thread: then a block of 256 threads at 32 (the merge after it, the
// append before the next step's) still fits beside it, 8 warps × 7,168 + 8,192 = 65,536. At 228
// (what the compiler chose unbounded) it did not, and batch 1 at 64k keys took 7% longer.
__global__ void __maxnreg__(224) MlaLatentAttentionKernel(AttentionArgs args) {
  AllowDependentLaunch();
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ uint64_t full[kStages];  // a stage's barrier: its tile has landed
  if (threadIdx.x < kStages) InitBarrier(&full[threadIdx.x]);
  __syncthreads();
  constexpr int dot = kDot, stage_ld = kStageLd;
  bf16* stages = reinterpret_cast<bf16*>(smem);
  float* sp = reinterpret_cast<float*>(stages + kStages * kStageElems);  // [kDotSlices][kHeadRows][kSLd]
  float* m_row = sp + kDotSlices * kHeadRows * kSLd;  // log2 domain
  float* l_row = m_row + kHeadRows;
  float* alpha_row = l_row + kHeadRows;
  bf16* ps = reinterpret_cast<bf16*>(alpha_row + kHeadRows);

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane >> 2, tq = lane & 3;
  const int heads = args.heads;
  const MlaKeySplitBlock run = args.blocks[blockIdx.x];
  // Tiles this block has taken before the current segment: the run's tile i lives in stage
  // i % kStages, whose barrier's phase parity is (i / kStages) & 1.
  int done = 0;
  bool waited = false;
  for (int row = run.row, first = run.first_tile, left = run.tiles; left > 0; ++row, first = 0) {
    const MlaKeySplitRow piece = row == run.row ? run.first_row : args.rows[row];
    const int count = piece.tiles - first < left ? piece.tiles - first : left;  // this segment's tiles
    left -= count;
    const int64_t t = piece.t;
    const MlaSequence seq = args.seqs[piece.seq];
    const int64_t pos = seq.num_cached + (t - seq.rows.begin);
    const int64_t tile_lo = first;
    TileCopier copier(seq.cache.pages, pos, static_cast<int>(seq.cache.page_rows / kKeys), tile_lo, tile_lo + count);
    int issued = count < kStages ? count : kStages;
    const auto issue = [&](int i) {
      const int stage = (done + i) % kStages;
      copier.IssueNext(stages + stage * kStageElems, &full[stage], lane);
    };
    int early = 0;
    if (!waited) {
      // Launched as programmatic, the block may start while the kernels ahead (the absorb, the
      // append) still run, so it first asks only for tiles whose rows all precede the call's
      // own, which no kernel of this call writes. Earlier calls appended them, and every call
      // starts with the upload of its inputs, which no later launch overtakes. The rest wait for
      // the kernels ahead, as do q_abs and the tile this call appends to.
      const int64_t settled = seq.num_cached / kKeys - tile_lo;
      early = settled <= 0 ? 0 : (settled < issued ? static_cast<int>(settled) : issued);
      if (warp == 0) {
        for (int i = 0; i < early; ++i) issue(i);
      }
      WaitForPriorKernels();
      waited = true;
    } else if (warp == 0) {
      // The last segment's zero-filled rows (ordinary stores) before this one's bulk copies.
      FenceProxyAsyncShared();
    }
    if (warp == 0) {
      for (int i = early; i < issued; ++i) issue(i);
    }
    if (threadIdx.x < kHeadRows) {
      m_row[threadIdx.x] = -INFINITY;
      l_row[threadIdx.x] = 0.0f;
    }
    // This warp's Q fragments, both head tiles over its dot slice (zero past the real heads).
    const int key_tile = warp % kTilesPerStep, slice = warp / kTilesPerStep;
    uint32_t qa[2][kSliceSteps][4];
#pragma unroll
    for (int mi = 0; mi < 2; ++mi) {
      const int h_lo = 16 * mi + g, h_hi = h_lo + 8;
      const bf16* q_lo = args.q_abs + (t * heads + h_lo) * dot + 4 * tq;
      const bf16* q_hi = args.q_abs + (t * heads + h_hi) * dot + 4 * tq;
#pragma unroll
      for (int i = 0; i < kSliceSteps; ++i) {
        const int step = slice * kSliceSteps + i, k0 = 16 * step;
        qa[mi][i][0] = h_lo < heads ? Load32(q_lo + k0) : 0u;
        qa[mi][i][1] = h_hi < heads ? Load32(q_hi + k0) : 0u;
        qa[mi][i][2] = h_lo < heads ? Load32(q_lo + k0 + 2) : 0u;
        qa[mi][i][3] = h_hi < heads ? Load32(q_hi + k0 + 2) : 0u;
      }
    }
    const float scale_log2 = args.scale * 1.4426950408889634f;
    // Softmax: a row's kRowThreads threads take keys j and j + 4 of each tile, j = 0..3 and 8..11:
    // the pair is adjacent in PV's key order (below), so its P is one 32-bit store.
    const int s_row = threadIdx.x / kRowThreads, s_lane = threadIdx.x % kRowThreads;
    const int s_key = (s_lane & 3) + 8 * (s_lane >> 2);
    const int s_logical = 2 * (s_lane & 3) + 8 * (s_lane >> 2);
    float o[2][8][4] = {};
    for (int lt = 0; lt < count; lt += kTilesPerStep) {
      const bool second = lt + 1 < count;  // a segment of an odd tile count ends with one
      // Waiting before the barrier, not after the refill below: refilling first measured 2% slower.
      WaitBarrier(&full[(done + lt) % kStages], ((done + lt) / kStages) & 1u);
      if (second) WaitBarrier(&full[(done + lt + 1) % kStages], ((done + lt + 1) / kStages) & 1u);
      // Every warp is done with the stages refilled next (the last step's), S and P.
      __syncthreads();
      const int refill_end = lt + kStages < count ? lt + kStages : count;
      if (warp == 0) {
        for (int i = issued; i < refill_end; ++i) issue(i);
      }
      issued = refill_end;
      const bf16* keys0 = stages + ((done + lt) % kStages) * kStageElems;
      const bf16* keys1 = stages + ((done + lt + 1) % kStages) * kStageElems;
      if (key_tile == 0 || second) {  // this warp's tile, both head tiles: each key fragment read once
        float c[2][2][4] = {};  // [head tile][8-key n-tile]: four independent mma chains
        const bf16* k = (key_tile == 0 ? keys0 : keys1) + g * stage_ld;  // rows g and g + 8: one swizzle
#pragma unroll
        for (int s = 0; s < kSliceSteps; ++s) {
          const int at = SwizzledAt(g, 16 * (slice * kSliceSteps + s) + 4 * tq);
#pragma unroll
          for (int nt = 0; nt < 2; ++nt) {
            const uint2 b = *reinterpret_cast<const uint2*>(k + 8 * nt * stage_ld + at);
            Mma16x8x16(c[0][nt], qa[0][s], b.x, b.y);
            Mma16x8x16(c[1][nt], qa[1][s], b.x, b.y);
          }
        }
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
          for (int nt = 0; nt < 2; ++nt) {
            const float* x = c[mi][nt];
            float* out = sp + (slice * kHeadRows + 16 * mi + g) * kSLd + kKeys * key_tile + 8 * nt + 2 * tq;
            *reinterpret_cast<float2*>(out) = make_float2(x[0], x[1]);
            *reinterpret_cast<float2*>(out + 8 * kSLd) = make_float2(x[2], x[3]);
          }
      }
      __syncthreads();
      {
        float sc[kTilesPerStep][2];
#pragma unroll
        for (int kk = 0; kk < kTilesPerStep; ++kk) {
          float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
          for (int d = 0; d < kDotSlices; ++d) {
            const float* v = sp + (d * kHeadRows + s_row) * kSLd + kKeys * kk + s_key;
            sum0 += v[0], sum1 += v[4];
          }
          const bool live = kk == 0 || second;
          const int64_t j = (tile_lo + lt + kk) * kKeys + s_key;
          sc[kk][0] = live && j <= pos ? sum0 * scale_log2 : -INFINITY;
          sc[kk][1] = live && j + 4 <= pos ? sum1 * scale_log2 : -INFINITY;
        }
        float step_max = fmaxf(fmaxf(sc[0][0], sc[0][1]), fmaxf(sc[1][0], sc[1][1]));
#pragma unroll
        for (int x = 1; x < kRowThreads; x *= 2) step_max = fmaxf(step_max, __shfl_xor_sync(0xffffffffu, step_max, x));
        // The row's reference max moves only when the step's exceeds it by more than kMaxLag
        // (log2): probabilities stay <= 2^kMaxLag, and most steps need no rescaling of O.
        const float m_old = m_row[s_row];
        const float m_new = step_max > m_old + kMaxLag ? step_max : m_old;
        float e_sum = 0.0f;
#pragma unroll
        for (int kk = 0; kk < kTilesPerStep; ++kk) {
          const float e0 = sc[kk][0] == -INFINITY ? 0.0f : exp2f(sc[kk][0] - m_new);
          const float e1 = sc[kk][1] == -INFINITY ? 0.0f : exp2f(sc[kk][1] - m_new);
          *reinterpret_cast<__nv_bfloat162*>(ps + s_row * kPLd + kKeys * kk + s_logical) =
              __floats2bfloat162_rn(e0, e1);
          e_sum += e0 + e1;
        }
#pragma unroll
        for (int x = 1; x < kRowThreads; x *= 2) e_sum += __shfl_xor_sync(0xffffffffu, e_sum, x);
        __syncwarp();  // every thread of the row has read m_row[s_row] before it is replaced
        if (s_lane == 0) {
          const float alpha = m_new == -INFINITY ? 1.0f : exp2f(m_old - m_new);
          m_row[s_row] = m_new;
          l_row[s_row] = l_row[s_row] * alpha + e_sum;
          alpha_row[s_row] = alpha;
        }
      }
      __syncthreads();
#pragma unroll
      for (int mi = 0; mi < 2; ++mi) {
        const float a_lo = alpha_row[16 * mi + g], a_hi = alpha_row[16 * mi + g + 8];
        if (__any_sync(0xffffffffu, a_lo != 1.0f || a_hi != 1.0f)) {
#pragma unroll
          for (int nt = 0; nt < 8; ++nt) {
            o[mi][nt][0] *= a_lo, o[mi][nt][1] *= a_lo, o[mi][nt][2] *= a_hi, o[mi][nt][3] *= a_hi;
          }
        }
      }
#pragma unroll
      for (int kk = 0; kk < kTilesPerStep; ++kk) {
        if (kk > 0 && !second) break;  // no second tile: its stage holds an older tile or nothing
        uint32_t a[2][4];
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
          const bf16* p_lo = ps + (16 * mi + g) * kPLd + kKeys * kk + 2 * tq;
          a[mi][0] = Load32(p_lo), a[mi][1] = Load32(p_lo + 8 * kPLd);
          a[mi][2] = Load32(p_lo + 8), a[mi][3] = Load32(p_lo + 8 * kPLd + 8);
        }
        // Column n of n-tile 2p + h is latent column 64w + 16p + 2n + h, so one 32-bit load serves
        // both n-tiles of a pair. PV's key order is not the tile's: its keys 2q, 2q + 1, 2q + 8,
        // 2q + 9 are the tile's q, q + 4, q + 8, q + 12 (q < 4), rows of one swizzle, which puts a
        // load instruction's lanes in 32 different banks; P is stored in the same order. A B
        // register pairs two keys' values of one column: the low or high halves of two loads.
        const bf16* v0 = (kk == 0 ? keys0 : keys1) + tq * stage_ld;
#pragma unroll
        for (int pair = 0; pair < 4; ++pair) {
          const bf16* v = v0 + SwizzledAt(tq, 64 * warp + 16 * pair + 2 * g);
          const uint32_t r0 = Load32(v), r1 = Load32(v + 4 * stage_ld);
          const uint32_t r8 = Load32(v + 8 * stage_ld), r9 = Load32(v + 12 * stage_ld);
          const uint32_t b0_even = __byte_perm(r0, r1, 0x5410), b1_even = __byte_perm(r8, r9, 0x5410);
          const uint32_t b0_odd = __byte_perm(r0, r1, 0x7632), b1_odd = __byte_perm(r8, r9, 0x7632);
          Mma16x8x16(o[0][2 * pair], a[0], b0_even, b1_even);
          Mma16x8x16(o[1][2 * pair], a[1], b0_even, b1_even);
          Mma16x8x16(o[0][2 * pair + 1], a[0], b0_odd, b1_odd);
          Mma16x8x16(o[1][2 * pair + 1], a[1], b0_odd, b1_odd);
        }
      }
    }
    __syncthreads();  // m_row and l_row final

    const int entry_floats = kRank + 2;
    const int64_t slot = row + static_cast<int64_t>(blockIdx.x);
    auto entry = [&](int h) { return args.partial + (slot * heads + h) * entry_floats; };
    if (threadIdx.x < heads) {
      float* e = entry(threadIdx.x);
      e[0] = m_row[threadIdx.x] * 0.6931471805599453f;  // back to the natural log the merge uses
      e[1] = l_row[threadIdx.x];
    }
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int h = 16 * mi + g + 8 * half;
        if (h >= heads) continue;
        float* e = entry(h) + 2;
#pragma unroll
        for (int pair = 0; pair < 4; ++pair) {  // columns 64w + 16p + 4tq + {0, 1, 2, 3}
          const float* even = o[mi][2 * pair];
          const float* odd = o[mi][2 * pair + 1];
          float* dst = e + 64 * warp + 16 * pair + 4 * tq;
          *reinterpret_cast<float2*>(dst) = make_float2(even[2 * half], odd[2 * half]);
          *reinterpret_cast<float2*>(dst + 2) = make_float2(even[2 * half + 1], odd[2 * half + 1]);
        }
      }
    __syncthreads();  // the stages, the scores, P and the row stats are reused by the next segment
    done += count;
  }
  if (!waited) WaitForPriorKernels();
}

size_t AlignUp(size_t bytes) { return (bytes + 255) / 256 * 256; }

}  // namespace

bool MlaAbsorbedTcSupports(const MlaParams& params) {
  return params.num_heads >= 1 && params.num_heads <= kHeadRows && params.kv_lora_rank == kRank &&
         params.qk_rope_dim == kRope && params.qk_nope_dim <= 256;
}

// One block per SM is resident and every block takes an equal run of tiles, so the blocks are the
// SMs (one wave: a second would add a pipeline fill per block and more states to merge), fewer
// where that would leave a block under kMinTilesPerBlock tiles of `rows` rows of max_keys keys.
int64_t MlaKeySplitBlocks(int64_t rows, int64_t max_keys) {
  constexpr int64_t kMinTilesPerBlock = 4;
  const int64_t tiles = std::max<int64_t>(rows, 1) * ((max_keys + kKeys - 1) / kKeys);
  return std::max<int64_t>(1, std::min<int64_t>(SmCount(), tiles / kMinTilesPerBlock));
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
  return AlignUp(sizeof(float) * slots * params.num_heads * (kRank + 2)) +
         AlignUp(sizeof(bf16) * rows * params.num_heads * (kRank + params.qk_rope_dim));
}

int LaunchMlaAbsorbedTc(const MlaParams& params, TensorView q, TensorView kv_b, const MlaSequence* seqs,
                        const int32_t* key_split, int64_t max_keys, void* scratch, float** partial,
                        int64_t* blocks_out, Stream stream) {
  if (!MlaAbsorbedTcSupports(params) || scratch == nullptr || key_split == nullptr) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  const int64_t rows = q.rows;
  const int64_t blocks = MlaKeySplitBlocks(rows, max_keys);
  const int heads = static_cast<int>(params.num_heads), rope = static_cast<int>(params.qk_rope_dim);
  auto* base = static_cast<char*>(scratch);
  *partial = reinterpret_cast<float*>(base);
  *blocks_out = blocks;
  auto* q_abs = reinterpret_cast<bf16*>(base + AlignUp(sizeof(float) * (rows + blocks) * heads * (kRank + 2)));
  if (rows > 65535 * int64_t{kAbsorbRows} || !FitsGridX(rows)) return static_cast<int>(cudaErrorInvalidValue);
  auto s = static_cast<cudaStream_t>(stream);
  const int absorb_error = LaunchAfterPrior(
      MlaAbsorbQKernel, dim3(heads, kRank / kAbsorbCols, static_cast<unsigned>((rows + kAbsorbRows - 1) / kAbsorbRows)),
      dim3(kThreads), 0, s, q, kv_b, heads, static_cast<int>(params.qk_nope_dim), rope,
      static_cast<int>(params.v_dim), q_abs);
  if (absorb_error != 0) return absorb_error;
  const size_t smem = kAttentionSmemBytes;
  if (const int error = AllowDynamicSmem(MlaLatentAttentionKernel, smem); error != 0) return error;
  const AttentionArgs args{seqs,
                           q_abs,
                           heads,
                           params.scale,
                           reinterpret_cast<const MlaKeySplitBlock*>(key_split),
                           reinterpret_cast<const MlaKeySplitRow*>(key_split + MlaKeySplitRowsAt(blocks)),
                           *partial};
  return LaunchAfterPrior(MlaLatentAttentionKernel, dim3(static_cast<unsigned>(blocks)), dim3(kThreads), smem, s,
                          args);
}

}  // namespace deltaserve::kernels::cuda
