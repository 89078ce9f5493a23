// MoE expert products on the GPU at the Kimi-Linear-48B-A3B shape (256 experts, top 8, hidden
// 2304, expert inner size 1024, bf16 weights), through CudaBackend::MoeExperts with each of its
// expert kernels: the decode kernels (at most 32 slots: one warp per output column of each slot),
// the grouped kernels (device-side grouping, tensor cores: as the backend picks its tiles by
// default, and forced to the mma.sync tiles and to the wide warpgroup tiles), cuBLAS's grouped
// products (cublasGemmGroupedBatchedEx after the same grouping, the row counts read back) and
// per-expert cuBLAS products (ids downloaded, rows grouped on the host). Beside them, in the same
// run:
// - the dense ceiling: cuBLAS bf16 GEMMs of the same rows and FLOPs as if every row went to one
//   expert ([T·k, hidden] × [2·inner, hidden]ᵀ and [T·k, inner] × [hidden, inner]ᵀ), and one
//   8192³ bf16 GEMM;
// - the copy ceiling for decode sizes: a 1 GiB device-to-device copy, read + write bytes; the
//   expert weights an MoE call must read are the active experts' matrices.
// Routing comes from random logits through MoeRoute (about uniform over experts). First of the
// MoE cases, the whole MoE FFN of a decode step (CudaBackend::MoeFfn with a random fp32 router
// and the shared expert) at 1 and 2 tokens, against the weight bytes it reads.
// Prints one JSON line per case.
// Usage: cuda_moe_bench [--tokens T]... [--iters N]
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "bench/cuda/bench_support.h"
#include "kernels/cuda/cuda_backend.h"

namespace {

using deltaserve::bench::Check;
using deltaserve::bench::CheckBlas;
using deltaserve::kernels::DType;
using deltaserve::kernels::ExpertWeights;
using deltaserve::kernels::MakeView;
using deltaserve::kernels::MoeRouting;
using deltaserve::kernels::Tensor;
using deltaserve::kernels::TensorView;
using deltaserve::kernels::cuda::CudaBackend;
using deltaserve::kernels::cuda::CudaBackendOptions;
using deltaserve::kernels::cuda::MoeExpertsKernel;

constexpr int64_t kExperts = 256, kTopK = 8, kHidden = 2304, kInner = 1024;
constexpr int kDistinctHostSets = 8;  // host weight sets cycled over the experts

// Mean milliseconds of `body` (which queues work on `backend`), host clock around a synchronised
// loop: the per-expert kernel waits for the ids inside each call, the grouped one does not.
template <typename Body>
double TimeCalls(CudaBackend& backend, int warmup, int iters, Body body) {
  for (int i = 0; i < warmup; ++i) body();
  backend.Synchronize();
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) body();
  backend.Synchronize();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count() / iters;
}

struct Backend {
  std::unique_ptr<CudaBackend> backend;
  std::vector<ExpertWeights> experts;
};

Backend Make(MoeExpertsKernel kernel, int64_t decode_max_slots, int64_t wide_tiles_min_rows,
             std::vector<std::vector<uint16_t>>& host_sets, int64_t cublas_grouped_min_slots = 0) {
  CudaBackendOptions options;
  options.moe_experts = kernel;
  options.moe_decode_max_slots = decode_max_slots;
  options.moe_wide_tiles_min_rows = wide_tiles_min_rows;
  options.moe_cublas_grouped_min_slots = cublas_grouped_min_slots;
  std::string error;
  Backend b;
  b.backend = CudaBackend::Create(options, &error);
  if (b.backend == nullptr) {
    std::fprintf(stderr, "cuda backend: %s\n", error.c_str());
    std::exit(1);
  }
  for (int64_t e = 0; e < kExperts; ++e) {
    auto& set = host_sets[static_cast<size_t>(e % kDistinctHostSets)];
    uint16_t* base = set.data();
    const int64_t matrix = kInner * kHidden;
    b.experts.push_back({b.backend->AdoptWeight(MakeView(base, DType::kBF16, kInner, kHidden)),
                         b.backend->AdoptWeight(MakeView(base + matrix, DType::kBF16, kInner, kHidden)),
                         b.backend->AdoptWeight(MakeView(base + 2 * matrix, DType::kBF16, kHidden, kInner))});
  }
  b.backend->Synchronize();
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int64_t> token_counts;
  int iters = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--tokens") == 0) token_counts.push_back(std::atoll(argv[i + 1]));
    if (std::strcmp(argv[i], "--iters") == 0) iters = std::atoi(argv[i + 1]);
  }
  if (token_counts.empty()) token_counts = {1, 2, 4, 16, 64, 256, 1024, 4096, 16384, 32768};
  cudaDeviceProp prop{};
  Check(cudaGetDeviceProperties(&prop, 0), "device properties");
  cudaStream_t stream;
  Check(cudaStreamCreate(&stream), "stream");
  cublasHandle_t blas;
  CheckBlas(cublasCreate(&blas), "cublasCreate");
  CheckBlas(cublasSetStream(blas, stream), "cublasSetStream");

  // Ceilings: device copy bandwidth and one large bf16 GEMM.
  const double copy_tbps = deltaserve::bench::MeasureCopyTbps(stream, prop.name);

  // Dense bf16 GEMM y[m, n] = a[m, k] · w[n, k]ᵀ with fp32 output, as the backend calls cuBLAS.
  auto dense_gemm = [&](int64_t m, int64_t n, int64_t k, const void* a, const void* w, float* y) {
    const float alpha = 1.0f, beta = 0.0f;
    CheckBlas(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, w, CUDA_R_16BF, k, a,
                           CUDA_R_16BF, k, &beta, y, CUDA_R_32F, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
              "gemm");
  };
  const double ceiling_tflops = deltaserve::bench::MeasureDenseGemmTflops(stream, prop.name);

  std::vector<std::vector<uint16_t>> host_sets;
  for (int s = 0; s < kDistinctHostSets; ++s) host_sets.push_back(deltaserve::bench::RandomBf16(3 * kInner * kHidden, 11u + s));
  constexpr int64_t kDecodeMaxSlots = 32;
  constexpr int64_t kNever = 1 << 30;
  const int64_t wide_default = CudaBackendOptions{}.moe_wide_tiles_min_rows;
  Backend decode = Make(MoeExpertsKernel::kGrouped, kDecodeMaxSlots, wide_default, host_sets);
  Backend grouped = Make(MoeExpertsKernel::kGrouped, 0, wide_default, host_sets);
  Backend grouped_mma = Make(MoeExpertsKernel::kGrouped, 0, kNever, host_sets);
  Backend grouped_wide = Make(MoeExpertsKernel::kGrouped, 0, 0, host_sets);
  Backend cublas_grouped = Make(MoeExpertsKernel::kGrouped, 0, wide_default, host_sets, 1);
  Backend per_expert = Make(MoeExpertsKernel::kPerExpert, 0, kNever, host_sets);
  // The whole MoE FFN of a decode step as the model calls it (CudaBackend::MoeFfn: the fp32
  // router with its correction bias, the routing, the routed and shared experts and the combine),
  // at 1 and 2 tokens, against the weight bytes it must read.
  {
    CudaBackend& backend = *decode.backend;
    const std::vector<float> router = deltaserve::bench::RandomF32(kExperts * kHidden, 21u, 0.05f);
    const std::vector<float> bias = deltaserve::bench::RandomF32(kExperts, 22u, 0.01f);
    uint16_t* shared_base = host_sets[0].data();
    const ExpertWeights shared{
        backend.AdoptWeight(MakeView(shared_base, DType::kBF16, kInner, kHidden)),
        backend.AdoptWeight(MakeView(shared_base + kInner * kHidden, DType::kBF16, kInner, kHidden)),
        backend.AdoptWeight(MakeView(shared_base + 2 * kInner * kHidden, DType::kBF16, kHidden, kInner))};
    const TensorView router_w =
        backend.AdoptWeightF32(MakeView(const_cast<float*>(router.data()), DType::kF32, kExperts, kHidden));
    const TensorView bias_w =
        backend.AdoptWeightF32(MakeView(const_cast<float*>(bias.data()), DType::kF32, 1, kExperts));
    for (const int64_t tokens : {int64_t{1}, int64_t{2}}) {
      const std::vector<float> host_x = deltaserve::bench::RandomF32(tokens * kHidden, 23u, 1.0f);
      Tensor x = backend.Allocate(tokens, kHidden, DType::kF32);
      backend.Upload(host_x.data(), x.view());
      Tensor out = backend.Allocate(tokens, kHidden, DType::kF32);
      const MoeRouting routing{kTopK, 1, 1, true, 2.446f, false};
      const double ms = TimeCalls(backend, 5, iters > 0 ? iters : 200, [&] {
        backend.MoeFfn(x.view(), router_w, bias_w, routing, decode.experts, &shared, out.view());
      });
      // Weights read: the router, the shared expert and (about) tokens × top 8 routed experts.
      const double bytes = 4.0 * kExperts * kHidden + (1.0 + kTopK * tokens) * 3 * kHidden * kInner * 2;
      std::printf("{\"gpu\": \"%s\", \"case\": \"moe_ffn\", \"tokens\": %lld, \"ms\": %.4f, "
                  "\"weights_vs_copy\": %.3f}\n",
                  prop.name, static_cast<long long>(tokens), ms, bytes / (ms * 1e-3) / 1e12 / copy_tbps);
    }
    std::fflush(stdout);
  }

  for (const int64_t tokens : token_counts) {
    const int64_t slots = tokens * kTopK;
    const int n_iters = iters > 0 ? iters : (tokens <= 256 ? 50 : tokens <= 4096 ? 10 : 4);
    // Routing on the grouped backend; the same ids are uploaded to the other.
    std::vector<float> host_x(static_cast<size_t>(tokens * kHidden));
    std::vector<float> host_logits(static_cast<size_t>(tokens * kExperts));
    unsigned seed = 5;
    for (auto& v : host_x) seed = seed * 1664525u + 1013904223u, v = static_cast<float>(seed >> 8) / 16777216.0f - 0.5f;
    for (auto& v : host_logits) seed = seed * 1664525u + 1013904223u, v = 4.0f * (static_cast<float>(seed >> 8) / 16777216.0f - 0.5f);
    std::vector<int32_t> ids(static_cast<size_t>(slots));
    {
      CudaBackend& b = *grouped.backend;
      Tensor logits = b.Allocate(tokens, kExperts, DType::kF32);
      b.Upload(host_logits.data(), logits.view());
      Tensor d_ids = b.Allocate(tokens, kTopK, DType::kI32);
      Tensor d_w = b.Allocate(tokens, kTopK, DType::kF32);
      b.MoeRoute(logits.view(), TensorView{}, MoeRouting{kTopK, 1, 1, true, 2.446f, false}, d_ids.view(), d_w.view());
      b.Download(d_ids.view(), ids.data());
    }
    const std::set<int32_t> active(ids.begin(), ids.end());
    const double weight_bytes = static_cast<double>(active.size()) * 3 * kHidden * kInner * 2;
    const double flops = 2.0 * slots * 3 * kHidden * kInner;

    auto time_backend = [&](Backend& b) {
      CudaBackend& backend = *b.backend;
      Tensor x = backend.Allocate(tokens, kHidden, DType::kF32);
      backend.Upload(host_x.data(), x.view());
      Tensor d_ids = backend.Allocate(tokens, kTopK, DType::kI32);
      backend.Upload(ids.data(), d_ids.view());
      Tensor slot_out = backend.Allocate(slots, kHidden, DType::kF32);
      return TimeCalls(backend, 2, n_iters, [&] {
        backend.MoeExperts(x.view(), d_ids.view(), b.experts, 0, slot_out.view());
      });
    };
    const double decode_ms = slots <= kDecodeMaxSlots ? time_backend(decode) : 0;
    const double grouped_ms = time_backend(grouped);
    const double grouped_mma_ms = time_backend(grouped_mma);
    const double grouped_wide_ms = time_backend(grouped_wide);
    const double cublas_grouped_ms = time_backend(cublas_grouped);
    const double per_expert_ms = time_backend(per_expert);

    // The dense ceiling at the same rows: gate and up stacked, then down.
    double dense_ms = 0;
    {
      void *a = nullptr, *w_gate_up = nullptr, *h = nullptr, *w_down = nullptr;
      float* y = nullptr;
      Check(cudaMalloc(&a, slots * kHidden * 2), "cudaMalloc");
      Check(cudaMalloc(&w_gate_up, 2 * kInner * kHidden * 2), "cudaMalloc");
      Check(cudaMalloc(&h, slots * kInner * 2), "cudaMalloc");
      Check(cudaMalloc(&w_down, kHidden * kInner * 2), "cudaMalloc");
      Check(cudaMalloc(&y, slots * std::max(2 * kInner, kHidden) * 4), "cudaMalloc");
      Check(cudaMemset(a, 0x3c, slots * kHidden * 2), "memset");
      Check(cudaMemset(w_gate_up, 0x3c, 2 * kInner * kHidden * 2), "memset");
      Check(cudaMemset(h, 0x3c, slots * kInner * 2), "memset");
      Check(cudaMemset(w_down, 0x3c, kHidden * kInner * 2), "memset");
      dense_ms = deltaserve::bench::TimeMs(2, n_iters, stream, [&] {
        dense_gemm(slots, 2 * kInner, kHidden, a, w_gate_up, y);
        dense_gemm(slots, kHidden, kInner, h, w_down, y);
      });
      cudaFree(a);
      cudaFree(w_gate_up);
      cudaFree(h);
      cudaFree(w_down);
      cudaFree(y);
    }
    const double dense_tflops = flops / (dense_ms * 1e-3) / 1e12;
    auto report = [&](const char* kernel, double ms) {
      const double tflops = flops / (ms * 1e-3) / 1e12;
      const double tbps = weight_bytes / (ms * 1e-3) / 1e12;
      std::printf(
          "{\"gpu\": \"%s\", \"case\": \"moe_experts\", \"kernel\": \"%s\", \"tokens\": %lld, \"active_experts\": %zu, "
          "\"ms\": %.4f, \"tflops\": %.1f, \"vs_dense_same_rows\": %.3f, \"vs_gemm_8192\": %.3f, "
          "\"weight_tb_per_s\": %.3f, \"weights_vs_copy\": %.3f}\n",
          prop.name, kernel, static_cast<long long>(tokens), active.size(), ms, tflops, tflops / dense_tflops,
          tflops / ceiling_tflops, tbps, tbps / copy_tbps);
    };
    std::printf("{\"gpu\": \"%s\", \"case\": \"dense_same_rows\", \"tokens\": %lld, \"ms\": %.4f, \"tflops\": %.1f}\n",
                prop.name, static_cast<long long>(tokens), dense_ms, dense_tflops);
    if (decode_ms > 0) report("decode", decode_ms);
    report("grouped", grouped_ms);
    report("grouped_mma_sync_tiles", grouped_mma_ms);
    report("grouped_wide_tiles", grouped_wide_ms);
    report("cublas_grouped", cublas_grouped_ms);
    report("per_expert_cublas", per_expert_ms);
    std::fflush(stdout);
  }
  cublasDestroy(blas);
  return 0;
}
