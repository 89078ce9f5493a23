// deltaserve.internal.v1.Admin on a router or `serve` process: Drain (see admin.proto). Calls
// from other hosts are refused with PERMISSION_DENIED.
#pragma once

#include <functional>
#include <mutex>

#include "deltaserve/internal/v1/admin.grpc.pb.h"
#include "services/router/engine_core.h"

namespace deltaserve::services {

class AdminService final : public internal::v1::Admin::Service {
 public:
  explicit AdminService(EngineCore& engine) : engine_(engine) {}

  // What a drain does first: mark the process NOT_SERVING (set once its server exists).
  void SetStopServing(std::function<void()> stop_serving) {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_serving_ = std::move(stop_serving);
  }

  grpc::Status Drain(grpc::ServerContext* context, const internal::v1::DrainRequest* request,
                     internal::v1::DrainResponse* response) override;

 private:
  EngineCore& engine_;
  std::mutex mutex_;  // a Drain may arrive while the process sets the hook
  std::function<void()> stop_serving_;
};

// Whether a gRPC peer string ("ipv4:127.0.0.1:5000", "ipv6:[::1]:5000", "unix:...") is this
// host's loopback or a local socket.
bool IsLocalPeer(const std::string& peer);

}  // namespace deltaserve::services
