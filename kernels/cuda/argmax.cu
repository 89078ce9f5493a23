// Greedy sampling on the device (Backend::ArgmaxRows): one block per row scans it once, each
// thread keeping its best (value, index) over ascending indices, then the block keeps the larger
// value, the lower index on ties. A NaN or +inf anywhere, or a row of -inf only, gives -1.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/launchers.h"

namespace deltaserve::kernels::cuda {
namespace {

constexpr int kThreads = 1024;

struct Best {
  float value;
  int64_t index;  // -1: no finite value seen
};

__device__ __forceinline__ Best Better(Best a, Best b) {
  if (b.index < 0) return a;
  if (a.index < 0) return b;
  return b.value > a.value || (b.value == a.value && b.index < a.index) ? b : a;
}

__device__ __forceinline__ void Consider(float v, int64_t i, Best& best, bool& bad) {
  if (isnan(v) || v == INFINITY) {
    bad = true;
  } else if (v != -INFINITY && (best.index < 0 || v > best.value)) {
    best = {v, i};
  }
}

__global__ void __launch_bounds__(kThreads) ArgmaxRowsKernel(TensorView x, TensorView ids, bool vec4) {
  const int64_t r = blockIdx.x;
  const float* row = static_cast<const float*>(x.data) + r * x.row_stride;
  Best best{0.0f, -1};
  bool bad = false;
  if (vec4) {
    const auto* row4 = reinterpret_cast<const float4*>(row);
    for (int64_t q = threadIdx.x; q < x.cols / 4; q += kThreads) {
      const float4 v = __ldg(row4 + q);
      Consider(v.x, 4 * q, best, bad);
      Consider(v.y, 4 * q + 1, best, bad);
      Consider(v.z, 4 * q + 2, best, bad);
      Consider(v.w, 4 * q + 3, best, bad);
    }
  } else {
    for (int64_t i = threadIdx.x; i < x.cols; i += kThreads) Consider(__ldg(row + i), i, best, bad);
  }
  for (int offset = 16; offset > 0; offset >>= 1) {
    const Best other{__shfl_xor_sync(0xffffffffu, best.value, offset),
                     __shfl_xor_sync(0xffffffffu, best.index, offset)};
    best = Better(best, other);
  }
  __shared__ Best warps[kThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warps[warp] = best;
  const bool any_bad = __syncthreads_or(bad);
  if (threadIdx.x == 0) {
    Best block = warps[0];
    for (int w = 1; w < kThreads / 32; ++w) block = Better(block, warps[w]);
    static_cast<int32_t*>(ids.data)[r * ids.row_stride] = any_bad ? -1 : static_cast<int32_t>(block.index);
  }
}

}  // namespace

int LaunchArgmaxRows(TensorView x, TensorView ids, Stream stream) {
  if (x.dtype != DType::kF32 || ids.dtype != DType::kI32 || ids.rows != x.rows || ids.cols != 1 ||
      x.cols > 0x7fffffffLL) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (x.rows == 0) return 0;
  if (!FitsGridX(x.rows)) return static_cast<int>(cudaErrorInvalidValue);
  const bool vec4 = x.cols % 4 == 0 && x.row_stride % 4 == 0 && reinterpret_cast<uintptr_t>(x.data) % 16 == 0;
  ArgmaxRowsKernel<<<static_cast<unsigned>(x.rows), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(x, ids, vec4);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace deltaserve::kernels::cuda
