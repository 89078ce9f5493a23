// GrpcServerConfig validation, channel arguments and the effective deadline of a call.
#include "services/common/server_config.h"

#include <grpc/grpc.h>
#include <grpcpp/resource_quota.h>

#include <limits>
#include <string_view>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"

namespace deltaserve::services {
namespace {

constexpr int64_t kMaxChannelArg = std::numeric_limits<int32_t>::max();

absl::Status CheckRange(std::string_view field, int64_t value, int64_t min, int64_t max) {
  if (value >= min && value <= max) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrFormat("GrpcServerConfig.%s must be in [%d, %d], got %d", field, min, max, value));
}

absl::Status CheckListenAddress(const std::string& address) {
  constexpr std::string_view kField = "GrpcServerConfig.listen_address";
  if (address.empty()) return absl::InvalidArgumentError(absl::StrFormat("%s is empty", kField));
  if (address.rfind("unix:", 0) == 0) {
    if (address.size() == 5) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: 'unix:' needs a socket path, got '%s'", kField, address));
    }
    return absl::OkStatus();
  }
  const size_t colon = address.rfind(':');
  const std::string_view host =
      colon == std::string::npos ? std::string_view() : std::string_view(address).substr(0, colon);
  const std::string_view port =
      colon == std::string::npos ? std::string_view() : std::string_view(address).substr(colon + 1);
  int64_t port_number = -1;
  if (host.empty() || port.empty() ||
      !absl::SimpleAtoi(absl::string_view(port.data(), port.size()), &port_number) ||
      port_number < 0 || port_number > 65535) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s must be 'host:port' with a port in [0, 65535] (or 'unix:/path'), got '%s'", kField,
        address));
  }
  if (host.front() == '[' && host.back() != ']') {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: unterminated IPv6 bracket in '%s'", kField, address));
  }
  return absl::OkStatus();
}

int AsInt(int64_t value) { return static_cast<int>(value); }

}  // namespace

absl::Status GrpcServerConfig::Validate() const {
  if (absl::Status s = CheckListenAddress(listen_address); !s.ok()) return s;
  const struct {
    std::string_view field;
    int64_t value;
    int64_t min;
  } checks[] = {
      {"max_receive_message_bytes", max_receive_message_bytes, 1},
      {"max_send_message_bytes", max_send_message_bytes, 1},
      // Below 1 KiB not even the pseudo-headers of a call fit.
      {"max_metadata_bytes", max_metadata_bytes, 1024},
      {"max_concurrent_streams", max_concurrent_streams, 1},
      // The sync server's pollers draw on the same quota (up to 2), so fewer starves the handlers.
      {"max_threads", max_threads, 4},
      {"min_ping_interval_ms", min_ping_interval_ms, 0},
      {"max_ping_strikes", max_ping_strikes, 0},
      {"keepalive_time_ms", keepalive_time_ms, 1},
      {"keepalive_timeout_ms", keepalive_timeout_ms, 1},
      {"default_deadline_ms", default_deadline_ms, 1},
  };
  for (const auto& check : checks) {
    if (absl::Status s = CheckRange(check.field, check.value, check.min, kMaxChannelArg); !s.ok()) {
      return s;
    }
  }
  const struct {
    std::string_view field;
    const std::optional<int64_t>& value;
  } optional_checks[] = {
      {"max_connection_idle_ms", max_connection_idle_ms},
      {"max_connection_age_ms", max_connection_age_ms},
      {"max_connection_age_grace_ms", max_connection_age_grace_ms},
  };
  for (const auto& check : optional_checks) {
    if (!check.value.has_value()) continue;
    if (absl::Status s = CheckRange(check.field, *check.value, 1, kMaxChannelArg); !s.ok()) {
      return s;
    }
  }
  if (max_connection_age_grace_ms.has_value() && !max_connection_age_ms.has_value()) {
    return absl::InvalidArgumentError(
        "GrpcServerConfig.max_connection_age_grace_ms is set but max_connection_age_ms is not");
  }
  return absl::OkStatus();
}

void GrpcServerConfig::ApplyTo(grpc::ServerBuilder& builder) const {
  builder.SetMaxReceiveMessageSize(AsInt(max_receive_message_bytes));
  builder.SetMaxSendMessageSize(AsInt(max_send_message_bytes));
  builder.AddChannelArgument(GRPC_ARG_MAX_METADATA_SIZE, AsInt(max_metadata_bytes));
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, AsInt(max_concurrent_streams));
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                             AsInt(min_ping_interval_ms));
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, AsInt(max_ping_strikes));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS,
                             permit_keepalive_without_calls ? 1 : 0);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, AsInt(keepalive_time_ms));
  // gRPC stops its keepalive pings after 2 without data by default, which would leave a stream
  // waiting in the queue blind to a vanished client. Clients do not count ping strikes.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, AsInt(keepalive_timeout_ms));
  if (max_connection_idle_ms.has_value()) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS, AsInt(*max_connection_idle_ms));
  }
  if (max_connection_age_ms.has_value()) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS, AsInt(*max_connection_age_ms));
  }
  if (max_connection_age_grace_ms.has_value()) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS,
                               AsInt(*max_connection_age_grace_ms));
  }
  // gRPC binds with SO_REUSEPORT by default, so a second process on the same port would
  // silently share its traffic; without it that is a bind error.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  grpc::ResourceQuota quota("deltaserve-grpc-server");
  quota.SetMaxThreads(AsInt(max_threads));
  builder.SetResourceQuota(quota);
}

std::chrono::system_clock::time_point EffectiveDeadline(const grpc::ServerContext& context,
                                                        const GrpcServerConfig& config) {
  return EffectiveDeadline(context, config, std::chrono::system_clock::now());
}

std::chrono::system_clock::time_point EffectiveDeadline(const grpc::ServerContext& context,
                                                        const GrpcServerConfig& config,
                                                        std::chrono::system_clock::time_point now) {
  // gRPC reports "no deadline" as time_point::max().
  const std::chrono::system_clock::time_point client_deadline = context.deadline();
  if (client_deadline != std::chrono::system_clock::time_point::max()) return client_deadline;
  return now + std::chrono::milliseconds(config.default_deadline_ms);
}

}  // namespace deltaserve::services
