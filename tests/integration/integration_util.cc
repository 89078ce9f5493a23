#include "tests/integration/integration_util.h"

#include <stdlib.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <thread>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/child_process.h"

namespace deltaserve::integration {

std::string FixtureDir() { return std::string(DELTASERVE_TEST_DATA_DIR) + "/kimi-tiny-public"; }

std::string NewTempDir(const std::string& name) {
  std::string pattern = ::testing::TempDir() + "deltaserve-" + name + "-XXXXXX";
  return mkdtemp(pattern.data()) == nullptr ? "" : pattern;
}

std::string LogPath(const std::string& name) {
  return ::testing::TempDir() + "deltaserve-" + name + "-" + std::to_string(getpid()) + ".log";
}

v1::GenerateRequest Greedy(const std::vector<int32_t>& prompt, int32_t max_new_tokens) {
  v1::GenerateRequest request;
  request.mutable_token_ids()->Assign(prompt.begin(), prompt.end());
  request.mutable_sampling()->set_temperature(0.0f);
  request.mutable_stopping()->set_max_new_tokens(max_new_tokens);
  request.mutable_stopping()->set_ignore_eos(true);
  return request;
}

std::vector<int32_t> CliGreedy(const std::string& model_dir, const std::vector<int32_t>& prompt,
                               int32_t max_new_tokens) {
  std::string tokens;
  for (size_t i = 0; i < prompt.size(); ++i) tokens += (i ? "," : "") + std::to_string(prompt[i]);
  const testing::CommandResult result = testing::RunCommand(
      kBinary + " generate --threads 1 --temperature 0 --ignore-eos --model " + model_dir +
      " --tokens " + tokens + " --max-new-tokens " + std::to_string(max_new_tokens));
  EXPECT_EQ(result.exit_code, 0) << result.out;
  const nlohmann::json json = nlohmann::json::parse(result.out, nullptr, false);
  return json.is_object() ? json["tokens"].get<std::vector<int32_t>>() : std::vector<int32_t>{};
}

double MetricValue(int metrics_port, const std::string& series) {
  std::istringstream lines(testing::ScrapeMetrics(metrics_port));
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind(series + " ", 0) == 0) return std::stod(line.substr(series.size() + 1));
  }
  return -1;
}

void ExpectPromtoolAccepts(int metrics_port) {
  const std::string scrape = testing::ScrapeMetrics(metrics_port);
  ASSERT_FALSE(scrape.empty());
  const std::string path = ::testing::TempDir() + "scrape-" + std::to_string(getpid()) + ".txt";
  std::ofstream(path) << scrape;
  const testing::CommandResult result = testing::RunCommand("promtool check metrics < " + path + " 2>&1");
  if (result.exit_code == 127) GTEST_SKIP() << "promtool is not installed";
  EXPECT_EQ(result.exit_code, 0) << result.out;
}

bool WaitFor(const std::function<bool()>& condition) {
  for (int i = 0; i < 400; ++i) {
    if (condition()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

void ExpectConcurrentStreamsComplete(client::InferenceClient client, int streams) {
  std::vector<std::vector<int32_t>> prompts, expected(streams), actual(streams);
  for (int i = 0; i < streams; ++i) {
    prompts.push_back({static_cast<int32_t>(10 + i), 3, static_cast<int32_t>(100 + 7 * i)});
    absl::StatusOr<client::GenerateResult> alone = client.Generate(Greedy(prompts.back(), 10));
    ASSERT_TRUE(alone.ok()) << alone.status();
    expected[i] = alone->token_ids;
  }
  std::vector<std::thread> threads;
  std::atomic<int> failures = 0;
  for (int i = 0; i < streams; ++i) {
    threads.emplace_back([&, i] {
      std::vector<int32_t> streamed;
      absl::StatusOr<client::GenerateResult> result = client.Generate(
          Greedy(prompts[i], 10), [&](std::span<const int32_t> tokens) {
            streamed.insert(streamed.end(), tokens.begin(), tokens.end());
          });
      if (!result.ok() || result->token_ids != streamed) ++failures;
      if (result.ok()) actual[i] = result->token_ids;
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(actual, expected);
}

void ExpectSessionMatchesWholeHistory(client::InferenceClient client, int router_metrics_port,
                                      const std::string& session_id) {
  const std::vector<std::vector<int32_t>> prompts = {{11, 12, 13, 14, 15}, {21, 22}, {31, 32, 33}};
  const double restored_before =
      std::max(0.0, MetricValue(router_metrics_port,
                                "deltaserve_session_history_tokens_total{result=\"restored\"}"));
  std::vector<int32_t> history;
  int64_t expected_restored = 0;
  for (size_t turn = 0; turn < prompts.size(); ++turn) {
    SCOPED_TRACE(::testing::Message() << "turn " << turn);
    v1::GenerateRequest request = Greedy(prompts[turn], 6);
    request.set_session_mode(turn == 0 ? v1::SESSION_MODE_CREATE : v1::SESSION_MODE_CONTINUE);
    request.set_session_id(session_id);
    absl::StatusOr<client::GenerateResult> resumed = client.Generate(request);
    ASSERT_TRUE(resumed.ok()) << resumed.status();
    EXPECT_EQ(resumed->session_id, session_id);
    EXPECT_EQ(resumed->usage.prompt_tokens(), static_cast<int64_t>(prompts[turn].size()));
    EXPECT_EQ(resumed->usage.session_tokens(), static_cast<int64_t>(history.size()));
    EXPECT_EQ(resumed->usage.recomputed_tokens(), 0);
    expected_restored += static_cast<int64_t>(history.size());

    history.insert(history.end(), prompts[turn].begin(), prompts[turn].end());
    absl::StatusOr<client::GenerateResult> whole = client.Generate(Greedy(history, 6));
    ASSERT_TRUE(whole.ok()) << whole.status();
    EXPECT_EQ(resumed->token_ids, whole->token_ids);
    history.insert(history.end(), resumed->token_ids.begin(), resumed->token_ids.end());
  }
  EXPECT_EQ(MetricValue(router_metrics_port, "deltaserve_session_history_tokens_total{result=\"restored\"}") -
                restored_before,
            static_cast<double>(expected_restored));
  v1::GetSessionRequest get;
  get.set_session_id(session_id);
  get.set_include_tokens(true);
  absl::StatusOr<v1::Session> session = client.GetSession(get);
  ASSERT_TRUE(session.ok()) << session.status();
  EXPECT_EQ(std::vector<int32_t>(session->token_ids().begin(), session->token_ids().end()), history);
}


LongTurn::LongTurn(client::InferenceClient& client, const std::string& session_id,
                   const std::vector<int32_t>& prompt, int32_t max_new_tokens) {
  v1::GenerateRequest request = Greedy(prompt, max_new_tokens);
  request.set_session_mode(v1::SESSION_MODE_CREATE);
  request.set_session_id(session_id);
  thread = std::thread([this, &client, request] {
    status = client
                 .Generate(request,
                           [this](std::span<const int32_t> tokens) {
                             std::lock_guard<std::mutex> lock(mutex);
                             streamed.insert(streamed.end(), tokens.begin(), tokens.end());
                           })
                 .status();
  });
}

size_t LongTurn::count() {
  std::lock_guard<std::mutex> lock(mutex);
  return streamed.size();
}

}  // namespace deltaserve::integration
