// absl::Status <-> grpc::Status conversion and the canonical error constructors.
#include "services/common/grpc_status.h"

#include <string>

#include "absl/strings/str_format.h"

namespace deltaserve::services {

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  const int code = static_cast<int>(status.error_code());
  const absl::StatusCode absl_code =
      code > 0 && code <= static_cast<int>(absl::StatusCode::kUnauthenticated)
          ? static_cast<absl::StatusCode>(code)
          : absl::StatusCode::kUnknown;
  return absl::Status(absl_code, status.error_message());
}

absl::Status AnnotateStatus(const absl::Status& status, std::string_view context) {
  if (status.ok() || context.empty()) return status;
  return absl::Status(status.code(), absl::StrFormat("%s: %s", context, status.message()));
}

absl::Status BadRequestError(std::string_view message) {
  return absl::InvalidArgumentError(message.empty() ? "bad request" : std::string(message));
}

absl::Status UnknownSessionError(std::string_view session_id) {
  return absl::NotFoundError(absl::StrFormat("session '%s' not found", session_id));
}

absl::Status OtherTenantSessionError(std::string_view session_id) {
  return absl::PermissionDeniedError(
      absl::StrFormat("session '%s' belongs to another tenant", session_id));
}

absl::Status QueueFullError(std::string_view queue, int64_t capacity) {
  return absl::ResourceExhaustedError(
      absl::StrFormat("%s queue is full (capacity %d); retry later", queue, capacity));
}

absl::Status WorkerGoneError(std::string_view worker, std::string_view reason) {
  return absl::UnavailableError(absl::StrFormat("%s unavailable: %s", worker, reason));
}

absl::Status DeadlineError(std::string_view what) {
  return absl::DeadlineExceededError(absl::StrFormat("deadline exceeded: %s", what));
}

absl::Status ClientCancelledError(std::string_view what) {
  return absl::CancelledError(absl::StrFormat("cancelled by the client: %s", what));
}

absl::Status BugError(std::string_view message) {
  return absl::InternalError(absl::StrFormat("internal error (bug): %s", message));
}

absl::Status StaleSnapshotError(std::string_view session_id, std::string_view reason) {
  return absl::DataLossError(
      absl::StrFormat("snapshot of session '%s' unusable: %s", session_id, reason));
}

bool ShouldRecompute(const absl::Status& restore_status) {
  return restore_status.code() == absl::StatusCode::kDataLoss;
}

}  // namespace deltaserve::services
