// SamplingParams::Validate: each field's rejections name the field; edge values pass.
#include "model/sampling/sampling_params.h"

#include <cmath>
#include <functional>
#include <limits>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace deltaserve::model {
namespace {

using ::testing::HasSubstr;

constexpr int64_t kVocab = 100;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

struct Case {
  std::string field;
  std::function<void(SamplingParams&)> set;
  std::string value_in_message;
};

TEST(SamplingParamsTest, DefaultsAreValid) {
  EXPECT_TRUE(SamplingParams{}.Validate(kVocab).ok());
}

TEST(SamplingParamsTest, RejectsEachBadFieldAndNamesIt) {
  const Case cases[] = {
      {"temperature", [](SamplingParams& p) { p.temperature = -0.5f; }, "-0.5"},
      {"temperature", [](SamplingParams& p) { p.temperature = kInf; }, "inf"},
      {"temperature", [](SamplingParams& p) { p.temperature = kNaN; }, "nan"},
      {"top_k", [](SamplingParams& p) { p.top_k = -2; }, "-2"},
      {"top_p", [](SamplingParams& p) { p.top_p = 0.0f; }, "got 0"},
      {"top_p", [](SamplingParams& p) { p.top_p = 1.5f; }, "1.5"},
      {"top_p", [](SamplingParams& p) { p.top_p = kNaN; }, "nan"},
      {"min_p", [](SamplingParams& p) { p.min_p = -0.1f; }, "-0.1"},
      {"min_p", [](SamplingParams& p) { p.min_p = 1.25f; }, "1.25"},
      {"min_p", [](SamplingParams& p) { p.min_p = kNaN; }, "nan"},
      {"repetition_penalty", [](SamplingParams& p) { p.repetition_penalty = 0.0f; }, "got 0"},
      {"repetition_penalty", [](SamplingParams& p) { p.repetition_penalty = -1.0f; }, "-1"},
      {"repetition_penalty", [](SamplingParams& p) { p.repetition_penalty = kInf; }, "inf"},
      // Below 1e-6 a penalised logit of a sane model could overflow (kMinRepetitionPenalty).
      {"repetition_penalty", [](SamplingParams& p) { p.repetition_penalty = 9e-7f; }, "at least 1e-06"},
      {"repetition_penalty", [](SamplingParams& p) { p.repetition_penalty = 1e-38f; }, "1e-38"},
      {"frequency_penalty", [](SamplingParams& p) { p.frequency_penalty = 2.5f; }, "2.5"},
      {"frequency_penalty", [](SamplingParams& p) { p.frequency_penalty = -kInf; }, "-inf"},
      {"presence_penalty", [](SamplingParams& p) { p.presence_penalty = -2.25f; }, "-2.25"},
      {"presence_penalty", [](SamplingParams& p) { p.presence_penalty = kNaN; }, "nan"},
      {"stop_token_ids[1]", [](SamplingParams& p) { p.stop_token_ids = {3, kVocab}; }, "100"},
      {"stop_token_ids[0]", [](SamplingParams& p) { p.stop_token_ids = {-1}; }, "-1"},
      {"max_new_tokens", [](SamplingParams& p) { p.max_new_tokens = 0; }, "got 0"},
      {"max_new_tokens", [](SamplingParams& p) { p.max_new_tokens = kMaxNewTokensLimit + 1; },
       std::to_string(kMaxNewTokensLimit + 1)},
  };
  for (const Case& c : cases) {
    SamplingParams params;
    c.set(params);
    const absl::Status status = params.Validate(kVocab);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_THAT(status.message(), HasSubstr(c.field));
    EXPECT_THAT(status.message(), HasSubstr(c.value_in_message));
  }
}

TEST(SamplingParamsTest, RejectsNonPositiveVocab) {
  EXPECT_EQ(SamplingParams{}.Validate(0).code(), absl::StatusCode::kInvalidArgument);
}

TEST(SamplingParamsTest, AcceptsEdgeValues) {
  const std::function<void(SamplingParams&)> edges[] = {
      [](SamplingParams& p) { p.temperature = 0.0f; },
      [](SamplingParams& p) { p.temperature = 1e-30f; },
      [](SamplingParams& p) { p.temperature = 100.0f; },
      [](SamplingParams& p) { p.top_k = -1; },
      [](SamplingParams& p) { p.top_k = 0; },
      [](SamplingParams& p) { p.top_k = 1; },
      [](SamplingParams& p) { p.top_k = 1000000; },  // larger than the vocab: no-op
      [](SamplingParams& p) { p.top_p = 1.0f; },
      [](SamplingParams& p) { p.top_p = std::numeric_limits<float>::denorm_min(); },
      [](SamplingParams& p) { p.min_p = 0.0f; },
      [](SamplingParams& p) { p.min_p = 1.0f; },
      [](SamplingParams& p) { p.repetition_penalty = 1e-6f; },
      [](SamplingParams& p) { p.repetition_penalty = 10.0f; },
      [](SamplingParams& p) { p.frequency_penalty = -2.0f; },
      [](SamplingParams& p) { p.frequency_penalty = 2.0f; },
      [](SamplingParams& p) { p.presence_penalty = -2.0f; },
      [](SamplingParams& p) { p.presence_penalty = 2.0f; },
      [](SamplingParams& p) { p.stop_token_ids = {0, kVocab - 1}; },
      [](SamplingParams& p) { p.max_new_tokens = 1; },
      [](SamplingParams& p) { p.max_new_tokens = kMaxNewTokensLimit; },
      [](SamplingParams& p) { p.seed = 0; },
      [](SamplingParams& p) { p.ignore_eos = true; },
  };
  for (size_t i = 0; i < std::size(edges); ++i) {
    SamplingParams params;
    edges[i](params);
    EXPECT_TRUE(params.Validate(kVocab).ok()) << "edge case " << i << ": "
                                              << params.Validate(kVocab);
  }
}

}  // namespace
}  // namespace deltaserve::model
