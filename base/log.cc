// spdlog configuration from LogConfig, and RequestContext's log prefix.
#include "base/log.h"

#include <algorithm>
#include <memory>

#include "absl/strings/ascii.h"
#include "absl/strings/str_format.h"
#include "spdlog/sinks/stdout_color_sinks.h"

namespace deltaserve::base {
namespace {

constexpr size_t kMaxPrefixFieldChars = 128;

void AppendField(std::string& out, std::string_view key, std::string_view value) {
  out.append(key);
  out.push_back('=');
  if (value.empty()) {
    out.push_back('-');
    return;
  }
  const size_t n = std::min(value.size(), kMaxPrefixFieldChars);
  for (size_t i = 0; i < n; ++i) {
    const char c = value[i];
    out.push_back(c > ' ' && c < 0x7f ? c : '?');
  }
  if (value.size() > n) out.append("...");
}

}  // namespace

absl::StatusOr<spdlog::level::level_enum> ParseLogLevel(std::string_view name) {
  const std::string lower = absl::AsciiStrToLower(absl::string_view(name.data(), name.size()));
  if (lower == "trace") return spdlog::level::trace;
  if (lower == "debug") return spdlog::level::debug;
  if (lower == "info") return spdlog::level::info;
  if (lower == "warn" || lower == "warning") return spdlog::level::warn;
  if (lower == "error") return spdlog::level::err;
  if (lower == "critical") return spdlog::level::critical;
  if (lower == "off") return spdlog::level::off;
  return absl::InvalidArgumentError(absl::StrFormat(
      "log level: expected one of trace, debug, info, warn, error, critical, off; got '%s'", name));
}

absl::Status LogConfig::Validate() const {
  if (!ParseLogLevel(level).ok()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "LogConfig.level: expected one of trace, debug, info, warn, error, critical, off; "
        "got '%s'",
        level));
  }
  if (pattern.empty()) return absl::InvalidArgumentError("LogConfig.pattern is empty");
  return absl::OkStatus();
}

absl::Status ConfigureLogging(const LogConfig& config) {
  if (absl::Status status = config.Validate(); !status.ok()) return status;
  const spdlog::level::level_enum level = *ParseLogLevel(config.level);
  spdlog::sink_ptr sink;
  if (config.destination == LogDestination::kStdout) {
    sink = std::make_shared<spdlog::sinks::stdout_color_sink_mt>();
  } else {
    sink = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
  }
  auto logger = std::make_shared<spdlog::logger>("deltaserve", std::move(sink));
  logger->set_level(level);
  logger->set_pattern(config.pattern, spdlog::pattern_time_type::utc);
  // Warnings and errors reach the sink at once; the rest is flushed by the sink's own buffering.
  logger->flush_on(spdlog::level::warn);
  spdlog::set_default_logger(std::move(logger));
  return absl::OkStatus();
}

std::string RequestContext::LogPrefix() const {
  std::string out;
  out.reserve(64);
  AppendField(out, "req", request_id);
  out.push_back(' ');
  AppendField(out, "sess", session_id);
  out.push_back(' ');
  AppendField(out, "tenant", tenant);
  return out;
}

}  // namespace deltaserve::base
