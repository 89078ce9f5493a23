// Splitting the model (layer ranges in pipeline stages, routed experts in shards) computes
// exactly what the whole model computes.
#include <cstring>
#include <random>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "model/kimi_linear_model.h"

namespace deltaserve::model {
namespace {

const std::string kFixture = std::string(DELTASERVE_TEST_DATA_DIR) + "/kimi-odd";

// Routed experts from shards that each hold a range of experts (as expert workers do).
class ShardedExpertRunner final : public ExpertRunner {
 public:
  ShardedExpertRunner(kernels::Backend& backend, const std::vector<ModelWeights>& shards)
      : backend_(backend), shards_(shards) {}
  absl::Status RunExperts(int64_t layer, kernels::TensorView x, kernels::TensorView expert_ids,
                          kernels::TensorView slot_out) override {
    for (const ModelWeights& shard : shards_) {
      const MoeWeights& moe = shard.layer(layer).moe;
      backend_.MoeExperts(x, expert_ids, moe.experts, moe.first_expert, slot_out);
    }
    return absl::OkStatus();
  }

 private:
  kernels::Backend& backend_;
  const std::vector<ModelWeights>& shards_;
};

std::vector<int32_t> RandomTokens(size_t n, uint64_t seed, int32_t vocab) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> tokens(n);
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % static_cast<uint64_t>(vocab));
  return tokens;
}

TEST(PipelineTest, StagesAndExpertShardsMatchTheWholeModel) {
  kernels::cpu::CpuBackend backend({.num_threads = 2});
  auto whole = KimiLinearModel::Load(kFixture, backend);
  ASSERT_TRUE(whole.ok()) << whole.status();
  const KimiLinearConfig& c = (*whole)->config();
  const int64_t split = 3;

  // Expert shards [0, 15) and [15, E), loaded without any dense weights.
  std::vector<std::unique_ptr<Checkpoint>> checkpoints;
  std::vector<ModelWeights> shards;
  for (const auto& [begin, end] : {std::pair<int64_t, int64_t>{0, 15}, {15, c.num_experts}}) {
    checkpoints.push_back(*Checkpoint::Open(kFixture));
    WeightScope scope{.expert_begin = begin, .expert_end = end, .load_dense = false};
    auto weights = LoadModelWeights(*checkpoints.back(), backend, scope);
    ASSERT_TRUE(weights.ok()) << weights.status();
    shards.push_back(std::move(*weights));
  }
  ShardedExpertRunner experts(backend, shards);

  ModelOptions first_options;
  first_options.scope = {.layer_begin = 0, .layer_end = split, .load_routed_experts = false};
  first_options.experts = &experts;
  ModelOptions second_options;
  second_options.scope = {.layer_begin = split, .layer_end = c.num_layers, .load_routed_experts = false};
  second_options.experts = &experts;
  auto first = KimiLinearModel::Load(kFixture, backend, first_options);
  auto second = KimiLinearModel::Load(kFixture, backend, second_options);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ((*first)->fingerprint(), (*whole)->fingerprint());
  EXPECT_EQ((*second)->fingerprint(), (*whole)->fingerprint());

  const int32_t vocab = static_cast<int32_t>(c.vocab_size);
  const std::vector<int32_t> a = RandomTokens(90, 1, vocab), b = RandomTokens(7, 2, vocab);
  auto whole_a = (*whole)->NewState(), whole_b = (*whole)->NewState();
  auto first_a = (*first)->NewState(), first_b = (*first)->NewState();
  auto second_a = (*second)->NewState(), second_b = (*second)->NewState();
  for (int step = 0; step < 3; ++step) {
    // Step 0 prefills both; later steps decode one token each.
    const std::vector<int32_t> ta = step == 0 ? a : std::vector<int32_t>{a[step]};
    const std::vector<int32_t> tb = step == 0 ? b : std::vector<int32_t>{b[step]};
    const std::vector<int64_t> pa = {static_cast<int64_t>(ta.size()) - 1};
    const std::vector<int64_t> pb = {static_cast<int64_t>(tb.size()) - 1};
    std::vector<float> expected, hidden, logits;
    const SequenceInput whole_batch[] = {{ta, whole_a.get(), pa}, {tb, whole_b.get(), pb}};
    ASSERT_TRUE((*whole)->Forward(whole_batch, expected).ok());
    const SequenceInput first_batch[] = {{ta, first_a.get(), {}}, {tb, first_b.get(), {}}};
    ASSERT_TRUE((*first)->ForwardStage(first_batch, {}, hidden).ok());
    const SequenceInput second_batch[] = {{ta, second_a.get(), pa}, {tb, second_b.get(), pb}};
    ASSERT_TRUE((*second)->ForwardStage(second_batch, hidden, logits).ok());
    ASSERT_EQ(logits.size(), expected.size());
    EXPECT_EQ(0, std::memcmp(logits.data(), expected.data(), logits.size() * sizeof(float))) << step;
  }
}

TEST(PipelineTest, StagesRejectMismatchedInput) {
  kernels::cpu::CpuBackend backend({.num_threads = 1});
  ModelOptions options;
  options.scope = {.layer_begin = 2, .layer_end = 4};
  auto later = KimiLinearModel::Load(kFixture, backend, options);
  ASSERT_TRUE(later.ok()) << later.status();
  auto state = (*later)->NewState();
  const std::vector<int32_t> tokens = {1, 2};
  std::vector<float> out;
  const SequenceInput input{tokens, state.get(), {}};
  EXPECT_EQ((*later)->ForwardStage({&input, 1}, std::vector<float>(5), out).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*later)->Forward({&input, 1}, out).code(), absl::StatusCode::kFailedPrecondition);

  ModelOptions no_experts;
  no_experts.scope.load_routed_experts = false;
  EXPECT_EQ(KimiLinearModel::Load(kFixture, backend, no_experts).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace deltaserve::model
