// RMSNorm per row, and the KDA output's gated RMSNorm per head (rmsnorm * weight * sigmoid(gate)).
// fp32 sums of squares; every element is read and written by the same thread, so out may alias x
// where it has x's dtype (a bf16 out over fp32 inputs would land on other threads' elements: the
// launchers refuse that).
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

// A thread's elements of a row (columns threadIdx.x + i * blockDim.x) held in registers, so every
// load of the row is issued before the first is used; rows wider than kRowItems * blockDim.x take
// the strided loops instead.
constexpr int kRowItems = 8;
constexpr unsigned kNormThreads = 512;

// One block per row. With kWithResidual, acc += x first and the sum of squares is over acc; each
// thread sums the squares of its elements in ascending column order either way, so RmsNorm and
// AddRmsNorm give the same bits.
template <bool kWithResidual>
__global__ void RmsNormKernel(TensorView acc, TensorView x, TensorView weight, float eps, TensorView out) {
  FollowPriorKernels();
  __shared__ float scratch[32];
  const int64_t t = blockIdx.x, cols = x.cols;
  float* a = kWithResidual ? RowF32(acc, t) : nullptr;
  const float* in = RowF32(x, t);
  float sum = 0.0f;
  if (cols <= kRowItems * static_cast<int64_t>(blockDim.x)) {
    float v[kRowItems], w[kRowItems];
#pragma unroll
    for (int i = 0; i < kRowItems; ++i) {
      const int64_t c = threadIdx.x + i * static_cast<int64_t>(blockDim.x);
      v[i] = c < cols ? (kWithResidual ? a[c] + in[c] : in[c]) : 0.0f;
      w[i] = c < cols ? LoadFlat(weight, c) : 0.0f;
    }
#pragma unroll
    for (int i = 0; i < kRowItems; ++i) {
      const int64_t c = threadIdx.x + i * static_cast<int64_t>(blockDim.x);
      if (c < cols) {
        if (kWithResidual) a[c] = v[i];
        sum += v[i] * v[i];
      }
    }
    const float inv_rms = InvRms(BlockSum(sum, scratch), cols, eps);
#pragma unroll
    for (int i = 0; i < kRowItems; ++i) {
      const int64_t c = threadIdx.x + i * static_cast<int64_t>(blockDim.x);
      if (c < cols) StoreAt(out, t, c, w[i] * (v[i] * inv_rms));
    }
    return;
  }
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float v = kWithResidual ? a[c] + in[c] : in[c];
    if (kWithResidual) a[c] = v;
    sum += v * v;
  }
  const float inv_rms = InvRms(BlockSum(sum, scratch), cols, eps);
  const float* normed = kWithResidual ? a : in;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    StoreAt(out, t, c, LoadFlat(weight, c) * (normed[c] * inv_rms));
  }
}

// One block per row; each warp takes heads warp, warp + warps, ... kVector: heads of 128, each
// lane's four elements of x, gate and out moved at once (Aligned4 views).
template <bool kVector>
__global__ void GatedRmsNormKernel(TensorView x, TensorView gate, TensorView weight,
                                   int64_t head_dim, float eps, TensorView out) {
  const int64_t t = blockIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int64_t h0 = static_cast<int64_t>(warp) * head_dim; h0 < x.cols;
       h0 += static_cast<int64_t>(warps) * head_dim) {
    if constexpr (kVector) {
      const int64_t c = h0 + 4 * lane;
      float v[4], z[4], o[4];
      Load4(x, t, c, v);
      Load4(gate, t, c, z);
      const float inv_rms = InvRms(WarpSum(v[0] * v[0] + v[1] * v[1] + v[2] * v[2] + v[3] * v[3]), head_dim, eps);
#pragma unroll
      for (int e = 0; e < 4; ++e) o[e] = LoadFlat(weight, 4 * lane + e) * (v[e] * inv_rms) * SigmoidF(z[e]);
      Store4(out, t, c, o);
    } else {
      float sum = 0.0f;
      for (int64_t j = lane; j < head_dim; j += 32) {
        const float v = LoadAt(x, t, h0 + j);
        sum += v * v;
      }
      const float inv_rms = InvRms(WarpSum(sum), head_dim, eps);
      for (int64_t j = lane; j < head_dim; j += 32) {
        StoreAt(out, t, h0 + j,
                LoadFlat(weight, j) * (LoadAt(x, t, h0 + j) * inv_rms) * SigmoidF(LoadAt(gate, t, h0 + j)));
      }
    }
  }
}

}  // namespace

int LaunchRmsNorm(TensorView x, TensorView weight, float eps, TensorView out, Stream stream) {
  if (x.dtype != DType::kF32 || !IsActivationDType(out.dtype)) return kInvalid;
  if (out.dtype != x.dtype && Overlap(out, x)) return kInvalid;
  if (x.rows != out.rows || x.cols != out.cols || weight.numel() != x.cols) return kInvalid;
  if (x.rows == 0 || x.cols == 0) return 0;
  if (!FitsGridX(x.rows)) return kInvalid;
  return LaunchAfterPrior(RmsNormKernel<false>, dim3(static_cast<unsigned>(x.rows)),
                          dim3(RowBlockThreads(x.cols, kNormThreads)), 0, stream, TensorView{}, x, weight, eps, out);
}

int LaunchAddRmsNorm(TensorView acc, TensorView x, TensorView weight, float eps, TensorView out, Stream stream) {
  if (acc.dtype != DType::kF32 || x.dtype != DType::kF32 || !IsActivationDType(out.dtype)) return kInvalid;
  if (out.dtype != DType::kF32 && (Overlap(out, acc) || Overlap(out, x))) return kInvalid;
  if (x.rows != acc.rows || x.cols != acc.cols || out.rows != acc.rows || out.cols != acc.cols ||
      weight.numel() != acc.cols) {
    return kInvalid;
  }
  if (acc.rows == 0 || acc.cols == 0) return 0;
  if (!FitsGridX(acc.rows)) return kInvalid;
  return LaunchAfterPrior(RmsNormKernel<true>, dim3(static_cast<unsigned>(acc.rows)),
                          dim3(RowBlockThreads(acc.cols, kNormThreads)), 0, stream, acc, x, weight, eps, out);
}

int LaunchGatedRmsNorm(TensorView x, TensorView gate, TensorView weight, int64_t head_dim,
                       float eps, TensorView out, Stream stream) {
  if (!IsActivationDType(x.dtype) || !IsActivationDType(gate.dtype) || !IsActivationDType(out.dtype)) {
    return kInvalid;
  }
  if ((out.dtype != x.dtype && Overlap(out, x)) || (out.dtype != gate.dtype && Overlap(out, gate))) {
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
  const auto s = static_cast<cudaStream_t>(stream);
  if (head_dim == 128 && Aligned4(x) && Aligned4(gate) && Aligned4(out)) {
    GatedRmsNormKernel<true><<<static_cast<unsigned>(x.rows), threads, 0, s>>>(x, gate, weight, head_dim, eps, out);
  } else {
    GatedRmsNormKernel<false><<<static_cast<unsigned>(x.rows), threads, 0, s>>>(x, gate, weight, head_dim, eps, out);
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace deltaserve::kernels::cuda
