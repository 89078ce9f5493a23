// y = x · wᵀ for a few rows of x (decode: one row per sequence), where reading w is the whole
// cost: every weight element (bf16, f16 or fp32) is loaded once with 16-byte loads and multiplied
// on CUDA cores in fp32 against fp32 activations (no rounding of x, no conversion launch, no
// cuBLAS call). Warps own weight rows (output columns) of one product, alone or sharing a row's
// reduction. One launch may run several independent products of the same row count (a layer's
// projections of one input), which saves launches and fills the GPU where one small product
// would not.
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
constexpr int kRowsPerWarp = 2;   // weight rows (output columns) per warp
// Rows of a launch that fill the GPU with groups of one warp (16 rows per block on 132 SMs: H100
// SXM, H200), by rows of x: a tuning table, not a limit. Measured on an H200 (cuda_matmul_bench, a
// token's products as launched, 2, 3, 4, 6, 8 and 16 blocks per SM): 8 was fastest at 1 and 2
// rows, 2 at 3 and 4 rows (76-78 registers: 3 resident blocks per SM, against 4 below), and 5 to 8
// rows were within 2% of 8.
constexpr int64_t FullWaveRows(int64_t x_rows) {
  const int64_t blocks_per_sm = x_rows == 3 || x_rows == 4 ? 2 : 8;
  return 16 * 132 * blocks_per_sm;
}
constexpr int kSlice = 32 * 8;    // reduction elements per warp step: 8 per lane

// The products of one launch and the first block of each (first_block[count] = the grid size).
struct SkinnyProductTable {
  SkinnyProduct products[kSkinnyMatMulMaxProducts];
  unsigned first_block[kSkinnyMatMulMaxProducts + 1];
  int split[kSkinnyMatMulMaxProducts];  // warps per row group: 1, 2, 4 or 8
  int count;
};

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

// 8 weights at p as floats: one 16-byte load of bf16 or f16, two of fp32.
__device__ __forceinline__ void Load8Weights(const uint16_t* p, DType dtype, float (&out)[8]) {
  Widen8(__ldg(reinterpret_cast<const uint4*>(p)), dtype, out);
}
__device__ __forceinline__ void Load8Weights(const float* p, DType, float (&out)[8]) {
  const float4 a = __ldg(reinterpret_cast<const float4*>(p)), b = __ldg(reinterpret_cast<const float4*>(p) + 1);
  out[0] = a.x, out[1] = a.y, out[2] = a.z, out[3] = a.w, out[4] = b.x, out[5] = b.y, out[6] = b.z, out[7] = b.w;
}

// acc[r][t] += Σ_i wv[r][i] · x[t, k + i] for i = 0 .. 7, in that order.
template <int T>
__device__ __forceinline__ void AccumulateSlice(const TensorView& x, int64_t k, const float (&wv)[kRowsPerWarp][8],
                                                float (&acc)[kRowsPerWarp][T]) {
#pragma unroll
  for (int t = 0; t < T; ++t) {
    const float4* xr = reinterpret_cast<const float4*>(static_cast<const float*>(x.data) + t * x.row_stride + k);
    const float4 a = __ldg(xr), b = __ldg(xr + 1);
    const float xv[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[r][t] = fmaf(wv[r][i], xv[i], acc[r][t]);
  }
}

// acc[r][t] += Σ_k w[n0 + r, k] · x[t, k] over k = k0, k0 + 1 .. k0 + 7, k0 + step, ...
template <int T, typename Element>
__device__ __forceinline__ void DotRows(const TensorView& x, const TensorView& w, int64_t n0, int64_t k0,
                                        int64_t step, float (&acc)[kRowsPerWarp][T]) {
  const Element* rows[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    rows[r] = static_cast<const Element*>(w.data) + (n0 + r < w.rows ? n0 + r : 0) * w.row_stride;
  }
#pragma unroll 4
  for (int64_t k = k0; k < w.cols; k += step) {
    float wv[kRowsPerWarp][8];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) Load8Weights(rows[r] + k, w.dtype, wv[r]);
    AccumulateSlice<T>(x, k, wv, acc);
  }
}

// Slices of a warp's weight rows (16-byte loads of bf16 or f16) loaded into registers before the
// wait for the kernel ahead, by rows of x: the first wave's weights then arrive while that kernel
// finishes, ready for the sums once it has. Measured on an H200 (cuda_matmul_bench, a token's
// products as launched at 1 row): 0, 2, 4, 6, 8 slices took 1.223, 1.172, 1.164, 1.326, 1.474 ms
// (6 and 8: 75 and 95 registers, fewer resident blocks); at 2 rows 4 slices were 5% slower.
template <int T>
constexpr int EarlySlices() {
  return T == 1 ? 4 : 0;
}

template <int kEarly>
__device__ __forceinline__ void LoadEarlySlices(const TensorView& w, int64_t n0, int64_t k0, int64_t step,
                                                uint4 (&raw)[kEarly][kRowsPerWarp]) {
#pragma unroll
  for (int i = 0; i < kEarly; ++i) {
    const int64_t k = k0 + i * step;
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const auto* row = static_cast<const uint16_t*>(w.data) + (n0 + r < w.rows ? n0 + r : 0) * w.row_stride;
      raw[i][r] = k < w.cols ? __ldg(reinterpret_cast<const uint4*>(row + k)) : make_uint4(0u, 0u, 0u, 0u);
    }
  }
}

// acc[r][t] += the early slices' products, in the order DotRows would have taken them.
template <int T, int kEarly>
__device__ __forceinline__ void DotEarlySlices(const TensorView& x, DType dtype, int64_t k0, int64_t step,
                                               const uint4 (&raw)[kEarly][kRowsPerWarp],
                                               int64_t cols, float (&acc)[kRowsPerWarp][T]) {
#pragma unroll
  for (int i = 0; i < kEarly; ++i) {
    const int64_t k = k0 + i * step;
    if (k >= cols) break;
    float wv[kRowsPerWarp][8];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) Widen8(raw[i][r], dtype, wv[r]);
    AccumulateSlice<T>(x, k, wv, acc);
  }
}

// A warp's sums over its rows' slices k0, k0 + step, ... (as DotRows, in its order) where the
// first EarlySlices<T>() slices of 16-bit weights are loaded into registers before the wait for
// the kernel ahead; the rest are asked into L2 meanwhile. Every row count takes this one path:
// ptxas then gives 62 registers at 2 rows (4 blocks per SM; a second copy without the early
// slices took 66, 3 blocks, and the 2-row token of products 1.41 against 1.35 ms on an H200) and
// 90 at 7 (2 blocks; the copy took 80, and the 7-row token 2.88 against 3.13 ms, a row count past
// the default skinny_matmul_max_rows).
template <int T>
__device__ __forceinline__ void SumRowsLoadedEarly(const TensorView& x, const TensorView& w, int64_t n0, int64_t k0,
                                                   int64_t step, float (&acc)[kRowsPerWarp][T]) {
  constexpr int kEarly = EarlySlices<T>();
  const bool early = kEarly > 0 && w.dtype != DType::kF32 && n0 < w.rows;
  uint4 raw[kEarly > 0 ? kEarly : 1][kRowsPerWarp];
  if constexpr (kEarly > 0) {
    if (early) LoadEarlySlices<kEarly>(w, n0, k0, step, raw);
  }
  const int64_t k_rest = early ? k0 + kEarly * step : k0;
  if (n0 < w.rows) {
    const int element = w.dtype == DType::kF32 ? 4 : 2;
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      if (n0 + r >= w.rows) break;
      const char* row = static_cast<const char*>(w.data) + (n0 + r) * w.row_stride * element;
      for (int64_t k = k_rest; k < w.cols; k += step) asm volatile("prefetch.global.L2 [%0];" ::"l"(row + k * element));
    }
  }
  WaitForPriorKernels();
  if (n0 >= w.rows) return;
  if (w.dtype == DType::kF32) {
    DotRows<T, float>(x, w, n0, k0, step, acc);
    return;
  }
  if constexpr (kEarly > 0) {
    if (early) DotEarlySlices<T, kEarly>(x, w.dtype, k0, step, raw, w.cols, acc);
  }
  DotRows<T, uint16_t>(x, w, n0, k_rest, step, acc);
}

// Block b computes output columns of the product whose blocks hold b. Its warps form groups of
// `split` (the product's): each group owns kRowsPerWarp weight rows, each warp of a group every
// split-th 256-element slice of them (lanes: 8 elements per 16-byte load, several loads in
// flight); a group's warps meet in shared memory. Long rows and few rows take larger groups
// (more blocks, shorter loops); many short rows take groups of one (no barrier, no reduction).
template <int T>
__global__ void __launch_bounds__(kThreads) SkinnyMatMulKernel(SkinnyProductTable table) {
  __shared__ float partial[kWarps][kRowsPerWarp][T];
  AllowDependentLaunch();
  // Constant indices only: a parameter indexed at run time would be copied to local memory.
  SkinnyProduct product = table.products[0];
  unsigned first = 0;
  int split = table.split[0];
#pragma unroll
  for (int i = 1; i < kSkinnyMatMulMaxProducts; ++i) {
    if (i < table.count && blockIdx.x >= table.first_block[i]) {
      product = table.products[i], first = table.first_block[i], split = table.split[i];
    }
  }
  const TensorView& x = product.x;
  const TensorView& w = product.w;
  const TensorView& y = product.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group = warp / split, part = warp % split;
  const int64_t n0 = (static_cast<int64_t>(blockIdx.x - first) * (kWarps / split) + group) * kRowsPerWarp;
  // Launched as programmatic, the block may run before the previous kernel is done: it asks for
  // its weight rows (never written by kernels) meanwhile, and waits before touching x and y.
  float acc[kRowsPerWarp][T] = {};
  SumRowsLoadedEarly<T>(x, w, n0, (part * 32 + lane) * 8, split * kSlice, acc);
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
    for (int t = 0; t < T; ++t) acc[r][t] = WarpSum(acc[r][t]);
  if (split == 1) {
    if (lane == 0) {
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
        for (int t = 0; t < T; ++t) {
          if (n0 + r < w.rows) StoreAt(y, t, n0 + r, acc[r][t]);
        }
    }
    return;
  }
  if (lane == 0) {
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
      for (int t = 0; t < T; ++t) partial[warp][r][t] = acc[r][t];
  }
  __syncthreads();
  if (part == 0 && lane < kRowsPerWarp * T) {
    const int r = lane / T, t = lane % T;
    if (n0 + r < w.rows) {
      float sum = 0.0f;
      for (int v = 0; v < split; ++v) sum += partial[warp + v][r][t];
      StoreAt(y, t, n0 + r, sum);
    }
  }
}

}  // namespace

bool SkinnyMatMulSupports(TensorView x, TensorView w) {
  return x.rows >= 1 && x.rows <= kSkinnyMatMulMaxRows && x.dtype == DType::kF32 &&
         (w.dtype == DType::kBF16 || w.dtype == DType::kF16 || w.dtype == DType::kF32) && w.cols == x.cols &&
         w.cols % 8 == 0 &&
         w.row_stride % 8 == 0 && x.row_stride % 4 == 0 && IsAligned(w.data, 16) && IsAligned(x.data, 16);
}

int LaunchSkinnyMatMuls(const SkinnyProduct* products, int count, Stream stream, bool programmatic) {
  if (count < 1 || count > kSkinnyMatMulMaxProducts) return static_cast<int>(cudaErrorInvalidValue);
  SkinnyProductTable table{};
  // Groups of one warp per row group where the launch's rows alone give a full wave of blocks;
  // larger groups (more blocks) otherwise, up to one warp per 256-element slice of a row.
  int64_t total_rows = 0;
  for (int i = 0; i < count; ++i) total_rows += products[i].w.rows;
  int wanted = 1;
  const int64_t full_wave_rows = FullWaveRows(products[0].x.rows);
  while (wanted < kWarps && total_rows * wanted < full_wave_rows) wanted *= 2;
  int64_t blocks = 0;
  for (int i = 0; i < count; ++i) {
    const SkinnyProduct& p = products[i];
    if (!SkinnyMatMulSupports(p.x, p.w) || p.x.rows != products[0].x.rows || !IsActivationDType(p.y.dtype) ||
        p.y.rows != p.x.rows || p.y.cols != p.w.rows) {
      return static_cast<int>(cudaErrorInvalidValue);
    }
    table.products[i] = p;
    int split = wanted;
    while (split > 1 && static_cast<int64_t>(split / 2) * kSlice >= p.w.cols) split /= 2;
    const int64_t block_rows = (kWarps / split) * kRowsPerWarp;
    table.split[i] = split;
    table.first_block[i] = static_cast<unsigned>(blocks);
    blocks += (p.w.rows + block_rows - 1) / block_rows;
    if (!FitsGridX(blocks)) return static_cast<int>(cudaErrorInvalidValue);
  }
  table.first_block[count] = static_cast<unsigned>(blocks);
  table.count = count;
  if (blocks == 0) return 0;
  const auto launch = [&](auto kernel) {
    return LaunchMaybeAfterPrior(programmatic, kernel, dim3(static_cast<unsigned>(blocks)), dim3(kThreads), 0, stream,
                                 table);
  };
  switch (products[0].x.rows) {
    case 1: return launch(SkinnyMatMulKernel<1>);
    case 2: return launch(SkinnyMatMulKernel<2>);
    case 3: return launch(SkinnyMatMulKernel<3>);
    case 4: return launch(SkinnyMatMulKernel<4>);
    case 5: return launch(SkinnyMatMulKernel<5>);
    case 6: return launch(SkinnyMatMulKernel<6>);
    case 7: return launch(SkinnyMatMulKernel<7>);
    default: return launch(SkinnyMatMulKernel<8>);
  }
}

int LaunchSkinnyMatMul(TensorView x, TensorView w, TensorView y, Stream stream, bool programmatic) {
  const SkinnyProduct product{x, w, y};
  return LaunchSkinnyMatMuls(&product, 1, stream, programmatic);
}

}  // namespace deltaserve::kernels::cuda
