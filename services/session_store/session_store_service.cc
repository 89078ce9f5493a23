// The SessionStore gRPC handlers: convert, call the SnapshotStore, convert back.
#include "services/session_store/session_store_service.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "services/common/grpc_status.h"
#include "services/session_store/proto_convert.h"
#include "services/session_store/store_messages.h"
#include "services/session_store/store_names.h"

namespace deltaserve::services {

namespace pb = ::deltaserve::internal::v1;

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
                                          grpc::ServerReader<pb::PutPartRequest>* reader,
                                          pb::PutPartResponse* response) {
  pb::PutPartRequest chunk;
  if (!reader->Read(&chunk)) {
    return ToGrpcStatus(absl::InvalidArgumentError("PutPart: the stream carried no chunk"));
  }
  absl::StatusOr<PartKind> kind = PartKindFromProto(chunk.kind());
  if (!kind.ok()) return ToGrpcStatus(kind.status());
  const std::string tenant = chunk.tenant(), session_id = chunk.session_id(), part = chunk.part();
  // The store's own checks, in its order, before any payload is kept.
  if (absl::Status ids = ValidateIds(tenant, session_id); !ids.ok()) return ToGrpcStatus(ids);
  if (absl::Status name = ValidatePartName(part); !name.ok()) return ToGrpcStatus(name);
  const std::string where = PartLabel(session_id, part);
  const int64_t total = chunk.total_bytes();
  if (total < 0) {
    return ToGrpcStatus(absl::InvalidArgumentError(absl::StrCat("PutPart: ", where, " announces ", total, " bytes")));
  }
  if (absl::Status size = CheckPartSize(where, total, store_.options().max_part_bytes); !size.ok()) {
    return ToGrpcStatus(size);
  }
  // Grown as chunks arrive: a stream that announces a large part and sends little costs little.
  constexpr int64_t kInitialReserveBytes = int64_t{64} << 20;
  std::string payload;
  payload.reserve(static_cast<size_t>(std::min(total, kInitialReserveBytes)));
  do {
    if (chunk.payload().size() > static_cast<size_t>(total) - payload.size()) {
      return ToGrpcStatus(absl::InvalidArgumentError(
          absl::StrCat("PutPart: ", where, " sent more than the ", total, " bytes it announced")));
    }
    payload.append(chunk.payload());
  } while (reader->Read(&chunk));
  if (payload.size() != static_cast<size_t>(total)) {
    return ToGrpcStatus(absl::InvalidArgumentError(absl::StrCat(
        "PutPart: ", where, " ended after ", payload.size(), " of the ", total, " bytes it announced")));
  }
  absl::StatusOr<PartInfo> info = store_.PutPart(tenant, session_id, part, *kind, std::move(payload));
  if (!info.ok()) return ToGrpcStatus(info.status());
  PartInfoToProto(*info, response->mutable_part());
  return grpc::Status::OK;
}

grpc::Status SessionStoreService::GetPart(grpc::ServerContext* /*context*/,
                                          const pb::GetPartRequest* request,
                                          grpc::ServerWriter<pb::GetPartResponse>* writer) {
  absl::StatusOr<SharedPart> part =
      store_.GetPartShared(request->tenant(), request->session_id(), request->part());
  if (!part.ok()) return ToGrpcStatus(part.status());
  pb::GetPartResponse chunk;
  PartInfoToProto(part->info, chunk.mutable_part());
  if (!WritePayloadInChunks(*part->payload, chunk,
                            [writer](const pb::GetPartResponse& message) { return writer->Write(message); })) {
    return ToGrpcStatus(absl::CancelledError("GetPart: the client stopped reading"));
  }
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
