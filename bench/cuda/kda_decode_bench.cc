// KDA decode on the GPU against the device's copy bandwidth: one token per sequence through the
// fused recurrent kernel (gate, beta and q/k L2 norm inside; fp32 state read and written in
// place), H heads of d = 128, batch 1..256, beside a device-to-device copy of comparable size.
// Beside it, the fused decode step (the q/k/v short convs and the gated RMSNorm around the same
// update, Backend::KdaDecodeStep) on the same state.
// Prints one JSON line per case; bench/peers/fla_kda.py times FLA's kernel on the same shapes.
// Batches up to 16 keep their whole state in the 50 MB L2 across repeated steps, so their
// bandwidth figure is not DRAM's; from 64 on (128 MiB and more) it is.
// Usage: cuda_kda_decode_bench [--heads H] [--iters N] [--batch B (default: 1 16 64 128 256)]
//                              [--shared-inputs 1]
// --shared-inputs 1 points every sequence of the fused step at sequence 0's inputs and conv tails,
// which then stay in L2, so that only the state comes from DRAM (as where the kernel ahead has
// just written the inputs). For timing only: the sequences' tails and outputs then overwrite
// each other.
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "bench/cuda/bench_support.h"
#include "kernels/cuda/launchers.h"

namespace {

using deltaserve::bench::Check;
using deltaserve::bench::DeviceFloats;
using deltaserve::kernels::DType;
using deltaserve::kernels::KdaDecodeInputs;
using deltaserve::kernels::KdaDecodeSequence;
using deltaserve::kernels::KdaInputs;
using deltaserve::kernels::KdaSequence;
using deltaserve::kernels::MakeView;


}  // namespace

int main(int argc, char** argv) {
  int heads = 32, iters = 200;
  bool shared_inputs = false;
  std::vector<int> batches = {1, 16, 64, 128, 256};
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--heads") == 0) heads = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--iters") == 0) iters = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--batch") == 0) batches = {std::atoi(argv[i + 1])};
    if (std::strcmp(argv[i], "--shared-inputs") == 0) shared_inputs = std::atoi(argv[i + 1]) != 0;
  }
  constexpr int kDim = 128;
  cudaDeviceProp prop{};
  Check(cudaGetDeviceProperties(&prop, 0), "device properties");
  cudaStream_t stream;
  Check(cudaStreamCreate(&stream), "stream");

  const double copy_tbps = deltaserve::bench::MeasureCopyTbps(stream, prop.name);

  const int64_t width = int64_t{heads} * kDim;
  float* a_log = DeviceFloats(heads, 2.0f, 1);
  float* dt_bias = DeviceFloats(width, 2.0f, 2);
  for (int batch : batches) {
    const int64_t state_floats = int64_t{batch} * heads * kDim * kDim;
    float* q = DeviceFloats(batch * width, 2.0f, 3);
    float* k = DeviceFloats(batch * width, 2.0f, 4);
    float* v = DeviceFloats(batch * width, 2.0f, 5);
    float* g = DeviceFloats(batch * width, 4.0f, 6);
    float* beta = DeviceFloats(batch * heads, 4.0f, 7);
    float* out = nullptr;
    float* state = nullptr;
    Check(cudaMalloc(&out, batch * width * sizeof(float)), "cudaMalloc");
    Check(cudaMalloc(&state, state_floats * sizeof(float)), "cudaMalloc");
    Check(cudaMemset(state, 0, state_floats * sizeof(float)), "memset");
    std::vector<KdaSequence> host_seqs(batch);
    for (int b = 0; b < batch; ++b) {
      host_seqs[b].rows = {b, 1};
      host_seqs[b].algorithm = deltaserve::kernels::KdaAlgorithm::kRecurrent;
      host_seqs[b].state = state + int64_t{b} * heads * kDim * kDim;
    }
    KdaSequence* seqs = nullptr;
    Check(cudaMalloc(&seqs, batch * sizeof(KdaSequence)), "cudaMalloc");
    Check(cudaMemcpy(seqs, host_seqs.data(), batch * sizeof(KdaSequence), cudaMemcpyHostToDevice),
          "upload");
    KdaInputs in;
    in.num_heads = heads;
    in.head_dim = kDim;
    in.q = MakeView(q, DType::kF32, batch, width);
    in.k = MakeView(k, DType::kF32, batch, width);
    in.v = MakeView(v, DType::kF32, batch, width);
    in.gate_logits = MakeView(g, DType::kF32, batch, width);
    in.beta_logits = MakeView(beta, DType::kF32, batch, heads);
    in.a_log = MakeView(a_log, DType::kF32, 1, heads);
    in.dt_bias = MakeView(dt_bias, DType::kF32, 1, width);
    const auto out_view = MakeView(out, DType::kF32, batch, width);
    auto step = [&] {
      Check(static_cast<cudaError_t>(
                deltaserve::kernels::cuda::LaunchKdaRecurrent(in, seqs, batch, out_view, stream)),
            "kda");
    };
    // The fused decode step on the same state: the q/k/v short convs (kernel 4, tails advanced)
    // before the delta rule and the gated RMSNorm after it, as the engine runs a decode token.
    std::vector<uint16_t> host_conv = deltaserve::bench::RandomBf16(3 * width * 4, 8);
    uint16_t* conv = deltaserve::bench::DeviceCopy(host_conv);
    float* tails = DeviceFloats(int64_t{batch} * 3 * 3 * width, 2.0f, 9);
    float* out_gate = DeviceFloats(batch * width, 4.0f, 10);
    float* norm = DeviceFloats(kDim, 2.0f, 11);
    std::vector<KdaDecodeSequence> host_decode(batch);
    for (int b = 0; b < batch; ++b) {
      const int64_t from = shared_inputs ? 0 : b;
      host_decode[b].row = from;
      host_decode[b].state = host_seqs[b].state;
      for (int i = 0; i < 3; ++i) host_decode[b].conv_tails[i] = tails + (from * 3 + i) * 3 * width;
    }
    KdaDecodeSequence* decode_seqs = deltaserve::bench::DeviceCopy(host_decode);
    KdaDecodeInputs decode_in;
    decode_in.core = in;
    for (int i = 0; i < 3; ++i) decode_in.conv_weights[i] = MakeView(conv + i * width * 4, DType::kBF16, width, 4);
    decode_in.out_gate = MakeView(out_gate, DType::kF32, batch, width);
    decode_in.out_norm = MakeView(norm, DType::kF32, 1, kDim);
    decode_in.eps = 1e-5f;
    auto fused_step = [&] {
      Check(static_cast<cudaError_t>(
                deltaserve::kernels::cuda::LaunchKdaDecodeStep(decode_in, decode_seqs, batch, out_view, stream)),
            "kda decode step");
    };

    const double ms = deltaserve::bench::TimeMs(5, iters, stream, step);
    // The same steps captured back to back in a CUDA graph, as a decode step runs when served:
    // no per-launch host cost.
    constexpr int kStepsPerGraph = 20;
    const auto in_graph = [&](auto body) {
      return deltaserve::bench::TimeInGraphMs(kStepsPerGraph, 5, iters, stream, [&](int) { body(); });
    };
    const double graph_ms = in_graph(step);
    const double fused_ms = in_graph(fused_step);
    const double state_bytes = 2.0 * state_floats * sizeof(float);  // read + write
    const double tbps = state_bytes / (graph_ms * 1e-3) / 1e12;
    const double fused_tbps = state_bytes / (fused_ms * 1e-3) / 1e12;
    std::printf("{\"gpu\": \"%s\", \"case\": \"kda_decode\", \"batch\": %d, \"heads\": %d, "
                "\"head_dim\": %d, \"ms_launched\": %.4f, \"ms_in_graph\": %.4f, "
                "\"state_tb_per_s\": %.3f, \"of_copy\": %.3f, \"fused_step_ms_in_graph\": %.4f, "
                "\"fused_step_of_copy\": %.3f}\n",
                prop.name, batch, heads, kDim, ms, graph_ms, tbps, tbps / copy_tbps, fused_ms,
                fused_tbps / copy_tbps);
    for (void* p : {static_cast<void*>(conv), static_cast<void*>(tails), static_cast<void*>(out_gate),
                    static_cast<void*>(norm), static_cast<void*>(decode_seqs)}) {
      cudaFree(p);
    }
    for (void* p : {static_cast<void*>(q), static_cast<void*>(k), static_cast<void*>(v),
                    static_cast<void*>(g), static_cast<void*>(beta), static_cast<void*>(out),
                    static_cast<void*>(state), static_cast<void*>(seqs)}) {
      cudaFree(p);
    }
  }
  return 0;
}
