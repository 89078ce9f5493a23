// The fused KDA decode step (Backend::KdaDecodeStep; spec §2.2-2.3 for one token per sequence):
// the q/k/v short convs (tails advanced), the q/k L2 norm, gate and beta, the delta rule on the
// head's fp32 state in place, and the gated RMSNorm of the head's output.
//
// Reading and writing the state is the whole cost, so loads are decoupled from the arithmetic:
// persistent blocks take (sequence, head) tasks in turn, each copied (one bulk copy of the head's
// state, asynchronous copies of its per-sequence inputs) into a ring of shared-memory slots, and
// two groups of eight warps, taking alternate tasks, turn each slot into the new state (written
// back from registers, a whole row per warp store), the output row and the advanced conv tails.
// A group that has read its slot queues the copy of the slot's next task into it at once, so the
// copies run kStages tasks ahead, under the groups' barriers and arithmetic. (A separate producer
// warp made 17 warps and capped the registers at 96 a thread; 16 warps have 128.) Up to
// kKdaDecodeSplitMaxTasks tasks (one or two sequences of Kimi's shape) take
// kda_decode_step_split.cu instead.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/kda_decode_conv.cuh"
#include "kernels/cuda/kda_decode_step_split.h"
#include "kernels/cuda/kda_head_dims.cuh"
#include "kernels/cuda/kda_input_checks.h"
#include "kernels/cuda/launchers.h"

namespace deltaserve::kernels::cuda {
namespace {

constexpr int kGroupThreads = 256;  // a group: warp w holds rows [w D/8, (w + 1) D/8) of a state
constexpr int kGroups = 2;          // groups, taking the block's tasks in turn
constexpr int kThreads = kGroups * kGroupThreads;
constexpr int kStages = 3;  // ring slots (three of 71 KiB at D = 128 fill the shared memory)
// The warp of a group that queues its slot's next task: the last, whose threads run no conv.
constexpr int kIssueWarp = kGroupThreads / 32 - 1;
// The warp of a group that finishes a task's output row (its norm needs every column), while
// the others go on to the next task: one that runs no conv and queues no copies.
constexpr int kOutputWarp = kIssueWarp - 1;

// What a slot holds for one task.
template <int D>
struct __align__(128) Slot {
  float state[D * D];  // the head's [D, D] state
  float q[D], k[D], v[D], gate[D], out_gate[D];  // the sequence's row, the head's channels
  float tails[3][kMaxDecodeConvKernel - 1][D];   // q, k, v conv tails, oldest first
  KdaDecodeSequence seq;
  float beta_logit;
};

// A group's exchanges.
template <int D>
struct __align__(16) GroupShared {
  float q[D], k[D], decay[D], v[D];      // after the convs (q, k before their L2 norms)
  float squares[2][kGroupThreads / 32];  // each warp's Σ q², Σ k²
  float4 dots[kGroupThreads / 32][D / 4];  // each warp's rows' (Sᵀk)[j], then (Sᵀq)[j]
};

// Barriers and the groups' exchanges, beside kStages slots in dynamic shared memory.
template <int D>
struct StepShared {
  uint64_t full[kStages];   // a slot's inputs have landed (the issuing warp's 32 arrivals + bytes)
  uint64_t empty[kStages];  // its group is done reading a slot (one arrival)
  GroupShared<D> groups[kGroups];
};

template <int D>
constexpr size_t StepSharedBytes() {
  return kStages * sizeof(Slot<D>) + sizeof(StepShared<D>);
}
// The most shared memory a Hopper block may have (227 KiB), which the largest head dim must fit.
static_assert(StepSharedBytes<128>() <= 227 * 1024, "the slots and exchanges at D = 128 fill it");

// A barrier among one group's warps.
__device__ __forceinline__ void SyncGroup(int group) { cuda::SyncGroup<kGroupThreads>(group); }

// A warp's asynchronous copy of `count` floats (count % 4 == 0) to shared `to`: 16-byte pieces
// past L1 where both ends are 16-byte aligned, 4-byte ones otherwise.
__device__ __forceinline__ void CopyRowAsync(float* to, const float* from, int count, int lane) {
  if (((reinterpret_cast<uintptr_t>(to) | reinterpret_cast<uintptr_t>(from)) & 15) == 0) {
    for (int i = 4 * lane; i < count; i += 4 * 32) CopyAsync16(to + i, from + i);
  } else {
    for (int i = lane; i < count; i += 32) CopyAsync4(to + i, from + i);
  }
}

// One warp queues the copies of task `task` (= sequence * heads + head; `seq` its sequence) into
// `slot`: the head's state (one bulk copy where 16-byte aligned, the lanes' copies otherwise) and
// the sequence's inputs for the head, all asynchronous; `full` completes when they have landed.
template <int D>
__device__ __forceinline__ void IssueTask(const KdaDecodeInputs& in, const KdaDecodeSequence& seq,
                                          const KdaDecodeSequence* seqs, int task, Slot<D>& slot, uint64_t* full,
                                          int lane) {
  static_assert(sizeof(KdaDecodeSequence) % 8 == 0 && sizeof(KdaDecodeSequence) <= 32 * 8, "copied in 8-byte pieces");
  const KdaInputs& core = in.core;
  const int heads = static_cast<int>(core.num_heads), h = task % heads;
  const int64_t channels = core.q.cols;
  const int history = static_cast<int>(in.conv_weights[0].cols) - 1;
  const int64_t head0 = static_cast<int64_t>(h) * D, row = seq.row;
  const float* state = seq.state + head0 * D;
  if ((reinterpret_cast<uintptr_t>(state) & 15) == 0) {
    if (lane == 0) {
      // The group's reads of the slot (generic proxy) ordered before the bulk copy's writes.
      FenceProxyAsyncShared();
      ExpectBytes(full, D * D * sizeof(float));
      BulkCopyToShared(slot.state, state, D * D * sizeof(float), full);
    }
  } else {
    CopyRowAsync(slot.state, state, D * D, lane);  // 4-byte pieces: the state is not 16-aligned
  }
  CopyRowAsync(slot.q, RowF32(core.q, row) + head0, D, lane);
  CopyRowAsync(slot.k, RowF32(core.k, row) + head0, D, lane);
  CopyRowAsync(slot.v, RowF32(core.v, row) + head0, D, lane);
  CopyRowAsync(slot.gate, RowF32(core.gate_logits, row) + head0, D, lane);
  CopyRowAsync(slot.out_gate, RowF32(in.out_gate, row) + head0, D, lane);
#pragma unroll
  for (int conv = 0; conv < 3; ++conv) {
#pragma unroll
    for (int i = 0; i + 1 < kMaxDecodeConvKernel; ++i) {
      if (i < history) CopyRowAsync(slot.tails[conv][i], seq.conv_tails[conv] + i * channels + head0, D, lane);
    }
  }
  if (lane * 8 < static_cast<int>(sizeof(KdaDecodeSequence))) {
    CopyAsync8(reinterpret_cast<char*>(&slot.seq) + lane * 8,
               reinterpret_cast<const char*>(seqs + task / heads) + lane * 8);
  }
  if (lane == 0) CopyAsync4(&slot.beta_logit, RowF32(core.beta_logits, row) + h);
  ArriveWhenCopiesLand(full);
}

// Rows i0 + r .. i0 + r + 3 of a per-row vector in shared memory; rows past the warp's kRows read
// as zeros.
template <int kRows>
__device__ __forceinline__ float4 FourRows(const float* v, int i0, int r) {
  if constexpr (kRows % 4 == 0) {
    return *reinterpret_cast<const float4*>(v + i0 + r);
  } else {
    float x[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) x[u] = r + u < kRows ? v[i0 + r + u] : 0.0f;
    return make_float4(x[0], x[1], x[2], x[3]);
  }
}

__device__ __forceinline__ float Lane(const float4& x, int u) {
  return u == 0 ? x.x : u == 1 ? x.y : u == 2 ? x.z : x.w;
}
__device__ __forceinline__ float4 Fma(float a, float4 b, float4 c) {
  return make_float4(fmaf(a, b.x, c.x), fmaf(a, b.y, c.y), fmaf(a, b.z, c.z), fmaf(a, b.w, c.w));
}
__device__ __forceinline__ float4 Add(float4 a, float4 b) {
  return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
}

// A group: per task (the block's tasks group, group + kGroups, ...), the convs, the delta rule on
// the state and the gated RMSNorm. Warp w holds rows [w D/8, (w + 1) D/8) of the state in
// registers, lane l their columns 4l .. 4l + 3, so that each read of a row from the slot and each
// store of it to an aligned state is one warp's 4D contiguous bytes (a thread per column over
// half the rows stored 128-byte pieces: 1–2% slower from batch 128, docs/gpu-benchmark.md); sums
// over rows add the eight warps' partials through shared memory. Threads ct < D run channel ct's
// convs. The slot is released at the group's first barrier, once every thread has read it, and
// its issuing warp then queues the copies of the block's task kStages later into it.
template <int D>
__device__ __forceinline__ void Consume(const KdaDecodeInputs& in, const KdaDecodeSequence* seqs, int tasks,
                                        Slot<D>* slots, StepShared<D>& shared, int group, const TensorView& out) {
  constexpr int kWarps = kGroupThreads / 32, kRows = D / kWarps;  // state rows per warp
  static_assert(D <= 128 && D % 8 == 0, "4 columns a lane, D / 8 rows a warp, a channel per thread");
  GroupShared<D>& sh = shared.groups[group];
  const KdaInputs& core = in.core;
  const int heads = static_cast<int>(core.num_heads);
  const int ct = threadIdx.x % kGroupThreads, lane = ct & 31, warp = ct >> 5;
  const int c0 = 4 * lane, i0 = warp * kRows;
  const bool has_columns = c0 < D, has_channel = ct < D;
  // Whether this thread writes output columns 4 * lane .. 4 * lane + 3 (the output warp's lanes).
  const bool outputs = warp == kOutputWarp && 4 * lane < D;
  const int64_t channels = core.q.cols;
  const int history = static_cast<int>(in.conv_weights[0].cols) - 1;
  float4 out_norm{};
  if (outputs) {
    out_norm = make_float4(LoadFlat(in.out_norm, 4 * lane), LoadFlat(in.out_norm, 4 * lane + 1),
                           LoadFlat(in.out_norm, 4 * lane + 2), LoadFlat(in.out_norm, 4 * lane + 3));
  }
  // The block's first kStages tasks: group 0 queues tasks 0 and 2, group 1 task 1.
  if (warp == kIssueWarp) {
    for (int n = group; n < kStages; n += kGroups) {
      const int task = blockIdx.x + n * gridDim.x;
      if (task < tasks) IssueTask<D>(in, seqs[task / heads], seqs, task, slots[n], &shared.full[n], lane);
    }
  }
  for (int n = group, task = blockIdx.x + group * gridDim.x; task < tasks; n += kGroups, task += kGroups * gridDim.x) {
    const int stage = n % kStages;
    Slot<D>& slot = slots[stage];
    // The slot's next task, which this group queues once it has read the slot: its sequence's
    // addresses read now, so that their latency passes while this task begins.
    const int ahead = task + kStages * gridDim.x;
    const bool issues = warp == kIssueWarp && ahead < tasks;
    KdaDecodeSequence ahead_seq;
    if (issues) ahead_seq = seqs[ahead / heads];
    const int h = task % heads;
    const int64_t head0 = static_cast<int64_t>(h) * D;
    // The head's parameters (no kernel writes them) while the slot fills.
    DecodeConv conv[3];
    float bias = 0.0f;
    if (has_channel) {
#pragma unroll
      for (int c = 0; c < 3; ++c) conv[c].LoadWeights(in.conv_weights[c], head0 + ct, history);
      bias = LoadFlat(core.dt_bias, head0 + ct);
    }
    const float decay_rate = expf(LoadFlat(core.a_log, h));
    // The slot's previous task (n - kStages, the other group's: kStages is odd) released first:
    // its data had landed then, so the parity below can only name this task's phase of `full`.
    WaitBarrier(&shared.empty[stage], ((n / kStages) & 1) ^ 1);
    WaitBarrier(&shared.full[stage], (n / kStages) & 1);

    // The convs first (their tails advanced at once: the slot holds the old ones), so that their
    // registers are free before the state's.
    float q = 0.0f, k = 0.0f;
    if (has_channel) {
      conv[0].LoadInputs(slot.q[ct], &slot.tails[0][0][0], ct, D, history);
      conv[1].LoadInputs(slot.k[ct], &slot.tails[1][0][0], ct, D, history);
      conv[2].LoadInputs(slot.v[ct], &slot.tails[2][0][0], ct, D, history);
      q = conv[0].Output(history);
      k = conv[1].Output(history);
      sh.q[ct] = q;
      sh.k[ct] = k;
      sh.v[ct] = conv[2].Output(history);
      sh.decay[ct] = expf(-decay_rate * SoftplusF(slot.gate[ct] + bias));
#pragma unroll
      for (int c = 0; c < 3; ++c) conv[c].Advance(slot.seq.conv_tails[c], head0 + ct, channels, history);
    }
    const float warp_q = WarpSum(q * q), warp_k = WarpSum(k * k);
    if (lane == 0) {
      sh.squares[0][warp] = warp_q;
      sh.squares[1][warp] = warp_k;
    }
    float4 s[kRows];  // s[r] = S[i0 + r][c0 .. c0 + 3]
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      s[r] = has_columns ? *reinterpret_cast<const float4*>(slot.state + (i0 + r) * D + c0) : float4{};
    }
    float4 out_gate{};
    if (outputs) out_gate = *reinterpret_cast<const float4*>(slot.out_gate + 4 * lane);
    float* const rows = slot.seq.state + head0 * D + i0 * D + c0;
    // Every offset from the state's start is a multiple of 4 floats.
    const bool aligned = (reinterpret_cast<uintptr_t>(slot.seq.state) & 15) == 0;
    const int64_t row = slot.seq.row;
    const float beta = SigmoidF(slot.beta_logit);
    SyncGroup(group);
    if (ct == 0) ArriveBarrier(&shared.empty[stage]);  // the group's reads of the slot are done
    if (issues) IssueTask<D>(in, ahead_seq, seqs, ahead, slot, &shared.full[stage], lane);
    float sum_q = 0.0f, sum_k = 0.0f;
#pragma unroll
    for (int w = 0; w < kGroupThreads / 32; ++w) {
      sum_q += sh.squares[0][w];
      sum_k += sh.squares[1][w];
    }
    // q̂ = q / ‖q‖ / √D and k̂ = k / ‖k‖, applied to the row sums rather than to every element.
    const float q_scale = 1.0f / sqrtf(sum_q + 1e-6f) * (1.0f / sqrtf(static_cast<float>(D)));
    const float k_scale = 1.0f / sqrtf(sum_k + 1e-6f);

    // S ← Diag(exp(g)) S and this warp's rows' part of Sᵀk.
    float4 m{};
#pragma unroll
    for (int r0 = 0; r0 < kRows; r0 += 4) {
      const float4 a = FourRows<kRows>(sh.decay, i0, r0), kk = FourRows<kRows>(sh.k, i0, r0);
#pragma unroll
      for (int u = 0; u < 4 && r0 + u < kRows; ++u) {
        float4& x = s[r0 + u];
        const float decay = Lane(a, u);
        x = make_float4(x.x * decay, x.y * decay, x.z * decay, x.w * decay);
        m = Fma(Lane(kk, u), x, m);
      }
    }
    if (has_columns) sh.dots[warp][lane] = m;
    SyncGroup(group);
    // S += k̂ ⊗ β(v - Sᵀk̂), then this warp's rows' part of Sᵀq (the read includes this token).
    float4 prediction{};
#pragma unroll
    for (int w = 0; w < kWarps; ++w) prediction = Add(prediction, sh.dots[w][lane % (D / 4)]);
    const float4 v = *reinterpret_cast<const float4*>(sh.v + c0 % D);
    SyncGroup(group);  // every thread has read the partials, which Sᵀq's replace
    const float scale = k_scale * beta;
    const float4 k_delta = make_float4(scale * (v.x - k_scale * prediction.x), scale * (v.y - k_scale * prediction.y),
                                       scale * (v.z - k_scale * prediction.z), scale * (v.w - k_scale * prediction.w));
    float4 o{};
#pragma unroll
    for (int r0 = 0; r0 < kRows; r0 += 4) {
      const float4 kk = FourRows<kRows>(sh.k, i0, r0), qq = FourRows<kRows>(sh.q, i0, r0);
#pragma unroll
      for (int u = 0; u < 4 && r0 + u < kRows; ++u) {
        float4& x = s[r0 + u];
        x = Fma(Lane(kk, u), k_delta, x);
        o = Fma(Lane(qq, u), x, o);
        if (!has_columns) continue;
        float* const to = rows + (r0 + u) * D;
        if (aligned) {
          __stcs(reinterpret_cast<float4*>(to), x);
        } else {
          __stcs(to, x.x), __stcs(to + 1, x.y), __stcs(to + 2, x.z), __stcs(to + 3, x.w);
        }
      }
    }
    if (has_columns) sh.dots[warp][lane] = o;
    SyncGroup(group);
    // The gated RMSNorm over the head's D outputs, in one warp.
    if (warp == kOutputWarp) {
      float4 y{};
      if (outputs) {
#pragma unroll
        for (int w = 0; w < kWarps; ++w) y = Add(y, sh.dots[w][lane]);
        y = make_float4(y.x * q_scale, y.y * q_scale, y.z * q_scale, y.w * q_scale);
      }
      const float total = WarpSum(y.x * y.x + y.y * y.y + y.z * y.z + y.w * y.w);
      if (outputs) {
        const float inv_rms = 1.0f / sqrtf(total / static_cast<float>(D) + in.eps);
        float* const to = RowF32(out, row) + head0 + 4 * lane;
        to[0] = out_norm.x * (y.x * inv_rms) * SigmoidF(out_gate.x);
        to[1] = out_norm.y * (y.y * inv_rms) * SigmoidF(out_gate.y);
        to[2] = out_norm.z * (y.z * inv_rms) * SigmoidF(out_gate.z);
        to[3] = out_norm.w * (y.w * inv_rms) * SigmoidF(out_gate.w);
      }
    }
  }
}

// Grid: one persistent block per resident slot ring (at most one per task); block b takes tasks
// b, b + gridDim.x, ... (task = sequence * H + head).
template <int D>
__global__ void __launch_bounds__(kThreads, 1) KdaDecodeStepKernel(KdaDecodeInputs in, const KdaDecodeSequence* seqs,
                                                                 int tasks, TensorView out) {
  extern __shared__ __align__(128) unsigned char shared[];
  auto* slots = reinterpret_cast<Slot<D>*>(shared);
  auto& sh = *reinterpret_cast<StepShared<D>*>(shared + kStages * sizeof(Slot<D>));
  if (threadIdx.x == 0) {
    for (int i = 0; i < kStages; ++i) {
      InitBarrier(&sh.full[i], 32);
      InitBarrier(&sh.empty[i]);
    }
  }
  __syncthreads();
  FollowPriorKernels();
  Consume<D>(in, seqs, tasks, slots, sh, threadIdx.x / kGroupThreads, out);
}

// The grid for `tasks` (sequence, head) pairs: the blocks resident at once (at most `tasks`),
// looked up once per head dim; 0 where the kernel cannot have its shared memory.
template <int D>
int64_t KdaDecodeStepBlocks(int64_t tasks) {
  constexpr int kBytes = static_cast<int>(StepSharedBytes<D>());
  if (AllowDynamicSmem(KdaDecodeStepKernel<D>, kBytes) != 0) return 0;
  static const int64_t resident = ResidentBlocks(KdaDecodeStepKernel<D>, kThreads, kBytes);
  return tasks < resident ? tasks : resident;
}

}  // namespace

bool KdaDecodeStepSupports(int64_t head_dim, int64_t conv_kernel) {
  return KdaRecurrentSupports(head_dim) && conv_kernel >= 1 && conv_kernel <= kMaxDecodeConvKernel;
}

int LaunchKdaDecodeStep(const KdaDecodeInputs& in, const KdaDecodeSequence* seqs, int64_t num_seqs,
                        TensorView out, Stream stream) {
  const KdaInputs& core = in.core;
  const int64_t heads = core.num_heads, d = core.head_dim, width = core.q.cols;
  if (num_seqs < 0 || heads <= 0 || d <= 0 || !KdaInputsMatch(core, out)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  for (const TensorView& w : in.conv_weights) {
    if (w.rows != width || w.cols != in.conv_weights[0].cols || !KdaDecodeStepSupports(d, w.cols) ||
        w.dtype == DType::kI32) {
      return static_cast<int>(cudaErrorInvalidValue);
    }
  }
  if (in.out_gate.dtype != DType::kF32 || in.out_gate.rows != core.q.rows || in.out_gate.cols != width ||
      in.out_norm.numel() != d) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (num_seqs == 0) return 0;
  const int64_t tasks = num_seqs * heads;
  // Task indices stay ints with room for the blocks' strides past the last one.
  if (seqs == nullptr || tasks > (int64_t{1} << 30)) return static_cast<int>(cudaErrorInvalidValue);
  if (KdaDecodeStepSplitApplies(d, tasks)) return LaunchKdaDecodeStepSplit(in, seqs, tasks, out, stream);
  int error = static_cast<int>(cudaErrorInvalidValue);
  const bool launched = WithKdaHeadDim(d, [&](auto dim) {
    constexpr int D = decltype(dim)::value;
    const int64_t blocks = KdaDecodeStepBlocks<D>(tasks);
    if (blocks <= 0) return;
    error = LaunchAfterPrior(KdaDecodeStepKernel<D>, dim3(static_cast<unsigned>(blocks)), dim3(kThreads),
                             StepSharedBytes<D>(), stream, in, seqs, static_cast<int>(tasks), out);
  });
  return launched ? error : static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace deltaserve::kernels::cuda
