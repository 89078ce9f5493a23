// Workers refuse calls from peers that expect another model or another split of it: peers
// compare at start only, so a worker restarted with other weights or layers must say so on
// every call instead of computing on (OpenRequest / RunExpertsRequest expectations).
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "model/kimi_linear_model.h"
#include "services/worker/expert_shard.h"
#include "services/transport/sampling_proto.h"
#include "services/worker/stage_engine.h"

namespace deltaserve::services {
namespace {

const std::string kFixture = std::string(DELTASERVE_TEST_DATA_DIR) + "/kimi-odd";

internal::v1::OpenRequest OneSequence(uint64_t seq_id) {
  internal::v1::OpenRequest request;
  internal::v1::OpenSequence* open = request.add_sequences();
  open->set_seq_id(seq_id);
  ToProto(model::SamplingParams{}, open->mutable_sampling());
  return request;
}

TEST(PeerChecksTest, AStageRefusesAnotherModelOrFirstLayer) {
  kernels::cpu::CpuBackend backend({.num_threads = 1});
  model::ModelOptions options;
  options.scope.layer_begin = 1;
  auto stage_model = model::KimiLinearModel::Load(kFixture, backend, options);
  ASSERT_TRUE(stage_model.ok()) << stage_model.status();
  StageEngine stage(**stage_model, nullptr, nullptr, {});
  const uint64_t fingerprint = (*stage_model)->fingerprint();

  internal::v1::OpenRequest wrong_model = OneSequence(1);
  wrong_model.set_model_fingerprint(fingerprint ^ 1);
  internal::v1::OpenResponse response;
  EXPECT_EQ(stage.Open(wrong_model, &response).code(), absl::StatusCode::kFailedPrecondition);

  internal::v1::OpenRequest wrong_layer = OneSequence(2);
  wrong_layer.set_model_fingerprint(fingerprint);
  wrong_layer.set_layer_begin(0);
  EXPECT_EQ(stage.Open(wrong_layer, &response).code(), absl::StatusCode::kFailedPrecondition);

  internal::v1::OpenRequest right = OneSequence(3);
  right.set_model_fingerprint(fingerprint);
  right.set_layer_begin(1);
  const absl::Status opened = stage.Open(right, &response);
  EXPECT_TRUE(opened.ok()) << opened;
}

TEST(PeerChecksTest, AnExpertShardRefusesAnotherModelOrRange) {
  kernels::cpu::CpuBackend backend({.num_threads = 1});
  auto shard = ExpertShard::Load(kFixture, backend, 0, 2);
  ASSERT_TRUE(shard.ok()) << shard.status();
  auto whole = model::KimiLinearModel::Load(kFixture, backend);
  ASSERT_TRUE(whole.ok()) << whole.status();
  const model::KimiLinearConfig& c = (*whole)->config();
  int64_t moe_layer = 0;
  while (!c.IsMoe(moe_layer)) ++moe_layer;

  internal::v1::RunExpertsRequest request;
  request.set_layer(moe_layer);
  request.set_num_tokens(1);
  request.set_top_k(c.num_experts_per_token);
  request.mutable_hidden()->assign(c.hidden_size * sizeof(float), '\0');
  for (int64_t slot = 0; slot < c.num_experts_per_token; ++slot) request.add_expert_ids(slot);
  request.set_model_fingerprint((*whole)->fingerprint());
  request.set_expert_begin(0);
  request.set_expert_end(2);
  internal::v1::RunExpertsResponse response;
  const absl::Status ran = (*shard)->RunExperts(request, &response);
  ASSERT_TRUE(ran.ok()) << ran;

  internal::v1::RunExpertsRequest wrong_range = request;
  wrong_range.set_expert_end(3);
  EXPECT_EQ((*shard)->RunExperts(wrong_range, &response).code(), absl::StatusCode::kFailedPrecondition);
  internal::v1::RunExpertsRequest wrong_model = request;
  wrong_model.set_model_fingerprint((*whole)->fingerprint() ^ 1);
  EXPECT_EQ((*shard)->RunExperts(wrong_model, &response).code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace deltaserve::services
