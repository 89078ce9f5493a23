// The deltaserve.internal.v1.SessionStore gRPC service (sync API) over a SnapshotStore: proto
// in, plain types to the store, absl::Status out as grpc::Status with the same code.
#pragma once

#include <grpcpp/grpcpp.h>

#include "deltaserve/internal/v1/session_store.grpc.pb.h"
#include "services/session_store/snapshot_store.h"

namespace deltaserve::services {

// Thread-safe (the store is). `store` is not owned and must outlive the service.
class SessionStoreService final : public deltaserve::internal::v1::SessionStore::Service {
 public:
  explicit SessionStoreService(SnapshotStore& store) : store_(store) {}

  grpc::Status CreateSession(grpc::ServerContext* context,
                             const deltaserve::internal::v1::CreateSessionRequest* request,
                             deltaserve::internal::v1::SessionInfo* response) override;
  // Assembles the chunks in memory, then stores the part. The ids, the part name and the first
  // chunk's total_bytes (against the store's max_part_bytes) are checked before any payload is
  // kept, and the stream must carry exactly total_bytes.
  grpc::Status PutPart(grpc::ServerContext* context,
                       grpc::ServerReader<deltaserve::internal::v1::PutPartRequest>* reader,
                       deltaserve::internal::v1::PutPartResponse* response) override;
  grpc::Status GetPart(grpc::ServerContext* context,
                       const deltaserve::internal::v1::GetPartRequest* request,
                       grpc::ServerWriter<deltaserve::internal::v1::GetPartResponse>* writer) override;
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
