// The public deltaserve.v1.Inference service: validates each call, hands Generate to the engine
// and streams its tokens back, and answers session and model queries. Handlers never compute;
// they wait on the engine and watch for the client going away.
#pragma once

#include "deltaserve/v1/inference.grpc.pb.h"
#include "services/common/server_config.h"
#include "services/router/engine_core.h"
#include "services/session_store/store_client.h"

namespace deltaserve::services {

class InferenceService final : public v1::Inference::Service {
 public:
  // `store` may be null (no sessions). Nothing is owned.
  InferenceService(EngineCore& engine, StoreClient* store, const GrpcServerConfig& server);

  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override;
  grpc::Status GetSession(grpc::ServerContext* context, const v1::GetSessionRequest* request,
                          v1::Session* response) override;
  grpc::Status ListSessions(grpc::ServerContext* context, const v1::ListSessionsRequest* request,
                            v1::ListSessionsResponse* response) override;
  grpc::Status DeleteSession(grpc::ServerContext* context, const v1::DeleteSessionRequest* request,
                             v1::DeleteSessionResponse* response) override;
  grpc::Status ForkSession(grpc::ServerContext* context, const v1::ForkSessionRequest* request,
                           v1::Session* response) override;
  grpc::Status GetModelInfo(grpc::ServerContext* context, const v1::GetModelInfoRequest* request,
                            v1::ModelInfo* response) override;

 private:
  // The session as the public API shows it (history length from the manifest when asked).
  absl::Status DescribeSession(const std::string& tenant, const SessionInfo& info,
                               bool include_tokens, v1::Session* out);

  EngineCore& engine_;
  StoreClient* store_;
  GrpcServerConfig server_;
};

}  // namespace deltaserve::services
