// A scripted deltaserve.v1.Inference server on 127.0.0.1 (port 0) for client and CLI tests,
// with gRPC's default health service enabled.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "deltaserve/v1/inference.grpc.pb.h"
#include "grpcpp/server.h"

namespace deltaserve::testing {

// Scripted answers (every call as tenant "intruder" fails with PERMISSION_DENIED first):
// - Generate streams tokens 100, 101, ... one per message, max_new_tokens of them (default 3);
//   the last message carries finish STOP and fixed usage/timings (kQueueNs...). Empty token_ids:
//   INVALID_ARGUMENT. CONTINUE of a session other than kKnownSession: NOT_FOUND. A prompt whose
//   first id is kEndlessToken streams until the call is cancelled or its deadline passes.
// - GetSession/DeleteSession/ForkSession know only kKnownSession (others: NOT_FOUND).
// - ListSessions returns kKnownSession and "other" with next_page_token "next".
class FakeInferenceService final : public v1::Inference::Service {
 public:
  static constexpr char kKnownSession[] = "known";
  static constexpr char kCreatedSession[] = "sess-1";
  static constexpr char kIntruderTenant[] = "intruder";
  static constexpr int32_t kEndlessToken = 999;
  static constexpr int64_t kKnownSessionTokens = 7;
  static constexpr int64_t kQueueNs = 1'500'000;
  static constexpr int64_t kFirstTokenNs = 2'000'000;
  static constexpr int64_t kTotalNs = 5'250'000;

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

  // The tenant metadata of the latest call ("" when absent) and the latest Generate request.
  std::string last_tenant() const;
  v1::GenerateRequest last_generate_request() const;

 private:
  // Records the call's tenant; PERMISSION_DENIED for kIntruderTenant.
  grpc::Status CheckTenant(const grpc::ServerContext& context);

  mutable absl::Mutex mu_;
  std::string last_tenant_ ABSL_GUARDED_BY(mu_);
  v1::GenerateRequest last_generate_request_ ABSL_GUARDED_BY(mu_);
};

class FakeInferenceServer {
 public:
  // Starts on 127.0.0.1 with a kernel-chosen port; null if the server could not start.
  static std::unique_ptr<FakeInferenceServer> Start();
  ~FakeInferenceServer();

  // "127.0.0.1:<port>".
  const std::string& address() const { return address_; }
  FakeInferenceService& service() { return service_; }
  grpc::Server& server() { return *server_; }

 private:
  FakeInferenceServer() = default;

  FakeInferenceService service_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
};

}  // namespace deltaserve::testing
