// The two grpc.health.v1 messages (grpc/grpc doc/health-checking.md), encoded by hand: Debian
// ships no generated health proto, and compiling our own copy could clash with one linked in later.
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace deltaserve::client {

// The full method name of the standard health check.
inline constexpr char kHealthCheckMethod[] = "/grpc.health.v1.Health/Check";

// HealthCheckRequest { string service = 1; } in wire format.
std::string EncodeHealthCheckRequest(const std::string& service);

// HealthCheckResponse { ServingStatus status = 1; } from wire format: the status enum's number
// (0 when absent, as proto3 omits it). Unknown fields are skipped. Malformed bytes: DATA_LOSS.
absl::StatusOr<int> DecodeHealthCheckResponse(const std::string& bytes);

}  // namespace deltaserve::client
