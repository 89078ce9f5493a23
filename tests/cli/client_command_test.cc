// `deltaserve client ...` as a user runs it, against the scripted fake server started in this
// process: exact JSON for generate and the session commands, SERVING for health, errors on stderr.
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "grpcpp/health_check_service_interface.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/client/fake_inference_server.h"

namespace deltaserve::cli {
namespace {

using ::deltaserve::testing::FakeInferenceServer;
using ::deltaserve::testing::FakeInferenceService;

struct ClientRun {
  int exit_code = -1;
  std::string out;
  std::string err;
};

class ClientCommandTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = FakeInferenceServer::Start();
    ASSERT_NE(server_, nullptr);
    err_path_ = ::testing::TempDir() + "deltaserve-client-stderr-" + std::to_string(getpid());
  }
  void TearDown() override { std::filesystem::remove(err_path_); }

  // Runs `deltaserve client <args> --server <fake>`.
  ClientRun Run(const std::string& args) {
    const std::string command = std::string(DELTASERVE_BINARY) + " client " + args + " --server " +
                                server_->address() + " 2>" + err_path_;
    ClientRun run;
    FILE* pipe = popen(command.c_str(), "r");
    if (pipe == nullptr) return run;
    std::array<char, 4096> buffer;
    size_t n;
    while ((n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0) run.out.append(buffer.data(), n);
    const int status = pclose(pipe);
    run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    std::ifstream err(err_path_);
    std::stringstream text;
    text << err.rdbuf();
    run.err = text.str();
    return run;
  }

  std::unique_ptr<FakeInferenceServer> server_;
  std::string err_path_;
};

TEST_F(ClientCommandTest, HealthPrintsServing) {
  const ClientRun run = Run("health");
  EXPECT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(run.out, "SERVING\n");
}

TEST_F(ClientCommandTest, HealthOfANotServingServiceExitsOne) {
  server_->server().GetHealthCheckService()->SetServingStatus("deltaserve.v1.Inference", false);
  const ClientRun run = Run("health --service deltaserve.v1.Inference");
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_EQ(run.out, "NOT_SERVING\n");
  const ClientRun unknown = Run("health --service no.such.Service --timeout-ms 2000");
  EXPECT_EQ(unknown.exit_code, 1);
  EXPECT_EQ(unknown.err.rfind("deltaserve client: NOT_FOUND: ", 0), 0u) << unknown.err;
}

TEST_F(ClientCommandTest, GeneratePrintsOneJsonObject) {
  const ClientRun run = Run("generate --tokens 1,2,3 --max-new-tokens 2 --tenant acme");
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(
      run.out,
      "{\"tokens\": [100, 101], \"session_id\": \"\", \"finish_reason\": \"stop\", "
      "\"usage\": {\"prompt_tokens\": 3, \"session_tokens\": 0, \"recomputed_tokens\": 1, "
      "\"completion_tokens\": 2}, \"timings\": {\"queue_ms\": 1.500, \"first_token_ms\": 2.000, "
      "\"total_ms\": 5.250}}\n");
  EXPECT_EQ(server_->service().last_tenant(), "acme");
  const v1::GenerateRequest request = server_->service().last_generate_request();
  EXPECT_EQ(request.session_mode(), v1::SESSION_MODE_UNSPECIFIED);
  EXPECT_FALSE(request.sampling().has_temperature());
  EXPECT_FALSE(request.sampling().has_seed());
}

TEST_F(ClientCommandTest, GeneratePassesEveryFlag) {
  const ClientRun run = Run(
      "generate --tokens 5 --max-new-tokens 1 --temperature 0.5 --top-k 4 --top-p 0.9 --min-p 0.1 "
      "--seed 0 --repetition-penalty 1.1 --frequency-penalty 0.2 --presence-penalty -0.3 "
      "--stop-token-ids 2,3 --ignore-eos --priority -1 --timeout-ms 30000");
  ASSERT_EQ(run.exit_code, 0) << run.err;
  const v1::GenerateRequest request = server_->service().last_generate_request();
  EXPECT_FLOAT_EQ(request.sampling().temperature(), 0.5f);
  EXPECT_EQ(request.sampling().top_k(), 4);
  EXPECT_FLOAT_EQ(request.sampling().top_p(), 0.9f);
  EXPECT_FLOAT_EQ(request.sampling().min_p(), 0.1f);
  EXPECT_TRUE(request.sampling().has_seed());
  EXPECT_EQ(request.sampling().seed(), 0u);
  EXPECT_FLOAT_EQ(request.sampling().repetition_penalty(), 1.1f);
  EXPECT_FLOAT_EQ(request.sampling().frequency_penalty(), 0.2f);
  EXPECT_FLOAT_EQ(request.sampling().presence_penalty(), -0.3f);
  ASSERT_EQ(request.stopping().stop_token_ids_size(), 2);
  EXPECT_EQ(request.stopping().stop_token_ids(1), 3);
  EXPECT_TRUE(request.stopping().ignore_eos());
  EXPECT_EQ(request.stopping().max_new_tokens(), 1);
  EXPECT_EQ(request.priority(), -1);
}

TEST_F(ClientCommandTest, GenerateSessionModes) {
  const ClientRun created = Run("generate --tokens 1 --new-session");
  ASSERT_EQ(created.exit_code, 0) << created.err;
  EXPECT_EQ(nlohmann::json::parse(created.out)["session_id"],
            FakeInferenceService::kCreatedSession);
  EXPECT_EQ(server_->service().last_generate_request().session_mode(), v1::SESSION_MODE_CREATE);
  EXPECT_EQ(server_->service().last_generate_request().session_id(), "");

  const ClientRun named = Run("generate --tokens 1 --new-session --session chat-9");
  ASSERT_EQ(named.exit_code, 0) << named.err;
  EXPECT_EQ(nlohmann::json::parse(named.out)["session_id"], "chat-9");

  const ClientRun continued = Run("generate --tokens 1 --session known");
  ASSERT_EQ(continued.exit_code, 0) << continued.err;
  EXPECT_EQ(server_->service().last_generate_request().session_mode(), v1::SESSION_MODE_CONTINUE);
  const nlohmann::json json = nlohmann::json::parse(continued.out);
  EXPECT_EQ(json["session_id"], "known");
  EXPECT_EQ(json["usage"]["session_tokens"], FakeInferenceService::kKnownSessionTokens);
}

TEST_F(ClientCommandTest, RpcErrorsGoToStderrWithTheirCode) {
  const ClientRun missing = Run("generate --tokens 1 --session nope");
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_EQ(missing.out, "");
  EXPECT_EQ(missing.err, "deltaserve client: NOT_FOUND: session 'nope' not found\n");

  const ClientRun denied = Run("generate --tokens 1 --tenant intruder");
  EXPECT_EQ(denied.exit_code, 1);
  EXPECT_EQ(denied.err,
            "deltaserve client: PERMISSION_DENIED: tenant 'intruder' may not use this session\n");

  const ClientRun deadline = Run("generate --tokens 999 --timeout-ms 50");
  EXPECT_EQ(deadline.exit_code, 1);
  EXPECT_EQ(deadline.err.rfind("deltaserve client: DEADLINE_EXCEEDED: ", 0), 0u) << deadline.err;
}

TEST_F(ClientCommandTest, BadArgumentsAreUsageErrors) {
  EXPECT_EQ(Run("generate").exit_code, 2);               // --tokens missing
  EXPECT_EQ(Run("generate --tokens 1,x").exit_code, 2);  // not an id
  EXPECT_EQ(Run("generate --tokens 1 --stop-token-ids -4").exit_code, 2);
  EXPECT_EQ(Run("generate --tokens 1 --timeout-ms -5").exit_code, 2);
  const ClientRun run = Run("generate --tokens ,");
  EXPECT_EQ(run.exit_code, 2);
  EXPECT_NE(run.err.find("--tokens"), std::string::npos) << run.err;
}

TEST_F(ClientCommandTest, SessionCommandsPrintJson) {
  const ClientRun get = Run("sessions get --session known --include-tokens");
  ASSERT_EQ(get.exit_code, 0) << get.err;
  const nlohmann::json session = nlohmann::json::parse(get.out);
  EXPECT_EQ(session["num_tokens"], FakeInferenceService::kKnownSessionTokens);
  EXPECT_EQ(session["tier"], "memory");
  EXPECT_EQ(session["token_ids"].size(), 7u);

  const ClientRun list = Run("sessions list --page-size 10");
  ASSERT_EQ(list.exit_code, 0) << list.err;
  const nlohmann::json page = nlohmann::json::parse(list.out);
  EXPECT_EQ(page["sessions"].size(), 2u);
  EXPECT_EQ(page["next_page_token"], "next");

  const ClientRun fork = Run("sessions fork --session known --new-session-id copy");
  ASSERT_EQ(fork.exit_code, 0) << fork.err;
  EXPECT_EQ(nlohmann::json::parse(fork.out)["session_id"], "copy");

  const ClientRun del = Run("sessions delete --session known");
  ASSERT_EQ(del.exit_code, 0) << del.err;
  EXPECT_EQ(del.out, "{\"session_id\": \"known\", \"deleted\": true}\n");
  const ClientRun gone = Run("sessions delete --session gone");
  EXPECT_EQ(gone.exit_code, 1);
  EXPECT_EQ(gone.err, "deltaserve client: NOT_FOUND: session 'gone' not found\n");
}

TEST_F(ClientCommandTest, ModelInfoPrintsJson) {
  const ClientRun run = Run("model-info");
  ASSERT_EQ(run.exit_code, 0) << run.err;
  const nlohmann::json info = nlohmann::json::parse(run.out);
  EXPECT_EQ(info["model_type"], "kimi_linear");
  EXPECT_EQ(info["eos_token_ids"], nlohmann::json::array({1, 2}));
}

}  // namespace
}  // namespace deltaserve::cli
