// Absorbed MLA decode on tensor cores (serving precision). The query heads of one row share one
// latent key/value stream, so the attention is a [32 heads × 576] by [keys × 576] product per
// row: each block takes one absorbed row and one partition of its keys, converts key tiles of
// the fp32 latent cache to bf16 in shared memory, and runs QKᵀ and PV on mma.sync (bf16 inputs,
// fp32 accumulation) with an online softmax; O stays in registers. Two launches: q absorbed into
// the latent space (q_lat = W_UKᵀ q_nope, then q_pe) as bf16, then the attention writing each
// partition's unnormalised state for MlaAbsorbedMergeKernel (mla_attention.cu), which merges the
// partitions and applies W_UV.
#include "kernels/cuda/mla_absorbed_tc.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

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
constexpr int kKeys = 32;      // keys per shared-memory tile
static_assert(kKeys == kMlaTensorCorePageRows, "a key tile lies in one latent page");
constexpr int kAbsorbRows = 8; // rows per block in the absorb kernel
constexpr int kAbsorbCols = 32 * 8;  // latent columns per absorb block: 8 per lane
constexpr int kPLd = kKeys + 8;
constexpr int kSLd = kKeys + 4;
constexpr int kTileLoads = 9;  // float4 loads of a key tile in flight per thread

int Ld(int dot) { return dot + 8; }  // shared row stride (bf16) of Q and K: conflict-free 32-bit loads

// Shared memory of the attention kernel for a dot dimension (rank + rope).
size_t AttentionSmemBytes(int dot) {
  return sizeof(bf16) * (static_cast<size_t>(kHeadRows + kKeys) * Ld(dot) + kHeadRows * kPLd) +
         sizeof(float) * (kHeadRows * kSLd + 3 * kHeadRows);
}

__device__ __forceinline__ uint32_t Load32(const bf16* p) { return *reinterpret_cast<const uint32_t*>(p); }

// Two bf16 from different rows, the lower index in the low half (an mma operand register).
__device__ __forceinline__ uint32_t Pack(const bf16* lo, const bf16* hi) {
  return static_cast<uint32_t>(*reinterpret_cast<const uint16_t*>(lo)) |
         (static_cast<uint32_t>(*reinterpret_cast<const uint16_t*>(hi)) << 16);
}

// Grid (heads, kRank / kAbsorbCols, ceil(T / 8)). q_abs[t][h] = [W_UK[h]ᵀ q_nope[t, h] (rank) ‖
// q_pe[t, h] (rope)] in bf16, for every packed row (rows of other forms are computed too and never
// read). Warp w reduces the W_UK rows c ≡ w (mod 8), each lane 8 latent columns per 16-byte load,
// several loads in flight; the warps meet in shared memory.
__global__ void __launch_bounds__(kThreads) MlaAbsorbQKernel(TensorView q, TensorView kv_b, int heads, int nope,
                                                             int rope, int v_dim, bf16* q_abs) {
  FollowPriorKernels();
  __shared__ float q_nope[kAbsorbRows][256];
  __shared__ float partial[kWarps][kAbsorbCols];
  const int h = blockIdx.x;
  const int r0 = blockIdx.y * kAbsorbCols;
  const int64_t t0 = static_cast<int64_t>(blockIdx.z) * kAbsorbRows;
  const int rows = static_cast<int>(q.rows - t0 < kAbsorbRows ? q.rows - t0 : kAbsorbRows);
  const int qk = nope + rope, dot = kRank + rope;
  for (int i = threadIdx.x; i < kAbsorbRows * nope; i += kThreads) {
    const int r = i / nope, c = i % nope;
    q_nope[r][c] = r < rows ? RowF32(q, t0 + r)[h * qk + c] : 0.0f;
  }
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float acc[kAbsorbRows][8] = {};
  const int64_t w_row = static_cast<int64_t>(h) * (nope + v_dim);
  auto accumulate = [&](const float (&w)[8], int c) {
#pragma unroll
    for (int r = 0; r < kAbsorbRows; ++r) {
      const float qv = q_nope[r][c];
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[r][i] = fmaf(w[i], qv, acc[r][i]);
    }
  };
  const auto* w_bf16 = static_cast<const bf16*>(kv_b.data) + (w_row * kv_b.row_stride + r0 + lane * 8);
  if (kv_b.dtype == DType::kBF16 && kv_b.row_stride % 8 == 0 && reinterpret_cast<uintptr_t>(kv_b.data) % 16 == 0) {
    // The serving layout: unconditional 16-byte loads, several rows in flight.
#pragma unroll 8
    for (int c = warp; c < nope; c += kWarps) {
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
    for (int c = warp; c < nope; c += kWarps) {
      float w[8];
      Load8(kv_b, w_row + c, r0 + lane * 8, w);
      accumulate(w, c);
    }
  }
#pragma unroll
  for (int r = 0; r < kAbsorbRows; ++r) {
    if (r >= rows) break;
#pragma unroll
    for (int i = 0; i < 8; ++i) partial[warp][lane * 8 + i] = acc[r][i];
    __syncthreads();
    bf16* dst = q_abs + ((t0 + r) * heads + h) * dot;
    for (int col = threadIdx.x; col < kAbsorbCols; col += kThreads) {
      float sum = 0.0f;
#pragma unroll
      for (int v = 0; v < kWarps; ++v) sum += partial[v][col];
      dst[r0 + col] = __float2bfloat16(sum);
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
  int64_t num_seqs;
  const bf16* q_abs;  // [T, heads, dot]
  int heads, rope;
  float scale;
  int partitions;
  float* partial;  // [T, heads, partitions, rank + 2]: m, l, Σ p c_n
};

// Grid (T, partitions). Warp w scores heads [16(w%2), +16) against keys [8(w/2), +8) of a tile
// and accumulates O for all 32 head rows and latent columns [64w, 64w + 64).
__global__ void __launch_bounds__(kThreads, 2) MlaLatentAttentionKernel(AttentionArgs args) {
  FollowPriorKernels();
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ int seq_index;
  const int64_t t = blockIdx.x;
  MapRows(args.seqs, args.num_seqs, static_cast<int>(MlaForm::kAbsorbed), t, 1, &seq_index);
  const int si = seq_index;
  if (si < 0) return;
  const MlaSequence seq = args.seqs[si];
  const int64_t pos = seq.num_cached + (t - seq.rows.begin);
  const int dot = kRank + args.rope, ld = dot + 8;
  bf16* qs = reinterpret_cast<bf16*>(smem);
  bf16* ks = qs + kHeadRows * ld;
  bf16* ps = ks + kKeys * ld;
  float* ss = reinterpret_cast<float*>(ps + kHeadRows * kPLd);
  float* m_row = ss + kHeadRows * kSLd;
  float* l_row = m_row + kHeadRows;
  float* alpha_row = l_row + kHeadRows;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane >> 2, tq = lane & 3;
  const int heads = args.heads;
  // Q rows (zero past the real heads), 16 bytes at a time.
  const int pieces = dot / 8;
  for (int i = threadIdx.x; i < kHeadRows * pieces; i += kThreads) {
    const int h = i / pieces, p = i % pieces;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (h < heads) v = *reinterpret_cast<const uint4*>(args.q_abs + (t * heads + h) * dot + 8 * p);
    *reinterpret_cast<uint4*>(qs + h * ld + 8 * p) = v;
  }
  if (threadIdx.x < kHeadRows) {
    m_row[threadIdx.x] = -INFINITY;
    l_row[threadIdx.x] = 0.0f;
  }

  const int64_t tiles = pos / kKeys + 1;
  const int64_t tile_lo = tiles * blockIdx.y / args.partitions;
  const int64_t tile_hi = tiles * (blockIdx.y + 1) / args.partitions;
  float o[2][8][4] = {};
  const int s_m = warp % 2, s_n = warp / 2;  // this warp's score tile
  const int quads = dot / 4;
  // A tile's rows lie in one page (pages hold a multiple of kKeys rows); the pages are walked
  // tile by tile, the next one looked up as the last tile of a page begins.
  const int tiles_per_page = static_cast<int>(seq.cache.page_rows / kKeys);
  int64_t page = tile_lo / tiles_per_page;
  int in_page = static_cast<int>(tile_lo % tiles_per_page);
  const float* page_base = tile_lo < tile_hi ? seq.cache.pages[page] : nullptr;
  for (int64_t tile = tile_lo; tile < tile_hi; ++tile) {
    const int64_t j0 = tile * kKeys;
    const float* const rows = page_base + static_cast<int64_t>(in_page) * kKeys * dot;
    if (++in_page == tiles_per_page) {
      in_page = 0;
      if (tile + 1 < tile_hi) page_base = seq.cache.pages[++page];
    }
    __syncthreads();  // the previous tile's readers are done with K and P (first: Q and stats in)
    // The tile's fp32 keys, kTileLoads float4 loads per thread in flight, then converted.
    for (int base = threadIdx.x; base < kKeys * quads; base += kTileLoads * kThreads) {
      float4 v[kTileLoads];
#pragma unroll
      for (int u = 0; u < kTileLoads; ++u) {
        const int i = base + u * kThreads;
        const int64_t j = j0 + i / quads;
        v[u] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (i < kKeys * quads && j <= pos) {
          v[u] = __ldg(reinterpret_cast<const float4*>(rows + (i / quads) * dot) + i % quads);
        }
      }
#pragma unroll
      for (int u = 0; u < kTileLoads; ++u) {
        const int i = base + u * kThreads;
        if (i >= kKeys * quads) break;
        __nv_bfloat162* dst = reinterpret_cast<__nv_bfloat162*>(ks + (i / quads) * ld + 4 * (i % quads));
        dst[0] = __floats2bfloat162_rn(v[u].x, v[u].y);
        dst[1] = __floats2bfloat162_rn(v[u].z, v[u].w);
      }
    }
    __syncthreads();
    {
      float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      const bf16* q_lo = qs + (16 * s_m + g) * ld + 2 * tq;
      const bf16* k_row = ks + (8 * s_n + g) * ld + 2 * tq;
      for (int k0 = 0; k0 < dot; k0 += 16) {
        const uint32_t a[4] = {Load32(q_lo + k0), Load32(q_lo + 8 * ld + k0), Load32(q_lo + k0 + 8),
                               Load32(q_lo + 8 * ld + k0 + 8)};
        Mma16x8x16(c, a, Load32(k_row + k0), Load32(k_row + k0 + 8));
      }
      const int row = 16 * s_m + g, key = 8 * s_n + 2 * tq;
#pragma unroll
      for (int x = 0; x < 4; ++x) {
        const int r = row + 8 * (x / 2), k = key + x % 2;
        ss[r * kSLd + k] = j0 + k <= pos ? c[x] * args.scale : -INFINITY;
      }
    }
    __syncthreads();
    for (int r = warp; r < kHeadRows; r += kWarps) {
      const float s = ss[r * kSLd + lane];
      const float m_old = m_row[r];
      const float m_new = fmaxf(m_old, WarpMax(s));
      const float e = s == -INFINITY ? 0.0f : expf(s - m_new);
      const float sum = WarpSum(e);
      ps[r * kPLd + lane] = __float2bfloat16(e);
      __syncwarp();  // every lane has read m_row[r] before lane 0 replaces it
      if (lane == 0) {
        const float alpha = m_new == -INFINITY ? 1.0f : expf(m_old - m_new);
        m_row[r] = m_new;
        l_row[r] = l_row[r] * alpha + sum;
        alpha_row[r] = alpha;
      }
    }
    __syncthreads();
#pragma unroll
    for (int mi = 0; mi < 2; ++mi) {
      const float a_lo = alpha_row[16 * mi + g], a_hi = alpha_row[16 * mi + g + 8];
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        o[mi][nt][0] *= a_lo, o[mi][nt][1] *= a_lo, o[mi][nt][2] *= a_hi, o[mi][nt][3] *= a_hi;
      }
    }
#pragma unroll
    for (int k0 = 0; k0 < kKeys; k0 += 16) {
      uint32_t a[2][4];
#pragma unroll
      for (int mi = 0; mi < 2; ++mi) {
        const bf16* p_lo = ps + (16 * mi + g) * kPLd + k0 + 2 * tq;
        a[mi][0] = Load32(p_lo), a[mi][1] = Load32(p_lo + 8 * kPLd);
        a[mi][2] = Load32(p_lo + 8), a[mi][3] = Load32(p_lo + 8 * kPLd + 8);
      }
      const bf16* v0 = ks + (k0 + 2 * tq) * ld + 64 * warp + g;
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        const bf16* v = v0 + 8 * nt;
        const uint32_t b0 = Pack(v, v + ld), b1 = Pack(v + 8 * ld, v + 9 * ld);
        Mma16x8x16(o[0][nt], a[0], b0, b1);
        Mma16x8x16(o[1][nt], a[1], b0, b1);
      }
    }
  }
  __syncthreads();  // m_row and l_row final (also when this partition had no tile)

  const int entry_floats = kRank + 2;
  auto entry = [&](int h) {
    return args.partial + ((t * heads + h) * args.partitions + blockIdx.y) * entry_floats;
  };
  if (threadIdx.x < heads) {
    float* e = entry(threadIdx.x);
    e[0] = m_row[threadIdx.x];
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
      for (int nt = 0; nt < 8; ++nt) {
        const int col = 64 * warp + 8 * nt + 2 * tq;
        e[col] = o[mi][nt][2 * half];
        e[col + 1] = o[mi][nt][2 * half + 1];
      }
    }
}

size_t AlignUp(size_t bytes) { return (bytes + 255) / 256 * 256; }

}  // namespace

bool MlaAbsorbedTcSupports(const MlaParams& params) {
  return params.num_heads >= 1 && params.num_heads <= kHeadRows && params.kv_lora_rank == kRank &&
         params.qk_rope_dim % 16 == 0 && params.qk_nope_dim <= 256;
}

// About four blocks per SM in all (two resident at a time), every partition keeping >= 4 tiles.
int64_t MlaAbsorbedTcPartitions(int64_t rows, int64_t max_keys) {
  const int64_t target = 4 * static_cast<int64_t>(SmCount());
  const int64_t tiles = (max_keys + kKeys - 1) / kKeys;
  int64_t partitions = (target + rows - 1) / rows;
  if (partitions > tiles / 4) partitions = tiles / 4;
  if (partitions > 256) partitions = 256;
  return partitions < 1 ? 1 : partitions;
}

size_t MlaAbsorbedTcScratchBytes(const MlaParams& params, int64_t rows, int64_t max_keys) {
  const int64_t partitions = MlaAbsorbedTcPartitions(rows, max_keys);
  return AlignUp(sizeof(float) * rows * params.num_heads * partitions * (kRank + 2)) +
         AlignUp(sizeof(bf16) * rows * params.num_heads * (kRank + params.qk_rope_dim));
}

int LaunchMlaAbsorbedTc(const MlaParams& params, TensorView q, TensorView kv_b, const MlaSequence* seqs,
                        int64_t num_seqs, int64_t max_keys, void* scratch, float** partial,
                        int64_t* partitions, Stream stream) {
  if (!MlaAbsorbedTcSupports(params) || scratch == nullptr) return static_cast<int>(cudaErrorInvalidValue);
  const int64_t rows = q.rows;
  const int64_t p = MlaAbsorbedTcPartitions(rows, max_keys);
  const int heads = static_cast<int>(params.num_heads), rope = static_cast<int>(params.qk_rope_dim);
  const int dot = kRank + rope;
  auto* base = static_cast<char*>(scratch);
  *partial = reinterpret_cast<float*>(base);
  *partitions = p;
  auto* q_abs = reinterpret_cast<bf16*>(base + AlignUp(sizeof(float) * rows * heads * p * (kRank + 2)));
  if (rows > 65535 * int64_t{kAbsorbRows} || !FitsGridX(rows)) return static_cast<int>(cudaErrorInvalidValue);
  auto s = static_cast<cudaStream_t>(stream);
  const int absorb_error = LaunchAfterPrior(
      MlaAbsorbQKernel, dim3(heads, kRank / kAbsorbCols, static_cast<unsigned>((rows + kAbsorbRows - 1) / kAbsorbRows)),
      dim3(kThreads), 0, s, q, kv_b, heads, static_cast<int>(params.qk_nope_dim), rope,
      static_cast<int>(params.v_dim), q_abs);
  if (absorb_error != 0) return absorb_error;
  const size_t smem = AttentionSmemBytes(dot);
  const cudaError_t error = cudaFuncSetAttribute(MlaLatentAttentionKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(smem));
  if (error != cudaSuccess) return static_cast<int>(error);
  AttentionArgs args{seqs, num_seqs, q_abs, heads, rope, params.scale, static_cast<int>(p), *partial};
  return LaunchAfterPrior(MlaLatentAttentionKernel, dim3(static_cast<unsigned>(rows), static_cast<unsigned>(p)),
                          dim3(kThreads), smem, s, args);
}

}  // namespace deltaserve::kernels::cuda
