// Depthwise causal conv + SiLU over packed sequences with per-sequence tails (the last W-1
// inputs). One thread per (sequence, channel) walks the sequence's tokens with a register window.
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/launchers.h"

namespace deltaserve::kernels::cuda {
namespace {

constexpr int kInvalid = static_cast<int>(cudaErrorInvalidValue);
constexpr int kThreads = 128;
constexpr int64_t kMaxKernel = 16;

// Grid: x = sequence, y = block of kThreads channels. kMax >= kernel bounds the register window;
// loops run to kMax with compile-time indices so the window stays in registers. Each thread reads
// x[t, c] before writing out[t, c], and touches only its channel of the tail, so out may alias x.
// Products and sums are rounded separately (no FMA contraction), in the CPU's order.
template <int kMax>
__global__ void CausalConvSiluKernel(TensorView x, TensorView weight, const ConvSequence* seqs,
                                     TensorView out) {
  const int64_t channels = x.cols;
  const int64_t c = static_cast<int64_t>(blockIdx.y) * kThreads + threadIdx.x;
  if (c >= channels) return;
  const ConvSequence seq = seqs[blockIdx.x];
  const int64_t begin = seq.rows.begin, length = seq.rows.length;
  if (length <= 0 || begin < 0 || begin + length > x.rows) return;  // nothing (or invalid): no-op
  const int kernel = static_cast<int>(weight.cols);
  const int history = kernel - 1;

  float w[kMax];
  float window[kMax];  // window[0 .. history): the last `history` inputs, oldest first
#pragma unroll
  for (int j = 0; j < kMax; ++j) {
    w[j] = j < kernel ? LoadAt(weight, c, j) : 0.0f;
    window[j] = j < history && seq.tail != nullptr ? seq.tail[j * channels + c] : 0.0f;
  }
  for (int64_t t = 0; t < length; ++t) {
    const float current = RowF32(x, begin + t)[c];
    float acc = 0.0f;
#pragma unroll
    for (int j = 0; j < kMax; ++j) {
      if (j < history) acc = __fadd_rn(acc, __fmul_rn(w[j], window[j]));
    }
    // w[history] multiplies the current token.
#pragma unroll
    for (int j = 0; j < kMax; ++j) {
      if (j == history) acc = __fadd_rn(acc, __fmul_rn(w[j], current));
    }
    RowF32(out, begin + t)[c] = SiluF(acc);
#pragma unroll
    for (int j = 0; j + 1 < kMax; ++j) {
      if (j + 1 < history) window[j] = window[j + 1];
    }
#pragma unroll
    for (int j = 0; j < kMax; ++j) {
      if (j + 1 == history) window[j] = current;
    }
  }
  if (seq.tail != nullptr) {
#pragma unroll
    for (int j = 0; j < kMax; ++j) {
      if (j < history) seq.tail[j * channels + c] = window[j];
    }
  }
}

}  // namespace

int LaunchCausalConvSilu(TensorView x, TensorView weight, const ConvSequence* seqs,
                         int64_t num_seqs, TensorView out, Stream stream) {
  const int64_t channels = x.cols;
  const int64_t kernel = weight.cols;
  if (x.dtype != DType::kF32 || out.dtype != DType::kF32) return kInvalid;
  if (weight.rows != channels || kernel < 1 || kernel > kMaxKernel) return kInvalid;
  if (out.rows != x.rows || out.cols != channels || num_seqs < 0) return kInvalid;
  if (num_seqs == 0 || x.rows == 0 || channels == 0) return 0;
  const int64_t channel_blocks = (channels + kThreads - 1) / kThreads;
  if (!FitsGridX(num_seqs) || channel_blocks > 65535 || seqs == nullptr) return kInvalid;
  const dim3 grid(static_cast<unsigned>(num_seqs), static_cast<unsigned>(channel_blocks));
  const auto s = static_cast<cudaStream_t>(stream);
  if (kernel <= 4) {
    CausalConvSiluKernel<4><<<grid, kThreads, 0, s>>>(x, weight, seqs, out);
  } else {
    CausalConvSiluKernel<kMaxKernel><<<grid, kThreads, 0, s>>>(x, weight, seqs, out);
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace deltaserve::kernels::cuda
