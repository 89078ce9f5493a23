// The whole model on the CUDA backend against the CPU engine on every fixture. Skips where no GPU
// exists. Both tests run with fp32 matrix products (every kernel exactly as served, only cuBLAS's
// inputs widened): the fixtures' random routers leave expert choices ~1e-5 apart, so the bf16
// rounding of the serving precision flips some of them and moves outputs by O(1) — the
// fixtures' sensitivity, not an error. The serving precision is checked block by block, on
// identical inputs, in tests/model/layers/cuda_layers_test.cc.
#include <filesystem>
#include <fstream>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/sampling.h"
#include "model/generator.h"
#include "model/kimi_linear_model.h"
#include "model/sampling/sampler.h"
#include "nlohmann/json.hpp"
#include "tests/model/memory_limit_cases.h"
#include "tests/testing/fixtures.h"

namespace deltaserve::model {
namespace {

// fp32 products differ from the CPU only in summation order (~1e-6 relative per product); a
// real mistake lands at O(1).
constexpr double kMaxRelativeLogitErrorF32 = 1e-3;
constexpr double kMaxRelativeStageErrorF32 = 1e-3;

class CudaModelTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    std::string why;
    if (!kernels::cuda::CudaDeviceAvailable(&why)) GTEST_SKIP() << "no usable CUDA device: " << why;
    cuda_f32_ = kernels::cuda::CudaBackend::Create(
        {.matmul_precision = kernels::cuda::MatmulPrecision::kF32}, &why);
    ASSERT_NE(cuda_f32_, nullptr) << why;
  }
  kernels::cpu::CpuBackend cpu_{{.num_threads = 2}};
  std::unique_ptr<kernels::cuda::CudaBackend> cuda_f32_;  // fp32 matrix products
};

TEST_P(CudaModelTest, LogitsAndGreedyTokensMatchTheCpuEngine) {
  const std::string dir = GetParam();
  auto cpu_model = KimiLinearModel::Load(dir, cpu_);
  auto gpu_model = KimiLinearModel::Load(dir, *cuda_f32_);
  ASSERT_TRUE(cpu_model.ok()) << cpu_model.status();
  ASSERT_TRUE(gpu_model.ok()) << gpu_model.status();
  EXPECT_EQ((*cpu_model)->fingerprint(), (*gpu_model)->fingerprint());
  std::ifstream in(dir + "/reference.json");
  const nlohmann::json reference = nlohmann::json::parse(in);
  const int64_t vocab = (*cpu_model)->config().vocab_size;

  for (const nlohmann::json& prompt : reference["prompts"]) {
    const std::vector<int32_t> tokens = prompt["tokens"].get<std::vector<int32_t>>();
    SCOPED_TRACE(::testing::Message() << dir << ", prompt of " << tokens.size());
    std::vector<int64_t> positions;
    for (int64_t p = 0; p < static_cast<int64_t>(tokens.size()); p += 13) positions.push_back(p);
    positions.push_back(static_cast<int64_t>(tokens.size()) - 1);
    std::vector<float> cpu_logits, gpu_logits;
    auto cpu_state = (*cpu_model)->NewState();
    auto gpu_state = (*gpu_model)->NewState();
    const SequenceInput cpu_input{tokens, cpu_state.get(), positions};
    const SequenceInput gpu_input{tokens, gpu_state.get(), positions};
    ASSERT_TRUE((*cpu_model)->Forward({&cpu_input, 1}, cpu_logits).ok());
    ASSERT_TRUE((*gpu_model)->Forward({&gpu_input, 1}, gpu_logits).ok());
    double max_error = 0, max_logit = 0;
    for (size_t i = 0; i < cpu_logits.size(); ++i) {
      ASSERT_TRUE(std::isfinite(gpu_logits[i])) << i;
      max_error = std::max(max_error, static_cast<double>(std::fabs(gpu_logits[i] - cpu_logits[i])));
      max_logit = std::max(max_logit, static_cast<double>(std::fabs(cpu_logits[i])));
    }
    std::printf("[ cuda     ] %s prompt %zu: max |logit error| / max |logit| = %.2e\n",
                std::filesystem::path(dir).filename().c_str(), tokens.size(), max_error / max_logit);
    EXPECT_LE(max_error / max_logit, kMaxRelativeLogitErrorF32);

    // Greedy tokens agree until the CPU's top two logits (after the penalties, where the request
    // has them: the GPU applies them on the device) are closer than the error allows.
    SamplingParams greedy;
    greedy.temperature = 0.0f;
    greedy.ignore_eos = true;
    greedy.max_new_tokens = 24;
    SamplingParams penalised = greedy;
    penalised.repetition_penalty = 1.3f;
    penalised.frequency_penalty = 0.2f;
    penalised.presence_penalty = 0.4f;
    for (const SamplingParams& params : {greedy, penalised}) {
      SCOPED_TRACE(params.has_penalties() ? "with penalties" : "plain greedy");
      auto cpu_gen_state = (*cpu_model)->NewState();
      auto gpu_gen_state = (*gpu_model)->NewState();
      auto cpu_tokens = Generate(**cpu_model, *cpu_gen_state, tokens, params);
      auto gpu_tokens = Generate(**gpu_model, *gpu_gen_state, tokens, params);
      ASSERT_TRUE(cpu_tokens.ok() && gpu_tokens.ok());
      std::vector<int32_t> context = tokens;
      SequenceSampler penalties(params, tokens, 0);
      for (size_t i = 0; i < cpu_tokens->tokens.size(); ++i) {
        if (cpu_tokens->tokens[i] == gpu_tokens->tokens[i]) {
          context.push_back(cpu_tokens->tokens[i]);
          penalties.Accept(cpu_tokens->tokens[i]);
          continue;
        }
        // A divergence is acceptable only at a near tie of the CPU's logits.
        auto state = (*cpu_model)->NewState();
        const SequenceInput check{context, state.get(), {static_cast<int64_t>(context.size()) - 1}};
        std::vector<float> logits;
        ASSERT_TRUE((*cpu_model)->Forward({&check, 1}, logits).ok());
        ASSERT_TRUE(penalties.ApplyPenalties(std::span<float>(logits).first(static_cast<size_t>(vocab))).ok());
        std::vector<float> sorted(logits.begin(), logits.begin() + vocab);
        std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<float>());
        EXPECT_LE(sorted[0] - sorted[1], 2 * kMaxRelativeLogitErrorF32 * max_logit)
            << "greedy token " << i << " differs without a near tie";
        break;
      }
    }
  }
}

// Layer by layer (each a pipeline stage of its own), so a divergence names its layer.
TEST_P(CudaModelTest, EveryLayerAsAStageMatchesTheCpu) {
  const std::string dir = GetParam();
  auto config = LoadKimiLinearConfig(dir + "/config.json");
  ASSERT_TRUE(config.ok());
  std::vector<int32_t> tokens;
  for (int32_t token : {5, 17, 300, 2, 99, 7, 64, 1, 0, 45, 45, 3}) {
    tokens.push_back(static_cast<int32_t>(token % config->vocab_size));
  }
  std::vector<float> cpu_hidden, gpu_hidden;
  for (int64_t layer = 0; layer < config->num_layers; ++layer) {
    std::vector<float> cpu_out, gpu_out;
    for (auto [backend, hidden, out] :
         {std::tuple<kernels::Backend*, std::vector<float>*, std::vector<float>*>{&cpu_, &cpu_hidden, &cpu_out},
          {cuda_f32_.get(), &gpu_hidden, &gpu_out}}) {
      ModelOptions options;
      options.scope.layer_begin = layer;
      options.scope.layer_end = layer + 1;
      auto stage = KimiLinearModel::Load(dir, *backend, options);
      ASSERT_TRUE(stage.ok()) << stage.status();
      auto state = (*stage)->NewState();
      std::vector<int64_t> positions;
      if ((*stage)->is_last_stage()) positions = {static_cast<int64_t>(tokens.size()) - 1};
      const SequenceInput input{tokens, state.get(), positions};
      ASSERT_TRUE((*stage)->ForwardStage({&input, 1}, *hidden, *out).ok());
    }
    double error = 0, scale = 1e-6;
    for (size_t i = 0; i < cpu_out.size(); ++i) {
      error = std::max(error, static_cast<double>(std::fabs(cpu_out[i] - gpu_out[i])));
      scale = std::max(scale, static_cast<double>(std::fabs(cpu_out[i])));
    }
    std::printf("[ stage    ] %s layer %lld: max error / scale = %.2e\n",
                std::filesystem::path(dir).filename().c_str(), static_cast<long long>(layer), error / scale);
    EXPECT_LE(error / scale, kMaxRelativeStageErrorF32) << "layer " << layer;
    // Each stage continues from the CPU's output, so errors do not compound.
    cpu_hidden = cpu_out;
    gpu_hidden = cpu_out;
  }
}

// Decode steps replayed from CUDA graphs (ModelOptions::step_graphs) give the bits of the same
// steps issued one operation at a time, at serving precision, for batches that shrink and grow
// and histories that cross a key bucket; the graphs are really replayed. The first sequence
// samples greedily on the device (SequenceInput::argmax): its id is the eager logits' argmax.
TEST_P(CudaModelTest, StepGraphsGiveTheBitsOfEagerSteps) {
  const std::string dir = GetParam();
  std::string why;
  auto graphs = kernels::cuda::CudaBackend::Create({}, &why);
  auto eager = kernels::cuda::CudaBackend::Create({.step_graphs = false}, &why);
  ASSERT_NE(graphs, nullptr) << why;
  ASSERT_NE(eager, nullptr) << why;
  auto graph_model = KimiLinearModel::Load(dir, *graphs);
  auto eager_model = KimiLinearModel::Load(dir, *eager);
  ASSERT_TRUE(graph_model.ok() && eager_model.ok());
  const int64_t vocab = (*eager_model)->config().vocab_size;

  constexpr int kSequences = 3;
  std::vector<std::unique_ptr<SequenceState>> graph_states, eager_states;
  std::vector<int32_t> next(kSequences);
  for (int s = 0; s < kSequences; ++s) {
    graph_states.push_back((*graph_model)->NewState());
    eager_states.push_back((*eager_model)->NewState());
    // Histories of 4,090 and more tokens cross the first key bucket (4,096) while decoding.
    const int64_t length = s == 0 ? 4090 : 20 + 17 * s;
    std::vector<int32_t> prompt(length);
    for (int64_t i = 0; i < length; ++i) prompt[i] = static_cast<int32_t>((i * 31 + s * 7 + 1) % vocab);
    const SequenceInput g{prompt, graph_states[s].get(), {length - 1}};
    const SequenceInput e{prompt, eager_states[s].get(), {length - 1}};
    std::vector<float> graph_logits, eager_logits;
    ASSERT_TRUE((*graph_model)->Forward({&g, 1}, graph_logits).ok());
    ASSERT_TRUE((*eager_model)->Forward({&e, 1}, eager_logits).ok());
    ASSERT_EQ(graph_logits, eager_logits);
    next[s] = static_cast<int32_t>(std::max_element(eager_logits.begin(), eager_logits.end()) - eager_logits.begin());
  }
  // Batches of 3, then 2 (a sequence paused), then 3 again.
  for (int step = 0; step < 16; ++step) {
    SCOPED_TRACE(::testing::Message() << "decode step " << step);
    std::vector<int> active = {0, 1, 2};
    if (step >= 6 && step < 11) active = {0, 2};
    // Sequence 0 takes the device's argmax, sequence 2 a draw on the device, sequence 1 its logits.
    const kernels::RowSampling draw{0.9f, 0, 0.9f, 0.0f, (step + 0.5) / 16.0};
    std::vector<SequenceInput> g, e;
    for (int s : active) {
      g.push_back({{&next[s], 1}, graph_states[s].get(), {0}, /*argmax=*/s == 0});
      if (s == 2) g.back().draw = draw;
      e.push_back({{&next[s], 1}, eager_states[s].get(), {0}});
    }
    std::vector<float> graph_logits, eager_logits;
    std::vector<int32_t> device_ids;
    ASSERT_TRUE((*graph_model)->Forward(g, graph_logits, &device_ids).ok());
    ASSERT_TRUE((*eager_model)->Forward(e, eager_logits).ok());
    ASSERT_EQ(device_ids.size(), 2u);
    EXPECT_EQ(device_ids[0], std::max_element(eager_logits.begin(), eager_logits.begin() + vocab) - eager_logits.begin());
    std::vector<float> last_row(eager_logits.end() - vocab, eager_logits.end()), scratch;
    EXPECT_EQ(device_ids[1], kernels::SampleRow(last_row, draw, scratch));
    const std::vector<float> middle(eager_logits.begin() + vocab, eager_logits.end() - vocab);
    ASSERT_EQ(graph_logits, middle);
    for (size_t i = 0; i < active.size(); ++i) {
      const auto row = eager_logits.begin() + static_cast<int64_t>(i) * vocab;
      next[active[i]] = static_cast<int32_t>(std::max_element(row, row + vocab) - row);
    }
  }
  const kernels::cuda::StepGraphCounts counts = graphs->step_graph_counts();
  std::printf("[ graphs   ] %s: measured %lld, captured %lld, replayed %lld, failed %lld\n",
              std::filesystem::path(dir).filename().c_str(), static_cast<long long>(counts.measured),
              static_cast<long long>(counts.captured), static_cast<long long>(counts.replayed),
              static_cast<long long>(counts.failed));
  // MoE sizes the grouped kernels do not take go through the per-expert path, which reads the
  // routing on the host: those steps cannot be recorded and run without a graph.
  const KimiLinearConfig& c = (*eager_model)->config();
  if (c.hidden_size % 8 == 0 && c.moe_intermediate_size % 8 == 0) {
    EXPECT_GE(counts.replayed, 8);
    EXPECT_EQ(counts.failed, 0);
  } else {
    EXPECT_EQ(counts.captured, 0);
    EXPECT_EQ(counts.replayed, 0);
  }
  EXPECT_EQ(eager->step_graph_counts().measured, 0);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CudaModelTest,
                         ::testing::ValuesIn(testing::FixtureDirs(DELTASERVE_TEST_DATA_DIR)),
                         [](const ::testing::TestParamInfo<std::string>& param) {
                           return testing::FixtureTestName(param.param);
                         });

// The fixture's model on a backend capped at 64 MiB and, as the reference, on one without a cap.
struct CappedAndUncapped {
  void Load(const std::string& dir) {
    std::string why;
    capped = kernels::cuda::CudaBackend::Create({.memory_limit_bytes = int64_t{64} << 20}, &why);
    uncapped = kernels::cuda::CudaBackend::Create({}, &why);
    ASSERT_NE(capped, nullptr) << why;
    ASSERT_NE(uncapped, nullptr) << why;
    auto loaded = KimiLinearModel::Load(dir, *capped);
    auto loaded_reference = KimiLinearModel::Load(dir, *uncapped);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    ASSERT_TRUE(loaded_reference.ok()) << loaded_reference.status();
    model = *std::move(loaded);
    reference = *std::move(loaded_reference);
  }
  std::unique_ptr<kernels::cuda::CudaBackend> capped, uncapped;
  std::unique_ptr<KimiLinearModel> model, reference;
};

// Memory as a limit a server lives with (memory_limit_cases.h, which the CPU runs too in
// device_failure_test.cc); on a GPU the weights count, so a cap below them fails the load.
TEST(CudaModelMemoryLimit, AStepPastTheLimitFailsAndTheNextOneWorks) {
  std::string why;
  if (!kernels::cuda::CudaDeviceAvailable(&why)) GTEST_SKIP() << "no usable CUDA device: " << why;
  const std::string dir = std::string(DELTASERVE_TEST_DATA_DIR) + "/kimi-tiny-public";
  auto tiny_cap = kernels::cuda::CudaBackend::Create({.memory_limit_bytes = 1 << 20}, &why);
  ASSERT_NE(tiny_cap, nullptr) << why;
  const auto no_room = KimiLinearModel::Load(dir, *tiny_cap);
  EXPECT_EQ(no_room.status().code(), absl::StatusCode::kResourceExhausted) << no_room.status();

  CappedAndUncapped both;
  ASSERT_NO_FATAL_FAILURE(both.Load(dir));
  // About 20 MB per activation of 40,000 tokens, several at once: past 64 MiB.
  testing::ExpectAStepPastTheLimitFailsAndTheNextOneWorks(*both.model, *both.reference, 40000);
}

TEST(CudaModelMemoryLimit, AStepWhoseLatentPagesDoNotFitChangesNoState) {
  std::string why;
  if (!kernels::cuda::CudaDeviceAvailable(&why)) GTEST_SKIP() << "no usable CUDA device: " << why;
  CappedAndUncapped both;
  ASSERT_NO_FATAL_FAILURE(both.Load(std::string(DELTASERVE_TEST_DATA_DIR) + "/kimi-tiny-public"));
  testing::ExpectAStepWhoseLatentPagesDoNotFitChangesNoState(*both.capped, *both.model, *both.reference);
}

}  // namespace
}  // namespace deltaserve::model
