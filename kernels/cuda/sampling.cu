// Sampling on the device (Backend::SampleRows): one block per row follows kernels::SampleRow's
// rules (kernels/sampling.h) without sorting. The k-th largest logit and the nucleus boundary are
// found by selection over order-preserving keys: histograms of 2048 buckets in shared memory over
// the range of keys still in play, each round's buckets as wide as that range needs (so a narrow
// distribution spreads over them too), the bucket picked by one warp, until one key is left.
// Ties at either boundary are kept in ascending id order: each warp walks a contiguous range of
// ids, four per lane per step (one float4) with four steps' loads in flight, so a lane's rank
// among ties is a warp prefix sum. The nucleus masses are summed in 2^-40 fixed point (integer
// atomics: the result does not depend on thread timing); the final sum is in double in a fixed
// order, kept per segment of the range, so the token is found by re-reading one segment. The
// host's exp() and summation order differ, so a draw can differ from the host's only where it
// falls within rounding of a boundary.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/launchers.h"

namespace deltaserve::kernels::cuda {
namespace {

constexpr int kThreads = 512, kWarps = kThreads / 32;
constexpr int kGroup = 4;           // consecutive ids per lane per step (one float4)
constexpr int kStep = 32 * kGroup;  // ids per warp per step
constexpr int kUnroll = 4;          // steps whose loads are in flight together
constexpr int kSegments = 64;       // per warp: the final sums kept for the search
constexpr int kBucketBits = 11, kBuckets = 1 << kBucketBits;
constexpr unsigned kAll = 0xffffffffu;
constexpr double kFixedScale = 1099511627776.0;  // 2^40; weights are at most 1

__device__ __forceinline__ uint32_t LogitKey(float x) {
  const uint32_t bits = __float_as_uint(x);
  return (bits & 0x80000000u) != 0 ? ~bits : bits | 0x80000000u;
}
__device__ __forceinline__ unsigned long long Fixed(float w) {
  return static_cast<unsigned long long>(static_cast<double>(w) * kFixedScale);
}

template <typename T>
__device__ __forceinline__ T WarpTotal(T value) {
  for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_xor_sync(kAll, value, offset);
  return value;
}
// The sum of `value` over the lanes below this one; *total over all 32.
template <typename T>
__device__ __forceinline__ T WarpExclusive(T value, T* total) {
  const int lane = threadIdx.x & 31;
  T inclusive = value;
  for (int offset = 1; offset < 32; offset <<= 1) {
    const T below = __shfl_up_sync(kAll, inclusive, offset);
    if (lane >= offset) inclusive += below;
  }
  *total = __shfl_sync(kAll, inclusive, 31);
  return inclusive - value;
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
  unsigned int counts[kBuckets];
  unsigned long long masses[kBuckets];
  int64_t tie_base[2][kWarps];  // per warp: ties of each boundary in lower warps' ranges
  unsigned long long warp_sum[kWarps];
  double warp_total[kWarps];
  int64_t warp_last[kWarps];
  float best_value[kWarps];
  int64_t best_index[kWarps];
  uint32_t low_key[kWarps];   // the smallest key a warp saw (of finite logits, or of weights > 0)
  uint32_t high_key[kWarps];  // and the largest (of weights > 0)
  double segment[kWarps][kSegments];
  int32_t segment_rank[2][kWarps][kSegments];  // the tie ranks (top-k, top-p) where it starts
  // Selection: keys in [lo, hi] are still in play; want is what remains to take among them.
  unsigned long long want;
  uint32_t lo, hi;
  int64_t token;
  double target;
  int chosen_warp;
};

// How the row's n ids are split: warp w walks [w * chunk, (w + 1) * chunk) in steps of kStep,
// a segment being steps_per_segment steps.
struct Geometry {
  int64_t n, chunk, steps_per_segment;
  bool vec4;  // the row is 16-byte aligned: steps load float4
};

__device__ __forceinline__ float4 LoadGroup(const float* row, int64_t id0, int64_t n, bool vec4) {
  if (vec4 && id0 + 3 < n) return __ldg(reinterpret_cast<const float4*>(row + id0));
  float v[kGroup];
#pragma unroll
  for (int e = 0; e < kGroup; ++e) v[e] = id0 + e < n ? __ldg(row + id0 + e) : -INFINITY;
  return make_float4(v[0], v[1], v[2], v[3]);
}

// Which filters a walk applies: none (the logits), those of top-k (kTopK), or all (kEvery).
enum Stage { kLogits = 0, kTopK = 1, kEvery = 2 };

// Keeps `tie` elements while their rank (from *rank, counted over the warp in id order) is
// below `limit`; advances *rank past this step's ties. Every lane calls it.
__device__ __forceinline__ void KeepFirstTies(const bool (&tie)[kGroup], int64_t limit, int64_t* rank,
                                              bool (&keep)[kGroup]) {
  int count = 0;
#pragma unroll
  for (int e = 0; e < kGroup; ++e) count += tie[e] ? 1 : 0;
  int total;
  int64_t mine = *rank + WarpExclusive(count, &total);
#pragma unroll
  for (int e = 0; e < kGroup; ++e) {
    if (tie[e]) keep[e] = mine++ < limit;
  }
  *rank += total;
}

// The weights of a lane's four logits after the stage's filters; *rank_k and *rank_p count the
// warp's ties at the top-k and nucleus boundaries in id order (every lane calls it).
template <int kStage>
__device__ __forceinline__ void Filtered(const float (&x)[kGroup], const Filter& f, int64_t* rank_k,
                                         int64_t* rank_p, float (&w)[kGroup]) {
#pragma unroll
  for (int e = 0; e < kGroup; ++e) w[e] = 0.0f;
  if (kStage >= kTopK) {
    bool keep[kGroup];
#pragma unroll
    for (int e = 0; e < kGroup; ++e) keep[e] = x[e] != -INFINITY;
    if (f.top_k) {
      bool tie[kGroup];
#pragma unroll
      for (int e = 0; e < kGroup; ++e) {
        const uint32_t key = LogitKey(x[e]);
        tie[e] = key == f.kth_key;  // never -inf: top_k is off when the k-th largest is
        keep[e] = keep[e] && key > f.kth_key;
      }
      KeepFirstTies(tie, f.kth_ties, rank_k, keep);
    }
#pragma unroll
    for (int e = 0; e < kGroup; ++e) w[e] = keep[e] ? expf((x[e] - f.max_logit) / f.temperature) : 0.0f;
  }
  if (kStage >= kEvery) {
    if (f.top_p) {
      bool tie[kGroup], keep[kGroup];
#pragma unroll
      for (int e = 0; e < kGroup; ++e) {
        const uint32_t bits = __float_as_uint(w[e]);
        tie[e] = w[e] > 0.0f && bits == f.boundary_bits;
        keep[e] = bits > f.boundary_bits;
      }
      KeepFirstTies(tie, f.boundary_ties, rank_p, keep);
#pragma unroll
      for (int e = 0; e < kGroup; ++e) w[e] = keep[e] ? w[e] : 0.0f;
    }
#pragma unroll
    for (int e = 0; e < kGroup; ++e) w[e] = w[e] < f.min_p ? 0.0f : w[e];
  }
}

// The tie ranks a warp has counted before a step.
struct Ranks {
  int64_t k, p;
};

// This warp's range in steps: visit(id0, step, x, w, ranks) with the lane's four ids from id0
// (those at or past n hold -inf and weight 0), their logits, their weights after the stage's
// filters and the ranks before the step.
template <int kStage, typename Visit>
__device__ __forceinline__ void WalkRange(const float* row, const Geometry& g, const Shared& sh, Visit visit) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t lo = warp * g.chunk, hi = lo + g.chunk < g.n ? lo + g.chunk : g.n;
  Ranks ranks{kStage >= kTopK ? sh.tie_base[0][warp] : 0, kStage >= kEvery ? sh.tie_base[1][warp] : 0};
  for (int64_t s0 = lo; s0 < hi; s0 += kStep * kUnroll) {
    float4 loaded[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) loaded[u] = LoadGroup(row, s0 + u * kStep + kGroup * lane, hi, g.vec4);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (s0 + u * kStep >= hi) break;  // warp-uniform
      const float x[kGroup] = {loaded[u].x, loaded[u].y, loaded[u].z, loaded[u].w};
      const Ranks before = ranks;
      float w[kGroup];
      Filtered<kStage>(x, sh.filter, &ranks.k, &ranks.p, w);
      visit(s0 + u * kStep + kGroup * lane, (s0 - lo) / kStep + u, x, w, before);
    }
  }
}

// Keys in [sh.lo, sh.hi] fall into kBuckets buckets of 2^shift keys from sh.lo.
__device__ __forceinline__ int BucketShift(uint32_t lo, uint32_t hi) {
  const uint32_t span = hi - lo;  // keys - 1
  const int bits = span == 0 ? 0 : 32 - __clz(span);
  return bits > kBucketBits ? bits - kBucketBits : 0;
}

// Warp 0: the bucket holding the sh.want-th largest (by count, or by mass) of what the histogram
// counted, buckets above taken first; sh.want becomes what remains inside it and [sh.lo, sh.hi]
// its keys. Lane L sums buckets [kBuckets - 64(L + 1), kBuckets - 64L).
__device__ void PickBucket(Shared& sh, bool by_mass, int shift) {
  constexpr int kPerLane = kBuckets / 32;
  const int lane = threadIdx.x & 31;
  const int top = kBuckets - 1 - kPerLane * lane;
  auto in = [&](int b) -> unsigned long long { return by_mass ? sh.masses[b] : sh.counts[b]; };
  unsigned long long mine = 0;
  for (int b = top; b > top - kPerLane; --b) mine += in(b);
  unsigned long long all;
  const unsigned long long above = WarpExclusive(mine, &all);
  const unsigned long long want = sh.want;
  const unsigned crossing = __ballot_sync(kAll, above < want && above + mine >= want);
  if (lane == __ffs(crossing) - 1) {
    unsigned long long taken = above;
    for (int b = top; b > top - kPerLane; --b) {
      if (taken + in(b) >= want) {
        const uint32_t first = sh.lo + (static_cast<uint32_t>(b) << shift);
        const uint32_t last = first + ((1u << shift) - 1u);
        sh.want = want - taken;
        sh.lo = first;
        sh.hi = last < sh.hi ? last : sh.hi;
        break;
      }
      taken += in(b);
    }
  }
}

// Narrows [sh.lo, sh.hi] to the key of the sh.want-th largest element (by count or by mass;
// key(x, w, &k) false for elements not counted): histogram rounds over buckets as wide as the
// range needs, so a narrow distribution still spreads over them, until one key is left. The whole
// block calls it.
template <int kStage, typename Key>
__device__ void SelectKey(const float* row, const Geometry& g, Shared& sh, bool by_mass, Key key) {
  while (sh.lo != sh.hi) {  // block-uniform: read after a barrier
    const uint32_t lo = sh.lo, hi = sh.hi;
    const int shift = BucketShift(lo, hi);
    for (int b = threadIdx.x; b < kBuckets; b += kThreads) {
      sh.counts[b] = 0;
      sh.masses[b] = 0;
    }
    __syncthreads();
    WalkRange<kStage>(row, g, sh, [&](int64_t id0, int64_t, const float (&x)[kGroup], const float (&w)[kGroup], Ranks) {
#pragma unroll
      for (int e = 0; e < kGroup; ++e) {
        uint32_t k;
        if (id0 + e >= g.n || !key(x[e], w[e], &k) || k < lo || k > hi) continue;
        const uint32_t b = (k - lo) >> shift;
        atomicAdd(&sh.counts[b], 1u);
        if (by_mass) atomicAdd(&sh.masses[b], Fixed(w[e]));
      }
    });
    __syncthreads();
    if (threadIdx.x < 32) PickBucket(sh, by_mass, shift);
    __syncthreads();
  }
}

// Per warp, the count of elements whose key equals sh.lo, into sh.tie_base[which] as the
// counts of lower warps (in id order). The whole block calls it.
template <int kStage, typename Key>
__device__ void CountTies(const float* row, const Geometry& g, Shared& sh, int which, Key key) {
  const uint32_t prefix = sh.lo;
  int64_t ties = 0;
  WalkRange<kStage>(row, g, sh, [&](int64_t id0, int64_t, const float (&x)[kGroup], const float (&w)[kGroup], Ranks) {
#pragma unroll
    for (int e = 0; e < kGroup; ++e) {
      uint32_t k;
      if (id0 + e < g.n && key(x[e], w[e], &k) && k == prefix) ++ties;
    }
  });
  ties = WarpTotal(ties);
  const int warp = threadIdx.x >> 5;
  if ((threadIdx.x & 31) == 0) sh.warp_sum[warp] = static_cast<unsigned long long>(ties);
  __syncthreads();
  if (threadIdx.x == 0) {
    int64_t below = 0;
    for (int w = 0; w < kWarps; ++w) {
      sh.tie_base[which][w] = below;
      below += static_cast<int64_t>(sh.warp_sum[w]);
    }
    sh.warp_sum[0] = static_cast<unsigned long long>(below);  // all ties, for the caller
  }
  __syncthreads();
}

__global__ void __launch_bounds__(kThreads)
    SampleRowsKernel(TensorView x, const RowSampling* draws, TensorView ids) {
  __shared__ Shared sh;
  const int64_t r = blockIdx.x, n = x.cols;
  const float* row = static_cast<const float*>(x.data) + r * x.row_stride;
  const RowSampling draw = draws[r];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int32_t* out = static_cast<int32_t*>(ids.data) + r * ids.row_stride;
  Geometry g;
  g.n = n;
  g.chunk = (n + kWarps * kStep - 1) / (kWarps * kStep) * kStep;
  g.steps_per_segment = (g.chunk / kStep + kSegments - 1) / kSegments;
  g.vec4 = reinterpret_cast<uintptr_t>(row) % 16 == 0;

  // The largest logit (lowest id on ties) and the rejection rule.
  float best = 0.0f;
  int64_t best_index = -1, finite = 0;
  uint32_t low = 0xffffffffu;
  bool bad = false;
  WalkRange<kLogits>(row, g, sh, [&](int64_t id0, int64_t, const float (&v)[kGroup], const float (&)[kGroup], Ranks) {
#pragma unroll
    for (int e = 0; e < kGroup; ++e) {
      if (id0 + e >= n) continue;
      if (isnan(v[e]) || v[e] == INFINITY) {
        bad = true;
      } else if (v[e] != -INFINITY) {
        ++finite;
        low = min(low, LogitKey(v[e]));
        if (best_index < 0 || v[e] > best) {
          best = v[e];
          best_index = id0 + e;
        }
      }
    }
  });
  finite = WarpTotal(finite);
  for (int offset = 16; offset > 0; offset >>= 1) low = min(low, __shfl_xor_sync(kAll, low, offset));
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
    sh.warp_sum[warp] = static_cast<unsigned long long>(finite);
    sh.low_key[warp] = low;
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
    unsigned long long all_finite = 0;
    uint32_t lowest = 0xffffffffu;
    for (int w = 0; w < kWarps; ++w) {
      all_finite += sh.warp_sum[w];
      lowest = min(lowest, sh.low_key[w]);
    }
    // Top-k's search: the k-th largest of the finite logits, when more than k are finite (else
    // nothing is dropped).
    sh.want = static_cast<unsigned long long>(draw.top_k);
    sh.lo = lowest;
    sh.hi = LogitKey(best);
    sh.warp_sum[0] = all_finite;
  }
  __syncthreads();
  if (sh.token < 0 || !(draw.temperature > 0.0f)) {  // nothing but -inf (-1), or greedy
    if (threadIdx.x == 0) *out = static_cast<int32_t>(sh.token);
    return;
  }

  // Top-k: the k-th largest logit key, and how many of its ties (in id order) stay.
  if (draw.top_k > 0 && sh.warp_sum[0] > static_cast<unsigned long long>(draw.top_k)) {
    auto logit_key = [](float v, float, uint32_t* k) {
      *k = LogitKey(v);
      return v != -INFINITY;
    };
    __syncthreads();  // warp_sum[0] is read above before CountTies writes it
    SelectKey<kLogits>(row, g, sh, false, logit_key);
    CountTies<kLogits>(row, g, sh, 0, logit_key);
    if (threadIdx.x == 0) {
      sh.filter.top_k = true;
      sh.filter.kth_key = sh.lo;
      sh.filter.kth_ties = static_cast<int64_t>(sh.want);
    }
    __syncthreads();
  }

  // Top-p: the nucleus boundary by mass, over the weights top-k kept.
  if (draw.top_p < 1.0f) {
    auto weight_key = [](float, float w, uint32_t* k) {
      *k = __float_as_uint(w);
      return w > 0.0f;
    };
    unsigned long long total = 0;
    uint32_t low_bits = 0xffffffffu, high_bits = 0;
    WalkRange<kTopK>(row, g, sh, [&](int64_t, int64_t, const float (&)[kGroup], const float (&w)[kGroup], Ranks) {
#pragma unroll
      for (int e = 0; e < kGroup; ++e) {
        total += Fixed(w[e]);
        if (w[e] > 0.0f) {
          low_bits = min(low_bits, __float_as_uint(w[e]));
          high_bits = max(high_bits, __float_as_uint(w[e]));
        }
      }
    });
    total = WarpTotal(total);
    for (int offset = 16; offset > 0; offset >>= 1) {
      low_bits = min(low_bits, __shfl_xor_sync(kAll, low_bits, offset));
      high_bits = max(high_bits, __shfl_xor_sync(kAll, high_bits, offset));
    }
    __syncthreads();  // the top-k search is done with warp_sum and low_key
    if (lane == 0) {
      sh.warp_sum[warp] = total;
      sh.low_key[warp] = low_bits;
      sh.high_key[warp] = high_bits;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      unsigned long long sum = 0;
      uint32_t lowest = 0xffffffffu, highest = 0;
      for (int w = 0; w < kWarps; ++w) {
        sum += sh.warp_sum[w];
        lowest = min(lowest, sh.low_key[w]);
        highest = max(highest, sh.high_key[w]);
      }
      const auto want = static_cast<unsigned long long>(static_cast<double>(draw.top_p) * static_cast<double>(sum));
      sh.want = want > 0 ? want : 1;  // the largest weight (1) always stays
      sh.lo = lowest;
      sh.hi = highest;
    }
    __syncthreads();
    // sh.want stays >= 1, so buckets of weights below 2^-40 (no mass) are never picked.
    SelectKey<kTopK>(row, g, sh, true, weight_key);
    CountTies<kTopK>(row, g, sh, 1, weight_key);
    if (threadIdx.x == 0) {
      // Ties at the boundary join in id order while the mass is short of the target:
      // ceil(still wanted / their weight) of them.
      const auto ties = static_cast<int64_t>(sh.warp_sum[0]);
      const unsigned long long each = Fixed(__uint_as_float(sh.lo));
      const unsigned long long needed = each > 0 ? (sh.want + each - 1) / each : static_cast<unsigned long long>(ties);
      sh.filter.top_p = true;
      sh.filter.boundary_bits = sh.lo;
      sh.filter.boundary_ties = needed < static_cast<unsigned long long>(ties) ? static_cast<int64_t>(needed) : ties;
    }
    __syncthreads();
  }

  // The draw: the sums per segment, then the first id whose cumulative weight exceeds
  // uniform * total, searched segment by segment and inside one.
  double lane_sum = 0.0, warp_sum = 0.0;
  int64_t last = -1, segment = 0;
  WalkRange<kEvery>(row, g, sh, [&](int64_t id0, int64_t step, const float (&)[kGroup], const float (&w)[kGroup],
                                    Ranks before) {
    if (step % g.steps_per_segment == 0) {  // warp-uniform: a segment starts
      if (step > 0) {
        const double s = WarpTotal(lane_sum);
        if (lane == 0) sh.segment[warp][segment] = s;
        warp_sum += s;
        lane_sum = 0.0;
      }
      segment = step / g.steps_per_segment;
      if (lane == 0) {
        sh.segment_rank[0][warp][segment] = static_cast<int32_t>(before.k);
        sh.segment_rank[1][warp][segment] = static_cast<int32_t>(before.p);
      }
    }
#pragma unroll
    for (int e = 0; e < kGroup; ++e) {
      lane_sum += w[e];
      if (w[e] > 0.0f) last = id0 + e;
    }
  });
  {
    const double s = WarpTotal(lane_sum);
    if (lane == 0) sh.segment[warp][segment] = s;
    warp_sum += s;
  }
  for (int offset = 16; offset > 0; offset >>= 1) {
    const int64_t other = __shfl_xor_sync(kAll, last, offset);
    last = other > last ? other : last;
  }
  const int64_t segments_here = segment + 1;  // warp-uniform; 0 sums for a warp past n
  if (lane == 0) {
    sh.warp_total[warp] = warp_sum;
    sh.warp_last[warp] = last;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int w = 0; w < kWarps; ++w) total += sh.warp_total[w];
    double target = draw.uniform * total;
    sh.chosen_warp = -1;
    for (int w = 0; w < kWarps && sh.chosen_warp < 0; ++w) {
      if (sh.warp_total[w] > 0.0 && target < sh.warp_total[w]) {
        sh.chosen_warp = w;
      } else {
        target -= sh.warp_total[w];
      }
    }
    if (sh.chosen_warp < 0) {  // rounding left the target at the very end: the last kept token
      for (int w = 0; w < kWarps; ++w) sh.token = sh.warp_last[w] > sh.token ? sh.warp_last[w] : sh.token;
    }
    sh.target = target;
  }
  __syncthreads();
  const int chosen = sh.chosen_warp;
  if (chosen < 0) {
    if (threadIdx.x == 0) *out = static_cast<int32_t>(sh.token);
    return;
  }
  if (warp != chosen) return;
  // The segment, by lane 0; then the warp re-reads it.
  double target = sh.target;
  int64_t seg = 0;
  if (lane == 0) {
    for (; seg + 1 < segments_here; ++seg) {
      const double s = sh.segment[warp][seg];
      if (s > 0.0 && target < s) break;
      target -= s;
    }
  }
  seg = __shfl_sync(kAll, seg, 0);
  target = __shfl_sync(kAll, target, 0);
  // The segment's steps again, from the tie ranks recorded where it starts.
  const int64_t lo = warp * g.chunk, hi = lo + g.chunk < n ? lo + g.chunk : n;
  const int64_t first = lo + seg * g.steps_per_segment * kStep;
  const int64_t end = first + g.steps_per_segment * kStep < hi ? first + g.steps_per_segment * kStep : hi;
  Ranks ranks{sh.segment_rank[0][warp][seg], sh.segment_rank[1][warp][seg]};
  double cdf = 0.0;
  int64_t found = -1, last_kept = -1;
  for (int64_t s0 = first; s0 < end && found < 0; s0 += kStep) {
    const int64_t id0 = s0 + kGroup * lane;
    const float4 v = LoadGroup(row, id0, end, g.vec4);
    const float x[kGroup] = {v.x, v.y, v.z, v.w};
    float w[kGroup];
    Filtered<kEvery>(x, sh.filter, &ranks.k, &ranks.p, w);
    double mine = 0.0;
#pragma unroll
    for (int e = 0; e < kGroup; ++e) mine += w[e];
    double step_total;
    const double below = WarpExclusive(mine, &step_total);
    const unsigned crossing = __ballot_sync(kAll, mine > 0.0 && cdf + below + mine > target);
    if (crossing != 0) {
      const int owner = __ffs(crossing) - 1;
      if (lane == owner) {
        double c = cdf + below;
        for (int e = 0; e < kGroup && found < 0; ++e) {
          c += w[e];
          if (w[e] > 0.0f && c > target) found = id0 + e;
        }
        for (int e = kGroup - 1; e >= 0 && found < 0; --e) {  // rounding: the lane's last kept
          if (w[e] > 0.0f) found = id0 + e;
        }
      }
      found = __shfl_sync(kAll, found, owner);
    } else {
      const unsigned kept = __ballot_sync(kAll, mine > 0.0);
      if (kept != 0) {
        int64_t mine_last = -1;
        for (int e = 0; e < kGroup; ++e) {
          if (w[e] > 0.0f) mine_last = id0 + e;
        }
        last_kept = __shfl_sync(kAll, mine_last, 31 - __clz(kept));
      }
    }
    cdf += step_total;
  }
  if (lane == 0) *out = static_cast<int32_t>(found >= 0 ? found : last_kept);
}

// One thread per penalty: kernels::PenalizedLogit, each operation rounded on its own (no FMA).
__global__ void ApplyPenaltiesKernel(TensorView x, const LogitPenalty* penalties, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const LogitPenalty p = penalties[i];
  if (p.token < 0 || p.row < 0 || p.row >= x.rows || p.token >= x.cols) return;
  float* logit = RowF32(x, p.row) + p.token;
  const float v = *logit;
  const float repeated = v > 0.0f ? __fdiv_rn(v, p.repetition) : __fmul_rn(v, p.repetition);
  const float frequency = __fmul_rn(p.frequency, static_cast<float>(p.count));
  const float presence = p.count > 0 ? p.presence : 0.0f;
  *logit = __fsub_rn(repeated, __fadd_rn(frequency, presence));
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

int LaunchApplyPenalties(TensorView x, const LogitPenalty* penalties, int64_t n, Stream stream) {
  if (x.dtype != DType::kF32 || n < 0) return static_cast<int>(cudaErrorInvalidValue);
  if (n == 0) return 0;
  constexpr int kThreads = 256;
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  if (penalties == nullptr || !FitsGridX(blocks)) return static_cast<int>(cudaErrorInvalidValue);
  ApplyPenaltiesKernel<<<static_cast<unsigned>(blocks), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(x, penalties,
                                                                                                           n);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace deltaserve::kernels::cuda
