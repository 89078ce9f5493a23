// absl::Status <-> grpc::Status conversion, and the canonical error constructors of the service
// edge (STYLE.md (c), "gRPC status mapping"). Only handlers and RPC clients use this file.
#pragma once

#include <grpcpp/support/status.h>

#include <cstdint>
#include <string_view>

#include "absl/status/status.h"

namespace deltaserve::services {

// Same numeric code (absl::StatusCode uses gRPC's numbers) and message; absl payloads are
// dropped. An OK status carries no message.
grpc::Status ToGrpcStatus(const absl::Status& status);

// absl payloads whose type URL starts with this cross the gRPC edge between our own processes.
inline constexpr std::string_view kCarriedPayloadPrefix = "type.googleapis.com/deltaserve.";

// ToGrpcStatus for the calls between our own processes: carried payloads go into error_details
// as a google.rpc.Status whose details are google.protobuf.Any (type URL, value); others are
// dropped.
grpc::Status ToInternalGrpcStatus(const absl::Status& status);

// Same numeric code and message, and the carried payloads of error_details; a code outside
// gRPC's 0..16 becomes UNKNOWN.
absl::Status FromGrpcStatus(const grpc::Status& status);

// Keeps the code and prefixes the message with `context` ("stage 1 (10.0.0.7:7001): ...").
absl::Status AnnotateStatus(const absl::Status& status, std::string_view context);

// The canonical mapping. Every constructor names its subject in the message.
// A malformed or out-of-range request: INVALID_ARGUMENT.
absl::Status BadRequestError(std::string_view message);
// A session this tenant does not have: NOT_FOUND.
absl::Status UnknownSessionError(std::string_view session_id);
// A session that exists but belongs to another tenant: PERMISSION_DENIED. The message does not
// name the owner.
absl::Status OtherTenantSessionError(std::string_view session_id);
// A bounded queue is full: RESOURCE_EXHAUSTED.
absl::Status QueueFullError(std::string_view queue, int64_t capacity);
// A worker (or the store) cannot be reached or went away mid-call: UNAVAILABLE.
absl::Status WorkerGoneError(std::string_view worker, std::string_view reason);
// The request's deadline passed: DEADLINE_EXCEEDED.
absl::Status DeadlineError(std::string_view what);
// The client cancelled or disconnected: CANCELLED.
absl::Status ClientCancelledError(std::string_view what);
// A broken invariant (a bug, never bad input): INTERNAL.
absl::Status BugError(std::string_view message);
// A stale or corrupt session snapshot: DATA_LOSS. Inside the cluster only: the router answers it
// by recomputing the history (see ShouldRecompute), so it never reaches a client.
absl::Status StaleSnapshotError(std::string_view session_id, std::string_view reason);

// True when a snapshot restore failed in a way the router recovers from by recomputing the
// session's history (DATA_LOSS).
bool ShouldRecompute(const absl::Status& restore_status);

}  // namespace deltaserve::services
