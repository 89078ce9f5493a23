// The deltaserve.internal.v1.SessionStore gRPC service (sync API) over a SnapshotStore: proto
// in, plain types to the store, absl::Status out as grpc::Status with the same code.
#pragma once

#include <grpcpp/grpcpp.h>

#include <cstdint>

#include "deltaserve/internal/v1/session_store.grpc.pb.h"
#include "services/session_store/snapshot_store.h"

namespace deltaserve::services {

// The largest gRPC message a store with parts of up to `max_part_bytes` sends or receives:
// pass it to ServerBuilder::SetMaxReceiveMessageSize/SetMaxSendMessageSize (gRPC's default
// receive limit is 4 MiB); clients use StoreChannelArguments (store_client.h).
int StoreMessageLimitBytes(int64_t max_part_bytes);

// Thread-safe (the store is). `store` is not owned and must outlive the service.
class SessionStoreService final : public deltaserve::internal::v1::SessionStore::Service {
 public:
  explicit SessionStoreService(SnapshotStore& store) : store_(store) {}

  grpc::Status CreateSession(grpc::ServerContext* context,
                             const deltaserve::internal::v1::CreateSessionRequest* request,
                             deltaserve::internal::v1::SessionInfo* response) override;
  grpc::Status PutPart(grpc::ServerContext* context,
                       const deltaserve::internal::v1::PutPartRequest* request,
                       deltaserve::internal::v1::PutPartResponse* response) override;
  grpc::Status GetPart(grpc::ServerContext* context,
                       const deltaserve::internal::v1::GetPartRequest* request,
                       deltaserve::internal::v1::GetPartResponse* response) override;
  grpc::Status StatSession(grpc::ServerContext* context,
                           const deltaserve::internal::v1::StatSessionRequest* request,
                           deltaserve::internal::v1::SessionInfo* response) override;
  grpc::Status ListSessions(grpc::ServerContext* context,
                            const deltaserve::internal::v1::ListSessionsRequest* request,
                            deltaserve::internal::v1::ListSessionsResponse* response) override;
  grpc::Status DeleteSession(grpc::ServerContext* context,
                             const deltaserve::internal::v1::DeleteSessionRequest* request,
                             deltaserve::internal::v1::DeleteSessionResponse* response) override;
  grpc::Status CopySession(grpc::ServerContext* context,
                           const deltaserve::internal::v1::CopySessionRequest* request,
                           deltaserve::internal::v1::SessionInfo* response) override;

 private:
  SnapshotStore& store_;
};

}  // namespace deltaserve::services
