// How fast a batch-1 decode layer of the 48B shape (KDA attention, MoE FFN) could run as one
// persistent kernel whose weight reads never wait for the data the products depend on: one block
// per SM; a producer thread streams every weight byte the SM's consumers will need, in the order
// they need it and across the layer's phases, through a ring of shared-memory stages (bulk
// copies); 16 consumer warps wait only at the layer's dependencies (counters in device memory,
// released by the SMs that produce the data). The engine runs the same layer as ~10 kernels, each
// of which can ask for its weights only once it is resident; this bench measures what the other
// design gives before anyone builds it into the engine (docs/gpu-benchmark.md, "A persistent layer
// kernel, measured before building it").
//
// The layer (per token, as the 48B decode step at batch 1), in the order of the dependencies:
//   - residual add + RMSNorm, on every SM (the residual stream stays in every SM's registers);
//   - the KDA projections of x (12,740 rows x 2,304), rows split evenly over the SMs;
//   - per head (32, each on one SM): its gates' low-rank expansion rows (2 x 128 x 128) and a
//     stand-in for the KDA step with its traffic (the 128 x 128 fp32 state read before the wait,
//     updated and written);
//   - o_proj (2,304 x 4,096); residual add + RMSNorm on every SM; the fp32 router (256 x 2,304);
//   - top-8 routing on every SM (its producer then fetches the routed experts' rows);
//   - the shared and 8 routed experts' gate/up rows (9 x 2 x 1,024 x 2,304), then their down rows
//     (9 x 2,304 x 1,024), each SM summing the slots of the output rows it owns.
// Weights: bf16 (the router fp32), `--experts` per layer, `--layers` layers each with their own
// weights and activations, all run by one launch per pass. A consumer warp takes whole rows (x in
// shared memory, laid out so that a lane's reads are conflict-free).
//
// Cases (us per layer, against the layer's bytes over the copy rate):
//   stream            the same bytes through the same ring, the consumers only releasing stages;
//   tiles_not_summed  consumers walk the rows without loading them (their loop's own cost);
//   tiles_computed    every product summed, no dependency waited for;
//   products          the dependencies kept, the norms, recurrent step and routing reduced to
//                     their signals;
//   layer             everything.
// --trace adds, for the middle layer, when each phase started and ended on the earliest and the
// latest SM. The layer case's products are checked against a plain reference kernel on the first
// and last layers (the exit status is 1 if they differ).
// Prints one JSON line per case.
// Usage: cuda_persistent_layer_bench [--layers N] [--experts E] [--stages S] [--stage-kb K]
//                                    [--in-flight N] [--iters N] [--trace]
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "bench/cuda/bench_support.h"
#include "kernels/cuda/device_utils.cuh"

namespace {

using deltaserve::bench::Check;
using deltaserve::kernels::cuda::ArriveBarrier;
using deltaserve::kernels::cuda::ArriveExpectBytes;
using deltaserve::kernels::cuda::BulkCopyToShared;
using deltaserve::kernels::cuda::InitStageRing;
using deltaserve::kernels::cuda::SiluF;
using deltaserve::kernels::cuda::SigmoidF;
using deltaserve::kernels::cuda::WaitBarrier;
using deltaserve::kernels::cuda::WarpSum;

constexpr int kHidden = 2304;
constexpr int kProjRows = 12740;  // q, k, v (3 x 4,096), f_a, g_a (128 each), beta (32), the rest
constexpr int kKeyDim = 4096;     // 32 heads x 128
constexpr int kHeads = 32;
constexpr int kHeadDim = 128;
constexpr int kFaRow = 3 * kKeyDim, kGaRow = kFaRow + 128, kBetaRow = kGaRow + 128;
constexpr int kExpRows = 2 * kKeyDim;  // f_b, g_b
constexpr int kExpCols = 128;
constexpr int kRouterRows = 256;
constexpr int kInner = 1024;
constexpr int kTopK = 8;
constexpr int kSlots = kTopK + 1;  // the shared expert first
// Consumer warps per SM (measured on an H200: 16 against 8, the layer 94.6 against 96.5 µs and the
// products with their dependencies 76.3 against 79.4). The KDA step's mapping needs a multiple of
// 4 warps dividing 128 threads' parts evenly (8 or 16), and a block holds at most 32 warps.
constexpr int kConsumerWarps = 16;
constexpr int kConsumers = 32 * kConsumerWarps;
constexpr int kThreads = kConsumers + 32;  // and the producer warp
constexpr int kMaxStages = 16;
constexpr int kMaxDownRows = 32;  // down rows of one SM (2,304 over >= 72 SMs)

enum Product : int { kProj, kExp, kOproj, kRouter, kGateUp, kDown };
enum Kind : int { kTile, kNorm1, kNorm2, kKda, kRoute, kCombine };
// Timeline events (consumer thread 0 of each SM, %globaltimer, with --trace).
enum Event : int { kEvNorm1, kEvProjStart, kEvProjEnd, kEvExpStart, kEvKdaStart, kEvKdaEnd, kEvOprojStart,
                   kEvOprojEnd, kEvNorm2, kEvRouterStart, kEvRouterEnd, kEvRoute, kEvGateUpStart, kEvGateUpEnd,
                   kEvDownStart, kEvDownEnd, kEvents };
const char* const kEventNames[kEvents] = {"norm1", "proj_start", "proj_end", "exp_start", "kda_start",
                                          "kda_end", "o_proj_start", "o_proj_end", "norm2", "router_start",
                                          "router_end", "route", "gate_up_start", "gate_up_end", "down_start",
                                          "down_end"};
enum Mode : int { kModeLayer, kModeProducts, kModeStream, kModeTilesComputed, kModeTilesNotSummed, kModes };
// The cases that route no token: the producer takes fixed experts for the routed slots.
__host__ __device__ constexpr bool RoutesNothing(int mode) { return mode != kModeLayer && mode != kModeProducts; }
// Counters per layer: how many SMs (heads, for kKdaDone) are done with a phase.
enum Counter : int { kProjDone, kKdaDone, kOprojDone, kRouterDone, kGateUpDone, kDownDone, kCounters };

__host__ __device__ constexpr int RowBytes(int product) {
  return product == kProj || product == kGateUp ? kHidden * 2
         : product == kExp                      ? kExpCols * 2
         : product == kOproj                    ? kKeyDim * 2
         : product == kRouter                   ? kHidden * 4
                                                : kInner * 2;
}

// One step of an SM's walk through a layer: a tile of consecutive weight rows (gate/up: the same
// rows of both matrices), or a task of the consumers.
struct Item {
  int kind, product, slot;
  int first, last;  // the SM's first / last item of its product
  int row, rows;    // tile: the rows; kKda: the head; kCombine: the SM's down rows
};

struct Weights {
  const uint16_t *proj, *expansion, *oproj, *gate, *up, *down;
  const float *router, *norm;
};

// Per layer, [layers][...] each.
struct Activations {
  float *h_in, *x1, *proj, *kda, *oproj, *h_mid, *x2, *logits, *route_w, *hidden, *out;
  int* route_ids;
  float* state;
  unsigned* counters;
};

struct Params {
  Weights w;
  Activations a;
  const Item* items;  // [sms][max_items]
  const int* item_count;
  int max_items, layers, experts, stages, stage_bytes, mode;
  int in_flight;  // stages the producer keeps in flight at most (issued, not landed)
  unsigned long long* trace;  // [layers][sms][kEvents] or null
};

__device__ __forceinline__ void Stamp(const Params& p, int layer, int event) {
  if (p.trace == nullptr || threadIdx.x != 0) return;
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  p.trace[(static_cast<int64_t>(layer) * gridDim.x + blockIdx.x) * kEvents + event] = t;
}

__device__ __forceinline__ int DoneCounter(int product) {
  return product == kProj ? kProjDone
         : product == kOproj ? kOprojDone
         : product == kRouter ? kRouterDone
                              : kGateUpDone;
}

__device__ __forceinline__ int StartEvent(int product) {
  return product == kProj ? kEvProjStart
         : product == kExp ? kEvExpStart
         : product == kOproj ? kEvOprojStart
         : product == kRouter ? kEvRouterStart
         : product == kGateUp ? kEvGateUpStart
                              : kEvDownStart;
}

__device__ __forceinline__ unsigned LoadAcquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void WaitAtLeast(const unsigned* p, unsigned target) {
  while (LoadAcquire(p) < target) {
  }
}
__device__ __forceinline__ void ConsumerSync() { asm volatile("bar.sync 1, %0;" ::"r"(kConsumers) : "memory"); }

// Consumer thread 0 waits for a counter, then the consumers may read what it covers.
__device__ __forceinline__ void ConsumersWait(const unsigned* counter, unsigned target) {
  if (threadIdx.x == 0) WaitAtLeast(counter, target);
  ConsumerSync();
}
// After the consumers' writes: one release of the counter (the barrier orders the other
// consumers' writes before thread 0's release).
__device__ __forceinline__ void ConsumersSignal(unsigned* counter) {
  ConsumerSync();
  if (threadIdx.x == 0) asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(counter) : "memory");
}

// x into shared memory for the products' 16-byte units of 8 bf16 weights: each `region` floats
// (a slot's hidden row, say) as two halves, the first four activations of every unit in the first
// and the last four in the second, so that lane l's float4 reads of unit l are conflict-free.
__device__ __forceinline__ void StageInput(float* x, const float* src, int n, int region) {
  for (int i = threadIdx.x * 4; i < n; i += kConsumers * 4) {  // n, region: multiples of 8
    const float4 v = __ldcg(reinterpret_cast<const float4*>(src + i));
    const int base = i / region * region, j = i % region, u = j / 8, e = j % 8;
    *reinterpret_cast<float4*>(x + base + (e < 4 ? 0 : region / 2) + u * 4) = v;
  }
  ConsumerSync();
}

constexpr int kNormPer = (kHidden + kConsumers - 1) / kConsumers;  // elements a consumer thread owns

// The consumer thread's elements i = threadIdx.x + j·kConsumers of v (device memory; L2 for what
// other SMs wrote).
__device__ __forceinline__ void LoadOwned(const float* v, float (&out)[kNormPer]) {
#pragma unroll
  for (int j = 0; j < kNormPer; ++j) {
    const int i = threadIdx.x + j * kConsumers;
    out[j] = i < kHidden ? __ldcg(v + i) : 0.0f;
  }
}

// h += add (the residual stream, which every SM keeps in its consumers' registers: no SM reads it
// back from memory), x = RMSNorm(h) · weight (weight loaded by the caller before its wait), by the
// consumers of every SM (each needs x; computing it on every SM saves a dependency across SMs): x
// into shared memory as StageInput lays it out for bf16 rows (and as is into x_plain, if given,
// for the fp32 router). SM 0 also writes h (unless h_out is null) and x to device memory for the
// check.
__device__ void NormTask(float (&h)[kNormPer], const float* add, const float (&weight)[kNormPer], float* h_out,
                         float* x_out, float* x, float* x_plain, float* scratch) {
  float added[kNormPer];
  if (add != nullptr) LoadOwned(add, added);
  float ss = 0.0f;
#pragma unroll
  for (int j = 0; j < kNormPer; ++j) {
    if (add != nullptr) h[j] += added[j];
    ss += h[j] * h[j];
  }
  ss = WarpSum(ss);
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = ss;
  ConsumerSync();
  float total = 0.0f;
  for (int w = 0; w < kConsumerWarps; ++w) total += scratch[w];
  const float scale = rsqrtf(total / kHidden + 1e-6f);
#pragma unroll
  for (int j = 0; j < kNormPer; ++j) {
    const int i = threadIdx.x + j * kConsumers;
    if (i >= kHidden) continue;
    const float v = h[j] * scale * weight[j];
    const int u = i / 8, e = i % 8;
    x[(e < 4 ? 0 : kHidden / 2) + u * 4 + (e & 3)] = v;
    if (x_plain != nullptr) x_plain[i] = v;
    if (blockIdx.x == 0) {
      if (h_out != nullptr) h_out[i] = h[j];
      x_out[i] = v;
    }
  }
  ConsumerSync();
}

// A stand-in for one head's KDA step with its traffic: state S (128 x 128 fp32) decayed per key
// row, u = kᵀS, S += beta·k(v - u)ᵀ, o = qᵀS (q, k L2-normalised), gated by the output gate.
// Thread t: column t % 128 over the rows of part t / 128.
constexpr int kKdaParts = kConsumers / kHeadDim;
constexpr int kKdaRows = kHeadDim / kKdaParts;  // state rows a thread holds

// The thread's state column (KdaStep's layout): private to the head, so read before any wait.
__device__ __forceinline__ void KdaLoadState(const float* state, int head, float (&col)[kKdaRows]) {
  const int t = threadIdx.x, j = t % kHeadDim, part = t / kHeadDim;
  const float* s = state + static_cast<int64_t>(head) * kHeadDim * kHeadDim;
#pragma unroll
  for (int r = 0; r < kKdaRows; ++r) col[r] = s[(part * kKdaRows + r) * kHeadDim + j];
}

__device__ void KdaStep(const float* proj, const float* expansions, float* state, float* out, int head, float* scratch,
                        float (&col)[kKdaRows]) {
  // expansions: this head's f_b rows (128) then its g_b rows (128), in shared memory.
  float* k = scratch;          // 128
  float* q = scratch + 128;    // 128
  float* decay = scratch + 256;
  float* red = scratch + 384;  // kKdaParts x 128
  float* norms = red + kKdaParts * kHeadDim;
  const int t = threadIdx.x, j = t % kHeadDim, part = t / kHeadDim;
  if (t < kHeadDim) {
    k[t] = __ldcg(proj + kKeyDim + head * kHeadDim + t);
    q[t] = __ldcg(proj + head * kHeadDim + t);
    decay[t] = SigmoidF(expansions[t]);
  }
  float* s = state + static_cast<int64_t>(head) * kHeadDim * kHeadDim;
  const float v = __ldcg(proj + 2 * kKeyDim + head * kHeadDim + j);
  const float beta = SigmoidF(__ldcg(proj + kBetaRow + head));
  const float gate = SigmoidF(expansions[kHeadDim + j]);
  ConsumerSync();
  if (t < 64) {
    const float value = t < 32 ? k[t] * k[t] + k[t + 32] * k[t + 32] + k[t + 64] * k[t + 64] + k[t + 96] * k[t + 96]
                               : q[t - 32] * q[t - 32] + q[t] * q[t] + q[t + 32] * q[t + 32] + q[t + 64] * q[t + 64];
    const float sum = WarpSum(value);
    if (t % 32 == 0) norms[t / 32] = rsqrtf(sum + 1e-6f);
  }
  ConsumerSync();
  const float kn = norms[0], qn = norms[1];
  const auto sum_parts = [&] {
    float total = 0.0f;
#pragma unroll
    for (int p = 0; p < kKdaParts; ++p) total += red[p * kHeadDim + j];
    return total;
  };
  float u = 0.0f;
#pragma unroll
  for (int r = 0; r < kKdaRows; ++r) {
    const int i = part * kKdaRows + r;
    col[r] *= decay[i];
    u = fmaf(k[i] * kn, col[r], u);
  }
  red[part * kHeadDim + j] = u;
  ConsumerSync();
  const float delta = beta * (v - sum_parts());
  ConsumerSync();
  float o = 0.0f;
#pragma unroll
  for (int r = 0; r < kKdaRows; ++r) {
    const int i = part * kKdaRows + r;
    col[r] = fmaf(k[i] * kn, delta, col[r]);
    o = fmaf(q[i] * qn, col[r], o);
    s[i * kHeadDim + j] = col[r];
  }
  red[part * kHeadDim + j] = o;
  ConsumerSync();
  if (part == 0) out[head * kHeadDim + j] = sum_parts() * gate;
}

// Top-8 of the sigmoid of the 256 logits, weights renormalised, by the consumers, a thread per
// expert: each warp ranks its 32 (shuffles), its best 8 are the candidates (any of the overall 8
// is among its warp's 8), and the 64 candidates rank each other in shared memory. Slot j gets the
// expert of rank j. SM 0 also writes them to device memory for the check.
__device__ void RouteTask(const float* logits, int experts, int* ids, float* weights, int* ids_out, float* weights_out,
                          float* scratch) {
  static_assert(kRouterRows <= kConsumers && kRouterRows % 32 == 0, "a thread per expert");
  constexpr int kCandidates = kRouterRows / 32 * kTopK;
  const int t = threadIdx.x, lane = t % 32, warp = t / 32;
  float* score = scratch;  // [kCandidates]
  int* expert = reinterpret_cast<int*>(scratch + kCandidates);
  if (t < kRouterRows) {
    const float mine = SigmoidF(__ldcg(logits + t));
    int rank = 0;
    for (int o = 0; o < 32; ++o) {
      const float other = __shfl_sync(0xffffffffu, mine, o);
      rank += other > mine || (other == mine && o < lane) ? 1 : 0;
    }
    if (rank < kTopK) score[warp * kTopK + rank] = mine, expert[warp * kTopK + rank] = t;
  }
  ConsumerSync();
  if (t < kCandidates) {
    const float s = score[t];
    const int e = expert[t];
    int overall = 0;
    for (int c = 0; c < kCandidates; ++c) {
      const float other = score[c];
      overall += other > s || (other == s && expert[c] < e) ? 1 : 0;
    }
    if (overall < kTopK) ids[overall] = e, scratch[2 * kCandidates + overall] = s;
  }
  ConsumerSync();
  if (t < kTopK) {
    float sum = 0.0f;
    for (int j = 0; j < kTopK; ++j) sum += scratch[2 * kCandidates + j];
    ids[t] %= experts;
    weights[t] = scratch[2 * kCandidates + t] / sum;
    if (blockIdx.x == 0) ids_out[t] = ids[t], weights_out[t] = weights[t];
  }
}

__device__ const uint16_t* TileRows(const Params& p, int product, int layer, int expert, int row, bool up) {
  const Weights& w = p.w;
  const int64_t l = layer, e = static_cast<int64_t>(layer) * (p.experts + 1) + expert;
  switch (product) {
    case kProj: return w.proj + (l * kProjRows + row) * kHidden;
    case kExp: return w.expansion + (l * kExpRows + row) * kExpCols;
    case kOproj: return w.oproj + (l * kHidden + row) * kKeyDim;
    case kRouter: return reinterpret_cast<const uint16_t*>(w.router + (l * kRouterRows + row) * kHidden);
    case kGateUp: return (up ? w.up : w.gate) + (e * kInner + row) * kHidden;
    default: return w.down + (e * kHidden + row) * kInner;
  }
}

__device__ void Produce(const Params& p, const Item* items, int count, unsigned char* ring, uint64_t* full,
                        uint64_t* empty, const volatile int* route_ids, const volatile int* routed_layers) {
  int n = 0;
  for (int layer = 0; layer < p.layers; ++layer) {
    int ids[kTopK];
    bool routed = false;
    for (int i = 0; i < count; ++i) {
      const Item it = items[i];
      if (it.kind != kTile || it.rows == 0) continue;
      int expert = 0;
      if (it.product == kGateUp || it.product == kDown) {
        if (it.slot == 0) {
          expert = p.experts;
        } else if (RoutesNothing(p.mode)) {
          expert = (it.slot * 37) % p.experts;
        } else {
          if (!routed) {  // this SM's consumers route the layer's token
            while (*routed_layers <= layer) {
            }
            __threadfence_block();
            for (int j = 0; j < kTopK; ++j) ids[j] = route_ids[j];
            routed = true;
          }
          expert = ids[it.slot - 1];
        }
      }
      const int s = n % p.stages;
      if (n >= p.stages) WaitBarrier(&empty[s], ((n / p.stages) - 1) & 1);
      // --in-flight: whether copies queued beyond what keeps the memory busy delay the other
      // accesses (the norms', the routing's, the step's, the counters'); measured: they did not.
      if (n >= p.in_flight) WaitBarrier(&full[(n - p.in_flight) % p.stages], ((n - p.in_flight) / p.stages) & 1);
      const unsigned bytes = static_cast<unsigned>(it.rows * RowBytes(it.product));
      unsigned char* stage = ring + static_cast<size_t>(s) * p.stage_bytes;
      ArriveExpectBytes(&full[s], it.product == kGateUp ? 2 * bytes : bytes);
      BulkCopyToShared(stage, TileRows(p, it.product, layer, expert, it.row, false), bytes, &full[s]);
      if (it.product == kGateUp) {
        BulkCopyToShared(stage + bytes, TileRows(p, it.product, layer, expert, it.row, true), bytes, &full[s]);
      }
      ++n;
    }
  }
}

// A warp's dot product of a row of `units` 16-byte units (8 bf16 weights; 4 fp32 for the router)
// with x as StageInput laid it out (`half`: the offset of the second halves), summed over the warp.
// The 8-weight step is written out here and in ConsumeTile's expansion rows: as one helper
// function ptxas allocated the kernel differently, and the layer took 106 µs instead of 94 on an
// H200 (tiles_computed 75 against 61).
template <bool kF32>
__device__ __forceinline__ float RowDot(const unsigned char* row, int units, const float* x, int half, int lane) {
  float a = 0.0f, b = 0.0f;
#pragma unroll 4
  for (int u = lane; u < units; u += 32) {
    if (kF32) {
      const float4 w = reinterpret_cast<const float4*>(row)[u], v = reinterpret_cast<const float4*>(x)[u];
      a = fmaf(w.x, v.x, a), b = fmaf(w.y, v.y, b), a = fmaf(w.z, v.z, a), b = fmaf(w.w, v.w, b);
    } else {
      const uint4 raw = reinterpret_cast<const uint4*>(row)[u];
      const float4 lo = reinterpret_cast<const float4*>(x)[u], hi = reinterpret_cast<const float4*>(x + half)[u];
      const auto* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
      const float2 w0 = __bfloat1622float2(h[0]), w1 = __bfloat1622float2(h[1]);
      const float2 w2 = __bfloat1622float2(h[2]), w3 = __bfloat1622float2(h[3]);
      a = fmaf(w0.x, lo.x, a), b = fmaf(w0.y, lo.y, b), a = fmaf(w1.x, lo.z, a), b = fmaf(w1.y, lo.w, b);
      a = fmaf(w2.x, hi.x, a), b = fmaf(w2.y, hi.y, b), a = fmaf(w3.x, hi.z, a), b = fmaf(w3.y, hi.w, b);
    }
  }
  return WarpSum(a + b);
}

// One stage's rows dotted with x (the router's with x_plain; the expansions' into `expansions`,
// for the head's recurrent step on this SM): a warp per row (row i of the product goes to warp
// i % kConsumerWarps, so the warps share a product's rows evenly across its stages; the
// expansions' 16-unit rows take 4 lanes each), no barrier; each warp releases the stage once it
// has read its rows. `local` is the tile's first row among the SM's down rows.
__device__ void ConsumeTile(const Params& p, const Item& it, int layer, const unsigned char* stage, const float* x,
                            const float* x_plain, float* partial, float* expansions, int local, uint64_t* empty) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row_bytes = RowBytes(it.product), units = p.mode == kModeTilesNotSummed ? 0 : row_bytes / 16;
  const Activations& a = p.a;
  const int64_t hl = static_cast<int64_t>(layer) * kHidden;
  if (it.product == kExp) {  // 16 units a row: 4 lanes a row, 8 rows a warp at once
    const float* xr = x + (it.row < kKeyDim ? 0 : kExpCols);
    for (int r = warp * 8 + lane / 4; r - lane / 4 < it.rows; r += kConsumerWarps * 8) {
      float acc = 0.0f;
      if (r < it.rows) {
        const unsigned char* row = stage + static_cast<size_t>(r) * row_bytes;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int u = (lane % 4) * 4 + i;
          if (u >= units) break;
          const uint4 raw = reinterpret_cast<const uint4*>(row)[u];
          const float4 lo = reinterpret_cast<const float4*>(xr)[u];
          const float4 hi = reinterpret_cast<const float4*>(xr + kExpCols / 2)[u];
          const auto* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
          const float2 w0 = __bfloat1622float2(h[0]), w1 = __bfloat1622float2(h[1]);
          const float2 w2 = __bfloat1622float2(h[2]), w3 = __bfloat1622float2(h[3]);
          acc = fmaf(w0.x, lo.x, acc), acc = fmaf(w0.y, lo.y, acc), acc = fmaf(w1.x, lo.z, acc);
          acc = fmaf(w1.y, lo.w, acc), acc = fmaf(w2.x, hi.x, acc), acc = fmaf(w2.y, hi.y, acc);
          acc = fmaf(w3.x, hi.z, acc), acc = fmaf(w3.y, hi.w, acc);
        }
      }
      acc += __shfl_xor_sync(0xffffffffu, acc, 1);
      acc += __shfl_xor_sync(0xffffffffu, acc, 2);
      if (lane % 4 == 0 && r < it.rows) {
        const int at = it.row + r;
        expansions[(at < kKeyDim ? 0 : kHeadDim) + at % kHeadDim] = acc;
      }
    }
    __syncwarp();
    if (lane == 0) ArriveBarrier(empty);
    return;
  }
  for (int r = (warp - it.row % kConsumerWarps + kConsumerWarps) % kConsumerWarps; r < it.rows; r += kConsumerWarps) {
    const unsigned char* row = stage + static_cast<size_t>(r) * row_bytes;
    const int at = it.row + r;
    switch (it.product) {
      case kProj: {
        const float y = RowDot<false>(row, units, x, kHidden / 2, lane);
        if (lane == 0) a.proj[static_cast<int64_t>(layer) * kProjRows + at] = y;
        break;
      }
      case kOproj: {
        const float y = RowDot<false>(row, units, x, kKeyDim / 2, lane);
        if (lane == 0) a.oproj[hl + at] = y;
        break;
      }
      case kRouter: {
        const float y = RowDot<true>(row, units, x_plain, 0, lane);
        if (lane == 0) a.logits[layer * kRouterRows + at] = y;
        break;
      }
      case kGateUp: {
        const float g = RowDot<false>(row, units, x, kHidden / 2, lane);
        const float u = RowDot<false>(row + static_cast<size_t>(it.rows) * row_bytes, units, x, kHidden / 2, lane);
        if (lane == 0) a.hidden[(static_cast<int64_t>(layer) * kSlots + it.slot) * kInner + at] = SiluF(g) * u;
        break;
      }
      default: {
        const float y = RowDot<false>(row, units, x + it.slot * kInner, kInner / 2, lane);
        if (lane == 0) partial[it.slot * kMaxDownRows + local + r] = y;
        break;
      }
    }
  }
  __syncwarp();
  if (lane == 0) ArriveBarrier(empty);
}

// Shared memory beside the ring, per SM.
struct Shared {
  float* x;        // the products' input (StageInput's layout)
  float* x_plain;  // the router's
  float* partial;  // [kSlots][kMaxDownRows] down sums of this SM's rows
  float* expansions;  // the head's expansion rows' sums (f_b then g_b), for its recurrent step
  float* scratch;
  int* route_ids;
  float* route_w;
  volatile int* routed_layers;  // layers whose routing is in route_ids (the producer waits on it)
};

__device__ void Consume(const Params& p, const Item* items, int count, const unsigned char* ring, uint64_t* full,
                        uint64_t* empty, const Shared& sh) {
  const int lane = threadIdx.x % 32;
  const bool work = p.mode != kModeStream, tasks = p.mode == kModeLayer;
  const bool tiles_only = p.mode == kModeTilesComputed || p.mode == kModeTilesNotSummed;
  const int first_down_row = items[count - 1].row;  // the last item, kCombine, holds it
  int n = 0;
  float h[kNormPer];  // the residual stream (every SM's consumers hold it)
  if (tasks) LoadOwned(p.a.h_in, h);
  for (int layer = 0; layer < p.layers; ++layer) {
    const Activations& a = p.a;
    unsigned* c = a.counters + layer * kCounters;  // this layer's
    float* proj = a.proj + static_cast<int64_t>(layer) * kProjRows;
    float* hidden = a.hidden + static_cast<int64_t>(layer) * kSlots * kInner;
    const int64_t hl = static_cast<int64_t>(layer) * kHidden;
    for (int i = 0; i < count; ++i) {
      const Item it = items[i];
      const int local = it.row - first_down_row;
      if (tiles_only || !work) {
        if (it.kind == kTile && it.first) Stamp(p, layer, StartEvent(it.product));
        if (it.kind == kTile && it.rows > 0) {
          const int s = n % p.stages;
          WaitBarrier(&full[s], (n / p.stages) & 1);
          if (work) {
            ConsumeTile(p, it, layer, ring + static_cast<size_t>(s) * p.stage_bytes, sh.x, sh.x_plain, sh.partial,
                        sh.expansions, local, &empty[s]);
          } else {
            __syncwarp();
            if (lane == 0) ArriveBarrier(&empty[s]);
          }
          ++n;
        }
        if (it.kind == kTile && it.last) Stamp(p, layer, it.product == kDown ? kEvDownEnd : StartEvent(it.product) + 1);
        if (it.kind == kNorm1) Stamp(p, layer, kEvNorm1);
        continue;
      }
      switch (it.kind) {
        case kNorm1:
        case kNorm2: {
          float weight[kNormPer];  // weights: asked for before the wait
          LoadOwned(p.w.norm + hl, weight);
          const bool first = it.kind == kNorm1;
          if (first && layer > 0) ConsumersWait(c - kCounters + kDownDone, gridDim.x);
          if (!first) ConsumersWait(c + kOprojDone, gridDim.x);
          if (tasks) {
            const float* add = first ? (layer > 0 ? a.out + hl - kHidden : nullptr) : a.oproj + hl;
            // h_in[0] is the input: not written back.
            float* h_out = first ? (layer > 0 ? a.h_in + hl : nullptr) : a.h_mid + hl;
            NormTask(h, add, weight, h_out, (first ? a.x1 : a.x2) + hl, sh.x,
                     first ? nullptr : sh.x_plain, sh.scratch);
          }
          Stamp(p, layer, first ? kEvNorm1 : kEvNorm2);
          continue;
        }
        case kKda: {
          // The head's state first (no wait), then the expansions of its rows (the tiles that
          // follow this item), then the step.
          float col[kKdaRows];
          const int64_t state_offset = static_cast<int64_t>(layer) * kHeads * kHeadDim * kHeadDim;
          if (tasks) KdaLoadState(a.state + state_offset, it.row, col);
          ConsumersWait(c + kProjDone, gridDim.x);
          StageInput(sh.x, proj + kFaRow, 2 * kExpCols, kExpCols);
          Stamp(p, layer, kEvExpStart);
          while (i + 1 < count && items[i + 1].product == kExp && items[i + 1].kind == kTile) {
            const Item e = items[++i];
            const int s = n % p.stages;
            WaitBarrier(&full[s], (n / p.stages) & 1);
            ConsumeTile(p, e, layer, ring + static_cast<size_t>(s) * p.stage_bytes, sh.x, sh.x_plain, sh.partial,
                        sh.expansions, 0, &empty[s]);
            ++n;
          }
          ConsumerSync();  // the expansions' sums
          Stamp(p, layer, kEvKdaStart);
          if (tasks) {
            KdaStep(proj, sh.expansions, a.state + state_offset, a.kda + static_cast<int64_t>(layer) * kKeyDim, it.row,
                    sh.scratch, col);
          }
          ConsumersSignal(c + kKdaDone);
          Stamp(p, layer, kEvKdaEnd);
          continue;
        }
        case kRoute:
          ConsumersWait(c + kRouterDone, gridDim.x);
          if (tasks) {
            RouteTask(a.logits + layer * kRouterRows, p.experts, sh.route_ids, sh.route_w, a.route_ids + layer * kTopK,
                      a.route_w + layer * kTopK, sh.scratch);
          } else if (threadIdx.x < kTopK) {
            sh.route_ids[threadIdx.x] = (threadIdx.x * 31 + layer) % p.experts;
            sh.route_w[threadIdx.x] = 1.0f / kTopK;
          }
          ConsumerSync();
          if (threadIdx.x == 0) {
            __threadfence_block();
            *sh.routed_layers = layer + 1;  // the producer may now fetch the routed experts' rows
          }
          Stamp(p, layer, kEvRoute);
          continue;
        case kCombine: {
          ConsumerSync();  // the last down tile's sums, and the routing's weights
          for (int r = threadIdx.x; r < it.rows; r += kConsumers) {
            float sum = sh.partial[r];
            for (int s = 1; s < kSlots; ++s) sum += sh.route_w[s - 1] * sh.partial[s * kMaxDownRows + r];
            a.out[hl + it.row + r] = sum;
          }
          ConsumersSignal(c + kDownDone);
          Stamp(p, layer, kEvDownEnd);
          continue;
        }
        default: break;
      }
      if (it.first) {
        switch (it.product) {
          case kOproj:
            ConsumersWait(c + kKdaDone, kHeads);
            StageInput(sh.x, a.kda + static_cast<int64_t>(layer) * kKeyDim, kKeyDim, kKeyDim);
            break;
          case kDown:
            ConsumersWait(c + kGateUpDone, gridDim.x);
            StageInput(sh.x, hidden, kSlots * kInner, kInner);
            break;
          default: break;  // x is the norm's, already in shared memory
        }
        Stamp(p, layer, StartEvent(it.product));
      }
      if (it.rows > 0) {
        const int s = n % p.stages;
        WaitBarrier(&full[s], (n / p.stages) & 1);
        ConsumeTile(p, it, layer, ring + static_cast<size_t>(s) * p.stage_bytes, sh.x, sh.x_plain, sh.partial,
                    sh.expansions, local, &empty[s]);
        ++n;
      }
      if (it.last && it.product != kDown && it.product != kExp) {
        ConsumersSignal(c + DoneCounter(it.product));
        Stamp(p, layer, StartEvent(it.product) + 1);
      }
    }
  }
}

constexpr int kRouteOffset = 256;  // after the stage barriers: route ids, weights, the routed layers
constexpr int kXOffset = 384;
constexpr int kXFloats = kSlots * kInner;
constexpr int kScratchFloats = 1280;  // the norm's, the routing's and the recurrent step's, then the expansions' 256
constexpr int kSharedFloats = kXFloats + kHidden + kSlots * kMaxDownRows + kScratchFloats;
constexpr size_t SharedBytes(int stages, int stage_bytes) {
  return kXOffset + kSharedFloats * sizeof(float) + static_cast<size_t>(stages) * stage_bytes;
}

__global__ void __launch_bounds__(kThreads, 1) PersistentLayerKernel(Params p) {
  extern __shared__ __align__(128) unsigned char smem[];
  auto* full = reinterpret_cast<uint64_t*>(smem);
  uint64_t* empty = full + kMaxStages;
  Shared sh;
  sh.route_ids = reinterpret_cast<int*>(smem + kRouteOffset);
  sh.route_w = reinterpret_cast<float*>(sh.route_ids + kTopK);
  sh.routed_layers = reinterpret_cast<volatile int*>(sh.route_w + kTopK);
  sh.x = reinterpret_cast<float*>(smem + kXOffset);
  sh.x_plain = sh.x + kXFloats;
  sh.partial = sh.x_plain + kHidden;
  sh.scratch = sh.partial + kSlots * kMaxDownRows;
  sh.expansions = sh.scratch + kScratchFloats - 2 * kHeadDim;
  unsigned char* ring = reinterpret_cast<unsigned char*>(sh.x + kSharedFloats);
  if (threadIdx.x == 0) *sh.routed_layers = 0;
  InitStageRing(full, empty, p.stages, 1, kConsumerWarps);
  const Item* items = p.items + static_cast<size_t>(blockIdx.x) * p.max_items;
  const int count = p.item_count[blockIdx.x];
  if (threadIdx.x >= kConsumers) {
    if (threadIdx.x == kConsumers) Produce(p, items, count, ring, full, empty, sh.route_ids, sh.routed_layers);
    return;
  }
  Consume(p, items, count, ring, full, empty, sh);
}

// Row r of every product's output, by one warp, straight from device memory (the check).
__global__ void ReferenceRows(const uint16_t* w, const float* wf, const float* x, int rows, int cols, float* y) {
  const int r = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (r >= rows) return;
  float acc = 0.0f;
  for (int k = lane; k < cols; k += 32) {
    const float wv = wf != nullptr ? wf[static_cast<int64_t>(r) * cols + k]
                                   : __bfloat162float(__ushort_as_bfloat16(w[static_cast<int64_t>(r) * cols + k]));
    acc = fmaf(wv, x[k], acc);
  }
  acc = WarpSum(acc);
  if (lane == 0) y[r] = acc;
}

// Weights in ±[2^-6, 2^-5) as RandomBf16 (bench_support.h), from a hash of the index.
__global__ void FillBf16(uint16_t* out, size_t count, unsigned seed) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    unsigned h = static_cast<unsigned>(i) * 2654435761u ^ seed ^ static_cast<unsigned>(i >> 32) * 40503u;
    h ^= h >> 15, h *= 2246822519u, h ^= h >> 13;
    out[i] = static_cast<uint16_t>(((h >> 31) << 15) | ((127 - 6) << 7) | ((h >> 8) & 0x7f));
  }
}
__global__ void FillF32(float* out, size_t count, unsigned seed, float scale, float offset) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    unsigned h = static_cast<unsigned>(i) * 2654435761u ^ seed;
    h ^= h >> 15, h *= 2246822519u, h ^= h >> 13;
    out[i] = offset + scale * (static_cast<float>(h >> 8) / 16777216.0f - 0.5f);
  }
}

template <typename T>
T* Alloc(size_t count) {
  T* p = nullptr;
  Check(cudaMalloc(&p, count * sizeof(T)), "cudaMalloc");
  Check(cudaMemset(p, 0, count * sizeof(T)), "cudaMemset");
  return p;
}

// Each SM's walk through a layer. Rows of every product are split evenly over the SMs, cut into
// tiles of whole rows that fit a stage.
std::vector<std::vector<Item>> BuildItems(int sms, int stage_bytes) {
  std::vector<std::vector<Item>> all(sms);
  for (int sm = 0; sm < sms; ++sm) {
    std::vector<Item>& items = all[sm];
    const auto range = [&](int product, int slot, int r0, int r1, bool first, bool last) {
      const int per = std::max(1, stage_bytes / (RowBytes(product) * (product == kGateUp ? 2 : 1)));
      const size_t begin = items.size();
      for (int r = r0; r < r1 || r == r0; r += per) {
        items.push_back({kTile, product, slot, 0, 0, r, std::min(per, r1 - r)});
      }
      items[begin].first = first ? 1 : 0;
      items.back().last = last ? 1 : 0;
    };
    const auto tiles = [&](int product, int slot, int rows, bool first, bool last) {
      range(product, slot, static_cast<int>(static_cast<int64_t>(rows) * sm / sms),
            static_cast<int>(static_cast<int64_t>(rows) * (sm + 1) / sms), first, last);
    };
    items.push_back({kNorm1, 0, 0, 0, 0, 0, 0});
    tiles(kProj, 0, kProjRows, true, true);
    for (int h = 0; h < kHeads; ++h) {  // the head's expansion rows beside its recurrent step
      if (h * sms / kHeads != sm) continue;
      items.push_back({kKda, 0, 0, 0, 0, h, 0});  // consumes the expansion tiles after it
      range(kExp, 0, h * kHeadDim, (h + 1) * kHeadDim, false, false);
      range(kExp, 0, kKeyDim + h * kHeadDim, kKeyDim + (h + 1) * kHeadDim, false, false);
    }
    tiles(kOproj, 0, kHidden, true, true);
    items.push_back({kNorm2, 0, 0, 0, 0, 0, 0});
    tiles(kRouter, 0, kRouterRows, true, true);
    items.push_back({kRoute, 0, 0, 0, 0, 0, 0});
    for (int s = 0; s < kSlots; ++s) tiles(kGateUp, s, kInner, s == 0, s == kSlots - 1);
    for (int s = 0; s < kSlots; ++s) tiles(kDown, s, kHidden, s == 0, s == kSlots - 1);
    const int d0 = static_cast<int>(static_cast<int64_t>(kHidden) * sm / sms);
    const int d1 = static_cast<int>(static_cast<int64_t>(kHidden) * (sm + 1) / sms);
    items.push_back({kCombine, 0, 0, 0, 0, d0, d1 - d0});
  }
  return all;
}

}  // namespace

int main(int argc, char** argv) {
  int layers = 16, experts = 256, stages = 4, stage_kb = 43, iters = 10, in_flight = 0;
  bool trace = false;
  for (int i = 1; i < argc; ++i) trace = trace || std::strcmp(argv[i], "--trace") == 0;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--layers") == 0) layers = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--experts") == 0) experts = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--stages") == 0) stages = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--stage-kb") == 0) stage_kb = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--iters") == 0) iters = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--in-flight") == 0) in_flight = std::atoi(argv[i + 1]);
  }
  cudaDeviceProp prop{};
  Check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  const int sms = prop.multiProcessorCount;
  const int stage_bytes = stage_kb * 1024;
  if (in_flight <= 0 || in_flight > stages) in_flight = stages;
  const size_t smem = SharedBytes(stages, stage_bytes);
  if (stages < 2 || stages > kMaxStages || stage_bytes < 2 * RowBytes(kGateUp) ||
      (kHidden + sms - 1) / sms > kMaxDownRows || experts < kTopK) {
    std::fprintf(stderr, "unsupported shape: 2..%d stages of at least 9 KB, at least 72 SMs, at least 8 experts\n",
                 kMaxStages);
    return 1;
  }
  if (smem > prop.sharedMemPerBlockOptin) {
    std::fprintf(stderr, "%zu bytes of shared memory a block; this GPU has %zu: fewer or smaller stages\n", smem,
                 prop.sharedMemPerBlockOptin);
    return 1;
  }
  cudaStream_t stream = nullptr;
  Check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  const double copy_tbps = deltaserve::bench::MeasureCopyTbps(stream, prop.name);

  const size_t L = layers, E1 = experts + 1;
  uint16_t *proj = Alloc<uint16_t>(L * kProjRows * kHidden), *expansion = Alloc<uint16_t>(L * kExpRows * kExpCols);
  uint16_t *oproj = Alloc<uint16_t>(L * kHidden * kKeyDim), *gate = Alloc<uint16_t>(L * E1 * kInner * kHidden),
           *up = Alloc<uint16_t>(L * E1 * kInner * kHidden), *down = Alloc<uint16_t>(L * E1 * kHidden * kInner);
  float *router = Alloc<float>(L * kRouterRows * kHidden), *norm = Alloc<float>(L * kHidden);
  const auto fill = [&](uint16_t* p, size_t n, unsigned seed) { FillBf16<<<4096, 256, 0, stream>>>(p, n, seed); };
  fill(proj, L * kProjRows * kHidden, 1), fill(expansion, L * kExpRows * kExpCols, 2);
  fill(oproj, L * kHidden * kKeyDim, 3);
  fill(gate, L * E1 * kInner * kHidden, 4), fill(up, L * E1 * kInner * kHidden, 5);
  fill(down, L * E1 * kHidden * kInner, 6);
  FillF32<<<4096, 256, 0, stream>>>(router, L * kRouterRows * kHidden, 7, 0.05f, 0.0f);
  FillF32<<<4096, 256, 0, stream>>>(norm, L * kHidden, 8, 0.2f, 1.0f);
  const Weights w{proj, expansion, oproj, gate, up, down, router, norm};

  Activations a{};
  a.h_in = Alloc<float>(L * kHidden), a.x1 = Alloc<float>(L * kHidden), a.proj = Alloc<float>(L * kProjRows);
  a.kda = Alloc<float>(L * kKeyDim), a.oproj = Alloc<float>(L * kHidden);
  a.h_mid = Alloc<float>(L * kHidden), a.x2 = Alloc<float>(L * kHidden), a.logits = Alloc<float>(L * kRouterRows);
  a.route_w = Alloc<float>(L * kTopK), a.hidden = Alloc<float>(L * kSlots * kInner), a.out = Alloc<float>(L * kHidden);
  a.route_ids = Alloc<int>(L * kTopK), a.state = Alloc<float>(L * kHeads * kHeadDim * kHeadDim);
  a.counters = Alloc<unsigned>(L * kCounters);
  FillF32<<<64, 256, 0, stream>>>(a.h_in, kHidden, 9, 2.0f, 0.0f);
  FillF32<<<4096, 256, 0, stream>>>(a.state, L * kHeads * kHeadDim * kHeadDim, 10, 0.1f, 0.0f);
  Check(cudaStreamSynchronize(stream), "fill");

  const auto items = BuildItems(sms, stage_bytes);
  int max_items = 0;
  for (const auto& v : items) max_items = std::max(max_items, static_cast<int>(v.size()));
  std::vector<Item> flat(static_cast<size_t>(sms) * max_items);
  std::vector<int> counts(sms);
  for (int sm = 0; sm < sms; ++sm) {
    counts[sm] = static_cast<int>(items[sm].size());
    std::copy(items[sm].begin(), items[sm].end(), flat.begin() + static_cast<size_t>(sm) * max_items);
  }
  Item* d_items = deltaserve::bench::DeviceCopy(flat);
  int* d_counts = deltaserve::bench::DeviceCopy(counts);
  Check(cudaFuncSetAttribute(PersistentLayerKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(smem)),
        "smem attribute");

  const double bytes_per_layer =
      static_cast<double>(kProjRows) * RowBytes(kProj) + static_cast<double>(kExpRows) * RowBytes(kExp) +
      static_cast<double>(kHidden) * RowBytes(kOproj) + static_cast<double>(kRouterRows) * RowBytes(kRouter) +
      kSlots * (2.0 * kInner * RowBytes(kGateUp) + static_cast<double>(kHidden) * RowBytes(kDown));
  const double state_bytes = 2.0 * kHeads * kHeadDim * kHeadDim * sizeof(float);
  const char* names[kModes] = {"layer", "products", "stream", "tiles_computed", "tiles_not_summed"};
  for (int mode : {kModeStream, kModeTilesNotSummed, kModeTilesComputed, kModeProducts, kModeLayer}) {
    Params p{w, a, d_items, d_counts, max_items, layers, experts, stages, stage_bytes, mode, in_flight, nullptr};
    void* args[] = {&p};
    const auto run = [&] {
      Check(cudaMemsetAsync(a.counters, 0, L * kCounters * sizeof(unsigned), stream), "reset counters");
      Check(cudaLaunchCooperativeKernel(reinterpret_cast<void*>(PersistentLayerKernel), dim3(sms), dim3(kThreads), args,
                                        smem, stream),
            "cooperative launch");
    };
    const double ms = deltaserve::bench::TimeMs(2, iters, stream, run);
    const double us = ms * 1e3 / layers;
    const double moved = bytes_per_layer + (mode == kModeLayer ? state_bytes : 0.0);
    std::printf("{\"gpu\": \"%s\", \"case\": \"%s\", \"layers\": %d, \"experts\": %d, \"stages\": %d, "
                "\"stage_kb\": %d, \"in_flight\": %d, \"us_per_layer\": %.2f, \"mb_per_layer\": %.1f, "
                "\"floor_us\": %.2f, "
                "\"of_copy\": %.3f}\n",
                prop.name, names[mode], layers, experts, stages, stage_kb, in_flight, us, moved / 1e6,
                moved / (copy_tbps * 1e12) * 1e6, moved / (copy_tbps * 1e12) * 1e6 / us);
  }

  // The timeline of the middle layer: when each event happened on the earliest and the latest SM
  // that has it, in µs after the layer's first norm.
  if (trace) {
    const size_t n = L * sms * kEvents;
    auto* stamps = Alloc<unsigned long long>(n);
    for (int mode : {kModeStream, kModeTilesComputed, kModeProducts, kModeLayer}) {
      Check(cudaMemset(stamps, 0, n * sizeof(unsigned long long)), "reset trace");
      Params p{w, a, d_items, d_counts, max_items, layers, experts, stages, stage_bytes, mode, in_flight, stamps};
      void* args[] = {&p};
      Check(cudaMemsetAsync(a.counters, 0, L * kCounters * sizeof(unsigned), stream), "reset counters");
      Check(cudaLaunchCooperativeKernel(reinterpret_cast<void*>(PersistentLayerKernel), dim3(sms), dim3(kThreads), args,
                                        smem, stream),
            "cooperative launch");
      Check(cudaStreamSynchronize(stream), "traced run");
      std::vector<unsigned long long> host(n);
      Check(cudaMemcpy(host.data(), stamps, n * sizeof(unsigned long long), cudaMemcpyDeviceToHost), "trace");
      const size_t layer = L / 2;
      const unsigned long long t0 = host[(layer * sms + 0) * kEvents + kEvNorm1];
      std::printf("{\"gpu\": \"%s\", \"case\": \"timeline_%s\", \"layer\": %zu", prop.name, names[mode], layer);
      for (int e = 0; e < kEvents; ++e) {
        unsigned long long lo = ~0ull, hi = 0;
        for (int sm = 0; sm < sms; ++sm) {
          const unsigned long long t = host[(layer * sms + sm) * kEvents + e];
          if (t != 0) lo = std::min(lo, t), hi = std::max(hi, t);
        }
        if (hi == 0) continue;
        std::printf(", \"%s\": [%.2f, %.2f]", kEventNames[e], (static_cast<double>(lo) - t0) / 1e3,
                    (static_cast<double>(hi) - t0) / 1e3);
      }
      std::printf("}\n");
    }
  }

  // The layer case's products against the reference, on the first and last layers.
  float* ref = Alloc<float>(kProjRows);
  const auto download = [&](const float* p, size_t n) {
    std::vector<float> v(n);
    Check(cudaMemcpy(v.data(), p, n * sizeof(float), cudaMemcpyDeviceToHost), "download");
    return v;
  };
  const auto reference = [&](const uint16_t* wb, const float* wf, const float* x, int rows, int cols) {
    ReferenceRows<<<(rows + 7) / 8, 256, 0, stream>>>(wb, wf, x, rows, cols, ref);
    Check(cudaStreamSynchronize(stream), "reference");
    return download(ref, rows);
  };
  const auto error = [](const std::vector<float>& got, const std::vector<float>& want) {
    double diff = 0.0, scale = 0.0;
    for (size_t i = 0; i < want.size(); ++i) {
      if (!std::isfinite(got[i])) return static_cast<double>(INFINITY);
      diff = std::max(diff, static_cast<double>(std::fabs(got[i] - want[i])));
      scale = std::max(scale, static_cast<double>(std::fabs(want[i])));
    }
    return scale > 0 ? diff / scale : diff;
  };
  double worst = 0.0;
  for (int layer : {0, layers - 1}) {
    const size_t hl = static_cast<size_t>(layer) * kHidden;
    const double e_proj = error(download(a.proj + static_cast<size_t>(layer) * kProjRows, kProjRows),
                                reference(proj + static_cast<size_t>(layer) * kProjRows * kHidden, nullptr, a.x1 + hl,
                                          kProjRows, kHidden));
    const double e_oproj = error(download(a.oproj + hl, kHidden),
                                 reference(oproj + static_cast<size_t>(layer) * kHidden * kKeyDim, nullptr,
                                           a.kda + static_cast<size_t>(layer) * kKeyDim, kHidden, kKeyDim));
    const double e_router = error(download(a.logits + static_cast<size_t>(layer) * kRouterRows, kRouterRows),
                                  reference(nullptr, router + static_cast<size_t>(layer) * kRouterRows * kHidden,
                                            a.x2 + hl, kRouterRows, kHidden));
    std::vector<int> ids(kTopK);
    Check(cudaMemcpy(ids.data(), a.route_ids + layer * kTopK, kTopK * sizeof(int), cudaMemcpyDeviceToHost), "ids");
    const std::vector<float> route_w = download(a.route_w + layer * kTopK, kTopK);
    float* hidden_rows = a.hidden + static_cast<size_t>(layer) * kSlots * kInner;
    const std::vector<float> hidden = download(hidden_rows, kSlots * kInner);
    std::vector<float> want_hidden(kSlots * kInner), want_out(kHidden, 0.0f);
    for (int s = 0; s < kSlots; ++s) {
      const size_t e = static_cast<size_t>(layer) * E1 + (s == 0 ? experts : ids[s - 1]);
      const std::vector<float> g = reference(gate + e * kInner * kHidden, nullptr, a.x2 + hl, kInner, kHidden);
      const std::vector<float> u = reference(up + e * kInner * kHidden, nullptr, a.x2 + hl, kInner, kHidden);
      for (int j = 0; j < kInner; ++j) want_hidden[s * kInner + j] = g[j] / (1.0f + std::exp(-g[j])) * u[j];
      const std::vector<float> d = reference(down + e * kHidden * kInner, nullptr, hidden_rows + s * kInner, kHidden,
                                             kInner);
      for (int r = 0; r < kHidden; ++r) want_out[r] += (s == 0 ? 1.0f : route_w[s - 1]) * d[r];
    }
    const double e_hidden = error(hidden, want_hidden);
    const double e_out = error(download(a.out + hl, kHidden), want_out);
    std::printf("{\"gpu\": \"%s\", \"case\": \"check\", \"layer\": %d, \"proj\": %.2e, \"o_proj\": %.2e, "
                "\"router\": %.2e, \"gate_up\": %.2e, \"down_combined\": %.2e}\n",
                prop.name, layer, e_proj, e_oproj, e_router, e_hidden, e_out);
    worst = std::max({worst, e_proj, e_oproj, e_router, e_hidden, e_out});
  }
  return worst < 1e-3 ? 0 : 1;
}
