// `deltaserve serve` as a real process on loopback, driven through the client library: tokens
// match `deltaserve generate`, sessions resume computing only new tokens, concurrent streams,
// cancellation, backpressure, bad requests, and a /metrics scrape promtool accepts.
#include <atomic>
#include <filesystem>
#include <thread>

#include "client/channel.h"
#include "client/inference_client.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/integration/integration_util.h"
#include "tests/testing/child_process.h"

namespace deltaserve::integration {
namespace {

using testing::ChildProcess;

class ServeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    store_dir_ = new std::string(NewTempDir("serve-store"));
    server_ = new ChildProcess(kBinary,
                               {"serve", "--model", FixtureDir(), "--listen", "127.0.0.1:0",
                                "--metrics-listen", "127.0.0.1:0", "--threads", "2", "--store-dir",
                                *store_dir_, "--max-prompt-tokens", "1000", "--drain-seconds", "0"},
                               LogPath("serve"));
    ASSERT_TRUE(server_->ok()) << server_->first_line() << " (see " << LogPath("serve") << ")";
  }
  static void TearDownTestSuite() {
    delete server_;
    std::filesystem::remove_all(*store_dir_);
    delete store_dir_;
  }

  client::InferenceClient Client(const std::string& tenant = "") {
    return client::InferenceClient(client::MakeChannel(server_->address()), {.tenant = tenant});
  }

  static ChildProcess* server_;
  static std::string* store_dir_;
};

ChildProcess* ServeTest::server_ = nullptr;
std::string* ServeTest::store_dir_ = nullptr;

TEST_F(ServeTest, GreedyTokensMatchTheGenerateCommand) {
  const std::vector<int32_t> prompt = {5, 6, 7, 8, 9, 10, 11};
  absl::StatusOr<client::GenerateResult> served = Client().Generate(Greedy(prompt, 12));
  ASSERT_TRUE(served.ok()) << served.status();
  EXPECT_EQ(served->token_ids, CliGreedy(FixtureDir(), prompt, 12));
  EXPECT_EQ(served->finish_reason, v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(served->usage.prompt_tokens(), 7);
  EXPECT_EQ(served->usage.completion_tokens(), 12);
}

TEST_F(ServeTest, ThreeTurnSessionEqualsTheWholeHistoryAndComputesOnlyNewTokens) {
  ExpectSessionMatchesWholeHistory(Client(), server_->metrics_port(), "serve-three-turns");
}

TEST_F(ServeTest, ConcurrentStreamsAllCompleteCorrectly) {
  ExpectConcurrentStreamsComplete(Client(), 32);
}

TEST_F(ServeTest, BadRequestsGetClearErrorsAndTheServerKeepsServing) {
  client::InferenceClient client = Client("tenant-a");
  auto code = [&](const v1::GenerateRequest& request, client::InferenceClient& c) {
    return c.Generate(request).status();
  };
  v1::GenerateRequest unknown = Greedy({1, 2}, 2);
  unknown.set_session_mode(v1::SESSION_MODE_CONTINUE);
  unknown.set_session_id("no-such-session");
  absl::Status status = code(unknown, client);
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << status;

  EXPECT_EQ(code(Greedy(std::vector<int32_t>(1001, 1), 2), client).code(),
            absl::StatusCode::kInvalidArgument);
  status = code(Greedy({1, 512}, 2), client);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("vocabulary"), std::string::npos) << status;
  v1::GenerateRequest bad_sampling = Greedy({1, 2}, 2);
  bad_sampling.mutable_sampling()->set_top_p(1.5f);
  status = code(bad_sampling, client);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("top_p"), std::string::npos) << status;

  // Another tenant's session.
  v1::GenerateRequest create = Greedy({1, 2, 3}, 2);
  create.set_session_mode(v1::SESSION_MODE_CREATE);
  create.set_session_id("tenant-a-private");
  ASSERT_TRUE(client.Generate(create).ok());
  client::InferenceClient other = Client("tenant-b");
  v1::GenerateRequest steal = Greedy({4}, 2);
  steal.set_session_mode(v1::SESSION_MODE_CONTINUE);
  steal.set_session_id("tenant-a-private");
  EXPECT_EQ(code(steal, other).code(), absl::StatusCode::kPermissionDenied);
  v1::DeleteSessionRequest remove;
  remove.set_session_id("tenant-a-private");
  EXPECT_EQ(other.DeleteSession(remove).code(), absl::StatusCode::kPermissionDenied);
  // The same id again for creation.
  EXPECT_EQ(code(create, client).code(), absl::StatusCode::kAlreadyExists);

  absl::StatusOr<client::GenerateResult> still = client.Generate(Greedy({1, 2, 3}, 3));
  ASSERT_TRUE(still.ok()) << still.status();
  EXPECT_EQ(still->token_ids.size(), 3u);
  EXPECT_TRUE(client.DeleteSession(remove).ok());
}

TEST_F(ServeTest, ASessionTakesOneRequestAtATime) {
  client::InferenceClient client = Client();
  v1::GenerateRequest create = Greedy({1, 2, 3}, 2);
  create.set_session_mode(v1::SESSION_MODE_CREATE);
  create.set_session_id("one-at-a-time");
  ASSERT_TRUE(client.Generate(create).ok());

  v1::GenerateRequest busy = Greedy({4}, 8000);
  busy.set_session_mode(v1::SESSION_MODE_CONTINUE);
  busy.set_session_id("one-at-a-time");
  client::CallHandle handle;
  std::atomic<bool> streaming = false;
  absl::Status busy_status;
  std::thread running([&] {
    busy_status =
        client.Generate(busy, [&](std::span<const int32_t>) { streaming = true; }, &handle).status();
  });
  ASSERT_TRUE(WaitFor([&] { return streaming.load(); }));
  EXPECT_EQ(client.Generate(busy).status().code(), absl::StatusCode::kAborted);
  v1::DeleteSessionRequest remove;
  remove.set_session_id("one-at-a-time");
  EXPECT_EQ(client.DeleteSession(remove).code(), absl::StatusCode::kAborted);
  v1::ForkSessionRequest fork;
  fork.set_session_id("one-at-a-time");
  EXPECT_EQ(client.ForkSession(fork).status().code(), absl::StatusCode::kAborted);
  handle.Cancel();
  running.join();
  EXPECT_EQ(busy_status.code(), absl::StatusCode::kCancelled);
  // Once the request has gone, the session is free again (and kept its first turn only).
  ASSERT_TRUE(WaitFor([&] { return client.ForkSession(fork).ok(); }));
  v1::GetSessionRequest get;
  get.set_session_id("one-at-a-time");
  EXPECT_EQ(client.GetSession(get)->num_tokens(), 5);
  EXPECT_TRUE(client.DeleteSession(remove).ok());
}

TEST_F(ServeTest, MetricsScrapePassesPromtool) {
  ASSERT_TRUE(Client().Generate(Greedy({1, 2, 3}, 2)).ok());
  ExpectPromtoolAccepts(server_->metrics_port());
}

// A server whose single slot makes backpressure and cancellation observable.
class OneSlotServeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = std::make_unique<ChildProcess>(
        kBinary,
        std::vector<std::string>{"serve", "--model", FixtureDir(), "--listen", "127.0.0.1:0",
                                 "--metrics-listen", "127.0.0.1:0", "--threads", "1",
                                 "--max-running", "1", "--max-waiting", "1",
                                 "--max-new-tokens-limit", "100000", "--drain-seconds", "0"},
        LogPath("serve-one-slot"));
    ASSERT_TRUE(server_->ok()) << server_->first_line();
  }
  std::unique_ptr<ChildProcess> server_;
};

TEST_F(OneSlotServeTest, CancellationFreesTheSlotAndAFullQueueRefusesAtOnce) {
  client::InferenceClient client(client::MakeChannel(server_->address()));
  // A long request takes the only slot; we cancel it once tokens flow.
  client::CallHandle long_call;
  std::atomic<bool> streaming = false;
  absl::Status long_status;
  std::thread long_thread([&] {
    long_status = client.Generate(Greedy({1, 2, 3}, 100000),
                                  [&](std::span<const int32_t>) { streaming = true; }, &long_call)
                      .status();
  });
  ASSERT_TRUE(WaitFor([&] { return streaming.load(); }));
  // One request may wait; the next one is refused at once.
  client::CallHandle waiting_call;
  absl::Status waiting_status;
  std::thread waiting_thread([&] {
    waiting_status = client.Generate(Greedy({4, 5}, 100000), nullptr, &waiting_call).status();
  });
  ASSERT_TRUE(WaitFor([&] { return MetricValue(server_->metrics_port(), "deltaserve_sequences{state=\"waiting\"}") == 1; }));
  const absl::Status refused = client.Generate(Greedy({6}, 2)).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;

  long_call.Cancel();
  long_thread.join();
  EXPECT_EQ(long_status.code(), absl::StatusCode::kCancelled);
  // The freed slot goes to the waiting request.
  ASSERT_TRUE(WaitFor([&] {
    return MetricValue(server_->metrics_port(), "deltaserve_sequences{state=\"waiting\"}") == 0 &&
           MetricValue(server_->metrics_port(), "deltaserve_requests_total{outcome=\"cancelled\"}") == 1;
  }));
  waiting_call.Cancel();
  waiting_thread.join();
  EXPECT_EQ(waiting_status.code(), absl::StatusCode::kCancelled);
  ASSERT_TRUE(WaitFor([&] {
    return MetricValue(server_->metrics_port(), "deltaserve_sequences{state=\"running\"}") == 0;
  }));
  absl::StatusOr<client::GenerateResult> after = client.Generate(Greedy({7, 8}, 3));
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->token_ids.size(), 3u);
}

TEST(DeadlineServeTest, ClientDeadlinesAndTheDefaultDeadlineEndLongCalls) {
  ChildProcess server(kBinary,
                      {"serve", "--model", FixtureDir(), "--listen", "127.0.0.1:0", "--threads", "1",
                       "--default-deadline-ms", "400", "--max-new-tokens-limit", "100000",
                       "--drain-seconds", "0"},
                      LogPath("serve-deadline"));
  ASSERT_TRUE(server.ok()) << server.first_line();
  // No deadline from the client: the server's default applies.
  client::InferenceClient no_deadline(client::MakeChannel(server.address()));
  absl::Status status = no_deadline.Generate(Greedy({1, 2}, 100000)).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
  // The client's own deadline.
  client::InferenceClient with_deadline(client::MakeChannel(server.address()), {.tenant = "", .timeout_ms = 200});
  status = with_deadline.Generate(Greedy({1, 2}, 100000)).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
  absl::StatusOr<client::GenerateResult> short_call = no_deadline.Generate(Greedy({3}, 4));
  ASSERT_TRUE(short_call.ok()) << short_call.status();
  EXPECT_EQ(short_call->token_ids.size(), 4u);
}

}  // namespace
}  // namespace deltaserve::integration
