// Wire-format encoding of grpc.health.v1 messages through protobuf's UnknownFieldSet.
#include "client/health_codec.h"

#include <cstdint>

#include "absl/strings/str_cat.h"
#include "google/protobuf/unknown_field_set.h"

namespace deltaserve::client {

std::string EncodeHealthCheckRequest(const std::string& service) {
  google::protobuf::UnknownFieldSet fields;
  // proto3 omits a field that holds its default.
  if (!service.empty()) fields.AddLengthDelimited(1, service);
  std::string bytes;
  fields.SerializeToString(&bytes);
  return bytes;
}

absl::StatusOr<int> DecodeHealthCheckResponse(const std::string& bytes) {
  google::protobuf::UnknownFieldSet fields;
  if (!fields.ParseFromString(bytes)) {
    return absl::DataLossError(
        absl::StrCat("malformed grpc.health.v1.HealthCheckResponse (", bytes.size(), " bytes)"));
  }
  int status = 0;
  for (int i = 0; i < fields.field_count(); ++i) {
    const google::protobuf::UnknownField& field = fields.field(i);
    if (field.number() != 1) continue;
    if (field.type() != google::protobuf::UnknownField::TYPE_VARINT) {
      return absl::DataLossError(
          absl::StrCat("grpc.health.v1.HealthCheckResponse.status has wire type ", field.type(),
                       ", expected a varint"));
    }
    // The last occurrence wins, as for any scalar field; enums are int32 on the wire.
    status = static_cast<int>(static_cast<int32_t>(field.varint()));
  }
  return status;
}

}  // namespace deltaserve::client
