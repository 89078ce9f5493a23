// KDA prefill on the GPU: the chunked kernels (gate, beta and q/k L2 norm inside, fp32 state in
// and out) over B sequences of T tokens, H heads of d = 128, plus a varlen batch of mixed
// lengths; the fused recurrent kernel on the smallest case for reference. Each case runs with
// fp32 activations (q, k, v, gate logits in, the read out) and with bf16 ones (what the CUDA
// backend's model path uses, and FLA's dtype). Prints one JSON line per case and dtype;
// bench/peers/fla_kda_prefill.py times FLA's chunk_kda on the same shapes and work.
// Usage: cuda_kda_prefill_bench [--heads H] [--iters N] [--batch B --tokens T | --varlen 1]
//   (--batch/--tokens, which win over --varlen, or --varlen: that case alone)
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "bench/cuda/bench_support.h"
#include "kernels/cuda/launchers.h"

namespace {

using deltaserve::bench::Check;
using deltaserve::bench::DeviceBf16;
using deltaserve::bench::DeviceCopy;
using deltaserve::bench::DeviceFloats;
using deltaserve::kernels::DType;
using deltaserve::kernels::KdaAlgorithm;
using deltaserve::kernels::KdaInputs;
using deltaserve::kernels::KdaSequence;
using deltaserve::kernels::MakeView;
using deltaserve::kernels::cuda::KdaChunkRef;

constexpr int kDim = 128;

struct Case {
  std::string name;
  std::vector<int64_t> lengths;
  bool with_recurrent = false;
};

// One case with activations of `act` (F32 or BF16): prints its JSON line.
void RunCase(const Case& c, DType act, int heads, int iters, const cudaDeviceProp& prop, cudaStream_t stream,
             float* a_log, float* dt_bias) {
  const int64_t width = int64_t{heads} * kDim;
  int64_t total = 0;
  for (int64_t length : c.lengths) total += length;
  const auto num_seqs = static_cast<int64_t>(c.lengths.size());
  const bool bf16 = act == DType::kBF16;
  const auto inputs = [&](float scale, unsigned seed) {
    return bf16 ? static_cast<void*>(DeviceBf16(total * width, scale, seed))
                : static_cast<void*>(DeviceFloats(total * width, scale, seed));
  };
  void* q = inputs(2.0f, 3);
  void* k = inputs(2.0f, 4);
  void* v = inputs(2.0f, 5);
  void* g = inputs(4.0f, 6);
  float* beta = DeviceFloats(total * heads, 4.0f, 7);
  void* out = nullptr;
  float* state = nullptr;
  const int64_t state_floats = num_seqs * heads * kDim * kDim;
  Check(cudaMalloc(&out, total * width * (bf16 ? 2 : 4)), "cudaMalloc");
  Check(cudaMalloc(&state, state_floats * sizeof(float)), "cudaMalloc");
  Check(cudaMemset(state, 0, state_floats * sizeof(float)), "memset");

  std::vector<KdaSequence> host_seqs;
  int64_t begin = 0;
  for (int64_t i = 0; i < num_seqs; ++i) {
    host_seqs.push_back({{begin, c.lengths[i]}, KdaAlgorithm::kChunked, state + i * heads * kDim * kDim});
    begin += c.lengths[i];
  }
  const auto [chunks, first_chunk, longest_first] =
      deltaserve::kernels::cuda::BuildKdaChunkTable(host_seqs.data(), num_seqs);
  KdaSequence* seqs = DeviceCopy(host_seqs);
  KdaChunkRef* device_chunks = DeviceCopy(chunks);
  int32_t* device_first = DeviceCopy(first_chunk);
  int32_t* device_order = DeviceCopy(longest_first);
  const auto num_chunks = static_cast<int64_t>(chunks.size());
  void* scratch = nullptr;
  const size_t scratch_bytes =
      deltaserve::kernels::cuda::KdaChunkedScratchBytes(num_chunks, heads, kDim);
  Check(cudaMalloc(&scratch, scratch_bytes), "cudaMalloc scratch");

  KdaInputs in;
  in.num_heads = heads;
  in.head_dim = kDim;
  in.q = MakeView(q, act, total, width);
  in.k = MakeView(k, act, total, width);
  in.v = MakeView(v, act, total, width);
  in.gate_logits = MakeView(g, act, total, width);
  in.beta_logits = MakeView(beta, DType::kF32, total, heads);
  in.a_log = MakeView(a_log, DType::kF32, 1, heads);
  in.dt_bias = MakeView(dt_bias, DType::kF32, 1, width);
  const auto out_view = MakeView(out, act, total, width);
  const double ms = deltaserve::bench::TimeMs(2, iters, stream, [&] {
    Check(static_cast<cudaError_t>(deltaserve::kernels::cuda::LaunchKdaChunked(
              in, seqs, num_seqs, device_chunks, device_first, device_order, num_chunks, scratch, out_view, stream)),
          "kda chunked");
  });
  double recurrent_ms = 0;
  if (c.with_recurrent && !bf16) {
    recurrent_ms = deltaserve::bench::TimeMs(2, std::max(1, iters / 5), stream, [&] {
      Check(static_cast<cudaError_t>(deltaserve::kernels::cuda::LaunchKdaRecurrent(
                in, seqs, num_seqs, out_view, stream)),
            "kda recurrent");
    });
  }
  std::printf("{\"gpu\": \"%s\", \"case\": \"kda_prefill_%s\", \"activations\": \"%s\", \"batch\": %lld, "
              "\"tokens\": %lld, \"heads\": %d, \"head_dim\": %d, \"ms\": %.4f, \"mtok_per_s\": %.3f",
              prop.name, c.name.c_str(), bf16 ? "bf16" : "f32", static_cast<long long>(num_seqs),
              static_cast<long long>(total), heads, kDim, ms, total / (ms * 1e-3) / 1e6);
  if (c.with_recurrent && !bf16) {
    std::printf(", \"recurrent_ms\": %.4f, \"chunked_speedup\": %.2f", recurrent_ms, recurrent_ms / ms);
  }
  std::printf("}\n");
  std::fflush(stdout);
  for (void* p : {static_cast<void*>(q), static_cast<void*>(k), static_cast<void*>(v),
                  static_cast<void*>(g), static_cast<void*>(beta), static_cast<void*>(out),
                  static_cast<void*>(state), static_cast<void*>(seqs),
                  static_cast<void*>(device_chunks), static_cast<void*>(device_first),
                  static_cast<void*>(device_order), scratch}) {
    cudaFree(p);
  }
}

}  // namespace

int main(int argc, char** argv) {
  int heads = 32, iters = 10;
  std::vector<Case> cases;
  int64_t batch = 0, tokens = 0;
  bool varlen_only = false;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--varlen") == 0) varlen_only = std::atoi(argv[i + 1]) != 0;
    if (std::strcmp(argv[i], "--heads") == 0) heads = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--iters") == 0) iters = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--batch") == 0) batch = std::atoll(argv[i + 1]);
    if (std::strcmp(argv[i], "--tokens") == 0) tokens = std::atoll(argv[i + 1]);
  }
  // 16 sequences of mixed lengths, 16k tokens in all (FLA's varlen planning case).
  const Case varlen{"varlen", {2048, 512, 1536, 64, 3000, 100, 1024, 777, 2500, 1, 900, 1200, 333, 700, 500, 1087}};
  if (batch > 0 && tokens > 0) {
    cases.push_back({"fixed", std::vector<int64_t>(batch, tokens)});
  } else if (varlen_only) {
    cases.push_back(varlen);
  } else {
    cases.push_back({"fixed", {4096}, true});
    for (int64_t b : {1, 8}) {
      for (int64_t t : {4096, 16384, 65536}) {
        if (b == 1 && t == 4096) continue;
        cases.push_back({"fixed", std::vector<int64_t>(b, t)});
      }
    }
    cases.push_back(varlen);
  }
  cudaDeviceProp prop{};
  Check(cudaGetDeviceProperties(&prop, 0), "device properties");
  cudaStream_t stream;
  Check(cudaStreamCreate(&stream), "stream");
  const int64_t width = int64_t{heads} * kDim;
  float* a_log = DeviceFloats(heads, 2.0f, 1);
  float* dt_bias = DeviceFloats(width, 2.0f, 2);

  for (const Case& c : cases) {
    for (const DType act : {DType::kF32, DType::kBF16}) RunCase(c, act, heads, iters, prop, stream, a_log, dt_bias);
  }
  return 0;
}
