// InferenceClient: unary calls, the Generate stream with cancellation, and the health check.
#include "client/inference_client.h"

#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "client/health_codec.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/slice.h"
#include "grpcpp/support/stub_options.h"

namespace deltaserve::client {
namespace {

// absl::StatusCode uses gRPC's code numbers (STYLE.md (a), Abseil).
absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

std::string ByteBufferToString(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!buffer.Dump(&slices).ok()) return out;
  for (const grpc::Slice& slice : slices) {
    out.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  }
  return out;
}

}  // namespace

void CallHandle::Cancel() {
  absl::MutexLock lock(&mu_);
  cancelled_ = true;
  if (context_ != nullptr) context_->TryCancel();
}

bool CallHandle::cancelled() const {
  absl::MutexLock lock(&mu_);
  return cancelled_;
}

void CallHandle::Attach(grpc::ClientContext* context) {
  absl::MutexLock lock(&mu_);
  context_ = context;
  // ClientContext remembers a cancel that comes before its call starts and applies it then.
  if (cancelled_) context_->TryCancel();
}

void CallHandle::Detach() {
  absl::MutexLock lock(&mu_);
  context_ = nullptr;
}

const char* ServingStatusName(ServingStatus status) {
  switch (status) {
    case ServingStatus::kUnknown:
      return "UNKNOWN";
    case ServingStatus::kServing:
      return "SERVING";
    case ServingStatus::kNotServing:
      return "NOT_SERVING";
    case ServingStatus::kServiceUnknown:
      return "SERVICE_UNKNOWN";
  }
  return "UNKNOWN";
}

InferenceClient::InferenceClient(std::shared_ptr<grpc::Channel> channel, ClientOptions options)
    : channel_(std::move(channel)),
      stub_(v1::Inference::NewStub(channel_)),
      options_(std::move(options)) {}

void InferenceClient::Prepare(grpc::ClientContext& context) const {
  if (!options_.tenant.empty()) context.AddMetadata(kTenantMetadataKey, options_.tenant);
  if (options_.timeout_ms > 0) {
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::milliseconds(options_.timeout_ms));
  }
}

absl::StatusOr<GenerateResult> InferenceClient::Generate(const v1::GenerateRequest& request,
                                                         const TokenCallback& on_tokens,
                                                         CallHandle* handle) {
  grpc::ClientContext context;
  Prepare(context);
  // Attached before the call starts so that a Cancel() racing the start is not lost.
  if (handle != nullptr) handle->Attach(&context);
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader =
      stub_->Generate(&context, request);
  GenerateResult result;
  bool finished = false;
  v1::GenerateResponse response;
  while (reader->Read(&response)) {
    if (result.session_id.empty()) result.session_id = response.session_id();
    const auto& ids = response.token_ids();
    result.token_ids.insert(result.token_ids.end(), ids.begin(), ids.end());
    if (on_tokens && !ids.empty()) on_tokens(std::span<const int32_t>(ids.data(), ids.size()));
    if (response.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      finished = true;
      result.finish_reason = response.finish_reason();
      result.usage = response.usage();
      result.timings = response.timings();
    }
  }
  const grpc::Status status = reader->Finish();
  if (handle != nullptr) handle->Detach();
  if (!status.ok()) return FromGrpcStatus(status);
  if (!finished) {
    return absl::InternalError(
        absl::StrCat("deltaserve.v1.Inference/Generate ended OK without a finish reason after ",
                     result.token_ids.size(), " tokens"));
  }
  return result;
}

absl::StatusOr<v1::Session> InferenceClient::GetSession(const v1::GetSessionRequest& request) {
  grpc::ClientContext context;
  Prepare(context);
  v1::Session response;
  const grpc::Status status = stub_->GetSession(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<v1::ListSessionsResponse> InferenceClient::ListSessions(
    const v1::ListSessionsRequest& request) {
  grpc::ClientContext context;
  Prepare(context);
  v1::ListSessionsResponse response;
  const grpc::Status status = stub_->ListSessions(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::Status InferenceClient::DeleteSession(const v1::DeleteSessionRequest& request) {
  grpc::ClientContext context;
  Prepare(context);
  v1::DeleteSessionResponse response;
  return FromGrpcStatus(stub_->DeleteSession(&context, request, &response));
}

absl::StatusOr<v1::Session> InferenceClient::ForkSession(const v1::ForkSessionRequest& request) {
  grpc::ClientContext context;
  Prepare(context);
  v1::Session response;
  const grpc::Status status = stub_->ForkSession(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<v1::ModelInfo> InferenceClient::GetModelInfo() {
  grpc::ClientContext context;
  Prepare(context);
  v1::ModelInfo response;
  const grpc::Status status = stub_->GetModelInfo(&context, v1::GetModelInfoRequest(), &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response;
}

absl::StatusOr<ServingStatus> InferenceClient::Health(const std::string& service) {
  grpc::ClientContext context;
  Prepare(context);
  const std::string request_bytes = EncodeHealthCheckRequest(service);
  grpc::Slice slice(request_bytes);
  grpc::ByteBuffer request(&slice, 1);
  grpc::ByteBuffer response;
  grpc::Status status;
  absl::Notification done;
  grpc::GenericStub stub(channel_);
  stub.UnaryCall(&context, kHealthCheckMethod, grpc::StubOptions(), &request, &response,
                 [&status, &done](grpc::Status call_status) {
                   status = std::move(call_status);
                   done.Notify();
                 });
  done.WaitForNotification();
  if (!status.ok()) return FromGrpcStatus(status);
  absl::StatusOr<int> value = DecodeHealthCheckResponse(ByteBufferToString(response));
  if (!value.ok()) return value.status();
  if (*value < 0 || *value > static_cast<int>(ServingStatus::kServiceUnknown)) {
    return ServingStatus::kUnknown;
  }
  return static_cast<ServingStatus>(*value);
}

}  // namespace deltaserve::client
