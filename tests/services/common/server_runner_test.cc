// Tests for services/common/server_runner.h against a real server on 127.0.0.1:0: health,
// reflection, message and metadata limits, tenancy over the wire, deadlines, bind failures.
#include "services/common/server_runner.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <vector>

#include "deltaserve/internal/v1/worker.grpc.pb.h"
#include "services/common/server_config.h"
#include "services/common/tenancy.h"
#include "tests/services/common/test_rpc.h"

namespace deltaserve::services {
namespace {

using common_testing::EchoStageWorker;
using common_testing::HealthCheck;
using common_testing::InsecureChannel;
using common_testing::ListServicesByReflection;
using deltaserve::internal::v1::DescribeRequest;
using deltaserve::internal::v1::DescribeResponse;
using deltaserve::internal::v1::StageWorker;
using deltaserve::internal::v1::StepRequest;
using deltaserve::internal::v1::StepResponse;
using std::chrono::system_clock;

constexpr int kServing = 1;
constexpr int kNotServing = 2;
constexpr char kStageWorkerService[] = "deltaserve.internal.v1.StageWorker";

GrpcServerConfig TestConfig() {
  GrpcServerConfig config;
  config.listen_address = "127.0.0.1:0";
  config.max_receive_message_bytes = 64 << 10;
  config.max_metadata_bytes = 4 << 10;
  config.default_deadline_ms = 1'234'000;
  return config;
}

class GrpcServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<GrpcServer>> server = GrpcServer::Start(config_, services_);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    channel_ = InsecureChannel(server_->address());
    stub_ = StageWorker::NewStub(channel_);
  }

  grpc::Status Describe(DescribeResponse* response, const std::string& tenant = "") {
    grpc::ClientContext context;
    context.set_deadline(system_clock::now() + std::chrono::seconds(30));
    if (!tenant.empty()) context.AddMetadata(kTenantMetadataKey, tenant);
    return stub_->Describe(&context, DescribeRequest(), response);
  }

  const GrpcServerConfig config_ = TestConfig();
  EchoStageWorker service_{config_};
  grpc::Service* const services_[1] = {&service_};
  std::unique_ptr<GrpcServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<StageWorker::Stub> stub_;
};

TEST_F(GrpcServerTest, ReportsTheBoundPort) {
  EXPECT_GT(server_->port(), 0);
  EXPECT_EQ(server_->address(), "127.0.0.1:" + std::to_string(server_->port()));
  DescribeResponse response;
  const grpc::Status status = Describe(&response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.model_fingerprint(), "default");
}

TEST_F(GrpcServerTest, HealthServiceReportsServing) {
  absl::StatusOr<int> overall = HealthCheck(channel_, "");
  ASSERT_TRUE(overall.ok()) << overall.status();
  EXPECT_EQ(*overall, kServing);

  // A named service is unknown until the process says how it is.
  EXPECT_EQ(HealthCheck(channel_, kStageWorkerService).status().code(),
            absl::StatusCode::kNotFound);
  server_->SetServingStatus(kStageWorkerService, true);
  absl::StatusOr<int> named = HealthCheck(channel_, kStageWorkerService);
  ASSERT_TRUE(named.ok()) << named.status();
  EXPECT_EQ(*named, kServing);

  server_->SetServingStatus(kStageWorkerService, false);
  named = HealthCheck(channel_, kStageWorkerService);
  ASSERT_TRUE(named.ok()) << named.status();
  EXPECT_EQ(*named, kNotServing);

  server_->SetServingStatus(false);
  overall = HealthCheck(channel_, "");
  ASSERT_TRUE(overall.ok()) << overall.status();
  EXPECT_EQ(*overall, kNotServing);
}

TEST_F(GrpcServerTest, ReflectionListsServices) {
  const absl::StatusOr<std::vector<std::string>> names = ListServicesByReflection(channel_);
  ASSERT_TRUE(names.ok()) << names.status();
  auto has = [&](const std::string& name) {
    return std::find(names->begin(), names->end(), name) != names->end();
  };
  EXPECT_TRUE(has(kStageWorkerService));
  EXPECT_TRUE(has("grpc.health.v1.Health"));
  EXPECT_TRUE(has("grpc.reflection.v1alpha.ServerReflection"));
}

TEST_F(GrpcServerTest, OversizedMessageIsRejectedAndServerKeepsServing) {
  StepRequest request;
  request.set_hidden(std::string(config_.max_receive_message_bytes + 1, 'x'));
  StepResponse response;
  grpc::ClientContext context;
  context.set_deadline(system_clock::now() + std::chrono::seconds(30));
  const grpc::Status status = stub_->Step(&context, request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();

  // Just under the limit passes, on the same channel.
  request.set_hidden(std::string(config_.max_receive_message_bytes - 64, 'x'));
  grpc::ClientContext small_context;
  small_context.set_deadline(system_clock::now() + std::chrono::seconds(30));
  const grpc::Status small = stub_->Step(&small_context, request, &response);
  EXPECT_TRUE(small.ok()) << small.error_message();

  DescribeResponse describe;
  const grpc::Status after = Describe(&describe);
  EXPECT_TRUE(after.ok()) << after.error_message();
}

TEST_F(GrpcServerTest, OversizedMetadataIsRejectedAndServerKeepsServing) {
  grpc::ClientContext context;
  context.set_deadline(system_clock::now() + std::chrono::seconds(30));
  context.AddMetadata("x-padding", std::string(2 * config_.max_metadata_bytes, 'p'));
  DescribeResponse response;
  const grpc::Status status = stub_->Describe(&context, DescribeRequest(), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();

  // gRPC 1.51 sometimes also closes that connection (its HPACK state), so a call racing the
  // close may fail with UNAVAILABLE; the channel then reconnects. The server itself serves on.
  // A channel of its own (not sharing the global subchannel pool): a new connection.
  grpc::ChannelArguments own_connection;
  own_connection.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  auto fresh = StageWorker::NewStub(grpc::CreateCustomChannel(
      server_->address(), grpc::InsecureChannelCredentials(), own_connection));
  grpc::ClientContext fresh_context;
  fresh_context.set_deadline(system_clock::now() + std::chrono::seconds(30));
  const grpc::Status on_fresh = fresh->Describe(&fresh_context, DescribeRequest(), &response);
  EXPECT_TRUE(on_fresh.ok()) << on_fresh.error_message();

  grpc::Status on_same;
  for (int attempt = 0; attempt < 3; ++attempt) {
    grpc::ClientContext retry_context;
    retry_context.set_deadline(system_clock::now() + std::chrono::seconds(30));
    retry_context.set_wait_for_ready(true);
    on_same = stub_->Describe(&retry_context, DescribeRequest(), &response);
    if (on_same.error_code() != grpc::StatusCode::UNAVAILABLE) break;
  }
  EXPECT_TRUE(on_same.ok()) << on_same.error_message();
}

TEST_F(GrpcServerTest, TenantTravelsInMetadata) {
  DescribeResponse response;
  grpc::Status status = Describe(&response, "acme");
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.model_fingerprint(), "acme");

  status = Describe(&response, "no/slashes");
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find(kTenantMetadataKey), std::string::npos)
      << status.error_message();
}

TEST_F(GrpcServerTest, DefaultDeadlineAppliesWhenClientSendsNone) {
  DescribeResponse response;
  const system_clock::time_point before = system_clock::now();
  {
    grpc::ClientContext context;  // no deadline
    const grpc::Status status = stub_->Describe(&context, DescribeRequest(), &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
  }
  const system_clock::time_point after = system_clock::now();
  const std::chrono::milliseconds default_deadline(config_.default_deadline_ms);
  EXPECT_GE(service_.last_deadline(), before + default_deadline);
  EXPECT_LE(service_.last_deadline(), after + default_deadline);

  // A client deadline wins (the wire carries a relative timeout, so allow for transit).
  const system_clock::time_point client_deadline = system_clock::now() + std::chrono::seconds(30);
  {
    grpc::ClientContext context;
    context.set_deadline(client_deadline);
    const grpc::Status status = stub_->Describe(&context, DescribeRequest(), &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
  }
  EXPECT_LE(service_.last_deadline(), client_deadline + std::chrono::seconds(1));
  EXPECT_GE(service_.last_deadline(), client_deadline - std::chrono::seconds(10));
}

TEST_F(GrpcServerTest, PortInUseIsAnError) {
  GrpcServerConfig config = config_;
  config.listen_address = server_->address();
  EchoStageWorker other(config);
  grpc::Service* const services[] = {&other};
  const absl::StatusOr<std::unique_ptr<GrpcServer>> second = GrpcServer::Start(config, services);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable) << second.status();
  EXPECT_NE(std::string(second.status().message()).find(server_->address()), std::string::npos);
}

TEST_F(GrpcServerTest, ShutdownIsIdempotent) {
  server_->Shutdown(system_clock::now() + std::chrono::seconds(5));
  server_->Shutdown(system_clock::now());
  server_->Wait();
  DescribeResponse response;
  EXPECT_FALSE(Describe(&response).ok());
}

TEST(GrpcServerStartTest, RejectsBadConfigAndNoServices) {
  GrpcServerConfig config = TestConfig();
  EchoStageWorker service(config);
  grpc::Service* const services[] = {&service};

  config.max_concurrent_streams = 0;
  absl::StatusOr<std::unique_ptr<GrpcServer>> server = GrpcServer::Start(config, services);
  EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(server.status().message()).find("max_concurrent_streams"),
            std::string::npos);

  config = TestConfig();
  server = GrpcServer::Start(config, {});
  EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument);

  grpc::Service* const null_services[] = {nullptr};
  server = GrpcServer::Start(config, null_services);
  EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(GrpcServerStartTest, ServesOnAUnixSocket) {
  GrpcServerConfig config = TestConfig();
  config.listen_address =
      "unix:" + ::testing::TempDir() + "/grpc_server_test_" + std::to_string(::getpid()) + ".sock";
  EchoStageWorker service(config);
  grpc::Service* const services[] = {&service};
  absl::StatusOr<std::unique_ptr<GrpcServer>> server = GrpcServer::Start(config, services);
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ((*server)->port(), 0);
  EXPECT_EQ((*server)->address(), config.listen_address);
  auto stub = StageWorker::NewStub(InsecureChannel((*server)->address()));
  grpc::ClientContext context;
  context.set_deadline(system_clock::now() + std::chrono::seconds(30));
  DescribeResponse response;
  const grpc::Status status = stub->Describe(&context, DescribeRequest(), &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
}

TEST(GrpcServerStartTest, UnbindableAddressIsAnError) {
  GrpcServerConfig config = TestConfig();
  config.listen_address = "192.0.2.1:0";  // TEST-NET-1: never a local address
  EchoStageWorker service(config);
  grpc::Service* const services[] = {&service};
  const absl::StatusOr<std::unique_ptr<GrpcServer>> server = GrpcServer::Start(config, services);
  EXPECT_EQ(server.status().code(), absl::StatusCode::kUnavailable) << server.status();
}

}  // namespace
}  // namespace deltaserve::services
