// MoE routing (sigmoid scores + correction bias, optional grouped top-k, top-k with ties to the
// lower index, ids sorted ascending) and the weighted combine of the experts' slot outputs.
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/launchers.h"

namespace deltaserve::kernels::cuda {
namespace {

constexpr int kInvalid = static_cast<int>(cudaErrorInvalidValue);
constexpr int kMaxExperts = 1024;
constexpr int kMaxTopK = 16;

struct RouteParams {
  int num_experts;
  int top_k;
  int num_groups;
  int top_groups;
  bool renormalize;
  bool biased_weights;
  float scaling;
};

// Whether candidate (v, i) beats (best_v, best_i): larger value, ties to the lower index; an
// index < 0 means no candidate.
__device__ __forceinline__ bool Beats(float v, int i, float best_v, int best_i) {
  return i >= 0 && (best_i < 0 || v > best_v || (v == best_v && i < best_i));
}

__device__ __forceinline__ void WarpArgMax(float& v, int& i) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float other_v = __shfl_xor_sync(0xffffffffu, v, offset);
    const int other_i = __shfl_xor_sync(0xffffffffu, i, offset);
    if (Beats(other_v, other_i, v, i)) v = other_v, i = other_i;
  }
}

// Index of the block's best (v, i) (-1 when no thread has a candidate); every thread gets it.
// Synchronises the block.
__device__ int BlockArgMax(float v, int i, float* scratch_v, int* scratch_i) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  WarpArgMax(v, i);
  __syncthreads();  // the previous call's readers are done with the scratch
  if (lane == 0) scratch_v[warp] = v, scratch_i[warp] = i;
  __syncthreads();
  const int warps = blockDim.x >> 5;
  v = lane < warps ? scratch_v[lane] : 0.0f;
  i = lane < warps ? scratch_i[lane] : -1;
  WarpArgMax(v, i);
  return i;
}

// One block per token. group_score/group_kept[g] are written, and read while being selected, only
// by the thread that owns the index (index % blockDim.x); group_kept is read by all only after a
// barrier. The top k are then selected by the first warp alone from registers: lane l holds the
// choices of experts l, l + 32, ... (kPerLane of them, E <= 32 * kPerLane) and a bit per expert
// already taken; each round scans them in ascending order, so ties go to the lower index.
template <int kPerLane>
__global__ void MoeRouteKernel(TensorView logits, TensorView bias, RouteParams p,
                               TensorView expert_ids, TensorView weights) {
  FollowPriorKernels();
  __shared__ float score[kMaxExperts];
  __shared__ float choice[kMaxExperts];
  __shared__ float group_score[kMaxExperts];
  __shared__ bool group_kept[kMaxExperts];
  __shared__ float scratch_v[32];
  __shared__ int scratch_i[32];
  const int64_t t = blockIdx.x;
  const int E = p.num_experts;
  const float* row = RowF32(logits, t);
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    score[e] = SigmoidF(row[e]);
    choice[e] = score[e] + (bias.data != nullptr ? LoadFlat(bias, e) : 0.0f);
  }
  if (p.num_groups > 1) {
    const int group_size = E / p.num_groups;
    __syncthreads();  // choice[] of every group is written
    for (int g = threadIdx.x; g < p.num_groups; g += blockDim.x) {
      // The sum of the group's two best choices (one when the group has a single expert).
      float best = -INFINITY, second = -INFINITY;
      for (int e = g * group_size; e < (g + 1) * group_size; ++e) {
        const float v = choice[e];
        if (v > best) {
          second = best, best = v;
        } else if (v > second) {
          second = v;
        }
      }
      group_score[g] = group_size >= 2 ? best + second : best;
      group_kept[g] = false;
    }
    for (int round = 0; round < p.top_groups; ++round) {
      float v = 0.0f;
      int i = -1;
      for (int g = threadIdx.x; g < p.num_groups; g += blockDim.x) {
        if (!group_kept[g] && Beats(group_score[g], g, v, i)) v = group_score[g], i = g;
      }
      const int kept = BlockArgMax(v, i, scratch_v, scratch_i);
      if (kept >= 0 && kept % static_cast<int>(blockDim.x) == static_cast<int>(threadIdx.x)) {
        group_kept[kept] = true;
      }
    }
    __syncthreads();  // group_kept[] is complete
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
      if (!group_kept[e / group_size]) choice[e] = -INFINITY;
    }
  }
  // The top k by one warp: no block barrier per round.
  __syncthreads();  // choice[] is complete
  if (threadIdx.x >= 32) return;
  const int lane = static_cast<int>(threadIdx.x);
  float mine_choice[kPerLane];
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int e = lane + 32 * j;
    mine_choice[j] = e < E ? choice[e] : 0.0f;
  }
  uint32_t taken = 0;  // bit j: expert lane + 32 j
  int mine = -1;  // lane s keeps the s-th pick: registers only, no local memory
  for (int s = 0; s < p.top_k; ++s) {
    float v = 0.0f;
    int i = -1;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int e = lane + 32 * j;
      if (e < E && !(taken >> j & 1u) && Beats(mine_choice[j], e, v, i)) v = mine_choice[j], i = e;
    }
    WarpArgMax(v, i);
    if (lane == s) mine = i;
    if (i >= 0 && i % 32 == lane) taken |= 1u << (i / 32);
  }
  // Ids ascending: lane r takes the pick with r smaller picks (the picks are distinct).
  constexpr unsigned kAll = 0xffffffffu;
  int smaller = 0;
  for (int j = 0; j < p.top_k; ++j) smaller += __shfl_sync(kAll, mine, j) < mine ? 1 : 0;
  int id = -1;
  for (int j = 0; j < p.top_k; ++j) {
    const int pick = __shfl_sync(kAll, mine, j), rank = __shfl_sync(kAll, smaller, j);
    if (rank == lane) id = pick;
  }
  const float value = lane < p.top_k ? (p.biased_weights ? choice[id] : score[id]) : 0.0f;
  float sum = 0.0f;  // in id order, as the CPU sums them
  for (int j = 0; j < p.top_k; ++j) sum += __shfl_sync(kAll, value, j);
  if (lane >= p.top_k) return;
  const float denominator = p.renormalize ? sum + 1e-20f : 1.0f;
  static_cast<int32_t*>(expert_ids.data)[t * expert_ids.row_stride + lane] = id;
  RowF32(weights, t)[lane] = value / denominator * p.scaling;
}

// One thread per element (ElementBlocks); out[t, c] += w[t, s] * slot_out[t*k + s, c] for
// s = 0, 1, ..., rounding each product and sum separately (no FMA) as the CPU does.
// Slot: float or __nv_bfloat16, slot_out's element type.
template <typename Slot>
__global__ void MoeCombineKernel(TensorView slot_out, TensorView weights, TensorView out) {
  FollowPriorKernels();
  int64_t t, c;
  if (!ThisElement(out.cols, t, c)) return;
  const int64_t k = weights.cols;
  const float* w = RowF32(weights, t);
  float* o = RowF32(out, t);
  const auto* slots = static_cast<const Slot*>(slot_out.data) + t * k * slot_out.row_stride + c;
  float acc = o[c];
  for (int64_t s = 0; s < k; ++s) {
    acc = __fadd_rn(acc, __fmul_rn(w[s], static_cast<float>(slots[s * slot_out.row_stride])));
  }
  o[c] = acc;
}

}  // namespace

int LaunchMoeRoute(TensorView router_logits, TensorView correction_bias, const MoeRouting& routing,
                   TensorView expert_ids, TensorView weights, Stream stream) {
  const int64_t T = router_logits.rows;
  const int64_t E = router_logits.cols;
  const int64_t k = routing.top_k;
  if (router_logits.dtype != DType::kF32 || expert_ids.dtype != DType::kI32 ||
      weights.dtype != DType::kF32) {
    return kInvalid;
  }
  if (E < 1 || E > kMaxExperts || k < 1 || k > kMaxTopK || k > E) return kInvalid;
  if (expert_ids.rows != T || expert_ids.cols != k || weights.rows != T || weights.cols != k) {
    return kInvalid;
  }
  if (routing.num_groups < 1 || E % routing.num_groups != 0) return kInvalid;
  if (routing.num_groups > 1 &&
      (routing.top_groups < 1 || routing.top_groups > routing.num_groups)) {
    return kInvalid;
  }
  if (correction_bias.data != nullptr && correction_bias.numel() != E) return kInvalid;
  if (T == 0) return 0;
  if (!FitsGridX(T)) return kInvalid;
  RouteParams p;
  p.num_experts = static_cast<int>(E);
  p.top_k = static_cast<int>(k);
  p.num_groups = static_cast<int>(routing.num_groups);
  p.top_groups = static_cast<int>(routing.top_groups);
  p.renormalize = routing.renormalize;
  p.biased_weights = routing.biased_weights;
  p.scaling = routing.scaling;
  const dim3 grid(static_cast<unsigned>(T)), block(RowBlockThreads(E, 256));
  static_assert(kMaxExperts <= 32 * 32, "one bit per expert a lane holds");
  return E <= 32 * 8 ? LaunchAfterPrior(MoeRouteKernel<8>, grid, block, 0, stream, router_logits,
                                        correction_bias, p, expert_ids, weights)
                     : LaunchAfterPrior(MoeRouteKernel<32>, grid, block, 0, stream, router_logits,
                                        correction_bias, p, expert_ids, weights);
}

int LaunchMoeCombine(TensorView slot_out, TensorView weights, TensorView out, Stream stream) {
  const int64_t k = weights.cols;
  if ((slot_out.dtype != DType::kF32 && slot_out.dtype != DType::kBF16) || weights.dtype != DType::kF32 ||
      out.dtype != DType::kF32) {
    return kInvalid;
  }
  if (weights.rows != out.rows || slot_out.rows != out.rows * k || slot_out.cols != out.cols) {
    return kInvalid;
  }
  if (out.rows == 0 || out.cols == 0 || k == 0) return 0;
  const unsigned blocks = ElementBlocks(out.rows, out.cols);
  if (blocks == 0) return kInvalid;
  const auto kernel = slot_out.dtype == DType::kBF16 ? MoeCombineKernel<__nv_bfloat16> : MoeCombineKernel<float>;
  return LaunchAfterPrior(kernel, dim3(blocks), dim3(kElementThreads), 0, stream, slot_out, weights, out);
}

}  // namespace deltaserve::kernels::cuda
