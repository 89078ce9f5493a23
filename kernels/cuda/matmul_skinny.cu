// y = x · wᵀ for a few rows of x (decode: one row per sequence), where reading w is the whole
// cost: every weight element is loaded once with 16-byte loads and multiplied on CUDA cores in
// fp32 against fp32 activations (no rounding of x, no conversion launch, no cuBLAS call). A block
// owns kRows output columns; its warps take interleaved 256-element slices of the reduction and
// meet in shared memory.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/launchers.h"

namespace deltaserve::kernels::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kRows = 4;          // weight rows (output columns) per block
constexpr int kSlice = 32 * 8;    // reduction elements per warp step: 8 per lane

__device__ __forceinline__ void Widen8(const uint4& raw, DType dtype, float (&out)[8]) {
  if (dtype == DType::kBF16) {
    const auto* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 f = __bfloat1622float2(h[i]);
      out[2 * i] = f.x, out[2 * i + 1] = f.y;
    }
  } else {
    const auto* h = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 f = __half22float2(h[i]);
      out[2 * i] = f.x, out[2 * i + 1] = f.y;
    }
  }
}

template <int T>
__global__ void __launch_bounds__(kThreads) SkinnyMatMulKernel(TensorView x, TensorView w, TensorView y) {
  __shared__ float partial[kWarps][kRows][T];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const int64_t k_total = w.cols;
  const auto* w_base = static_cast<const uint16_t*>(w.data);
  float acc[kRows][T] = {};
  for (int64_t k = static_cast<int64_t>(warp) * kSlice + lane * 8; k < k_total; k += kWarps * kSlice) {
    uint4 raw[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      raw[r] = n0 + r < w.rows ? __ldg(reinterpret_cast<const uint4*>(w_base + (n0 + r) * w.row_stride + k))
                               : make_uint4(0, 0, 0, 0);
    }
    float wv[kRows][8];
#pragma unroll
    for (int r = 0; r < kRows; ++r) Widen8(raw[r], w.dtype, wv[r]);
#pragma unroll
    for (int t = 0; t < T; ++t) {
      const float4* xr = reinterpret_cast<const float4*>(static_cast<const float*>(x.data) + t * x.row_stride + k);
      const float4 a = __ldg(xr), b = __ldg(xr + 1);
      const float xv[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
      for (int r = 0; r < kRows; ++r)
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[r][t] = fmaf(wv[r][i], xv[i], acc[r][t]);
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int t = 0; t < T; ++t) {
      const float sum = WarpSum(acc[r][t]);
      if (lane == 0) partial[warp][r][t] = sum;
    }
  __syncthreads();
  if (threadIdx.x < kRows * T) {
    const int r = threadIdx.x / T, t = threadIdx.x % T;
    if (n0 + r < w.rows) {
      float sum = 0.0f;
#pragma unroll
      for (int v = 0; v < kWarps; ++v) sum += partial[v][r][t];
      RowF32(y, t)[n0 + r] = sum;
    }
  }
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

bool SkinnyMatMulSupports(TensorView x, TensorView w) {
  return x.rows >= 1 && x.rows <= kSkinnyMatMulMaxRows && x.dtype == DType::kF32 &&
         (w.dtype == DType::kBF16 || w.dtype == DType::kF16) && w.cols == x.cols && w.cols % 8 == 0 &&
         w.row_stride % 8 == 0 && x.row_stride % 4 == 0 && Aligned16(w.data) && Aligned16(x.data);
}

int LaunchSkinnyMatMul(TensorView x, TensorView w, TensorView y, Stream stream) {
  if (!SkinnyMatMulSupports(x, w) || y.dtype != DType::kF32 || y.rows != x.rows || y.cols != w.rows) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (w.rows == 0) return 0;
  const int64_t blocks = (w.rows + kRows - 1) / kRows;
  if (!FitsGridX(blocks)) return static_cast<int>(cudaErrorInvalidValue);
  auto s = static_cast<cudaStream_t>(stream);
  const dim3 grid(static_cast<unsigned>(blocks));
  switch (x.rows) {
    case 1: SkinnyMatMulKernel<1><<<grid, kThreads, 0, s>>>(x, w, y); break;
    case 2: SkinnyMatMulKernel<2><<<grid, kThreads, 0, s>>>(x, w, y); break;
    case 3: SkinnyMatMulKernel<3><<<grid, kThreads, 0, s>>>(x, w, y); break;
    case 4: SkinnyMatMulKernel<4><<<grid, kThreads, 0, s>>>(x, w, y); break;
    case 5: SkinnyMatMulKernel<5><<<grid, kThreads, 0, s>>>(x, w, y); break;
    case 6: SkinnyMatMulKernel<6><<<grid, kThreads, 0, s>>>(x, w, y); break;
    case 7: SkinnyMatMulKernel<7><<<grid, kThreads, 0, s>>>(x, w, y); break;
    default: SkinnyMatMulKernel<8><<<grid, kThreads, 0, s>>>(x, w, y); break;
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace deltaserve::kernels::cuda
