// Tests for services/common/server_config.h: validation messages and the effective deadline.
#include "services/common/server_config.h"

#include <gtest/gtest.h>

#include <string>

namespace deltaserve::services {
namespace {

using std::chrono::milliseconds;
using std::chrono::system_clock;

void ExpectInvalid(const GrpcServerConfig& config, const std::string& field,
                   const std::string& detail) {
  const absl::Status status = config.Validate();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(std::string(status.message()).find(field), std::string::npos) << status;
  EXPECT_NE(std::string(status.message()).find(detail), std::string::npos) << status;
}

TEST(GrpcServerConfigTest, DefaultsAreValid) {
  const GrpcServerConfig config;
  EXPECT_TRUE(config.Validate().ok()) << config.Validate();
  EXPECT_EQ(config.max_receive_message_bytes, 64 << 20);
  EXPECT_FALSE(config.max_connection_idle_ms.has_value());
}

TEST(GrpcServerConfigTest, NamesTheBadField) {
  GrpcServerConfig config;
  config.max_receive_message_bytes = 0;
  ExpectInvalid(config, "max_receive_message_bytes", "got 0");

  config = GrpcServerConfig();
  config.max_send_message_bytes = int64_t{1} << 31;
  ExpectInvalid(config, "max_send_message_bytes", "2147483648");

  config = GrpcServerConfig();
  config.max_metadata_bytes = 100;
  ExpectInvalid(config, "max_metadata_bytes", "got 100");

  config = GrpcServerConfig();
  config.max_concurrent_streams = -1;
  ExpectInvalid(config, "max_concurrent_streams", "got -1");

  config = GrpcServerConfig();
  config.max_threads = 1;
  ExpectInvalid(config, "max_threads", "got 1");

  config = GrpcServerConfig();
  config.min_ping_interval_ms = -5;
  ExpectInvalid(config, "min_ping_interval_ms", "got -5");

  config = GrpcServerConfig();
  config.keepalive_time_ms = 0;
  ExpectInvalid(config, "keepalive_time_ms", "got 0");

  config = GrpcServerConfig();
  config.keepalive_timeout_ms = 0;
  ExpectInvalid(config, "keepalive_timeout_ms", "got 0");

  config = GrpcServerConfig();
  config.default_deadline_ms = 0;
  ExpectInvalid(config, "default_deadline_ms", "got 0");

  config = GrpcServerConfig();
  config.max_connection_idle_ms = 0;
  ExpectInvalid(config, "max_connection_idle_ms", "got 0");

  config = GrpcServerConfig();
  config.max_connection_age_grace_ms = 1000;
  ExpectInvalid(config, "max_connection_age_grace_ms", "max_connection_age_ms is not");
}

TEST(GrpcServerConfigTest, ListenAddress) {
  GrpcServerConfig config;
  for (const char* good : {"127.0.0.1:0", "0.0.0.0:50051", "[::]:7000", "localhost:65535",
                           "unix:/tmp/deltaserve.sock"}) {
    config.listen_address = good;
    EXPECT_TRUE(config.Validate().ok()) << good << ": " << config.Validate();
  }
  for (const char* bad : {"", "127.0.0.1", ":50051", "127.0.0.1:", "127.0.0.1:70000",
                          "127.0.0.1:http", "[::1:80", "unix:"}) {
    config.listen_address = bad;
    ExpectInvalid(config, "listen_address", "");
  }
}

TEST(GrpcServerConfigTest, OptionalConnectionLimitsValidate) {
  GrpcServerConfig config;
  config.max_connection_idle_ms = 60'000;
  config.max_connection_age_ms = 3'600'000;
  config.max_connection_age_grace_ms = 30'000;
  EXPECT_TRUE(config.Validate().ok()) << config.Validate();
}

TEST(EffectiveDeadlineTest, DefaultWhenClientSentNone) {
  grpc::ServerContext context;  // not from a call: no deadline
  GrpcServerConfig config;
  config.default_deadline_ms = 1500;
  const system_clock::time_point now = system_clock::time_point() + std::chrono::hours(1000);
  EXPECT_EQ(EffectiveDeadline(context, config, now), now + milliseconds(1500));
}

}  // namespace
}  // namespace deltaserve::services
