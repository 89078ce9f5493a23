// KDA decode on the GPU against the device's copy bandwidth: one token per sequence through the
// fused recurrent kernel (gate, beta and q/k L2 norm inside; fp32 state read and written in
// place), H heads of d = 128, batch 1..256, beside a device-to-device copy of comparable size.
// Prints one JSON line per case; bench/peers/fla_kda.py times FLA's kernel on the same shapes.
// Batches up to 16 keep their whole state in the 50 MB L2 across repeated steps, so their
// bandwidth figure is not DRAM's; from 64 on (128 MiB and more) it is.
// Usage: cuda_kda_decode_bench [--heads H] [--iters N] [--batch B (default: 1 16 64 128 256)]
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
using deltaserve::kernels::KdaInputs;
using deltaserve::kernels::KdaSequence;
using deltaserve::kernels::MakeView;


}  // namespace

int main(int argc, char** argv) {
  int heads = 32, iters = 200;
  std::vector<int> batches = {1, 16, 64, 128, 256};
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--heads") == 0) heads = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--iters") == 0) iters = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--batch") == 0) batches = {std::atoi(argv[i + 1])};
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
    const double ms = deltaserve::bench::TimeMs(5, iters, stream, step);
    // The same steps captured back to back in a CUDA graph, as a decode step runs when served:
    // no per-launch host cost.
    constexpr int kStepsPerGraph = 20;
    cudaGraph_t graph;
    cudaGraphExec_t graph_exec;
    Check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "capture");
    for (int i = 0; i < kStepsPerGraph; ++i) step();
    Check(cudaStreamEndCapture(stream, &graph), "capture");
    Check(cudaGraphInstantiate(&graph_exec, graph, 0), "instantiate");
    const double graph_ms =
        deltaserve::bench::TimeMs(5, std::max(1, iters / kStepsPerGraph), stream,
               [&] { Check(cudaGraphLaunch(graph_exec, stream), "graph launch"); }) /
        kStepsPerGraph;
    cudaGraphExecDestroy(graph_exec);
    cudaGraphDestroy(graph);
    const double state_bytes = 2.0 * state_floats * sizeof(float);  // read + write
    const double tbps = state_bytes / (graph_ms * 1e-3) / 1e12;
    std::printf("{\"gpu\": \"%s\", \"case\": \"kda_decode\", \"batch\": %d, \"heads\": %d, "
                "\"head_dim\": %d, \"ms_launched\": %.4f, \"ms_in_graph\": %.4f, "
                "\"state_tb_per_s\": %.3f, \"of_copy\": %.3f}\n",
                prop.name, batch, heads, kDim, ms, graph_ms, tbps, tbps / copy_tbps);
    for (void* p : {static_cast<void*>(q), static_cast<void*>(k), static_cast<void*>(v),
                    static_cast<void*>(g), static_cast<void*>(beta), static_cast<void*>(out),
                    static_cast<void*>(state), static_cast<void*>(seqs)}) {
      cudaFree(p);
    }
  }
  return 0;
}
