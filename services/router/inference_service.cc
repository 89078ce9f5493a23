#include "services/router/inference_service.h"

#include <algorithm>
#include <chrono>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/status_macros.h"
#include "deltaserve/internal/v1/session_manifest.pb.h"
#include "services/common/grpc_status.h"
#include "services/common/tenancy.h"
#include "services/router/validation.h"

namespace deltaserve::services {
namespace {

// How often a waiting Generate handler checks whether its client went away.
constexpr auto kCancellationPoll = std::chrono::milliseconds(20);

std::chrono::steady_clock::time_point ToSteady(std::chrono::system_clock::time_point deadline) {
  const auto now_system = std::chrono::system_clock::now();
  const auto now_steady = std::chrono::steady_clock::now();
  if (deadline <= now_system) return now_steady;
  const auto left = deadline - now_system;
  if (left > std::chrono::hours(24 * 365)) return std::chrono::steady_clock::time_point::max();
  return now_steady + std::chrono::duration_cast<std::chrono::steady_clock::duration>(left);
}

// Holds a session against new requests for the length of a delete or fork.
class SessionReservation {
 public:
  SessionReservation(EngineCore& engine, std::string tenant, std::string session_id)
      : engine_(engine), tenant_(std::move(tenant)), session_id_(std::move(session_id)),
        held_(engine.ReserveSession(tenant_, session_id_)) {}
  ~SessionReservation() {
    if (held_) engine_.ReleaseSession(tenant_, session_id_);
  }
  absl::Status status() const {
    if (held_) return absl::OkStatus();
    return absl::AbortedError(absl::StrCat("session ", session_id_, " has a request in flight"));
  }

 private:
  EngineCore& engine_;
  std::string tenant_;
  std::string session_id_;
  bool held_;
};

absl::Status RequireStore(const StoreClient* store) {
  if (store == nullptr) return absl::FailedPreconditionError("this server keeps no sessions");
  return absl::OkStatus();
}

}  // namespace

InferenceService::InferenceService(EngineCore& engine, StoreClient* store,
                                   const GrpcServerConfig& server)
    : engine_(engine), store_(store), server_(server) {}

grpc::Status InferenceService::Generate(grpc::ServerContext* context,
                                        const v1::GenerateRequest* request,
                                        grpc::ServerWriter<v1::GenerateResponse>* writer) {
  absl::StatusOr<std::string> tenant = TenantOf(*context);
  if (!tenant.ok()) return ToGrpcStatus(tenant.status());
  absl::StatusOr<RouterRequest> validated =
      ValidateGenerateRequest(*request, *tenant, engine_.config(), engine_.model().config,
                              engine_.model().max_context);
  if (!validated.ok()) return ToGrpcStatus(validated.status());
  validated->deadline = ToSteady(EffectiveDeadline(*context, server_));
  absl::StatusOr<std::shared_ptr<RequestStream>> stream = engine_.Submit(std::move(*validated));
  if (!stream.ok()) return ToGrpcStatus(stream.status());

  for (;;) {
    RequestStream::Update update = (*stream)->Wait(std::chrono::steady_clock::now() + kCancellationPoll);
    if (context->IsCancelled()) {
      (*stream)->Cancel();
      return grpc::Status(grpc::StatusCode::CANCELLED, "the client cancelled the request");
    }
    const bool has_news = !update.tokens.empty() || !update.session_id.empty();
    if (update.finished && !update.outcome.status.ok()) {
      if (has_news) {
        v1::GenerateResponse partial;
        partial.mutable_token_ids()->Assign(update.tokens.begin(), update.tokens.end());
        partial.set_session_id(update.session_id);
        writer->Write(partial);
      }
      return ToGrpcStatus(update.outcome.status);
    }
    if (!has_news && !update.finished) continue;
    v1::GenerateResponse response;
    response.mutable_token_ids()->Assign(update.tokens.begin(), update.tokens.end());
    response.set_session_id(update.session_id);
    if (update.finished) {
      response.set_finish_reason(update.outcome.finish_reason);
      *response.mutable_usage() = update.outcome.usage;
      *response.mutable_timings() = update.outcome.timings;
    }
    if (!writer->Write(response)) {
      (*stream)->Cancel();
      return grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
    }
    if (update.finished) return grpc::Status::OK;
  }
}

absl::Status InferenceService::DescribeSession(const std::string& tenant, const SessionInfo& info,
                                               bool include_tokens, v1::Session* out) {
  out->set_session_id(info.session_id);
  out->set_created_unix_ms(info.created_unix_ms);
  out->set_last_used_unix_ms(info.last_used_unix_ms);
  int64_t bytes = 0;
  bool on_disk_only = false;
  bool has_manifest = false;
  for (const PartInfo& part : info.parts) {
    bytes += part.bytes;
    on_disk_only = on_disk_only || part.tier == Tier::kDisk;
    has_manifest = has_manifest || part.name == kManifestPart;
  }
  out->set_state_bytes(bytes);
  out->set_tier(on_disk_only ? v1::STORAGE_TIER_DISK : v1::STORAGE_TIER_MEMORY);
  if (!has_manifest) return absl::OkStatus();  // no completed turn yet
  DS_ASSIGN_OR_RETURN(Part manifest_part, store_->GetPart(tenant, info.session_id, kManifestPart));
  internal::v1::SessionManifest manifest;
  if (!manifest.ParseFromString(manifest_part.payload)) {
    return absl::DataLossError(absl::StrCat("session ", info.session_id, " has a damaged manifest"));
  }
  out->set_num_tokens(manifest.token_ids_size());
  if (include_tokens) *out->mutable_token_ids() = manifest.token_ids();
  return absl::OkStatus();
}

grpc::Status InferenceService::GetSession(grpc::ServerContext* context,
                                          const v1::GetSessionRequest* request, v1::Session* response) {
  absl::StatusOr<std::string> tenant = TenantOf(*context);
  if (!tenant.ok()) return ToGrpcStatus(tenant.status());
  if (absl::Status s = RequireStore(store_); !s.ok()) return ToGrpcStatus(s);
  if (absl::Status s = ValidateSessionId(request->session_id()); !s.ok()) return ToGrpcStatus(s);
  absl::StatusOr<SessionInfo> info = store_->StatSession(*tenant, request->session_id());
  if (!info.ok()) return ToGrpcStatus(info.status());
  return ToGrpcStatus(DescribeSession(*tenant, *info, request->include_tokens(), response));
}

grpc::Status InferenceService::ListSessions(grpc::ServerContext* context,
                                            const v1::ListSessionsRequest* request,
                                            v1::ListSessionsResponse* response) {
  absl::StatusOr<std::string> tenant = TenantOf(*context);
  if (!tenant.ok()) return ToGrpcStatus(tenant.status());
  if (absl::Status s = RequireStore(store_); !s.ok()) return ToGrpcStatus(s);
  const int page_size = request->page_size() == 0 ? 100 : request->page_size();
  if (page_size < 1 || page_size > 1000) {
    return ToGrpcStatus(absl::InvalidArgumentError(
        absl::StrCat("page_size must be in [1, 1000], got ", request->page_size())));
  }
  absl::StatusOr<SessionPage> page = store_->ListSessions(*tenant, page_size, request->page_token());
  if (!page.ok()) return ToGrpcStatus(page.status());
  for (const SessionInfo& info : page->sessions) {
    v1::Session session;
    const absl::Status s = DescribeSession(*tenant, info, false, &session);
    if (s.code() == absl::StatusCode::kNotFound) continue;  // expired or deleted meanwhile
    if (!s.ok()) return ToGrpcStatus(s);
    *response->add_sessions() = std::move(session);
  }
  response->set_next_page_token(page->next_page_token);
  return grpc::Status::OK;
}

grpc::Status InferenceService::DeleteSession(grpc::ServerContext* context,
                                             const v1::DeleteSessionRequest* request,
                                             v1::DeleteSessionResponse*) {
  absl::StatusOr<std::string> tenant = TenantOf(*context);
  if (!tenant.ok()) return ToGrpcStatus(tenant.status());
  if (absl::Status s = RequireStore(store_); !s.ok()) return ToGrpcStatus(s);
  if (absl::Status s = ValidateSessionId(request->session_id()); !s.ok()) return ToGrpcStatus(s);
  const SessionReservation reservation(engine_, *tenant, request->session_id());
  if (!reservation.status().ok()) return ToGrpcStatus(reservation.status());
  return ToGrpcStatus(store_->DeleteSession(*tenant, request->session_id()));
}

grpc::Status InferenceService::ForkSession(grpc::ServerContext* context,
                                           const v1::ForkSessionRequest* request,
                                           v1::Session* response) {
  absl::StatusOr<std::string> tenant = TenantOf(*context);
  if (!tenant.ok()) return ToGrpcStatus(tenant.status());
  if (absl::Status s = RequireStore(store_); !s.ok()) return ToGrpcStatus(s);
  if (absl::Status s = ValidateSessionId(request->session_id()); !s.ok()) return ToGrpcStatus(s);
  const std::string new_id =
      request->new_session_id().empty() ? NewSessionId() : request->new_session_id();
  if (absl::Status s = ValidateSessionId(new_id); !s.ok()) return ToGrpcStatus(s);
  const SessionReservation source(engine_, *tenant, request->session_id());
  if (!source.status().ok()) return ToGrpcStatus(source.status());
  const SessionReservation target(engine_, *tenant, new_id);
  if (!target.status().ok()) return ToGrpcStatus(target.status());
  absl::StatusOr<SessionInfo> info = store_->CopySession(*tenant, request->session_id(), new_id);
  if (!info.ok()) return ToGrpcStatus(info.status());
  return ToGrpcStatus(DescribeSession(*tenant, *info, false, response));
}

grpc::Status InferenceService::GetModelInfo(grpc::ServerContext*, const v1::GetModelInfoRequest*,
                                            v1::ModelInfo* response) {
  const model::KimiLinearConfig& c = engine_.model().config;
  response->set_model_type("kimi_linear");
  response->set_vocab_size(c.vocab_size);
  response->set_num_layers(c.num_layers);
  response->set_num_kda_layers(std::count(c.mixer_kinds.begin(), c.mixer_kinds.end(), model::MixerKind::kKda));
  response->set_num_mla_layers(std::count(c.mixer_kinds.begin(), c.mixer_kinds.end(), model::MixerKind::kMla));
  response->set_num_experts(c.num_experts);
  response->set_num_experts_per_token(c.num_experts_per_token);
  for (int64_t eos : c.eos_token_ids) response->add_eos_token_ids(static_cast<int32_t>(eos));
  response->set_max_context_tokens(engine_.model().max_context);
  response->set_fingerprint(absl::StrFormat("%016x", engine_.model().fingerprint));
  response->set_max_prompt_tokens(engine_.config().max_prompt_tokens);
  response->set_max_new_tokens_limit(engine_.config().max_new_tokens_limit);
  return grpc::Status::OK;
}

}  // namespace deltaserve::services
