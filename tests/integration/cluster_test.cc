// The split cluster as real processes on loopback: a session store, two expert workers (experts
// 0-3 and 4-7), two pipeline stages (layers 0-1 and 2-3) and a router. It must produce exactly
// the tokens of `deltaserve generate`, resume sessions from the store (also after the store
// restarts), recompute a session whose snapshot was damaged, and export valid metrics; with two
// steps in flight (--pipeline-steps 2) too.
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "client/admin_client.h"
#include "client/channel.h"
#include "client/inference_client.h"
#include "gtest/gtest.h"
#include "tests/integration/integration_util.h"
#include "tests/testing/child_process.h"

namespace deltaserve::integration {
namespace {

using testing::ChildProcess;

class ClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    store_dir_ = NewTempDir("cluster-store");
    StartStore("127.0.0.1:0");
    ASSERT_TRUE(store_->ok()) << store_->first_line();
    for (const char* range : {"0-3", "4-7"}) {
      experts_.push_back(std::make_unique<ChildProcess>(
          kBinary,
          std::vector<std::string>{"worker", "--role", "experts", "--experts", range, "--model",
                                   FixtureDir(), "--listen", "127.0.0.1:0", "--threads", "1",
                                   "--drain-seconds", "0"},
          LogPath(std::string("experts-") + range)));
      ASSERT_TRUE(experts_.back()->ok()) << experts_.back()->first_line();
    }
    const std::string expert_workers = experts_[0]->address() + "," + experts_[1]->address();
    // The last stage first: each stage checks its next one at start.
    last_stage_ = std::make_unique<ChildProcess>(
        kBinary,
        std::vector<std::string>{"worker", "--role", "stage", "--layers", "2-3", "--model", FixtureDir(),
                                 "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                                 "--expert-workers", expert_workers, "--session-store", store_->address(),
                                 "--threads", "1", "--drain-seconds", "0"},
        LogPath("stage-1"));
    ASSERT_TRUE(last_stage_->ok()) << last_stage_->first_line();
    first_stage_ = std::make_unique<ChildProcess>(
        kBinary,
        std::vector<std::string>{"worker", "--role", "stage", "--layers", "0-1", "--model", FixtureDir(),
                                 "--listen", "127.0.0.1:0", "--next", last_stage_->address(),
                                 "--expert-workers", expert_workers, "--session-store", store_->address(),
                                 "--threads", "1", "--drain-seconds", "0"},
        LogPath("stage-0"));
    ASSERT_TRUE(first_stage_->ok()) << first_stage_->first_line();
    router_ = std::make_unique<ChildProcess>(
        kBinary,
        std::vector<std::string>{"router", "--model", FixtureDir(), "--first-stage",
                                 first_stage_->address(), "--session-store", store_->address(),
                                 "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                                 "--pipeline-steps", std::to_string(pipeline_steps_), "--drain-seconds", "0"},
        LogPath("router"));
    ASSERT_TRUE(router_->ok()) << router_->first_line();
  }

  void TearDown() override {
    router_.reset();
    first_stage_.reset();
    last_stage_.reset();
    experts_.clear();
    store_.reset();
    std::filesystem::remove_all(store_dir_);
  }

  void StartStore(const std::string& listen) {
    store_ = std::make_unique<ChildProcess>(
        kBinary,
        std::vector<std::string>{"session-store", "--data-dir", store_dir_, "--listen", listen,
                                 "--metrics-listen", "127.0.0.1:0", "--drain-seconds", "0"},
        LogPath("store"));
  }

  client::InferenceClient Client() {
    return client::InferenceClient(client::MakeChannel(router_->address()));
  }

  int pipeline_steps_ = 1;  // the router's --pipeline-steps
  std::string store_dir_;
  std::unique_ptr<ChildProcess> store_;
  std::vector<std::unique_ptr<ChildProcess>> experts_;
  std::unique_ptr<ChildProcess> last_stage_;
  std::unique_ptr<ChildProcess> first_stage_;
  std::unique_ptr<ChildProcess> router_;
};

TEST_F(ClusterTest, GreedyTokensMatchTheGenerateCommand) {
  for (const std::vector<int32_t>& prompt :
       {std::vector<int32_t>{5, 6, 7}, std::vector<int32_t>(100, 9), std::vector<int32_t>{400}}) {
    absl::StatusOr<client::GenerateResult> served = Client().Generate(Greedy(prompt, 10));
    ASSERT_TRUE(served.ok()) << served.status();
    EXPECT_EQ(served->token_ids, CliGreedy(FixtureDir(), prompt, 10));
  }
}

TEST_F(ClusterTest, ConcurrentStreamsAllCompleteCorrectly) {
  ExpectConcurrentStreamsComplete(Client(), 32);
}

// The router with two steps in flight at most, each on its step threads: one request (whose steps
// run one at a time) gets the generate command's tokens and resumes its session; 32 concurrent
// streams (two steps of 16 in flight at once) get what each gets alone.
class PipelinedClusterTest : public ClusterTest {
 protected:
  void SetUp() override {
    pipeline_steps_ = 2;
    ClusterTest::SetUp();
  }
};

TEST_F(PipelinedClusterTest, GreedyTokensMatchTheGenerateCommand) {
  const std::vector<int32_t> prompt(100, 9);
  absl::StatusOr<client::GenerateResult> served = Client().Generate(Greedy(prompt, 10));
  ASSERT_TRUE(served.ok()) << served.status();
  EXPECT_EQ(served->token_ids, CliGreedy(FixtureDir(), prompt, 10));
}

TEST_F(PipelinedClusterTest, ConcurrentStreamsAllCompleteCorrectly) {
  ExpectConcurrentStreamsComplete(Client(), 32);
}

TEST_F(PipelinedClusterTest, SessionsResumeComputingOnlyNewTokens) {
  ExpectSessionMatchesWholeHistory(Client(), router_->metrics_port(), "pipelined-three-turns");
}

TEST_F(ClusterTest, SessionsResumeComputingOnlyNewTokens) {
  ExpectSessionMatchesWholeHistory(Client(), router_->metrics_port(), "cluster-three-turns");
}

TEST_F(ClusterTest, FinishedSessionsSurviveAStoreRestart) {
  client::InferenceClient client = Client();
  v1::GenerateRequest first = Greedy({3, 1, 4, 1, 5}, 4);
  first.set_session_mode(v1::SESSION_MODE_CREATE);
  first.set_session_id("durable");
  absl::StatusOr<client::GenerateResult> one = client.Generate(first);
  ASSERT_TRUE(one.ok()) << one.status();

  const std::string address = store_->address();
  EXPECT_EQ(store_->Stop(), 0);
  StartStore(address);  // same address: the stages and the router reconnect
  ASSERT_TRUE(store_->ok()) << store_->first_line();

  v1::GenerateRequest second = Greedy({9, 2}, 4);
  second.set_session_mode(v1::SESSION_MODE_CONTINUE);
  second.set_session_id("durable");
  absl::StatusOr<client::GenerateResult> two = client.Generate(second);
  ASSERT_TRUE(two.ok()) << two.status();
  EXPECT_EQ(two->usage.session_tokens(), 9);
  EXPECT_EQ(two->usage.recomputed_tokens(), 0);
  std::vector<int32_t> history = {3, 1, 4, 1, 5};
  history.insert(history.end(), one->token_ids.begin(), one->token_ids.end());
  history.insert(history.end(), {9, 2});
  EXPECT_EQ(two->token_ids, CliGreedy(FixtureDir(), history, 4));
}

TEST_F(ClusterTest, ADamagedSnapshotIsRecomputedFromTheHistory) {
  client::InferenceClient client = Client();
  v1::GenerateRequest first = Greedy({2, 7, 1, 8}, 5);
  first.set_session_mode(v1::SESSION_MODE_CREATE);
  first.set_session_id("damaged");
  absl::StatusOr<client::GenerateResult> one = client.Generate(first);
  ASSERT_TRUE(one.ok()) << one.status();

  // Flip a byte in the first stage's snapshot on disk, with the store stopped so it reads it anew.
  const std::string address = store_->address();
  EXPECT_EQ(store_->Stop(), 0);
  const std::string part = store_dir_ + "/sessions/damaged/layers-0-1.part";
  ASSERT_TRUE(std::filesystem::exists(part)) << part;
  {
    std::fstream file(part, std::ios::in | std::ios::out | std::ios::binary);
    file.seekp(static_cast<std::streamoff>(std::filesystem::file_size(part) / 2));
    file.put('\x5a');
  }
  StartStore(address);
  ASSERT_TRUE(store_->ok());

  v1::GenerateRequest second = Greedy({6}, 5);
  second.set_session_mode(v1::SESSION_MODE_CONTINUE);
  second.set_session_id("damaged");
  absl::StatusOr<client::GenerateResult> two = client.Generate(second);
  ASSERT_TRUE(two.ok()) << two.status();
  EXPECT_EQ(two->usage.session_tokens(), 0);
  EXPECT_EQ(two->usage.recomputed_tokens(), 9);
  std::vector<int32_t> history = {2, 7, 1, 8};
  history.insert(history.end(), one->token_ids.begin(), one->token_ids.end());
  history.push_back(6);
  EXPECT_EQ(two->token_ids, CliGreedy(FixtureDir(), history, 5));
  EXPECT_EQ(MetricValue(router_->metrics_port(), "deltaserve_session_resumes_total{result=\"recomputed\"}"), 1);
}

// The router's drain in the split cluster: a running session turn is cut short after its last
// streamed token ran through both stages and each stage snapshotted its layers into the store; a
// new router over the same stages continues the session, restored rather than recomputed, with
// exactly the tokens of one request carrying the whole history.
TEST_F(ClusterTest, ADrainedRoutersSessionContinuesOnANewRouter) {
  client::InferenceClient client = Client();
  const std::vector<int32_t> prompt = {1, 2, 3};
  LongTurn turn(client, "drained-in-cluster", prompt, 8000);
  ASSERT_TRUE(WaitFor([&] { return turn.count() >= 5; }));
  absl::StatusOr<client::DrainResult> drained =
      client::Drain(client::MakeChannel(router_->address()), /*timeout_ms=*/100);
  turn.thread.join();
  ASSERT_TRUE(drained.ok()) << drained.status();
  EXPECT_EQ(drained->cut_short, 1);
  EXPECT_EQ(turn.status.code(), absl::StatusCode::kUnavailable) << turn.status;
  router_ = std::make_unique<ChildProcess>(
      kBinary,
      std::vector<std::string>{"router", "--model", FixtureDir(), "--first-stage",
                               first_stage_->address(), "--session-store", store_->address(),
                               "--listen", "127.0.0.1:0", "--drain-seconds", "0"},
      LogPath("router-after-drain"));
  ASSERT_TRUE(router_->ok()) << router_->first_line();

  std::vector<int32_t> history = prompt;
  history.insert(history.end(), turn.streamed.begin(), turn.streamed.end());
  v1::GenerateRequest more = Greedy({4, 5}, 4);
  more.set_session_mode(v1::SESSION_MODE_CONTINUE);
  more.set_session_id("drained-in-cluster");
  absl::StatusOr<client::GenerateResult> continued = Client().Generate(more);
  ASSERT_TRUE(continued.ok()) << continued.status();
  EXPECT_EQ(continued->usage.session_tokens(), static_cast<int64_t>(history.size()));
  EXPECT_EQ(continued->usage.recomputed_tokens(), 0);
  history.insert(history.end(), {4, 5});
  absl::StatusOr<client::GenerateResult> whole = Client().Generate(Greedy(history, 4));
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_EQ(continued->token_ids, whole->token_ids);
}

TEST_F(ClusterTest, EveryProcessExportsValidMetrics) {
  ASSERT_TRUE(Client().Generate(Greedy({1, 2, 3}, 2)).ok());
  ExpectPromtoolAccepts(router_->metrics_port());
  ExpectPromtoolAccepts(store_->metrics_port());
  ExpectPromtoolAccepts(last_stage_->metrics_port());
  EXPECT_GE(MetricValue(router_->metrics_port(), "deltaserve_requests_total{outcome=\"length\"}"), 1);
}

}  // namespace
}  // namespace deltaserve::integration
