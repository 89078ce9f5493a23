// The online softmax steps of the expanded MLA attention kernels
// (mla_expanded_tc.cu on mma.sync, mla_expanded_wgmma.cu on warpgroup products): both hold a
// lane's scores in the mma.sync accumulator layout, two query rows per lane.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/mma_tiles.cuh"

namespace deltaserve::kernels::cuda {

// The scores of one tile of kKeys keys from key j0, scaled into the log2 domain with the causal
// mask (key <= pos[half] of the lane's row half), then the rows' new maxima m, the factor alpha
// for what was accumulated before, the probabilities (in place) and the running sums l. Element
// i of 16-key group kt is s[8 kt + i] (AccRow, AccCol). kMasked false: a tile whose keys all
// precede every row's position, which needs no mask (most tiles of a long prefill).
template <int kKeys, bool kMasked = true>
__device__ __forceinline__ void OnlineSoftmaxTile(float (&s)[kKeys / 2], int64_t j0, const int64_t (&pos)[2],
                                                  float scale_log2, int lane, float (&m)[2], float (&l)[2],
                                                  float (&alpha)[2]) {
  float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
  for (int kt = 0; kt < kKeys / 16; ++kt)
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int half = (i >> 1) & 1;
      float& x = s[8 * kt + i];
      if constexpr (kMasked) {
        const int64_t key = j0 + 16 * kt + AccCol(i, lane);
        x = key <= pos[half] ? x * scale_log2 : -INFINITY;
      } else {
        x *= scale_log2;
      }
      tile_max[half] = fmaxf(tile_max[half], x);
    }
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float mx = tile_max[half];
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float m_new = fmaxf(m[half], mx);
    alpha[half] = m_new == -INFINITY ? 1.0f : exp2f(m[half] - m_new);
    m[half] = m_new;
  }
  float sum[2] = {0.0f, 0.0f};
#pragma unroll
  for (int i = 0; i < kKeys / 2; ++i) {
    const int half = (i >> 1) & 1;
    const float e = kMasked && s[i] == -INFINITY ? 0.0f : exp2f(s[i] - m[half]);
    s[i] = e;
    sum[half] += e;
  }
#pragma unroll
  for (int half = 0; half < 2; ++half) l[half] = l[half] * alpha[half] + sum[half];
}

// Each row's running sum l over the quad of lanes that holds the row's keys (lanes 4g .. 4g + 3).
__device__ __forceinline__ void SumRowsOverQuad(float (&l)[2]) {
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    l[half] += __shfl_xor_sync(0xffffffffu, l[half], 1);
    l[half] += __shfl_xor_sync(0xffffffffu, l[half], 2);
  }
}

}  // namespace deltaserve::kernels::cuda
