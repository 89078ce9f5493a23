// Depthwise causal conv + SiLU over packed sequences with per-sequence tails (the last W-1
// inputs). Each thread computes a run of kRunRows outputs of one channel, or four (16-byte loads;
// at 4 taps, aligned rows), from its inputs (the W-1 before the run from the rows above or the
// tail), all loaded before the first is used; the runs come from a table (only those of
// sequences' real rows get blocks); a second kernel then moves each sequence's last inputs into
// its tail. (One thread walking a whole sequence per channel took ~15 ms for 32k tokens: one
// memory round trip per token.)
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/launchers.h"

namespace deltaserve::kernels::cuda {
namespace {

constexpr int kInvalid = static_cast<int>(cudaErrorInvalidValue);
constexpr int kThreads = 128;
constexpr int64_t kMaxKernel = 16;
constexpr int kRunRows = kConvRunRows;
constexpr int64_t kMaxSeqsPerLaunch = 65535;  // grid y

// Whether the sequence's rows lie inside x (an empty or invalid sequence is a no-op).
__device__ __forceinline__ bool ValidRows(const ConvSequence& seq, const TensorView& x) {
  return seq.rows.length > 0 && seq.rows.begin >= 0 && seq.rows.begin + seq.rows.length <= x.rows;
}

// kVec consecutive channels' inputs of one row (x's or the tail's row), as floats: one 16-byte
// load where kVec is 4 (the launcher checks x's alignment; a tail is checked here).
template <int kVec>
__device__ __forceinline__ void LoadChannels(const float* p, float (&v)[kVec]) {
  if constexpr (kVec == 4) {
    if (reinterpret_cast<uintptr_t>(p) % 16 == 0) {
      const float4 q = *reinterpret_cast<const float4*>(p);
      v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
      return;
    }
  }
#pragma unroll
  for (int i = 0; i < kVec; ++i) v[i] = p[i];
}

// Grid: x = channel block + channel_blocks * run; each thread takes kVec consecutive channels.
// kMax >= kernel bounds the registers; loops run to compile-time bounds so every index is a
// constant. Products and sums are rounded separately (no FMA contraction), in the CPU's order.
// out must not alias x.
template <int kMax, int kVec>
__global__ void __launch_bounds__(kThreads)
    CausalConvSiluKernel(TensorView x, TensorView weight, const ConvSequence* seqs, const ConvRun* runs,
                         int64_t channel_blocks, TensorView out) {
  const int64_t channels = x.cols;
  const int64_t c = (static_cast<int64_t>(blockIdx.x % channel_blocks) * kThreads + threadIdx.x) * kVec;
  const ConvRun run = runs[blockIdx.x / channel_blocks];
  const int64_t t0 = run.first;  // in the sequence
  const ConvSequence seq = seqs[run.seq];
  if (c >= channels || !ValidRows(seq, x) || t0 >= seq.rows.length) return;
  const int64_t begin = seq.rows.begin, length = seq.rows.length;
  const int kernel = static_cast<int>(weight.cols);
  const int history = kernel - 1;

  float w[kVec][kMax];
#pragma unroll
  for (int v = 0; v < kVec; ++v) {
#pragma unroll
    for (int j = 0; j < kMax; ++j) w[v][j] = j < kernel ? LoadAt(weight, c + v, j) : 0.0f;
  }
  // in[i]: the inputs at token t0 - history + i (before the sequence: its tail, oldest first).
  float in[kRunRows + kMax - 1][kVec];
#pragma unroll
  for (int i = 0; i < kRunRows + kMax - 1; ++i) {
    const int64_t tau = t0 - history + i;
#pragma unroll
    for (int v = 0; v < kVec; ++v) in[i][v] = 0.0f;
    if (i < kRunRows + history && tau < length) {
      if (tau >= 0) {
        LoadChannels<kVec>(RowF32(x, begin + tau) + c, in[i]);
      } else if (seq.tail != nullptr) {
        LoadChannels<kVec>(seq.tail + (tau + history) * channels + c, in[i]);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRunRows; ++r) {
    if (t0 + r >= length) break;
    float y[kVec];
#pragma unroll
    for (int v = 0; v < kVec; ++v) {
      float acc = 0.0f;
#pragma unroll
      for (int j = 0; j < kMax; ++j) {
        if (j <= history) acc = __fadd_rn(acc, __fmul_rn(w[v][j], in[r + j][v]));  // w[history]: the current token
      }
      y[v] = SiluF(acc);
    }
    if constexpr (kVec == 4) {
      Store4(out, begin + t0 + r, c, y);
    } else {
      StoreAt(out, begin + t0 + r, c, y[0]);
    }
  }
}

// Grid: x = channel block, y = sequence. The tail becomes the sequence's last `history` inputs
// (older tail entries where the sequence is shorter); each thread reads its channel's entries
// before it writes them.
template <int kMax>
__global__ void __launch_bounds__(kThreads) AdvanceConvTailKernel(TensorView x, int history, const ConvSequence* seqs) {
  const int64_t channels = x.cols;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const ConvSequence seq = seqs[blockIdx.y];
  if (c >= channels || !ValidRows(seq, x) || seq.tail == nullptr) return;
  const int64_t begin = seq.rows.begin, length = seq.rows.length;
  float next[kMax];
#pragma unroll
  for (int j = 0; j < kMax; ++j) {
    const int64_t tau = length - history + j;
    next[j] = j >= history ? 0.0f : tau >= 0 ? RowF32(x, begin + tau)[c] : seq.tail[(tau + history) * channels + c];
  }
#pragma unroll
  for (int j = 0; j < kMax; ++j) {
    if (j < history) seq.tail[j * channels + c] = next[j];
  }
}

template <int kMax, int kVec>
void LaunchConv(TensorView x, TensorView weight, const ConvSequence* seqs, int64_t num_seqs, const ConvRun* runs,
                int64_t num_runs, TensorView out, cudaStream_t s) {
  const int64_t channel_blocks = (x.cols + kThreads * kVec - 1) / (kThreads * kVec);
  CausalConvSiluKernel<kMax, kVec><<<static_cast<unsigned>(channel_blocks * num_runs), kThreads, 0, s>>>(
      x, weight, seqs, runs, channel_blocks, out);
  const int64_t tail_blocks = (x.cols + kThreads - 1) / kThreads;
  for (int64_t first = 0; first < num_seqs; first += kMaxSeqsPerLaunch) {
    const auto n = static_cast<unsigned>(num_seqs - first < kMaxSeqsPerLaunch ? num_seqs - first : kMaxSeqsPerLaunch);
    AdvanceConvTailKernel<kMax><<<dim3(static_cast<unsigned>(tail_blocks), n), kThreads, 0, s>>>(
        x, static_cast<int>(weight.cols) - 1, seqs + first);
  }
}

}  // namespace

int LaunchCausalConvSilu(TensorView x, TensorView weight, const ConvSequence* seqs, int64_t num_seqs,
                         const ConvRun* runs, int64_t num_runs, TensorView out, Stream stream) {
  const int64_t channels = x.cols;
  const int64_t kernel = weight.cols;
  if (x.dtype != DType::kF32 || !IsActivationDType(out.dtype)) return kInvalid;
  if (weight.rows != channels || kernel < 1 || kernel > kMaxKernel) return kInvalid;
  if (out.rows != x.rows || out.cols != channels || num_seqs < 0 || num_runs < 0) return kInvalid;
  if (out.data == x.data) return kInvalid;  // the runs read rows other threads write
  if (num_seqs == 0 || num_runs == 0 || x.rows == 0 || channels == 0) return 0;
  const int64_t channel_blocks = (channels + kThreads - 1) / kThreads;
  if (!FitsGridX(channel_blocks * num_runs) || channel_blocks > 0x7fffffffLL || seqs == nullptr || runs == nullptr) {
    return kInvalid;
  }
  const auto s = static_cast<cudaStream_t>(stream);
  // Four channels a thread (16-byte loads) where x and out allow it, at the model's four taps.
  const bool vector = Aligned4(x) && Aligned4(out);
  if (kernel <= 4 && vector) {
    LaunchConv<4, 4>(x, weight, seqs, num_seqs, runs, num_runs, out, s);
  } else if (kernel <= 4) {
    LaunchConv<4, 1>(x, weight, seqs, num_seqs, runs, num_runs, out, s);
  } else {
    LaunchConv<kMaxKernel, 1>(x, weight, seqs, num_seqs, runs, num_runs, out, s);
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace deltaserve::kernels::cuda
