// What a dependency between two phases of a decode step costs, with next to no work in the phases:
// N phases in which every block reads what another block wrote in the phase before, run as N
// kernels replayed from a CUDA graph (programmatic launches, as the decode step's kernels, or
// plain ones; many blocks, as the products, or one, as the norms and the routing), or as one
// persistent kernel whose resident blocks (one or eight per SM) meet at a grid-wide barrier
// between phases. The time per phase is the floor each kernel boundary of a decode step adds, and
// what a persistent layer kernel would pay instead. The cases "_after_upload" copy 512 bytes from
// pinned host memory to the device before each phase's kernel, as the CUDA backend's step graphs
// upload descriptors (a memcpy node per upload; the kernel after it has no programmatic edge to
// the kernel before, so it also loses its early start).
// Prints one JSON line per case.
// Usage: cuda_phase_boundary_bench [--phases N] [--iters N]
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "bench/cuda/bench_support.h"
#include "kernels/cuda/device_utils.cuh"

namespace {

using deltaserve::bench::Check;
using deltaserve::kernels::cuda::FollowPriorKernels;
using deltaserve::kernels::cuda::LaunchMaybeAfterPrior;
using deltaserve::kernels::cuda::SmCount;

constexpr int kThreads = 256;

// One phase's work: block b takes the value block (b + 1) % blocks left in `from` and leaves one
// more in `to`.
__device__ __forceinline__ void Phase(const unsigned* from, unsigned* to) {
  if (threadIdx.x == 0) {
    const unsigned b = blockIdx.x;
    to[b] = __ldcg(from + (b + 1) % gridDim.x) + 1;
  }
}

__global__ void __launch_bounds__(kThreads) PhaseKernel(const unsigned* from, unsigned* to) {
  FollowPriorKernels();
  Phase(from, to);
}

// Every block of the grid arrives; the last resets the count and opens the next generation.
__device__ __forceinline__ void GridBarrier(unsigned* count, volatile unsigned* generation) {
  __syncthreads();
  if (threadIdx.x == 0) {
    const unsigned gen = *generation;
    __threadfence();
    if (atomicAdd(count, 1u) == gridDim.x - 1) {
      *count = 0;
      __threadfence();
      *generation = gen + 1;
    } else {
      while (*generation == gen) {
      }
    }
    __threadfence();
  }
  __syncthreads();
}

// All `phases` in one launch of resident blocks, alternating the two buffers.
__global__ void __launch_bounds__(kThreads) PersistentKernel(unsigned* a, unsigned* b, int phases, unsigned* count,
                                                              unsigned* generation) {
  for (int p = 0; p < phases; ++p) {
    Phase(p % 2 == 0 ? a : b, p % 2 == 0 ? b : a);
    GridBarrier(count, generation);
  }
}

struct Case {
  const char* name;
  int blocks;
  bool persistent, programmatic, upload = false;
};

}  // namespace

int main(int argc, char** argv) {
  int phases = 64, iters = 200;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--phases") == 0) phases = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--iters") == 0) iters = std::atoi(argv[i + 1]);
  }
  cudaDeviceProp prop{};
  Check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  const int sms = SmCount();
  unsigned *a = nullptr, *b = nullptr, *barrier = nullptr;
  const size_t slots = static_cast<size_t>(sms) * 8;
  Check(cudaMalloc(&a, slots * sizeof(unsigned)), "cudaMalloc");
  Check(cudaMalloc(&b, slots * sizeof(unsigned)), "cudaMalloc");
  Check(cudaMalloc(&barrier, 2 * sizeof(unsigned)), "cudaMalloc");
  Check(cudaMemset(a, 0, slots * sizeof(unsigned)), "cudaMemset");
  Check(cudaMemset(b, 0, slots * sizeof(unsigned)), "cudaMemset");
  Check(cudaMemset(barrier, 0, 2 * sizeof(unsigned)), "cudaMemset");
  cudaStream_t stream = nullptr;
  Check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  constexpr size_t kUploadBytes = 512;
  void* pinned = nullptr;
  void* uploaded = nullptr;
  Check(cudaMallocHost(&pinned, kUploadBytes), "cudaMallocHost");
  std::memset(pinned, 0, kUploadBytes);
  Check(cudaMalloc(&uploaded, kUploadBytes), "cudaMalloc");
  const Case cases[] = {{"kernels_programmatic", sms * 8, false, true},
                        {"kernels_plain", sms * 8, false, false},
                        {"kernels_programmatic_one_block", 1, false, true},
                        {"kernels_plain_one_block", 1, false, false},
                        {"kernels_programmatic_after_upload", sms * 8, false, true, true},
                        {"kernels_programmatic_one_block_after_upload", 1, false, true, true},
                        {"persistent_1_per_sm", sms, true, false},
                        {"persistent_8_per_sm", sms * 8, true, false}};
  for (const Case& c : cases) {
    Check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), "capture");
    if (c.persistent) {
      PersistentKernel<<<c.blocks, kThreads, 0, stream>>>(a, b, phases, barrier, barrier + 1);
      Check(cudaGetLastError(), "persistent launch");
    } else {
      for (int p = 0; p < phases; ++p) {
        if (c.upload) {
          Check(cudaMemcpyAsync(uploaded, pinned, kUploadBytes, cudaMemcpyHostToDevice, stream), "upload");
        }
        Check(static_cast<cudaError_t>(LaunchMaybeAfterPrior(c.programmatic, PhaseKernel, dim3(c.blocks),
                                                             dim3(kThreads), 0, stream, p % 2 == 0 ? a : b,
                                                             p % 2 == 0 ? b : a)),
              "phase launch");
      }
    }
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    Check(cudaStreamEndCapture(stream, &graph), "end capture");
    Check(cudaGraphInstantiate(&exec, graph, 0), "instantiate");
    for (int i = 0; i < 20; ++i) Check(cudaGraphLaunch(exec, stream), "warmup");
    cudaEvent_t start = nullptr, stop = nullptr;
    Check(cudaEventCreate(&start), "event");
    Check(cudaEventCreate(&stop), "event");
    Check(cudaEventRecord(start, stream), "record");
    for (int i = 0; i < iters; ++i) Check(cudaGraphLaunch(exec, stream), "graph launch");
    Check(cudaEventRecord(stop, stream), "record");
    Check(cudaEventSynchronize(stop), "sync");
    float ms = 0.0f;
    Check(cudaEventElapsedTime(&ms, start, stop), "elapsed");
    std::printf("{\"gpu\": \"%s\", \"case\": \"%s\", \"blocks\": %d, \"phases\": %d, \"us_per_phase\": %.3f}\n",
                prop.name, c.name, c.blocks, phases, 1000.0 * ms / (static_cast<double>(iters) * phases));
    Check(cudaEventDestroy(start), "event");
    Check(cudaEventDestroy(stop), "event");
    Check(cudaGraphExecDestroy(exec), "destroy");
    Check(cudaGraphDestroy(graph), "destroy");
  }
  Check(cudaFreeHost(pinned), "cudaFreeHost");
  Check(cudaFree(uploaded), "cudaFree");
  return 0;
}
