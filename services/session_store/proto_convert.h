// Conversions between the session store's plain types (store_types.h) and its wire messages
// (deltaserve.internal.v1); used only by the gRPC service and the gRPC client.
#pragma once

#include "absl/status/statusor.h"
#include "deltaserve/internal/v1/session_store.pb.h"
#include "services/session_store/store_types.h"

namespace deltaserve::services {

// INVALID_ARGUMENT for PART_KIND_UNSPECIFIED and values this build does not know.
absl::StatusOr<PartKind> PartKindFromProto(deltaserve::internal::v1::PartKind kind);
deltaserve::internal::v1::PartKind PartKindToProto(PartKind kind);

void PartInfoToProto(const PartInfo& info, deltaserve::internal::v1::PartInfo* out);
PartInfo PartInfoFromProto(const deltaserve::internal::v1::PartInfo& proto);
void SessionInfoToProto(const SessionInfo& info, deltaserve::internal::v1::SessionInfo* out);
SessionInfo SessionInfoFromProto(const deltaserve::internal::v1::SessionInfo& proto);

}  // namespace deltaserve::services
