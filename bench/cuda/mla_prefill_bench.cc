// MLA prefill attention on the GPU (the expanded form, spec §3.2: every new row of a sequence
// attends its keys 0 .. position, causal) at the Kimi-Linear-48B-A3B shape (32 heads, q/k 192 =
// nope 128 + rope 64, v 128), over the bf16 key tiles the CUDA backend expands per sequence
// (kernels/cuda/mla_expanded_tc.h). Both tensor-core kernels (warpgroup products where the build
// and GPU run them, mma.sync) beside cuBLAS's bf16 GEMM of 8192³ as the tensor-core ceiling
// (bench_support.h). The FLOPs are the causal ones: 2 · heads · (192 + 128) for each (query,
// key ≤ query) pair.
// bench/peers/sdpa_mla_prefill.py times PyTorch's attention kernels on the same shapes.
// Prints one JSON line per case.
// Usage: cuda_mla_prefill_bench [--batch B --length L] [--iters N]
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

#include "bench/cuda/bench_support.h"
#include "kernels/cuda/mla_expanded_tc.h"

namespace {

using deltaserve::bench::Check;
using deltaserve::kernels::DType;
using deltaserve::kernels::MakeView;
using deltaserve::kernels::MlaForm;
using deltaserve::kernels::MlaParams;
using deltaserve::kernels::MlaSequence;
using deltaserve::kernels::cuda::MlaRowTile;

constexpr int64_t kHeads = 32, kNope = 128, kRope = 64, kQk = kNope + kRope, kV = 128;

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::pair<int64_t, int64_t>> cases = {{1, 4096}, {1, 16384}, {1, 32768}, {8, 4096}};
  int iters = 10;
  int64_t batch = 0, length = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--iters") == 0) iters = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--batch") == 0) batch = std::atoll(argv[i + 1]);
    if (std::strcmp(argv[i], "--length") == 0) length = std::atoll(argv[i + 1]);
  }
  if (batch > 0 && length > 0) cases = {{batch, length}};
  cudaDeviceProp prop{};
  Check(cudaGetDeviceProperties(&prop, 0), "device properties");
  cudaStream_t stream;
  Check(cudaStreamCreate(&stream), "stream");
  const double ceiling = deltaserve::bench::MeasureDenseGemmTflops(stream, prop.name);

  const MlaParams params = deltaserve::bench::KimiMlaParams();
  for (const auto& [seqs_count, len] : cases) {
    const int64_t rows = seqs_count * len;
    float* q = deltaserve::bench::DeviceFloats(rows * kHeads * kQk, 1.0f, 4);
    float* out = nullptr;
    Check(cudaMalloc(&out, rows * kHeads * kV * sizeof(float)), "cudaMalloc");
    std::vector<MlaSequence> host_seqs(seqs_count);
    // Each sequence's key tiles (random keys and values: the layout does not change the work).
    std::vector<const void*> key_tiles(seqs_count);
    const int64_t tile_elements = deltaserve::kernels::cuda::kMlaExpandedTileBytes / 2;
    for (int64_t s = 0; s < seqs_count; ++s) {
      host_seqs[s].rows = {s * len, len};
      host_seqs[s].form = MlaForm::kExpanded;
      key_tiles[s] = deltaserve::bench::DeviceBf16(
          kHeads * deltaserve::kernels::cuda::MlaExpandedKeyTiles(len) * tile_elements, 1.0f, 5 + s);
    }
    MlaSequence* device_seqs = deltaserve::bench::DeviceCopy(host_seqs);
    const void** device_key_tiles = deltaserve::bench::DeviceCopy(key_tiles);
    const auto q_view = MakeView(q, DType::kF32, rows, kHeads * kQk);
    const auto out_view = MakeView(out, DType::kF32, rows, kHeads * kV);
    // Causal pairs: Σ over each sequence's positions p of p + 1 keys.
    const double flops = 2.0 * kHeads * (kQk + kV) * seqs_count * (len * (len + 1) / 2.0);
    const auto run = [&](const char* kernel, int64_t tile_rows, auto launch) {
      const std::vector<MlaRowTile> tiles =
          deltaserve::kernels::cuda::MlaExpandedRowTiles(host_seqs.data(), seqs_count, tile_rows);
      MlaRowTile* device_tiles = deltaserve::bench::DeviceCopy(tiles);
      deltaserve::kernels::cuda::MlaExpandedCall expanded;
      expanded.seqs = device_seqs;
      expanded.key_tiles = device_key_tiles;
      expanded.tiles = device_tiles;
      expanded.num_tiles = static_cast<int64_t>(tiles.size());
      const auto call = [&] {
        Check(static_cast<cudaError_t>(launch(params, q_view, expanded, out_view, stream)), kernel);
      };
      const double ms = deltaserve::bench::TimeMs(2, iters, stream, call);
      const double tflops = flops / (ms * 1e-3) / 1e12;
      std::printf("{\"gpu\": \"%s\", \"case\": \"mla_prefill\", \"kernel\": \"%s\", \"batch\": %lld, "
                  "\"length\": %lld, \"ms\": %.4f, \"tflops\": %.1f, \"of_dense_gemm\": %.3f}\n",
                  prop.name, kernel, static_cast<long long>(seqs_count), static_cast<long long>(len), ms, tflops,
                  tflops / ceiling);
      cudaFree(device_tiles);
    };
    if (deltaserve::kernels::cuda::MlaExpandedWgmmaRuns()) {
      run("wgmma", deltaserve::kernels::cuda::kMlaExpandedWgmmaRows, deltaserve::kernels::cuda::LaunchMlaExpandedWgmma);
    }
    run("mma_sync", deltaserve::kernels::cuda::kMlaExpandedTcRows, deltaserve::kernels::cuda::LaunchMlaExpandedTc);
    for (const void* p : key_tiles) cudaFree(const_cast<void*>(p));
    for (void* p : {static_cast<void*>(q), static_cast<void*>(out), static_cast<void*>(device_seqs),
                    static_cast<void*>(device_key_tiles)}) {
      cudaFree(p);
    }
  }
  return 0;
}
