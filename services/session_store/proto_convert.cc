// Conversions between the session store's plain types and its wire messages.
#include "services/session_store/proto_convert.h"

#include "absl/strings/str_format.h"

namespace deltaserve::services {

namespace pb = ::deltaserve::internal::v1;

absl::StatusOr<PartKind> PartKindFromProto(pb::PartKind kind) {
  switch (kind) {
    case pb::PART_KIND_STATE:
      return PartKind::kState;
    case pb::PART_KIND_BLOB:
      return PartKind::kBlob;
    default:
      return absl::InvalidArgumentError(absl::StrFormat(
          "part kind %d is not PART_KIND_STATE or PART_KIND_BLOB", static_cast<int>(kind)));
  }
}

pb::PartKind PartKindToProto(PartKind kind) {
  switch (kind) {
    case PartKind::kState:
      return pb::PART_KIND_STATE;
    case PartKind::kBlob:
      return pb::PART_KIND_BLOB;
  }
  return pb::PART_KIND_UNSPECIFIED;
}

void PartInfoToProto(const PartInfo& info, pb::PartInfo* out) {
  out->set_name(info.name);
  out->set_kind(PartKindToProto(info.kind));
  out->set_bytes(info.bytes);
  out->set_num_tokens(info.num_tokens);
  out->set_tier(info.tier == Tier::kMemory ? pb::TIER_MEMORY : pb::TIER_DISK);
  out->set_model_fingerprint(info.model_fingerprint);
  out->set_layer_begin(info.layer_begin);
  out->set_layer_end(info.layer_end);
}

PartInfo PartInfoFromProto(const pb::PartInfo& proto) {
  PartInfo info;
  info.name = proto.name();
  info.kind = proto.kind() == pb::PART_KIND_STATE ? PartKind::kState : PartKind::kBlob;
  info.bytes = proto.bytes();
  info.num_tokens = proto.num_tokens();
  info.tier = proto.tier() == pb::TIER_DISK ? Tier::kDisk : Tier::kMemory;
  info.model_fingerprint = proto.model_fingerprint();
  info.layer_begin = proto.layer_begin();
  info.layer_end = proto.layer_end();
  return info;
}

void SessionInfoToProto(const SessionInfo& info, pb::SessionInfo* out) {
  out->set_tenant(info.tenant);
  out->set_session_id(info.session_id);
  out->set_created_unix_ms(info.created_unix_ms);
  out->set_last_used_unix_ms(info.last_used_unix_ms);
  out->clear_parts();
  for (const PartInfo& part : info.parts) PartInfoToProto(part, out->add_parts());
}

SessionInfo SessionInfoFromProto(const pb::SessionInfo& proto) {
  SessionInfo info;
  info.tenant = proto.tenant();
  info.session_id = proto.session_id();
  info.created_unix_ms = proto.created_unix_ms();
  info.last_used_unix_ms = proto.last_used_unix_ms();
  info.parts.reserve(static_cast<size_t>(proto.parts_size()));
  for (const pb::PartInfo& part : proto.parts()) info.parts.push_back(PartInfoFromProto(part));
  return info;
}

}  // namespace deltaserve::services
