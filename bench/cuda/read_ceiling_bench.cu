// How fast a kernel can stream a buffer from device memory into an SM, by the two ways our
// memory-bound kernels fetch: 16-byte loads by every thread of many blocks (the skinny products,
// the decode MoE kernels), and bulk copies (cp.async.bulk completing on an mbarrier) into a ring of
// shared-memory stages filled by a producer warp for consumer warps of one or two persistent blocks
// per SM (the MLA decode attention: 16 copies of one 2,304-byte fp32 latent row per 36 KB tile; the
// KDA decode step: one 64 KB copy per head's state), and per-thread cp.async into the same kind
// of ring. Each case reads a 1 GiB buffer once per call
// (far past the 50 MB L2); "of copy" is the read rate over the copy's read + write rate, so a
// read-only stream may pass 100%.
// Prints one JSON line per case.
// Usage: cuda_read_ceiling_bench [--iters N]
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "bench/cuda/bench_support.h"
#include "kernels/cuda/device_utils.cuh"

namespace {

using deltaserve::bench::Check;
using deltaserve::kernels::cuda::ArriveBarrier;
using deltaserve::kernels::cuda::ArriveExpectBytes;
using deltaserve::kernels::cuda::BulkCopyToShared;
using deltaserve::kernels::cuda::CommitAsync;
using deltaserve::kernels::cuda::CopyAsync16;
using deltaserve::kernels::cuda::InitStageRing;
using deltaserve::kernels::cuda::WaitAsync;
using deltaserve::kernels::cuda::WaitBarrier;

constexpr size_t kBufferBytes = size_t{1} << 30;
constexpr int kMaxStages = 16;
constexpr int kRingOffset = 256;  // the barriers, then the stages (128-byte aligned)

// Keeps the compiler from dropping the reads: a value no buffer of zeros produces.
constexpr uint32_t kNever = 0x9e3779b9u;

template <int kLoadsInFlight>
__global__ void __launch_bounds__(256) LoadReadKernel(const uint4* data, int64_t count, uint32_t* sink) {
  uint32_t acc = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride * kLoadsInFlight) {
    uint4 v[kLoadsInFlight];
#pragma unroll
    for (int u = 0; u < kLoadsInFlight; ++u) {
      const int64_t j = i + u * stride;
      v[u] = j < count ? __ldg(data + j) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kLoadsInFlight; ++u) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
  }
  if (acc == kNever) *sink = acc;
}

struct BulkCase {
  const char* name;
  unsigned chunk;  // bytes per bulk copy
  int copies;      // copies per stage (consecutive source bytes)
  int stages;
  int consumer_warps;
  int blocks_per_sm;
  bool consume;  // consumers read every word of a stage (else they only wait and release it)
};

// Persistent blocks take tiles (stage-sized runs of the buffer) b, b + grid, ...; the last warp's
// lanes copy a tile's chunks into the next free stage (lane c copies chunks c, c + 32, ...), the
// consumer warps wait for it, read it (or not) and release it.
__global__ void BulkReadKernel(const unsigned char* data, int64_t tiles, unsigned chunk, int copies, int stages,
                               bool consume, uint32_t* sink) {
  extern __shared__ __align__(128) unsigned char smem[];
  auto* full = reinterpret_cast<uint64_t*>(smem);
  uint64_t* empty = full + kMaxStages;
  unsigned char* ring = smem + kRingOffset;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int consumers = static_cast<int>(blockDim.x / 32) - 1;
  const size_t tile_bytes = static_cast<size_t>(chunk) * copies;
  InitStageRing(full, empty, stages, 1, consumers);
  if (warp == consumers) {
    int n = 0;
    for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x, ++n) {
      const int s = n % stages;
      if (n >= stages) WaitBarrier(&empty[s], ((n / stages) - 1) & 1);
      if (lane == 0) ArriveExpectBytes(&full[s], static_cast<unsigned>(tile_bytes));
      __syncwarp();
      for (int c = lane; c < copies; c += 32) {
        BulkCopyToShared(ring + s * tile_bytes + static_cast<size_t>(c) * chunk,
                         data + tile * tile_bytes + static_cast<size_t>(c) * chunk, chunk, &full[s]);
      }
    }
    return;
  }
  uint32_t acc = 0;
  int n = 0;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x, ++n) {
    const int s = n % stages;
    WaitBarrier(&full[s], (n / stages) & 1);
    if (consume) {
      const auto* words = reinterpret_cast<const uint4*>(ring + s * tile_bytes);
      for (size_t i = warp * 32 + lane; i < tile_bytes / 16; i += consumers * 32) {
        const uint4 v = words[i];
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
      }
    }
    __syncwarp();
    if (lane == 0) ArriveBarrier(&empty[s]);
  }
  if (acc == kNever) *sink = acc;
}

// The per-thread form of the same ring (what the MLA decode attention used before its bulk
// copies): every thread copies its 16-byte pieces of the tile kStages - 1 ahead with cp.async and
// reads its share of the tile that has landed.
template <int kStages>
__global__ void __launch_bounds__(256) CopyAsyncReadKernel(const unsigned char* data, int64_t tiles,
                                                           unsigned tile_bytes, uint32_t* sink) {
  extern __shared__ __align__(128) unsigned char smem[];
  const unsigned pieces = tile_bytes / 16;
  const auto issue = [&](int64_t tile, int stage) {
    if (tile < tiles) {
      for (unsigned i = threadIdx.x; i < pieces; i += blockDim.x) {
        CopyAsync16(smem + static_cast<size_t>(stage) * tile_bytes + 16 * i, data + tile * tile_bytes + 16 * i);
      }
    }
    CommitAsync();  // an empty group past the end keeps the count of groups in step
  };
  int n = 0;
  for (int s = 0; s < kStages - 1; ++s) issue(blockIdx.x + static_cast<int64_t>(s) * gridDim.x, s);
  uint32_t acc = 0;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x, ++n) {
    issue(tile + static_cast<int64_t>(kStages - 1) * gridDim.x, (n + kStages - 1) % kStages);
    WaitAsync<kStages - 1>();
    __syncthreads();
    const auto* words = reinterpret_cast<const uint4*>(smem + static_cast<size_t>(n % kStages) * tile_bytes);
    for (unsigned i = threadIdx.x; i < pieces; i += blockDim.x) {
      const uint4 v = words[i];
      acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    __syncthreads();  // the stage is refilled next round
  }
  if (acc == kNever) *sink = acc;
}

}  // namespace

int main(int argc, char** argv) {
  int iters = 10;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--iters") == 0) iters = std::max(1, std::atoi(argv[i + 1]));
  }
  cudaDeviceProp prop{};
  Check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  cudaStream_t stream;
  Check(cudaStreamCreate(&stream), "stream");
  const double copy_tbps = deltaserve::bench::MeasureCopyTbps(stream, prop.name);
  unsigned char* buffer = nullptr;
  uint32_t* sink = nullptr;
  Check(cudaMalloc(&buffer, kBufferBytes), "cudaMalloc");
  Check(cudaMalloc(&sink, sizeof(uint32_t)), "cudaMalloc");
  Check(cudaMemset(buffer, 0, kBufferBytes), "cudaMemset");
  const int sms = prop.multiProcessorCount;
  const auto report = [&](const char* kind, const char* name, double bytes, double ms, const char* extra) {
    const double tbps = bytes / (ms * 1e-3) / 1e12;
    std::printf(
        "{\"gpu\": \"%s\", \"case\": \"%s\", \"name\": \"%s\", %s\"ms\": %.4f, \"read_tb_per_s\": %.3f, "
        "\"of_copy\": %.3f}\n",
        prop.name, kind, name, extra, ms, tbps, tbps / copy_tbps);
  };

  // 16-byte loads: blocks of 256 threads, a few to many per SM, 4 or 8 loads in flight a thread.
  for (const int blocks_per_sm : {2, 4, 8}) {
    for (const int in_flight : {4, 8}) {
      const int64_t count = static_cast<int64_t>(kBufferBytes / 16);
      const auto* words = reinterpret_cast<const uint4*>(buffer);
      const double ms = deltaserve::bench::TimeMs(2, iters, stream, [&] {
        if (in_flight == 4) {
          LoadReadKernel<4><<<blocks_per_sm * sms, 256, 0, stream>>>(words, count, sink);
        } else {
          LoadReadKernel<8><<<blocks_per_sm * sms, 256, 0, stream>>>(words, count, sink);
        }
        Check(cudaGetLastError(), "load kernel");
      });
      char extra[128];
      std::snprintf(extra, sizeof(extra), "\"blocks_per_sm\": %d, \"loads_in_flight\": %d, ", blocks_per_sm, in_flight);
      report("read_loads", "loads", static_cast<double>(kBufferBytes), ms, extra);
    }
  }

  const BulkCase cases[] = {
      {"mla_rows_5_stages", 2304, 16, 5, 8, 1, true},  // the MLA decode attention's shape
      {"mla_rows_5_stages_no_use", 2304, 16, 5, 8, 1, false},
      {"mla_rows_2_blocks", 2304, 16, 2, 8, 2, true},
      {"whole_tile_36k_5_stages", 36864, 1, 5, 8, 1, true},
      {"rows_4k_x8_6_stages", 4096, 8, 6, 8, 1, true},
      {"chunk_16k_12_stages", 16384, 1, 12, 8, 1, true},
      {"chunk_8k_16_stages", 8192, 1, 16, 8, 1, true},
      // How many bytes in flight per SM the copy's rate needs (a persistent MoE FFN's rings).
      {"chunk_9k_16_stages", 9216, 1, 16, 8, 1, true},
      {"chunk_18k_8_stages", 18432, 1, 8, 8, 1, true},
      {"chunk_18k_10_stages", 18432, 1, 10, 8, 1, true},
      {"chunk_18k_4_stages", 18432, 1, 4, 8, 1, true},
      {"chunk_64k_3_stages", 65536, 1, 3, 8, 1, true},  // the KDA decode step's shape
      {"chunk_32k_3_stages_2_blocks", 32768, 1, 3, 8, 2, true},
      {"chunk_16k_6_stages_2_blocks", 16384, 1, 6, 4, 2, true},
  };
  for (const BulkCase& c : cases) {
    const size_t tile_bytes = static_cast<size_t>(c.chunk) * c.copies;
    const int64_t tiles = static_cast<int64_t>(kBufferBytes / tile_bytes);
    const size_t smem = kRingOffset + tile_bytes * c.stages;
    Check(cudaFuncSetAttribute(BulkReadKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
          "shared memory attribute");
    const int threads = (c.consumer_warps + 1) * 32;
    if (c.stages > kMaxStages) {
      std::fprintf(stderr, "%s: more than %d stages\n", c.name, kMaxStages);
      return 1;
    }
    int resident = 0;  // blocks of this case that fit one SM at once
    Check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, BulkReadKernel, threads, smem), "occupancy");
    const double ms = deltaserve::bench::TimeMs(2, iters, stream, [&] {
      BulkReadKernel<<<c.blocks_per_sm * sms, threads, smem, stream>>>(buffer, tiles, c.chunk, c.copies, c.stages,
                                                                       c.consume, sink);
      Check(cudaGetLastError(), "bulk kernel");
    });
    char extra[256];
    std::snprintf(extra, sizeof(extra),
                  "\"chunk\": %u, \"copies\": %d, \"stages\": %d, \"consumer_warps\": %d, \"blocks_per_sm\": %d, "
                  "\"resident_blocks_per_sm\": %d, \"consume\": %s, \"tile_bytes\": %zu, ",
                  c.chunk, c.copies, c.stages, c.consumer_warps, c.blocks_per_sm, resident,
                  c.consume ? "true" : "false", tile_bytes);
    report("read_bulk", c.name, static_cast<double>(tiles) * static_cast<double>(tile_bytes), ms, extra);
  }
  // cp.async rings of 36 KB tiles (the MLA tile), one block of 256 threads per SM.
  {
    constexpr unsigned kTile = 36864;
    const int64_t tiles = static_cast<int64_t>(kBufferBytes / kTile);
    const auto run = [&](auto kernel, int stages) {
      const size_t smem = static_cast<size_t>(kTile) * stages;
      Check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
            "shared memory attribute");
      const double ms = deltaserve::bench::TimeMs(2, iters, stream, [&] {
        kernel<<<sms, 256, smem, stream>>>(buffer, tiles, kTile, sink);
        Check(cudaGetLastError(), "cp.async kernel");
      });
      char extra[128];
      std::snprintf(extra, sizeof(extra), "\"tile_bytes\": %u, \"stages\": %d, \"blocks_per_sm\": 1, ", kTile, stages);
      report("read_cp_async", "cp_async_36k", static_cast<double>(tiles) * kTile, ms, extra);
    };
    run(CopyAsyncReadKernel<3>, 3);
    run(CopyAsyncReadKernel<5>, 5);
  }
  cudaFree(buffer);
  cudaFree(sink);
  cudaStreamDestroy(stream);
  return 0;
}
