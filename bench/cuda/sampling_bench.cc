// Drawing each row's token on the GPU (LaunchSampleRows, Backend::SampleRows) at the vocabulary
// of Kimi Linear (163,840), beside the greedy argmax (LaunchArgmaxRows) and beside copying the
// logits to pinned host memory (what host sampling needs before it starts). Logits uniform over
// a range of 16 (peaked: a small nucleus) and of 2 (flat: most of the vocabulary in it). Prints
// one JSON line per case.
// Usage: cuda_sampling_bench [--rows R] [--iters N]
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "bench/cuda/bench_support.h"
#include "kernels/cuda/launchers.h"

namespace {

using deltaserve::bench::Check;
using deltaserve::kernels::DType;
using deltaserve::kernels::MakeView;
using deltaserve::kernels::RowSampling;

constexpr int64_t kVocab = 163840;

}  // namespace

int main(int argc, char** argv) {
  std::vector<int64_t> row_counts = {1, 8, 64};
  int iters = 50;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--rows") == 0) row_counts = {std::atoll(argv[i + 1])};
    if (std::strcmp(argv[i], "--iters") == 0) iters = std::atoi(argv[i + 1]);
  }
  cudaDeviceProp prop{};
  Check(cudaGetDeviceProperties(&prop, 0), "device properties");
  cudaStream_t stream;
  Check(cudaStreamCreate(&stream), "stream");
  using namespace deltaserve::kernels::cuda;
  const struct {
    const char* name;
    RowSampling draw;
  } draws[] = {{"temperature_1", {1.0f, 0, 1.0f, 0.0f, 0.5}},
               {"top_p_0.95_t_0.8", {0.8f, 0, 0.95f, 0.0f, 0.5}},
               {"top_k_50_top_p_0.9", {0.7f, 50, 0.9f, 0.0f, 0.5}},
               {"min_p_0.05", {1.0f, 0, 1.0f, 0.05f, 0.5}}};
  for (const float spread : {16.0f, 2.0f}) {
    for (const int64_t rows : row_counts) {
      float* logits = deltaserve::bench::DeviceFloats(static_cast<size_t>(rows * kVocab), spread, 3);
      int32_t* ids = nullptr;
      Check(cudaMalloc(&ids, rows * sizeof(int32_t)), "cudaMalloc");
      const auto x = MakeView(logits, DType::kF32, rows, kVocab);
      const auto id_view = MakeView(ids, DType::kI32, rows, 1);
      const double argmax_ms = deltaserve::bench::TimeMs(3, iters, stream, [&] {
        Check(static_cast<cudaError_t>(LaunchArgmaxRows(x, id_view, stream)), "argmax");
      });
      float* pinned = nullptr;
      Check(cudaMallocHost(&pinned, rows * kVocab * sizeof(float)), "cudaMallocHost");
      const double copy_ms = deltaserve::bench::TimeMs(3, iters, stream, [&] {
        Check(cudaMemcpyAsync(pinned, logits, rows * kVocab * sizeof(float), cudaMemcpyDeviceToHost, stream),
              "copy");
      });
      for (const auto& [name, draw] : draws) {
        const std::vector<RowSampling> host_draws(static_cast<size_t>(rows), draw);
        RowSampling* device_draws = deltaserve::bench::DeviceCopy(host_draws);
        const double ms = deltaserve::bench::TimeMs(3, iters, stream, [&] {
          Check(static_cast<cudaError_t>(LaunchSampleRows(x, device_draws, id_view, stream)), "sample");
        });
        std::printf("{\"gpu\": \"%s\", \"case\": \"sample_rows\", \"draw\": \"%s\", \"logit_range\": %.0f, "
                    "\"rows\": %lld, \"vocab\": %lld, \"sample_ms\": %.4f, \"argmax_ms\": %.4f, "
                    "\"logits_to_host_ms\": %.4f}\n",
                    prop.name, name, spread, static_cast<long long>(rows), static_cast<long long>(kVocab), ms,
                    argmax_ms, copy_ms);
        std::fflush(stdout);
        cudaFree(device_draws);
      }
      cudaFreeHost(pinned);
      cudaFree(ids);
      cudaFree(logits);
    }
  }
  return 0;
}
