// Conversions between the session store's plain types (store_types.h) and its wire messages
// (deltaserve.internal.v1); used only by the gRPC service and the gRPC client.
#pragma once

#include <algorithm>
#include <cstddef>
#include <string_view>

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

// Streams `payload` in messages of at most kStoreChunkBytes through `write` (false once the peer
// has ended the call): the first is `chunk` as the caller filled it (ids, part info), later ones
// carry payload only; an empty payload still sends the first. False where a write failed.
template <typename Message, typename Write>
bool WritePayloadInChunks(std::string_view payload, Message& chunk, Write&& write) {
  size_t offset = 0;
  do {
    const size_t n = std::min(kStoreChunkBytes, payload.size() - offset);
    chunk.set_payload(payload.data() + offset, n);
    if (!write(chunk)) return false;
    chunk.Clear();
    offset += n;
  } while (offset < payload.size());
  return true;
}

}  // namespace deltaserve::services
