// The engine against reference outputs computed by transformers 5.17 (fp32) on the committed
// fixtures: logits at chosen positions, and greedy tokens through the cached decode path. Every
// KDA algorithm and MLA form must match, not just the defaults.
#include <filesystem>
#include <fstream>
#include <string>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "model/generator.h"
#include "model/kimi_linear_model.h"
#include "nlohmann/json.hpp"
#include "tests/testing/fixtures.h"

namespace deltaserve::model {
namespace {

// The bar: max |logit error| / max |logit| <= 1e-4 (fp32 engine vs fp32 reference;
// observed errors are around 1e-6).
constexpr double kMaxRelativeError = 1e-4;

struct Variant {
  const char* name;
  LayerOptions options;
};

const Variant kVariants[] = {
    {"auto", {}},
    {"recurrent_absorbed", {KdaAlgorithmChoice::kRecurrent, MlaFormChoice::kAbsorbed, false}},
    {"chunked_expanded", {KdaAlgorithmChoice::kChunked, MlaFormChoice::kExpanded, false}},
};

double RelativeError(std::span<const float> actual, const nlohmann::json& expected) {
  double max_error = 0, max_ref = 0;
  for (size_t i = 0; i < actual.size(); ++i) {
    const double ref = expected[i].get<double>();
    max_error = std::max(max_error, std::abs(actual[i] - ref));
    max_ref = std::max(max_ref, std::abs(ref));
  }
  return max_error / max_ref;
}

class FixtureTest : public ::testing::TestWithParam<std::tuple<std::string, int>> {};

TEST_P(FixtureTest, LogitsAndGreedyTokensMatchTransformers) {
  const auto& [dir, variant_index] = GetParam();
  const Variant& variant = kVariants[variant_index];
  std::ifstream in(dir + "/reference.json");
  const nlohmann::json reference = nlohmann::json::parse(in);

  kernels::cpu::CpuBackend backend({.num_threads = 2});
  ModelOptions options;
  options.layers = variant.options;
  absl::StatusOr<std::unique_ptr<KimiLinearModel>> loaded = KimiLinearModel::Load(dir, backend, options);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  KimiLinearModel& model = **loaded;
  const int64_t vocab = model.config().vocab_size;

  for (const nlohmann::json& prompt : reference["prompts"]) {
    const std::vector<int32_t> tokens = prompt["tokens"].get<std::vector<int32_t>>();
    SCOPED_TRACE(::testing::Message() << dir << " " << variant.name << " prompt of " << tokens.size());

    // One full pass: the chosen rows and the last one.
    std::vector<int64_t> positions;
    for (const auto& [key, value] : prompt["logits_rows"].items()) positions.push_back(std::stoll(key));
    positions.push_back(static_cast<int64_t>(tokens.size()) - 1);
    std::unique_ptr<SequenceState> state = model.NewState();
    std::vector<float> logits;
    const SequenceInput input{tokens, state.get(), positions};
    ASSERT_TRUE(model.Forward({&input, 1}, logits).ok());
    for (size_t i = 0; i + 1 < positions.size(); ++i) {
      const double error = RelativeError(std::span<const float>(logits).subspan(i * vocab, vocab),
                                         prompt["logits_rows"][std::to_string(positions[i])]);
      EXPECT_LE(error, kMaxRelativeError) << "position " << positions[i];
    }
    EXPECT_LE(RelativeError(std::span<const float>(logits).subspan((positions.size() - 1) * vocab, vocab),
                            prompt["last_logits"]),
              kMaxRelativeError);

    // Greedy generation through prefill + cached decode.
    const std::vector<int32_t> greedy = prompt["greedy"].get<std::vector<int32_t>>();
    SamplingParams params;
    params.temperature = 0.0f;
    params.ignore_eos = true;
    params.max_new_tokens = static_cast<int32_t>(greedy.size());
    std::unique_ptr<SequenceState> generation_state = model.NewState();
    absl::StatusOr<GenerationResult> result = Generate(model, *generation_state, tokens, params);
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->tokens, greedy);

    // Logits after the whole greedy continuation, from a fresh pass.
    std::vector<int32_t> extended = tokens;
    extended.insert(extended.end(), greedy.begin(), greedy.end());
    std::unique_ptr<SequenceState> fresh = model.NewState();
    const SequenceInput full{extended, fresh.get(), {static_cast<int64_t>(extended.size()) - 1}};
    ASSERT_TRUE(model.Forward({&full, 1}, logits).ok());
    EXPECT_LE(RelativeError(logits, prompt["greedy_last_logits"]), kMaxRelativeError);
  }
}

std::string FixtureName(const ::testing::TestParamInfo<std::tuple<std::string, int>>& info) {
  // Variant names are already letters and '_'.
  return testing::FixtureTestName(std::get<0>(info.param)) + "_" + kVariants[std::get<1>(info.param)].name;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, FixtureTest,
                         ::testing::Combine(::testing::ValuesIn(testing::FixtureDirs(DELTASERVE_TEST_DATA_DIR)),
                                            ::testing::Range(0, static_cast<int>(std::size(kVariants)))),
                         FixtureName);

}  // namespace
}  // namespace deltaserve::model
