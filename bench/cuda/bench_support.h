// What the CUDA benchmarks share: failing on a CUDA error, random device inputs, and timing a
// body with CUDA events.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace deltaserve::bench {

inline void Check(cudaError_t error, const char* what) {
  if (error != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(error));
    std::exit(1);
  }
}

// Device floats uniform in [-scale/2, scale/2) from a linear congruential generator seeded with
// `seed`, generated on the host in slices.
inline float* DeviceFloats(size_t count, float scale, unsigned seed) {
  float* device = nullptr;
  Check(cudaMalloc(&device, count * sizeof(float)), "cudaMalloc");
  std::vector<float> host(std::min<size_t>(count, size_t{1} << 24));
  for (size_t done = 0; done < count; done += host.size()) {
    const size_t n = std::min(host.size(), count - done);
    for (size_t i = 0; i < n; ++i) {
      seed = seed * 1664525u + 1013904223u;
      host[i] = scale * (static_cast<float>(seed >> 8) / 16777216.0f - 0.5f);
    }
    Check(cudaMemcpy(device + done, host.data(), n * sizeof(float), cudaMemcpyHostToDevice), "upload");
  }
  return device;
}

template <typename T>
T* DeviceCopy(const std::vector<T>& host) {
  T* device = nullptr;
  Check(cudaMalloc(&device, host.size() * sizeof(T)), "cudaMalloc");
  Check(cudaMemcpy(device, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice), "upload");
  return device;
}

// Mean milliseconds per call of `body` over `iters` calls on `stream`, after `warmup` calls.
template <typename Body>
double TimeMs(int warmup, int iters, cudaStream_t stream, Body body) {
  for (int i = 0; i < warmup; ++i) body();
  cudaEvent_t start, stop;
  Check(cudaEventCreate(&start), "event");
  Check(cudaEventCreate(&stop), "event");
  Check(cudaEventRecord(start, stream), "record");
  for (int i = 0; i < iters; ++i) body();
  Check(cudaEventRecord(stop, stream), "record");
  Check(cudaEventSynchronize(stop), "sync");
  float ms = 0;
  Check(cudaEventElapsedTime(&ms, start, stop), "elapsed");
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return ms / iters;
}

}  // namespace deltaserve::bench
