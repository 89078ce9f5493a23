// StoreClient: the session store as pipeline stages and the router see it, in process
// (LocalStoreClient over a SnapshotStore) or over gRPC (GrpcStoreClient). Same operations and
// status codes as SnapshotStore (snapshot_store.h).
#pragma once

#include <grpcpp/channel.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "deltaserve/internal/v1/session_store.grpc.pb.h"
#include "services/session_store/snapshot_store.h"
#include "services/session_store/store_types.h"

namespace deltaserve::services {

// Implementations are thread-safe.
class StoreClient {
 public:
  virtual ~StoreClient() = default;

  virtual absl::StatusOr<SessionInfo> CreateSession(std::string_view tenant,
                                                    std::string_view session_id,
                                                    bool must_be_new) = 0;
  virtual absl::StatusOr<PartInfo> PutPart(std::string_view tenant, std::string_view session_id,
                                           std::string_view part, PartKind kind,
                                           std::string payload) = 0;
  virtual absl::StatusOr<Part> GetPart(std::string_view tenant, std::string_view session_id,
                                       std::string_view part) = 0;
  virtual absl::StatusOr<SessionInfo> StatSession(std::string_view tenant,
                                                  std::string_view session_id) = 0;
  virtual absl::StatusOr<SessionPage> ListSessions(std::string_view tenant, int page_size,
                                                   std::string_view page_token) = 0;
  virtual absl::Status DeleteSession(std::string_view tenant, std::string_view session_id) = 0;
  virtual absl::StatusOr<SessionInfo> CopySession(std::string_view tenant,
                                                  std::string_view session_id,
                                                  std::string_view new_session_id) = 0;
};

using StoreClientPtr = std::unique_ptr<StoreClient>;

// Calls a SnapshotStore in this process. `store` is not owned and must outlive the client.
class LocalStoreClient final : public StoreClient {
 public:
  explicit LocalStoreClient(SnapshotStore& store) : store_(store) {}

  absl::StatusOr<SessionInfo> CreateSession(std::string_view tenant, std::string_view session_id,
                                            bool must_be_new) override;
  absl::StatusOr<PartInfo> PutPart(std::string_view tenant, std::string_view session_id,
                                   std::string_view part, PartKind kind,
                                   std::string payload) override;
  absl::StatusOr<Part> GetPart(std::string_view tenant, std::string_view session_id,
                               std::string_view part) override;
  absl::StatusOr<SessionInfo> StatSession(std::string_view tenant,
                                          std::string_view session_id) override;
  absl::StatusOr<SessionPage> ListSessions(std::string_view tenant, int page_size,
                                           std::string_view page_token) override;
  absl::Status DeleteSession(std::string_view tenant, std::string_view session_id) override;
  absl::StatusOr<SessionInfo> CopySession(std::string_view tenant, std::string_view session_id,
                                          std::string_view new_session_id) override;

 private:
  SnapshotStore& store_;
};

struct GrpcStoreClientOptions {
  // Deadline of each call, in milliseconds from its start; 0 = none. A call past it is
  // DEADLINE_EXCEEDED.
  int64_t timeout_ms = 30'000;
};

// Calls a SessionStore service. Errors the service returned keep their code and message; a
// store that cannot be reached is UNAVAILABLE, a call past its deadline DEADLINE_EXCEEDED.
class GrpcStoreClient final : public StoreClient {
 public:
  GrpcStoreClient(std::shared_ptr<grpc::Channel> channel, GrpcStoreClientOptions options = {});

  absl::StatusOr<SessionInfo> CreateSession(std::string_view tenant, std::string_view session_id,
                                            bool must_be_new) override;
  absl::StatusOr<PartInfo> PutPart(std::string_view tenant, std::string_view session_id,
                                   std::string_view part, PartKind kind,
                                   std::string payload) override;
  absl::StatusOr<Part> GetPart(std::string_view tenant, std::string_view session_id,
                               std::string_view part) override;
  absl::StatusOr<SessionInfo> StatSession(std::string_view tenant,
                                          std::string_view session_id) override;
  absl::StatusOr<SessionPage> ListSessions(std::string_view tenant, int page_size,
                                           std::string_view page_token) override;
  absl::Status DeleteSession(std::string_view tenant, std::string_view session_id) override;
  absl::StatusOr<SessionInfo> CopySession(std::string_view tenant, std::string_view session_id,
                                          std::string_view new_session_id) override;

 private:
  void PrepareContext(grpc::ClientContext& context) const;

  const GrpcStoreClientOptions options_;
  std::unique_ptr<deltaserve::internal::v1::SessionStore::Stub> stub_;
};

// An insecure channel to `target` ("host:port"). Parts travel in chunks of kStoreChunkBytes, so
// gRPC's default message limits serve parts of any size.
std::shared_ptr<grpc::Channel> CreateStoreChannel(const std::string& target);

}  // namespace deltaserve::services
