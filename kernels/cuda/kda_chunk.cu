// Chunked KDA prefill (spec §2.4), chunk 64, in two kernels over a table of chunks:
//  1. KdaChunkPrepareKernel, one block per (chunk, head), every chunk at once: gate, beta and the
//     q/k L2 norm; the in-chunk cumulative decay G; Akk and Aqk from 16-row sub-blocks (diagonal
//     blocks element by element, the others against the block's first row, so no exponent is
//     positive); Tm = (I + Akk)^-1 by 16x16 blocks; then W = Tm·(β e^G k̂), U = Tm·(β v),
//     QG = q̂ e^G, KG = k̂ e^(G_last - G), Aqk and e^G_last into scratch.
//  2. KdaChunkScanKernel, one block per (sequence, head, slice of value columns), chunk by chunk:
//     Vn = U - W·S, O = QG·S + Aqk·Vn, S = e^G_last ⊙ S + KGᵀ·Vn, with S fp32 in shared memory
//     and the next chunk's operands loaded asynchronously meanwhile.
// Products run on tensor cores with bf16 operands and fp32 accumulation; the intermediates kept
// between the kernels are bf16, as in FLA's chunk_kda (spec §2.4, "intermediate dtypes").
#include <cuda_bf16.h>
#include <cuda_pipeline.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/kda_input_checks.h"
#include "kernels/cuda/launchers.h"

namespace deltaserve::kernels::cuda {
namespace {

using nvcuda::wmma::accumulator;
using nvcuda::wmma::col_major;
using nvcuda::wmma::fragment;
using nvcuda::wmma::matrix_a;
using nvcuda::wmma::matrix_b;
using nvcuda::wmma::mem_row_major;
using nvcuda::wmma::row_major;
using bf16 = __nv_bfloat16;

constexpr int kChunk = 64;
constexpr int kSub = 16;  // sub-block rows, and the tensor-core tile
constexpr int kPrepareWarps = 16;
constexpr int kScanWarps = 8;
// Shared-memory rows are padded (16 bytes for bf16, 16 bytes for fp32) so the 16 rows of a
// tensor-core tile fall in different banks.
constexpr int Padded(int bf16_cols) { return bf16_cols + 8; }
constexpr int PaddedF32(int cols) { return cols + 4; }

using TileA = fragment<matrix_a, 16, 16, 16, bf16, row_major>;
using TileAT = fragment<matrix_a, 16, 16, 16, bf16, col_major>;
using TileB = fragment<matrix_b, 16, 16, 16, bf16, row_major>;
using TileBT = fragment<matrix_b, 16, 16, 16, bf16, col_major>;
using TileC = fragment<accumulator, 16, 16, 16, float>;

// Value columns per scan block: 32, or 16 where the head dimension is not a multiple of 32.
constexpr int ScanSlice(int d) { return d % 32 == 0 ? 32 : 16; }

// The scratch the prepare kernel writes and the scan kernel reads, per (chunk, head) `ch`.
template <int D>
struct ChunkScratch {
  bf16* w;          // [ch][64][D]
  bf16* u;          // [ch][64][D]
  bf16* qg;         // [ch][64][D]
  bf16* kg;         // [ch][64][D]
  bf16* aqk;        // [ch][64][64], zero above the diagonal
  float* gate_last; // [ch][D], e^G_last

  __host__ __device__ static size_t Bytes(int64_t chunk_heads) {
    const size_t n = static_cast<size_t>(chunk_heads);
    return Align(4 * n * kChunk * D * sizeof(bf16)) + Align(n * kChunk * kChunk * sizeof(bf16)) +
           Align(n * D * sizeof(float));
  }
  __host__ __device__ static size_t Align(size_t bytes) { return (bytes + 255) / 256 * 256; }
  __host__ __device__ static ChunkScratch Carve(void* base, int64_t chunk_heads) {
    const size_t n = static_cast<size_t>(chunk_heads), matrix = n * kChunk * D;
    ChunkScratch s;
    auto* p = static_cast<unsigned char*>(base);
    s.w = reinterpret_cast<bf16*>(p);
    s.u = s.w + matrix;
    s.qg = s.u + matrix;
    s.kg = s.qg + matrix;
    p += Align(4 * matrix * sizeof(bf16));
    s.aqk = reinterpret_cast<bf16*>(p);
    p += Align(n * kChunk * kChunk * sizeof(bf16));
    s.gate_last = reinterpret_cast<float*>(p);
    return s;
  }
};

template <int D>
struct PrepareShared {
  float g[kChunk][D];  // the gate g, then the cumulative G
  bf16 q[kChunk][D];   // q̂ (scale included)
  bf16 k[kChunk][D];   // k̂
  bf16 bv[kChunk][Padded(D)];  // β v
  // Rows of the off-diagonal sub-blocks scaled by e^(G_r - G_n): k̂ for rows 16..63, then q̂.
  // Later the operand β e^G k̂ of W (rows 0..63).
  bf16 rows[6 * kSub][Padded(D)];
  union {
    // Columns s < n scaled by e^(G_n - G_s), for the reference rows n = 16, 32, 48 in turn
    // (16 + 32 + 48 rows).
    bf16 cols[6 * kSub][Padded(D)];
    bf16 tm_bf16[kChunk][Padded(kChunk)];
  };
  float akk[kChunk][PaddedF32(kChunk)];
  union {
    float aqk[kChunk][PaddedF32(kChunk)];
    float tm[kChunk][PaddedF32(kChunk)];  // (I + Akk)^-1
  };
  float tile[kPrepareWarps][kSub * kSub];  // per-warp staging of a result tile
  float partial[3][kSub * kSub];           // Σ_K A_IK T_KJ of the inverse's off-diagonal blocks
  float beta[kChunk];
};

// First row of the reference block I (1..3) inside `cols`: 0, 16, 48.
__device__ __forceinline__ int ColsBase(int block) { return kSub * (block - 1) * block / 2; }

// Off-diagonal sub-block pair p (0..5) -> row block I > column block J.
__device__ __forceinline__ void OffDiagonalPair(int p, int& block_i, int& block_j) {
  block_i = p < 1 ? 1 : (p < 3 ? 2 : 3);
  block_j = p - (block_i - 1) * block_i / 2;
}

// Stores a warp's accumulator tile as bf16 rows of `dst` (leading dimension ld) via `staging`.
__device__ __forceinline__ void StoreTileBf16(const TileC& acc, float* staging, bf16* dst, int ld) {
  nvcuda::wmma::store_matrix_sync(staging, acc, kSub, mem_row_major);
  __syncwarp();
  const int lane = threadIdx.x & 31, r = lane >> 1, c0 = (lane & 1) * 8;
  alignas(16) bf16 values[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) values[i] = __float2bfloat16(staging[r * kSub + c0 + i]);
  *reinterpret_cast<uint4*>(dst + static_cast<int64_t>(r) * ld + c0) =
      *reinterpret_cast<const uint4*>(values);
  __syncwarp();
}

template <int D>
__global__ void __launch_bounds__(kPrepareWarps * 32)
    KdaChunkPrepareKernel(KdaInputs in, const KdaChunkRef* chunks, ChunkScratch<D> scratch) {
  extern __shared__ __align__(128) unsigned char shared_raw[];
  auto& s = *reinterpret_cast<PrepareShared<D>*>(shared_raw);
  constexpr int kPerLane = (D + 31) / 32;
  constexpr int kThreads = kPrepareWarps * 32;

  const int chunk = blockIdx.x, h = blockIdx.y, heads = gridDim.y;
  const int64_t ch = static_cast<int64_t>(chunk) * heads + h;
  const KdaChunkRef ref = chunks[chunk];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;

  // 1. Inputs: q̂, k̂, β v, g, β. Rows past the chunk's length are zero (no decay, β = 0), so
  //    they neither move G nor touch the state.
  const float decay_rate = expf(LoadFlat(in.a_log, h));
  const float q_scale = 1.0f / sqrtf(static_cast<float>(D));
  for (int r = warp; r < kChunk; r += kPrepareWarps) {
    const bool valid = r < ref.length;
    const int64_t t = ref.row_begin + r;
    float q[kPerLane], k[kPerLane], v[kPerLane], f[kPerLane], sum_q = 0.0f, sum_k = 0.0f;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int j = lane + 32 * i;
      const bool on = valid && j < D;
      q[i] = on ? RowF32(in.q, t)[h * D + j] : 0.0f;
      k[i] = on ? RowF32(in.k, t)[h * D + j] : 0.0f;
      v[i] = on ? RowF32(in.v, t)[h * D + j] : 0.0f;
      f[i] = on ? RowF32(in.gate_logits, t)[h * D + j] : 0.0f;
      sum_q += q[i] * q[i];
      sum_k += k[i] * k[i];
    }
    sum_q = WarpSum(sum_q);
    sum_k = WarpSum(sum_k);
    const float q_mul = q_scale / sqrtf(sum_q + 1e-6f), k_mul = 1.0f / sqrtf(sum_k + 1e-6f);
    const float beta = valid ? SigmoidF(RowF32(in.beta_logits, t)[h]) : 0.0f;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int j = lane + 32 * i;
      if (j >= D) continue;
      s.q[r][j] = __float2bfloat16(q[i] * q_mul);
      s.k[r][j] = __float2bfloat16(k[i] * k_mul);
      s.bv[r][j] = __float2bfloat16(beta * v[i]);
      s.g[r][j] = valid ? -decay_rate * SoftplusF(f[i] + LoadFlat(in.dt_bias, h * D + j)) : 0.0f;
    }
    if (lane == 0) s.beta[r] = beta;
  }
  for (int i = tid; i < kChunk * kChunk; i += kThreads) {
    s.akk[i / kChunk][i % kChunk] = 0.0f;
    s.aqk[i / kChunk][i % kChunk] = 0.0f;
  }
  __syncthreads();

  // 2. G = cumulative sum of g over the chunk's rows.
  for (int j = tid; j < D; j += kThreads) {
    float acc = 0.0f;
    for (int r = 0; r < kChunk; ++r) {
      acc += s.g[r][j];
      s.g[r][j] = acc;
    }
  }
  __syncthreads();

  // 3. Operands of the off-diagonal sub-blocks, and QG, KG, e^G_last out to scratch.
  for (int i = tid; i < 3 * kSub * D; i += kThreads) {
    const int rr = i / D, j = i % D, r = kSub + rr, n = (r / kSub) * kSub;
    const float decay = __expf(s.g[r][j] - s.g[n][j]);
    s.rows[rr][j] = __float2bfloat16(__bfloat162float(s.k[r][j]) * decay);
    s.rows[3 * kSub + rr][j] = __float2bfloat16(__bfloat162float(s.q[r][j]) * decay);
  }
  for (int i = tid; i < 6 * kSub * D; i += kThreads) {
    const int cr = i / D, j = i % D;
    const int block = cr < kSub ? 1 : (cr < 3 * kSub ? 2 : 3);
    const int col = cr - ColsBase(block), n = block * kSub;
    s.cols[cr][j] = __float2bfloat16(__bfloat162float(s.k[col][j]) * __expf(s.g[n][j] - s.g[col][j]));
  }
  {
    bf16* qg = scratch.qg + ch * kChunk * D;
    bf16* kg = scratch.kg + ch * kChunk * D;
    for (int i = tid; i < kChunk * D; i += kThreads) {
      const int r = i / D, j = i % D;
      const float g = s.g[r][j];
      qg[i] = __float2bfloat16(__bfloat162float(s.q[r][j]) * __expf(g));
      kg[i] = __float2bfloat16(__bfloat162float(s.k[r][j]) * __expf(s.g[kChunk - 1][j] - g));
    }
    for (int j = tid; j < D; j += kThreads) {
      scratch.gate_last[ch * D + j] = __expf(s.g[kChunk - 1][j]);
    }
  }
  __syncthreads();

  // 4. Akk (without β yet) and Aqk: off-diagonal sub-blocks on tensor cores, then the diagonal
  //    ones element by element (exp(G_r - G_s) with s <= r).
  for (int t = warp; t < 12; t += kPrepareWarps) {
    const bool is_q = t >= 6;
    int bi, bj;
    OffDiagonalPair(is_q ? t - 6 : t, bi, bj);
    const bf16* a = &s.rows[(is_q ? 3 * kSub : 0) + (bi - 1) * kSub][0];
    const bf16* b = &s.cols[ColsBase(bi) + bj * kSub][0];
    TileC acc;
    nvcuda::wmma::fill_fragment(acc, 0.0f);
#pragma unroll
    for (int kk = 0; kk < D / kSub; ++kk) {
      TileA fa;
      TileBT fb;
      nvcuda::wmma::load_matrix_sync(fa, a + kk * kSub, Padded(D));
      nvcuda::wmma::load_matrix_sync(fb, b + kk * kSub, Padded(D));
      nvcuda::wmma::mma_sync(acc, fa, fb, acc);
    }
    float* c = is_q ? &s.aqk[bi * kSub][bj * kSub] : &s.akk[bi * kSub][bj * kSub];
    nvcuda::wmma::store_matrix_sync(c, acc, PaddedF32(kChunk), mem_row_major);
  }
  constexpr int kPairsPerBlock = kSub * (kSub + 1) / 2;
  for (int p = warp; p < 4 * kPairsPerBlock; p += kPrepareWarps) {
    const int block = p / kPairsPerBlock, idx = p % kPairsPerBlock;
    int r = static_cast<int>((sqrtf(8.0f * idx + 1.0f) - 1.0f) * 0.5f);
    if ((r + 1) * (r + 2) / 2 <= idx) ++r;
    if (r * (r + 1) / 2 > idx) --r;
    const int c = idx - r * (r + 1) / 2;
    const int row = block * kSub + r, col = block * kSub + c;
    float kk = 0.0f, qk = 0.0f;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int j = lane + 32 * i;
      if (j >= D) continue;
      const float decay = __expf(s.g[row][j] - s.g[col][j]);
      const float kc = __bfloat162float(s.k[col][j]) * decay;
      kk = fmaf(__bfloat162float(s.k[row][j]), kc, kk);
      qk = fmaf(__bfloat162float(s.q[row][j]), kc, qk);
    }
    kk = WarpSum(kk);
    qk = WarpSum(qk);
    if (lane == 0) {
      s.aqk[row][col] = qk;
      if (col < row) s.akk[row][col] = kk;
    }
  }
  __syncthreads();

  // 5. β into Akk's rows; Aqk out (bf16).
  {
    bf16* aqk = scratch.aqk + ch * kChunk * kChunk;
    for (int i = tid; i < kChunk * kChunk; i += kThreads) {
      const int r = i / kChunk, c = i % kChunk;
      s.akk[r][c] *= s.beta[r];
      aqk[i] = __float2bfloat16(s.aqk[r][c]);
    }
  }
  __syncthreads();

  // 6. Tm = (I + Akk)^-1, unit lower triangular: the diagonal 16x16 blocks by forward
  //    substitution (a warp each, a lane per column), then T_IJ = -T_II Σ_{K=J..I-1} A_IK T_KJ
  //    in order of distance I - J.
  for (int i = tid; i < kChunk * kChunk; i += kThreads) s.tm[i / kChunk][i % kChunk] = 0.0f;
  __syncthreads();
  if (warp < 4 && lane < kSub) {
    const int base = warp * kSub, c = lane;
    s.tm[base + c][base + c] = 1.0f;
    for (int r = c + 1; r < kSub; ++r) {
      float sum = 0.0f;
      for (int k = c; k < r; ++k) sum = fmaf(s.akk[base + r][base + k], s.tm[base + k][base + c], sum);
      s.tm[base + r][base + c] = -sum;
    }
  }
  __syncthreads();
  for (int distance = 1; distance < 4; ++distance) {
    const int blocks = 4 - distance;
    for (int i = tid; i < blocks * kSub * kSub; i += kThreads) {
      const int b = i / (kSub * kSub), r = (i / kSub) % kSub, c = i % kSub;
      const int bj = b, bi = b + distance;
      float sum = 0.0f;
      for (int k = bj * kSub; k < bi * kSub; ++k) {
        sum = fmaf(s.akk[bi * kSub + r][k], s.tm[k][bj * kSub + c], sum);
      }
      s.partial[b][r * kSub + c] = sum;
    }
    __syncthreads();
    for (int i = tid; i < blocks * kSub * kSub; i += kThreads) {
      const int b = i / (kSub * kSub), r = (i / kSub) % kSub, c = i % kSub;
      const int bj = b, bi = b + distance;
      float sum = 0.0f;
      for (int k = 0; k <= r; ++k) {
        sum = fmaf(s.tm[bi * kSub + r][bi * kSub + k], s.partial[b][k * kSub + c], sum);
      }
      s.tm[bi * kSub + r][bj * kSub + c] = -sum;
    }
    __syncthreads();
  }

  // 7. W = Tm·(β e^G k̂) and U = Tm·(β v) on tensor cores (Tm in bf16, lower block triangle).
  for (int i = tid; i < kChunk * kChunk; i += kThreads) {
    s.tm_bf16[i / kChunk][i % kChunk] = __float2bfloat16(s.tm[i / kChunk][i % kChunk]);
  }
  for (int i = tid; i < kChunk * D; i += kThreads) {
    const int r = i / D, j = i % D;
    s.rows[r][j] = __float2bfloat16(s.beta[r] * __expf(s.g[r][j]) * __bfloat162float(s.k[r][j]));
  }
  __syncthreads();
  constexpr int kColTiles = D / kSub;
  for (int t = warp; t < 2 * 4 * kColTiles; t += kPrepareWarps) {
    const bool is_w = t >= 4 * kColTiles;
    const int tile = t % (4 * kColTiles), rt = tile / kColTiles, ct = tile % kColTiles;
    const bf16* operand = is_w ? &s.rows[0][0] : &s.bv[0][0];
    TileC acc;
    nvcuda::wmma::fill_fragment(acc, 0.0f);
    for (int kt = 0; kt <= rt; ++kt) {
      TileA fa;
      TileB fb;
      nvcuda::wmma::load_matrix_sync(fa, &s.tm_bf16[rt * kSub][kt * kSub], Padded(kChunk));
      nvcuda::wmma::load_matrix_sync(fb, operand + kt * kSub * Padded(D) + ct * kSub, Padded(D));
      nvcuda::wmma::mma_sync(acc, fa, fb, acc);
    }
    bf16* dst = (is_w ? scratch.w : scratch.u) + ch * kChunk * D + rt * kSub * D + ct * kSub;
    StoreTileBf16(acc, s.tile[warp], dst, D);
  }
}

template <int D, int BV>
struct ScanShared {
  struct Stage {
    bf16 w[kChunk][Padded(D)];
    bf16 qg[kChunk][Padded(D)];
    bf16 kg[kChunk][Padded(D)];
    bf16 aqk[kChunk][Padded(kChunk)];
    bf16 u[kChunk][Padded(BV)];
    float gate_last[D];
  };
  Stage stage[2];
  float state[D][PaddedF32(BV)];
  bf16 state_bf16[D][Padded(BV)];
  float vn[kChunk][PaddedF32(BV)];  // W·S, then Vn
  bf16 vn_bf16[kChunk][Padded(BV)];
  float out[kChunk][PaddedF32(BV)];
};

// Queues the asynchronous copy of `rows` rows of `cols` bf16 (a multiple of 8) from `src` (row
// stride src_ld) into `dst` (row stride dst_ld).
__device__ __forceinline__ void CopyRowsAsync(bf16* dst, int dst_ld, const bf16* src, int64_t src_ld,
                                              int rows, int cols, int threads) {
  const int pieces = cols / 8;
  for (int i = threadIdx.x; i < rows * pieces; i += threads) {
    const int r = i / pieces, p = i % pieces;
    __pipeline_memcpy_async(dst + r * dst_ld + p * 8, src + r * src_ld + p * 8, 16);
  }
}

// Queues the copy of chunk-head `ch`'s operands (value slice `slice`) into `st`.
template <int D, int BV>
__device__ __forceinline__ void LoadStage(const ChunkScratch<D>& scratch, int64_t ch, int slice,
                                          typename ScanShared<D, BV>::Stage& st) {
  constexpr int kThreads = kScanWarps * 32;
  const int64_t matrix = ch * kChunk * D;
  CopyRowsAsync(&st.w[0][0], Padded(D), scratch.w + matrix, D, kChunk, D, kThreads);
  CopyRowsAsync(&st.qg[0][0], Padded(D), scratch.qg + matrix, D, kChunk, D, kThreads);
  CopyRowsAsync(&st.kg[0][0], Padded(D), scratch.kg + matrix, D, kChunk, D, kThreads);
  CopyRowsAsync(&st.aqk[0][0], Padded(kChunk), scratch.aqk + ch * kChunk * kChunk, kChunk, kChunk,
                kChunk, kThreads);
  CopyRowsAsync(&st.u[0][0], Padded(BV), scratch.u + matrix + slice * BV, D, kChunk, BV, kThreads);
  const auto* gate_last = reinterpret_cast<const uint4*>(scratch.gate_last + ch * D);
  for (int i = threadIdx.x; i < D / 4; i += kThreads) {
    __pipeline_memcpy_async(reinterpret_cast<uint4*>(st.gate_last) + i, gate_last + i, 16);
  }
}

// Warp w computes the output tiles (row tile w % 4, column tiles w / 4, w / 4 + 2, ...) and
// updates the state tiles w, w + 8, ... (row-major over [D/16, BV/16]).
template <int D>
__global__ void __launch_bounds__(kScanWarps * 32)
    KdaChunkScanKernel(const KdaSequence* seqs, const KdaChunkRef* chunks,
                       const int32_t* first_chunk, int heads, ChunkScratch<D> scratch,
                       TensorView out) {
  constexpr int BV = ScanSlice(D);
  constexpr int kSlices = D / BV, kColTiles = BV / kSub, kStateTiles = (D / kSub) * kColTiles;
  constexpr int kRowTiles = kChunk / kSub, kColGroups = kScanWarps / kRowTiles;
  constexpr int kThreads = kScanWarps * 32;
  extern __shared__ __align__(128) unsigned char shared_raw[];
  auto& s = *reinterpret_cast<ScanShared<D, BV>*>(shared_raw);

  const int slice = blockIdx.x % kSlices;
  const int head_index = blockIdx.x / kSlices;
  const int seq = head_index / heads, h = head_index % heads;
  const int first = first_chunk[seq], count = first_chunk[seq + 1] - first;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int row0 = (warp % kRowTiles) * kSub;  // this warp's 16 rows of the chunk
  float* state = seqs[seq].state + static_cast<int64_t>(h) * D * D + slice * BV;

  for (int i = tid; i < D * BV; i += kThreads) {
    const int r = i / BV, c = i % BV;
    const float value = state[static_cast<int64_t>(r) * D + c];
    s.state[r][c] = value;
    s.state_bf16[r][c] = __float2bfloat16(value);
  }
  LoadStage<D, BV>(scratch, static_cast<int64_t>(first) * heads + h, slice, s.stage[0]);
  __pipeline_commit();

  for (int n = 0; n < count; ++n) {
    if (n + 1 < count) {
      LoadStage<D, BV>(scratch, static_cast<int64_t>(first + n + 1) * heads + h, slice,
                       s.stage[(n + 1) & 1]);
    }
    __pipeline_commit();
    __pipeline_wait_prior(1);
    __syncthreads();
    auto& st = s.stage[n & 1];

    // Vn = U - W·S and the inter-chunk part of O, QG·S, for this warp's tiles.
    constexpr int kMyColTiles = (kColTiles + kColGroups - 1) / kColGroups;
    TileC o[kMyColTiles];
#pragma unroll
    for (int m = 0; m < kMyColTiles; ++m) {
      const int ct = warp / kRowTiles + m * kColGroups;
      if (ct >= kColTiles) continue;
      TileC ws;
      nvcuda::wmma::fill_fragment(ws, 0.0f);
      nvcuda::wmma::fill_fragment(o[m], 0.0f);
#pragma unroll
      for (int kt = 0; kt < D / kSub; ++kt) {
        TileA fw, fq;
        TileB fs;
        nvcuda::wmma::load_matrix_sync(fw, &st.w[row0][kt * kSub], Padded(D));
        nvcuda::wmma::load_matrix_sync(fq, &st.qg[row0][kt * kSub], Padded(D));
        nvcuda::wmma::load_matrix_sync(fs, &s.state_bf16[kt * kSub][ct * kSub], Padded(BV));
        nvcuda::wmma::mma_sync(ws, fw, fs, ws);
        nvcuda::wmma::mma_sync(o[m], fq, fs, o[m]);
      }
      nvcuda::wmma::store_matrix_sync(&s.vn[row0][ct * kSub], ws, PaddedF32(BV), mem_row_major);
      __syncwarp();
      for (int i = lane; i < kSub * kSub; i += 32) {
        const int r = row0 + i / kSub, c = ct * kSub + i % kSub;
        s.vn_bf16[r][c] = __float2bfloat16(__bfloat162float(st.u[r][c]) - s.vn[r][c]);
      }
    }
    // S ← e^G_last ⊙ S on the state tiles this warp updates below.
    for (int t = warp; t < kStateTiles; t += kScanWarps) {
      const int rt = t / kColTiles, ct = t % kColTiles;
      for (int i = lane; i < kSub * kSub; i += 32) {
        const int r = rt * kSub + i / kSub, c = ct * kSub + i % kSub;
        s.state[r][c] *= st.gate_last[r];
      }
    }
    __syncthreads();

    // O += Aqk·Vn (Aqk lower triangular: column tiles up to this warp's row tile).
#pragma unroll
    for (int m = 0; m < kMyColTiles; ++m) {
      const int ct = warp / kRowTiles + m * kColGroups;
      if (ct >= kColTiles) continue;
      for (int kt = 0; kt <= row0 / kSub; ++kt) {
        TileA fa;
        TileB fv;
        nvcuda::wmma::load_matrix_sync(fa, &st.aqk[row0][kt * kSub], Padded(kChunk));
        nvcuda::wmma::load_matrix_sync(fv, &s.vn_bf16[kt * kSub][ct * kSub], Padded(BV));
        nvcuda::wmma::mma_sync(o[m], fa, fv, o[m]);
      }
      nvcuda::wmma::store_matrix_sync(&s.out[row0][ct * kSub], o[m], PaddedF32(BV), mem_row_major);
    }
    // S += KGᵀ·Vn.
    for (int t = warp; t < kStateTiles; t += kScanWarps) {
      const int rt = t / kColTiles, ct = t % kColTiles;
      TileC acc;
      nvcuda::wmma::load_matrix_sync(acc, &s.state[rt * kSub][ct * kSub], PaddedF32(BV), mem_row_major);
#pragma unroll
      for (int kt = 0; kt < kChunk / kSub; ++kt) {
        TileAT fk;
        TileB fv;
        nvcuda::wmma::load_matrix_sync(fk, &st.kg[kt * kSub][rt * kSub], Padded(D));
        nvcuda::wmma::load_matrix_sync(fv, &s.vn_bf16[kt * kSub][ct * kSub], Padded(BV));
        nvcuda::wmma::mma_sync(acc, fk, fv, acc);
      }
      nvcuda::wmma::store_matrix_sync(&s.state[rt * kSub][ct * kSub], acc, PaddedF32(BV), mem_row_major);
    }
    __syncwarp();
    for (int t = warp; t < kStateTiles; t += kScanWarps) {
      const int rt = t / kColTiles, ct = t % kColTiles;
      for (int i = lane; i < kSub * kSub; i += 32) {
        const int r = rt * kSub + i / kSub, c = ct * kSub + i % kSub;
        s.state_bf16[r][c] = __float2bfloat16(s.state[r][c]);
      }
    }
    const KdaChunkRef ref = chunks[first + n];
#pragma unroll
    for (int m = 0; m < kMyColTiles; ++m) {
      const int ct = warp / kRowTiles + m * kColGroups;
      if (ct >= kColTiles) continue;
      for (int i = lane; i < kSub * kSub; i += 32) {
        const int r = row0 + i / kSub, c = ct * kSub + i % kSub;
        if (r < ref.length) RowF32(out, ref.row_begin + r)[h * D + slice * BV + c] = s.out[r][c];
      }
    }
    __syncthreads();
  }

  for (int i = tid; i < D * BV; i += kThreads) {
    const int r = i / BV, c = i % BV;
    state[static_cast<int64_t>(r) * D + c] = s.state[r][c];
  }
}

template <int D>
int Launch(const KdaInputs& in, const KdaSequence* seqs, int64_t num_seqs, const KdaChunkRef* chunks,
           const int32_t* first_chunk, int64_t num_chunks, void* scratch_memory, TensorView out,
           cudaStream_t stream) {
  const int heads = static_cast<int>(in.num_heads);
  const auto scratch = ChunkScratch<D>::Carve(scratch_memory, num_chunks * heads);
  const size_t prepare_bytes = sizeof(PrepareShared<D>);
  const size_t scan_bytes = sizeof(ScanShared<D, ScanSlice(D)>);
  cudaError_t error = cudaFuncSetAttribute(KdaChunkPrepareKernel<D>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(prepare_bytes));
  if (error != cudaSuccess) return static_cast<int>(error);
  error = cudaFuncSetAttribute(KdaChunkScanKernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(scan_bytes));
  if (error != cudaSuccess) return static_cast<int>(error);
  KdaChunkPrepareKernel<D><<<dim3(static_cast<unsigned>(num_chunks), static_cast<unsigned>(heads)),
                             kPrepareWarps * 32, prepare_bytes, stream>>>(in, chunks, scratch);
  const int64_t scan_blocks = num_seqs * heads * (D / ScanSlice(D));
  KdaChunkScanKernel<D><<<static_cast<unsigned>(scan_blocks), kScanWarps * 32, scan_bytes, stream>>>(
      seqs, chunks, first_chunk, heads, scratch, out);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

KdaChunkTable BuildKdaChunkTable(const KdaSequence* seqs, int64_t num_seqs) {
  KdaChunkTable table;
  for (int64_t i = 0; i < num_seqs; ++i) {
    table.first_chunk.push_back(static_cast<int32_t>(table.chunks.size()));
    const SequenceRows rows = seqs[i].rows;
    for (int64_t begin = 0; begin < rows.length; begin += kChunk) {
      const int64_t length = rows.length - begin < kChunk ? rows.length - begin : kChunk;
      table.chunks.push_back({rows.begin + begin, static_cast<int32_t>(length), static_cast<int32_t>(i)});
    }
  }
  table.first_chunk.push_back(static_cast<int32_t>(table.chunks.size()));
  return table;
}

bool KdaChunkedSupports(int64_t head_dim) {
  switch (head_dim) {
    case 16: case 32: case 48: case 64: case 96: case 128: return true;
    default: return false;
  }
}

size_t KdaChunkedScratchBytes(int64_t num_chunks, int64_t heads, int64_t head_dim) {
  const int64_t n = num_chunks * heads;
  switch (head_dim) {
    case 16: return ChunkScratch<16>::Bytes(n);
    case 32: return ChunkScratch<32>::Bytes(n);
    case 48: return ChunkScratch<48>::Bytes(n);
    case 64: return ChunkScratch<64>::Bytes(n);
    case 96: return ChunkScratch<96>::Bytes(n);
    case 128: return ChunkScratch<128>::Bytes(n);
    default: return 0;
  }
}

int LaunchKdaChunked(const KdaInputs& in, const KdaSequence* seqs, int64_t num_seqs,
                     const KdaChunkRef* chunks, const int32_t* first_chunk, int64_t num_chunks,
                     void* scratch, TensorView out, Stream stream) {
  const int64_t heads = in.num_heads, d = in.head_dim, width = heads * d;
  if (num_seqs < 0 || num_chunks < 0 || heads <= 0 || heads > 65535 || !KdaChunkedSupports(d) ||
      !KdaInputsMatch(in, out)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (num_seqs == 0 || num_chunks == 0) return 0;
  if (seqs == nullptr || chunks == nullptr || first_chunk == nullptr || scratch == nullptr ||
      !FitsGridX(num_chunks) || !FitsGridX(num_seqs * width)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  auto s = static_cast<cudaStream_t>(stream);
  switch (d) {
    case 16: return Launch<16>(in, seqs, num_seqs, chunks, first_chunk, num_chunks, scratch, out, s);
    case 32: return Launch<32>(in, seqs, num_seqs, chunks, first_chunk, num_chunks, scratch, out, s);
    case 48: return Launch<48>(in, seqs, num_seqs, chunks, first_chunk, num_chunks, scratch, out, s);
    case 64: return Launch<64>(in, seqs, num_seqs, chunks, first_chunk, num_chunks, scratch, out, s);
    case 96: return Launch<96>(in, seqs, num_seqs, chunks, first_chunk, num_chunks, scratch, out, s);
    case 128: return Launch<128>(in, seqs, num_seqs, chunks, first_chunk, num_chunks, scratch, out, s);
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

}  // namespace deltaserve::kernels::cuda
