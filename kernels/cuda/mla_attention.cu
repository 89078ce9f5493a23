// MLA (spec §3): appending a step's latent rows to each sequence's cache, and causal attention
// in the expanded (prefill, §3.2) and absorbed (decode, §3.3) forms as fp32 flash-style kernels.
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/launchers.h"
#include "kernels/cuda/mla_absorbed_tc.h"
#include "kernels/cuda/mla_rows.cuh"

namespace deltaserve::kernels::cuda {
namespace {

namespace cg = cooperative_groups;

constexpr int kThreads = 256;        // every MLA kernel: 8 warps
constexpr int kWarps = kThreads / 32;
constexpr int kKeys = 32;            // keys per shared-memory tile
constexpr int kPStride = kKeys + 1;  // row stride of the probability tile (bank-conflict free)
constexpr int kExpandedRows = 32;    // expanded: query rows of one head per block
constexpr int kAbsorbedRows = 16;    // absorbed: heads of one query per block
constexpr int kAppendRows = kWarps;  // append: one row per warp

// ---------------------------------------------------------------------------------------------
// Append.

// Grid: ceil(T / 8) blocks of 8 warps, warp w copies packed row 8 * block + w into its cache row
// (rounded to bf16 in BF16 pages).
__global__ void __launch_bounds__(kThreads)
    MlaAppendKernel(TensorView latent, const MlaSequence* seqs, int64_t num_seqs) {
  AllowDependentLaunch();
  __shared__ int row_seq[kAppendRows];
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * kAppendRows;
  const int n = static_cast<int>(latent.rows - t0 < kAppendRows ? latent.rows - t0 : kAppendRows);
  MapRows(seqs, num_seqs, -1, t0, n, row_seq);  // the uploaded descriptors: before the wait
  WaitForPriorKernels();
  const int warp = threadIdx.x >> 5;
  if (warp >= n || row_seq[warp] < 0) return;
  AppendLatentRow(latent, seqs[row_seq[warp]], t0 + warp);
}

// Grid: ceil(rows / 8) blocks of 8 warps, warp w copies the first dst.cols columns of cache row
// first + 8 * block + w of *seq (rows `width` wide) to dst's row 8 * block + w (Dst: float or bf16).
template <typename Dst>
__global__ void __launch_bounds__(kThreads)
    MlaGatherLatentKernel(const MlaSequence* seq, int64_t first, int64_t width, TensorView dst) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kAppendRows + (threadIdx.x >> 5);
  if (row >= dst.rows) return;
  const int64_t position = first + row;
  Dst* to = static_cast<Dst*>(dst.data) + row * dst.row_stride;
  if (seq->cache.dtype == DType::kBF16) {
    const LatentRowPlacement place = LatentRowPlacement::Place(DType::kBF16, width, seq->cache.page_rows, position);
    const auto at = [&](int64_t e) { return place.Offset(e); };
    WarpCopyRow(seq->cache.PageOf<__nv_bfloat16>(position), at, to, IdentityIndex{}, dst.cols);
  } else {
    WarpCopyRow(seq->cache.Row(position, width), IdentityIndex{}, to, IdentityIndex{}, dst.cols);
  }
}

// ---------------------------------------------------------------------------------------------
// The attention core shared by both forms: a tile of kRows query rows (expanded: queries of one
// head; absorbed: heads of one query) against tiles of kKeys keys in shared memory, with an
// online softmax. Q and K rows are read as float4 along the dot dimension; V rows as float4
// along the value dimension. Thread (tq = tid / 16, tk = tid % 16) scores rows tq + 16a against
// keys tk and tk + 16. Accumulator item m of a thread covers value columns 4c4..4c4+3 of rows
// rg + 16a, (rg, c4) = divmod(tid + 256m, v4).

// Shared-memory layout (offsets in floats, each a multiple of 4), computed on the host.
struct TileLayout {
  int qk_stride = 0;  // floats per Q/K row: dot width rounded up to 4, stride / 4 odd
  int v_stride = 0;   // floats per V row
  int dk4 = 0;        // float4 columns of the dot
  int v4 = 0;         // float4 columns of the values
  int q_off = 0, k_off = 0, v_off = 0, p_off = 0, stat_off = 0, map_off = 0;
  int floats = 0;     // total
};

// Per-row statistics inside the stat block: running max, running sum, this tile's rescale
// factor, and the row's last visible key position (-1: row not live).
template <int kRows>
struct Stats {
  float* m;
  float* l;
  float* alpha;
  long long* pos;
  __device__ explicit Stats(float* base)
      : m(base), l(base + kRows), alpha(base + 2 * kRows),
        pos(reinterpret_cast<long long*>(base + 3 * kRows + (kRows % 2))) {}
  static constexpr int kFloats = 3 * kRows + (kRows % 2) + 2 * kRows;
};

__host__ __device__ constexpr int RoundUp4(int x) { return (x + 3) / 4 * 4; }
__host__ __device__ constexpr int RoundUp8(int x) { return (x + 7) / 8 * 8; }

// Row stride for rows read as float4 by 8 consecutive rows at once: (stride / 4) odd.
int ConflictFreeStride(int width) {
  const int s = RoundUp4(width);
  return (s / 4) % 2 == 0 ? s + 4 : s;
}

// Fills p = scale * q·k for the tile's keys j0 + key, -inf where key > pos[row].
template <int kRows>
__device__ __forceinline__ void ScoreTile(const TileLayout& lay, const float* sq, const float* sk,
                                          float* sp, const Stats<kRows>& st, int64_t j0,
                                          float scale) {
  constexpr int kA = kRows / 16;
  const int tq = threadIdx.x >> 4, tk = threadIdx.x & 15;
  const int stride4 = lay.qk_stride / 4;
  const float4* q4 = reinterpret_cast<const float4*>(sq) + tq * stride4;
  const float4* k4 = reinterpret_cast<const float4*>(sk) + tk * stride4;
  float acc[kA][2];
#pragma unroll
  for (int a = 0; a < kA; ++a) acc[a][0] = acc[a][1] = 0.0f;
#pragma unroll 2
  for (int d = 0; d < lay.dk4; ++d) {
    const float4 k0 = k4[d], k1 = k4[16 * stride4 + d];
#pragma unroll
    for (int a = 0; a < kA; ++a) {
      const float4 q = q4[16 * a * stride4 + d];
      acc[a][0] = fmaf(q.x, k0.x, fmaf(q.y, k0.y, fmaf(q.z, k0.z, fmaf(q.w, k0.w, acc[a][0]))));
      acc[a][1] = fmaf(q.x, k1.x, fmaf(q.y, k1.y, fmaf(q.z, k1.z, fmaf(q.w, k1.w, acc[a][1]))));
    }
  }
#pragma unroll
  for (int a = 0; a < kA; ++a) {
    const int row = tq + 16 * a;
    const long long pos = st.pos[row];
#pragma unroll
    for (int b = 0; b < 2; ++b) {
      const int key = tk + 16 * b;
      sp[row * kPStride + key] = j0 + key <= pos ? acc[a][b] * scale : -INFINITY;
    }
  }
}

// Online softmax step: p ← exp(p - m_new) in place, l ← l·alpha + Σp, alpha = exp(m_old - m_new).
template <int kRows>
__device__ __forceinline__ void SoftmaxTile(float* sp, const Stats<kRows>& st) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int row = warp; row < kRows; row += kWarps) {
    const float s = sp[row * kPStride + lane];
    const float m_old = st.m[row];
    const float m_new = fmaxf(m_old, WarpMax(s));
    const float e = s == -INFINITY ? 0.0f : expf(s - m_new);
    const float sum = WarpSum(e);
    sp[row * kPStride + lane] = e;
    __syncwarp();
    if (lane == 0) {
      const float alpha = m_new == -INFINITY ? 1.0f : expf(m_old - m_new);
      st.m[row] = m_new;
      st.l[row] = st.l[row] * alpha + sum;
      st.alpha[row] = alpha;
    }
  }
}

template <int kRows, int kItems>
__device__ __forceinline__ void AccumulateTile(const TileLayout& lay, const float* sp,
                                               const float* sv, const Stats<kRows>& st,
                                               float (&acc)[kItems][kRows / 16][4]) {
  constexpr int kA = kRows / 16;
  const int vstride4 = lay.v_stride / 4;
#pragma unroll
  for (int m = 0; m < kItems; ++m) {
    const int item = threadIdx.x + m * kThreads;
    const int rg = item / lay.v4, c4 = item % lay.v4;
    if (rg >= 16) continue;
    float alpha[kA];
#pragma unroll
    for (int a = 0; a < kA; ++a) {
      alpha[a] = st.alpha[rg + 16 * a];
#pragma unroll
      for (int x = 0; x < 4; ++x) acc[m][a][x] *= alpha[a];
    }
    const float4* v4 = reinterpret_cast<const float4*>(sv) + c4;
#pragma unroll 4
    for (int key = 0; key < kKeys; ++key) {
      const float4 v = v4[key * vstride4];
#pragma unroll
      for (int a = 0; a < kA; ++a) {
        const float p = sp[(rg + 16 * a) * kPStride + key];
        acc[m][a][0] = fmaf(p, v.x, acc[m][a][0]);
        acc[m][a][1] = fmaf(p, v.y, acc[m][a][1]);
        acc[m][a][2] = fmaf(p, v.z, acc[m][a][2]);
        acc[m][a][3] = fmaf(p, v.w, acc[m][a][3]);
      }
    }
  }
}

// Runs the key loop over the tiles starting at j0 = j_begin, j_begin + kKeys, ... < j_end;
// load_tile(j0, sk, sv) fills a key tile (zeros past the last live key). On return (after a
// barrier) acc holds Σ_j exp(s_j - m) v_j per row, st.m the running max and st.l the sums.
template <int kRows, int kItems, typename LoadTile>
__device__ __forceinline__ void AttendKeys(const TileLayout& lay, float* smem, int64_t j_begin,
                                           int64_t j_end, float scale, const Stats<kRows>& st,
                                           float (&acc)[kItems][kRows / 16][4],
                                           LoadTile load_tile) {
  const float* sq = smem + lay.q_off;
  float* sk = smem + lay.k_off;
  float* sv = smem + lay.v_off;
  float* sp = smem + lay.p_off;
#pragma unroll
  for (int m = 0; m < kItems; ++m)
#pragma unroll
    for (int a = 0; a < kRows / 16; ++a)
#pragma unroll
      for (int x = 0; x < 4; ++x) acc[m][a][x] = 0.0f;
  for (int64_t j0 = j_begin; j0 < j_end; j0 += kKeys) {
    __syncthreads();  // the previous tile's readers are done (first tile: Q and stats written)
    load_tile(j0, sk, sv);
    __syncthreads();
    ScoreTile<kRows>(lay, sq, sk, sp, st, j0, scale);
    __syncthreads();
    SoftmaxTile<kRows>(sp, st);
    __syncthreads();
    AccumulateTile<kRows, kItems>(lay, sp, sv, st, acc);
  }
  __syncthreads();
}

// ---------------------------------------------------------------------------------------------
// Expanded form.

struct ExpandedArgs {
  TileLayout lay;
  TensorView q, out;
  const MlaSequence* seqs;
  const float* const* kv_all;
  int64_t num_seqs;
  int rank, nope, rope, v_dim;
  float scale;
};

// Grid: (ceil(T / 32), H). Block (x, h) attends head h for packed rows [32x, 32x + 32), one
// segment (the rows of one expanded sequence) at a time.
template <int kItems>
__global__ void __launch_bounds__(kThreads) MlaExpandedKernel(ExpandedArgs args) {
  constexpr int kRows = kExpandedRows, kA = kRows / 16;
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  const TileLayout& lay = args.lay;
  const Stats<kRows> st(smem + lay.stat_off);
  int* row_seq = reinterpret_cast<int*>(smem + lay.map_off);
  float* sq = smem + lay.q_off;

  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const int h = blockIdx.y;
  const int64_t total_rows = args.q.rows;
  const int n = static_cast<int>(total_rows - t0 < kRows ? total_rows - t0 : kRows);
  MapRows(args.seqs, args.num_seqs, static_cast<int>(MlaForm::kExpanded), t0, n, row_seq);

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int nope = args.nope, rope = args.rope, v_dim = args.v_dim;
  const int qk = nope + rope, kv_width = nope + v_dim;
  const int64_t kv_stride = static_cast<int64_t>(gridDim.y) * kv_width;
  const int64_t latent_width = args.rank + rope;
  const int dk_pad = 4 * lay.dk4, v_pad = 4 * lay.v4;

  for (int r0 = 0; r0 < n;) {
    const int si = row_seq[r0];
    int r1 = r0 + 1;
    while (r1 < n && row_seq[r1] == si) ++r1;
    if (si >= 0) {
      const MlaSequence seq = args.seqs[si];
      const float* kv = args.kv_all[si] + static_cast<int64_t>(h) * kv_width;
      // Live rows r0..r1-1 of the tile; packed row t sits at position num_cached + t - begin.
      const int64_t pos0 = seq.num_cached + (t0 - seq.rows.begin);
      if (threadIdx.x < kRows) {
        const int r = threadIdx.x;
        st.pos[r] = r >= r0 && r < r1 ? pos0 + r : -1;
        st.m[r] = -INFINITY;
        st.l[r] = 0.0f;
      }
      for (int r = warp; r < kRows; r += kWarps) {
        const bool live = r >= r0 && r < r1;
        const float* q_row =
            live ? RowF32(args.q, t0 + r) + static_cast<int64_t>(h) * qk : nullptr;
        for (int c = lane; c < dk_pad; c += 32) {
          sq[r * lay.qk_stride + c] = live && c < qk ? q_row[c] : 0.0f;
        }
      }
      const int64_t max_key = pos0 + r1 - 1;
      float acc[kItems][kA][4];
      AttendKeys<kRows, kItems>(
          lay, smem, 0, max_key + 1, args.scale, st, acc, [&](int64_t j0, float* sk, float* sv) {
            for (int kk = warp; kk < kKeys; kk += kWarps) {
              const int64_t j = j0 + kk;
              const bool live = j <= max_key;
              const float* kv_row = kv + j * kv_stride;
              const LatentRowReader latent_row = LatentRow(seq.cache, live ? j : 0, latent_width);
              float* k_dst = sk + kk * lay.qk_stride;
              float* v_dst = sv + kk * lay.v_stride;
              for (int c = lane; c < dk_pad; c += 32) {
                k_dst[c] = !live ? 0.0f : c < nope ? kv_row[c] : c < qk ? latent_row[args.rank + c - nope] : 0.0f;
              }
              for (int c = lane; c < v_pad; c += 32) {
                v_dst[c] = live && c < v_dim ? kv_row[nope + c] : 0.0f;
              }
            }
          });
#pragma unroll
      for (int m = 0; m < kItems; ++m) {
        const int item = threadIdx.x + m * kThreads;
        const int rg = item / lay.v4, c4 = item % lay.v4;
        if (rg >= 16) continue;
#pragma unroll
        for (int a = 0; a < kA; ++a) {
          const int r = rg + 16 * a;
          if (st.pos[r] < 0) continue;
          const float l = st.l[r];
          float* o = RowF32(args.out, t0 + r) + static_cast<int64_t>(h) * v_dim;
#pragma unroll
          for (int x = 0; x < 4; ++x) {
            if (4 * c4 + x < v_dim) o[4 * c4 + x] = acc[m][a][x] / l;
          }
        }
      }
      __syncthreads();  // the next segment rewrites the stats and Q
    }
    r0 = r1;
  }
}

// ---------------------------------------------------------------------------------------------
// Absorbed form.

struct AbsorbedArgs {
  TileLayout lay;
  TensorView q, kv_b, out;
  const MlaSequence* seqs;
  int64_t num_seqs;
  int heads, rank, nope, rope, v_dim;
  float scale;
  // With P > 1 partitions (gridDim.z = S * P) each cluster attends to 1/P of a query's key
  // tiles and writes its merged but unnormalised state [m, l, o_lat (rank)] for each head to
  // partial[((t * heads + h) * P + p) * (rank + 2)]; MlaAbsorbedMergeKernel and
  // MlaAbsorbedProjectKernel finish. The tensor-core kernel writes a row's segments to the slots
  // row_slots[t] names instead: partial[(slot * heads + h) * (rank + 2)].
  float* partial;
  const MlaRowSlots* row_slots = nullptr;
};

// The partition or segment states of head h for packed row t: `count` of them, `stride` floats
// apart from `first`.
struct RowStates {
  float* first;
  int64_t stride;
  int count;
};
__device__ __forceinline__ RowStates StatesOf(const AbsorbedArgs& args, int64_t t, int h, int partitions) {
  const int64_t entry_floats = args.rank + 2;
  if (args.row_slots != nullptr) {
    const MlaRowSlots slots = args.row_slots[t];
    return {args.partial + (slots.first * args.heads + h) * entry_floats, args.heads * entry_floats, slots.count};
  }
  return {args.partial + (t * args.heads + h) * partitions * entry_floats, entry_floats, partitions};
}

// Grid: (T, ceil(H / 16), S * P) in clusters of (1, 1, S), S in {1, 2, 4, 8}. The S blocks of a
// cluster share packed row t (when an absorbed sequence holds it) and heads [16y, 16y + 16):
// q_lat = W_UKᵀ q_nope per head (each block computes 16/S heads and writes them into every
// block's Q tile through distributed shared memory), attention over the latent cache (key
// [c_n ‖ k_pe], value c_n, the key tile doubling as the value tile) with the key tiles split
// into S contiguous ranges, the S partial softmax states merged through distributed shared
// memory, then W_UV (each block again for its 16/S heads).
// Two blocks per SM fit the Kimi shapes' ~111 KiB of shared memory; the bound keeps ptxas from
// squeezing the kernel into 64 registers (which spills).
template <int kItems>
__global__ void __launch_bounds__(kThreads, 2) MlaAbsorbedKernel(AbsorbedArgs args) {
  constexpr int kRows = kAbsorbedRows;
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  const TileLayout& lay = args.lay;
  const Stats<kRows> st(smem + lay.stat_off);
  int* row_seq = reinterpret_cast<int*>(smem + lay.map_off);
  float* sq = smem + lay.q_off;
  float* sk = smem + lay.k_off;  // q_nope [kRows, nope] before the key loop, o_lat after it

  const int64_t t = blockIdx.x;
  MapRows(args.seqs, args.num_seqs, static_cast<int>(MlaForm::kAbsorbed), t, 1, row_seq);
  const int si = row_seq[0];
  if (si < 0) return;  // uniform over the cluster (all its blocks share t)
  const MlaSequence seq = args.seqs[si];
  const int64_t pos = seq.num_cached + (t - seq.rows.begin);

  cg::cluster_group cluster = cg::this_cluster();
  const int split = static_cast<int>(cluster.num_blocks());
  const int rank_in_cluster = static_cast<int>(cluster.block_rank());
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int h0 = blockIdx.y * kRows;
  const int heads = args.heads - h0 < kRows ? args.heads - h0 : kRows;
  // This block's share of the heads for q_lat and W_UV: [g_lo, g_hi).
  const int per_block = (kRows + split - 1) / split;
  const int g_lo = rank_in_cluster * per_block;
  const int g_hi = g_lo + per_block < heads ? g_lo + per_block : heads;
  const int rank = args.rank, nope = args.nope, rope = args.rope, v_dim = args.v_dim;
  const int qk = nope + rope, kv_width = nope + v_dim, latent_width = rank + rope;
  const int dk_pad = 4 * lay.dk4;
  const float* q_row = RowF32(args.q, t);

  if (threadIdx.x < kRows) {
    st.pos[threadIdx.x] = static_cast<int>(threadIdx.x) < heads ? pos : -1;
    st.m[threadIdx.x] = -INFINITY;
    st.l[threadIdx.x] = 0.0f;
  }
  for (int i = threadIdx.x; i < kRows * nope; i += kThreads) {
    const int g = i / nope, c = i % nope;
    sk[i] = g < heads ? q_row[(h0 + g) * qk + c] : 0.0f;
  }
  // Q row g = [q_lat (rank) ‖ q_pe (rope) ‖ zeros]; q_pe and the padding here, q_lat below.
  const int tail = dk_pad - rank;
  for (int i = threadIdx.x; i < kRows * tail; i += kThreads) {
    const int g = i / tail, c = rank + i % tail;
    const bool live = g < heads && c < latent_width;
    sq[g * lay.qk_stride + c] = live ? q_row[(h0 + g) * qk + nope + (c - rank)] : 0.0f;
  }
  for (int i = threadIdx.x; i < kRows * rank; i += kThreads) {
    const int g = i / rank;
    if (g >= heads) sq[g * lay.qk_stride + i % rank] = 0.0f;
  }
  cluster.sync();  // every block of the cluster runs (its shared memory is addressable); q_nope

  // q_lat[g][r] = Σ_n W_UK[h0 + g][n][r] q_nope[g][n] for this block's heads, into every Q tile.
  const int own = g_hi > g_lo ? g_hi - g_lo : 0;
  for (int i = threadIdx.x; i < own * rank; i += kThreads) {
    const int g = g_lo + i / rank, r = i % rank;
    const int64_t w_row = static_cast<int64_t>(h0 + g) * kv_width;
    const float* qn = sk + g * nope;
    float sum = 0.0f;
#pragma unroll 8
    for (int c = 0; c < nope; ++c) sum = fmaf(LoadAt(args.kv_b, w_row + c, r), qn[c], sum);
    for (int b = 0; b < split; ++b) cluster.map_shared_rank(sq, b)[g * lay.qk_stride + r] = sum;
  }
  cluster.sync();  // every Q tile is complete

  // This block's key tiles: its share of its partition's share of the ceil((pos + 1) / kKeys).
  const int partitions = static_cast<int>(gridDim.z) / split;
  const int partition = static_cast<int>(blockIdx.z) / split;
  const int64_t tiles = pos / kKeys + 1;
  const int64_t part_lo = tiles * partition / partitions;
  const int64_t part_tiles = tiles * (partition + 1) / partitions - part_lo;
  const int64_t tile_lo = part_lo + part_tiles * rank_in_cluster / split;
  const int64_t tile_hi = part_lo + part_tiles * (rank_in_cluster + 1) / split;
  float acc[kItems][1][4];
  AttendKeys<kRows, kItems>(lay, smem, tile_lo * kKeys, tile_hi * kKeys, args.scale, st, acc,
                            [&](int64_t j0, float* k_tile, float*) {
                              for (int kk = warp; kk < kKeys; kk += kWarps) {
                                const int64_t j = j0 + kk;
                                const bool live = j <= pos;
                                const LatentRowReader src = LatentRow(seq.cache, live ? j : 0, latent_width);
                                float* dst = k_tile + kk * lay.qk_stride;
                                for (int c = lane; c < dk_pad; c += 32) {
                                  dst[c] = live && c < latent_width ? src[c] : 0.0f;
                                }
                              }
                            });

  // The partial state (m, l, unnormalised Σ p c_n) of every head into this block's Q tile.
#pragma unroll
  for (int m = 0; m < kItems; ++m) {
    const int item = threadIdx.x + m * kThreads;
    const int rg = item / lay.v4, c4 = item % lay.v4;
    if (rg >= heads) continue;
#pragma unroll
    for (int x = 0; x < 4; ++x) {
      if (4 * c4 + x < rank) sq[rg * lay.qk_stride + 4 * c4 + x] = acc[m][0][x];
    }
  }
  cluster.sync();  // every partial state is complete

  // Merge the S partial states of this block's heads: o_lat = Σ_b w_b o_b / Σ_b w_b l_b with
  // w_b = exp(m_b - max_b m_b); into sk as [own, rank].
  for (int i = threadIdx.x; i < own * rank; i += kThreads) {
    const int g = g_lo + i / rank, r = i % rank;
    float m_max = -INFINITY;
    for (int b = 0; b < split; ++b) m_max = fmaxf(m_max, cluster.map_shared_rank(st.m, b)[g]);
    float l = 0.0f, o = 0.0f;
    for (int b = 0; b < split; ++b) {
      const float m_b = cluster.map_shared_rank(st.m, b)[g];
      if (m_b == -INFINITY) continue;  // no live key in that block's range
      const float w = expf(m_b - m_max);
      l = fmaf(w, cluster.map_shared_rank(st.l, b)[g], l);
      o = fmaf(w, cluster.map_shared_rank(sq, b)[g * lay.qk_stride + r], o);
    }
    if (partitions > 1) {
      float* entry = args.partial +
                     ((t * args.heads + h0 + g) * partitions + partition) * (rank + 2);
      if (r == 0) {
        entry[0] = m_max;  // -inf (and l = 0) when the partition holds no live key
        entry[1] = l;
      }
      entry[2 + r] = o;
    } else {
      sk[i] = o / l;
    }
  }
  cluster.sync();  // no block leaves while another reads its shared memory; o_lat complete
  if (partitions > 1) return;

  // out[t, h*v + c] = Σ_r W_UV[h][c][r] o_lat[h][r], one warp per output.
  float* out_row = RowF32(args.out, t);
  for (int o = warp; o < own * v_dim; o += kWarps) {
    const int g = g_lo + o / v_dim, c = o % v_dim;
    const int64_t w_row = static_cast<int64_t>(h0 + g) * kv_width + nope + c;
    const float* o_lat = sk + (g - g_lo) * rank;
    float sum = 0.0f;
    for (int r = lane; r < rank; r += 32) sum = fmaf(LoadAt(args.kv_b, w_row, r), o_lat[r], sum);
    sum = WarpSum(sum);
    if (lane == 0) out_row[(h0 + g) * v_dim + c] = sum;
  }
}

// Grid: (T, H, kMergeSplit). Merges the states of head h for packed row t (an absorbed row; its
// partitions, or the tensor-core kernel's segments: StatesOf): o_lat = Σ_p w_p o_p / Σ_p w_p l_p
// with w_p = exp(m_p - max m). Block z takes latent columns [z·S, (z+1)·S) (S = ceil(rank /
// kMergeSplit)), two halves of the states at a time, and writes them over the first state's
// columns, which no other block reads (m and l stay), for MlaAbsorbedProjectKernel.
constexpr int kMergeSplit = 4;

// Dynamic shared memory of the merge, in floats, for rows of at most `states` states.
int MergeSmemFloats(int rank, int states) {
  const int slice = (rank + kMergeSplit - 1) / kMergeSplit;
  return 2 * slice + states;
}

__global__ void __launch_bounds__(kThreads) MlaAbsorbedMergeKernel(AbsorbedArgs args, int partitions) {
  AllowDependentLaunch();
  extern __shared__ float4 smem4[];
  const int rank = args.rank;
  const int slice = (rank + kMergeSplit - 1) / kMergeSplit;
  float* halves = reinterpret_cast<float*>(smem4);  // [2][slice]: each half's sums
  float* weight = halves + 2 * slice;                // [states]
  __shared__ int row_seq[1];
  __shared__ float scratch[32];
  const int64_t t = blockIdx.x;
  const int h = blockIdx.y, z = blockIdx.z;
  // Which states to merge comes from the call's uploaded descriptors: looked up before the wait.
  MapRows(args.seqs, args.num_seqs, static_cast<int>(MlaForm::kAbsorbed), t, 1, row_seq);
  const RowStates states = StatesOf(args, t, h, partitions);
  WaitForPriorKernels();
  if (row_seq[0] < 0) return;
  float* const entries = states.first;
  const int64_t stride = states.stride;
  const int count = states.count;
  float m_local = -INFINITY;
  for (int p = threadIdx.x; p < count; p += kThreads) m_local = fmaxf(m_local, entries[p * stride]);
  const float m_max = BlockMax(m_local, scratch);
  float l_local = 0.0f;
  for (int p = threadIdx.x; p < count; p += kThreads) {
    const float m_p = entries[p * stride];
    const float w = m_p == -INFINITY ? 0.0f : expf(m_p - m_max);
    weight[p] = w;
    l_local = fmaf(w, entries[p * stride + 1], l_local);
  }
  const float l = BlockSum(l_local, scratch);  // its barriers also publish weight[]
  const int lo = z * slice, hi = min(rank, lo + slice);
  const int split = (count + 1) / 2;
  for (int i = threadIdx.x; i < 2 * slice; i += kThreads) {
    const int half = i / slice, r = lo + i % slice;
    if (r >= hi) continue;
    const int p_end = half == 0 ? split : count;
    float o = 0.0f;
#pragma unroll 16
    for (int p = half == 0 ? 0 : split; p < p_end; ++p) o = fmaf(weight[p], entries[p * stride + 2 + r], o);
    halves[i] = o;
  }
  __syncthreads();  // every read of the first state's columns is done
  for (int r = lo + static_cast<int>(threadIdx.x); r < hi; r += kThreads) {
    entries[2 + r] = (halves[r - lo] + halves[slice + r - lo]) / l;
  }
}

// W_UV after the attention: out[t, h·V + c] = Σ_r W_UV[h][c][r] · o_lat[t, h][r], o_lat being
// the columns of the row's first state (merged by MlaAbsorbedMergeKernel, or divided by its l
// here when the states were not merged: one per row). Grid (H, ceil(V / kProjectCols), row
// groups): a block holds kProjectCols rows of W_UV in shared memory (loaded before it waits for
// the kernels ahead: no kernel writes weights) and applies them to kProjectRows packed rows at a
// time, lane c for output column c, warp w for every kWarps-th 4 latent columns, the warps meeting
// in shared memory. Rows are grouped so that a weight is read from L2 once per kProjectRows rows,
// not once per row (which cost up to 150 µs at 64 rows).
constexpr int kProjectCols = 32;
constexpr int kProjectRows = 8;
static_assert(kProjectRows * kProjectCols == kThreads, "a thread per output of a row group");

// Dynamic shared memory of the projection, in floats: W rows with a stride of 4 mod 32 words
// (a lane's float4 reads are conflict-free), the rows' o_lat, the warps' partial sums.
int ProjectSmemFloats(int rank) {
  return kProjectCols * (RoundUp8(rank) + 4) + kProjectRows * RoundUp8(rank) + kWarps * kProjectRows * kProjectCols;
}

__global__ void __launch_bounds__(kThreads) MlaAbsorbedProjectKernel(AbsorbedArgs args, int partitions,
                                                                     bool merged) {
  AllowDependentLaunch();
  extern __shared__ float4 smem4[];
  const int rank = args.rank, padded = RoundUp8(rank), w_ld = padded + 4;
  float* w = reinterpret_cast<float*>(smem4);  // [kProjectCols][w_ld]
  float* o = w + kProjectCols * w_ld;          // [kProjectRows][padded]
  float* sums = o + kProjectRows * padded;     // [kWarps][kProjectRows][kProjectCols]
  __shared__ int row_seq[kProjectRows];
  __shared__ const float* row_state[kProjectRows];  // each row's first state
  const int h = blockIdx.x, c0 = blockIdx.y * kProjectCols;
  const int kv_width = args.nope + args.v_dim;
  // Several loads in flight per thread before any store: the weights' latency is most of this
  // kernel's time at small batches.
  constexpr int kInFlight = 4;
  const int chunks = kProjectCols * (padded / 8);
  for (int i0 = threadIdx.x; i0 < chunks; i0 += kInFlight * kThreads) {
    float v[kInFlight][8];
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
      const int i = min(i0 + u * kThreads, chunks - 1), c = min(c0 + i / (padded / 8), args.v_dim - 1);
      Load8(args.kv_b, static_cast<int64_t>(h) * kv_width + args.nope + c, 8 * (i % (padded / 8)), v[u]);
    }
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
      const int i = i0 + u * kThreads, c = i / (padded / 8), k = 8 * (i % (padded / 8));
      if (i >= chunks) break;
      // Columns past v_dim hold row v_dim - 1 again: their sums are never written.
      float4* dst = reinterpret_cast<float4*>(w + c * w_ld + k);
      dst[0] = make_float4(v[u][0], v[u][1], v[u][2], v[u][3]);
      dst[1] = make_float4(v[u][4], v[u][5], v[u][6], v[u][7]);
    }
  }
  // A row group's sequences and states, from the call's uploaded descriptors (the first group's
  // looked up before the wait). MapRows syncs.
  const auto map_rows = [&](int64_t t0, int n) {
    if (static_cast<int>(threadIdx.x) < n) {
      row_state[threadIdx.x] = StatesOf(args, t0 + threadIdx.x, h, partitions).first;
    }
    MapRows(args.seqs, args.num_seqs, static_cast<int>(MlaForm::kAbsorbed), t0, n, row_seq);
  };
  const auto group_rows = [&](int64_t t0) {
    return static_cast<int>(args.out.rows - t0 < kProjectRows ? args.out.rows - t0 : kProjectRows);
  };
  const int64_t first_t0 = static_cast<int64_t>(blockIdx.z) * kProjectRows;
  if (first_t0 < args.out.rows) map_rows(first_t0, group_rows(first_t0));
  WaitForPriorKernels();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t t0 = first_t0; t0 < args.out.rows; t0 += static_cast<int64_t>(gridDim.z) * kProjectRows) {
    const int n = group_rows(t0);
    if (t0 != first_t0) map_rows(t0, n);
    for (int i0 = threadIdx.x; i0 < kProjectRows * padded; i0 += kInFlight * kThreads) {
      float v[kInFlight];
#pragma unroll
      for (int u = 0; u < kInFlight; ++u) {
        const int i = i0 + u * kThreads, r = i / padded, k = i % padded;
        v[u] = 0.0f;
        if (r < n && row_seq[r] >= 0 && k < rank) {
          const float* entry = row_state[r];
          v[u] = merged ? entry[2 + k] : entry[2 + k] / entry[1];
        }
      }
#pragma unroll
      for (int u = 0; u < kInFlight; ++u) {
        if (i0 + u * kThreads < kProjectRows * padded) o[i0 + u * kThreads] = v[u];
      }
    }
    __syncthreads();
    float acc[kProjectRows] = {};
    for (int k = 4 * warp; k < padded; k += 4 * kWarps) {
      const float4 wv = *reinterpret_cast<const float4*>(w + lane * w_ld + k);
#pragma unroll
      for (int r = 0; r < kProjectRows; ++r) {
        const float4 ov = *reinterpret_cast<const float4*>(o + r * padded + k);
        acc[r] = fmaf(wv.x, ov.x, fmaf(wv.y, ov.y, fmaf(wv.z, ov.z, fmaf(wv.w, ov.w, acc[r]))));
      }
    }
#pragma unroll
    for (int r = 0; r < kProjectRows; ++r) sums[(warp * kProjectRows + r) * kProjectCols + lane] = acc[r];
    __syncthreads();
    {
      const int r = threadIdx.x / kProjectCols, c = threadIdx.x % kProjectCols;
      if (r < n && row_seq[r] >= 0 && c0 + c < args.v_dim) {
        float total = 0.0f;
#pragma unroll
        for (int v = 0; v < kWarps; ++v) total += sums[(v * kProjectRows + r) * kProjectCols + c];
        RowF32(args.out, t0 + r)[h * args.v_dim + c0 + c] = total;
      }
    }
    __syncthreads();  // o, sums and row_seq are reused by the next row group
  }
}

// ---------------------------------------------------------------------------------------------
// Host side.

int Invalid() { return static_cast<int>(cudaErrorInvalidValue); }

// Smallest supported accumulator count covering 16 row groups x v4 float4 columns, or 0.
int ItemsFor(int v4) {
  const int needed = (16 * v4 + kThreads - 1) / kThreads;
  for (int items : {1, 2, 4, 8}) {
    if (needed <= items) return items;
  }
  return 0;
}

// Lays out Q [rows, qk_stride], K [kKeys, qk_stride] (at least k_min floats), V (separate
// unless v_aliases_k), P [rows, kPStride], the stats and the row map.
template <int kRows>
TileLayout MakeLayout(int dot_width, int value_width, bool v_aliases_k, int k_min) {
  TileLayout lay;
  lay.qk_stride = ConflictFreeStride(dot_width);
  lay.dk4 = RoundUp4(dot_width) / 4;
  lay.v4 = RoundUp4(value_width) / 4;
  lay.v_stride = v_aliases_k ? lay.qk_stride : 4 * lay.v4;
  int at = 0;
  auto take = [&](int floats) {
    const int off = at;
    at += RoundUp4(floats);
    return off;
  };
  lay.q_off = take(kRows * lay.qk_stride);
  lay.k_off = take(std::max(kKeys * lay.qk_stride, k_min));
  lay.v_off = v_aliases_k ? lay.k_off : take(kKeys * lay.v_stride);
  lay.p_off = take(kRows * kPStride);
  lay.stat_off = take(Stats<kRows>::kFloats);
  lay.map_off = take(kRows);
  lay.floats = at;
  return lay;
}

bool ValidParams(const MlaParams& p) {
  return p.num_heads > 0 && p.kv_lora_rank > 0 && p.qk_nope_dim >= 0 && p.qk_rope_dim >= 0 &&
         p.qk_nope_dim + p.qk_rope_dim > 0 && p.v_dim > 0 && p.num_heads <= 65535 &&
         p.kv_lora_rank + p.qk_rope_dim <= (1 << 20) && p.qk_nope_dim + p.v_dim <= (1 << 20);
}

// Launches `kernel` with `smem` bytes of dynamic shared memory, in clusters of (1, 1, cluster_z)
// blocks when cluster_z > 1.
template <typename Args>
int LaunchTiled(void (*kernel)(Args), dim3 grid, size_t smem, const Args& args,
                cudaStream_t stream, unsigned cluster_z = 1) {
  if (const int error = AllowDynamicSmem(kernel, smem); error != 0) return error;
  if (cluster_z <= 1) {
    kernel<<<grid, kThreads, smem, stream>>>(args);
    return static_cast<int>(cudaGetLastError());
  }
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeClusterDimension;
  attribute[0].val.clusterDim.x = 1;
  attribute[0].val.clusterDim.y = 1;
  attribute[0].val.clusterDim.z = cluster_z;
  config.attrs = attribute;
  config.numAttrs = 1;
  const cudaError_t err = cudaLaunchKernelEx(&config, kernel, args);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return static_cast<int>(err);
  }
  return static_cast<int>(cudaGetLastError());
}

// Blocks of a cluster that split one query's keys in the absorbed form: enough for about
// kAbsorbedTargetBlocks blocks in all, at most 8 (the portable cluster size).
constexpr int64_t kAbsorbedTargetBlocks = 256;
unsigned AbsorbedSplit(int64_t blocks_unsplit) {
  unsigned split = 1;
  while (split < 8 && blocks_unsplit * split < kAbsorbedTargetBlocks) split *= 2;
  return split;
}

// Partitions of the key range beyond the cluster split: decode batches too small to fill the GPU
// at long contexts (batch 1: 16 blocks) get up to 64 partitions, each block keeping >= 8 tiles.
constexpr int64_t kMinTilesPerBlock = 8;
int64_t AbsorbedPartitions(int64_t rows, int64_t groups, int64_t max_keys) {
  const int64_t blocks = rows * groups * AbsorbedSplit(rows * groups);
  const int64_t by_work = (max_keys / kKeys + 1) / (AbsorbedSplit(rows * groups) * kMinTilesPerBlock);
  int64_t partitions = 1;
  while (partitions < 64 && blocks * partitions * 2 <= kAbsorbedTargetBlocks &&
         partitions * 2 <= by_work) {
    partitions *= 2;
  }
  return partitions;
}

// After an absorbed attention that wrote partition or segment states (at most `states` per
// row): their merge (merged: more than one state to some row), then W_UV.
int LaunchMergeAndProject(const AbsorbedArgs& args, int partitions, int states, bool merged,
                          cudaStream_t stream) {
  const int64_t rows = args.out.rows;
  if (merged) {
    const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(args.heads), kMergeSplit);
    const size_t smem = sizeof(float) * MergeSmemFloats(args.rank, states);
    const int error =
        LaunchAfterPrior(MlaAbsorbedMergeKernel, grid, dim3(kThreads), smem, stream, args, partitions);
    if (error != 0) return error;
  }
  const size_t smem = sizeof(float) * ProjectSmemFloats(args.rank);
  if (const int error = AllowDynamicSmem(MlaAbsorbedProjectKernel, smem); error != 0) return error;
  const int64_t groups = std::min<int64_t>((rows + kProjectRows - 1) / kProjectRows, 65535);
  const int column_blocks = (args.v_dim + kProjectCols - 1) / kProjectCols;
  const dim3 grid(static_cast<unsigned>(args.heads), static_cast<unsigned>(column_blocks),
                  static_cast<unsigned>(groups));
  return LaunchAfterPrior(MlaAbsorbedProjectKernel, grid, dim3(kThreads), smem, stream, args, partitions, merged);
}

}  // namespace

size_t MlaAbsorbedScratchFloats(const MlaParams& params, int64_t rows, int64_t max_keys, bool tensor_cores) {
  if (tensor_cores && MlaAbsorbedTcSupports(params)) {
    return (MlaAbsorbedTcScratchBytes(params, rows, max_keys) + sizeof(float) - 1) / sizeof(float);
  }
  const int64_t groups = (params.num_heads + kAbsorbedRows - 1) / kAbsorbedRows;
  const int64_t partitions = AbsorbedPartitions(rows, groups, max_keys);
  if (partitions <= 1) return 0;
  return static_cast<size_t>(rows * params.num_heads * partitions * (params.kv_lora_rank + 2));
}

int LaunchMlaAppendLatent(TensorView latent, const MlaSequence* seqs, int64_t num_seqs,
                          Stream stream) {
  if (num_seqs < 0 || latent.dtype != DType::kF32 || latent.cols <= 0) return Invalid();
  if (num_seqs == 0 || latent.rows == 0) return 0;
  const int64_t blocks = (latent.rows + kAppendRows - 1) / kAppendRows;
  if (seqs == nullptr || !FitsGridX(blocks)) return Invalid();
  auto s = static_cast<cudaStream_t>(stream);
  return LaunchAfterPrior(MlaAppendKernel, dim3(static_cast<unsigned>(blocks)), dim3(kThreads), 0, s, latent, seqs,
                          num_seqs);
}

int LaunchMlaGatherLatent(const MlaSequence* seq, int64_t first, int64_t width, TensorView dst, Stream stream) {
  if ((dst.dtype != DType::kF32 && dst.dtype != DType::kBF16) || dst.cols <= 0 || dst.cols > width || first < 0) {
    return Invalid();
  }
  if (dst.rows == 0) return 0;
  const int64_t blocks = (dst.rows + kAppendRows - 1) / kAppendRows;
  if (seq == nullptr || !FitsGridX(blocks)) return Invalid();
  const auto kernel =
      dst.dtype == DType::kBF16 ? MlaGatherLatentKernel<__nv_bfloat16> : MlaGatherLatentKernel<float>;
  kernel<<<static_cast<unsigned>(blocks), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(seq, first, width, dst);
  return static_cast<int>(cudaGetLastError());
}

int LaunchMlaExpandedAttention(const MlaParams& params, TensorView q, const MlaSequence* seqs,
                               const float* const* kv_all, int64_t num_seqs, TensorView out,
                               Stream stream) {
  if (num_seqs < 0 || !ValidParams(params) || q.dtype != DType::kF32 || out.dtype != DType::kF32) {
    return Invalid();
  }
  const int64_t heads = params.num_heads;
  if (q.cols != heads * (params.qk_nope_dim + params.qk_rope_dim) ||
      out.cols != heads * params.v_dim || out.rows != q.rows) {
    return Invalid();
  }
  if (num_seqs == 0 || q.rows == 0) return 0;
  if (seqs == nullptr || kv_all == nullptr || num_seqs > 0x7fffffffLL) return Invalid();
  const int64_t tiles = (q.rows + kExpandedRows - 1) / kExpandedRows;
  if (!FitsGridX(tiles)) return Invalid();

  ExpandedArgs args;
  args.q = q;
  args.out = out;
  args.seqs = seqs;
  args.kv_all = kv_all;
  args.num_seqs = num_seqs;
  args.rank = static_cast<int>(params.kv_lora_rank);
  args.nope = static_cast<int>(params.qk_nope_dim);
  args.rope = static_cast<int>(params.qk_rope_dim);
  args.v_dim = static_cast<int>(params.v_dim);
  args.scale = params.scale;
  args.lay = MakeLayout<kExpandedRows>(args.nope + args.rope, args.v_dim, false, 0);
  const size_t smem = sizeof(float) * static_cast<size_t>(args.lay.floats);
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(heads));
  auto s = static_cast<cudaStream_t>(stream);
  switch (ItemsFor(args.lay.v4)) {
    case 1: return LaunchTiled(MlaExpandedKernel<1>, grid, smem, args, s);
    case 2: return LaunchTiled(MlaExpandedKernel<2>, grid, smem, args, s);
    case 4: return LaunchTiled(MlaExpandedKernel<4>, grid, smem, args, s);
    case 8: return LaunchTiled(MlaExpandedKernel<8>, grid, smem, args, s);
    default: return Invalid();  // v_dim > 512
  }
}

int LaunchMlaAbsorbedAttention(const MlaParams& params, TensorView q, TensorView kv_b,
                               const MlaSequence* seqs, int64_t num_seqs, int64_t max_keys,
                               bool tensor_cores, const int32_t* key_split, float* scratch, TensorView out,
                               Stream stream, TensorView append) {
  if (num_seqs < 0 || !ValidParams(params) || q.dtype != DType::kF32 || out.dtype != DType::kF32 ||
      kv_b.dtype == DType::kI32) {
    return Invalid();
  }
  if (append.data != nullptr && (append.dtype != DType::kF32 || append.rows != q.rows ||
                                 append.cols != params.kv_lora_rank + params.qk_rope_dim)) {
    return Invalid();
  }
  const int64_t heads = params.num_heads;
  if (q.cols != heads * (params.qk_nope_dim + params.qk_rope_dim) ||
      out.cols != heads * params.v_dim || out.rows != q.rows ||
      kv_b.rows != heads * (params.qk_nope_dim + params.v_dim) ||
      kv_b.cols != params.kv_lora_rank) {
    return Invalid();
  }
  if (num_seqs == 0 || q.rows == 0) return 0;
  if (seqs == nullptr || num_seqs > 0x7fffffffLL || !FitsGridX(q.rows)) return Invalid();

  AbsorbedArgs args;
  args.q = q;
  args.kv_b = kv_b;
  args.out = out;
  args.seqs = seqs;
  args.num_seqs = num_seqs;
  args.heads = static_cast<int>(heads);
  args.rank = static_cast<int>(params.kv_lora_rank);
  args.nope = static_cast<int>(params.qk_nope_dim);
  args.rope = static_cast<int>(params.qk_rope_dim);
  args.v_dim = static_cast<int>(params.v_dim);
  args.scale = params.scale;
  auto s = static_cast<cudaStream_t>(stream);
  if (tensor_cores && MlaAbsorbedTcSupports(params)) {
    int64_t blocks = 0;
    const int error = LaunchMlaAbsorbedTc(params, q, kv_b, seqs, num_seqs, key_split, max_keys, append, scratch,
                                          &args.partial, &blocks, stream);
    if (error != 0) return error;
    args.row_slots = reinterpret_cast<const MlaRowSlots*>(key_split + MlaKeySplitSlotsAt(blocks, q.rows));
    return LaunchMergeAndProject(args, 0, static_cast<int>(blocks), blocks > 1, s);
  }
  const int64_t groups = (heads + kAbsorbedRows - 1) / kAbsorbedRows;
  const int64_t partitions = AbsorbedPartitions(q.rows, groups, max_keys);
  if (partitions > 1 && scratch == nullptr) return Invalid();
  if (append.data != nullptr) {
    if (const int error = LaunchMlaAppendLatent(append, seqs, num_seqs, stream); error != 0) return error;
  }
  args.partial = scratch;
  // K also holds q_nope [16, nope] before the key loop and o_lat [<= 16, rank] after it.
  args.lay = MakeLayout<kAbsorbedRows>(args.rank + args.rope, args.rank, true,
                                       kAbsorbedRows * std::max(args.nope, args.rank));
  const size_t smem = sizeof(float) * static_cast<size_t>(args.lay.floats);
  const unsigned split = AbsorbedSplit(q.rows * groups);
  const dim3 grid(static_cast<unsigned>(q.rows), static_cast<unsigned>(groups),
                  split * static_cast<unsigned>(partitions));
  int error = 0;
  switch (ItemsFor(args.lay.v4)) {
    case 1: error = LaunchTiled(MlaAbsorbedKernel<1>, grid, smem, args, s, split); break;
    case 2: error = LaunchTiled(MlaAbsorbedKernel<2>, grid, smem, args, s, split); break;
    case 4: error = LaunchTiled(MlaAbsorbedKernel<4>, grid, smem, args, s, split); break;
    case 8: error = LaunchTiled(MlaAbsorbedKernel<8>, grid, smem, args, s, split); break;
    default: return Invalid();  // kv_lora_rank > 512
  }
  if (error != 0 || partitions <= 1) return error;
  return LaunchMergeAndProject(args, static_cast<int>(partitions), static_cast<int>(partitions), true, s);
}

}  // namespace deltaserve::kernels::cuda
