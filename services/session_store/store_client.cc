// LocalStoreClient (a direct call) and GrpcStoreClient (proto conversion over a stub).
#include "services/session_store/store_client.h"

#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>

#include <chrono>
#include <memory>
#include <utility>

#include "absl/strings/str_format.h"
#include "services/common/grpc_status.h"
#include "services/session_store/proto_convert.h"
#include "services/session_store/store_options.h"

namespace deltaserve::services {

namespace pb = ::deltaserve::internal::v1;

namespace {

// The service's own errors keep code and message; transport failures (UNAVAILABLE,
// DEADLINE_EXCEEDED) come from gRPC itself. Either way the method is named.
absl::Status CallStatus(const grpc::Status& status, const char* method) {
  return AnnotateStatus(FromGrpcStatus(status), absl::StrFormat("session store %s", method));
}

}  // namespace

absl::StatusOr<SessionInfo> LocalStoreClient::CreateSession(std::string_view tenant,
                                                            std::string_view session_id,
                                                            bool must_be_new) {
  return store_.CreateSession(tenant, session_id, must_be_new);
}

absl::StatusOr<PartInfo> LocalStoreClient::PutPart(std::string_view tenant,
                                                   std::string_view session_id,
                                                   std::string_view part, PartKind kind,
                                                   std::string payload) {
  return store_.PutPart(tenant, session_id, part, kind, std::move(payload));
}

absl::StatusOr<Part> LocalStoreClient::GetPart(std::string_view tenant, std::string_view session_id,
                                               std::string_view part) {
  return store_.GetPart(tenant, session_id, part);
}

absl::StatusOr<SessionInfo> LocalStoreClient::StatSession(std::string_view tenant,
                                                          std::string_view session_id) {
  return store_.StatSession(tenant, session_id);
}

absl::StatusOr<SessionPage> LocalStoreClient::ListSessions(std::string_view tenant, int page_size,
                                                           std::string_view page_token) {
  return store_.ListSessions(tenant, page_size, page_token);
}

absl::Status LocalStoreClient::DeleteSession(std::string_view tenant, std::string_view session_id) {
  return store_.DeleteSession(tenant, session_id);
}

absl::StatusOr<SessionInfo> LocalStoreClient::CopySession(std::string_view tenant,
                                                          std::string_view session_id,
                                                          std::string_view new_session_id) {
  return store_.CopySession(tenant, session_id, new_session_id);
}

GrpcStoreClient::GrpcStoreClient(std::shared_ptr<grpc::Channel> channel,
                                 GrpcStoreClientOptions options)
    : options_(options), stub_(pb::SessionStore::NewStub(std::move(channel))) {}

void GrpcStoreClient::PrepareContext(grpc::ClientContext& context) const {
  if (options_.timeout_ms > 0) {
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::milliseconds(options_.timeout_ms));
  }
}

absl::StatusOr<SessionInfo> GrpcStoreClient::CreateSession(std::string_view tenant,
                                                           std::string_view session_id,
                                                           bool must_be_new) {
  pb::CreateSessionRequest request;
  request.set_tenant(std::string(tenant));
  request.set_session_id(std::string(session_id));
  request.set_must_be_new(must_be_new);
  pb::SessionInfo response;
  grpc::ClientContext context;
  PrepareContext(context);
  const grpc::Status status = stub_->CreateSession(&context, request, &response);
  if (!status.ok()) return CallStatus(status, "CreateSession");
  return SessionInfoFromProto(response);
}

absl::StatusOr<PartInfo> GrpcStoreClient::PutPart(std::string_view tenant,
                                                  std::string_view session_id,
                                                  std::string_view part, PartKind kind,
                                                  std::string payload) {
  pb::PutPartResponse response;
  grpc::ClientContext context;
  PrepareContext(context);
  std::unique_ptr<grpc::ClientWriter<pb::PutPartRequest>> writer = stub_->PutPart(&context, &response);
  pb::PutPartRequest chunk;
  chunk.set_tenant(std::string(tenant));
  chunk.set_session_id(std::string(session_id));
  chunk.set_part(std::string(part));
  chunk.set_kind(PartKindToProto(kind));
  chunk.set_total_bytes(static_cast<int64_t>(payload.size()));
  // A failed write means the store ended the call: Finish has its status.
  WritePayloadInChunks(payload, chunk, [&writer](const pb::PutPartRequest& message) { return writer->Write(message); });
  writer->WritesDone();
  const grpc::Status status = writer->Finish();
  if (!status.ok()) return CallStatus(status, "PutPart");
  return PartInfoFromProto(response.part());
}

absl::StatusOr<Part> GrpcStoreClient::GetPart(std::string_view tenant, std::string_view session_id,
                                              std::string_view part) {
  pb::GetPartRequest request;
  request.set_tenant(std::string(tenant));
  request.set_session_id(std::string(session_id));
  request.set_part(std::string(part));
  grpc::ClientContext context;
  PrepareContext(context);
  std::unique_ptr<grpc::ClientReader<pb::GetPartResponse>> reader = stub_->GetPart(&context, request);
  pb::GetPartResponse chunk;
  Part result;
  bool got_info = false, well_formed = true;
  while (reader->Read(&chunk)) {
    if (!got_info) {
      got_info = true;
      result.info = PartInfoFromProto(chunk.part());
      well_formed = result.info.bytes >= 0 && result.info.bytes <= kMaxPartBytesLimit;
      if (well_formed) result.payload.reserve(static_cast<size_t>(result.info.bytes));
    }
    if (!well_formed || chunk.payload().size() > static_cast<size_t>(result.info.bytes) - result.payload.size()) {
      well_formed = false;
      context.TryCancel();
      break;
    }
    result.payload.append(chunk.payload());
  }
  const grpc::Status status = reader->Finish();
  if (well_formed && !status.ok()) return CallStatus(status, "GetPart");
  if (!got_info || !well_formed || result.payload.size() != static_cast<size_t>(result.info.bytes)) {
    return absl::DataLossError(
        absl::StrFormat("session store GetPart: part '%s' arrived with %d payload bytes, not the %d its info announces",
                        part, result.payload.size(), result.info.bytes));
  }
  return result;
}

absl::StatusOr<SessionInfo> GrpcStoreClient::StatSession(std::string_view tenant,
                                                         std::string_view session_id) {
  pb::StatSessionRequest request;
  request.set_tenant(std::string(tenant));
  request.set_session_id(std::string(session_id));
  pb::SessionInfo response;
  grpc::ClientContext context;
  PrepareContext(context);
  const grpc::Status status = stub_->StatSession(&context, request, &response);
  if (!status.ok()) return CallStatus(status, "StatSession");
  return SessionInfoFromProto(response);
}

absl::StatusOr<SessionPage> GrpcStoreClient::ListSessions(std::string_view tenant, int page_size,
                                                          std::string_view page_token) {
  pb::ListSessionsRequest request;
  request.set_tenant(std::string(tenant));
  request.set_page_size(page_size);
  request.set_page_token(std::string(page_token));
  pb::ListSessionsResponse response;
  grpc::ClientContext context;
  PrepareContext(context);
  const grpc::Status status = stub_->ListSessions(&context, request, &response);
  if (!status.ok()) return CallStatus(status, "ListSessions");
  SessionPage page;
  page.sessions.reserve(static_cast<size_t>(response.sessions_size()));
  for (const pb::SessionInfo& info : response.sessions()) {
    page.sessions.push_back(SessionInfoFromProto(info));
  }
  page.next_page_token = response.next_page_token();
  return page;
}

absl::Status GrpcStoreClient::DeleteSession(std::string_view tenant, std::string_view session_id) {
  pb::DeleteSessionRequest request;
  request.set_tenant(std::string(tenant));
  request.set_session_id(std::string(session_id));
  pb::DeleteSessionResponse response;
  grpc::ClientContext context;
  PrepareContext(context);
  return CallStatus(stub_->DeleteSession(&context, request, &response), "DeleteSession");
}

absl::StatusOr<SessionInfo> GrpcStoreClient::CopySession(std::string_view tenant,
                                                         std::string_view session_id,
                                                         std::string_view new_session_id) {
  pb::CopySessionRequest request;
  request.set_tenant(std::string(tenant));
  request.set_session_id(std::string(session_id));
  request.set_new_session_id(std::string(new_session_id));
  pb::SessionInfo response;
  grpc::ClientContext context;
  PrepareContext(context);
  const grpc::Status status = stub_->CopySession(&context, request, &response);
  if (!status.ok()) return CallStatus(status, "CopySession");
  return SessionInfoFromProto(response);
}

std::shared_ptr<grpc::Channel> CreateStoreChannel(const std::string& target) {
  return grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
}

}  // namespace deltaserve::services
