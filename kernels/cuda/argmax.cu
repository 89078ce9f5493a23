// Greedy sampling on the device (Backend::ArgmaxRows): a cluster of kSplit blocks per row, each
// scanning one kSplit-th of it once (a whole vocabulary row on one SM took ~23 µs), each thread
// keeping its best (value, index) over ascending indices; then each block, and the cluster's first
// block over the blocks' results, keeps the larger value, the lower index on ties. A NaN or +inf
// anywhere, or a row of -inf only, gives -1.
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/launchers.h"

namespace deltaserve::kernels::cuda {
namespace {

namespace cg = cooperative_groups;

constexpr int kThreads = 1024;
constexpr int kSplit = 8;  // blocks per row: the portable cluster size

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

__global__ void __cluster_dims__(kSplit, 1, 1) __launch_bounds__(kThreads)
    ArgmaxRowsKernel(TensorView x, TensorView ids, bool vec4) {
  FollowPriorKernels();
  const int64_t r = blockIdx.x / kSplit;
  const int part = static_cast<int>(blockIdx.x % kSplit);  // the block's rank in its cluster
  const float* row = static_cast<const float*>(x.data) + r * x.row_stride;
  Best best{0.0f, -1};
  bool bad = false;
  if (vec4) {
    const auto* row4 = reinterpret_cast<const float4*>(row);
    const int64_t quads = x.cols / 4, per_part = (quads + kSplit - 1) / kSplit;
    const int64_t lo = part * per_part, hi = min(quads, lo + per_part);
#pragma unroll 4
    for (int64_t q = lo + threadIdx.x; q < hi; q += kThreads) {
      const float4 v = __ldg(row4 + q);
      Consider(v.x, 4 * q, best, bad);
      Consider(v.y, 4 * q + 1, best, bad);
      Consider(v.z, 4 * q + 2, best, bad);
      Consider(v.w, 4 * q + 3, best, bad);
    }
  } else {
    const int64_t per_part = (x.cols + kSplit - 1) / kSplit;
    const int64_t lo = part * per_part, hi = min(x.cols, lo + per_part);
    for (int64_t i = lo + threadIdx.x; i < hi; i += kThreads) Consider(__ldg(row + i), i, best, bad);
  }
  for (int offset = 16; offset > 0; offset >>= 1) {
    const Best other{__shfl_xor_sync(0xffffffffu, best.value, offset),
                     __shfl_xor_sync(0xffffffffu, best.index, offset)};
    best = Better(best, other);
  }
  __shared__ Best warps[kThreads / 32];
  __shared__ Best block_best;
  __shared__ bool block_bad;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warps[warp] = best;
  const bool any_bad = __syncthreads_or(bad);
  if (threadIdx.x == 0) {
    Best block = warps[0];
    for (int w = 1; w < kThreads / 32; ++w) block = Better(block, warps[w]);
    block_best = block;
    block_bad = any_bad;
  }
  cg::cluster_group cluster = cg::this_cluster();
  cluster.sync();  // every block's result is in its shared memory
  if (part == 0 && threadIdx.x == 0) {
    Best total{0.0f, -1};
    bool total_bad = false;
    for (int b = 0; b < kSplit; ++b) {  // ascending parts: ascending indices
      total = Better(total, *cluster.map_shared_rank(&block_best, b));
      total_bad = total_bad || *cluster.map_shared_rank(&block_bad, b);
    }
    static_cast<int32_t*>(ids.data)[r * ids.row_stride] = total_bad ? -1 : static_cast<int32_t>(total.index);
  }
  cluster.sync();  // no block leaves while the first still reads its result
}

}  // namespace

int LaunchArgmaxRows(TensorView x, TensorView ids, Stream stream) {
  if (x.dtype != DType::kF32 || ids.dtype != DType::kI32 || ids.rows != x.rows || ids.cols != 1 ||
      x.cols > 0x7fffffffLL) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (x.rows == 0) return 0;
  if (!FitsGridX(x.rows * kSplit)) return static_cast<int>(cudaErrorInvalidValue);
  const bool vec4 = x.cols % 4 == 0 && x.row_stride % 4 == 0 && reinterpret_cast<uintptr_t>(x.data) % 16 == 0;
  return LaunchAfterPrior(ArgmaxRowsKernel, dim3(static_cast<unsigned>(x.rows * kSplit)), dim3(kThreads), 0, stream,
                          x, ids, vec4);
}

}  // namespace deltaserve::kernels::cuda
