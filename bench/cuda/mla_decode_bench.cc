// MLA decode on the GPU against the device's copy bandwidth: one new token per sequence through the
// absorbed kernel (append the token's latent row, q absorbed with W_UK, attention over the whole
// latent cache split evenly over the SMs, the splits' states merged, W_UV after) at the
// Kimi-Linear-48B-A3B shape (32 heads, kv_lora_rank 512, rope 64, nope 128, v 128, bf16 latent
// cache in pages of 256 rows as the CUDA backend keeps it at serving precision, bf16 kv_b), beside
// a 1 GiB device-to-device copy. The bytes that must move are the cache rows read (576 bf16 each);
// the figure is their rate over the copy's read + write rate. A mixed batch (contexts L/N, 2L/N,
// .., L) shows how evenly the keys of unequal sequences are spread over the GPU, as continuous
// batching serves them. Each case is timed launched one after another (ms, the figure the rate is
// from) and as calls captured in one CUDA graph (graph_ms), as the engine's decode steps run.
// Prints one JSON line per case.
// Usage: cuda_mla_decode_bench [--batch B --context L | --mixed N --context L] [--iters N]
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

#include "bench/cuda/bench_support.h"
#include "kernels/cuda/launchers.h"

namespace {

using deltaserve::bench::Check;
using deltaserve::bench::DeviceFloats;
using deltaserve::kernels::DType;
using deltaserve::kernels::MakeView;
using deltaserve::kernels::MlaForm;
using deltaserve::kernels::MlaParams;
using deltaserve::kernels::MlaSequence;

constexpr int64_t kHeads = 32, kRank = 512, kRope = 64, kNope = 128, kV = 128;
constexpr int64_t kPageRows = 256;  // the engine's latent pages (model::kDefaultLatentPageRows)

}  // namespace

int main(int argc, char** argv) {
  // Each case: the sequences' contexts (rows of history before the new token).
  const auto uniform = [](int64_t batch, int64_t context) { return std::vector<int64_t>(batch, context); };
  const auto mixed = [](int64_t n, int64_t longest) {
    std::vector<int64_t> contexts;
    for (int64_t i = 1; i <= n; ++i) contexts.push_back(longest * i / n);
    return contexts;
  };
  std::vector<std::vector<int64_t>> cases = {uniform(1, 4096),   uniform(1, 65536),  uniform(1, 131072),
                                             uniform(1, 1048576), uniform(8, 65536), uniform(8, 131072),
                                             mixed(16, 131072),  uniform(64, 4096),  uniform(64, 65536),
                                             uniform(64, 131072)};
  int iters = 20;
  int64_t batch = 0, mixed_count = 0, longest_arg = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--iters") == 0) iters = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--batch") == 0) batch = std::atoll(argv[i + 1]);
    if (std::strcmp(argv[i], "--mixed") == 0) mixed_count = std::atoll(argv[i + 1]);
    if (std::strcmp(argv[i], "--context") == 0) longest_arg = std::atoll(argv[i + 1]);
  }
  if (longest_arg > 0 && batch > 0) cases = {uniform(batch, longest_arg)};
  if (longest_arg > 0 && mixed_count > 0) cases = {mixed(mixed_count, longest_arg)};
  cudaDeviceProp prop{};
  Check(cudaGetDeviceProperties(&prop, 0), "device properties");
  cudaStream_t stream;
  Check(cudaStreamCreate(&stream), "stream");

  const double copy_tbps = deltaserve::bench::MeasureCopyTbps(stream, prop.name);

  const MlaParams params = deltaserve::bench::KimiMlaParams();
  const int64_t width = kRank + kRope;
  // kv_b [H*(nope+v), R].
  const std::vector<uint16_t> host_kv_b =
      deltaserve::bench::RandomBf16(static_cast<size_t>(kHeads * (kNope + kV) * kRank), 3);
  uint16_t* kv_b = deltaserve::bench::DeviceCopy(host_kv_b);
  const auto kv_b_view = MakeView(kv_b, DType::kBF16, kHeads * (kNope + kV), kRank);

  for (const std::vector<int64_t>& contexts : cases) {
    // One cache per sequence, its context's rows of history plus the new one; a block of 4096
    // rows' worth of random bf16 values repeated, whatever rows the pages' layout makes of them
    // (the values do not change the work), in pages of kPageRows rows (one allocation per
    // sequence, pages in order).
    const int64_t b = static_cast<int64_t>(contexts.size());
    const int64_t longest = *std::max_element(contexts.begin(), contexts.end());
    int64_t keys = 0;  // every sequence's history and new row
    for (int64_t context : contexts) keys += context + 1;
    // A uniform batch's context, or -1 for a mixed one ("longest" names its longest).
    const int64_t context = longest == contexts.front() ? longest : -1;
    std::vector<int64_t> pages;  // each cache's
    for (int64_t context_i : contexts) pages.push_back((context_i + 1 + kPageRows - 1) / kPageRows);
    std::vector<uint16_t*> caches(static_cast<size_t>(b));
    uint16_t* block =
        deltaserve::bench::DeviceCopy(deltaserve::bench::RandomBf16(static_cast<size_t>(4096 * width), 7));
    bool fits = true;
    for (int64_t i = 0; i < b; ++i) {
      if (cudaMalloc(&caches[i], pages[i] * kPageRows * width * sizeof(uint16_t)) != cudaSuccess) {
        (void)cudaGetLastError();
        caches[i] = nullptr;
        fits = false;
        break;
      }
      for (int64_t r = 0; r < contexts[i]; r += 4096) {
        const int64_t n = std::min<int64_t>(4096, contexts[i] - r);
        Check(cudaMemcpy(caches[i] + r * width, block, n * width * sizeof(uint16_t), cudaMemcpyDeviceToDevice), "fill");
      }
    }
    cudaFree(block);
    if (!fits) {
      std::printf("{\"gpu\": \"%s\", \"case\": \"mla_decode\", \"batch\": %lld, \"context\": %lld, "
                  "\"longest\": %lld, \"skipped\": \"caches do not fit\"}\n",
                  prop.name, static_cast<long long>(b), static_cast<long long>(context),
                  static_cast<long long>(longest));
      for (uint16_t* cache : caches) cudaFree(cache);
      continue;
    }
    std::vector<void*> host_tables;
    std::vector<MlaSequence> host_seqs(static_cast<size_t>(b));
    for (int64_t i = 0; i < b; ++i) {
      host_seqs[i].rows = {i, 1};
      host_seqs[i].form = MlaForm::kAbsorbed;
      host_seqs[i].num_cached = contexts[i];
      host_seqs[i].cache.page_rows = kPageRows;
      host_seqs[i].cache.dtype = DType::kBF16;
      for (int64_t p = 0; p < pages[i]; ++p) host_tables.push_back(caches[i] + p * kPageRows * width);
    }
    void** tables = deltaserve::bench::DeviceCopy(host_tables);
    for (int64_t i = 0, first = 0; i < b; ++i) {
      host_seqs[i].cache.pages = tables + first;
      first += pages[i];
    }
    MlaSequence* seqs = deltaserve::bench::DeviceCopy(host_seqs);
    // The tensor-core kernel's key split, built as the CUDA backend builds it for a step, but for
    // the history itself (the backend sizes the grid for its power-of-two bucket: at 4,097 keys
    // for 8,192, which gives batch 1 128 blocks here 64).
    int32_t* key_split = deltaserve::bench::DeviceCopy(
        deltaserve::kernels::cuda::BuildMlaKeySplit(host_seqs.data(), b, b,
                                                    deltaserve::kernels::cuda::MlaKeySplitBlocks(b, longest + 1))
            .table);
    float* q = DeviceFloats(b * kHeads * (kNope + kRope), 2.0f, 4);
    float* latent = DeviceFloats(b * width, 2.0f, 5);
    float* out = nullptr;
    Check(cudaMalloc(&out, b * kHeads * kV * sizeof(float)), "cudaMalloc");
    const auto q_view = MakeView(q, DType::kF32, b, kHeads * (kNope + kRope));
    const auto latent_view = MakeView(latent, DType::kF32, b, width);
    const auto out_view = MakeView(out, DType::kF32, b, kHeads * kV);
    // The serving kernel (tensor cores, where it runs) and the CUDA-core one (what other shapes
    // and GPUs take, and the fp32 validation precision over F32 pages) over the same pages, side by
    // side.
    for (const bool tensor_cores : {true, false}) {
      using namespace deltaserve::kernels::cuda;
      if (tensor_cores && !MlaAbsorbedTcRuns()) continue;
      const size_t scratch_floats = MlaAbsorbedScratchFloats(params, b, longest + 1, tensor_cores);
      float* scratch = nullptr;
      if (scratch_floats > 0) Check(cudaMalloc(&scratch, scratch_floats * sizeof(float)), "cudaMalloc");
      // As the backend calls it for a decode batch: the new rows appended inside the call.
      const auto step = [&](int) {
        Check(static_cast<cudaError_t>(LaunchMlaAbsorbedAttention(params, q_view, kv_b_view, seqs, b, longest + 1,
                                                                  tensor_cores, key_split, scratch, out_view,
                                                                  stream, latent_view)),
              "absorbed");
      };
      const double ms = deltaserve::bench::TimeMs(3, iters, stream, [&] { step(0); });
      const double graph_ms = deltaserve::bench::TimeInGraphMs(iters, 1, iters, stream, step);
      cudaFree(scratch);
      const double bytes = static_cast<double>(keys) * width * sizeof(uint16_t);
      const double tbps = bytes / (ms * 1e-3) / 1e12;
      std::printf("{\"gpu\": \"%s\", \"case\": \"mla_decode\", \"kernel\": \"%s\", \"batch\": %lld, "
                  "\"context\": %lld, \"longest\": %lld, \"ms\": %.4f, \"latent_tb_per_s\": %.3f, "
                  "\"of_copy\": %.3f, \"graph_ms\": %.4f}\n",
                  prop.name, tensor_cores ? "tensor_cores" : "cuda_cores", static_cast<long long>(b),
                  static_cast<long long>(context), static_cast<long long>(longest), ms, tbps, tbps / copy_tbps,
                  graph_ms);
      std::fflush(stdout);
    }
    for (void* p : {static_cast<void*>(seqs), static_cast<void*>(key_split), static_cast<void*>(tables),
                    static_cast<void*>(q), static_cast<void*>(latent), static_cast<void*>(out)}) {
      cudaFree(p);
    }
    for (uint16_t* cache : caches) cudaFree(cache);
  }
  return 0;
}
