#include "services/router/admin_service.h"

#include <chrono>
#include <thread>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace deltaserve::services {
namespace {

// A drain longer than this is a mistake (terminationGracePeriodSeconds is far shorter).
constexpr int64_t kMaxDrainMs = int64_t{3600} * 1000;

}  // namespace

bool IsLocalPeer(const std::string& peer) {
  return absl::StartsWith(peer, "ipv4:127.") || absl::StartsWith(peer, "ipv6:[::1]") ||
         absl::StartsWith(peer, "ipv6:[::ffff:127.") || absl::StartsWith(peer, "unix:");
}

grpc::Status AdminService::Drain(grpc::ServerContext* context,
                                 const internal::v1::DrainRequest* request,
                                 internal::v1::DrainResponse* response) {
  if (!IsLocalPeer(context->peer())) {
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                        "Drain is accepted from this host only");
  }
  for (const auto& [name, value] : {std::pair<const char*, int64_t>{"timeout_ms", request->timeout_ms()},
                                     {"admit_grace_ms", request->admit_grace_ms()}}) {
    if (value < 0 || value > kMaxDrainMs) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          absl::StrCat(name, " must be in [0, ", kMaxDrainMs, "], got ", value));
    }
  }
  const auto start = std::chrono::steady_clock::now();
  spdlog::info("draining: NOT_SERVING; admitting for {} ms more, then those in flight get {} ms",
               request->admit_grace_ms(), request->timeout_ms());
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stop_serving_) stop_serving_();
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(request->admit_grace_ms()));
  const EngineCore::DrainResult result =
      engine_.Drain(std::chrono::milliseconds(request->timeout_ms()));
  const auto elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::steady_clock::now() - start);
  spdlog::info("drained in {} ms: {} requests in flight, {} of them cut short by the timeout",
               elapsed.count(), result.in_flight, result.cut_short);
  response->set_in_flight(result.in_flight);
  response->set_cut_short(result.cut_short);
  response->set_elapsed_ms(elapsed.count());
  return grpc::Status::OK;
}

}  // namespace deltaserve::services
