// The JSON renderings `deltaserve client` prints: exact text for fixed inputs.
#include "client/json_format.h"

#include "gtest/gtest.h"

namespace deltaserve::client {
namespace {

TEST(JsonFormatTest, GenerateResult) {
  GenerateResult result;
  result.token_ids = {100, 101};
  result.session_id = "s\"1";
  result.finish_reason = v1::FINISH_REASON_LENGTH;
  result.usage.set_prompt_tokens(3);
  result.usage.set_session_tokens(7);
  result.usage.set_recomputed_tokens(1);
  result.usage.set_completion_tokens(2);
  result.timings.set_queue_ns(1'500'000);
  result.timings.set_first_token_ns(2'000'000);
  result.timings.set_total_ns(5'250'001);
  EXPECT_EQ(
      GenerateResultToJson(result),
      "{\"tokens\": [100, 101], \"session_id\": \"s\\\"1\", \"finish_reason\": \"length\", "
      "\"usage\": {\"prompt_tokens\": 3, \"session_tokens\": 7, \"recomputed_tokens\": 1, "
      "\"completion_tokens\": 2}, \"timings\": {\"queue_ms\": 1.500, \"first_token_ms\": 2.000, "
      "\"total_ms\": 5.250}}");
}

TEST(JsonFormatTest, EmptyGenerateResult) {
  EXPECT_EQ(
      GenerateResultToJson(GenerateResult()),
      "{\"tokens\": [], \"session_id\": \"\", \"finish_reason\": \"unspecified\", "
      "\"usage\": {\"prompt_tokens\": 0, \"session_tokens\": 0, \"recomputed_tokens\": 0, "
      "\"completion_tokens\": 0}, \"timings\": {\"queue_ms\": 0.000, \"first_token_ms\": 0.000, "
      "\"total_ms\": 0.000}}");
}

TEST(JsonFormatTest, FinishReasonNames) {
  EXPECT_STREQ(FinishReasonName(v1::FINISH_REASON_STOP), "stop");
  EXPECT_STREQ(FinishReasonName(v1::FINISH_REASON_LENGTH), "length");
  EXPECT_STREQ(FinishReasonName(v1::FINISH_REASON_CANCELLED), "cancelled");
  EXPECT_STREQ(FinishReasonName(v1::FINISH_REASON_ERROR), "error");
}

TEST(JsonFormatTest, QuoteEscapes) {
  EXPECT_EQ(JsonQuote("a\\b\n\x01\xc3\xa9"), "\"a\\\\b\\n\\u0001\xc3\xa9\"");
}

TEST(JsonFormatTest, SessionsAndList) {
  v1::Session session;
  session.set_session_id("known");
  session.set_num_tokens(2);
  session.set_state_bytes(64);
  session.set_tier(v1::STORAGE_TIER_DISK);
  session.set_created_unix_ms(10);
  session.set_last_used_unix_ms(20);
  const std::string plain =
      "{\"session_id\": \"known\", \"num_tokens\": 2, \"state_bytes\": 64, \"tier\": \"disk\", "
      "\"created_unix_ms\": 10, \"last_used_unix_ms\": 20}";
  EXPECT_EQ(SessionToJson(session), plain);

  v1::ListSessionsResponse list;
  *list.add_sessions() = session;
  EXPECT_EQ(ListSessionsResponseToJson(list),
            "{\"sessions\": [" + plain + "], \"next_page_token\": \"\"}");

  session.add_token_ids(4);
  session.add_token_ids(5);
  EXPECT_EQ(
      SessionToJson(session),
      "{\"session_id\": \"known\", \"num_tokens\": 2, \"state_bytes\": 64, \"tier\": \"disk\", "
      "\"created_unix_ms\": 10, \"last_used_unix_ms\": 20, \"token_ids\": [4, 5]}");
}

TEST(JsonFormatTest, ModelInfo) {
  v1::ModelInfo info;
  info.set_model_type("kimi_linear");
  info.set_vocab_size(512);
  info.add_eos_token_ids(1);
  info.set_max_new_tokens_limit(64);
  EXPECT_EQ(ModelInfoToJson(info),
            "{\"model_type\": \"kimi_linear\", \"vocab_size\": 512, \"num_layers\": 0, "
            "\"num_kda_layers\": 0, \"num_mla_layers\": 0, \"num_experts\": 0, "
            "\"num_experts_per_token\": 0, \"eos_token_ids\": [1], \"max_context_tokens\": 0, "
            "\"fingerprint\": \"\", \"max_prompt_tokens\": 0, \"max_new_tokens_limit\": 64}");
}

}  // namespace
}  // namespace deltaserve::client
