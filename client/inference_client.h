// InferenceClient: a blocking C++ client of deltaserve.v1.Inference (proto/deltaserve/v1/
// inference.proto) and of the standard grpc.health.v1.Health/Check, returning absl::Status.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "deltaserve/v1/inference.grpc.pb.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"

namespace deltaserve::client {

// The metadata key naming the tenant a call runs as (inference.proto, "Tenancy").
inline constexpr char kTenantMetadataKey[] = "x-deltaserve-tenant";

struct ClientOptions {
  // Sent as `x-deltaserve-tenant` on every call; empty: not sent (the server uses "default").
  std::string tenant;
  // Deadline of each call, in milliseconds from its start (for Generate: the whole stream);
  // 0: no deadline.
  int64_t timeout_ms = 0;
};

// The outcome of a Generate call that ended with an OK status.
struct GenerateResult {
  // Every generated token id, in order (the concatenation of all streamed messages).
  std::vector<int32_t> token_ids;
  // The session the call ran in (first message); empty without a session.
  std::string session_id;
  v1::FinishReason finish_reason = v1::FINISH_REASON_UNSPECIFIED;
  // The final message's usage and timings.
  v1::Usage usage;
  v1::Timings timings;
};

// Cancels one Generate call from any thread. Pass it to Generate; Cancel() before the call
// starts makes the call end with CANCELLED as soon as it starts; after the call has ended it does
// nothing. One handle per call: a cancelled handle cancels every later call given it.
class CallHandle {
 public:
  CallHandle() = default;
  CallHandle(const CallHandle&) = delete;
  CallHandle& operator=(const CallHandle&) = delete;

  // Thread-safe; the call then ends with CANCELLED (tokens already delivered to the callback
  // stay delivered).
  void Cancel();
  bool cancelled() const;

 private:
  friend class InferenceClient;
  // Called by Generate around the call's lifetime; `context` outlives the attachment.
  void Attach(grpc::ClientContext* context);
  void Detach();

  mutable absl::Mutex mu_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  grpc::ClientContext* context_ ABSL_GUARDED_BY(mu_) = nullptr;
};

// grpc.health.v1.HealthCheckResponse.ServingStatus.
enum class ServingStatus {
  kUnknown = 0,
  kServing = 1,
  kNotServing = 2,
  kServiceUnknown = 3,
};
// "SERVING", "NOT_SERVING", "UNKNOWN", "SERVICE_UNKNOWN".
const char* ServingStatusName(ServingStatus status);

// Every method blocks until its call ends and returns the call's gRPC status as an absl::Status
// with the same code and message. Thread-safe: calls may run concurrently from many threads.
class InferenceClient {
 public:
  // Receives each streamed message's token ids (usually one) on the calling thread, in order.
  using TokenCallback = std::function<void(std::span<const int32_t> token_ids)>;

  explicit InferenceClient(std::shared_ptr<grpc::Channel> channel, ClientOptions options = {});

  // Streams a generation. `on_tokens` may be empty. When `handle` is given it must outlive the
  // call. An OK stream that ends without a finish reason is an INTERNAL error.
  absl::StatusOr<GenerateResult> Generate(const v1::GenerateRequest& request,
                                          const TokenCallback& on_tokens = nullptr,
                                          CallHandle* handle = nullptr);

  absl::StatusOr<v1::Session> GetSession(const v1::GetSessionRequest& request);
  absl::StatusOr<v1::ListSessionsResponse> ListSessions(const v1::ListSessionsRequest& request);
  absl::Status DeleteSession(const v1::DeleteSessionRequest& request);
  absl::StatusOr<v1::Session> ForkSession(const v1::ForkSessionRequest& request);
  absl::StatusOr<v1::ModelInfo> GetModelInfo();

  // grpc.health.v1.Health/Check for `service` ("" asks about the server as a whole). A service
  // the server does not know comes back as NOT_FOUND (an error), per the health protocol.
  absl::StatusOr<ServingStatus> Health(const std::string& service = "");

  const ClientOptions& options() const { return options_; }

 private:
  // Applies the tenant and deadline to a fresh context.
  void Prepare(grpc::ClientContext& context) const;

  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Inference::Stub> stub_;
  ClientOptions options_;
};

}  // namespace deltaserve::client
