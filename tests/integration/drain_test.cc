// `deltaserve client drain` against a real `serve` process: the drain stops admitting, cuts a
// running session turn short after saving it, and a new process over the same store continues
// the session exactly where the streamed tokens left off. The SIGTERM path drains the same way.
#include <atomic>
#include <filesystem>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "client/admin_client.h"
#include "client/channel.h"
#include "client/inference_client.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/integration/integration_util.h"
#include "tests/testing/child_process.h"

namespace deltaserve::integration {
namespace {

using testing::ChildProcess;

std::unique_ptr<ChildProcess> StartServe(const std::string& store_dir, const std::string& log) {
  return std::make_unique<ChildProcess>(
      kBinary,
      std::vector<std::string>{"serve", "--model", FixtureDir(), "--listen", "127.0.0.1:0",
                               "--threads", "1", "--store-dir", store_dir,
                               "--metrics-listen", "127.0.0.1:0",
                               "--max-new-tokens-limit", "100000", "--drain-seconds", "30"},
      LogPath(log));
}

TEST(DrainTest, CutsARunningTurnShortAfterSavingItsSessionAndANewProcessContinuesIt) {
  const std::string store_dir = NewTempDir("drain-store");
  std::unique_ptr<ChildProcess> server = StartServe(store_dir, "serve-drain");
  ASSERT_TRUE(server->ok()) << server->first_line();
  client::InferenceClient client(client::MakeChannel(server->address()));
  const std::vector<int32_t> prompt = {1, 2, 3};
  LongTurn turn(client, "drained", prompt, 100000);
  ASSERT_TRUE(WaitFor([&] { return turn.count() >= 5; }));

  const testing::CommandResult drained = testing::RunCommand(
      kBinary + " client drain --server " + server->address() + " --drain-ms 200");
  turn.thread.join();
  ASSERT_EQ(drained.exit_code, 0) << drained.out;
  const nlohmann::json result = nlohmann::json::parse(drained.out);
  EXPECT_EQ(result["in_flight"], 1);
  EXPECT_EQ(result["cut_short"], 1);
  EXPECT_EQ(turn.status.code(), absl::StatusCode::kUnavailable) << turn.status;

  // Draining: NOT_SERVING, new turns refused, session reads still answered.
  absl::StatusOr<client::ServingStatus> health = client.Health();
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(*health, client::ServingStatus::kNotServing);
  EXPECT_EQ(client.Generate(Greedy({7}, 2)).status().code(), absl::StatusCode::kUnavailable);
  // The cut turn and the refusal count as "draining", not as errors.
  EXPECT_EQ(MetricValue(server->metrics_port(), "deltaserve_requests_total{outcome=\"draining\"}"), 2);
  EXPECT_EQ(MetricValue(server->metrics_port(), "deltaserve_requests_total{outcome=\"error\"}"), -1);
  v1::GetSessionRequest get;
  get.set_session_id("drained");
  get.set_include_tokens(true);
  absl::StatusOr<v1::Session> saved = client.GetSession(get);
  ASSERT_TRUE(saved.ok()) << saved.status();
  std::vector<int32_t> history = prompt;
  history.insert(history.end(), turn.streamed.begin(), turn.streamed.end());
  EXPECT_EQ(std::vector<int32_t>(saved->token_ids().begin(), saved->token_ids().end()), history);
  EXPECT_EQ(server->Stop(), 0);

  // A new process over the same store continues the session as if nothing had happened.
  server = StartServe(store_dir, "serve-after-drain");
  ASSERT_TRUE(server->ok()) << server->first_line();
  client::InferenceClient next(client::MakeChannel(server->address()));
  v1::GenerateRequest more = Greedy({4, 5}, 4);
  more.set_session_mode(v1::SESSION_MODE_CONTINUE);
  more.set_session_id("drained");
  absl::StatusOr<client::GenerateResult> continued = next.Generate(more);
  ASSERT_TRUE(continued.ok()) << continued.status();
  EXPECT_EQ(continued->usage.session_tokens(), static_cast<int64_t>(history.size()));
  history.insert(history.end(), {4, 5});
  absl::StatusOr<client::GenerateResult> whole = next.Generate(Greedy(history, 4));
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_EQ(continued->token_ids, whole->token_ids);
  server.reset();
  std::filesystem::remove_all(store_dir);
}

TEST(DrainTest, AdmittingGoesOnDuringTheGraceWhileHealthSaysNotServing) {
  const std::string store_dir = NewTempDir("drain-grace-store");
  std::unique_ptr<ChildProcess> server = StartServe(store_dir, "serve-drain-grace");
  ASSERT_TRUE(server->ok()) << server->first_line();
  client::InferenceClient client(client::MakeChannel(server->address()));
  absl::StatusOr<client::DrainResult> drained;
  std::thread drain([&] {
    drained = client::Drain(client::MakeChannel(server->address()), /*timeout_ms=*/5000,
                            /*admit_grace_ms=*/2000);
  });
  ASSERT_TRUE(WaitFor([&] {
    absl::StatusOr<client::ServingStatus> health = client.Health();
    return health.ok() && *health == client::ServingStatus::kNotServing;
  }));
  // Within the grace: still admitted (a load balancer may not have noticed yet).
  absl::StatusOr<client::GenerateResult> during = client.Generate(Greedy({5, 6}, 3));
  ASSERT_TRUE(during.ok()) << during.status();
  drain.join();
  ASSERT_TRUE(drained.ok()) << drained.status();
  EXPECT_GE(drained->elapsed_ms, 2000);
  EXPECT_EQ(drained->cut_short, 0);
  EXPECT_EQ(client.Generate(Greedy({5, 6}, 3)).status().code(), absl::StatusCode::kUnavailable);
  server.reset();
  std::filesystem::remove_all(store_dir);
}

TEST(DrainTest, SigtermLetsARunningTurnFinishWithinTheDrainTime) {
  const std::string store_dir = NewTempDir("drain-sigterm-store");
  std::unique_ptr<ChildProcess> server = StartServe(store_dir, "serve-drain-sigterm");
  ASSERT_TRUE(server->ok()) << server->first_line();
  client::InferenceClient client(client::MakeChannel(server->address()));
  // A short turn still running when SIGTERM arrives completes normally.
  v1::GenerateRequest request = Greedy({1, 2, 3}, 40);
  std::atomic<bool> streaming = false;
  absl::StatusOr<client::GenerateResult> result;
  std::thread call([&] {
    result = client.Generate(request, [&](std::span<const int32_t>) { streaming = true; });
  });
  ASSERT_TRUE(WaitFor([&] { return streaming.load(); }));
  EXPECT_EQ(server->Stop(), 0);
  call.join();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->token_ids.size(), 40u);
  std::filesystem::remove_all(store_dir);
}

TEST(DrainTest, ABadTimeoutIsRejectedAndTheServerKeepsServing) {
  const std::string store_dir = NewTempDir("drain-bad-store");
  std::unique_ptr<ChildProcess> server = StartServe(store_dir, "serve-drain-bad");
  ASSERT_TRUE(server->ok()) << server->first_line();
  const absl::StatusOr<client::DrainResult> bad = client::Drain(client::MakeChannel(server->address()), -5);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << bad.status();
  const testing::CommandResult cli = testing::RunCommand(
      kBinary + " client drain --server " + server->address() + " --drain-ms -5 2>&1");
  EXPECT_NE(cli.exit_code, 0) << cli.out;
  client::InferenceClient client(client::MakeChannel(server->address()));
  absl::StatusOr<client::ServingStatus> health = client.Health();
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(*health, client::ServingStatus::kServing);
  server.reset();
  std::filesystem::remove_all(store_dir);
}

}  // namespace
}  // namespace deltaserve::integration
