// CPU engine throughput on the `small` preset: prefill and decode tokens per second at batch 1
// and 16, per thread count. Not a test: nothing is asserted, figures go to docs/.
//
//   build/bench/cpu_engine_bench [--model=DIR] [benchmark flags]
// Without --model, a `small` checkpoint (seed 0) is written once under $TMPDIR.
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <thread>

#include "kernels/cpu/cpu_backend.h"
#include "model/checkpoint/random_checkpoint.h"
#include "model/config/presets.h"
#include "model/kimi_linear_model.h"

namespace deltaserve::bench {
namespace {

std::string model_dir;

constexpr int64_t kPrefillTokens = 256;  // per sequence
constexpr int64_t kDecodeHistory = 256;  // tokens before decoding starts

struct Loaded {
  std::unique_ptr<kernels::cpu::CpuBackend> backend;
  std::unique_ptr<model::KimiLinearModel> model;
};

Loaded Load(int threads) {
  Loaded loaded;
  loaded.backend = std::make_unique<kernels::cpu::CpuBackend>(
      kernels::cpu::CpuBackendOptions{.num_threads = threads});
  auto model = model::KimiLinearModel::Load(model_dir, *loaded.backend);
  if (!model.ok()) {
    std::fprintf(stderr, "cannot load %s: %s\n", model_dir.c_str(), model.status().ToString().c_str());
    std::exit(1);
  }
  loaded.model = std::move(*model);
  return loaded;
}

// Matrix-product FLOPs of a prefill of `tokens` new tokens per sequence (logits for the last one):
// projections, routed + shared experts, MLA key/value expansion and attention, the KDA chunk
// work (6·d² + 3·C·d + C² per token and head, the paper's eq. 13) and the head.
double PrefillFlops(const model::KimiLinearConfig& c, int64_t tokens) {
  const double t = static_cast<double>(tokens);
  double per_token = 0;  // multiply-adds per token
  double per_sequence = static_cast<double>(c.vocab_size) * c.hidden_size;
  const double d = static_cast<double>(c.kda_head_dim);
  for (int64_t layer = 0; layer < c.num_layers; ++layer) {
    if (c.IsKda(layer)) {
      const double p = static_cast<double>(c.kda_projection_size());
      per_token += 4 * p * c.hidden_size + 2 * (d * c.hidden_size + p * d) + c.kda_num_heads * c.hidden_size;
      per_token += c.kda_num_heads * (6 * d * d + 3 * 64 * d + 64.0 * 64) / 2;
    } else {
      const double heads = static_cast<double>(c.mla_num_heads);
      per_token += heads * c.mla_qk_head_dim() * c.hidden_size + c.mla_latent_size() * c.hidden_size +
                   heads * (c.qk_nope_head_dim + c.v_head_dim) * c.kv_lora_rank +
                   c.hidden_size * heads * c.v_head_dim;
      per_token += heads * (t / 2) * (c.mla_qk_head_dim() + c.v_head_dim);
    }
    if (c.IsMoe(layer)) {
      per_token += c.num_experts * c.hidden_size +
                   3.0 * c.moe_intermediate_size * c.hidden_size * (c.num_experts_per_token + c.num_shared_experts);
    } else {
      per_token += 3.0 * c.intermediate_size * c.hidden_size;
    }
  }
  return 2 * (per_token * t + per_sequence);
}

std::vector<int32_t> Tokens(int64_t n, uint64_t seed, int64_t vocab) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> tokens(n);
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % static_cast<uint64_t>(vocab));
  return tokens;
}

void BM_Prefill(benchmark::State& bench) {
  const int64_t batch = bench.range(0);
  const int threads = static_cast<int>(bench.range(1));
  Loaded loaded = Load(threads);
  model::KimiLinearModel& m = *loaded.model;
  std::vector<std::vector<int32_t>> prompts;
  for (int64_t i = 0; i < batch; ++i) prompts.push_back(Tokens(kPrefillTokens, i, m.config().vocab_size));
  std::vector<float> logits;
  for (auto _ : bench) {
    std::vector<std::unique_ptr<model::SequenceState>> states;
    std::vector<model::SequenceInput> inputs;
    for (int64_t i = 0; i < batch; ++i) {
      states.push_back(m.NewState());
      inputs.push_back({prompts[i], states.back().get(), {kPrefillTokens - 1}});
    }
    if (!m.Forward(inputs, logits).ok()) bench.SkipWithError("forward failed");
  }
  bench.counters["tokens_per_second"] =
      benchmark::Counter(static_cast<double>(batch * kPrefillTokens), benchmark::Counter::kIsIterationInvariantRate);
  bench.counters["gflops"] = benchmark::Counter(batch * PrefillFlops(m.config(), kPrefillTokens) / 1e9,
                                                benchmark::Counter::kIsIterationInvariantRate);
  bench.counters["threads"] = threads;
}

void BM_Decode(benchmark::State& bench) {
  const int64_t batch = bench.range(0);
  const int threads = static_cast<int>(bench.range(1));
  Loaded loaded = Load(threads);
  model::KimiLinearModel& m = *loaded.model;
  std::vector<std::unique_ptr<model::SequenceState>> states;
  std::vector<float> logits;
  for (int64_t i = 0; i < batch; ++i) {
    states.push_back(m.NewState());
    const std::vector<int32_t> history = Tokens(kDecodeHistory, 100 + i, m.config().vocab_size);
    const model::SequenceInput input{history, states.back().get(), {}};
    if (!m.Forward({&input, 1}, logits).ok()) bench.SkipWithError("prefill failed");
  }
  std::vector<int32_t> next(batch, 1);
  for (auto _ : bench) {
    std::vector<model::SequenceInput> inputs;
    for (int64_t i = 0; i < batch; ++i) inputs.push_back({{&next[i], 1}, states[i].get(), {0}});
    if (!m.Forward(inputs, logits).ok()) bench.SkipWithError("decode failed");
  }
  bench.counters["tokens_per_second"] =
      benchmark::Counter(static_cast<double>(batch), benchmark::Counter::kIsIterationInvariantRate);
  bench.counters["threads"] = threads;
}

void ThreadArgs(benchmark::internal::Benchmark* b) {
  const int hardware = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  for (int64_t batch : {1, 16}) {
    b->Args({batch, 1});
    if (hardware > 1) b->Args({batch, hardware});
  }
  b->ArgNames({"batch", "threads"})->Unit(benchmark::kMillisecond)->UseRealTime();
}

BENCHMARK(BM_Prefill)->Apply(ThreadArgs);
BENCHMARK(BM_Decode)->Apply(ThreadArgs);

std::string DefaultModel() {
  const char* tmp = std::getenv("TMPDIR");
  const std::string dir = std::string(tmp != nullptr ? tmp : "/tmp") + "/deltaserve-bench-small";
  if (!std::filesystem::exists(dir + "/config.json")) {
    auto config = model::PresetConfig("small");
    const absl::Status status = model::WriteRandomCheckpoint(*config, 0, dir);
    if (!status.ok()) {
      std::fprintf(stderr, "cannot write %s: %s\n", dir.c_str(), status.ToString().c_str());
      std::exit(1);
    }
  }
  return dir;
}

}  // namespace
}  // namespace deltaserve::bench

int main(int argc, char** argv) {
  std::vector<char*> rest;
  for (int i = 0; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--model=", 0) == 0) {
      deltaserve::bench::model_dir = arg.substr(8);
    } else {
      rest.push_back(argv[i]);
    }
  }
  if (deltaserve::bench::model_dir.empty()) deltaserve::bench::model_dir = deltaserve::bench::DefaultModel();
  int rest_argc = static_cast<int>(rest.size());
  benchmark::Initialize(&rest_argc, rest.data());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
