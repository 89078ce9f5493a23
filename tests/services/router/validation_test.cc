#include "services/router/validation.h"

#include "gtest/gtest.h"
#include "model/config/presets.h"

namespace deltaserve::services {
namespace {

class ValidationTest : public ::testing::Test {
 protected:
  absl::StatusOr<RouterRequest> Validate(const v1::GenerateRequest& request) {
    return ValidateGenerateRequest(request, "acme", config_, model_, 1000);
  }
  v1::GenerateRequest Good() {
    v1::GenerateRequest request;
    request.add_token_ids(1);
    request.add_token_ids(2);
    return request;
  }
  RouterConfig config_;
  model::KimiLinearConfig model_ = *model::PresetConfig("tiny");
};

TEST_F(ValidationTest, AcceptsDefaultsAndCopiesFields) {
  v1::GenerateRequest request = Good();
  request.mutable_sampling()->set_temperature(0.0f);
  request.mutable_stopping()->set_max_new_tokens(7);
  request.mutable_stopping()->add_stop_token_ids(5);
  request.set_priority(-3);
  absl::StatusOr<RouterRequest> out = Validate(request);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->tenant, "acme");
  EXPECT_EQ(out->prompt, (std::vector<int32_t>{1, 2}));
  EXPECT_EQ(out->sampling.temperature, 0.0f);
  EXPECT_EQ(out->sampling.max_new_tokens, 7);
  EXPECT_EQ(out->sampling.stop_token_ids, (std::vector<int32_t>{5}));
  EXPECT_EQ(out->priority, -3);
  request.clear_stopping();
  EXPECT_EQ(Validate(request)->sampling.max_new_tokens, config_.default_max_new_tokens);
}

TEST_F(ValidationTest, RejectsBadRequestsNamingTheField) {
  struct Case {
    std::function<void(v1::GenerateRequest&)> change;
    const char* expected;
  };
  const std::vector<Case> cases = {
      {[](v1::GenerateRequest& r) { r.clear_token_ids(); }, "token_ids"},
      {[](v1::GenerateRequest& r) { r.add_token_ids(512); }, "token_ids[2] = 512"},
      {[](v1::GenerateRequest& r) { r.add_token_ids(-1); }, "token_ids[2] = -1"},
      {[](v1::GenerateRequest& r) { r.mutable_sampling()->set_top_p(1.5f); }, "top_p"},
      {[](v1::GenerateRequest& r) { r.mutable_sampling()->set_temperature(-1); }, "temperature"},
      {[](v1::GenerateRequest& r) { r.mutable_stopping()->set_max_new_tokens(0); }, "max_new_tokens"},
      {[](v1::GenerateRequest& r) { r.mutable_stopping()->set_max_new_tokens(1 << 30); }, "max_new_tokens"},
      {[](v1::GenerateRequest& r) { r.mutable_stopping()->add_stop_token_ids(9999); }, "stop_token_ids"},
      {[](v1::GenerateRequest& r) { r.set_session_id("x"); }, "session_mode"},
      {[](v1::GenerateRequest& r) { r.set_session_mode(v1::SESSION_MODE_CONTINUE); }, "session_id"},
      {[](v1::GenerateRequest& r) {
         r.set_session_mode(v1::SESSION_MODE_CONTINUE);
         r.set_session_id("../etc");
       },
       "session_id"},
  };
  for (const Case& c : cases) {
    v1::GenerateRequest request = Good();
    c.change(request);
    absl::StatusOr<RouterRequest> out = Validate(request);
    ASSERT_FALSE(out.ok()) << c.expected;
    EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(out.status().message().find(c.expected), std::string::npos) << out.status();
  }
  v1::GenerateRequest too_long;
  for (int i = 0; i < 1000; ++i) too_long.add_token_ids(1);
  EXPECT_NE(Validate(too_long).status().message().find("context"), std::string::npos);
}

TEST(SessionIds, GeneratedIdsAreValidAndDistinct) {
  const std::string a = NewSessionId(), b = NewSessionId();
  EXPECT_NE(a, b);
  EXPECT_TRUE(ValidateSessionId(a).ok());
}

}  // namespace
}  // namespace deltaserve::services
