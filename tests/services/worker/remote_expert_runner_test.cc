// A stage whose routed experts live in expert shards reached through ExpertChannel (here the
// shards themselves, in process) computes what the whole model computes, on every backend this
// build and machine have: the runner stages the backend's tensors through the host.
#include "services/worker/remote_expert_runner.h"

#include <cmath>

#include "gtest/gtest.h"
#include "kernels/backend_factory.h"
#include "model/kimi_linear_model.h"
#include "services/worker/expert_shard.h"

namespace deltaserve::services {
namespace {

const std::string kFixture = std::string(DELTASERVE_TEST_DATA_DIR) + "/kimi-odd";

class RemoteExpertRunnerTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    std::string why;
    backend_ = kernels::CreateBackend({.device = GetParam(), .cpu_threads = 2}, &why);
    if (backend_ == nullptr) GTEST_SKIP() << "no " << GetParam() << " backend here: " << why;
  }
  std::unique_ptr<kernels::Backend> backend_;
};

TEST_P(RemoteExpertRunnerTest, StageWithExpertShardsMatchesTheWholeModel) {
  auto whole = model::KimiLinearModel::Load(kFixture, *backend_);
  ASSERT_TRUE(whole.ok()) << whole.status();
  const int64_t experts = (*whole)->config().num_experts;
  auto low = ExpertShard::Load(kFixture, *backend_, 0, experts / 3);
  auto high = ExpertShard::Load(kFixture, *backend_, experts / 3, experts);
  ASSERT_TRUE(low.ok() && high.ok());
  const std::vector<ExpertShardLink> links = {{0, experts / 3, low->get()},
                                              {experts / 3, experts, high->get()}};
  ASSERT_TRUE(CheckShardCoverage(links, experts).ok());
  RemoteExpertRunner runner(*backend_, links, (*whole)->config().hidden_size);
  model::ModelOptions options;
  options.scope.load_routed_experts = false;
  options.experts = &runner;
  auto split = model::KimiLinearModel::Load(kFixture, *backend_, options);
  ASSERT_TRUE(split.ok()) << split.status();

  // Two sequences in one packed batch: every expert gets tokens from both.
  const std::vector<int32_t> a = {3, 14, 15, 92, 65, 35, 89, 79, 32, 38, 46}, b = {26, 43, 38, 32, 7};
  std::vector<float> expected, actual;
  for (auto [model, logits] : {std::pair{whole->get(), &expected}, std::pair{split->get(), &actual}}) {
    auto state_a = model->NewState();
    auto state_b = model->NewState();
    const model::SequenceInput inputs[] = {{a, state_a.get(), {0, 5, 10}}, {b, state_b.get(), {4}}};
    ASSERT_TRUE(model->Forward(inputs, *logits).ok());
  }
  ASSERT_EQ(expected.size(), actual.size());
  double max_error = 0, scale = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    max_error = std::max(max_error, static_cast<double>(std::fabs(expected[i] - actual[i])));
    scale = std::max(scale, static_cast<double>(std::fabs(expected[i])));
  }
  // Each expert multiplies the same rows either way, by the same kernels: identical results.
  EXPECT_EQ(max_error, 0.0) << "scale " << scale;
}

TEST(PlanExpertCallsTest, ASplitKeepsTokenOrderAndNoCallPassesTheRowLimit) {
  // 5 tokens, top 3; the shard holds experts [10, 20).
  const std::vector<int32_t> ids = {10, 11, 30,   // token 0: slots 0, 1
                                    1, 2, 3,      // token 1: none
                                    12, 13, 14,   // token 2: slots 6, 7, 8
                                    19, 40, 41,   // token 3: slot 9
                                    15, 16, 0};   // token 4: slots 12, 13
  const std::vector<ExpertCall> one = PlanExpertCalls(ids.data(), 5, 3, 10, 20, 0);
  ASSERT_EQ(one.size(), 1u);
  EXPECT_EQ(one[0].tokens, (std::vector<int64_t>{0, 2, 3, 4}));
  EXPECT_EQ(one[0].slots, (std::vector<int64_t>{0, 1, 6, 7, 8, 9, 12, 13}));

  // At most 4 rows a call: tokens 0 and 2 would be 5 slots.
  const std::vector<ExpertCall> split = PlanExpertCalls(ids.data(), 5, 3, 10, 20, 4);
  ASSERT_EQ(split.size(), 3u);
  EXPECT_EQ(split[0].tokens, (std::vector<int64_t>{0}));
  EXPECT_EQ(split[0].slots, (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(split[1].tokens, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(split[1].slots, (std::vector<int64_t>{6, 7, 8, 9}));
  EXPECT_EQ(split[2].tokens, (std::vector<int64_t>{4}));
  EXPECT_EQ(split[2].slots, (std::vector<int64_t>{12, 13}));

  // At most 2 rows: the token limit binds as well as the slots'.
  const std::vector<int32_t> single = {10, 1, 2, 11, 3, 4, 12, 5, 6};
  const std::vector<ExpertCall> pairs = PlanExpertCalls(single.data(), 3, 3, 10, 20, 2);
  ASSERT_EQ(pairs.size(), 2u);
  EXPECT_EQ(pairs[0].tokens, (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(pairs[1].slots, (std::vector<int64_t>{6}));

  EXPECT_TRUE(PlanExpertCalls(ids.data(), 5, 3, 20, 30, 4).empty()) << "no token routed here, no call";
}

INSTANTIATE_TEST_SUITE_P(Backends, RemoteExpertRunnerTest, ::testing::Values("cpu", "cuda"),
                         [](const auto& param) { return param.param; });

}  // namespace
}  // namespace deltaserve::services
