// The `deltaserve` binary as a user runs it: init-model, score and generate print the documented
// JSON, from a directory or a random: source; bad arguments print usage and exit non-zero.
#include <unistd.h>

#include <filesystem>
#include <string>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/child_process.h"

namespace deltaserve::cli {
namespace {

using Result = testing::CommandResult;

Result RunCli(const std::string& args) {
  return testing::RunCommand(std::string(DELTASERVE_BINARY) + " " + args + " 2>&1");
}

class CliTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_dir_ = new std::string(::testing::TempDir() + "deltaserve-cli-tiny-" + std::to_string(getpid()));
    std::filesystem::remove_all(*model_dir_);
    const Result init = RunCli("init-model --preset tiny --seed 3 --out " + *model_dir_);
    ASSERT_EQ(init.exit_code, 0) << init.out;
  }
  static void TearDownTestSuite() {
    std::filesystem::remove_all(*model_dir_);
    delete model_dir_;
  }
  static std::string* model_dir_;
};

std::string* CliTest::model_dir_ = nullptr;

TEST_F(CliTest, InitModelWritesTheOfficialLayout) {
  EXPECT_TRUE(std::filesystem::exists(*model_dir_ + "/config.json"));
  EXPECT_TRUE(std::filesystem::exists(*model_dir_ + "/model.safetensors.index.json"));
}

TEST_F(CliTest, ScorePrintsRequestedPositions) {
  const Result r = RunCli("score --model " + *model_dir_ + " --tokens 5,6,7,8 --positions 0,3");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  const nlohmann::json json = nlohmann::json::parse(r.out);
  EXPECT_EQ(json["positions"], nlohmann::json::array({0, 3}));
  ASSERT_EQ(json["logits"].size(), 2u);
  EXPECT_EQ(json["logits"][0].size(), 512u);

  // The last position's logits are the same whether asked for alone or with all positions.
  const nlohmann::json last = nlohmann::json::parse(RunCli("score --model " + *model_dir_ + " --tokens 5,6,7,8").out);
  const nlohmann::json all =
      nlohmann::json::parse(RunCli("score --model " + *model_dir_ + " --tokens 5,6,7,8 --positions all").out);
  EXPECT_EQ(last["logits"][0], all["logits"][3]);
  EXPECT_EQ(last["logits"][0], json["logits"][1]);
}

TEST_F(CliTest, GenerateIsReproducibleWithASeed) {
  const std::string args = "generate --model " + *model_dir_ +
                           " --tokens 1,2,3 --max-new-tokens 6 --temperature 0.9 --top-p 0.9 --seed 5 --ignore-eos";
  const Result first = RunCli(args);
  ASSERT_EQ(first.exit_code, 0) << first.out;
  const nlohmann::json a = nlohmann::json::parse(first.out);
  const nlohmann::json b = nlohmann::json::parse(RunCli(args).out);
  EXPECT_EQ(a["tokens"].size(), 6u);
  EXPECT_EQ(a["tokens"], b["tokens"]);
  EXPECT_EQ(a["finish_reason"], "length");
  EXPECT_EQ(a["usage"]["prompt_tokens"], 3);
  EXPECT_EQ(a["usage"]["completion_tokens"], 6);
}

TEST_F(CliTest, GreedyGenerateFollowsScore) {
  const nlohmann::json gen = nlohmann::json::parse(
      RunCli("generate --model " + *model_dir_ + " --tokens 9,8,7 --max-new-tokens 1 --temperature 0").out);
  const nlohmann::json score = nlohmann::json::parse(RunCli("score --model " + *model_dir_ + " --tokens 9,8,7").out);
  const std::vector<float> logits = score["logits"][0].get<std::vector<float>>();
  const int argmax = static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  EXPECT_EQ(gen["tokens"][0].get<int>(), argmax);
}

TEST_F(CliTest, RandomModelSourceScoresAsTheInitModelCheckpoint) {
  const std::string tokens = " --tokens 5,6,7,8 --positions all";
  const Result disk = RunCli("score --model " + *model_dir_ + tokens);
  const Result random = RunCli("score --model random:tiny:3" + tokens);
  ASSERT_EQ(random.exit_code, 0) << random.out;
  EXPECT_EQ(nlohmann::json::parse(random.out), nlohmann::json::parse(disk.out));

  const Result generated = RunCli("generate --model random:tiny --tokens 1,2,3 --max-new-tokens 2");
  EXPECT_EQ(generated.exit_code, 0) << generated.out;
  const Result unknown = RunCli("generate --model random:huge --tokens 1");
  EXPECT_EQ(unknown.exit_code, 1);
  EXPECT_NE(unknown.out.find("kimi-linear-48b-a3b-all-mla"), std::string::npos) << unknown.out;
}

TEST_F(CliTest, BadArgumentsPrintUsageAndFail) {
  const std::string model = " --model " + *model_dir_;
  const std::vector<std::string> cases = {
       std::string(""), std::string("bogus"), "score --tokens 1,2", "score" + model,
        "score" + model + " --tokens 1,x", "score" + model + " --tokens 1,2 --positions 5",
        "generate" + model + " --tokens 1 --top-p 1.5", "generate" + model + " --tokens 1 --temperature -1",
        "generate" + model + " --tokens 1 --max-new-tokens 0", "init-model --preset nope --out /tmp/x",
        "generate" + model + " --tokens 1 --kda fastest", "generate" + model + " --tokens 1 --device tpu",
        "generate" + model + " --tokens 1 --device cuda:x", "generate" + model + " --tokens 1 --device cuda:-1",
        "generate" + model + " --tokens 1 --mla-expanded-window-keys 100",
        "generate" + model + " --tokens 1 --mla-expanded-window-keys -64",
        "generate" + model + " --tokens 1 --mla-expanded-window-keys lots"};
  for (const std::string& args : cases) {
    const Result r = RunCli(args);
    EXPECT_NE(r.exit_code, 0) << args;
    EXPECT_NE(r.out.find("--"), std::string::npos) << args << ": " << r.out;  // usage lists flags
  }
}

TEST_F(CliTest, RuntimeErrorsNameTheProblem) {
  const Result missing = RunCli("score --model /nonexistent/model --tokens 1");
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.out.find("/nonexistent/model"), std::string::npos) << missing.out;
  const Result vocab = RunCli("score --model " + *model_dir_ + " --tokens 1,512");
  EXPECT_EQ(vocab.exit_code, 1);
  EXPECT_NE(vocab.out.find("outside the vocabulary"), std::string::npos) << vocab.out;
  // No GPU, no CUDA backend in this build, or no device 99: each a one-line reason.
  const Result gpu = RunCli("generate --model " + *model_dir_ + " --tokens 1 --device cuda:99");
  EXPECT_EQ(gpu.exit_code, 1);
  EXPECT_NE(gpu.out.find("--device cuda"), std::string::npos) << gpu.out;
}

}  // namespace
}  // namespace deltaserve::cli
