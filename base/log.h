// Logging shared by every deltaserve process: spdlog set up from a typed LogConfig, and the
// RequestContext whose prefix (`req=… sess=… tenant=…`) begins every line about a request.
#pragma once

#include <chrono>
#include <stop_token>
#include <string>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "spdlog/spdlog.h"

namespace deltaserve::base {

// UTC time with milliseconds, level, thread id, message.
inline constexpr char kDefaultLogPattern[] = "%Y-%m-%dT%H:%M:%S.%eZ %l [%t] %v";

enum class LogDestination { kStderr, kStdout };

struct LogConfig {
  // trace, debug, info, warn (or warning), error, critical, off; case-insensitive.
  std::string level = "info";
  // spdlog pattern (github.com/gabime/spdlog/wiki/3.-Custom-formatting); times are UTC.
  std::string pattern = kDefaultLogPattern;
  LogDestination destination = LogDestination::kStderr;

  // INVALID_ARGUMENT naming the field when the level is unknown or the pattern empty.
  absl::Status Validate() const;
};

absl::StatusOr<spdlog::level::level_enum> ParseLogLevel(std::string_view name);

// Replaces spdlog's default logger with one writing to `config.destination`. Called once by
// `cli/` main before any thread logs; library code only logs, it never configures.
absl::Status ConfigureLogging(const LogConfig& config);

// What travels with one request through a process: ids for log lines, its deadline, and its
// cancellation. Copyable; a copy observes the same cancellation.
struct RequestContext {
  std::string request_id;  // assigned by the router
  std::string session_id;  // empty: no session
  std::string tenant;
  // Absolute deadline; max(): none.
  std::chrono::system_clock::time_point deadline = std::chrono::system_clock::time_point::max();
  // Requested once the client has gone (from the owner's std::stop_source); checked per step.
  std::stop_token cancellation;

  bool Cancelled() const { return cancellation.stop_requested(); }
  bool Expired(std::chrono::system_clock::time_point now) const { return now >= deadline; }

  // "req=<id> sess=<id> tenant=<id>": "-" for an empty field; characters other than printable
  // ASCII (and spaces) become '?', and each field is cut at 128 characters, so a client-chosen
  // id can neither forge log lines nor flood them.
  std::string LogPrefix() const;
};

// Request log lines. Never pass token ids or text at info level or above: log counts instead,
// and token contents only at debug.
template <typename... Args>
void LogRequest(spdlog::level::level_enum level, const RequestContext& context,
                spdlog::format_string_t<Args...> format, Args&&... args) {
  spdlog::logger* logger = spdlog::default_logger_raw();
  if (!logger->should_log(level)) return;
  logger->log(level, "{} {}", context.LogPrefix(),
              fmt::format(format, std::forward<Args>(args)...));
}

template <typename... Args>
void LogDebug(const RequestContext& context, spdlog::format_string_t<Args...> format,
              Args&&... args) {
  LogRequest(spdlog::level::debug, context, format, std::forward<Args>(args)...);
}

template <typename... Args>
void LogInfo(const RequestContext& context, spdlog::format_string_t<Args...> format,
             Args&&... args) {
  LogRequest(spdlog::level::info, context, format, std::forward<Args>(args)...);
}

template <typename... Args>
void LogWarn(const RequestContext& context, spdlog::format_string_t<Args...> format,
             Args&&... args) {
  LogRequest(spdlog::level::warn, context, format, std::forward<Args>(args)...);
}

template <typename... Args>
void LogError(const RequestContext& context, spdlog::format_string_t<Args...> format,
              Args&&... args) {
  LogRequest(spdlog::level::err, context, format, std::forward<Args>(args)...);
}

}  // namespace deltaserve::base
