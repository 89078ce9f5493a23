// The dense products of a Kimi-Linear-48B-A3B decode step against the device's copy bandwidth:
// every bf16 weight shape a step multiplies (KDA, MLA, shared expert, dense FFN, LM head: 283 of
// its 309 products; the other 26 are the fp32 MoE routers), at 1 to 8
// rows, through the skinny kernel (matmul_skinny.cu: what serves decode) and through cuBLAS (bf16
// activations, as served for more rows), side by side. A product's bytes are its bf16 weight,
// read once; "of copy" is their rate over the copy's read + write rate. Each case is timed in a
// CUDA graph of back-to-back calls (as a replayed decode step runs them) cycling over enough
// copies of the weight to leave the 50 MB L2 (as a step's layers do). The last line per row
// count sums a whole token: every shape times its count per step, against the weight-read floor,
// and the same token as the model launches it (launch_* lines: a layer's products of one input
// in one launch, Backend::MatMuls), plain and as programmatic dependent launches (each launch
// may start while the one before it finishes).
// Prints one JSON line per case.
// Usage: cuda_matmul_bench [--rows R (1..8; default 1 and 8)]... [--iters N]
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "bench/cuda/bench_support.h"
#include "kernels/cuda/launchers.h"

namespace {

using deltaserve::bench::Check;
using deltaserve::bench::CheckBlas;
using deltaserve::bench::DeviceFloats;
using deltaserve::kernels::DType;
using deltaserve::kernels::MakeView;
using deltaserve::kernels::TensorView;

struct Shape {
  const char* name;
  int64_t n, k;       // weight [n, k]
  int per_token;      // products of this shape in one decode step (27 layers)
};

// 20 KDA layers, 7 MLA layers, 26 MoE layers' shared expert, 1 dense FFN layer, the LM head.
constexpr Shape kShapes[] = {
    {"kda_qkv_proj", 4096, 2304, 60}, {"kda_o_proj", 2304, 4096, 20},
    {"kda_f_a_g_a", 128, 2304, 40},   {"kda_f_b_g_b", 4096, 128, 40},
    {"kda_b_proj", 32, 2304, 20},     {"mla_q_proj", 6144, 2304, 7},
    {"mla_kv_a_proj", 576, 2304, 7},  {"mla_o_proj", 2304, 4096, 7},
    {"shared_gate_up", 1024, 2304, 52}, {"shared_down", 2304, 1024, 26},
    {"dense_gate_up", 9216, 2304, 2}, {"dense_down", 2304, 9216, 1},
    {"lm_head", 163840, 2304, 1},
};

// The launches a decode step makes of those products (Backend::MatMuls: a layer's products of one
// input row count together in one skinny launch), per token.
struct Launch {
  const char* name;
  std::vector<Shape> products;  // per_token unused here
  int per_token;
};

std::vector<Launch> StepLaunches() {
  return {
      {"kda_from_x", {{"q", 4096, 2304, 0}, {"k", 4096, 2304, 0}, {"v", 4096, 2304, 0},
                      {"f_a", 128, 2304, 0}, {"b", 32, 2304, 0}, {"g_a", 128, 2304, 0}}, 20},
      {"kda_expansions", {{"f_b", 4096, 128, 0}, {"g_b", 4096, 128, 0}}, 20},
      {"kda_o_proj", {{"o", 2304, 4096, 0}}, 20},
      {"mla_from_x", {{"q", 6144, 2304, 0}, {"kv_a", 576, 2304, 0}}, 7},
      {"mla_o_proj", {{"o", 2304, 4096, 0}}, 7},
      {"shared_gate_up", {{"gate", 1024, 2304, 0}, {"up", 1024, 2304, 0}}, 26},
      {"shared_down", {{"down", 2304, 1024, 0}}, 26},
      {"dense_gate_up", {{"gate", 9216, 2304, 0}, {"up", 9216, 2304, 0}}, 1},
      {"dense_down", {{"down", 2304, 9216, 0}}, 1},
      {"lm_head", {{"lm_head", 163840, 2304, 0}}, 1},
  };
}

constexpr size_t kOutOfL2Bytes = size_t{256} << 20;
constexpr int kCallsPerGraph = 32;

}  // namespace

int main(int argc, char** argv) {
  int iters = 320;
  std::vector<int64_t> row_counts;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--rows") == 0) row_counts.push_back(std::atoll(argv[i + 1]));
    if (std::strcmp(argv[i], "--iters") == 0) iters = std::atoi(argv[i + 1]);
  }
  if (row_counts.empty()) row_counts = {1, 8};
  for (const int64_t rows : row_counts) {
    if (rows < 1 || rows > deltaserve::kernels::cuda::kSkinnyMatMulMaxRows) {
      std::fprintf(stderr, "--rows %lld: the skinny kernel takes 1 to %lld rows\n", static_cast<long long>(rows),
                   static_cast<long long>(deltaserve::kernels::cuda::kSkinnyMatMulMaxRows));
      return 2;
    }
  }
  cudaDeviceProp prop{};
  Check(cudaGetDeviceProperties(&prop, 0), "device properties");
  cudaStream_t stream;
  Check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
  cublasHandle_t blas;
  CheckBlas(cublasCreate(&blas), "cublasCreate");
  CheckBlas(cublasSetStream(blas, stream), "cublasSetStream");
  void* workspace = nullptr;
  constexpr size_t kWorkspaceBytes = size_t{32} << 20;
  Check(cudaMalloc(&workspace, kWorkspaceBytes), "cudaMalloc");
  CheckBlas(cublasSetWorkspace(blas, workspace, kWorkspaceBytes), "cublasSetWorkspace");
  const double copy_tbps = deltaserve::bench::MeasureCopyTbps(stream, prop.name);

  for (const int64_t rows : row_counts) {
    double skinny_token_ms = 0, blas_token_ms = 0, token_bytes = 0;
    for (const Shape& shape : kShapes) {
      const size_t weight_bytes = static_cast<size_t>(shape.n * shape.k) * sizeof(uint16_t);
      const int copies = static_cast<int>(std::max<size_t>(1, (kOutOfL2Bytes + weight_bytes - 1) / weight_bytes));
      std::vector<void*> weights(copies);
      const std::vector<uint16_t> host = deltaserve::bench::RandomBf16(static_cast<size_t>(shape.n * shape.k), 7);
      for (void*& w : weights) w = deltaserve::bench::DeviceCopy(host);
      float* x = DeviceFloats(static_cast<size_t>(rows * shape.k), 2.0f, 3);
      float* y = nullptr;
      Check(cudaMalloc(&y, static_cast<size_t>(rows * shape.n) * sizeof(float)), "cudaMalloc");
      void* x_bf16 = nullptr;
      Check(cudaMalloc(&x_bf16, static_cast<size_t>(rows * shape.k) * sizeof(uint16_t)), "cudaMalloc");
      const TensorView xv = MakeView(x, DType::kF32, rows, shape.k);
      const TensorView yv = MakeView(y, DType::kF32, rows, shape.n);

      const double skinny_ms = deltaserve::bench::TimeInGraphMs(kCallsPerGraph, 3, iters, stream, [&](int i) {
        const TensorView w = MakeView(weights[i % copies], DType::kBF16, shape.n, shape.k);
        Check(static_cast<cudaError_t>(deltaserve::kernels::cuda::LaunchSkinnyMatMul(xv, w, yv, stream)),
              "skinny matmul");
      });
      const float alpha = 1.0f, beta = 0.0f;
      const double blas_ms = deltaserve::bench::TimeInGraphMs(kCallsPerGraph, 3, iters, stream, [&](int i) {
        Check(static_cast<cudaError_t>(deltaserve::kernels::cuda::LaunchConvertF32(xv, DType::kBF16, x_bf16, stream)),
              "convert");
        CheckBlas(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(shape.n), static_cast<int>(rows),
                               static_cast<int>(shape.k), &alpha, weights[i % copies], CUDA_R_16BF,
                               static_cast<int>(shape.k), x_bf16, CUDA_R_16BF, static_cast<int>(shape.k), &beta, y,
                               CUDA_R_32F, static_cast<int>(shape.n), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                  "gemm");
      });
      const double floor_ms = weight_bytes / (copy_tbps * 1e12) * 1e3;
      std::printf(
          "{\"gpu\": \"%s\", \"case\": \"%s\", \"rows\": %lld, \"n\": %lld, \"k\": %lld, \"per_token\": %d, "
          "\"weight_bytes\": %zu, \"skinny_ms\": %.5f, \"skinny_of_copy\": %.3f, \"cublas_ms\": %.5f, "
          "\"cublas_of_copy\": %.3f}\n",
          prop.name, shape.name, static_cast<long long>(rows), static_cast<long long>(shape.n),
          static_cast<long long>(shape.k), shape.per_token, weight_bytes, skinny_ms, floor_ms / skinny_ms, blas_ms,
          floor_ms / blas_ms);
      skinny_token_ms += shape.per_token * skinny_ms;
      blas_token_ms += shape.per_token * blas_ms;
      token_bytes += static_cast<double>(shape.per_token) * static_cast<double>(weight_bytes);
      for (void* w : weights) cudaFree(w);
      cudaFree(x);
      cudaFree(y);
      cudaFree(x_bf16);
    }
    const double token_floor_ms = token_bytes / (copy_tbps * 1e12) * 1e3;
    // The same token as the model launches it.
    double launches_token_ms = 0, programmatic_token_ms = 0;
    for (const Launch& launch : StepLaunches()) {
      size_t launch_bytes = 0;
      for (const Shape& shape : launch.products) launch_bytes += static_cast<size_t>(shape.n * shape.k) * sizeof(uint16_t);
      const int copies = static_cast<int>(std::max<size_t>(1, (kOutOfL2Bytes + launch_bytes - 1) / launch_bytes));
      std::vector<std::vector<deltaserve::kernels::cuda::SkinnyProduct>> sets(copies);
      std::vector<void*> buffers;
      for (auto& set : sets) {
        for (const Shape& shape : launch.products) {
          const std::vector<uint16_t> host = deltaserve::bench::RandomBf16(static_cast<size_t>(shape.n * shape.k), 7);
          void* w = deltaserve::bench::DeviceCopy(host);
          float* x = DeviceFloats(static_cast<size_t>(rows * shape.k), 2.0f, 3);
          float* y = nullptr;
          Check(cudaMalloc(&y, static_cast<size_t>(rows * shape.n) * sizeof(float)), "cudaMalloc");
          buffers.insert(buffers.end(), {w, x, y});
          set.push_back({MakeView(x, DType::kF32, rows, shape.k), MakeView(w, DType::kBF16, shape.n, shape.k),
                         MakeView(y, DType::kF32, rows, shape.n)});
        }
      }
      auto time_launches = [&](bool programmatic) {
        return deltaserve::bench::TimeInGraphMs(kCallsPerGraph, 3, iters, stream, [&](int i) {
          const auto& set = sets[static_cast<size_t>(i % copies)];
          Check(static_cast<cudaError_t>(deltaserve::kernels::cuda::LaunchSkinnyMatMuls(
                    set.data(), static_cast<int>(set.size()), stream, programmatic)),
                "skinny matmuls");
        });
      };
      const double ms = time_launches(false);
      const double programmatic_ms = time_launches(true);
      const double floor_ms = launch_bytes / (copy_tbps * 1e12) * 1e3;
      std::printf(
          "{\"gpu\": \"%s\", \"case\": \"launch_%s\", \"rows\": %lld, \"products\": %zu, \"per_token\": %d, "
          "\"weight_bytes\": %zu, \"skinny_ms\": %.5f, \"skinny_of_copy\": %.3f, \"programmatic_ms\": %.5f, "
          "\"programmatic_of_copy\": %.3f}\n",
          prop.name, launch.name, static_cast<long long>(rows), launch.products.size(), launch.per_token,
          launch_bytes, ms, floor_ms / ms, programmatic_ms, floor_ms / programmatic_ms);
      launches_token_ms += launch.per_token * ms;
      programmatic_token_ms += launch.per_token * programmatic_ms;
      for (void* b : buffers) cudaFree(b);
    }
    std::printf(
        "{\"gpu\": \"%s\", \"case\": \"dense_products_per_token\", \"rows\": %lld, \"weight_bytes\": %.0f, "
        "\"floor_ms\": %.4f, \"skinny_ms\": %.4f, \"skinny_of_copy\": %.3f, \"cublas_ms\": %.4f, "
        "\"cublas_of_copy\": %.3f, \"skinny_as_launched_ms\": %.4f, \"skinny_as_launched_of_copy\": %.3f, "
        "\"programmatic_as_launched_ms\": %.4f, \"programmatic_as_launched_of_copy\": %.3f}\n",
        prop.name, static_cast<long long>(rows), token_bytes, token_floor_ms, skinny_token_ms,
        token_floor_ms / skinny_token_ms, blas_token_ms, token_floor_ms / blas_token_ms, launches_token_ms,
        token_floor_ms / launches_token_ms, programmatic_token_ms, token_floor_ms / programmatic_token_ms);
  }
  cudaFree(workspace);
  cublasDestroy(blas);
  cudaStreamDestroy(stream);
  return 0;
}
