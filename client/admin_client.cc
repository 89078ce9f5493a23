#include "client/admin_client.h"

#include <chrono>

#include "deltaserve/internal/v1/admin.grpc.pb.h"
#include "grpcpp/client_context.h"

namespace deltaserve::client {
namespace {

// Beyond the drain itself: snapshots of the sessions cut short, and the call's round trip.
constexpr auto kDrainCallMargin = std::chrono::seconds(60);

}  // namespace

absl::StatusOr<DrainResult> Drain(const std::shared_ptr<grpc::Channel>& channel, int64_t timeout_ms,
                                  int64_t admit_grace_ms) {
  auto stub = internal::v1::Admin::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::milliseconds(timeout_ms + admit_grace_ms) + kDrainCallMargin);
  internal::v1::DrainRequest request;
  request.set_timeout_ms(timeout_ms);
  request.set_admit_grace_ms(admit_grace_ms);
  internal::v1::DrainResponse response;
  const grpc::Status status = stub->Drain(&context, request, &response);
  if (!status.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
  }
  return DrainResult{response.in_flight(), response.cut_short(), response.elapsed_ms()};
}

}  // namespace deltaserve::client
