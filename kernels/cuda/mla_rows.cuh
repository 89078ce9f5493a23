// Which MLA sequence holds each packed row, latent cache rows read as floats, and new rows
// appended: shared by the MLA kernels (mla_attention.cu, mla_absorbed_tc.cu).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/device_utils.cuh"
#include "kernels/ops.h"

namespace deltaserve::kernels::cuda {

// row_seq[r] = index of the sequence whose rows hold packed row lo + r (only sequences of
// `form`, any form when form < 0), or -1; r < n <= blockDim.x. Call with the whole block; ends
// with a barrier. Descriptors are scanned in parallel, one per thread.
__device__ inline void MapRows(const MlaSequence* seqs, int64_t num_seqs, int form, int64_t lo,
                               int n, int* row_seq) {
  for (int r = threadIdx.x; r < n; r += blockDim.x) row_seq[r] = -1;
  __syncthreads();
  for (int64_t i = threadIdx.x; i < num_seqs; i += blockDim.x) {
    const SequenceRows rows = seqs[i].rows;
    if (form >= 0 && static_cast<int>(seqs[i].form) != form) continue;
    const int64_t a = rows.begin > lo ? rows.begin : lo;
    const int64_t end = rows.begin + rows.length, b = end < lo + n ? end : lo + n;
    for (int64_t t = a; t < b; ++t) row_seq[t - lo] = static_cast<int>(i);
  }
  __syncthreads();
}

__device__ __forceinline__ float ToFloat(float v) { return v; }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ void Put(float* p, float v) { *p = v; }
__device__ __forceinline__ void Put(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }

// One warp copies `width` elements from src to dst, element e from src[src_at(e)] to
// dst[dst_at(e)] (converted between fp32 and bf16 where they differ): loads first, 8 per lane in
// flight (dst and src could alias as far as the compiler knows).
template <typename Src, typename Dst, typename SrcAt, typename DstAt>
__device__ __forceinline__ void WarpCopyRow(const Src* src, SrcAt src_at, Dst* dst, DstAt dst_at, int64_t width) {
  constexpr int kInFlight = 8;
  for (int64_t c0 = threadIdx.x & 31; c0 < width; c0 += 32 * kInFlight) {
    float v[kInFlight];
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) v[u] = c0 + 32 * u < width ? ToFloat(src[src_at(c0 + 32 * u)]) : 0.0f;
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
      if (c0 + 32 * u < width) Put(dst + dst_at(c0 + 32 * u), v[u]);
    }
  }
}

struct IdentityIndex {
  __device__ __forceinline__ int64_t operator()(int64_t e) const { return e; }
};

// One warp appends packed row t of `latent` (F32, a row of seq's new rows) to seq's cache after
// its cached rows (rounded to bf16 in BF16 pages).
__device__ __forceinline__ void AppendLatentRow(const TensorView& latent, const MlaSequence& seq, int64_t t) {
  const int64_t width = latent.cols, row = seq.num_cached + (t - seq.rows.begin);
  if (seq.cache.dtype == DType::kBF16) {
    const LatentRowPlacement place = LatentRowPlacement::Place(DType::kBF16, width, seq.cache.page_rows, row);
    const auto at = [&](int64_t e) { return place.Offset(e); };
    WarpCopyRow(RowF32(latent, t), IdentityIndex{}, seq.cache.PageOf<__nv_bfloat16>(row), at, width);
  } else {
    WarpCopyRow(RowF32(latent, t), IdentityIndex{}, seq.cache.Row(row, width), IdentityIndex{}, width);
  }
}

// A latent cache row of F32 or BF16 pages (LatentPages::dtype), element c as a float wherever
// its page places it (LatentRowPlacement).
struct LatentRowReader {
  const void* page;
  DType dtype;
  LatentRowPlacement place;

  __device__ __forceinline__ float operator[](int64_t c) const {
    if (dtype != DType::kBF16) return static_cast<const float*>(page)[place.Offset(c)];
    return __bfloat162float(static_cast<const __nv_bfloat16*>(page)[place.Offset(c)]);
  }
};

__device__ __forceinline__ LatentRowReader LatentRow(const LatentPages& cache, int64_t row, int64_t width) {
  return {cache.PageOf<const void>(row), cache.dtype,
          LatentRowPlacement::Place(cache.dtype, width, cache.page_rows, row)};
}

}  // namespace deltaserve::kernels::cuda
