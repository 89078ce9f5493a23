// What the CUDA benchmarks share: failing on a CUDA error, random device inputs, timing a body
// with CUDA events, and the copy-bandwidth and dense-GEMM ceilings.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "kernels/dtype.h"
#include "kernels/ops.h"

namespace deltaserve::bench {

inline void Check(cudaError_t error, const char* what) {
  if (error != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(error));
    std::exit(1);
  }
}

inline void CheckBlas(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS) {
    std::fprintf(stderr, "%s: cuBLAS status %d\n", what, static_cast<int>(status));
    std::exit(1);
  }
}

// `count` values uniform in [-scale/2, scale/2) from a linear congruential generator seeded with
// `seed`, each stored as convert(value): generated on the host in slices and uploaded.
template <typename T, typename Convert>
T* DeviceUniform(size_t count, float scale, unsigned seed, Convert convert) {
  T* device = nullptr;
  Check(cudaMalloc(&device, count * sizeof(T)), "cudaMalloc");
  std::vector<T> host(std::min<size_t>(count, size_t{1} << 24));
  for (size_t done = 0; done < count; done += host.size()) {
    const size_t n = std::min(host.size(), count - done);
    for (size_t i = 0; i < n; ++i) {
      seed = seed * 1664525u + 1013904223u;
      host[i] = convert(scale * (static_cast<float>(seed >> 8) / 16777216.0f - 0.5f));
    }
    Check(cudaMemcpy(device + done, host.data(), n * sizeof(T), cudaMemcpyHostToDevice), "upload");
  }
  return device;
}

inline float* DeviceFloats(size_t count, float scale, unsigned seed) {
  return DeviceUniform<float>(count, scale, seed, [](float value) { return value; });
}

// DeviceFloats' values (the same seed gives the same values) rounded to bf16.
inline uint16_t* DeviceBf16(size_t count, float scale, unsigned seed) {
  return DeviceUniform<uint16_t>(count, scale, seed, kernels::F32ToBF16);
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

// Milliseconds per call of `body(i)` captured `calls_per_graph` times (i = 0, 1, ...) into one
// CUDA graph and replayed, as a served decode step runs its kernels: no per-launch host cost.
template <typename Body>
double TimeInGraphMs(int calls_per_graph, int warmup, int iters, cudaStream_t stream, Body body) {
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  Check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "begin capture");
  for (int i = 0; i < calls_per_graph; ++i) body(i);
  Check(cudaStreamEndCapture(stream, &graph), "end capture");
  Check(cudaGraphInstantiate(&exec, graph, 0), "instantiate");
  const double ms = TimeMs(warmup, std::max(1, iters / calls_per_graph), stream,
                           [&] { Check(cudaGraphLaunch(exec, stream), "graph launch"); });
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  return ms / calls_per_graph;
}

// Host bf16 values in ±[2^-6, 2^-5) (about ±0.016 to ±0.031) with random signs and mantissas
// (weights for benchmarks). Before 2026-11-30 the exponent field held 0x3c, not 0x79: values of
// ~2^-67, whose products underflow, so the figures measured before then ran on near-zero data.
inline std::vector<uint16_t> RandomBf16(size_t count, unsigned seed) {
  constexpr unsigned kExponent = 127 - 6;  // 2^-6
  std::vector<uint16_t> out(count);
  for (auto& v : out) {
    seed = seed * 1664525u + 1013904223u;
    v = static_cast<uint16_t>(((seed >> 31) << 15) | (kExponent << 7) | ((seed >> 8) & 0x7f));
  }
  return out;
}

// Host fp32 values uniform in [-scale, scale).
inline std::vector<float> RandomF32(size_t count, unsigned seed, float scale) {
  std::vector<float> out(count);
  for (auto& v : out) {
    seed = seed * 1664525u + 1013904223u;
    v = scale * (2.0f * static_cast<float>(seed >> 8) / 16777216.0f - 1.0f);
  }
  return out;
}

// The ceiling the memory-bound figures are compared with: a 1 GiB device-to-device copy, bytes
// read plus written, in TB/s. Prints its JSON line for `gpu`.
inline double MeasureCopyTbps(cudaStream_t stream, const char* gpu) {
  const size_t bytes = size_t{1} << 30;
  void *src = nullptr, *dst = nullptr;
  Check(cudaMalloc(&src, bytes), "cudaMalloc");
  Check(cudaMalloc(&dst, bytes), "cudaMalloc");
  const double ms = TimeMs(5, 50, stream, [&] {
    Check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream), "copy");
  });
  const double tbps = 2.0 * bytes / (ms * 1e-3) / 1e12;
  std::printf("{\"gpu\": \"%s\", \"case\": \"copy\", \"bytes\": %zu, \"ms\": %.4f, \"tb_per_s\": %.3f}\n", gpu,
              bytes, ms, tbps);
  cudaFree(src);
  cudaFree(dst);
  return tbps;
}

// Kimi-Linear-48B-A3B's MLA, the shape the MLA benches time: 32 heads, latent rank 512, nope 128,
// rope 64, values 128, softmax scale 1/sqrt(192).
inline kernels::MlaParams KimiMlaParams() { return {32, 512, 128, 64, 128, 1.0f / 13.856406f}; }

// The ceiling the tensor-core figures are compared with: cuBLAS's bf16 GEMM of 8192³ with fp32
// output (as the CUDA backend calls it), in TFLOP/s. Prints its JSON line for `gpu`.
inline double MeasureDenseGemmTflops(cudaStream_t stream, const char* gpu) {
  constexpr int64_t n = 8192;
  cublasHandle_t blas;
  CheckBlas(cublasCreate(&blas), "cublasCreate");
  CheckBlas(cublasSetStream(blas, stream), "cublasSetStream");
  void *a = nullptr, *w = nullptr;
  float* y = nullptr;
  Check(cudaMalloc(&a, n * n * 2), "cudaMalloc");
  Check(cudaMalloc(&w, n * n * 2), "cudaMalloc");
  Check(cudaMalloc(&y, n * n * 4), "cudaMalloc");
  Check(cudaMemset(a, 0x3c, n * n * 2), "memset");
  Check(cudaMemset(w, 0x3c, n * n * 2), "memset");
  const float alpha = 1.0f, beta = 0.0f;
  const double ms = TimeMs(3, 20, stream, [&] {
    CheckBlas(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, n, n, n, &alpha, w, CUDA_R_16BF, n, a, CUDA_R_16BF, n,
                           &beta, y, CUDA_R_32F, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
              "gemm");
  });
  const double tflops = 2.0 * n * n * n / (ms * 1e-3) / 1e12;
  std::printf("{\"gpu\": \"%s\", \"case\": \"dense_gemm_8192\", \"ms\": %.4f, \"tflops\": %.1f}\n", gpu, ms,
              tflops);
  cudaFree(a);
  cudaFree(w);
  cudaFree(y);
  cublasDestroy(blas);
  return tflops;
}

}  // namespace deltaserve::bench
