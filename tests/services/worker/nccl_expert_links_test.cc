// A stage on one GPU whose routed experts live in two expert shards on another GPU, each behind its
// gRPC service and taking NCCL links (and the same on the CPU over in-process links, which run the
// protocol on every machine): a layer's rows and slot outputs go device to device, in calls no
// larger than a link's buffer, and the stage computes bit for bit what it computes with the rows
// sent as bytes. A call a shard refuses breaks that link, and that shard's calls go as bytes until
// it is made again; rows on a link a shard does not hold fail cleanly and it keeps serving; at its
// limit of links a shard drops the one idle longest, whose stage then gets its calls' rows through
// as bytes; a stage's new link replaces its old one (on GPUs those skip with the reason where the
// build has no NCCL or the host fewer than two GPUs). Links past a shard's capacity, and rows
// announced to a shard without links, are refused anywhere.
#include "services/worker/nccl_expert_links.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>

#include <atomic>
#include <random>
#include <thread>

#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "kernels/backend_factory.h"
#include "model/config/model_source.h"
#include "model/kimi_linear_model.h"
#include "services/common/server_runner.h"
#include "services/transport/grpc_channels.h"
#include "services/worker/remote_expert_runner.h"
#include "tests/services/transport/failing_links.h"
#include "tests/testing/join_on_a_thread.h"
#include "tests/testing/loopback_server.h"
#include "tests/testing/wait_until.h"
#include "tests/services/transport/in_process_links.h"
#include "tests/services/worker/counter_value.h"

namespace deltaserve::services {
namespace {

const std::string kFixture = std::string(DELTASERVE_TEST_DATA_DIR) + "/kimi-odd";
constexpr int64_t kLinkRows = 8;  // fewer than a 16-token prefill's slots on either shard
constexpr std::chrono::milliseconds kTimeout{20000};
const std::string kOwner = "the stage under test";

double GaugeValue(prometheus::Registry& registry, const std::string& name) {
  for (const prometheus::MetricFamily& family : registry.Collect()) {
    if (family.name == name && !family.metric.empty()) return family.metric.front().gauge.value;
  }
  return -1;
}

// A request for `tokens` tokens of layer 1 whose experts are `ids` (top_k each).
internal::v1::RunExpertsRequest RequestFor(const model::KimiLinearConfig& config, const std::vector<int32_t>& ids) {
  internal::v1::RunExpertsRequest request;
  const int64_t tokens = static_cast<int64_t>(ids.size()) / config.num_experts_per_token;
  request.set_layer(1);
  request.set_num_tokens(tokens);
  request.set_top_k(config.num_experts_per_token);
  for (int32_t id : ids) request.add_expert_ids(id);
  request.mutable_hidden()->assign(static_cast<size_t>(tokens * config.hidden_size) * sizeof(float), '\0');
  return request;
}

TEST(NcclExpertLinksTest, RefusesLinksPastItsCapacityAndRowsOnLinksItDoesNotHold) {
  auto backend = kernels::CreateBackend({.device = "cpu", .cpu_threads = 1}, nullptr);
  ASSERT_NE(backend, nullptr);
  auto shard = ExpertShard::Load(kFixture, *backend, 0, 20);
  ASSERT_TRUE(shard.ok()) << shard.status();
  NcclExpertLinks links(**shard, *backend, {.device = 0, .max_capacity_bytes = 1 << 20, .max_links = 2});
  prometheus::Registry registry;
  auto metrics = ExpertMetrics::Create(registry);
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  CountedExperts counted(links, **metrics);
  internal::v1::ConnectNcclRequest connect;
  connect.set_nccl_id(std::string(128, 'x'));
  connect.set_link(7);
  connect.set_capacity_bytes((1 << 20) + 1);
  EXPECT_EQ(links.Connect(connect).code(), absl::StatusCode::kInvalidArgument);
  connect.set_capacity_bytes(1024);
  connect.set_link(0);
  EXPECT_EQ(links.Connect(connect).code(), absl::StatusCode::kInvalidArgument);
  connect.set_link(7);
  EXPECT_EQ(links.Connect(connect).code(), absl::StatusCode::kInvalidArgument) << "outputs come back: both ways";

  const model::KimiLinearConfig& config = (*shard)->config();
  internal::v1::RunExpertsRequest request = RequestFor(config, {1, 25, 3, 30, 31, 32});
  internal::v1::RunExpertsResponse response;
  internal::v1::RunExpertsRequest over_link = request;
  over_link.clear_hidden();
  over_link.set_hidden_link(7);
  EXPECT_EQ(counted.RunExperts(over_link, &response).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*shard)->RunExperts(over_link, &response).code(), absl::StatusCode::kFailedPrecondition)
      << "a shard without links takes no rows announced over one";
  // Rows as bytes go to the shard: experts 1 and 3 are its, 25 and 30..32 not.
  const absl::Status status = counted.RunExperts(request, &response);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(response.slot_outputs().size(), 2 * config.hidden_size * sizeof(float));
  EXPECT_EQ(testing::CounterValue(registry, "deltaserve_expert_calls_total", "path", "bytes"), 1);
  EXPECT_EQ(testing::CounterValue(registry, "deltaserve_expert_calls_total", "path", "nccl"), 0);
  EXPECT_EQ(testing::CounterValue(registry, "deltaserve_expert_call_failures_total"), 1);
}

std::unique_ptr<kernels::Backend> Gpu(int device, std::string* why) {
  return kernels::CreateBackend({.device = "cuda", .cuda_device = device}, why);
}

// An expert shard on GPU 1 behind its own gRPC server, taking NCCL links.
struct ShardServer {
  std::unique_ptr<prometheus::Registry> registry = std::make_unique<prometheus::Registry>();
  std::unique_ptr<ExpertMetrics> metrics;
  std::unique_ptr<ExpertShard> shard;
  std::unique_ptr<NcclExpertLinks> links;
  std::unique_ptr<CountedExperts> counted;
  std::unique_ptr<ExpertWorkerService> service;
  std::unique_ptr<GrpcServer> server;
  std::shared_ptr<GrpcExpertChannel> channel;
  std::unique_ptr<std::atomic<int>> connects_started = std::make_unique<std::atomic<int>>(0);
  std::unique_ptr<std::atomic<int>> connects_answered = std::make_unique<std::atomic<int>>(0);
};

// The stage and the shards on two GPUs over NCCL ("cuda"), or on the CPU over in-process links
// ("cpu": the same protocol, on every machine).
class NcclExpertsTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    std::string why;
    if (GetParam() == "cpu") {
      stage_backend_ = kernels::CreateBackend({.device = "cpu", .cpu_threads = 2}, &why);
      shard_backend_ = kernels::CreateBackend({.device = "cpu", .cpu_threads = 2}, &why);
      ASSERT_TRUE(stage_backend_ && shard_backend_) << why;
      failing_ = std::make_unique<testing::FailingLinks>(in_process_);
    } else {
      stage_backend_ = Gpu(0, &why);
      if (stage_backend_ != nullptr) shard_backend_ = Gpu(1, &why);
      if (stage_backend_ == nullptr || shard_backend_ == nullptr) {
        GTEST_SKIP() << "a stage and its experts on two GPUs need two GPUs: " << why;
      }
      if (!NcclLink::NewId().ok()) GTEST_SKIP() << "this build has no NCCL";
      failing_ = std::make_unique<testing::FailingLinks>(NcclLinkFactory::Nccl());
    }
    links_ = failing_.get();
    absl::StatusOr<model::KimiLinearConfig> config = model::LoadModelSourceConfig(kFixture);
    ASSERT_TRUE(config.ok()) << config.status();
    config_ = *config;
    const size_t capacity = static_cast<size_t>(kLinkRows * config_.hidden_size) * sizeof(float);
    const int64_t split = 13;
    for (auto [begin, end] : {std::pair<int64_t, int64_t>{0, split}, {split, config_.num_experts}}) {
      ShardServer& s = shards_.emplace_back();
      auto shard = ExpertShard::Load(kFixture, *shard_backend_, begin, end);
      ASSERT_TRUE(shard.ok()) << shard.status();
      s.shard = std::move(*shard);
      auto metrics = ExpertMetrics::Create(*s.registry);
      ASSERT_TRUE(metrics.ok()) << metrics.status();
      s.metrics = std::move(*metrics);
      s.links = std::make_unique<NcclExpertLinks>(
          *s.shard, *shard_backend_,
          NcclExpertLinkLimits{.device = 1,
                               .max_capacity_bytes = capacity,
                               .max_links = 2,
                               .timeout = kTimeout,
                               .evict_after = std::chrono::milliseconds(0)},
          *links_, s.metrics.get());
      NcclExpertLinks* links = s.links.get();
      std::atomic<int>* started = s.connects_started.get();
      std::atomic<int>* answered = s.connects_answered.get();
      s.counted = std::make_unique<CountedExperts>(*s.links, *s.metrics);
      s.service = std::make_unique<ExpertWorkerService>(
          *s.counted, WorkerDescription{},
          [links, started, answered](const internal::v1::ConnectNcclRequest& request,
                                     const NcclLink::GiveUp& give_up) {
            ++*started;
            const absl::Status status = links->Connect(request, give_up);
            ++*answered;
            return status;
          });
      auto server = testing::StartLoopbackServer(s.service.get());
      ASSERT_TRUE(server.ok()) << server.status();
      s.server = std::move(*server);
      s.channel = std::make_shared<GrpcExpertChannel>(
          grpc::CreateChannel(s.server->address(), grpc::InsecureChannelCredentials()), kTimeout);
      outputs_.push_back(LinkTo(shards_.size() - 1, kOwner));
      ASSERT_TRUE(outputs_.back()->status().ok()) << outputs_.back()->status();
      linked_.push_back({begin, end, s.channel.get(), s.shard->fingerprint(), outputs_.back().get()});
      plain_.push_back({begin, end, s.channel.get(), s.shard->fingerprint(), nullptr});
    }
  }

  // A link from the stage to shard `shard`, made by `owner`.
  std::unique_ptr<NcclOutputLink> LinkTo(size_t shard, const std::string& owner) {
    const size_t capacity = static_cast<size_t>(kLinkRows * config_.hidden_size) * sizeof(float);
    NcclOutputLinkOptions options;
    options.capacity_bytes = capacity;
    options.timeout = kTimeout;
    options.owner = owner;
    options.both_ways = true;
    options.links = links_;
    return std::make_unique<NcclOutputLink>(shards_[shard].channel, "an expert shard", options);
  }

  // What Run gives for `ids` with every shard's rows sent as bytes.
  std::vector<float> AsBytes(const std::vector<int32_t>& ids) {
    RemoteExpertRunner plain(*stage_backend_, plain_, config_.hidden_size);
    absl::Status status;
    std::vector<float> out = Run(plain, ids, &status);
    EXPECT_TRUE(status.ok()) << status;
    return out;
  }

  // Runs `ids`' experts ([tokens, top_k]) for random rows through `runner` on the stage: the slots'
  // outputs, or empty where the call failed (status in `status`).
  std::vector<float> Run(RemoteExpertRunner& runner, const std::vector<int32_t>& ids, absl::Status* status) {
    const int64_t k = config_.num_experts_per_token, tokens = static_cast<int64_t>(ids.size()) / k;
    std::vector<float> host_x(static_cast<size_t>(tokens * config_.hidden_size));
    std::mt19937 random(static_cast<uint32_t>(ids.size()));
    std::normal_distribution<float> normal;
    for (float& v : host_x) v = normal(random);
    kernels::Tensor x = stage_backend_->Allocate(tokens, config_.hidden_size, kernels::DType::kF32);
    stage_backend_->Upload(host_x.data(), x.view());
    kernels::Tensor expert_ids = stage_backend_->Allocate(tokens, k, kernels::DType::kI32);
    stage_backend_->Upload(ids.data(), expert_ids.view());
    kernels::Tensor slots = stage_backend_->Allocate(tokens * k, config_.hidden_size, kernels::DType::kF32);
    *status = runner.RunExperts(1, x.view(), expert_ids.view(), slots.view());
    if (!status->ok()) return {};
    std::vector<float> out(static_cast<size_t>(tokens * k * config_.hidden_size));
    stage_backend_->Download(slots.view(), out.data());
    return out;
  }

  testing::InProcessLinks in_process_;  // outlives every link
  std::unique_ptr<testing::FailingLinks> failing_;  // over in_process_ or NCCL's; outlives every link
  NcclLinkFactory* links_ = nullptr;
  std::unique_ptr<kernels::Backend> stage_backend_, shard_backend_;
  model::KimiLinearConfig config_;
  std::vector<ShardServer> shards_;
  std::vector<std::unique_ptr<NcclOutputLink>> outputs_;
  std::vector<ExpertShardLink> linked_, plain_;
};

TEST_P(NcclExpertsTest, AStageOverLinksComputesWhatItComputesWithBytes) {
  RemoteExpertRunner linked(*stage_backend_, linked_, config_.hidden_size);
  RemoteExpertRunner plain(*stage_backend_, plain_, config_.hidden_size);
  std::vector<float> logits[2];
  for (int i = 0; i < 2; ++i) {
    model::ModelOptions options;
    options.scope.load_routed_experts = false;
    options.experts = i == 0 ? &linked : &plain;
    auto model = model::KimiLinearModel::Load(kFixture, *stage_backend_, options);
    ASSERT_TRUE(model.ok()) << model.status();
    // Two sequences in one packed batch (16 tokens, 48 slots: calls of at most 8 on either link),
    // then a decode step of both.
    auto state_a = (*model)->NewState();
    auto state_b = (*model)->NewState();
    const std::vector<int32_t> a = {3, 14, 15, 92, 65, 35, 89, 79, 32, 38, 46}, b = {26, 43, 38, 32, 7};
    const model::SequenceInput prefill[] = {{a, state_a.get(), {0, 5, 10}}, {b, state_b.get(), {4}}};
    ASSERT_TRUE((*model)->Forward(prefill, logits[i]).ok());
    const std::vector<int32_t> next_a = {11}, next_b = {12};
    const model::SequenceInput decode[] = {{next_a, state_a.get(), {0}}, {next_b, state_b.get(), {0}}};
    std::vector<float> decoded;
    ASSERT_TRUE((*model)->Forward(decode, decoded).ok());
    logits[i].insert(logits[i].end(), decoded.begin(), decoded.end());
  }
  ASSERT_FALSE(logits[0].empty());
  EXPECT_EQ(logits[0], logits[1]) << "the same kernels on the same rows, carried either way";
  // Five MoE layers; the prefill's 48 slots take several calls a layer on each link.
  EXPECT_GT(linked.calls_over_nccl(), 2 * 2 * 5);
  EXPECT_EQ(linked.calls_as_bytes(), 0);
  EXPECT_EQ(plain.calls_over_nccl(), 0);
  EXPECT_GT(plain.calls_as_bytes(), 0);
  double answered_over_links = 0;
  for (const ShardServer& s : shards_) {
    answered_over_links += testing::CounterValue(*s.registry, "deltaserve_expert_calls_total", "path", "nccl");
  }
  EXPECT_EQ(answered_over_links, linked.calls_over_nccl());
}

TEST_P(NcclExpertsTest, AFailedCallBreaksItsLinkAndThatShardGoesAsBytesUntilTheLinkIsMadeAgain) {
  prometheus::Registry registry;
  auto metrics = LinkPathMetrics::ForExpertCalls(registry);
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  RemoteExpertRunner linked(*stage_backend_, linked_, config_.hidden_size, metrics->get());
  // Over the same links, a runner that expects another model of the low shard: that shard refuses
  // the call (and the retry as bytes) before taking the rows, and breaks its link.
  std::vector<ExpertShardLink> wrong = linked_;
  wrong[0].model_fingerprint ^= 1;
  RemoteExpertRunner refused(*stage_backend_, wrong, config_.hidden_size, metrics->get());
  const std::vector<int32_t> ids = {1, 20, 30, 2, 3, 25, 39, 12, 0};
  const std::vector<float> expected = AsBytes(ids);
  absl::Status status;
  EXPECT_TRUE(Run(refused, ids, &status).empty());
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_TRUE(outputs_[0]->link().broken());
  EXPECT_FALSE(outputs_[1]->link().broken());
  EXPECT_EQ(testing::CounterValue(registry, "deltaserve_stage_expert_nccl_link_failures_total"), 1);

  EXPECT_EQ(Run(linked, ids, &status), expected);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(linked.calls_as_bytes(), 1) << "the low shard's call, its link down";
  EXPECT_EQ(linked.calls_over_nccl(), 1);
  ASSERT_TRUE(outputs_[0]->Reconnect().ok());
  EXPECT_EQ(shards_[0].links->links(), 1) << "the new link replaced the broken one";
  EXPECT_EQ(Run(linked, ids, &status), expected);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(linked.calls_over_nccl(), 3);
  // The high shard's call of the refused runner went over its link too.
  EXPECT_EQ(testing::CounterValue(registry, "deltaserve_stage_expert_calls_total", "path", "nccl"), 4);
  EXPECT_EQ(testing::CounterValue(registry, "deltaserve_stage_expert_calls_total", "path", "bytes"), 1);
}

TEST_P(NcclExpertsTest, RowsAnnouncedOnAnUnknownLinkFailAndTheShardKeepsServing) {
  internal::v1::RunExpertsRequest stray = RequestFor(config_, {1, 2, 3});
  stray.clear_hidden();
  stray.set_hidden_link(outputs_[0]->id() + 1);
  internal::v1::RunExpertsResponse response;
  EXPECT_EQ(shards_[0].channel->RunExperts(stray, &response).code(), absl::StatusCode::kFailedPrecondition);
  RemoteExpertRunner linked(*stage_backend_, linked_, config_.hidden_size);
  const std::vector<int32_t> ids = {1, 2, 3, 14, 15, 16};
  absl::Status status;
  EXPECT_EQ(Run(linked, ids, &status), AsBytes(ids));
  EXPECT_TRUE(status.ok()) << status;
  EXPECT_EQ(linked.calls_over_nccl(), 2);
}

TEST_P(NcclExpertsTest, AtItsLimitAShardDropsTheLinkIdleLongestAndThatStageGoesOnAsBytes) {
  const std::unique_ptr<NcclOutputLink> second = LinkTo(0, "another stage");
  ASSERT_TRUE(second->status().ok()) << second->status();
  // The shard holds its limit of two: the fixture's link, idle longest, makes room for a third.
  const std::unique_ptr<NcclOutputLink> third = LinkTo(0, "a third stage");
  ASSERT_TRUE(third->status().ok()) << third->status();
  EXPECT_EQ(shards_[0].links->links(), 2);
  EXPECT_EQ(GaugeValue(*shards_[0].registry, "deltaserve_expert_nccl_links"), 2);
  RemoteExpertRunner linked(*stage_backend_, linked_, config_.hidden_size);
  const std::vector<int32_t> ids = {4, 5, 6, 21, 22, 23};
  const std::vector<float> expected = AsBytes(ids);
  absl::Status status;
  // The low shard refuses the dropped link's call before taking the rows: they go as bytes.
  EXPECT_EQ(Run(linked, ids, &status), expected);
  EXPECT_TRUE(status.ok()) << status;
  EXPECT_EQ(linked.calls_as_bytes(), 1);
  EXPECT_EQ(linked.calls_over_nccl(), 1);
  EXPECT_TRUE(outputs_[0]->link().broken());
  std::vector<ExpertShardLink> over_third = linked_;
  over_third[0].nccl = third.get();
  RemoteExpertRunner third_runner(*stage_backend_, over_third, config_.hidden_size);
  EXPECT_EQ(Run(third_runner, ids, &status), expected);
  EXPECT_TRUE(status.ok()) << status;
  EXPECT_EQ(third_runner.calls_over_nccl(), 2);
}

// A link made one way (as to a stage) is refused by a shard, whose outputs come back over it.
TEST_P(NcclExpertsTest, AShardRefusesALinkNotMadeBothWays) {
  NcclOutputLinkOptions options;
  options.capacity_bytes = static_cast<size_t>(kLinkRows * config_.hidden_size) * sizeof(float);
  options.timeout = kTimeout;
  options.links = links_;
  NcclOutputLink one_way(shards_[0].channel, "an expert shard", options);
  EXPECT_EQ(one_way.status().code(), absl::StatusCode::kInvalidArgument) << one_way.status();
  EXPECT_EQ(shards_[0].links->links(), 1);
}

// A stage process that comes back (the same owner) replaces the link its predecessor left.
TEST_P(NcclExpertsTest, ALinkOfTheSameOwnerReplacesTheOldOne) {
  const std::unique_ptr<NcclOutputLink> again = LinkTo(0, kOwner);
  ASSERT_TRUE(again->status().ok()) << again->status();
  EXPECT_EQ(shards_[0].links->links(), 1);
  std::vector<ExpertShardLink> over_again = linked_;
  over_again[0].nccl = again.get();
  RemoteExpertRunner runner(*stage_backend_, over_again, config_.hidden_size);
  const std::vector<int32_t> ids = {7, 8, 9, 30, 31, 32};
  absl::Status status;
  EXPECT_EQ(Run(runner, ids, &status), AsBytes(ids));
  EXPECT_TRUE(status.ok()) << status;
  EXPECT_EQ(runner.calls_over_nccl(), 2);
}

// A warm-up that fails on the shard (its answer's send) leaves the stage without that link, so its
// calls to that shard go as bytes with the same results, until the link is made again.
TEST_P(NcclExpertsTest, AWarmUpThatFailsLeavesTheLinkDownAndCallsGoAsBytesUntilItIsMadeAgain) {
  failing_->FailNextSend(1);
  const std::unique_ptr<NcclOutputLink> failed = LinkTo(0, "another stage");
  EXPECT_FALSE(failed->status().ok());
  EXPECT_NE(failed->status().message().find("warm-up"), std::string::npos) << failed->status();
  EXPECT_EQ(shards_[0].links->links(), 1) << "the fixture's link; the failed one is not held";
  std::vector<ExpertShardLink> over_failed = linked_;
  over_failed[0].nccl = failed.get();
  RemoteExpertRunner runner(*stage_backend_, over_failed, config_.hidden_size);
  const std::vector<int32_t> ids = {10, 11, 12, 33, 34, 35};
  const std::vector<float> expected = AsBytes(ids);
  absl::Status status;
  EXPECT_EQ(Run(runner, ids, &status), expected);
  EXPECT_TRUE(status.ok()) << status;
  EXPECT_EQ(runner.calls_as_bytes(), 1);
  EXPECT_EQ(runner.calls_over_nccl(), 1);
  ASSERT_TRUE(failed->Reconnect().ok());
  EXPECT_EQ(shards_[0].links->links(), 2);
  EXPECT_EQ(Run(runner, ids, &status), expected);
  EXPECT_TRUE(status.ok()) << status;
  EXPECT_EQ(runner.calls_over_nccl(), 3);
}

// A ConnectNccl whose maker joins but never warms the link up, and whose call then runs out of
// time, ends on the shard with the call, not at the link's timeout; the shard keeps serving.
TEST_P(NcclExpertsTest, AJoinWhoseCallerWentAwayEndsWithTheCall) {
  absl::StatusOr<std::string> id = links_->NewId();
  ASSERT_TRUE(id.ok()) << id.status();
  absl::StatusOr<std::unique_ptr<NcclLink>> maker;
  std::thread join = testing::JoinOnAThread(*links_, *id, kTimeout, maker);
  internal::v1::ConnectNcclRequest request;
  request.set_nccl_id(*id);
  request.set_link(12345);
  request.set_capacity_bytes(1024);
  request.set_both_ways(true);
  request.set_owner("a stage that goes away");
  const int answered = shards_[0].connects_answered->load();
  const auto start = std::chrono::steady_clock::now();
  const absl::Status status = shards_[0].channel->ConnectNccl(request, std::chrono::milliseconds(500), nullptr);
  EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
  join.join();
  EXPECT_TRUE(maker.ok()) << maker.status();
  testing::WaitUntil([&] { return shards_[0].connects_answered->load() != answered; }, kTimeout);
  EXPECT_LT(std::chrono::steady_clock::now() - start, kTimeout / 4) << "the shard waited out the link's timeout";
  EXPECT_EQ(shards_[0].links->links(), 1);
  RemoteExpertRunner linked(*stage_backend_, linked_, config_.hidden_size);
  const std::vector<int32_t> ids = {1, 2, 3, 14, 15, 16};
  absl::Status run;
  EXPECT_EQ(Run(linked, ids, &run), AsBytes(ids));
  EXPECT_TRUE(run.ok()) << run;
  EXPECT_EQ(linked.calls_over_nccl(), 2);
}

// A stage whose own join fails ends its ConnectNccl call at once, and with it the shard's wait for
// the join: neither waits out the link's timeout, and the link is made at the next attempt.
TEST_P(NcclExpertsTest, AMakerWhoseOwnJoinFailsEndsItsCallAndTheShardsWait) {
  const int started = shards_[0].connects_started->load();
  const int answered = shards_[0].connects_answered->load();
  const auto start = std::chrono::steady_clock::now();
  failing_->FailNextJoin(0, [&] {  // once the shard's side has begun
    testing::WaitUntil([&] { return shards_[0].connects_started->load() != started; }, kTimeout);
  });
  const std::unique_ptr<NcclOutputLink> failed = LinkTo(0, "another stage");
  EXPECT_LT(std::chrono::steady_clock::now() - start, kTimeout / 4) << "the stage waited out its call";
  EXPECT_NE(failed->status().message().find("injected: the join failed"), std::string::npos) << failed->status();
  testing::WaitUntil([&] { return shards_[0].connects_answered->load() != answered; }, kTimeout);
  EXPECT_LT(std::chrono::steady_clock::now() - start, kTimeout / 4) << "the shard waited out the link's timeout";
  EXPECT_EQ(shards_[0].links->links(), 1) << "the fixture's link; the failed one is not held";
  ASSERT_TRUE(failed->Reconnect().ok());
  EXPECT_EQ(shards_[0].links->links(), 2);
  std::vector<ExpertShardLink> over_failed = linked_;
  over_failed[0].nccl = failed.get();
  RemoteExpertRunner runner(*stage_backend_, over_failed, config_.hidden_size);
  const std::vector<int32_t> ids = {4, 5, 6, 17, 18, 19};
  absl::Status status;
  EXPECT_EQ(Run(runner, ids, &status), AsBytes(ids));
  EXPECT_TRUE(status.ok()) << status;
  EXPECT_EQ(runner.calls_over_nccl(), 2);
}

INSTANTIATE_TEST_SUITE_P(Links, NcclExpertsTest, ::testing::Values("cpu", "cuda"),
                         [](const auto& param) { return param.param; });

}  // namespace
}  // namespace deltaserve::services
