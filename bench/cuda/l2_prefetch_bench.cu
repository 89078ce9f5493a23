// What a one-row decode product costs after the latency-bound kernels before it, and what asking
// its weights into L2 meanwhile could give it. In a CUDA graph: a chain of one-block kernels (~1 us
// each, as a step's norms, routing and recurrent core) and then y = x · wᵀ for one row of x (bf16
// w of 4,096 columns). Every replay follows a kernel on the stream, so that the timing starts on a
// busy stream: one that flushes the L2 (cold) or one that only sleeps (warm: the weights left in L2
// by the replay before, where they fit). Cases: the chain alone (the baseline the others add to);
// the product on the skinny kernel (LaunchSkinnyMatMul, one launch per product), plain or, with the
// chain, programmatic as the engine launches it; for weights that fit in L2, the skinny kernel with
// a prefetch of its weights into L2 on a branch of the graph beside the chain (bulk prefetches, or
// prefetch.global.L2 per line) or ahead of the chain on the stream itself; and a one-wave stream
// (every resident warp an equal contiguous share of the weight, four warp steps in flight; its sums
// go through atomics, so it is timing only: one design that reads as evenly as a kernel can).
// Prints one JSON line per case and weight size.
// Usage: cuda_l2_prefetch_bench [--iters N] [--chain N] [--rows R]...
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
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
using deltaserve::kernels::cuda::LaunchMaybeAfterPrior;
using deltaserve::kernels::cuda::LaunchSkinnyMatMul;
using deltaserve::kernels::cuda::SmCount;
using deltaserve::kernels::cuda::WarpSum;

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

// A latency-bound step kernel: one block, ~1 us; as a programmatic launch it lets the next kernel
// be scheduled and waits for the one before, as the engine's kernels do.
__global__ void WaitKernel() {
  deltaserve::kernels::cuda::FollowPriorKernels();
  __nanosleep(1000);
}

// Keeps the stream busy for ~20 us without touching memory, so that a timed replay starts on a
// busy stream as the cold ones do after their flush.
__global__ void IdleKernel() {
  for (int i = 0; i < 20; ++i) __nanosleep(1000);
}

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

// y += w x for one row: warp i of the W in the grid takes steps [i·S/W, (i+1)·S/W) of the weight's
// S 512-byte warp steps (kCols / 256 a row), kStreamInFlight in flight, and adds its sum of each
// row it touches into y atomically.
__global__ void __launch_bounds__(kStreamThreads, kStreamBlocksPerSm)
    StreamDotKernel(const uint4* w, const float* x, float* y, int64_t rows) {
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

enum class Product {
  kNone,
  kSkinny,
  kSkinnyProgrammatic,  // the chain's kernels and the product as programmatic launches
  kSkinnyBulkPrefetchBeside,
  kSkinnyLinePrefetchBeside,
  kSkinnyBulkPrefetchAhead,  // the prefetch on the stream, before the chain
  kStream,
};

void CheckLaunch(const char* what) { Check(cudaGetLastError(), what); }

}  // namespace

int main(int argc, char** argv) {
  Args args;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--iters") == 0) args.iters = std::max(1, std::atoi(argv[++i]));
    else if (std::strcmp(argv[i], "--chain") == 0) args.chain = std::max(0, std::atoi(argv[++i]));
    else if (std::strcmp(argv[i], "--rows") == 0) args.rows.push_back(std::max<int64_t>(1, std::atoll(argv[++i])));
  }
  // o_proj (18.9 MB), and weights of the bytes of the KDA projections of x (~58 MB) and the dense
  // FFN's gate and up (~85 MB; the model's have 2,304 columns, these 4,096).
  if (args.rows.empty()) args.rows = {2304, 7168, 10368};
  cudaDeviceProp prop{};
  Check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
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
  int stream_blocks = 0;
  Check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&stream_blocks, StreamDotKernel, kStreamThreads, 0),
        "occupancy");
  if (stream_blocks < kStreamBlocksPerSm) {
    std::fprintf(stderr, "the stream kernel fits %d blocks per SM, not %d: not one wave\n", stream_blocks,
                 kStreamBlocksPerSm);
    return 1;
  }
  const auto cold = [&] {
    FlushKernel<<<264, 512, 0, stream>>>(flush, kFlushBytes / sizeof(uint4), sink);
    CheckLaunch("flush");
  };
  const auto warm = [&] {
    IdleKernel<<<1, 32, 0, stream>>>();
    CheckLaunch("idle");
  };
  // Mean ms of `timed` over the iterations, each after `before` (untimed) on the stream.
  const auto time_ms = [&](auto before, auto timed) {
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
    Check(cudaMemset(y, 0, rows * sizeof(float)), "cudaMemset");
    const TensorView xv{x, DType::kF32, 1, kCols, kCols};
    const TensorView wv{w, DType::kBF16, rows, kCols, kCols};
    const TensorView yv{y, DType::kF32, 1, rows, rows};
    const size_t weight_bytes = static_cast<size_t>(rows * kCols * 2);
    const bool fits_l2 = weight_bytes <= static_cast<size_t>(prop.l2CacheSize) * 3 / 4;
    const auto print = [&](const std::string& name, float ms) {
      std::printf("{\"gpu\": \"%s\", \"case\": \"%s\", \"chain\": %d, \"weight_mb\": %.1f, \"ms\": %.5f}\n",
                  prop.name, name.c_str(), args.chain, weight_bytes / 1e6, ms);
      std::fflush(stdout);
    };
    const auto prefetch = [&](Product product, cudaStream_t s) {
      const auto* bytes = static_cast<const char*>(wv.data);
      if (product == Product::kSkinnyLinePrefetchBeside) {
        PrefetchLinesKernel<<<SmCount(), 256, 0, s>>>(bytes, weight_bytes);
      } else {
        const size_t chunks = (weight_bytes + kPrefetchChunk - 1) / kPrefetchChunk;
        PrefetchBulkKernel<<<static_cast<unsigned>((chunks + 31) / 32), 32, 0, s>>>(bytes, weight_bytes);
      }
      CheckLaunch("prefetch");
    };
    // The chain and the product captured as one graph; a prefetch beside the chain on a branch
    // that forks before it and joins at the end.
    const auto capture = [&](Product product) {
      cudaGraph_t graph = nullptr;
      Check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "capture");
      const bool beside =
          product == Product::kSkinnyBulkPrefetchBeside || product == Product::kSkinnyLinePrefetchBeside;
      if (beside) {
        Check(cudaEventRecord(fork, stream), "fork");
        Check(cudaStreamWaitEvent(branch, fork, 0), "fork");
        prefetch(product, branch);
      }
      if (product == Product::kSkinnyBulkPrefetchAhead) prefetch(product, stream);
      const bool programmatic = product == Product::kSkinnyProgrammatic;
      for (int i = 0; i < args.chain; ++i) {
        Check(static_cast<cudaError_t>(
                  LaunchMaybeAfterPrior(programmatic && i > 0, WaitKernel, dim3(1), dim3(32), 0, stream)),
              "chain");
      }
      if (product == Product::kStream) {
        StreamDotKernel<<<SmCount() * kStreamBlocksPerSm, kStreamThreads, 0, stream>>>(
            static_cast<const uint4*>(wv.data), x, y, rows);
        CheckLaunch("stream product");
      } else if (product != Product::kNone) {
        Check(static_cast<cudaError_t>(LaunchSkinnyMatMul(xv, wv, yv, stream, programmatic)), "product");
      }
      if (beside) {
        Check(cudaEventRecord(join, branch), "join");
        Check(cudaStreamWaitEvent(stream, join, 0), "join");
      }
      Check(cudaStreamEndCapture(stream, &graph), "end capture");
      cudaGraphExec_t exec = nullptr;
      Check(cudaGraphInstantiate(&exec, graph, 0), "instantiate");
      Check(cudaGraphDestroy(graph), "cudaGraphDestroy");
      return exec;
    };
    const struct {
      Product product;
      const char* name;
      bool only_if_fits_l2;
    } cases[] = {{Product::kNone, "chain_alone", false},
                 {Product::kSkinny, "chain_then_skinny", false},
                 {Product::kSkinnyProgrammatic, "chain_then_skinny_programmatic", false},
                 {Product::kSkinnyBulkPrefetchBeside, "chain_then_skinny_bulk_prefetch_beside", true},
                 {Product::kSkinnyLinePrefetchBeside, "chain_then_skinny_line_prefetch_beside", true},
                 {Product::kSkinnyBulkPrefetchAhead, "bulk_prefetch_then_chain_then_skinny", true},
                 {Product::kStream, "chain_then_stream", false}};
    for (const auto& c : cases) {
      if (c.only_if_fits_l2 && !fits_l2) continue;
      cudaGraphExec_t exec = capture(c.product);
      const auto launch = [&] { Check(cudaGraphLaunch(exec, stream), "launch"); };
      print(c.name, time_ms(cold, launch));
      print(std::string(c.name) + "_warm", time_ms(warm, launch));
      Check(cudaGraphExecDestroy(exec), "cudaGraphExecDestroy");
    }
    Check(cudaFree(y), "cudaFree");
    Check(cudaFree(w), "cudaFree");
  }
  Check(cudaFree(x), "cudaFree");
  Check(cudaFree(flush), "cudaFree");
  Check(cudaFree(sink), "cudaFree");
  for (cudaEvent_t e : {start, stop, fork, join}) Check(cudaEventDestroy(e), "cudaEventDestroy");
  Check(cudaStreamDestroy(stream), "cudaStreamDestroy");
  Check(cudaStreamDestroy(branch), "cudaStreamDestroy");
  return 0;
}
