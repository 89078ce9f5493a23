// RMSNorm per row, and the KDA output's gated RMSNorm per head (rmsnorm * weight * sigmoid(gate)).
// fp32 sums of squares; every element is read and written by the same thread, so out may alias x.
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/launchers.h"

namespace deltaserve::kernels::cuda {
namespace {

constexpr int kInvalid = static_cast<int>(cudaErrorInvalidValue);

// 1 / sqrt(mean + eps) as the CPU computes it (the mean divided in double).
__device__ __forceinline__ float InvRms(float sum_squares, int64_t count, float eps) {
  const float mean = static_cast<float>(static_cast<double>(sum_squares) / static_cast<double>(count));
  return 1.0f / sqrtf(mean + eps);
}

// One block per row.
__global__ void RmsNormKernel(TensorView x, TensorView weight, float eps, TensorView out) {
  AllowDependentLaunch();
  __shared__ float scratch[32];
  const int64_t t = blockIdx.x;
  const float* in = RowF32(x, t);
  float* o = RowF32(out, t);
  float sum = 0.0f;
  for (int64_t c = threadIdx.x; c < x.cols; c += blockDim.x) sum += in[c] * in[c];
  const float inv_rms = InvRms(BlockSum(sum, scratch), x.cols, eps);
  for (int64_t c = threadIdx.x; c < x.cols; c += blockDim.x) {
    o[c] = LoadFlat(weight, c) * (in[c] * inv_rms);
  }
}

// RmsNormKernel after acc += x in the same pass: each thread sums the squares of the elements it
// has just added, in the order RmsNormKernel would, so the results are the same bits.
__global__ void AddRmsNormKernel(TensorView acc, TensorView x, TensorView weight, float eps, TensorView out) {
  AllowDependentLaunch();
  __shared__ float scratch[32];
  const int64_t t = blockIdx.x;
  float* a = RowF32(acc, t);
  const float* b = RowF32(x, t);
  float* o = RowF32(out, t);
  float sum = 0.0f;
  for (int64_t c = threadIdx.x; c < acc.cols; c += blockDim.x) {
    const float v = a[c] + b[c];
    a[c] = v;
    sum += v * v;
  }
  const float inv_rms = InvRms(BlockSum(sum, scratch), acc.cols, eps);
  for (int64_t c = threadIdx.x; c < acc.cols; c += blockDim.x) {
    o[c] = LoadFlat(weight, c) * (a[c] * inv_rms);
  }
}

// One block per row; each warp takes heads warp, warp + warps, ...
__global__ void GatedRmsNormKernel(TensorView x, TensorView gate, TensorView weight,
                                   int64_t head_dim, float eps, TensorView out) {
  const int64_t t = blockIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const float* in = RowF32(x, t);
  const float* z = RowF32(gate, t);
  float* o = RowF32(out, t);
  for (int64_t h0 = static_cast<int64_t>(warp) * head_dim; h0 < x.cols;
       h0 += static_cast<int64_t>(warps) * head_dim) {
    float sum = 0.0f;
    for (int64_t j = lane; j < head_dim; j += 32) sum += in[h0 + j] * in[h0 + j];
    const float inv_rms = InvRms(WarpSum(sum), head_dim, eps);
    for (int64_t j = lane; j < head_dim; j += 32) {
      o[h0 + j] = LoadFlat(weight, j) * (in[h0 + j] * inv_rms) * SigmoidF(z[h0 + j]);
    }
  }
}

}  // namespace

int LaunchRmsNorm(TensorView x, TensorView weight, float eps, TensorView out, Stream stream) {
  if (x.dtype != DType::kF32 || out.dtype != DType::kF32) return kInvalid;
  if (x.rows != out.rows || x.cols != out.cols || weight.numel() != x.cols) return kInvalid;
  if (x.rows == 0 || x.cols == 0) return 0;
  if (!FitsGridX(x.rows)) return kInvalid;
  RmsNormKernel<<<static_cast<unsigned>(x.rows), RowBlockThreads(x.cols, 512), 0,
                  static_cast<cudaStream_t>(stream)>>>(x, weight, eps, out);
  return static_cast<int>(cudaGetLastError());
}

int LaunchAddRmsNorm(TensorView acc, TensorView x, TensorView weight, float eps, TensorView out, Stream stream) {
  if (acc.dtype != DType::kF32 || x.dtype != DType::kF32 || out.dtype != DType::kF32) return kInvalid;
  if (x.rows != acc.rows || x.cols != acc.cols || out.rows != acc.rows || out.cols != acc.cols ||
      weight.numel() != acc.cols) {
    return kInvalid;
  }
  if (acc.rows == 0 || acc.cols == 0) return 0;
  if (!FitsGridX(acc.rows)) return kInvalid;
  AddRmsNormKernel<<<static_cast<unsigned>(acc.rows), RowBlockThreads(acc.cols, 512), 0,
                     static_cast<cudaStream_t>(stream)>>>(acc, x, weight, eps, out);
  return static_cast<int>(cudaGetLastError());
}

int LaunchGatedRmsNorm(TensorView x, TensorView gate, TensorView weight, int64_t head_dim,
                       float eps, TensorView out, Stream stream) {
  if (x.dtype != DType::kF32 || gate.dtype != DType::kF32 || out.dtype != DType::kF32) {
    return kInvalid;
  }
  if (head_dim <= 0 || x.cols % head_dim != 0 || weight.numel() != head_dim) return kInvalid;
  if (gate.rows != x.rows || gate.cols != x.cols || out.rows != x.rows || out.cols != x.cols) {
    return kInvalid;
  }
  if (x.rows == 0 || x.cols == 0) return 0;
  if (!FitsGridX(x.rows)) return kInvalid;
  // A warp per head, at most 8 warps.
  const unsigned threads = RowBlockThreads((x.cols / head_dim) * 32, 256);
  GatedRmsNormKernel<<<static_cast<unsigned>(x.rows), threads, 0,
                       static_cast<cudaStream_t>(stream)>>>(x, gate, weight, head_dim, eps, out);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace deltaserve::kernels::cuda
