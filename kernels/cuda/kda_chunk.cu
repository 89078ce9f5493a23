// Chunked KDA prefill (spec §2.4), chunk 64, in three kernels over a table of chunks:
//  1. KdaChunkPrepareKernel, persistent blocks taking (chunk, head) tasks in turn, every chunk
//     independent (the next task's inputs copied in while one finishes): gate, beta and the
//     q/k L2 norm; the in-chunk cumulative decay G; Akk and Aqk from 16-row sub-blocks, each
//     product against G at the sub-block's start (the off-diagonal ones with no positive
//     exponent; a diagonal one only where its decay range is small, element by element
//     otherwise); Tm = (I + Akk)^-1 by 16x16 blocks in a 2x2 recursion; then W = Tm·(β e^G k̂),
//     U = Tm·(β v), QG = q̂ e^G, KG = k̂ e^(G_last - G), Aqk and e^G_last into scratch.
//  2. KdaChunkScanKernel, one block per (sequence, head, slice of value columns), chunk by chunk:
//     H = S and Vn = U - W·S out to scratch, S = e^G_last ⊙ S + KGᵀ·Vn, with S fp32 in
//     registers and the next chunk's operands loaded asynchronously meanwhile.
//  3. KdaChunkOutputKernel, one block per (chunk, head), every chunk at once: O = QG·H + Aqk·Vn.
// Products run on tensor cores with bf16 operands and fp32 accumulation; the intermediates kept
// between the kernels are bf16, as in FLA's chunk_kda (spec §2.4, "intermediate dtypes"). q, k, v
// and the gate logits come in fp32 or bf16 (the CUDA backend's KDA activations: FLA's dtype),
// and the read goes out in either.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/kda_input_checks.h"
#include "kernels/cuda/launchers.h"
#include "kernels/cuda/mma_tiles.cuh"

namespace deltaserve::kernels::cuda {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kChunk = 64;
constexpr int kSub = 16;  // sub-block rows, and the tensor-core tile
constexpr int kPrepareWarps = 16;
// The prepare kernel's threads from this one on queue the copy of the block's next task (phase 4,
// beside the inverse's product A_BA T_AA on threads 0-255).
constexpr int kStagingFirstThread = 256;
// A diagonal sub-block goes on tensor cores when e^(G_b - G_s) stays below 2^kDiagonalRange over
// it (G in log2 units, G_b its value where the sub-block starts), so the factors neither overflow
// nor lose the products to bf16's range; stronger decay takes the element-by-element form.
constexpr float kDiagonalRange = 64.0f;
constexpr int kScanWarps = 8;
constexpr int kOutputWarps = 8;
// Shared-memory rows are padded (16 bytes for bf16, 16 bytes for fp32) so the 16 rows of a
// tensor-core tile fall in different banks.
constexpr int Padded(int bf16_cols) { return bf16_cols + 8; }
constexpr int PaddedF32(int cols) { return cols + 4; }


// Value columns per scan block where the (sequence, head) pairs are few (ChooseScan): 32, or 16
// where the head dimension is not a multiple of 32.
constexpr int ScanSlice(int d) { return d % 32 == 0 ? 32 : 16; }

// The scratch between the kernels, per (chunk, head) `ch`: the prepare kernel writes W, U, QG,
// KG, Aqk and e^G_last; the scan reads W, U, KG and e^G_last and writes Vn and H; the output
// kernel reads QG, Aqk, Vn and H.
template <int D>
struct ChunkScratch {
  bf16* w;          // [ch][64][D]
  bf16* u;          // [ch][64][D]
  bf16* qg;         // [ch][64][D]
  bf16* kg;         // [ch][64][D]
  bf16* vn;         // [ch][64][D], U - W·S
  bf16* aqk;        // [ch][64][64], zero above the diagonal
  float* gate_last; // [ch][D], e^G_last
  bf16* h;          // [ch][D][D], the state S entering the chunk

  __host__ __device__ static size_t Bytes(int64_t chunk_heads) {
    const size_t n = static_cast<size_t>(chunk_heads);
    return AlignScratch(5 * n * kChunk * D * sizeof(bf16)) + AlignScratch(n * kChunk * kChunk * sizeof(bf16)) +
           AlignScratch(n * D * sizeof(float)) + AlignScratch(n * D * D * sizeof(bf16));
  }
  __host__ __device__ static ChunkScratch Carve(void* base, int64_t chunk_heads) {
    const size_t n = static_cast<size_t>(chunk_heads), matrix = n * kChunk * D;
    ChunkScratch s;
    auto* p = static_cast<unsigned char*>(base);
    s.w = reinterpret_cast<bf16*>(p);
    s.u = s.w + matrix;
    s.qg = s.u + matrix;
    s.kg = s.qg + matrix;
    s.vn = s.kg + matrix;
    p += AlignScratch(5 * matrix * sizeof(bf16));
    s.aqk = reinterpret_cast<bf16*>(p);
    p += AlignScratch(n * kChunk * kChunk * sizeof(bf16));
    s.gate_last = reinterpret_cast<float*>(p);
    p += AlignScratch(n * D * sizeof(float));
    s.h = reinterpret_cast<bf16*>(p);
    return s;
  }
};

// The next task's inputs, as the activations hold them (fp32 or bf16), copied in while the current
// one finishes (phase 4 on). v too where the inputs are bf16: then all four fit in the union below
// (in fp32 they would not, and v is read from global memory at the task's start).
template <typename In>
constexpr bool kStagesV = sizeof(In) == 2;
template <int D, typename In>
struct PrepareStaging {
  In q[kChunk][D];
  In k[kChunk][D];
  In gate[kChunk][D];
  In v[kStagesV<In> ? kChunk : 1][D];
  float beta_logits[kChunk];
};

template <int D, typename In>
struct PrepareShared {
  union {
    struct {
      // G (the cumulative decay, in log2 units so every decay is one ex2), q̂ (scale included),
      // k̂: the reference rows and the element-by-element diagonal sub-blocks read them.
      float g[kChunk][D];
      bf16 q[kChunk][D];
      bf16 k[kChunk][D];
      // Columns s before sub-block b = 1, 2, 3 in turn (16 + 32 + 48 rows) scaled by
      // e^(G_b - G_s), G_b the cumulative decay where b starts (G of the row before it).
      bf16 cols[6 * kSub][Padded(D)];
      // Columns s of each sub-block b scaled by e^(G_b - G_s) (exponents >= 0, used only where
      // the sub-block's decay range allows, see kDiagonalRange).
      bf16 diagonal_cols[kChunk][Padded(D)];
    };
    // Read only up to Aqk's diagonal tiles (warps 2-5, phase 4), so the next task's inputs land
    // over them meanwhile.
    PrepareStaging<D, In> next;
  };
  bf16 bv[kChunk][Padded(D)];  // β v
  // Rows scaled by e^(G_r - G_b), b the sub-block of r: k̂ (rows 0..63), then q̂.
  // Later the operand β e^G k̂ of W (rows 0..63).
  bf16 rows[2 * kChunk][Padded(D)];
  bf16 tm_bf16[kChunk][Padded(kChunk)];
  float akk[kChunk][PaddedF32(kChunk)];
  float tm[kChunk][PaddedF32(kChunk)];  // (I + Akk)^-1
  union {
    float warp_sums[kPrepareWarps][D];       // each warp's sum of g over its rows
    float tile[kPrepareWarps][kSub * kSub];  // per-warp staging of a result tile
    float partial[2][kSub * kSub];           // A_10 T_00 and A_32 T_22, for the inverse (warps 0, 1)
    float x[2 * kSub][PaddedF32(2 * kSub)];  // A_BA T_AA, for the inverse
  };
  float beta[kChunk];
  int diagonal_on_tensor_cores[4];  // per sub-block: its decay range is below kDiagonalRange
};

// First row of the reference block I (1..3) inside `cols`: 0, 16, 48.
__device__ __forceinline__ int ColsBase(int block) { return kSub * (block - 1) * block / 2; }

// Off-diagonal sub-block pair p (0..5) -> row block I > column block J.
__device__ __forceinline__ void OffDiagonalPair(int p, int& block_i, int& block_j) {
  block_i = p < 1 ? 1 : (p < 3 ? 2 : 3);
  block_j = p - (block_i - 1) * block_i / 2;
}

// Stores a warp's accumulator tile as bf16 rows of global `dst` (leading dimension ld), 16 bytes
// a lane, through the warp's `staging` (16 x 16 bf16).
__device__ __forceinline__ void StoreTileBf16Global(const TileAcc16& acc, bf16* staging, bf16* dst, int ld,
                                                    int lane) {
  StoreTileBf16(acc, staging, kSub, lane);
  __syncwarp();
  const int r = lane >> 1, c0 = (lane & 1) * 8;
  *reinterpret_cast<uint4*>(dst + static_cast<int64_t>(r) * ld + c0) =
      *reinterpret_cast<const uint4*>(staging + r * kSub + c0);
  __syncwarp();
}

// acc = a·bᵀ for 16 rows each of a and b (row-major bf16, D columns, row stride Padded(D)).
template <int D>
__device__ __forceinline__ void RowProductTile(TileAcc16& acc, const bf16* a, const bf16* b, int lane) {
  ZeroTile(acc);
#pragma unroll
  for (int kk = 0; kk < D / kSub; ++kk) {
    TileA16 fa;
    TileB16 fb;
    LoadA(fa, a + kk * kSub, Padded(D), lane);
    LoadBTransposed(fb, b + kk * kSub, Padded(D), lane);
    MmaTile(acc, fa, fb);
  }
}

__device__ __forceinline__ float Exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// softplus(x) / ln 2 = log2(1 + e^x): the gate's softplus in log2 units.
__device__ __forceinline__ float Softplus2(float x) {
  constexpr float kLog2E = 1.4426950408889634f;
  if (x > 20.0f) return kLog2E * x;
  float y;
  asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(1.0f + Exp2(kLog2E * x)));
  return y;
}

// Four consecutive floats: one 16-byte load where the caller vouches for the alignment.
__device__ __forceinline__ float4 Load4(const float* p, bool aligned) {
  if (aligned) return __ldg(reinterpret_cast<const float4*>(p));
  return make_float4(p[0], p[1], p[2], p[3]);
}

__device__ __forceinline__ float4 operator*(float4 a, float4 b) {
  return make_float4(a.x * b.x, a.y * b.y, a.z * b.z, a.w * b.w);
}
__device__ __forceinline__ float4 operator*(float4 a, float s) {
  return make_float4(a.x * s, a.y * s, a.z * s, a.w * s);
}
__device__ __forceinline__ float4 operator+(float4 a, float4 b) {
  return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
}
__device__ __forceinline__ float4 Exp2Diff(float4 a, float4 b) {
  return make_float4(Exp2(a.x - b.x), Exp2(a.y - b.y), Exp2(a.z - b.z), Exp2(a.w - b.w));
}
__device__ __forceinline__ float4 Exp2(float4 a) { return make_float4(Exp2(a.x), Exp2(a.y), Exp2(a.z), Exp2(a.w)); }

__device__ __forceinline__ void Store4(bf16* p, float4 a) { *reinterpret_cast<uint2*>(p) = PackBf16(a); }
__device__ __forceinline__ float4 Load4(const bf16* p) { return UnpackBf16(*reinterpret_cast<const uint2*>(p)); }
__device__ __forceinline__ float4 LoadStaged4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ float4 LoadStaged4(const bf16* p) { return Load4(p); }

// Σ_k a[k] · (b[k·ldb .. k·ldb + 3]) over k < kLen, in two chains.
template <int kLen>
__device__ __forceinline__ float4 RowTimesRows(const float* a, const float* b, int ldb) {
  static_assert(kLen % 2 == 0, "two chains");
  float4 even = make_float4(0.0f, 0.0f, 0.0f, 0.0f), odd = even;
#pragma unroll
  for (int k = 0; k < kLen; k += 2) {
    even = even + *reinterpret_cast<const float4*>(b + k * ldb) * a[k];
    odd = odd + *reinterpret_cast<const float4*>(b + (k + 1) * ldb) * a[k + 1];
  }
  return even + odd;
}

// Row r of an activation view whose elements are T (float or bf16).
template <typename T>
__device__ __forceinline__ const T* RowOf(const TensorView& v, int64_t r) {
  return static_cast<const T*>(v.data) + r * v.row_stride;
}
__device__ __forceinline__ float4& At4(float* p) { return *reinterpret_cast<float4*>(p); }

// One round of TransposeSum: lanes split on bit `kWidth`, each keeps half its values and adds the
// partner's copy of that half.
template <int kWidth>
__device__ __forceinline__ void TransposeSumRound(float (&v)[32], int lane) {
  const bool upper = lane & kWidth;
#pragma unroll
  for (int i = 0; i < kWidth; ++i) {
    const float send = upper ? v[i] : v[i + kWidth];
    const float keep = upper ? v[i + kWidth] : v[i];
    v[i] = keep + __shfl_xor_sync(0xffffffffu, send, kWidth);
  }
}

// 32 per-lane values v[0..31] -> lane L holds Σ over the warp's lanes of v[L] (31 shuffles).
__device__ __forceinline__ float TransposeSum(float (&v)[32], int lane) {
  TransposeSumRound<16>(v, lane);
  TransposeSumRound<8>(v, lane);
  TransposeSumRound<4>(v, lane);
  TransposeSumRound<2>(v, lane);
  TransposeSumRound<1>(v, lane);
  return v[0];
}

// Queues the copy of a task's q, k and gate rows (and v's, where kStagesV; chunk `ref`, head h's
// columns) and β logits into `next`: the rows of the chunk only (phase 1 zeroes the others).
// 16-byte cp.async pieces where the rows are aligned; otherwise 4-byte ones (fp32), or plain
// loads and stores (bf16: synchronous, so not overlapped; the model's rows are aligned). The
// threads from `first_thread` on take part.
template <int D, typename In, bool kAlignedInputs>
__device__ __forceinline__ void StageInputs(const KdaInputs& in, const KdaChunkRef& ref, int h, int first_thread,
                                            PrepareStaging<D, In>& next) {
  constexpr bool kF32 = std::is_same_v<In, float>;
  constexpr int kPiece = kAlignedInputs ? 16 / sizeof(In) : 1;
  const int threads = kPrepareWarps * 32 - first_thread, thread = static_cast<int>(threadIdx.x) - first_thread;
  if (thread < 0) return;
  const int64_t col = static_cast<int64_t>(h) * D;
  for (int i = thread; i < ref.length * (D / kPiece); i += threads) {
    const int r = i / (D / kPiece), c = kPiece * (i % (D / kPiece));
    const int64_t t = ref.row_begin + r;
    auto copy = [](In* to, const In* from) {
      if constexpr (kAlignedInputs) {
        CopyAsync16(to, from);
      } else if constexpr (kF32) {
        CopyAsync4(to, from);
      } else {
        *to = *from;
      }
    };
    copy(&next.q[r][c], RowOf<In>(in.q, t) + col + c);
    copy(&next.k[r][c], RowOf<In>(in.k, t) + col + c);
    copy(&next.gate[r][c], RowOf<In>(in.gate_logits, t) + col + c);
    if constexpr (kStagesV<In>) copy(&next.v[r][c], RowOf<In>(in.v, t) + col + c);
  }
  if (thread < ref.length) CopyAsync4(&next.beta_logits[thread], RowF32(in.beta_logits, ref.row_begin + thread) + h);
  CommitAsync();
}

// One (chunk, head) task `ch` of the prepare kernel; `stage_next(first_thread)` queues the copy of
// the block's next task into s.next on the threads from first_thread on, once this one no longer
// reads the shared memory under it.
// Thread layout: warp w owns the chunk's rows 4w .. 4w+3 and lane l the columns 4l .. 4l+3 (lanes
// past D/4 hold zero q, k, v and store nothing) for the element-wise work; the products go by
// 16x16 tiles.
template <int D, typename In, bool kAlignedInputs, typename StageNext>
__device__ __forceinline__ void PrepareTask(const KdaInputs& in, const KdaChunkRef& ref, int64_t ch, int h,
                                            const ChunkScratch<D>& scratch, PrepareShared<D, In>& s,
                                            StageNext&& stage_next) {
  static_assert(kPrepareWarps == kSub && kChunk == 4 * kPrepareWarps && D % 4 == 0 && D <= 128,
                "the layout above");
  constexpr int kRows = kChunk / kPrepareWarps;
  constexpr float kLog2E = 1.4426950408889634f;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const bool on = lane < D / 4;
  const int c0 = on ? 4 * lane : 0, r0 = warp * kRows, block = r0 / kSub;
  const int64_t col = static_cast<int64_t>(h) * D + c0;

  // 1. Inputs: q̂, k̂ (rounded to bf16), β v, g, β. Rows past the chunk's length are zero (no
  //    decay, β = 0), so they neither move G nor touch the state. From the staged copy (v from
  //    global memory where it is not staged), once the previous task's reads of shared memory
  //    are done.
  const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  float4 q[kRows], k[kRows], v[kRows], G[kRows];
  float beta[kRows];
  if constexpr (!kStagesV<In>) {
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      const int r = r0 + i;
      const bool load = r < ref.length && on;
      v[i] = load ? Load4(RowOf<In>(in.v, ref.row_begin + r) + col, kAlignedInputs) : zero;
    }
  }
  WaitAsync<0>();
  __syncthreads();
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
    const int r = r0 + i;
    const bool valid = r < ref.length, load = valid && on;
    q[i] = load ? LoadStaged4(&s.next.q[r][c0]) : zero;
    k[i] = load ? LoadStaged4(&s.next.k[r][c0]) : zero;
    G[i] = load ? LoadStaged4(&s.next.gate[r][c0]) : zero;
    if constexpr (kStagesV<In>) v[i] = load ? LoadStaged4(&s.next.v[r][c0]) : zero;
    beta[i] = valid ? __fdividef(1.0f, 1.0f + Exp2(-kLog2E * s.next.beta_logits[r])) : 0.0f;
  }
  const float decay_rate = expf(LoadFlat(in.a_log, h));
  const float q_scale = 1.0f / sqrtf(static_cast<float>(D));
  float dt[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) dt[j] = on ? LoadFlat(in.dt_bias, col + j) : 0.0f;
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
    const float sum_q = WarpSum(q[i].x * q[i].x + q[i].y * q[i].y + q[i].z * q[i].z + q[i].w * q[i].w);
    const float sum_k = WarpSum(k[i].x * k[i].x + k[i].y * k[i].y + k[i].z * k[i].z + k[i].w * k[i].w);
    q[i] = UnpackBf16(PackBf16(q[i] * (q_scale * rsqrtf(sum_q + 1e-6f))));
    k[i] = UnpackBf16(PackBf16(k[i] * rsqrtf(sum_k + 1e-6f)));
    const bool valid = r0 + i < ref.length && on;
    float* g = &G[i].x;
#pragma unroll
    for (int j = 0; j < 4; ++j) g[j] = valid ? -decay_rate * Softplus2(g[j] + dt[j]) : 0.0f;
    if (i > 0) G[i] = G[i] + G[i - 1];  // the cumulative sum over this warp's rows
  }
  if (on) At4(&s.warp_sums[warp][c0]) = G[kRows - 1];
  __syncthreads();

  // 2. G over the whole chunk (the sums of the warps before this one added), and from the warps'
  //    sums alone G at each sub-block's start (the previous sub-block's last row; 0 for the first)
  //    and at the chunk's end, so the operands below need no barrier after G. Then the operands
  //    of the sub-block products (and whether each diagonal one may use them); QG, KG and
  //    e^G_last out to scratch; the operand β e^G k̂ of W kept in registers until `rows` is free.
  uint2 w_operand[kRows];
  {
    float4 before = zero, g_ref = zero, g_start[4], g_last = zero;
#pragma unroll
    for (int w = 0; w < kPrepareWarps; ++w) {
      if (w == warp) before = g_last;
      if (w % 4 == 0) g_start[w / 4] = g_last;
      if (w == 4 * block) g_ref = g_last;
      g_last = g_last + At4(&s.warp_sums[w][c0]);
    }
    bf16* qg = scratch.qg + ch * kChunk * D;
    bf16* kg = scratch.kg + ch * kChunk * D;
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      const int r = r0 + i;
      G[i] = G[i] + before;
      if (lane == 0) s.beta[r] = beta[i];
      const float4 e_g = Exp2(G[i]);
      w_operand[i] = PackBf16(k[i] * e_g * beta[i]);
      if (!on) continue;
      At4(&s.g[r][c0]) = G[i];
      Store4(&s.q[r][c0], q[i]);
      Store4(&s.k[r][c0], k[i]);
      Store4(&s.bv[r][c0], v[i] * beta[i]);
      Store4(qg + r * D + c0, q[i] * e_g);
      Store4(kg + r * D + c0, k[i] * Exp2Diff(g_last, G[i]));
      const float4 decay = Exp2Diff(G[i], g_ref);
      Store4(&s.rows[r][c0], k[i] * decay);
      Store4(&s.rows[kChunk + r][c0], q[i] * decay);
      const float4 growth = g_ref + G[i] * -1.0f;
      Store4(&s.diagonal_cols[r][c0],
             k[i] * Exp2(make_float4(fminf(growth.x, kDiagonalRange), fminf(growth.y, kDiagonalRange),
                                     fminf(growth.z, kDiagonalRange), fminf(growth.w, kDiagonalRange))));
#pragma unroll
      for (int b = 1; b < 4; ++b) {
        if (b > block) Store4(&s.cols[ColsBase(b) + r][c0], k[i] * Exp2Diff(g_start[b], G[i]));
      }
    }
    if (warp == 0 && on) At4(&scratch.gate_last[ch * D + c0]) = Exp2(g_last);
    if (warp % 4 == 3) {  // the warp holding the sub-block's last row
      const float4 range = g_ref + G[kRows - 1] * -1.0f;
      const bool small = !on || fmaxf(fmaxf(range.x, range.y), fmaxf(range.z, range.w)) < kDiagonalRange;
      const bool all_small = __all_sync(0xffffffffu, small);
      if (lane == 0) s.diagonal_on_tensor_cores[block] = all_small;
    }
  }
  __syncthreads();

  // 3. Akk (β in its rows) and the off-diagonal tiles of Aqk: on tensor cores, and Akk's diagonal
  //    ones too where their decay range is small (the products of e^(G_r - G_b) <= 1 and
  //    e^(G_b - G_s) < 2^kDiagonalRange, G_b at the sub-block's start; Aqk's come in step 4, beside
  //    the inverse's first part); elsewhere element by element (e^(G_r - G_s) with s <= r): warp
  //    w takes the row at offset w of blocks 0 and 2 and offset 15 - w of blocks 1 and 3 (34
  //    pairs each), a lane its 4 columns of every pair, and one transposed sum gives a lane one
  //    pair's total. Aqk goes straight out to scratch (bf16). Only Akk's strictly lower triangle
  //    is ever read, so nothing above it is zeroed or masked (the diagonal tiles on tensor cores
  //    store theirs unread).
  bf16* const aqk = scratch.aqk + ch * kChunk * kChunk;
  for (int t = warp; t < 16; t += kPrepareWarps) {
    const bool is_q = t >= 6 && t < 12;
    int bi, bj;
    if (t < 12) {
      OffDiagonalPair(is_q ? t - 6 : t, bi, bj);
    } else {
      bi = bj = t - 12;
      if (!s.diagonal_on_tensor_cores[bi]) continue;
    }
    const bf16* a = &s.rows[(is_q ? kChunk : 0) + bi * kSub][0];
    const bf16* b = t < 12 ? &s.cols[ColsBase(bi) + bj * kSub][0] : &s.diagonal_cols[bi * kSub][0];
    TileAcc16 acc;
    RowProductTile<D>(acc, a, b, lane);
    if (is_q) {
      StoreTileBf16Global(acc, reinterpret_cast<bf16*>(s.tile[warp]), aqk + bi * kSub * kChunk + bj * kSub, kChunk,
                          lane);
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) acc.x[i] *= s.beta[bi * kSub + AccRow(i, lane)];
      StoreTile(acc, &s.akk[bi * kSub][bj * kSub], PaddedF32(kChunk), lane);
    }
  }
#pragma unroll 1
  for (int b = 0; b < 4; ++b) {
    if (s.diagonal_on_tensor_cores[b]) continue;
    const int offset = (b & 1) ? kSub - 1 - warp : warp, r = b * kSub + offset;
    const float4 g_r = At4(&s.g[r][c0]);
    const float4 k_r = on ? Load4(&s.k[r][c0]) : zero, q_r = on ? Load4(&s.q[r][c0]) : zero;
    float sums[2 * kSub];
#pragma unroll
    for (int j = 0; j < kSub; ++j) {
      float kk = 0.0f, qk = 0.0f;
      if (j <= offset) {
        const int col_row = b * kSub + j;
        const float4 kd = Load4(&s.k[col_row][c0]) * Exp2Diff(g_r, At4(&s.g[col_row][c0]));
        kk = k_r.x * kd.x + k_r.y * kd.y + k_r.z * kd.z + k_r.w * kd.w;
        qk = q_r.x * kd.x + q_r.y * kd.y + q_r.z * kd.z + q_r.w * kd.w;
      }
      sums[j] = kk;
      sums[kSub + j] = qk;
    }
    const float total = TransposeSum(sums, lane);
    const int j = lane % kSub;
    if (lane < kSub) {
      if (j < offset) s.akk[r][b * kSub + j] = total * s.beta[r];
    } else {
      aqk[r * kChunk + b * kSub + j] = __float2bfloat16(j <= offset ? total : 0.0f);
    }
  }
  __syncthreads();

  // 4. Tm = (I + Akk)^-1, unit lower triangular, by a 2x2 recursion of 16x16 blocks: warp p
  //    inverts the diagonal blocks 2p (lanes 0-15) and 2p + 1 (lanes 16-31) by forward
  //    substitution, a lane per column, then T_{2p+1,2p} = -T_{2p+1,2p+1} A_{2p+1,2p} T_{2p,2p},
  //    with no block barrier; then across the two 32x32 halves A (rows 0..31) and B (rows
  //    32..63), T_BA = -T_BB (A_BA T_AA). Tm's bf16 copy for the W and U products is written as
  //    each block is final (the fp32 one only where later blocks read it). Meanwhile warps 2-5
  //    compute Aqk's diagonal tiles where they go on tensor cores (lower triangle kept), warps
  //    6-11 zero its tiles above the diagonal, and the W operand goes into `rows` (the products
  //    reading k̂ there are done). A thread of the products takes 4 adjacent columns of a block
  //    row; every sum has a fixed length (rows of T_II run over exact zeros above its diagonal),
  //    so its shared-memory reads can be issued ahead of the products.
  if (on) {
#pragma unroll
    for (int i = 0; i < kRows; ++i) *reinterpret_cast<uint2*>(&s.rows[r0 + i][c0]) = w_operand[i];
  }
  constexpr int kLd = PaddedF32(kChunk), kLdX = PaddedF32(2 * kSub);
  if (warp < 2) {
    const int pair = warp, base = (2 * pair + lane / kSub) * kSub, c = lane % kSub;
    float column[kSub];  // column c of the block's inverse, in registers along the substitution
#pragma unroll
    for (int r = 0; r < kSub; ++r) {
      float sum = 0.0f;
#pragma unroll
      for (int k = 0; k < r; ++k) sum = fmaf(s.akk[base + r][base + k], column[k], sum);
      column[r] = r < c ? 0.0f : (r == c ? 1.0f : -sum);
    }
#pragma unroll
    for (int r = 0; r < kSub; ++r) {
      s.tm[base + r][base + c] = column[r];
      s.tm_bf16[base + r][base + c] = __float2bfloat16(column[r]);
    }
    __syncwarp();
    const int bj = 2 * pair * kSub, bi = bj + kSub;
#pragma unroll
    for (int item = lane; item < kSub * kSub / 4; item += 32) {
      const int r = item / 4, c4 = 4 * (item % 4);
      At4(&s.partial[pair][r * kSub + c4]) = RowTimesRows<kSub>(&s.akk[bi + r][bj], &s.tm[bj][bj + c4], kLd);
    }
    __syncwarp();
#pragma unroll
    for (int item = lane; item < kSub * kSub / 4; item += 32) {
      const int r = item / 4, c4 = 4 * (item % 4);
      const float4 t = RowTimesRows<kSub>(&s.tm[bi + r][bi], &s.partial[pair][c4], kSub) * -1.0f;
      At4(&s.tm[bi + r][bj + c4]) = t;
      Store4(&s.tm_bf16[bi + r][bj + c4], t);
    }
  } else if (warp < 6 && s.diagonal_on_tensor_cores[warp - 2]) {
    const int b = warp - 2;
    const bf16* qa = &s.rows[kChunk + b * kSub][0];
    const bf16* kb = &s.diagonal_cols[b * kSub][0];
    TileAcc16 acc;
    RowProductTile<D>(acc, qa, kb, lane);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      if (AccCol(i, lane) > AccRow(i, lane)) acc.x[i] = 0.0f;
    }
    StoreTileBf16Global(acc, reinterpret_cast<bf16*>(s.tile[warp]), aqk + b * kSub * kChunk + b * kSub, kChunk, lane);
  } else if (warp >= 6 && warp < 12) {
    int bi, bj;
    OffDiagonalPair(warp - 6, bi, bj);  // the tile (bj, bi) above the diagonal
    *reinterpret_cast<uint4*>(aqk + (bj * kSub + (lane >> 1)) * kChunk + bi * kSub + (lane & 1) * 8) =
        make_uint4(0, 0, 0, 0);
  }
  __syncthreads();
  static_assert(kStagingFirstThread == 2 * kSub * 2 * kSub / 4, "the threads of X = A_BA T_AA");
  if (tid < kStagingFirstThread) {  // X = A_BA T_AA; T_AA's columns 16..31 are T_11's alone
    const bool left = tid < kSub * 2 * kSub / 4;
    const int r = (tid / 4) % (2 * kSub), c = (left ? 0 : kSub) + 4 * (tid % 4);
    At4(&s.x[r][c]) = left ? RowTimesRows<2 * kSub>(&s.akk[2 * kSub + r][0], &s.tm[0][c], kLd)
                           : RowTimesRows<kSub>(&s.akk[2 * kSub + r][kSub], &s.tm[kSub][c], kLd);
  } else {
    stage_next(kStagingFirstThread);
  }
  __syncthreads();
  if (tid < 2 * kSub * 2 * kSub / 4) {  // T_BA = -T_BB X; T_BB's rows 0..15 are T_22's alone
    const bool lower = tid < kSub * 2 * kSub / 4;
    const int r = (lower ? kSub : 0) + (tid / 8) % kSub, c = 4 * (tid % 8);
    const float* t_row = &s.tm[2 * kSub + r][2 * kSub];
    const float4 t = (lower ? RowTimesRows<2 * kSub>(t_row, &s.x[0][c], kLdX)
                            : RowTimesRows<kSub>(t_row, &s.x[0][c], kLdX)) * -1.0f;
    Store4(&s.tm_bf16[2 * kSub + r][c], t);
  }
  __syncthreads();

  // 5. W = Tm·(β e^G k̂) and U = Tm·(β v) on tensor cores (Tm in bf16, lower block triangle): a
  //    warp takes a row tile of both at once (each Tm fragment loaded once); at d = 128 each warp
  //    holds row tiles 0 and 3 or 1 and 2 (5 k steps either way).
  constexpr int kColTiles = D / kSub;
  for (int t = warp; t < 4 * kColTiles; t += kPrepareWarps) {
    const int i = t / kColTiles, rt = i < 2 ? i : 5 - i, ct = t % kColTiles;
    TileAcc16 w_acc, u_acc;
    ZeroTile(w_acc);
    ZeroTile(u_acc);
    for (int kt = 0; kt <= rt; ++kt) {
      TileA16 fa;
      TileB16 fw, fu;
      LoadA(fa, &s.tm_bf16[rt * kSub][kt * kSub], Padded(kChunk), lane);
      LoadB(fw, &s.rows[kt * kSub][ct * kSub], Padded(D), lane);
      LoadB(fu, &s.bv[kt * kSub][ct * kSub], Padded(D), lane);
      MmaTile(w_acc, fa, fw);
      MmaTile(u_acc, fa, fu);
    }
    const int64_t at = ch * kChunk * D + rt * kSub * D + ct * kSub;
    bf16* staging = reinterpret_cast<bf16*>(s.tile[warp]);
    StoreTileBf16Global(w_acc, staging, scratch.w + at, D, lane);
    StoreTileBf16Global(u_acc, staging, scratch.u + at, D, lane);
  }
}

// Persistent blocks take the (chunk, head) tasks ch = chunk * heads + h in turn: block b the
// tasks b, b + gridDim.x, ... While a task's inverse and W, U products run (phases 4-5), the next
// task's q, k and gate rows (and v's with bf16 inputs) are copied into shared memory, so that its
// loads overlap them rather than every block waiting on its inputs at once.
template <int D, typename In, bool kAlignedInputs>
__global__ void __launch_bounds__(kPrepareWarps * 32)
    KdaChunkPrepareKernel(KdaInputs in, const KdaChunkRef* chunks, int64_t tasks, ChunkScratch<D> scratch) {
  extern __shared__ __align__(128) unsigned char shared_raw[];
  auto& s = *reinterpret_cast<PrepareShared<D, In>*>(shared_raw);
  const int heads = static_cast<int>(in.num_heads);
  if (blockIdx.x >= tasks) return;
  KdaChunkRef ref = chunks[blockIdx.x / heads];
  StageInputs<D, In, kAlignedInputs>(in, ref, static_cast<int>(blockIdx.x % heads), 0, s.next);
  for (int64_t ch = blockIdx.x; ch < tasks; ch += gridDim.x) {
    const int64_t next = ch + gridDim.x;
    const KdaChunkRef next_ref = next < tasks ? chunks[next / heads] : ref;
    const auto stage_next = [&](int first_thread) {
      if (next >= tasks) return;
      StageInputs<D, In, kAlignedInputs>(in, next_ref, static_cast<int>(next % heads), first_thread, s.next);
    };
    PrepareTask<D, In, kAlignedInputs>(in, ref, ch, static_cast<int>(ch % heads), scratch, s, stage_next);
    ref = next_ref;
  }
}

template <int D, int BV>
struct ScanShared {
  struct Stage {
    bf16 w[kChunk][Padded(D)];
    bf16 kg[kChunk][Padded(D)];
    bf16 u[kChunk][Padded(BV)];
    float gate_last[D];
  };
  Stage stage[2];
  bf16 state_bf16[D][Padded(BV)];  // S as the products read it
  bf16 vn[kChunk][Padded(BV)];
};

// Queues the asynchronous copy of kRows rows of kCols bf16 (a multiple of 8) from `src` (row
// stride kSrcLd) into `dst` (row stride kDstLd), 16 bytes a thread at a time over kThreads
// threads. Every count known at compile time, a thread's pieces are a fixed unrolled list whose
// offsets the compiler keeps out of a caller's loop (the scan issues these per chunk).
template <int kRows, int kCols, int kDstLd, int kSrcLd, int kThreads>
__device__ __forceinline__ void CopyRowsAsync(bf16* dst, const bf16* src) {
  static_assert(kCols % 8 == 0, "16-byte pieces");
  constexpr int kPieces = kCols / 8, kTotal = kRows * kPieces;
#pragma unroll
  for (int k = 0; k < (kTotal + kThreads - 1) / kThreads; ++k) {
    const int i = static_cast<int>(threadIdx.x) + k * kThreads;
    if (kTotal % kThreads != 0 && i >= kTotal) break;
    const int r = i / kPieces, p = i % kPieces;
    CopyAsync16(dst + r * kDstLd + p * 8, src + r * kSrcLd + p * 8);
  }
}

// Queues the copy of chunk-head `ch`'s operands (value slice `slice`) into `st`.
template <int D, int BV, int kWarps>
__device__ __forceinline__ void LoadStage(const ChunkScratch<D>& scratch, int64_t ch, int slice,
                                          typename ScanShared<D, BV>::Stage& st) {
  constexpr int kThreads = kWarps * 32;
  const int64_t matrix = ch * kChunk * D;
  CopyRowsAsync<kChunk, D, Padded(D), D, kThreads>(&st.w[0][0], scratch.w + matrix);
  CopyRowsAsync<kChunk, D, Padded(D), D, kThreads>(&st.kg[0][0], scratch.kg + matrix);
  CopyRowsAsync<kChunk, BV, Padded(BV), D, kThreads>(&st.u[0][0], scratch.u + matrix + slice * BV);
  const auto* gate_last = reinterpret_cast<const uint4*>(scratch.gate_last + ch * D);
  for (int i = threadIdx.x; i < D / 4; i += kThreads) {
    CopyAsync16(reinterpret_cast<uint4*>(st.gate_last) + i, gate_last + i);
  }
}

// Calls f(m, rt, ct) for each state tile a scan warp holds in registers: tiles warp,
// warp + kWarps, ... of the row-major [D/16, BV/16] grid (kTiles of them, kCols per row),
// m the tile's index in the warp's array (a compile-time constant once unrolled).
template <int kWarps, int kMyTiles, int kTiles, int kCols, typename F>
__device__ __forceinline__ void ForEachHeldStateTile(int warp, F&& f) {
#pragma unroll
  for (int m = 0; m < kMyTiles; ++m) {
    const int t = warp + m * kWarps;
    if (t < kTiles) f(m, t / kCols, t % kCols);
  }
}

// The recurrence over a sequence's chunks, for one (sequence, head, slice of value columns):
// per chunk, H = S and Vn = U - W·S out to scratch, then S = e^G_last ⊙ S + KGᵀ·Vn. The outputs
// wait for the output kernel, which has every chunk's H and Vn at once. Warp w computes the Vn
// tiles w, w + kWarps, ... (row tile t % 4, column tile t / 4) and holds the state tiles w,
// w + kWarps, ... (row-major over [D/16, BV/16]) in registers, fp32, for the whole sequence.
// Blocks take the sequences longest first: a chain that starts last must not be a long one.
template <int D, int BV, int kWarps>
__global__ void __launch_bounds__(kWarps * 32)
    KdaChunkScanKernel(const KdaSequence* seqs, const int32_t* first_chunk, const int32_t* longest_first, int heads,
                       ChunkScratch<D> scratch) {
  constexpr int kSlices = D / BV, kColTiles = BV / kSub, kStateTiles = (D / kSub) * kColTiles;
  constexpr int kMyStateTiles = (kStateTiles + kWarps - 1) / kWarps;
  constexpr int kRowTiles = kChunk / kSub, kVnTiles = kRowTiles * kColTiles;
  constexpr int kThreads = kWarps * 32;
  extern __shared__ __align__(128) unsigned char shared_raw[];
  auto& s = *reinterpret_cast<ScanShared<D, BV>*>(shared_raw);

  const int slice = blockIdx.x % kSlices;
  const int head_index = blockIdx.x / kSlices;
  const int seq = longest_first[head_index / heads], h = head_index % heads;
  const int first = first_chunk[seq], count = first_chunk[seq + 1] - first;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  float* state = seqs[seq].state + static_cast<int64_t>(h) * D * D + slice * BV;

  TileAcc16 s_tiles[kMyStateTiles];
  auto for_each_tile = [warp](auto&& f) {
    ForEachHeldStateTile<kWarps, kMyStateTiles, kStateTiles, kColTiles>(warp, f);
  };
  for_each_tile([&](int m, int rt, int ct) {
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int r = rt * kSub + AccRow(i, lane), c = ct * kSub + AccCol(i, lane);
      s_tiles[m].x[i] = state[static_cast<int64_t>(r) * D + c];
    }
    StoreTileBf16(s_tiles[m], &s.state_bf16[rt * kSub][ct * kSub], Padded(BV), lane);
  });
  if (count > 0) LoadStage<D, BV, kWarps>(scratch, static_cast<int64_t>(first) * heads + h, slice, s.stage[0]);
  CommitAsync();
  WaitAsync<0>();
  __syncthreads();

  // Two block barriers a chunk: the one that ends a chunk also makes the next chunk's operands
  // (copied in meanwhile) visible, and frees the stage they were read from for the chunk after.
  for (int n = 0; n < count; ++n) {
    const int64_t ch = static_cast<int64_t>(first + n) * heads + h;
    if (n + 1 < count) LoadStage<D, BV, kWarps>(scratch, ch + heads, slice, s.stage[(n + 1) & 1]);
    CommitAsync();
    auto& st = s.stage[n & 1];

    // H: the state entering this chunk (bf16), 16 bytes a thread at a time.
    {
      bf16* dst = scratch.h + ch * D * D + slice * BV;
      for (int i = tid; i < D * BV / 8; i += kThreads) {
        const int r = i / (BV / 8), c = 8 * (i % (BV / 8));
        *reinterpret_cast<uint4*>(dst + static_cast<int64_t>(r) * D + c) =
            *reinterpret_cast<const uint4*>(&s.state_bf16[r][c]);
      }
    }
    // Vn = U - W·S.
    for (int t = warp; t < kVnTiles; t += kWarps) {
      const int rt = t % kRowTiles, ct = t / kRowTiles;
      TileAcc16 acc, acc_odd;  // two chains of products: the tile's latency is on the critical path
      ZeroTile(acc);
      ZeroTile(acc_odd);
#pragma unroll
      for (int kt = 0; kt < D / kSub; ++kt) {
        TileA16 fw;
        TileB16 fs;
        LoadA(fw, &st.w[rt * kSub][kt * kSub], Padded(D), lane);
        LoadB(fs, &s.state_bf16[kt * kSub][ct * kSub], Padded(BV), lane);
        MmaTile(kt % 2 ? acc_odd : acc, fw, fs);
      }
#pragma unroll
      for (int i = 0; i < 8; ++i) acc.x[i] += acc_odd.x[i];
#pragma unroll
      for (int i = 0; i < 8; i += 2) {
        const int r = rt * kSub + AccRow(i, lane), c = ct * kSub + AccCol(i, lane);
        const float2 u = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&st.u[r][c]));
        *reinterpret_cast<__nv_bfloat162*>(&s.vn[r][c]) = __floats2bfloat162_rn(u.x - acc.x[i], u.y - acc.x[i + 1]);
      }
    }
    // S ← e^G_last ⊙ S.
    for_each_tile([&](int m, int rt, int) {
#pragma unroll
      for (int i = 0; i < 8; ++i) s_tiles[m].x[i] *= st.gate_last[rt * kSub + AccRow(i, lane)];
    });
    __syncthreads();

    // Vn out to scratch, 16 bytes a thread at a time (from the accumulators' layout, 4-byte
    // stores would write each 32-byte sector in halves).
    {
      bf16* dst = scratch.vn + ch * kChunk * D + slice * BV;
      for (int i = tid; i < kChunk * BV / 8; i += kThreads) {
        const int r = i / (BV / 8), c = 8 * (i % (BV / 8));
        *reinterpret_cast<uint4*>(dst + static_cast<int64_t>(r) * D + c) = *reinterpret_cast<const uint4*>(&s.vn[r][c]);
      }
    }
    // S += KGᵀ·Vn, and its bf16 copy for the next chunk.
    for_each_tile([&](int m, int rt, int ct) {
#pragma unroll
      for (int kt = 0; kt < kChunk / kSub; ++kt) {
        TileA16 fk;
        TileB16 fv;
        LoadATransposed(fk, &st.kg[kt * kSub][rt * kSub], Padded(D), lane);
        LoadB(fv, &s.vn[kt * kSub][ct * kSub], Padded(BV), lane);
        MmaTile(s_tiles[m], fk, fv);
      }
      StoreTileBf16(s_tiles[m], &s.state_bf16[rt * kSub][ct * kSub], Padded(BV), lane);
    });
    WaitAsync<0>();
    __syncthreads();
  }

  for_each_tile([&](int m, int rt, int ct) {
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int r = rt * kSub + AccRow(i, lane), c = ct * kSub + AccCol(i, lane);
      state[static_cast<int64_t>(r) * D + c] = s_tiles[m].x[i];
    }
  });
}

template <int D>
struct OutputShared {
  bf16 qg[kChunk][Padded(D)];
  bf16 h[D][Padded(D)];
  bf16 vn[kChunk][Padded(D)];
  bf16 aqk[kChunk][Padded(kChunk)];
};

// O = QG·H + Aqk·Vn for one (chunk, head) `ch` = blockIdx.x, every chunk at once: warp w
// computes the output tiles w, w + 8, ... (row tile t % 4, column tile t / 4). (Run beside the
// scan, taking chunks as the scan flagged them, it slowed the scan more than it saved: 8.96 ->
// 8.45-8.75 M tok/s at 1 x 64k on an H200.)
template <int D, typename Out>
__global__ void __launch_bounds__(kOutputWarps * 32)
    KdaChunkOutputKernel(const KdaChunkRef* chunks, ChunkScratch<D> scratch, int heads, TensorView out,
                         bool aligned_out) {
  constexpr int kThreads = kOutputWarps * 32, kRowTiles = kChunk / kSub;
  extern __shared__ __align__(128) unsigned char shared_raw[];
  auto& s = *reinterpret_cast<OutputShared<D>*>(shared_raw);
  const int64_t ch = blockIdx.x;
  const int chunk = static_cast<int>(ch / heads), h = static_cast<int>(ch % heads);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;

  CopyRowsAsync<kChunk, D, Padded(D), D, kThreads>(&s.qg[0][0], scratch.qg + ch * kChunk * D);
  CopyRowsAsync<D, D, Padded(D), D, kThreads>(&s.h[0][0], scratch.h + ch * D * D);
  CopyRowsAsync<kChunk, D, Padded(D), D, kThreads>(&s.vn[0][0], scratch.vn + ch * kChunk * D);
  CopyRowsAsync<kChunk, kChunk, Padded(kChunk), kChunk, kThreads>(&s.aqk[0][0], scratch.aqk + ch * kChunk * kChunk);
  CommitAsync();
  const KdaChunkRef ref = chunks[chunk];
  WaitAsync<0>();
  __syncthreads();

  for (int t = warp; t < kRowTiles * (D / kSub); t += kOutputWarps) {
    const int rt = t % kRowTiles, ct = t / kRowTiles;
    TileAcc16 acc;
    ZeroTile(acc);
#pragma unroll
    for (int kt = 0; kt < D / kSub; ++kt) {
      TileA16 fq;
      TileB16 fh;
      LoadA(fq, &s.qg[rt * kSub][kt * kSub], Padded(D), lane);
      LoadB(fh, &s.h[kt * kSub][ct * kSub], Padded(D), lane);
      MmaTile(acc, fq, fh);
    }
    for (int kt = 0; kt <= rt; ++kt) {
      TileA16 fa;
      TileB16 fv;
      LoadA(fa, &s.aqk[rt * kSub][kt * kSub], Padded(kChunk), lane);
      LoadB(fv, &s.vn[kt * kSub][ct * kSub], Padded(D), lane);
      MmaTile(acc, fa, fv);
    }
#pragma unroll
    for (int i = 0; i < 8; i += 2) {
      const int r = rt * kSub + AccRow(i, lane);
      if (r >= ref.length) continue;
      Out* dst = static_cast<Out*>(out.data) + (ref.row_begin + r) * out.row_stride + h * D + ct * kSub +
                 AccCol(i, lane);
      if constexpr (std::is_same_v<Out, float>) {
        if (aligned_out) {
          *reinterpret_cast<float2*>(dst) = make_float2(acc.x[i], acc.x[i + 1]);
        } else {
          dst[0] = acc.x[i];
          dst[1] = acc.x[i + 1];
        }
      } else if (aligned_out) {
        *reinterpret_cast<__nv_bfloat162*>(dst) = __floats2bfloat162_rn(acc.x[i], acc.x[i + 1]);
      } else {
        dst[0] = __float2bfloat16(acc.x[i]);
        dst[1] = __float2bfloat16(acc.x[i + 1]);
      }
    }
  }
}

// Whether every row of q, k, v and the gate logits starts on 16 bytes (16-byte pieces, and
// 4-column loads of v).
bool AlignedRows(const KdaInputs& in) {
  const int64_t per_16_bytes = in.q.dtype == DType::kBF16 ? 8 : 4;
  for (const TensorView* v : {&in.q, &in.k, &in.v, &in.gate_logits}) {
    if (reinterpret_cast<uintptr_t>(v->data) % 16 != 0 || v->row_stride % per_16_bytes != 0) return false;
  }
  return true;
}

// The prepare kernel's grid for `tasks` (chunk, head) pairs: the blocks resident at once (at most
// `tasks`), looked up once per kernel.
template <int D, typename In, bool kAlignedInputs>
int64_t PrepareBlocks(int64_t tasks, size_t shared_bytes) {
  // At least a block per SM where the query fails.
  static const int64_t resident = std::max<int64_t>(
      ResidentBlocks(KdaChunkPrepareKernel<D, In, kAlignedInputs>, kPrepareWarps * 32, shared_bytes), SmCount());
  return std::min(tasks, resident);
}

template <int D, typename In, bool kAlignedInputs>
int LaunchPrepare(const KdaInputs& in, const KdaChunkRef* chunks, int64_t tasks, const ChunkScratch<D>& scratch,
                  cudaStream_t stream) {
  const auto kernel = KdaChunkPrepareKernel<D, In, kAlignedInputs>;
  const size_t bytes = sizeof(PrepareShared<D, In>);
  if (const int error = AllowDynamicSmem(reinterpret_cast<const void*>(kernel), bytes); error != 0) return error;
  const auto blocks = static_cast<unsigned>(PrepareBlocks<D, In, kAlignedInputs>(tasks, bytes));
  kernel<<<blocks, kPrepareWarps * 32, bytes, stream>>>(in, chunks, tasks, scratch);
  return 0;
}

template <int D, typename Out>
int LaunchOutput(const KdaChunkRef* chunks, int64_t num_chunks, const ChunkScratch<D>& scratch, int heads,
                 TensorView out, cudaStream_t stream) {
  const auto kernel = KdaChunkOutputKernel<D, Out>;
  const size_t bytes = sizeof(OutputShared<D>);
  if (const int error = AllowDynamicSmem(reinterpret_cast<const void*>(kernel), bytes); error != 0) return error;
  const bool aligned_out = reinterpret_cast<uintptr_t>(out.data) % (2 * sizeof(Out)) == 0 && out.row_stride % 2 == 0;
  kernel<<<static_cast<unsigned>(num_chunks * heads), kOutputWarps * 32, bytes, stream>>>(chunks, scratch, heads,
                                                                                          out, aligned_out);
  return 0;
}

// A scan launch: which kernel (slices of how many value columns), its shared memory and grid.
template <int D>
struct ScanLaunch {
  void (*kernel)(const KdaSequence*, const int32_t*, const int32_t*, int, ChunkScratch<D>);
  size_t shared_bytes;
  int64_t blocks;
  int threads;
};

template <int D, int BV, int kWarps>
ScanLaunch<D> ScanLaunchOf(int64_t num_seqs, int heads) {
  return {KdaChunkScanKernel<D, BV, kWarps>, sizeof(ScanShared<D, BV>), num_seqs * heads * (D / BV), kWarps * 32};
}

// Slices of 64 value columns (16 warps, one block per SM) read each chunk's W and KG through L2
// once per 64 columns, not per 32, which makes the scan 3-4% faster wherever their blocks reach
// nearly every SM (measured on an H200 from 2 sequences of 32 heads up, docs/gpu-benchmark.md).
// Fewer (sequence, head) pairs take slices of 32 (8 warps, two blocks per SM): at one sequence of
// 32 heads, 64 wide blocks would leave half the SMs idle (12% slower).
template <int D>
ScanLaunch<D> ChooseScan(int64_t num_seqs, int heads) {
  if constexpr (D % 64 == 0) {
    if (8 * num_seqs * heads * (D / 64) >= 7 * SmCount()) return ScanLaunchOf<D, 64, 16>(num_seqs, heads);
  }
  return ScanLaunchOf<D, ScanSlice(D), kScanWarps>(num_seqs, heads);
}

template <int D>
int Launch(const KdaInputs& in, const KdaSequence* seqs, int64_t num_seqs, const KdaChunkRef* chunks,
           const int32_t* first_chunk, const int32_t* longest_first, int64_t num_chunks, void* scratch_memory,
           TensorView out, cudaStream_t stream) {
  const int heads = static_cast<int>(in.num_heads);
  const auto scratch = ChunkScratch<D>::Carve(scratch_memory, num_chunks * heads);
  // The scan's shared-memory limit is set before anything is queued.
  const ScanLaunch<D> scan = ChooseScan<D>(num_seqs, heads);
  if (const int error = AllowDynamicSmem(reinterpret_cast<const void*>(scan.kernel), scan.shared_bytes); error != 0) {
    return error;
  }
  const int64_t tasks = num_chunks * heads;
  const bool bf16_in = in.q.dtype == DType::kBF16, aligned = AlignedRows(in);
  int error = bf16_in ? (aligned ? LaunchPrepare<D, bf16, true>(in, chunks, tasks, scratch, stream)
                                 : LaunchPrepare<D, bf16, false>(in, chunks, tasks, scratch, stream))
                      : (aligned ? LaunchPrepare<D, float, true>(in, chunks, tasks, scratch, stream)
                                 : LaunchPrepare<D, float, false>(in, chunks, tasks, scratch, stream));
  if (error != 0) return error;
  const auto scan_grid = static_cast<unsigned>(scan.blocks);
  scan.kernel<<<scan_grid, scan.threads, scan.shared_bytes, stream>>>(seqs, first_chunk, longest_first, heads, scratch);
  error = out.dtype == DType::kBF16 ? LaunchOutput<D, bf16>(chunks, num_chunks, scratch, heads, out, stream)
                                    : LaunchOutput<D, float>(chunks, num_chunks, scratch, heads, out, stream);
  if (error != 0) return error;
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
  for (int64_t i = 0; i < num_seqs; ++i) table.longest_first.push_back(static_cast<int32_t>(i));
  std::stable_sort(table.longest_first.begin(), table.longest_first.end(), [&](int32_t a, int32_t b) {
    return table.first_chunk[a + 1] - table.first_chunk[a] > table.first_chunk[b + 1] - table.first_chunk[b];
  });
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
                     const KdaChunkRef* chunks, const int32_t* first_chunk, const int32_t* longest_first,
                     int64_t num_chunks, void* scratch, TensorView out, Stream stream) {
  const int64_t heads = in.num_heads, d = in.head_dim, width = heads * d;
  if (num_seqs < 0 || num_chunks < 0 || heads <= 0 || heads > 65535 || !KdaChunkedSupports(d) ||
      !KdaInputsMatch(in, out, /*bf16_activations=*/true)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (num_seqs == 0 || num_chunks == 0) return 0;
  if (seqs == nullptr || chunks == nullptr || first_chunk == nullptr || longest_first == nullptr ||
      scratch == nullptr || !FitsGridX(num_chunks * heads) || !FitsGridX(num_seqs * width)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  auto s = static_cast<cudaStream_t>(stream);
  switch (d) {
    case 16: return Launch<16>(in, seqs, num_seqs, chunks, first_chunk, longest_first, num_chunks, scratch, out, s);
    case 32: return Launch<32>(in, seqs, num_seqs, chunks, first_chunk, longest_first, num_chunks, scratch, out, s);
    case 48: return Launch<48>(in, seqs, num_seqs, chunks, first_chunk, longest_first, num_chunks, scratch, out, s);
    case 64: return Launch<64>(in, seqs, num_seqs, chunks, first_chunk, longest_first, num_chunks, scratch, out, s);
    case 96: return Launch<96>(in, seqs, num_seqs, chunks, first_chunk, longest_first, num_chunks, scratch, out, s);
    case 128: return Launch<128>(in, seqs, num_seqs, chunks, first_chunk, longest_first, num_chunks, scratch, out, s);
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

}  // namespace deltaserve::kernels::cuda
