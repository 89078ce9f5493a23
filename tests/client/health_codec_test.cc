// The hand-encoded grpc.health.v1 messages match protobuf's wire format.
#include "client/health_codec.h"

#include <string>

#include "gtest/gtest.h"

namespace deltaserve::client {
namespace {

TEST(HealthCodecTest, EncodesTheServiceName) {
  EXPECT_EQ(EncodeHealthCheckRequest(""), "");
  EXPECT_EQ(EncodeHealthCheckRequest("ab"), std::string("\x0a\x02"
                                                        "ab"));
}

TEST(HealthCodecTest, DecodesTheStatus) {
  EXPECT_EQ(*DecodeHealthCheckResponse(""), 0);
  EXPECT_EQ(*DecodeHealthCheckResponse(std::string("\x08\x01", 2)), 1);
  EXPECT_EQ(*DecodeHealthCheckResponse(std::string("\x08\x02", 2)), 2);
  // An unknown length-delimited field 2 before the status is skipped.
  EXPECT_EQ(*DecodeHealthCheckResponse(std::string("\x12\x01x\x08\x01", 5)), 1);
}

TEST(HealthCodecTest, RejectsMalformedBytes) {
  EXPECT_EQ(DecodeHealthCheckResponse(std::string("\x08", 1)).status().code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(DecodeHealthCheckResponse(std::string("\x0a\x01x", 3)).status().code(),
            absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace deltaserve::client
