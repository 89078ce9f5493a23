// GrpcServer: builds and starts a sync gRPC server from a GrpcServerConfig and the process's
// services, with the standard health service (grpc.health.v1) and server reflection.
#pragma once

#include <grpcpp/server.h>
#include <grpcpp/support/config.h>

#include <chrono>
#include <memory>
#include <span>
#include <string>

#include "absl/status/statusor.h"
#include "services/common/server_config.h"

namespace deltaserve::services {

// Thread safety: SetServingStatus, port and address may be called from any thread; Shutdown
// and Wait too (Shutdown is idempotent). The destructor shuts the server down at once if
// Shutdown was not called.
class GrpcServer {
 public:
  // Validates `config`, registers `services` (not owned: each must outlive the server; at least
  // one), binds and starts serving. A bad config is INVALID_ARGUMENT; an address that cannot be
  // bound (in use, not local, not permitted) is UNAVAILABLE naming the address.
  //
  // Enables gRPC's default health service and the reflection plugin, both process-wide switches
  // of gRPC: every server built in this process afterwards gets them too. The health status of
  // "" (the whole server) starts SERVING; named services are unknown (NOT_FOUND to a Check)
  // until SetServingStatus names them.
  static absl::StatusOr<std::unique_ptr<GrpcServer>> Start(
      const GrpcServerConfig& config, std::span<grpc::Service* const> services);

  GrpcServer(const GrpcServer&) = delete;
  GrpcServer& operator=(const GrpcServer&) = delete;
  ~GrpcServer();

  // The bound TCP port (the ephemeral one for "host:0"); 0 for a unix socket.
  int port() const { return port_; }
  // listen_address with the bound port in place of the configured one ("127.0.0.1:41234"),
  // suitable for grpc::CreateChannel on this host.
  const std::string& address() const { return address_; }

  // Health status of `service_name` ("" is the whole server; otherwise a full service name such
  // as "deltaserve.v1.Inference") as reported by grpc.health.v1.Health/Check and Watch.
  void SetServingStatus(const std::string& service_name, bool serving);
  // Sets every service name known to the health service, "" included.
  void SetServingStatus(bool serving);

  // Marks every health status NOT_SERVING, stops accepting calls, and waits for calls in flight
  // until `deadline`, after which they are cancelled. Returns when the server has stopped.
  void Shutdown(std::chrono::system_clock::time_point deadline);
  // Blocks until Shutdown has completed (from another thread).
  void Wait();

  // The underlying server, e.g. for InProcessChannel in `deltaserve serve` and tests.
  grpc::Server& server() { return *server_; }

 private:
  GrpcServer(std::unique_ptr<grpc::Server> server, int port, std::string address);

  std::unique_ptr<grpc::Server> server_;
  const int port_;
  const std::string address_;
};

}  // namespace deltaserve::services
