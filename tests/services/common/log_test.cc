// Tests for base/log.h: level parsing, config validation and the request log prefix.
#include "base/log.h"

#include <gtest/gtest.h>

#include <memory>
#include <sstream>
#include <string>

#include "spdlog/sinks/ostream_sink.h"

namespace deltaserve::base {
namespace {

TEST(LogTest, ParsesLevels) {
  EXPECT_EQ(*ParseLogLevel("info"), spdlog::level::info);
  EXPECT_EQ(*ParseLogLevel("WARNING"), spdlog::level::warn);
  EXPECT_EQ(*ParseLogLevel("Debug"), spdlog::level::debug);
  EXPECT_EQ(*ParseLogLevel("off"), spdlog::level::off);
  const absl::StatusOr<spdlog::level::level_enum> bad = ParseLogLevel("verbose");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(bad.status().message()).find("verbose"), std::string::npos);
}

TEST(LogTest, ConfigValidation) {
  LogConfig config;
  EXPECT_TRUE(config.Validate().ok());
  config.level = "loud";
  EXPECT_NE(std::string(config.Validate().message()).find("LogConfig.level"), std::string::npos);
  config = LogConfig();
  config.pattern.clear();
  EXPECT_NE(std::string(config.Validate().message()).find("LogConfig.pattern"), std::string::npos);
  EXPECT_EQ(ConfigureLogging(config).code(), absl::StatusCode::kInvalidArgument);
}

TEST(LogTest, PrefixNamesRequestSessionTenant) {
  RequestContext context;
  context.request_id = "r42";
  context.tenant = "acme";
  EXPECT_EQ(context.LogPrefix(), "req=r42 sess=- tenant=acme");
  context.session_id = "evil\nreq=forged x";
  EXPECT_EQ(context.LogPrefix(), "req=r42 sess=evil?req=forged?x tenant=acme");
  context.session_id = std::string(200, 's');
  EXPECT_EQ(context.LogPrefix(), "req=r42 sess=" + std::string(128, 's') + "... tenant=acme");
}

TEST(LogTest, CancellationAndDeadline) {
  std::stop_source source;
  RequestContext context;
  context.cancellation = source.get_token();
  const RequestContext copy = context;
  EXPECT_FALSE(copy.Cancelled());
  source.request_stop();
  EXPECT_TRUE(copy.Cancelled());
  const auto now = std::chrono::system_clock::now();
  EXPECT_FALSE(context.Expired(now));  // no deadline
  context.deadline = now;
  EXPECT_TRUE(context.Expired(now));
}

TEST(LogTest, RequestLinesStartWithThePrefix) {
  std::ostringstream out;
  const std::shared_ptr<spdlog::logger> previous = spdlog::default_logger();
  auto logger = std::make_shared<spdlog::logger>(
      "log_test", std::make_shared<spdlog::sinks::ostream_sink_st>(out));
  logger->set_pattern("%v");
  logger->set_level(spdlog::level::info);
  spdlog::set_default_logger(logger);

  RequestContext context;
  context.request_id = "r1";
  context.session_id = "s1";
  context.tenant = "t1";
  LogInfo(context, "queued {} tokens", 12);
  LogDebug(context, "not shown at info");
  LogWarn(context, "slow step");
  spdlog::set_default_logger(previous);

  EXPECT_EQ(out.str(),
            "req=r1 sess=s1 tenant=t1 queued 12 tokens\n"
            "req=r1 sess=s1 tenant=t1 slow step\n");
}

}  // namespace
}  // namespace deltaserve::base
