// One channel's short conv for one decode token, shared by the fused KDA decode step's kernels
// (kda_decode_step.cu, kda_decode_step_split.cu).
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/launchers.h"

namespace deltaserve::kernels::cuda {

// One channel's short conv for one decode token (kernel ≤ kMaxDecodeConvKernel): the causal conv
// + SiLU, then the [kernel - 1, channels] tail (oldest first) advanced. Weight [channels,
// kernel], column `history` (= kernel - 1) the current token's.
struct DecodeConv {
  float x = 0;
  float weight[kMaxDecodeConvKernel] = {};
  float tail[kMaxDecodeConvKernel - 1] = {};

  // One 8-byte load for the model's form (4 bf16 taps, aligned), element loads otherwise.
  __device__ __forceinline__ void LoadWeights(const TensorView& w, int64_t c, int history) {
    static_assert(kMaxDecodeConvKernel == 4, "four bf16 taps in 8 bytes");
    const auto* row = static_cast<const __nv_bfloat16*>(w.data) + c * w.row_stride;
    if (w.dtype == DType::kBF16 && history == 3 && reinterpret_cast<uintptr_t>(row) % 8 == 0) {
      const uint2 raw = __ldg(reinterpret_cast<const uint2*>(row));
      const float2 lo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.x));
      const float2 hi = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.y));
      weight[0] = lo.x, weight[1] = lo.y, weight[2] = hi.x, weight[3] = hi.y;
      return;
    }
#pragma unroll
    for (int i = 0; i < kMaxDecodeConvKernel; ++i) {
      if (i <= history) weight[i] = LoadAt(w, c, i);
    }
  }
  __device__ __forceinline__ void LoadInputs(float input, const float* tails, int64_t c, int64_t channels,
                                             int history) {
    x = input;
#pragma unroll
    for (int i = 0; i + 1 < kMaxDecodeConvKernel; ++i) {
      if (i < history) tail[i] = tails[i * channels + c];
    }
  }
  __device__ __forceinline__ float Output(int history) const {
    float acc = 0.0f;
#pragma unroll
    for (int i = 0; i + 1 < kMaxDecodeConvKernel; ++i) {
      if (i < history) acc += weight[i] * tail[i];
    }
#pragma unroll
    for (int i = 0; i < kMaxDecodeConvKernel; ++i) {
      if (i == history) acc += weight[i] * x;
    }
    return SiluF(acc);
  }
  __device__ __forceinline__ void Advance(float* tails, int64_t c, int64_t channels, int history) const {
#pragma unroll
    for (int i = 0; i + 1 < kMaxDecodeConvKernel; ++i) {
      if (i + 1 < history) tails[i * channels + c] = tail[i + 1];
      if (i + 1 == history) tails[i * channels + c] = x;
    }
  }
};

}  // namespace deltaserve::kernels::cuda
