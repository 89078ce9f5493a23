// How fast a kernel can update a buffer in place (every word read, changed and written back to
// where it was), the traffic of the KDA decode step's state: a buffer (1 GiB, or the state of a
// decode batch) in 64 KB tiles, one head's fp32 state each, taken by persistent blocks in the
// step's task order. The ways compared:
//  - 16-byte loads and stores by every thread of many blocks (a copy kernel's shape);
//  - the decode step's ring (as first built, with a producer warp): the producer bulk-copies each
//    tile into a ring of three 64 KB slots, two groups of eight warps take alternate tiles into
//    registers (a column of 64 rows a thread, as the step holds its state, or 16-byte words),
//    release the slot and store from registers;
//  - the same ring, but the group changes the slot in place and one bulk copy writes it back
//    (the slot released once that copy has read it).
// The rings are also timed as the decode step runs in a served step: 20 programmatic launches
// replayed from a CUDA graph. "of copy" is (bytes read + bytes written) per second over the
// copy's read + write rate, the measure the KDA decode goal is stated in. Prints one JSON line
// per case, then checks that every case updated every word.
// Usage: cuda_update_ceiling_bench [--iters N] [--mib M]
//   --mib: the buffer (default 1024; 128 is a decode step's state at batch 64, H = 32, d = 128)
#include <cuda_runtime.h>

#include <algorithm>
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
using deltaserve::kernels::cuda::FenceProxyAsyncShared;
using deltaserve::kernels::cuda::FollowPriorKernels;
using deltaserve::kernels::cuda::InitBarrier;
using deltaserve::kernels::cuda::LaunchAfterPrior;
using deltaserve::kernels::cuda::WaitBarrier;

constexpr int kD = 128;                          // a head's state is kD x kD floats
constexpr unsigned kTileBytes = kD * kD * 4;     // 64 KB
constexpr int kStages = 3;
constexpr int kGroupThreads = 256;
constexpr int kGroups = 2;
constexpr int kRingThreads = kGroups * kGroupThreads + 32;  // and the producer warp, the last

enum class Store { kColumns, kWords, kBulk };

template <int kInFlight>
__global__ void __launch_bounds__(256) LoadStoreKernel(float4* data, int64_t count) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += stride * kInFlight) {
    float4 v[kInFlight];
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
      const int64_t j = i + u * stride;
      if (j < count) v[u] = data[j];
    }
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
      const int64_t j = i + u * stride;
      if (j < count) data[j] = make_float4(v[u].x + 1.0f, v[u].y + 1.0f, v[u].z + 1.0f, v[u].w + 1.0f);
    }
  }
}

__device__ __forceinline__ void SyncGroup(int group) {
  deltaserve::kernels::cuda::SyncGroup<kGroupThreads>(group);
}

// The bulk copy of a shared slot back to global memory (each thread that wrote the slot fences
// first: FenceProxyAsyncShared, then a barrier); the slot may be reused once WaitBulkReads returns
// in the issuing thread.
__device__ __forceinline__ void BulkCopyToGlobal(void* global, const void* shared, unsigned bytes) {
  asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;\n" ::"l"(global),
               "r"(static_cast<unsigned>(__cvta_generic_to_shared(shared))), "r"(bytes)
               : "memory");
  asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
}
__device__ __forceinline__ void WaitBulkReads() { asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory"); }
__device__ __forceinline__ void WaitBulkWrites() { asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory"); }

// Tiles b, b + grid, ... of the buffer; tile n of a block goes to slot n % kStages and to group
// n % kGroups, which first waits for the slot's previous tile to be released (as the decode step).
template <Store kStore>
__global__ void __launch_bounds__(kRingThreads, 1) RingUpdateKernel(float* data, int64_t tiles) {
  extern __shared__ __align__(128) unsigned char smem[];
  auto* full = reinterpret_cast<uint64_t*>(smem);
  uint64_t* empty = full + kStages;
  auto* slots = reinterpret_cast<float*>(smem + 128);
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      InitBarrier(&full[s], 1);
      InitBarrier(&empty[s], 1);
    }
  }
  __syncthreads();
  FollowPriorKernels();
  if (threadIdx.x >= kGroups * kGroupThreads) {
    if (threadIdx.x % 32 != 0) return;
    int n = 0;
    for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x, ++n) {
      const int s = n % kStages;
      WaitBarrier(&empty[s], ((n / kStages) & 1) ^ 1);
      ArriveExpectBytes(&full[s], kTileBytes);
      BulkCopyToShared(slots + s * kD * kD, data + tile * kD * kD, kTileBytes, &full[s]);
    }
    return;
  }
  const int group = threadIdx.x / kGroupThreads, t = threadIdx.x % kGroupThreads;
  int n = group;
  for (int64_t tile = blockIdx.x + group * gridDim.x; tile < tiles; tile += kGroups * gridDim.x, n += kGroups) {
    const int s = n % kStages;
    float* slot = slots + s * kD * kD;
    float* out = data + tile * kD * kD;
    WaitBarrier(&empty[s], ((n / kStages) & 1) ^ 1);
    WaitBarrier(&full[s], (n / kStages) & 1);
    if constexpr (kStore == Store::kColumns) {
      constexpr int kRows = kD / 2;
      const int j = t % kD, i0 = (t / kD) * kRows;
      float v[kRows];
#pragma unroll
      for (int r = 0; r < kRows; ++r) v[r] = slot[(i0 + r) * kD + j];
      SyncGroup(group);
      if (t == 0) ArriveBarrier(&empty[s]);
#pragma unroll
      for (int r = 0; r < kRows; ++r) out[(i0 + r) * kD + j] = v[r] + 1.0f;
    } else if constexpr (kStore == Store::kWords) {
      constexpr int kWords = kD * kD / 4 / kGroupThreads;
      const auto* words = reinterpret_cast<const float4*>(slot);
      float4 v[kWords];
#pragma unroll
      for (int w = 0; w < kWords; ++w) v[w] = words[t + w * kGroupThreads];
      SyncGroup(group);
      if (t == 0) ArriveBarrier(&empty[s]);
      auto* out4 = reinterpret_cast<float4*>(out);
#pragma unroll
      for (int w = 0; w < kWords; ++w) {
        out4[t + w * kGroupThreads] = make_float4(v[w].x + 1.0f, v[w].y + 1.0f, v[w].z + 1.0f, v[w].w + 1.0f);
      }
    } else {
      constexpr int kWords = kD * kD / 4 / kGroupThreads;
      auto* words = reinterpret_cast<float4*>(slot);
#pragma unroll
      for (int w = 0; w < kWords; ++w) {
        const float4 v = words[t + w * kGroupThreads];
        words[t + w * kGroupThreads] = make_float4(v.x + 1.0f, v.y + 1.0f, v.z + 1.0f, v.w + 1.0f);
      }
      FenceProxyAsyncShared();
      SyncGroup(group);
      if (t == 0) {
        BulkCopyToGlobal(out, slot, kTileBytes);
        WaitBulkReads();
        ArriveBarrier(&empty[s]);
      }
    }
  }
  if (kStore == Store::kBulk && t == 0) WaitBulkWrites();
}

}  // namespace

int main(int argc, char** argv) {
  int iters = 10;
  size_t mib = 1024;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--iters") == 0) iters = std::max(1, std::atoi(argv[i + 1]));
    if (std::strcmp(argv[i], "--mib") == 0) mib = static_cast<size_t>(std::max(1, std::atoi(argv[i + 1])));
  }
  const size_t buffer_bytes = mib << 20;
  cudaDeviceProp prop{};
  Check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  cudaStream_t stream;
  Check(cudaStreamCreate(&stream), "stream");
  const double copy_tbps = deltaserve::bench::MeasureCopyTbps(stream, prop.name);
  float* buffer = nullptr;
  Check(cudaMalloc(&buffer, buffer_bytes), "cudaMalloc");
  Check(cudaMemset(buffer, 0, buffer_bytes), "cudaMemset");
  const int sms = prop.multiProcessorCount;
  // `graph_ms`: the same calls replayed from a CUDA graph as programmatic launches, as a decode
  // step's kernels run (no gap between calls); 0 where not measured.
  const auto report = [&](const char* name, double ms, double graph_ms, const char* extra) {
    const auto of_copy = [&](double t) {
      return 2.0 * static_cast<double>(buffer_bytes) / (t * 1e-3) / 1e12 / copy_tbps;
    };
    char graph[96] = "";
    if (graph_ms > 0) {
      std::snprintf(graph, sizeof(graph), ", \"ms_in_graph\": %.4f, \"of_copy_in_graph\": %.3f", graph_ms,
                    of_copy(graph_ms));
    }
    std::printf("{\"gpu\": \"%s\", \"case\": \"%s\", \"mib\": %zu, %s\"ms\": %.4f, \"of_copy\": %.3f%s}\n",
                prop.name, name, mib, extra, ms, of_copy(ms), graph);
  };

  for (const int blocks_per_sm : {2, 4, 8}) {
    for (const int in_flight : {4, 8}) {
      auto* words = reinterpret_cast<float4*>(buffer);
      const int64_t count = static_cast<int64_t>(buffer_bytes / 16);
      const double ms = deltaserve::bench::TimeMs(2, iters, stream, [&] {
        if (in_flight == 4) {
          LoadStoreKernel<4><<<blocks_per_sm * sms, 256, 0, stream>>>(words, count);
        } else {
          LoadStoreKernel<8><<<blocks_per_sm * sms, 256, 0, stream>>>(words, count);
        }
        Check(cudaGetLastError(), "load/store kernel");
      });
      char extra[96];
      std::snprintf(extra, sizeof(extra), "\"blocks_per_sm\": %d, \"loads_in_flight\": %d, ", blocks_per_sm, in_flight);
      report("loads_and_stores", ms, 0, extra);
    }
  }

  const int64_t tiles = static_cast<int64_t>(buffer_bytes / kTileBytes);
  const size_t smem = 128 + static_cast<size_t>(kStages) * kTileBytes;
  const auto ring = [&](const char* name, auto kernel) {
    Check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
          "shared memory attribute");
    const auto launch = [&] {
      const int error = LaunchAfterPrior(kernel, dim3(sms), dim3(kRingThreads), smem, stream, buffer, tiles);
      Check(static_cast<cudaError_t>(error), name);
    };
    const double ms = deltaserve::bench::TimeMs(2, iters, stream, launch);
    const double graph_ms =
        deltaserve::bench::TimeInGraphMs(20, 2, std::max(iters, 20), stream, [&](int) { launch(); });
    report(name, ms, graph_ms, "\"blocks_per_sm\": 1, \"stages\": 3, ");
  };
  ring("ring_store_columns", RingUpdateKernel<Store::kColumns>);
  ring("ring_store_words", RingUpdateKernel<Store::kWords>);
  ring("ring_bulk_store", RingUpdateKernel<Store::kBulk>);
  // Every case added 1 to each word the same number of times, so every word must hold the same
  // positive count if they all touched every word.
  std::vector<float> words(buffer_bytes / sizeof(float));
  Check(cudaMemcpy(words.data(), buffer, buffer_bytes, cudaMemcpyDeviceToHost), "download");
  const auto differing = std::count_if(words.begin(), words.end(), [&](float w) { return w != words[0]; });
  std::printf("{\"check\": \"every word updated alike\", \"count\": %.0f, \"words_differing\": %td}\n",
              static_cast<double>(words[0]), differing);
  if (differing != 0 || words[0] < 1) return 1;
  cudaFree(buffer);
  cudaStreamDestroy(stream);
  return 0;
}
