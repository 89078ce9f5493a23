// The scripted fake of deltaserve.v1.Inference used by client and CLI tests.
#include "tests/client/fake_inference_server.h"

#include "absl/strings/str_cat.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"

namespace deltaserve::testing {
namespace {

grpc::Status NotFound(const std::string& session_id) {
  return grpc::Status(grpc::StatusCode::NOT_FOUND,
                      absl::StrCat("session '", session_id, "' not found"));
}

v1::Session KnownSession(bool include_tokens) {
  v1::Session session;
  session.set_session_id(FakeInferenceService::kKnownSession);
  session.set_num_tokens(FakeInferenceService::kKnownSessionTokens);
  session.set_state_bytes(4096);
  session.set_tier(v1::STORAGE_TIER_MEMORY);
  session.set_created_unix_ms(1'700'000'000'000);
  session.set_last_used_unix_ms(1'700'000'001'000);
  if (include_tokens) {
    for (int32_t i = 0; i < FakeInferenceService::kKnownSessionTokens; ++i)
      session.add_token_ids(i + 1);
  }
  return session;
}

}  // namespace

grpc::Status FakeInferenceService::CheckTenant(const grpc::ServerContext& context) {
  const auto& metadata = context.client_metadata();
  const auto it = metadata.find("x-deltaserve-tenant");
  std::string tenant =
      it == metadata.end() ? "" : std::string(it->second.data(), it->second.size());
  absl::MutexLock lock(&mu_);
  last_tenant_ = tenant;
  if (tenant == kIntruderTenant) {
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                        absl::StrCat("tenant '", tenant, "' may not use this session"));
  }
  return grpc::Status::OK;
}

grpc::Status FakeInferenceService::Generate(grpc::ServerContext* context,
                                            const v1::GenerateRequest* request,
                                            grpc::ServerWriter<v1::GenerateResponse>* writer) {
  {
    absl::MutexLock lock(&mu_);
    last_generate_request_ = *request;
  }
  if (grpc::Status status = CheckTenant(*context); !status.ok()) return status;
  if (request->token_ids().empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "token_ids is empty");
  }
  std::string session_id;
  int64_t session_tokens = 0;
  switch (request->session_mode()) {
    case v1::SESSION_MODE_CREATE:
      session_id = request->session_id().empty() ? kCreatedSession : request->session_id();
      break;
    case v1::SESSION_MODE_CONTINUE:
      if (request->session_id() != kKnownSession) return NotFound(request->session_id());
      session_id = request->session_id();
      session_tokens = kKnownSessionTokens;
      break;
    default:
      break;
  }
  if (request->token_ids(0) == kEndlessToken) {
    // Streams until a write fails or the call is cancelled (client cancel or deadline).
    v1::GenerateResponse response;
    response.set_session_id(session_id);
    for (int32_t token = 100; !context->IsCancelled(); ++token) {
      response.clear_token_ids();
      response.add_token_ids(token);
      if (!writer->Write(response)) break;
      response.clear_session_id();
    }
    return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client");
  }
  const int32_t num_tokens =
      request->stopping().has_max_new_tokens() ? request->stopping().max_new_tokens() : 3;
  for (int32_t i = 0; i < num_tokens; ++i) {
    v1::GenerateResponse response;
    response.add_token_ids(100 + i);
    if (i == 0) response.set_session_id(session_id);
    if (i + 1 == num_tokens) {
      response.set_finish_reason(v1::FINISH_REASON_STOP);
      v1::Usage& usage = *response.mutable_usage();
      usage.set_prompt_tokens(request->token_ids_size());
      usage.set_session_tokens(session_tokens);
      usage.set_recomputed_tokens(1);
      usage.set_completion_tokens(num_tokens);
      v1::Timings& timings = *response.mutable_timings();
      timings.set_queue_ns(kQueueNs);
      timings.set_first_token_ns(kFirstTokenNs);
      timings.set_total_ns(kTotalNs);
    }
    if (!writer->Write(response)) return grpc::Status(grpc::StatusCode::CANCELLED, "write failed");
  }
  return grpc::Status::OK;
}

grpc::Status FakeInferenceService::GetSession(grpc::ServerContext* context,
                                              const v1::GetSessionRequest* request,
                                              v1::Session* response) {
  if (grpc::Status status = CheckTenant(*context); !status.ok()) return status;
  if (request->session_id() != kKnownSession) return NotFound(request->session_id());
  *response = KnownSession(request->include_tokens());
  return grpc::Status::OK;
}

grpc::Status FakeInferenceService::ListSessions(grpc::ServerContext* context,
                                                const v1::ListSessionsRequest* request,
                                                v1::ListSessionsResponse* response) {
  if (grpc::Status status = CheckTenant(*context); !status.ok()) return status;
  if (request->page_size() < 0) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "page_size must be >= 0");
  }
  *response->add_sessions() = KnownSession(false);
  v1::Session& other = *response->add_sessions();
  other.set_session_id("other");
  other.set_tier(v1::STORAGE_TIER_DISK);
  response->set_next_page_token("next");
  return grpc::Status::OK;
}

grpc::Status FakeInferenceService::DeleteSession(grpc::ServerContext* context,
                                                 const v1::DeleteSessionRequest* request,
                                                 v1::DeleteSessionResponse*) {
  if (grpc::Status status = CheckTenant(*context); !status.ok()) return status;
  if (request->session_id() != kKnownSession) return NotFound(request->session_id());
  return grpc::Status::OK;
}

grpc::Status FakeInferenceService::ForkSession(grpc::ServerContext* context,
                                               const v1::ForkSessionRequest* request,
                                               v1::Session* response) {
  if (grpc::Status status = CheckTenant(*context); !status.ok()) return status;
  if (request->session_id() != kKnownSession) return NotFound(request->session_id());
  *response = KnownSession(false);
  response->set_session_id(request->new_session_id().empty() ? "fork-1"
                                                             : request->new_session_id());
  return grpc::Status::OK;
}

grpc::Status FakeInferenceService::GetModelInfo(grpc::ServerContext* context,
                                                const v1::GetModelInfoRequest*,
                                                v1::ModelInfo* response) {
  if (grpc::Status status = CheckTenant(*context); !status.ok()) return status;
  response->set_model_type("kimi_linear");
  response->set_vocab_size(512);
  response->set_num_layers(4);
  response->set_num_kda_layers(3);
  response->set_num_mla_layers(1);
  response->set_num_experts(8);
  response->set_num_experts_per_token(2);
  response->add_eos_token_ids(1);
  response->add_eos_token_ids(2);
  response->set_max_context_tokens(4096);
  response->set_fingerprint("abc123");
  response->set_max_prompt_tokens(2048);
  response->set_max_new_tokens_limit(1024);
  return grpc::Status::OK;
}

std::string FakeInferenceService::last_tenant() const {
  absl::MutexLock lock(&mu_);
  return last_tenant_;
}

v1::GenerateRequest FakeInferenceService::last_generate_request() const {
  absl::MutexLock lock(&mu_);
  return last_generate_request_;
}

std::unique_ptr<FakeInferenceServer> FakeInferenceServer::Start() {
  std::unique_ptr<FakeInferenceServer> fake(new FakeInferenceServer());
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&fake->service_);
  fake->server_ = builder.BuildAndStart();
  if (fake->server_ == nullptr || port == 0) return nullptr;
  fake->address_ = absl::StrCat("127.0.0.1:", port);
  return fake;
}

FakeInferenceServer::~FakeInferenceServer() {
  // An immediate deadline cancels calls still running (an endless Generate) instead of waiting.
  if (server_ != nullptr) server_->Shutdown(std::chrono::system_clock::now());
}

}  // namespace deltaserve::testing
