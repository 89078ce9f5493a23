// Two pipeline stages on two GPUs of this host, the later one behind its gRPC service: with an
// NCCL link between them a stage's hidden rows go device to device, and every step samples what
// the same stages sample with the rows sent as bytes: decode steps (from the second on, step
// graphs that copy from the link's buffer), a prefill too large for the link (sent as bytes) and
// a chunk that samples nothing alike. A step announcing rows on a link the later stage does not
// hold fails cleanly and the stage keeps serving; a step the later stage fails after it took the
// rows keeps the link, one whose rows it refused breaks it and sends them again as bytes, and steps
// go as bytes until it is made again; two steps in flight take a link each; a join the maker gives up on (its call gone, or its own join failed) ends at once
// on both sides (on GPUs those skip with the reason where the build has no NCCL or the host fewer
// than two GPUs; the same protocol runs on the CPU over in-process links everywhere). Links past a
// stage's limit, rows on links it does not hold and rows over NCCL to a stage without links are
// refused anywhere.
#include "services/worker/nccl_stage_links.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>

#include <atomic>
#include <initializer_list>
#include <string>
#include <vector>
#include <thread>
#include <tuple>

#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "kernels/backend_factory.h"
#if DELTASERVE_HAVE_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif
#include "model/kimi_linear_model.h"
#include "services/common/grpc_status.h"
#include "services/common/server_runner.h"
#include "services/transport/grpc_channels.h"
#include "services/worker/stage_engine.h"
#include "services/worker/stage_metrics.h"
#include "tests/services/transport/failing_links.h"
#include "tests/services/transport/in_process_links.h"
#include "tests/services/worker/counter_value.h"
#include "tests/services/worker/stage_requests.h"
#include "tests/testing/held_stage.h"
#include "tests/testing/join_on_a_thread.h"
#include "tests/testing/loopback_server.h"
#include "tests/testing/wait_until.h"

namespace deltaserve::services {
namespace {

const std::string kFixture = std::string(DELTASERVE_TEST_DATA_DIR) + "/kimi-tiny-public";
constexpr int64_t kLinkRows = 16;
constexpr std::chrono::milliseconds kTimeout{20000};
const std::string kOwner = "the stage under test link 0";  // the fixture's output link

std::unique_ptr<kernels::Backend> Gpu(int device, std::string* why) {
  return kernels::CreateBackend({.device = "cuda", .cuda_device = device}, why);
}

std::unique_ptr<model::KimiLinearModel> Layers(kernels::Backend& backend, int64_t begin, int64_t end) {
  model::ModelOptions options;
  options.scope.layer_begin = begin;
  options.scope.layer_end = end;
  auto model = model::KimiLinearModel::Load(kFixture, backend, options);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? std::move(*model) : nullptr;
}

using testing::StepOf;

internal::v1::OpenRequest OpenGreedy(uint64_t seq_id) {
  internal::v1::OpenRequest request;
  model::SamplingParams greedy;
  greedy.temperature = 0.0f;
  testing::AddSequence(request, seq_id, greedy);
  return request;
}

// What a stage does with NCCL requests it cannot honour, on any build and machine.
TEST(NcclStageInputTest, RefusesLinksPastItsLimitAndRowsOnLinksItDoesNotHold) {
  NcclStageInput input(0, 1 << 20, kTimeout);
  internal::v1::ConnectNcclRequest request;
  request.set_nccl_id(std::string(128, 'x'));
  request.set_link(7);
  request.set_capacity_bytes((1 << 20) + 1);
  EXPECT_EQ(input.Connect(request).code(), absl::StatusCode::kInvalidArgument);
  request.set_capacity_bytes(1024);
  request.set_link(0);
  EXPECT_EQ(input.Connect(request).code(), absl::StatusCode::kInvalidArgument);
  request.set_link(7);
  request.set_both_ways(true);
  EXPECT_EQ(input.Connect(request).code(), absl::StatusCode::kInvalidArgument) << "its rows come one way";
  EXPECT_EQ(input.Receive(7, 1, 128).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(NcclStageInputTest, TheReceiptIsTheProtoMessageCarriedAcrossGrpc) {
  EXPECT_EQ(std::string(kHiddenRowsReceivedPayload),
            "type.googleapis.com/" + internal::v1::HiddenRowsReceived::descriptor()->full_name());
  EXPECT_TRUE(std::string_view(kHiddenRowsReceivedPayload).starts_with(kCarriedPayloadPrefix));
}

TEST(NcclStageInputTest, AStageWithoutLinksRefusesRowsAnnouncedOverNcclAndKeepsServing) {
  auto backend = kernels::CreateBackend({.device = "cpu", .cpu_threads = 1}, nullptr);
  ASSERT_NE(backend, nullptr);
  auto model = model::KimiLinearModel::Load(kFixture, *backend);
  ASSERT_TRUE(model.ok()) << model.status();
  StageEngine stage(**model, nullptr, nullptr);
  internal::v1::OpenResponse opened;
  ASSERT_TRUE(stage.Open(OpenGreedy(1), &opened).ok());
  internal::v1::StepRequest stray = StepOf(1, {5});
  stray.set_hidden_link(3);
  stray.set_hidden_rows(1);
  internal::v1::StepResponse response;
  EXPECT_EQ(stage.Step(stray, &response).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(stage.Step(StepOf(1, {5, 6}), &response).ok());
  EXPECT_EQ(response.sampled_size(), 1);
}

// Two stages on two GPUs over NCCL ("cuda"), or on the CPU over in-process links ("cpu": the
// same protocol, on every machine).
class NcclStagesTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    std::string why;
    if (GetParam() == "cpu") {
      for (auto* backend : {&first_backend_, &last_backend_, &plain_first_backend_, &plain_last_backend_}) {
        *backend = kernels::CreateBackend({.device = "cpu", .cpu_threads = 2}, &why);
        ASSERT_NE(*backend, nullptr) << why;
      }
      links_ = &in_process_;
    } else {
      first_backend_ = Gpu(0, &why);
      if (first_backend_ != nullptr) last_backend_ = Gpu(1, &why);
      if (first_backend_ == nullptr || last_backend_ == nullptr) {
        GTEST_SKIP() << "two stages on two GPUs need two GPUs: " << why;
      }
      // The pipeline without a link on backends of its own, so that each backend's step graphs
      // are one pipeline's.
      plain_first_backend_ = Gpu(0, &why);
      plain_last_backend_ = Gpu(1, &why);
      ASSERT_TRUE(plain_first_backend_ && plain_last_backend_) << why;
      if (!NcclLink::NewId().ok()) GTEST_SKIP() << "this build has no NCCL";
      links_ = &NcclLinkFactory::Nccl();
    }
    linked_first_ = Layers(*first_backend_, 0, 2);
    linked_last_ = Layers(*last_backend_, 2, 4);
    plain_first_ = Layers(*plain_first_backend_, 0, 2);
    plain_last_ = Layers(*plain_last_backend_, 2, 4);
    ASSERT_TRUE(linked_first_ && linked_last_ && plain_first_ && plain_last_);

    const size_t capacity = static_cast<size_t>(kLinkRows * linked_first_->config().hidden_size) * sizeof(float);
    input_ = std::make_unique<NcclStageInput>(1, capacity, kTimeout, /*max_links=*/4, *links_);
    last_stage_ = std::make_unique<StageEngine>(*linked_last_, nullptr, nullptr, StageEngineOptions{}, input_.get());
    held_last_stage_ = std::make_unique<testing::HeldStage>(*last_stage_);
    service_ = std::make_unique<StageWorkerService>(
        *held_last_stage_, WorkerDescription{},
        [this](const internal::v1::ConnectNcclRequest& request, const NcclLink::GiveUp& give_up) {
          ++connects_started_;
          const absl::Status status = input_->Connect(request, give_up);
          ++connects_answered_;
          return status;
        });
    absl::StatusOr<std::unique_ptr<GrpcServer>> server = testing::StartLoopbackServer(service_.get());
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    channel_ = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
    next_ = std::make_shared<GrpcStageChannel>(channel_, kTimeout);
    output_ = std::make_unique<NcclOutputLink>(next_, "the next stage", LinkOptions(capacity, kOwner));
    ASSERT_TRUE(output_->status().ok()) << output_->status();
    absl::StatusOr<std::unique_ptr<LinkPathMetrics>> metrics = LinkPathMetrics::ForHandoffs(registry_);
    ASSERT_TRUE(metrics.ok()) << metrics.status();
    metrics_ = std::move(*metrics);
    first_stage_ = std::make_unique<StageEngine>(*linked_first_, nullptr, next_.get(), StageEngineOptions{}, nullptr,
                                                 std::vector<NcclOutputLink*>{output_.get()}, metrics_.get());
    plain_last_stage_ = std::make_unique<StageEngine>(*plain_last_, nullptr, nullptr);
    plain_first_stage_ = std::make_unique<StageEngine>(*plain_first_, nullptr, plain_last_stage_.get());
  }

  NcclOutputLinkOptions LinkOptions(size_t capacity, const std::string& owner = "") {
    NcclOutputLinkOptions options;
    options.owner = owner;
    options.capacity_bytes = capacity;
    options.timeout = kTimeout;
    options.links = links_;
    return options;
  }

  // Opens the sequences on both pipelines (greedy).
  void OpenOnBoth(std::initializer_list<uint64_t> seqs) {
    for (uint64_t seq : seqs) {
      internal::v1::OpenResponse linked, plain;
      ASSERT_TRUE(first_stage_->Open(OpenGreedy(seq), &linked).ok());
      ASSERT_TRUE(plain_first_stage_->Open(OpenGreedy(seq), &plain).ok());
    }
  }

  // Runs the step on both pipelines: the token each samples for the step's sequence.
  std::pair<int32_t, int32_t> Both(const internal::v1::StepRequest& request) {
    internal::v1::StepResponse linked, plain;
    const absl::Status linked_status = first_stage_->Step(request, &linked);
    const absl::Status plain_status = plain_first_stage_->Step(request, &plain);
    EXPECT_TRUE(linked_status.ok()) << linked_status;
    EXPECT_TRUE(plain_status.ok()) << plain_status;
    if (linked.sampled_size() != 1 || plain.sampled_size() != 1) return {-1, -2};
    return {linked.sampled(0).token_id(), plain.sampled(0).token_id()};
  }

  testing::InProcessLinks in_process_;  // outlives every link
  NcclLinkFactory* links_ = nullptr;
  std::unique_ptr<kernels::Backend> first_backend_, last_backend_, plain_first_backend_, plain_last_backend_;
  std::unique_ptr<model::KimiLinearModel> linked_first_, linked_last_, plain_first_, plain_last_;
  std::unique_ptr<NcclStageInput> input_;
  std::unique_ptr<StageEngine> last_stage_, first_stage_, plain_last_stage_, plain_first_stage_;
  std::unique_ptr<testing::HeldStage> held_last_stage_;  // before the later stage's rows are received
  std::unique_ptr<StageWorkerService> service_;
  std::unique_ptr<GrpcServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::shared_ptr<GrpcStageChannel> next_;
  std::unique_ptr<NcclOutputLink> output_;
  prometheus::Registry registry_;
  std::unique_ptr<LinkPathMetrics> metrics_;
  std::atomic<int> connects_started_{0};
  std::atomic<int> connects_answered_{0};
};

TEST_P(NcclStagesTest, StepsOverTheLinkSampleWhatStepsAsBytesSample) {
  OpenOnBoth({1, 2});
  // A prefill the link takes, then decode steps, each feeding back the token sampled.
  auto [token, expected] = Both(StepOf(1, {5, 17, 200, 2, 99, 7, 64, 1}));
  ASSERT_EQ(token, expected);
  for (int step = 0; step < 6; ++step) {
    std::tie(token, expected) = Both(StepOf(1, {token}));
    ASSERT_EQ(token, expected) << "decode step " << step;
  }
  EXPECT_EQ(output_->sent(), 7);
  // More rows than the link's buffer: sent as bytes, with the same result.
  std::vector<int32_t> long_prompt;
  for (int i = 0; i < 3 * kLinkRows; ++i) long_prompt.push_back((i * 37 + 11) % 250);
  std::tie(token, expected) = Both(StepOf(2, long_prompt));
  EXPECT_EQ(token, expected);
  EXPECT_EQ(output_->sent(), 7);
  std::tie(token, expected) = Both(StepOf(2, {token}));
  EXPECT_EQ(token, expected);
  EXPECT_EQ(output_->sent(), 8);
  // A prefill chunk that samples nothing (the last stage then downloads nothing), then its last
  // token sampled.
  internal::v1::StepRequest chunk = StepOf(2, {3, 4, 5, 6});
  chunk.mutable_sequences(0)->set_sample(false);
  internal::v1::StepResponse linked, plain;
  ASSERT_TRUE(first_stage_->Step(chunk, &linked).ok());
  ASSERT_TRUE(plain_first_stage_->Step(chunk, &plain).ok());
  std::tie(token, expected) = Both(StepOf(2, {7}));
  EXPECT_EQ(token, expected);
  EXPECT_EQ(output_->sent(), 10);
  EXPECT_EQ(testing::CounterValue(registry_, "deltaserve_stage_hidden_handoffs_total", "path", "nccl"), 10);
  EXPECT_EQ(testing::CounterValue(registry_, "deltaserve_stage_hidden_handoffs_total", "path", "bytes"), 1);
  EXPECT_EQ(testing::CounterValue(registry_, "deltaserve_stage_nccl_link_failures_total"), 0);
#if DELTASERVE_HAVE_CUDA
  if (GetParam() == "cpu") return;
  // The later stage's decode steps ran from step graphs that copy from the link's buffer.
  const auto* later = dynamic_cast<const kernels::cuda::CudaBackend*>(last_backend_.get());
  ASSERT_NE(later, nullptr);
  EXPECT_GT(later->step_graph_counts().replayed, 0);
#endif
}

// A step the later stage refuses after it took the rows says so (HiddenRowsReceived in the
// status details): the link is still in step and carries the next steps.
TEST_P(NcclStagesTest, AStepRefusedAfterTheRowsArrivedKeepsTheLink) {
  OpenOnBoth({1, 3});
  auto [token, expected] = Both(StepOf(1, {5, 17, 200, 2}));
  ASSERT_EQ(token, expected);
  // Sequence 3's first step reserves its pages on the later stage for the next steps too.
  std::tie(token, expected) = Both(StepOf(3, {4}));
  ASSERT_EQ(token, expected);
  ASSERT_EQ(output_->sent(), 2);
  // Sequence 3 closed on the later stage only: that stage takes the rows, then refuses the step.
  internal::v1::CloseRequest close;
  close.add_sequences()->set_seq_id(3);
  internal::v1::CloseResponse closed;
  ASSERT_TRUE(next_->Close(close, &closed).ok());
  internal::v1::StepResponse refused;
  EXPECT_EQ(first_stage_->Step(StepOf(3, {9, 8}), &refused).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(output_->sent(), 3);
  EXPECT_FALSE(output_->link().broken());
  EXPECT_EQ(testing::CounterValue(registry_, "deltaserve_stage_nccl_link_failures_total"), 0);
  for (int step = 0; step < 2; ++step) {
    std::tie(token, expected) = Both(StepOf(1, {token}));
    EXPECT_EQ(token, expected);
  }
  EXPECT_EQ(output_->sent(), 5);
}

// A step whose rows the later stage refused before taking them (here: it holds another link by
// then) breaks the link, since they may sit unread in NCCL's buffers, and its rows go again as
// bytes in the same step, which samples what the plain pipeline samples; later steps go as bytes
// with the same results, until a new link is made.
TEST_P(NcclStagesTest, RowsTheLaterStageRefusedGoAgainAsBytesAndTheLinkIsMadeAgain) {
  OpenOnBoth({1, 2});
  auto [token, expected] = Both(StepOf(1, {5, 17, 200, 2}));
  ASSERT_EQ(token, expected);
  ASSERT_EQ(output_->sent(), 1);
  const size_t capacity = static_cast<size_t>(kLinkRows * linked_first_->config().hidden_size) * sizeof(float);
  // The stage restarted, say: its new link of the same owner replaces the one output_ holds.
  NcclOutputLink other(next_, "the next stage", LinkOptions(capacity, kOwner));
  ASSERT_TRUE(other.status().ok()) << other.status();
  EXPECT_EQ(input_->links(), 1);
  std::tie(token, expected) = Both(StepOf(1, {token}));
  EXPECT_EQ(token, expected);
  EXPECT_EQ(output_->sent(), 2);
  EXPECT_TRUE(output_->link().broken());
  EXPECT_EQ(testing::CounterValue(registry_, "deltaserve_stage_nccl_link_failures_total"), 1);
  EXPECT_EQ(testing::CounterValue(registry_, "deltaserve_stage_hidden_handoffs_total", "path", "nccl"), 1);
  EXPECT_EQ(testing::CounterValue(registry_, "deltaserve_stage_hidden_handoffs_total", "path", "bytes"), 1);

  std::tie(token, expected) = Both(StepOf(2, {8, 30, 4}));
  EXPECT_EQ(token, expected);
  EXPECT_EQ(output_->sent(), 2) << "a broken link carried a step";
  ASSERT_TRUE(output_->Reconnect().ok());
  std::tie(token, expected) = Both(StepOf(2, {token}));
  EXPECT_EQ(token, expected);
  EXPECT_EQ(output_->sent(), 3);
}

TEST_P(NcclStagesTest, RowsAnnouncedOnAnUnknownLinkFailAndTheStageKeepsServing) {
  internal::v1::OpenResponse opened;
  ASSERT_TRUE(first_stage_->Open(OpenGreedy(1), &opened).ok());
  internal::v1::StepRequest stray = StepOf(1, {5});
  stray.set_hidden_link(output_->id() + 1);
  stray.set_hidden_rows(1);
  internal::v1::StepResponse response;
  const absl::Status status = next_->Step(stray, &response);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  // Through the first stage, over the link, as before.
  internal::v1::StepResponse stepped;
  const absl::Status again = first_stage_->Step(StepOf(1, {5, 17, 200}), &stepped);
  ASSERT_TRUE(again.ok()) << again;
  EXPECT_EQ(stepped.sampled_size(), 1);
  EXPECT_EQ(output_->sent(), 1);
}

// A ConnectNccl whose maker joins but never sends the warm-up, and whose call then runs out of
// time, ends on the later stage with the call, not at the link's timeout (until then it would
// hold one of the stage's link slots); steps go on over the link it holds.
TEST_P(NcclStagesTest, AJoinWhoseCallerWentAwayEndsWithTheCall) {
  absl::StatusOr<std::string> id = links_->NewId();
  ASSERT_TRUE(id.ok()) << id.status();
  absl::StatusOr<std::unique_ptr<NcclLink>> maker;
  std::thread join = testing::JoinOnAThread(*links_, *id, kTimeout, maker);
  internal::v1::ConnectNcclRequest request;
  request.set_nccl_id(*id);
  request.set_link(12345);
  request.set_capacity_bytes(1024);
  const int answered = connects_answered_.load();
  const auto start = std::chrono::steady_clock::now();
  const absl::Status status = next_->ConnectNccl(request, std::chrono::milliseconds(500), nullptr);
  EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
  join.join();
  EXPECT_TRUE(maker.ok()) << maker.status();
  testing::WaitUntil([&] { return connects_answered_.load() != answered; }, kTimeout);
  EXPECT_LT(std::chrono::steady_clock::now() - start, kTimeout / 4) << "the stage waited out the link's timeout";
  internal::v1::OpenResponse opened;
  ASSERT_TRUE(first_stage_->Open(OpenGreedy(1), &opened).ok());
  internal::v1::StepResponse stepped;
  const absl::Status step = first_stage_->Step(StepOf(1, {5, 17, 200}), &stepped);
  ASSERT_TRUE(step.ok()) << step;
  EXPECT_EQ(output_->sent(), 1);
}

// Two steps in flight through the first stage at once (a router's --pipeline-steps 2): the second
// finds the first link carrying the first step (held at the later stage) and takes a link of its
// own, and both sample what the plain pipeline samples.
TEST_P(NcclStagesTest, TwoStepsInFlightTakeALinkEach) {
  const size_t capacity = static_cast<size_t>(kLinkRows * linked_first_->config().hidden_size) * sizeof(float);
  NcclOutputLink second(next_, "the next stage", LinkOptions(capacity, "the stage under test link 1"));
  ASSERT_TRUE(second.status().ok()) << second.status();
  EXPECT_EQ(input_->links(), 2);
  first_stage_ = std::make_unique<StageEngine>(*linked_first_, nullptr, next_.get(), StageEngineOptions{}, nullptr,
                                               std::vector<NcclOutputLink*>{output_.get(), &second}, metrics_.get());
  OpenOnBoth({1, 2});
  const internal::v1::StepRequest one = StepOf(1, {5, 17, 200}), two = StepOf(2, {8, 30, 4, 9});
  held_last_stage_->Hold(true);
  internal::v1::StepResponse first_response, second_response;
  absl::Status first_status, second_status;
  std::thread first([&] { first_status = first_stage_->Step(one, &first_response); });
  const bool first_held = held_last_stage_->WaitForHeld(1, kTimeout);
  std::thread later([&] { second_status = first_stage_->Step(two, &second_response); });
  const bool both_held = first_held && held_last_stage_->WaitForHeld(2, kTimeout);
  held_last_stage_->Hold(false);
  first.join();
  later.join();
  EXPECT_TRUE(both_held) << "the second step waited for the first";
  ASSERT_TRUE(first_status.ok()) << first_status;
  ASSERT_TRUE(second_status.ok()) << second_status;
  EXPECT_EQ(output_->sent(), 1);
  EXPECT_EQ(second.sent(), 1);
  EXPECT_EQ(testing::CounterValue(registry_, "deltaserve_stage_hidden_handoffs_total", "path", "nccl"), 2);
  internal::v1::StepResponse plain_one, plain_two;
  ASSERT_TRUE(plain_first_stage_->Step(one, &plain_one).ok());
  ASSERT_TRUE(plain_first_stage_->Step(two, &plain_two).ok());
  ASSERT_EQ(first_response.sampled_size(), 1);
  ASSERT_EQ(second_response.sampled_size(), 1);
  EXPECT_EQ(first_response.sampled(0).token_id(), plain_one.sampled(0).token_id());
  EXPECT_EQ(second_response.sampled(0).token_id(), plain_two.sampled(0).token_id());
}

// A stage whose own join fails ends its ConnectNccl call at once, and with it the next stage's
// wait for the join (which holds its one join slot): neither waits out the link's timeout, and the
// link is made at the next attempt.
TEST_P(NcclStagesTest, AMakerWhoseOwnJoinFailsEndsItsCallAndTheNextStagesWait) {
  const size_t capacity = static_cast<size_t>(kLinkRows * linked_first_->config().hidden_size) * sizeof(float);
  const int started = connects_started_.load();
  const int answered = connects_answered_.load();
  const auto start = std::chrono::steady_clock::now();
  testing::FailingLinks failing(*links_);
  failing.FailNextJoin(0, [&] {  // once the next stage's side has begun
    testing::WaitUntil([&] { return connects_started_.load() != started; }, kTimeout);
  });
  NcclOutputLinkOptions options = LinkOptions(capacity);
  options.links = &failing;
  NcclOutputLink failed(next_, "the next stage", options);
  EXPECT_LT(std::chrono::steady_clock::now() - start, kTimeout / 4) << "the stage waited out its call";
  EXPECT_NE(failed.status().message().find("injected: the join failed"), std::string::npos) << failed.status();
  testing::WaitUntil([&] { return connects_answered_.load() != answered; }, kTimeout);
  EXPECT_LT(std::chrono::steady_clock::now() - start, kTimeout / 4) << "the next stage waited out the link's timeout";
  // The next stage takes a link again (this replaces the fixture's), and steps go over it.
  ASSERT_TRUE(output_->Reconnect().ok());
  OpenOnBoth({1});
  auto [token, expected] = Both(StepOf(1, {5, 17, 200}));
  EXPECT_EQ(token, expected);
  EXPECT_EQ(output_->sent(), 1);
}

INSTANTIATE_TEST_SUITE_P(Links, NcclStagesTest, ::testing::Values("cpu", "cuda"),
                         [](const auto& param) { return param.param; });

}  // namespace
}  // namespace deltaserve::services
