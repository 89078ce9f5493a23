// What a one-row decode product costs after the latency-bound kernels before it, and what asking
// its weights into L2 meanwhile could give it. In a CUDA graph: a chain of one-block kernels (~1 us
// each, as a step's norms, routing and recurrent core) and then y = x · wᵀ for one row of x (bf16
// w of 4,096 columns), timed with the L2 flushed before each replay (cold) or not (warm: the
// weights in L2 from the replay before). The product runs on the skinny kernel
// (LaunchSkinnyMatMul, one launch per product), with or without a prefetch of its weights into L2
// on a branch of the graph beside the chain (bulk prefetches, or prefetch.global.L2 per line), or
// on a one-wave stream (every resident warp an equal contiguous share of the weight, several loads
// in flight: the most a one-row product kernel could do with the reads; its sums go through
// atomics, so it is timing only). Prints one JSON line per case and weight size.
// Usage: cuda_l2_prefetch_bench [--iters N] [--chain N] [--rows R]...
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bench/cuda/bench_support.h"
#include "kernels/cuda/device_utils.cuh"
#include "kernels/cuda/launchers.h"

namespace {

using deltaserve::bench::Check;
using deltaserve::kernels::DType;
using deltaserve::kernels::TensorView;
using deltaserve::kernels::cuda::SmCount;
using deltaserve::kernels::cuda::WarpSum;
namespace cuda = deltaserve::kernels::cuda;

constexpr size_t kFlushBytes = size_t{512} << 20;
constexpr int64_t kCols = 4096;
constexpr size_t kPrefetchChunk = 16 << 10;
constexpr int kStreamThreads = 256;
constexpr int kStreamBlocksPerSm = 4;
constexpr int kStreamInFlight = 4;  // warp steps of 512 bytes (of 4, 8 and 16, the fastest)

// Reads `n` words so that nothing read before stays in L2.
__global__ void FlushKernel(const uint4* data, size_t n, unsigned* sink) {
  unsigned acc = 0;
  for (size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    acc ^= data[i].x;
  }
  if (acc == 0x12345678u) *sink = acc;
}

// A latency-bound step kernel: one block, ~1 us.
__global__ void WaitKernel() { __nanosleep(1000); }

// [begin, begin + bytes) asked into L2 by bulk prefetches of kPrefetchChunk bytes, one per thread.
__global__ void PrefetchBulkKernel(const char* begin, size_t bytes) {
  const size_t offset = (blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x) * kPrefetchChunk;
  if (offset >= bytes) return;
  const auto size = static_cast<uint32_t>(bytes - offset < kPrefetchChunk ? bytes - offset : kPrefetchChunk);
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(begin + offset), "r"(size) : "memory");
}

// Every 128-byte line of [begin, begin + bytes) asked into L2 by one prefetch.global.L2.
__global__ void PrefetchLinesKernel(const char* begin, size_t bytes) {
  for (size_t i = (blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x) * 128; i < bytes;
       i += static_cast<size_t>(gridDim.x) * blockDim.x * 128) {
    asm volatile("prefetch.global.L2 [%0];" ::"l"(begin + i));
  }
}

// y += w x for one row: warp w of the grid takes the 512-byte warp steps [w S / W, (w + 1) S / W) of
// the weight (a row holds kCols / 256 of them), kStreamInFlight in flight, and adds its sum of each
// row it touches into y atomically.
__global__ void __launch_bounds__(kStreamThreads) StreamDotKernel(const uint4* w, const float* x, float* y,
                                                                  int64_t rows) {
  constexpr int64_t kStepsPerRow = kCols / 256;
  const int64_t steps = rows * kStepsPerRow;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (kStreamThreads / 32);
  const int64_t warp = blockIdx.x * static_cast<int64_t>(kStreamThreads / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int64_t first = warp * steps / warps, last = (warp + 1) * steps / warps;
  float acc = 0.0f;
  int64_t row = first / kStepsPerRow;
  for (int64_t s0 = first; s0 < last; s0 += kStreamInFlight) {
    uint4 raw[kStreamInFlight];
#pragma unroll
    for (int u = 0; u < kStreamInFlight; ++u) {
      raw[u] = s0 + u < last ? __ldg(w + (s0 + u) * 32 + lane) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kStreamInFlight; ++u) {
      if (s0 + u >= last) break;
      const int64_t r = (s0 + u) / kStepsPerRow, k = ((s0 + u) % kStepsPerRow) * 256 + lane * 8;
      if (r != row) {
        const float sum = WarpSum(acc);
        if (lane == 0) atomicAdd(y + row, sum);
        acc = 0.0f, row = r;
      }
      const float4 a = __ldg(reinterpret_cast<const float4*>(x + k));
      const float4 b = __ldg(reinterpret_cast<const float4*>(x + k) + 1);
      const float xs[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
      const auto* pairs = reinterpret_cast<const __nv_bfloat162*>(&raw[u]);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float2 f = __bfloat1622float2(pairs[i]);
        acc = fmaf(f.x, xs[2 * i], fmaf(f.y, xs[2 * i + 1], acc));
      }
    }
  }
  const float sum = WarpSum(acc);
  if (lane == 0 && first < last) atomicAdd(y + row, sum);
}

struct Args {
  int iters = 100;
  int chain = 8;
  std::vector<int64_t> rows;
};

}  // namespace

int main(int argc, char** argv) {
  Args args;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--iters")) args.iters = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--chain")) args.chain = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--rows")) args.rows.push_back(std::atoll(argv[i + 1]));
  }
  // o_proj (18.9 MB), the KDA projections of x (~58 MB), the dense FFN's gate and up (~85 MB).
  if (args.rows.empty()) args.rows = {2304, 7168, 10368};
  uint4* flush = nullptr;
  unsigned* sink = nullptr;
  Check(cudaMalloc(&flush, kFlushBytes), "cudaMalloc");
  Check(cudaMemset(flush, 1, kFlushBytes), "cudaMemset");
  Check(cudaMalloc(&sink, sizeof(unsigned)), "cudaMalloc");
  cudaStream_t stream = nullptr, branch = nullptr;
  Check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
  Check(cudaStreamCreateWithFlags(&branch, cudaStreamNonBlocking), "stream");
  cudaEvent_t start, stop, fork, join;
  Check(cudaEventCreate(&start), "event");
  Check(cudaEventCreate(&stop), "event");
  Check(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming), "event");
  Check(cudaEventCreateWithFlags(&join, cudaEventDisableTiming), "event");
  const auto do_flush = [&] { FlushKernel<<<264, 512, 0, stream>>>(flush, kFlushBytes / sizeof(uint4), sink); };
  const auto nothing = [] {};
  // Mean ms of `timed` over the iterations, each after `before` (untimed) on the stream.
  const auto time = [&](auto before, auto timed) {
    float total = 0.0f;
    for (int i = 0; i < args.iters + 2; ++i) {
      before();
      Check(cudaEventRecord(start, stream), "record");
      timed();
      Check(cudaEventRecord(stop, stream), "record");
      Check(cudaEventSynchronize(stop), "sync");
      float ms = 0.0f;
      Check(cudaEventElapsedTime(&ms, start, stop), "elapsed");
      if (i >= 2) total += ms;
    }
    return total / static_cast<float>(args.iters);
  };
  float* x = deltaserve::bench::DeviceFloats(static_cast<size_t>(kCols), 1.0f, 2);
  for (const int64_t rows : args.rows) {
    uint16_t* w = deltaserve::bench::DeviceBf16(static_cast<size_t>(rows * kCols), 0.02f, 1);
    float* y = nullptr;
    Check(cudaMalloc(&y, rows * sizeof(float)), "cudaMalloc");
    const TensorView xv{x, DType::kF32, 1, kCols, kCols};
    const TensorView wv{w, DType::kBF16, rows, kCols, kCols};
    const TensorView yv{y, DType::kF32, 1, rows, rows};
    const size_t weight_bytes = static_cast<size_t>(rows * kCols * 2);
    const auto print = [&](const char* name, float ms) {
      std::printf("{\"case\": \"%s\", \"chain\": %d, \"weight_mb\": %.1f, \"ms\": %.5f}\n", name, args.chain,
                  weight_bytes / 1e6, ms);
      std::fflush(stdout);
    };
    enum class Product { kNone, kSkinny, kSkinnyBulkPrefetch, kSkinnyLinePrefetch, kStream };
    // The chain and the product captured as one graph, the prefetch on a branch that forks before
    // the chain and joins at the end.
    const auto capture = [&](Product product) {
      cudaGraph_t graph = nullptr;
      Check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "capture");
      const bool branched = product == Product::kSkinnyBulkPrefetch || product == Product::kSkinnyLinePrefetch;
      if (branched) {
        Check(cudaEventRecord(fork, stream), "fork");
        Check(cudaStreamWaitEvent(branch, fork, 0), "fork");
        const auto* bytes = static_cast<const char*>(wv.data);
        if (product == Product::kSkinnyBulkPrefetch) {
          const size_t chunks = (weight_bytes + kPrefetchChunk - 1) / kPrefetchChunk;
          PrefetchBulkKernel<<<static_cast<unsigned>((chunks + 31) / 32), 32, 0, branch>>>(bytes, weight_bytes);
        } else {
          PrefetchLinesKernel<<<SmCount(), 256, 0, branch>>>(bytes, weight_bytes);
        }
      }
      for (int i = 0; i < args.chain; ++i) WaitKernel<<<1, 32, 0, stream>>>();
      if (product == Product::kStream) {
        StreamDotKernel<<<SmCount() * kStreamBlocksPerSm, kStreamThreads, 0, stream>>>(
            static_cast<const uint4*>(wv.data), x, y, rows);
      } else if (product != Product::kNone) {
        Check(static_cast<cudaError_t>(cuda::LaunchSkinnyMatMul(xv, wv, yv, stream)), "product");
      }
      if (branched) {
        Check(cudaEventRecord(join, branch), "join");
        Check(cudaStreamWaitEvent(stream, join, 0), "join");
      }
      Check(cudaStreamEndCapture(stream, &graph), "end capture");
      cudaGraphExec_t exec = nullptr;
      Check(cudaGraphInstantiate(&exec, graph, 0), "instantiate");
      cudaGraphDestroy(graph);
      return exec;
    };
    const struct {
      Product product;
      const char* name;
      bool warm_too;
    } cases[] = {{Product::kNone, "chain_alone", false},
                 {Product::kSkinny, "chain_then_skinny", true},
                 {Product::kSkinnyBulkPrefetch, "chain_then_skinny_bulk_prefetch_beside", false},
                 {Product::kSkinnyLinePrefetch, "chain_then_skinny_line_prefetch_beside", false},
                 {Product::kStream, "chain_then_stream", true}};
    for (const auto& c : cases) {
      cudaGraphExec_t exec = capture(c.product);
      const auto launch = [&] { Check(cudaGraphLaunch(exec, stream), "launch"); };
      print(c.name, time(do_flush, launch));
      if (c.warm_too) print((std::string(c.name) + "_warm").c_str(), time(nothing, launch));
      cudaGraphExecDestroy(exec);
    }
    Check(cudaFree(y), "cudaFree");
    Check(cudaFree(w), "cudaFree");
  }
  return 0;
}
