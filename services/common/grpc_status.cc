// absl::Status <-> grpc::Status conversion and the canonical error constructors.
#include "services/common/grpc_status.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/cord.h"
#include "absl/strings/str_format.h"

namespace deltaserve::services {

namespace {

// google.rpc.Status {int32 code = 1; string message = 2; repeated google.protobuf.Any details = 3;}
// and google.protobuf.Any {string type_url = 1; bytes value = 2;}, written and read field by field.
constexpr uint32_t kLengthDelimited = 2;
constexpr uint32_t Tag(uint32_t field, uint32_t wire_type) { return (field << 3) | wire_type; }

void WriteBytes(google::protobuf::io::CodedOutputStream& out, uint32_t field, std::string_view bytes) {
  out.WriteTag(Tag(field, kLengthDelimited));
  out.WriteVarint32(static_cast<uint32_t>(bytes.size()));
  out.WriteRaw(bytes.data(), static_cast<int>(bytes.size()));
}

bool Carried(absl::string_view type_url) {
  return std::string_view(type_url.data(), type_url.size()).starts_with(kCarriedPayloadPrefix);
}

// The length-delimited fields of a message (others skipped): field number -> bytes. False where
// the bytes are not a well-formed message of varint and length-delimited fields.
bool ReadFields(std::string_view message, std::vector<std::pair<uint32_t, std::string>>& fields) {
  google::protobuf::io::CodedInputStream in(reinterpret_cast<const uint8_t*>(message.data()),
                                            static_cast<int>(message.size()));
  for (uint32_t tag = in.ReadTag(); tag != 0; tag = in.ReadTag()) {
    if ((tag & 7) == 0) {
      uint64_t ignored = 0;
      if (!in.ReadVarint64(&ignored)) return false;
    } else if ((tag & 7) == kLengthDelimited) {
      uint32_t size = 0;
      std::string bytes;
      if (!in.ReadVarint32(&size) || !in.ReadString(&bytes, static_cast<int>(size))) return false;
      fields.emplace_back(tag >> 3, std::move(bytes));
    } else {
      return false;
    }
  }
  return in.ConsumedEntireMessage();
}

}  // namespace

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

grpc::Status ToInternalGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  std::string details;
  {
    google::protobuf::io::StringOutputStream stream(&details);
    google::protobuf::io::CodedOutputStream out(&stream);
    status.ForEachPayload([&](absl::string_view type_url, const absl::Cord& value) {
      if (!Carried(type_url)) return;
      std::string any;
      {
        google::protobuf::io::StringOutputStream any_stream(&any);
        google::protobuf::io::CodedOutputStream any_out(&any_stream);
        WriteBytes(any_out, 1, std::string_view(type_url.data(), type_url.size()));
        WriteBytes(any_out, 2, std::string(value));
      }
      if (out.ByteCount() == 0) {
        out.WriteTag(Tag(1, 0));
        out.WriteVarint32(static_cast<uint32_t>(status.code()));
        WriteBytes(out, 2, std::string_view(status.message().data(), status.message().size()));
      }
      WriteBytes(out, 3, any);
    });
  }
  const auto code = static_cast<grpc::StatusCode>(status.code());
  if (details.empty()) return grpc::Status(code, std::string(status.message()));
  return grpc::Status(code, std::string(status.message()), details);
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  const int code = static_cast<int>(status.error_code());
  const absl::StatusCode absl_code =
      code > 0 && code <= static_cast<int>(absl::StatusCode::kUnauthenticated)
          ? static_cast<absl::StatusCode>(code)
          : absl::StatusCode::kUnknown;
  absl::Status result(absl_code, status.error_message());
  std::vector<std::pair<uint32_t, std::string>> fields;
  if (status.error_details().empty() || !ReadFields(status.error_details(), fields)) return result;
  for (const auto& [field, bytes] : fields) {
    std::vector<std::pair<uint32_t, std::string>> any;
    if (field != 3 || !ReadFields(bytes, any)) continue;
    std::string type_url, value;
    for (auto& [any_field, any_bytes] : any) {
      if (any_field == 1) type_url = std::move(any_bytes);
      if (any_field == 2) value = std::move(any_bytes);
    }
    if (Carried(type_url)) result.SetPayload(type_url, absl::Cord(value));
  }
  return result;
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
