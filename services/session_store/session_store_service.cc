// The SessionStore gRPC handlers: convert, call the SnapshotStore, convert back.
#include "services/session_store/session_store_service.h"

#include <algorithm>
#include <climits>
#include <string>
#include <utility>

#include "services/common/grpc_status.h"
#include "services/session_store/proto_convert.h"

namespace deltaserve::services {

namespace pb = ::deltaserve::internal::v1;

int StoreMessageLimitBytes(int64_t max_part_bytes) {
  constexpr int64_t kEnvelopeRoomBytes = int64_t{1} << 20;  // ids, part info, proto framing
  return static_cast<int>(std::min<int64_t>(max_part_bytes + kEnvelopeRoomBytes, INT_MAX));
}

grpc::Status SessionStoreService::CreateSession(grpc::ServerContext* /*context*/,
                                                const pb::CreateSessionRequest* request,
                                                pb::SessionInfo* response) {
  absl::StatusOr<SessionInfo> info =
      store_.CreateSession(request->tenant(), request->session_id(), request->must_be_new());
  if (!info.ok()) return ToGrpcStatus(info.status());
  SessionInfoToProto(*info, response);
  return grpc::Status::OK;
}

grpc::Status SessionStoreService::PutPart(grpc::ServerContext* /*context*/,
                                          const pb::PutPartRequest* request,
                                          pb::PutPartResponse* response) {
  absl::StatusOr<PartKind> kind = PartKindFromProto(request->kind());
  if (!kind.ok()) return ToGrpcStatus(kind.status());
  // The sync API hands us a const request, so the payload is copied once here.
  absl::StatusOr<PartInfo> info = store_.PutPart(request->tenant(), request->session_id(),
                                                 request->part(), *kind, request->payload());
  if (!info.ok()) return ToGrpcStatus(info.status());
  PartInfoToProto(*info, response->mutable_part());
  return grpc::Status::OK;
}

grpc::Status SessionStoreService::GetPart(grpc::ServerContext* /*context*/,
                                          const pb::GetPartRequest* request,
                                          pb::GetPartResponse* response) {
  absl::StatusOr<Part> part =
      store_.GetPart(request->tenant(), request->session_id(), request->part());
  if (!part.ok()) return ToGrpcStatus(part.status());
  PartInfoToProto(part->info, response->mutable_part());
  response->set_payload(std::move(part->payload));
  return grpc::Status::OK;
}

grpc::Status SessionStoreService::StatSession(grpc::ServerContext* /*context*/,
                                              const pb::StatSessionRequest* request,
                                              pb::SessionInfo* response) {
  absl::StatusOr<SessionInfo> info = store_.StatSession(request->tenant(), request->session_id());
  if (!info.ok()) return ToGrpcStatus(info.status());
  SessionInfoToProto(*info, response);
  return grpc::Status::OK;
}

grpc::Status SessionStoreService::ListSessions(grpc::ServerContext* /*context*/,
                                               const pb::ListSessionsRequest* request,
                                               pb::ListSessionsResponse* response) {
  absl::StatusOr<SessionPage> page =
      store_.ListSessions(request->tenant(), request->page_size(), request->page_token());
  if (!page.ok()) return ToGrpcStatus(page.status());
  for (const SessionInfo& info : page->sessions) {
    SessionInfoToProto(info, response->add_sessions());
  }
  response->set_next_page_token(page->next_page_token);
  return grpc::Status::OK;
}

grpc::Status SessionStoreService::DeleteSession(grpc::ServerContext* /*context*/,
                                                const pb::DeleteSessionRequest* request,
                                                pb::DeleteSessionResponse* /*response*/) {
  return ToGrpcStatus(store_.DeleteSession(request->tenant(), request->session_id()));
}

grpc::Status SessionStoreService::CopySession(grpc::ServerContext* /*context*/,
                                              const pb::CopySessionRequest* request,
                                              pb::SessionInfo* response) {
  absl::StatusOr<SessionInfo> info =
      store_.CopySession(request->tenant(), request->session_id(), request->new_session_id());
  if (!info.ok()) return ToGrpcStatus(info.status());
  SessionInfoToProto(*info, response);
  return grpc::Status::OK;
}

}  // namespace deltaserve::services
