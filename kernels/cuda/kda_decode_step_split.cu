// The fused KDA decode step for a few sequences (Backend::KdaDecodeStep at d = 128, where
// LaunchKdaDecodeStep picks it): each (sequence, head) task on a cluster of four blocks, block r
// of the cluster owning the state's value columns [32r, 32r + 32). With few tasks the persistent
// kernel (kda_decode_step.cu) gives each block one task, and a step takes that task's chain of
// latencies: the head's 64 KiB of state through one SM, then four barriers of 256 threads. Here
// each block reads its 16 KiB of the state straight into registers (lane l its column, warp w rows
// [32w, 32w + 32)), runs the q and k convs of all 128 channels (every block alike: cheaper than
// exchanging them) and the v convs of its own columns, and the gated RMSNorm's sum over the head's
// 128 outputs crosses the cluster through distributed shared memory.
#include "kernels/cuda/kda_decode_step_split.h"

#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/kda_decode_conv.cuh"

namespace deltaserve::kernels::cuda {
namespace {

namespace cg = cooperative_groups;

constexpr int kD = 128;                // the head dim this form is built for (Kimi's)
constexpr int kSplit = 4;              // blocks per task: one cluster
constexpr int kColumns = kD / kSplit;  // a block's value columns: a lane each
constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;  // a thread per channel of the head
constexpr int kRows = kD / kWarps;     // state rows per thread
static_assert(kColumns == 32 && kThreads == kD && kRows % 2 == 0,
              "lane = column, thread = channel, rows taken in pairs");

// The cluster's barrier in two halves. The relaxed arrival orders nothing: it only says that this
// block runs, so that its shared memory may take the others' stores after their wait.
__device__ __forceinline__ void ClusterArriveRelaxed() {
  asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void ClusterArriveRelease() {
  asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void ClusterWaitAcquire() {
  asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}

// Grid: kSplit blocks per task (task = sequence * H + head), clusters of kSplit.
__global__ void __cluster_dims__(kSplit, 1, 1) __launch_bounds__(kThreads)
    KdaDecodeStepSplitKernel(KdaDecodeInputs in, const KdaDecodeSequence* seqs, TensorView out) {
  __shared__ float q_sh[kD], k_sh[kD], decay_sh[kD], v_sh[kColumns];
  __shared__ float squares[2][kWarps];         // each warp's Σ q², Σ k²
  __shared__ float dots[2][kWarps][kColumns];  // each warp's rows of (Sᵀk)[j], then (Sᵀq)[j]
  __shared__ float norm_parts[kSplit];         // block r's Σ o² over its columns, stored by block r
  ClusterArriveRelaxed();
  const KdaInputs& core = in.core;
  const int heads = static_cast<int>(core.num_heads);
  const int rank = static_cast<int>(blockIdx.x % kSplit), task = static_cast<int>(blockIdx.x / kSplit);
  const int h = task % heads;
  const int t = static_cast<int>(threadIdx.x), lane = t & 31, warp = t >> 5;
  const int j = rank * kColumns + lane, i0 = warp * kRows;  // this lane's column, this warp's rows
  const int64_t channels = core.q.cols, head0 = static_cast<int64_t>(h) * kD;
  const int history = static_cast<int>(in.conv_weights[0].cols) - 1;
  // Weights, and the call's uploaded descriptors, before the wait: no kernel writes them.
  DecodeConv conv_q, conv_k, conv_v;
  conv_q.LoadWeights(in.conv_weights[0], head0 + t, history);
  conv_k.LoadWeights(in.conv_weights[1], head0 + t, history);
  if (warp == 0) conv_v.LoadWeights(in.conv_weights[2], head0 + j, history);
  const float bias = LoadFlat(core.dt_bias, head0 + t);
  const float decay_rate = expf(LoadFlat(core.a_log, h));
  const float out_norm = warp == 0 ? LoadFlat(in.out_norm, j) : 0.0f;
  const KdaDecodeSequence seq = seqs[task / heads];
  FollowPriorKernels();
  const int64_t row = seq.row;
  float* const column = seq.state + head0 * kD + static_cast<int64_t>(i0) * kD + j;
  float s[kRows];  // s[r] = S[i0 + r][j]
#pragma unroll
  for (int r = 0; r < kRows; ++r) s[r] = column[r * kD];
  conv_q.LoadInputs(RowF32(core.q, row)[head0 + t], seq.conv_tails[0], head0 + t, channels, history);
  conv_k.LoadInputs(RowF32(core.k, row)[head0 + t], seq.conv_tails[1], head0 + t, channels, history);
  if (warp == 0) conv_v.LoadInputs(RowF32(core.v, row)[head0 + j], seq.conv_tails[2], head0 + j, channels, history);
  const float gate = RowF32(core.gate_logits, row)[head0 + t];
  const float out_gate = warp == 0 ? RowF32(in.out_gate, row)[head0 + j] : 0.0f;
  const float beta = SigmoidF(RowF32(core.beta_logits, row)[h]);

  const float q = conv_q.Output(history), k = conv_k.Output(history);
  q_sh[t] = q;
  k_sh[t] = k;
  decay_sh[t] = expf(-decay_rate * SoftplusF(gate + bias));
  if (warp == 0) v_sh[lane] = conv_v.Output(history);
  const float warp_q = WarpSum(q * q), warp_k = WarpSum(k * k);
  if (lane == 0) {
    squares[0][warp] = warp_q;
    squares[1][warp] = warp_k;
  }
  __syncthreads();
  float sum_q = 0.0f, sum_k = 0.0f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    sum_q += squares[0][w];
    sum_k += squares[1][w];
  }
  // q̂ = q / ‖q‖ / √D and k̂ = k / ‖k‖, applied to the row sums, not to every element.
  const float q_scale = 1.0f / sqrtf(sum_q + 1e-6f) * (1.0f / sqrtf(static_cast<float>(kD)));
  const float k_scale = 1.0f / sqrtf(sum_k + 1e-6f);

  // S ← Diag(exp(g)) S and this warp's rows of Sᵀk.
  float m0 = 0.0f, m1 = 0.0f;
#pragma unroll
  for (int r = 0; r < kRows; r += 2) {
    s[r] *= decay_sh[i0 + r];
    s[r + 1] *= decay_sh[i0 + r + 1];
    m0 = fmaf(s[r], k_sh[i0 + r], m0);
    m1 = fmaf(s[r + 1], k_sh[i0 + r + 1], m1);
  }
  dots[0][warp][lane] = m0 + m1;
  __syncthreads();
  float prediction = 0.0f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) prediction += dots[0][w][lane];
  // S += k̂ ⊗ β(v - Sᵀk̂), then this warp's rows of Sᵀq (the read includes this token).
  const float k_delta = k_scale * (beta * (v_sh[lane] - k_scale * prediction));
  float o0 = 0.0f, o1 = 0.0f;
#pragma unroll
  for (int r = 0; r < kRows; r += 2) {
    s[r] = fmaf(k_sh[i0 + r], k_delta, s[r]);
    s[r + 1] = fmaf(k_sh[i0 + r + 1], k_delta, s[r + 1]);
    o0 = fmaf(s[r], q_sh[i0 + r], o0);
    o1 = fmaf(s[r + 1], q_sh[i0 + r + 1], o1);
  }
  dots[1][warp][lane] = o0 + o1;
#pragma unroll
  for (int r = 0; r < kRows; ++r) __stcs(column + r * kD, s[r]);
  __syncthreads();
  // The gated RMSNorm over the head's 128 outputs: warp 0 holds this block's 32, the other
  // blocks' sums of squares come through their shared memory.
  float o = 0.0f, part = 0.0f;
  if (warp == 0) {
#pragma unroll
    for (int w = 0; w < kWarps; ++w) o += dots[1][w][lane];
    o *= q_scale;
    part = WarpSum(o * o);
  }
  ClusterWaitAcquire();  // every block of the cluster runs
  if (warp == 0 && lane < kSplit) *cg::this_cluster().map_shared_rank(&norm_parts[rank], lane) = part;
  ClusterArriveRelease();
  ClusterWaitAcquire();
  if (warp == 0) {
    float total = 0.0f;
#pragma unroll
    for (int b = 0; b < kSplit; ++b) total += norm_parts[b];
    const float inv_rms = 1.0f / sqrtf(total / static_cast<float>(kD) + in.eps);
    RowF32(out, row)[head0 + j] = out_norm * (o * inv_rms) * SigmoidF(out_gate);
  }
  // The conv tails advance once every block of the cluster has read the old ones (each did before
  // its arrival above): block r those of the q and k channels [32r, 32r + 32), and its v channels.
  if (warp == rank) {
    conv_q.Advance(seq.conv_tails[0], head0 + t, channels, history);
    conv_k.Advance(seq.conv_tails[1], head0 + t, channels, history);
  }
  if (warp == 0) conv_v.Advance(seq.conv_tails[2], head0 + j, channels, history);
}

}  // namespace

bool KdaDecodeStepSplitApplies(int64_t head_dim, int64_t tasks) {
  return head_dim == kD && tasks <= kKdaDecodeSplitMaxTasks;
}

int LaunchKdaDecodeStepSplit(const KdaDecodeInputs& in, const KdaDecodeSequence* seqs, int64_t tasks, TensorView out,
                             Stream stream) {
  if (!KdaDecodeStepSplitApplies(in.core.head_dim, tasks) || tasks <= 0) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  return LaunchAfterPrior(KdaDecodeStepSplitKernel, dim3(static_cast<unsigned>(tasks * kSplit)), dim3(kThreads), 0,
                          stream, in, seqs, out);
}

}  // namespace deltaserve::kernels::cuda
