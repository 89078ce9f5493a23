// Which MLA sequence holds each packed row, and latent cache rows read as floats: shared by the
// MLA kernels (mla_attention.cu, mla_absorbed_tc.cu, mla_expanded_tc.cu).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

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
