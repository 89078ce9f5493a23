// Sampling on the device (Backend::SampleRows): one block per row follows kernels::SampleRow's
// rules (kernels/sampling.h) without sorting. The k-th largest logit and the nucleus boundary are
// found by radix selection (four 8-bit digits of order-preserving keys, histograms in shared
// memory); ties at either boundary are kept in ascending id order, which the block walks as
// warps over contiguous id ranges, each lane one id of a 32-id step. The nucleus masses are
// summed in 2^-40 fixed point (integer atomics, so the result does not depend on thread
// timing); totals and the final cumulative sum are in double, in a fixed order. Where the
// host's order of summation or its exp() rounding differ, a draw can differ from the host's
// only when it falls within rounding of a boundary between two tokens.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/launchers.h"

namespace deltaserve::kernels::cuda {
namespace {

constexpr int kThreads = 512, kWarps = kThreads / 32;
constexpr unsigned kAll = 0xffffffffu;
constexpr double kFixedScale = 1099511627776.0;  // 2^40; weights are at most 1

__device__ __forceinline__ uint32_t LogitKey(float x) {
  const uint32_t bits = __float_as_uint(x);
  return (bits & 0x80000000u) != 0 ? ~bits : bits | 0x80000000u;
}
__device__ __forceinline__ uint64_t Fixed(float w) {
  return static_cast<uint64_t>(static_cast<double>(w) * kFixedScale);
}
__device__ __forceinline__ unsigned LanesBelow() {
  unsigned mask;
  asm("mov.u32 %0, %%lanemask_lt;" : "=r"(mask));
  return mask;
}

// What a walk over the row applies, filled in as the passes find it (no initialisers: it lives
// in shared memory; Filter{} zeroes it).
struct Filter {
  float max_logit, temperature, min_p;
  bool top_k;  // keep keys > kth_key, and the first kth_ties equal to it
  uint32_t kth_key;
  int64_t kth_ties;
  bool top_p;  // keep weights > boundary, and the first boundary_ties equal to it
  uint32_t boundary_bits;
  int64_t boundary_ties;
};

struct Shared {
  Filter filter;
  unsigned int counts[256];
  unsigned long long masses[256];
  int64_t tie_base[2][kWarps];  // per warp: ties of each boundary in lower warps' ranges
  double warp_total[kWarps];
  int64_t warp_last[kWarps];
  int64_t warp_count[kWarps];
  float best_value[kWarps];
  int64_t best_index[kWarps];
  double target;
  int64_t token;
};

// Which filters a walk applies: the raw weights of the kept logits (kTopK), then the nucleus and
// min_p as well (kAll).
enum Stage { kLogits = 0, kTopK = 1, kEvery = 2 };

// Warp w's ids [w * chunk, (w + 1) * chunk) of the row's n, 32 at a time in ascending order:
// visit(i, live, x, w) with the logit and its weight after the stage's filters, on every lane.
template <int kStage, typename Visit>
__device__ __forceinline__ void WalkRange(const float* row, int64_t n, int64_t chunk, const Shared& sh,
                                          Visit visit) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const Filter& f = sh.filter;
  const int64_t lo = warp * chunk, hi = lo + chunk < n ? lo + chunk : n;
  int64_t rank_k = kStage >= kTopK ? sh.tie_base[0][warp] : 0;
  int64_t rank_p = kStage >= kEvery ? sh.tie_base[1][warp] : 0;
  for (int64_t i0 = lo; i0 < hi; i0 += 32) {
    const int64_t i = i0 + lane;
    const bool live = i < hi;
    const float x = live ? __ldg(row + i) : -INFINITY;
    float w = 0.0f;
    if (kStage >= kTopK) {
      bool keep = x != -INFINITY;
      if (f.top_k) {
        const uint32_t key = LogitKey(x);
        const bool tie = live && key == f.kth_key;
        const unsigned ties = __ballot_sync(kAll, tie);
        const int64_t rank = rank_k + __popc(ties & LanesBelow());
        rank_k += __popc(ties);
        keep = keep && (key > f.kth_key || (tie && rank < f.kth_ties));
      }
      w = keep ? expf((x - f.max_logit) / f.temperature) : 0.0f;
    }
    if (kStage >= kEvery) {
      if (f.top_p) {
        const uint32_t bits = __float_as_uint(w);
        const bool tie = w > 0.0f && bits == f.boundary_bits;
        const unsigned ties = __ballot_sync(kAll, tie);
        const int64_t rank = rank_p + __popc(ties & LanesBelow());
        rank_p += __popc(ties);
        if (!(bits > f.boundary_bits || (tie && rank < f.boundary_ties))) w = 0.0f;
      }
      if (w < f.min_p) w = 0.0f;
    }
    visit(i, live, x, w);
  }
}

// Per-warp sums of `value` into out[warp] in a fixed order (lanes' strided sums, then a tree).
template <typename T>
__device__ __forceinline__ T WarpTotal(T value) {
  for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_xor_sync(kAll, value, offset);
  return value;
}

// The digit of the histogram (sh.counts, or sh.masses when by_mass) whose bucket holds the
// `want`-th largest (by count or by mass) of what it counted, buckets above taken first; *want
// becomes what remains to take inside it. Buckets with nothing counted are passed over. One
// thread; the caller's want never exceeds what was counted, so a bucket is always found.
__device__ __forceinline__ uint32_t PickDigit(const Shared& sh, bool by_mass, unsigned long long* want) {
  uint32_t digit = 0;
  for (int b = 255; b >= 0; --b) {
    if (sh.counts[b] == 0) continue;
    digit = static_cast<uint32_t>(b);
    const unsigned long long in = by_mass ? sh.masses[b] : sh.counts[b];
    if (in >= *want) break;
    *want -= in;
  }
  return digit;
}

__global__ void __launch_bounds__(kThreads)
    SampleRowsKernel(TensorView x, const RowSampling* draws, TensorView ids) {
  __shared__ Shared sh;
  const int64_t r = blockIdx.x, n = x.cols;
  const float* row = static_cast<const float*>(x.data) + r * x.row_stride;
  const RowSampling draw = draws[r];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t chunk = ((n + kWarps - 1) / kWarps + 31) / 32 * 32;
  int32_t* out = static_cast<int32_t*>(ids.data) + r * ids.row_stride;

  // The largest logit (lowest id on ties) and the rejection rule.
  float best = 0.0f;
  int64_t best_index = -1;
  bool bad = false;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) {
    const float v = __ldg(row + i);
    if (isnan(v) || v == INFINITY) {
      bad = true;
    } else if (v != -INFINITY && (best_index < 0 || v > best)) {
      best = v;
      best_index = i;
    }
  }
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float v = __shfl_xor_sync(kAll, best, offset);
    const int64_t i = __shfl_xor_sync(kAll, best_index, offset);
    if (i >= 0 && (best_index < 0 || v > best || (v == best && i < best_index))) {
      best = v;
      best_index = i;
    }
  }
  if (lane == 0) {
    sh.best_value[warp] = best;
    sh.best_index[warp] = best_index;
  }
  if (__syncthreads_or(bad)) {
    if (threadIdx.x == 0) *out = -1;
    return;
  }
  if (threadIdx.x == 0) {
    for (int w = 0; w < kWarps; ++w) {
      const float v = sh.best_value[w];
      const int64_t i = sh.best_index[w];
      if (i >= 0 && (best_index < 0 || v > best || (v == best && i < best_index))) {
        best = v;
        best_index = i;
      }
    }
    sh.filter = Filter{};
    sh.filter.max_logit = best;
    sh.filter.temperature = draw.temperature;
    sh.filter.min_p = draw.min_p;
    sh.token = best_index;
    for (int w = 0; w < kWarps; ++w) sh.tie_base[0][w] = sh.tie_base[1][w] = 0;
  }
  __syncthreads();
  if (sh.token < 0 || !(draw.temperature > 0.0f)) {  // nothing but -inf (-1), or greedy
    if (threadIdx.x == 0) *out = static_cast<int32_t>(sh.token);
    return;
  }

  // Top-k: the k-th largest key, and how many of its ties (in id order) stay.
  if (draw.top_k > 0 && draw.top_k < n) {
    uint32_t prefix = 0, mask = 0;
    unsigned long long want = static_cast<unsigned long long>(draw.top_k);
    for (int shift = 24; shift >= 0; shift -= 8) {
      if (threadIdx.x < 256) sh.counts[threadIdx.x] = 0;
      __syncthreads();
      for (int64_t i = threadIdx.x; i < n; i += kThreads) {
        const uint32_t key = LogitKey(__ldg(row + i));
        if ((key & mask) == prefix) atomicAdd(&sh.counts[(key >> shift) & 255u], 1u);
      }
      __syncthreads();
      if (threadIdx.x == 0) {
        prefix |= PickDigit(sh, false, &want) << shift;
        sh.filter.kth_key = prefix;
        sh.filter.kth_ties = static_cast<int64_t>(want);
      }
      mask |= 255u << shift;
      __syncthreads();
      prefix = sh.filter.kth_key;
      want = static_cast<unsigned long long>(sh.filter.kth_ties);
    }
    // A k-th largest of -inf: at most k unmasked tokens, nothing to drop.
    if (sh.filter.kth_key != LogitKey(-INFINITY)) {
      int64_t ties = 0;
      WalkRange<kLogits>(row, n, chunk, sh, [&](int64_t, bool live, float v, float) {
        ties += __popc(__ballot_sync(kAll, live && LogitKey(v) == prefix));
      });
      if (lane == 0) sh.warp_count[warp] = ties;
      __syncthreads();
      if (threadIdx.x == 0) {
        int64_t below = 0;
        for (int w = 0; w < kWarps; ++w) {
          sh.tie_base[0][w] = below;
          below += sh.warp_count[w];
        }
        sh.filter.top_k = true;
      }
      __syncthreads();
    }
  }

  // Top-p: the nucleus boundary by mass, over the weights top-k kept.
  if (draw.top_p < 1.0f) {
    unsigned long long total = 0;
    WalkRange<kTopK>(row, n, chunk, sh, [&](int64_t, bool, float, float w) { total += Fixed(w); });
    total = WarpTotal(total);
    if (lane == 0) sh.warp_count[warp] = static_cast<int64_t>(total);
    __syncthreads();
    uint32_t prefix = 0, mask = 0;
    unsigned long long want = 0;
    if (threadIdx.x == 0) {
      unsigned long long sum = 0;
      for (int w = 0; w < kWarps; ++w) sum += static_cast<unsigned long long>(sh.warp_count[w]);
      want = static_cast<unsigned long long>(static_cast<double>(draw.top_p) * static_cast<double>(sum));
      if (want == 0) want = 1;  // the largest weight (1) always stays
    }
    for (int shift = 24; shift >= 0; shift -= 8) {
      if (threadIdx.x < 256) {
        sh.counts[threadIdx.x] = 0;
        sh.masses[threadIdx.x] = 0;
      }
      __syncthreads();
      WalkRange<kTopK>(row, n, chunk, sh, [&](int64_t, bool, float, float w) {
        const uint32_t bits = __float_as_uint(w);
        if (w > 0.0f && (bits & mask) == prefix) {
          atomicAdd(&sh.masses[(bits >> shift) & 255u], Fixed(w));
          atomicAdd(&sh.counts[(bits >> shift) & 255u], 1u);
        }
      });
      __syncthreads();
      if (threadIdx.x == 0) {
        // want stays >= 1, so buckets of weights below 2^-40 (no mass) are never picked.
        prefix |= PickDigit(sh, true, &want) << shift;
        sh.filter.boundary_bits = prefix;
        sh.warp_count[0] = static_cast<int64_t>(want);
      }
      mask |= 255u << shift;
      __syncthreads();
      prefix = sh.filter.boundary_bits;
    }
    // Ties at the boundary join in id order while the mass is short of the target:
    // ceil(still wanted / their weight) of them.
    int64_t ties = 0;
    WalkRange<kTopK>(row, n, chunk, sh, [&](int64_t, bool, float, float w) {
      ties += __popc(__ballot_sync(kAll, w > 0.0f && __float_as_uint(w) == prefix));
    });
    __syncthreads();  // warp_count[0] (the remaining want) is read below before being overwritten
    const auto still = static_cast<unsigned long long>(sh.warp_count[0]);
    __syncthreads();
    if (lane == 0) sh.warp_count[warp] = ties;
    __syncthreads();
    if (threadIdx.x == 0) {
      int64_t below = 0;
      for (int w = 0; w < kWarps; ++w) {
        sh.tie_base[1][w] = below;
        below += sh.warp_count[w];
      }
      const unsigned long long each = Fixed(__uint_as_float(prefix));
      const unsigned long long needed = each > 0 ? (still + each - 1) / each : static_cast<unsigned long long>(below);
      sh.filter.boundary_ties = static_cast<int64_t>(needed < static_cast<unsigned long long>(below) ? needed : below);
      sh.filter.top_p = true;
    }
    __syncthreads();
  }

  // The draw: the first id whose cumulative weight exceeds uniform * total.
  double sum = 0.0;
  int64_t last = -1;
  WalkRange<kEvery>(row, n, chunk, sh, [&](int64_t i, bool, float, float w) {
    sum += w;
    if (w > 0.0f) last = i;
  });
  sum = WarpTotal(sum);
  for (int offset = 16; offset > 0; offset >>= 1) {
    const int64_t other = __shfl_xor_sync(kAll, last, offset);
    last = other > last ? other : last;
  }
  if (lane == 0) {
    sh.warp_total[warp] = sum;
    sh.warp_last[warp] = last;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int w = 0; w < kWarps; ++w) total += sh.warp_total[w];
    const double target = draw.uniform * total;
    double before = 0.0;
    int chosen = -1;
    for (int w = 0; w < kWarps; ++w) {
      if (sh.warp_total[w] > 0.0 && before + sh.warp_total[w] > target) {
        chosen = w;
        break;
      }
      before += sh.warp_total[w];
    }
    if (chosen < 0) {  // rounding left the target at the very end: the last kept token
      for (int w = 0; w < kWarps; ++w) sh.token = sh.warp_last[w] > sh.token ? sh.warp_last[w] : sh.token;
    }
    sh.warp_count[0] = chosen;
    sh.target = target - before;
  }
  __syncthreads();
  const int chosen = static_cast<int>(sh.warp_count[0]);
  if (warp == chosen) {
    double cdf = 0.0;
    int64_t found = -1, last_kept = -1;
    WalkRange<kEvery>(row, n, chunk, sh, [&](int64_t i, bool, float, float w) {
      double scan = w;  // inclusive scan over the lanes
      for (int offset = 1; offset < 32; offset <<= 1) {
        const double up = __shfl_up_sync(kAll, scan, offset);
        if (lane >= offset) scan += up;
      }
      const unsigned crossed = __ballot_sync(kAll, w > 0.0f && cdf + scan > sh.target);
      if (found < 0 && crossed != 0) found = i - lane + (__ffs(crossed) - 1);
      const unsigned kept = __ballot_sync(kAll, w > 0.0f);
      if (found < 0 && kept != 0) last_kept = i - lane + (31 - __clz(kept));
      cdf += __shfl_sync(kAll, scan, 31);
    });
    if (lane == 0) *out = static_cast<int32_t>(found >= 0 ? found : last_kept);
  } else if (chosen < 0 && threadIdx.x == 0) {
    *out = static_cast<int32_t>(sh.token);
  }
}

}  // namespace

int LaunchSampleRows(TensorView x, const RowSampling* draws, TensorView ids, Stream stream) {
  if (x.dtype != DType::kF32 || ids.dtype != DType::kI32 || ids.rows != x.rows || ids.cols != 1 ||
      x.cols > 0x7fffffffLL || x.cols <= 0) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (x.rows == 0) return 0;
  if (draws == nullptr || !FitsGridX(x.rows)) return static_cast<int>(cudaErrorInvalidValue);
  SampleRowsKernel<<<static_cast<unsigned>(x.rows), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(x, draws, ids);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace deltaserve::kernels::cuda
