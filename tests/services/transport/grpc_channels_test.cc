// A ConnectNccl call through the gRPC channels ends when its ConnectCancel says so, before the
// call starts or while the worker is joining, and the worker's give-up sees it go. A stage's
// description reaches its caller whole.
#include "services/transport/grpc_channels.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <thread>

#include "gtest/gtest.h"
#include "services/common/server_runner.h"
#include "tests/testing/loopback_server.h"
#include "tests/testing/wait_until.h"

namespace deltaserve::services {
namespace {

constexpr std::chrono::seconds kJoinWait{20};  // how long the worker would wait for a join

// The stage side of the calls, which these cases never make.
class NoStage final : public StageChannel {
 public:
  absl::Status Open(const internal::v1::OpenRequest&, internal::v1::OpenResponse*) override {
    return absl::UnimplementedError("no stage");
  }
  absl::Status Step(const internal::v1::StepRequest&, internal::v1::StepResponse*) override {
    return absl::UnimplementedError("no stage");
  }
  absl::Status Close(const internal::v1::CloseRequest&, internal::v1::CloseResponse*) override {
    return absl::UnimplementedError("no stage");
  }
};

// A stage's description reaches its caller whole, including whether it takes page reservations
// (a first stage asks for them only where its next stage says so).
TEST(StageDescribeTest, TheDescriptionSaysWhetherTheStageTakesPageReservations) {
  NoStage stage;
  for (const bool takes : {false, true}) {
    WorkerDescription description;
    description.model_fingerprint = "00ab";
    description.layer_begin = 2;
    description.layer_end = 4;
    description.takes_page_reservations = takes;
    StageWorkerService service(stage, description);
    absl::StatusOr<std::unique_ptr<GrpcServer>> server = testing::StartLoopbackServer(&service);
    ASSERT_TRUE(server.ok()) << server.status();
    GrpcStageChannel channel(grpc::CreateChannel((*server)->address(), grpc::InsecureChannelCredentials()),
                             std::chrono::seconds(5));
    absl::StatusOr<WorkerDescription> described = channel.Describe();
    ASSERT_TRUE(described.ok()) << described.status();
    EXPECT_EQ(described->model_fingerprint, "00ab");
    EXPECT_EQ(described->layer_begin, 2);
    EXPECT_EQ(described->layer_end, 4);
    EXPECT_EQ(described->takes_page_reservations, takes);
  }
}

// A stage worker whose ConnectNccl waits, as a join for a peer that never comes would, until its
// caller gives up.
class ConnectCancelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    service_ = std::make_unique<StageWorkerService>(
        stage_, WorkerDescription{},
        [this](const internal::v1::ConnectNcclRequest&, const std::function<bool()>& give_up) {
          ++started_;
          if (testing::WaitUntil(give_up, kJoinWait)) ++gave_up_;
          ++answered_;
          return absl::DeadlineExceededError("no peer joined");
        });
    absl::StatusOr<std::unique_ptr<GrpcServer>> server = testing::StartLoopbackServer(service_.get());
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    channel_ = std::make_unique<GrpcStageChannel>(
        grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials()), std::chrono::seconds(5));
    ASSERT_TRUE(channel_->Answer().ok());
  }

  void WaitFor(const std::atomic<int>& count, int value) {
    testing::WaitUntil([&] { return count.load() >= value; }, kJoinWait);
  }

  NoStage stage_;
  std::atomic<int> started_{0}, gave_up_{0}, answered_{0};
  std::unique_ptr<StageWorkerService> service_;
  std::unique_ptr<GrpcServer> server_;
  std::unique_ptr<GrpcStageChannel> channel_;
};

TEST_F(ConnectCancelTest, ACancelBeforeTheCallEndsItAsItStarts) {
  ConnectCancel cancel;
  cancel.Cancel();
  const auto start = std::chrono::steady_clock::now();
  const absl::Status status = channel_->ConnectNccl(internal::v1::ConnectNcclRequest(), kJoinWait * 2, &cancel);
  EXPECT_EQ(status.code(), absl::StatusCode::kCancelled) << status;
  EXPECT_LT(std::chrono::steady_clock::now() - start, kJoinWait / 4);
  // Whether or not the worker saw the call, it is not left waiting.
  WaitFor(answered_, started_.load());
  EXPECT_EQ(answered_.load(), started_.load());
  EXPECT_EQ(gave_up_.load(), started_.load());
}

TEST_F(ConnectCancelTest, ACancelDuringTheCallEndsItAndTheWorkersWait) {
  ConnectCancel cancel;
  absl::Status status;
  const auto start = std::chrono::steady_clock::now();
  std::thread call([&] { status = channel_->ConnectNccl(internal::v1::ConnectNcclRequest(), kJoinWait * 2, &cancel); });
  WaitFor(started_, 1);
  ASSERT_EQ(started_.load(), 1);
  cancel.Cancel();
  call.join();
  EXPECT_EQ(status.code(), absl::StatusCode::kCancelled) << status;
  WaitFor(answered_, 1);
  EXPECT_LT(std::chrono::steady_clock::now() - start, kJoinWait / 4) << "the worker waited out its join";
  EXPECT_EQ(gave_up_.load(), 1);
  // A cancel after the call is over changes nothing, and a call without one is answered.
  cancel.Cancel();
  EXPECT_EQ(channel_->ConnectNccl(internal::v1::ConnectNcclRequest(), std::chrono::milliseconds(200), nullptr).code(),
            absl::StatusCode::kDeadlineExceeded);
}

}  // namespace
}  // namespace deltaserve::services
