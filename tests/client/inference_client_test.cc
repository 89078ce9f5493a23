// InferenceClient against the scripted fake server: streaming, final fields, error codes, tenant
// metadata, deadlines, cancellation from another thread, and the standard health check.
#include "client/inference_client.h"

#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "client/channel.h"
#include "gmock/gmock.h"
#include "grpcpp/health_check_service_interface.h"
#include "gtest/gtest.h"
#include "tests/client/fake_inference_server.h"

namespace deltaserve::client {
namespace {

using ::deltaserve::testing::FakeInferenceServer;
using ::deltaserve::testing::FakeInferenceService;
using ::testing::ElementsAre;

class InferenceClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = FakeInferenceServer::Start();
    ASSERT_NE(server_, nullptr);
  }

  InferenceClient MakeClient(ClientOptions options = {}) {
    return InferenceClient(MakeChannel(server_->address()), std::move(options));
  }

  static v1::GenerateRequest Prompt(std::vector<int32_t> ids) {
    v1::GenerateRequest request;
    request.mutable_token_ids()->Add(ids.begin(), ids.end());
    return request;
  }

  std::unique_ptr<FakeInferenceServer> server_;
};

TEST_F(InferenceClientTest, GenerateStreamsTokensThroughTheCallback) {
  InferenceClient client = MakeClient();
  v1::GenerateRequest request = Prompt({5, 6, 7});
  request.mutable_stopping()->set_max_new_tokens(4);
  std::vector<std::vector<int32_t>> messages;
  absl::StatusOr<GenerateResult> result = client.Generate(
      request,
      [&](std::span<const int32_t> ids) { messages.emplace_back(ids.begin(), ids.end()); });
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(result->token_ids, ElementsAre(100, 101, 102, 103));
  ASSERT_EQ(messages.size(), 4u);
  EXPECT_THAT(messages[0], ElementsAre(100));
  EXPECT_THAT(messages[3], ElementsAre(103));
  EXPECT_EQ(result->session_id, "");
  EXPECT_EQ(result->finish_reason, v1::FINISH_REASON_STOP);
  EXPECT_EQ(result->usage.prompt_tokens(), 3);
  EXPECT_EQ(result->usage.session_tokens(), 0);
  EXPECT_EQ(result->usage.recomputed_tokens(), 1);
  EXPECT_EQ(result->usage.completion_tokens(), 4);
  EXPECT_EQ(result->timings.queue_ns(), FakeInferenceService::kQueueNs);
  EXPECT_EQ(result->timings.first_token_ns(), FakeInferenceService::kFirstTokenNs);
  EXPECT_EQ(result->timings.total_ns(), FakeInferenceService::kTotalNs);
}

TEST_F(InferenceClientTest, GenerateWithoutCallbackStillCollectsTokens) {
  InferenceClient client = MakeClient();
  absl::StatusOr<GenerateResult> result = client.Generate(Prompt({1}));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(result->token_ids, ElementsAre(100, 101, 102));
}

TEST_F(InferenceClientTest, GenerateReportsTheSessionOfTheFirstMessage) {
  InferenceClient client = MakeClient();
  v1::GenerateRequest create = Prompt({1, 2});
  create.set_session_mode(v1::SESSION_MODE_CREATE);
  absl::StatusOr<GenerateResult> created = client.Generate(create);
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_EQ(created->session_id, FakeInferenceService::kCreatedSession);

  v1::GenerateRequest next = Prompt({3});
  next.set_session_mode(v1::SESSION_MODE_CONTINUE);
  next.set_session_id(FakeInferenceService::kKnownSession);
  absl::StatusOr<GenerateResult> continued = client.Generate(next);
  ASSERT_TRUE(continued.ok()) << continued.status();
  EXPECT_EQ(continued->session_id, FakeInferenceService::kKnownSession);
  EXPECT_EQ(continued->usage.session_tokens(), FakeInferenceService::kKnownSessionTokens);
}

TEST_F(InferenceClientTest, GenerateErrorsKeepTheirCodeAndMessage) {
  InferenceClient client = MakeClient();
  absl::StatusOr<GenerateResult> empty = client.Generate(v1::GenerateRequest());
  EXPECT_EQ(empty.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(empty.status().message(), "token_ids is empty");

  v1::GenerateRequest unknown = Prompt({1});
  unknown.set_session_mode(v1::SESSION_MODE_CONTINUE);
  unknown.set_session_id("nope");
  absl::StatusOr<GenerateResult> missing = client.Generate(unknown);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(missing.status().message(), "session 'nope' not found");

  InferenceClient intruder = MakeClient({.tenant = FakeInferenceService::kIntruderTenant});
  absl::StatusOr<GenerateResult> denied = intruder.Generate(Prompt({1}));
  EXPECT_EQ(denied.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(denied.status().message(), "tenant 'intruder' may not use this session");
}

TEST_F(InferenceClientTest, SendsTheTenantOnlyWhenSet) {
  ASSERT_TRUE(MakeClient({.tenant = "acme"}).Generate(Prompt({1})).ok());
  EXPECT_EQ(server_->service().last_tenant(), "acme");
  ASSERT_TRUE(MakeClient({.tenant = "acme"}).GetModelInfo().ok());
  EXPECT_EQ(server_->service().last_tenant(), "acme");
  ASSERT_TRUE(MakeClient().GetModelInfo().ok());
  EXPECT_EQ(server_->service().last_tenant(), "");
}

TEST_F(InferenceClientTest, SendsTheRequestUnchanged) {
  v1::GenerateRequest request = Prompt({4, 5});
  request.mutable_sampling()->set_seed(0);
  request.mutable_sampling()->set_temperature(0.5f);
  request.mutable_stopping()->add_stop_token_ids(9);
  request.set_priority(-2);
  ASSERT_TRUE(MakeClient().Generate(request).ok());
  const v1::GenerateRequest seen = server_->service().last_generate_request();
  EXPECT_EQ(seen.SerializeAsString(), request.SerializeAsString());
  EXPECT_TRUE(seen.sampling().has_seed());
}

TEST_F(InferenceClientTest, CancelFromAnotherThreadEndsTheCallWithCancelled) {
  InferenceClient client = MakeClient();
  CallHandle handle;
  absl::Notification first_token;
  std::vector<int32_t> received;
  absl::StatusOr<GenerateResult> result;
  std::thread caller([&] {
    result = client.Generate(
        Prompt({FakeInferenceService::kEndlessToken}),
        [&](std::span<const int32_t> ids) {
          received.insert(received.end(), ids.begin(), ids.end());
          if (!first_token.HasBeenNotified()) first_token.Notify();
        },
        &handle);
  });
  first_token.WaitForNotification();
  handle.Cancel();
  caller.join();
  EXPECT_TRUE(handle.cancelled());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kCancelled) << result.status();
  ASSERT_FALSE(received.empty());
  EXPECT_EQ(received[0], 100);
}

TEST_F(InferenceClientTest, CancelBeforeTheCallStartsCancelsIt) {
  CallHandle handle;
  handle.Cancel();
  absl::StatusOr<GenerateResult> result =
      MakeClient().Generate(Prompt({FakeInferenceService::kEndlessToken}), nullptr, &handle);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kCancelled) << result.status();
}

TEST_F(InferenceClientTest, TimeoutBecomesDeadlineExceeded) {
  absl::StatusOr<GenerateResult> result =
      MakeClient({.tenant = "", .timeout_ms = 50})
          .Generate(Prompt({FakeInferenceService::kEndlessToken}));
  EXPECT_EQ(result.status().code(), absl::StatusCode::kDeadlineExceeded) << result.status();
}

TEST_F(InferenceClientTest, SessionCalls) {
  InferenceClient client = MakeClient();
  v1::GetSessionRequest get;
  get.set_session_id(FakeInferenceService::kKnownSession);
  get.set_include_tokens(true);
  absl::StatusOr<v1::Session> session = client.GetSession(get);
  ASSERT_TRUE(session.ok()) << session.status();
  EXPECT_EQ(session->num_tokens(), FakeInferenceService::kKnownSessionTokens);
  EXPECT_EQ(session->token_ids_size(), FakeInferenceService::kKnownSessionTokens);

  get.set_session_id("gone");
  EXPECT_EQ(client.GetSession(get).status().code(), absl::StatusCode::kNotFound);

  absl::StatusOr<v1::ListSessionsResponse> list = client.ListSessions(v1::ListSessionsRequest());
  ASSERT_TRUE(list.ok()) << list.status();
  ASSERT_EQ(list->sessions_size(), 2);
  EXPECT_EQ(list->next_page_token(), "next");

  v1::ForkSessionRequest fork;
  fork.set_session_id(FakeInferenceService::kKnownSession);
  fork.set_new_session_id("copy");
  absl::StatusOr<v1::Session> forked = client.ForkSession(fork);
  ASSERT_TRUE(forked.ok()) << forked.status();
  EXPECT_EQ(forked->session_id(), "copy");

  v1::DeleteSessionRequest del;
  del.set_session_id(FakeInferenceService::kKnownSession);
  EXPECT_TRUE(client.DeleteSession(del).ok());
  del.set_session_id("gone");
  const absl::Status missing = client.DeleteSession(del);
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(missing.message(), "session 'gone' not found");

  EXPECT_EQ(MakeClient({.tenant = FakeInferenceService::kIntruderTenant})
                .ListSessions(v1::ListSessionsRequest())
                .status()
                .code(),
            absl::StatusCode::kPermissionDenied);
}

TEST_F(InferenceClientTest, GetModelInfo) {
  absl::StatusOr<v1::ModelInfo> info = MakeClient().GetModelInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->model_type(), "kimi_linear");
  EXPECT_EQ(info->vocab_size(), 512);
}

TEST_F(InferenceClientTest, HealthReportsServingAndNotServing) {
  InferenceClient client = MakeClient();
  absl::StatusOr<ServingStatus> overall = client.Health();
  ASSERT_TRUE(overall.ok()) << overall.status();
  EXPECT_EQ(*overall, ServingStatus::kServing);

  grpc::HealthCheckServiceInterface* health = server_->server().GetHealthCheckService();
  ASSERT_NE(health, nullptr);
  health->SetServingStatus("deltaserve.v1.Inference", false);
  absl::StatusOr<ServingStatus> inference = client.Health("deltaserve.v1.Inference");
  ASSERT_TRUE(inference.ok()) << inference.status();
  EXPECT_EQ(*inference, ServingStatus::kNotServing);
  health->SetServingStatus("deltaserve.v1.Inference", true);
  EXPECT_EQ(*client.Health("deltaserve.v1.Inference"), ServingStatus::kServing);

  EXPECT_EQ(client.Health("no.such.Service").status().code(), absl::StatusCode::kNotFound);
}

TEST(InferenceClientNoServerTest, UnreachableServerIsUnavailable) {
  // A socket path nobody listens on: the connect fails at once, with no port to collide on.
  InferenceClient client(MakeChannel("unix:" + ::testing::TempDir() + "deltaserve-no-such-socket"),
                         {.tenant = "", .timeout_ms = 5000});
  EXPECT_EQ(client.Health().status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(client.GetModelInfo().status().code(), absl::StatusCode::kUnavailable);
}

TEST(ServingStatusTest, Names) {
  EXPECT_STREQ(ServingStatusName(ServingStatus::kServing), "SERVING");
  EXPECT_STREQ(ServingStatusName(ServingStatus::kNotServing), "NOT_SERVING");
  EXPECT_STREQ(ServingStatusName(ServingStatus::kServiceUnknown), "SERVICE_UNKNOWN");
  EXPECT_STREQ(ServingStatusName(ServingStatus::kUnknown), "UNKNOWN");
}

}  // namespace
}  // namespace deltaserve::client
