// GrpcServer: builder setup, bind-failure reporting, health status and orderly shutdown.
#include "services/common/server_runner.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>

#include <mutex>
#include <utility>

#include "absl/strings/str_format.h"
#include "base/status_macros.h"

namespace deltaserve::services {
namespace {

// Both are process-wide in gRPC and must precede the ServerBuilder's construction (plugins are
// instantiated by the builder's constructor).
void EnableProcessWideServerFeatures() {
  static std::once_flag once;
  std::call_once(once, [] {
    grpc::EnableDefaultHealthCheckService(true);
    grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  });
}

bool IsUnixAddress(const std::string& address) { return address.rfind("unix:", 0) == 0; }

std::string BoundAddress(const std::string& listen_address, int port) {
  if (IsUnixAddress(listen_address)) return listen_address;
  const size_t colon = listen_address.rfind(':');
  return absl::StrFormat("%s:%d", listen_address.substr(0, colon), port);
}

}  // namespace

absl::StatusOr<std::unique_ptr<GrpcServer>> GrpcServer::Start(
    const GrpcServerConfig& config, std::span<grpc::Service* const> services) {
  DS_RETURN_IF_ERROR(config.Validate());
  if (services.empty()) {
    // gRPC's sync server returns no server at all without a registered service.
    return absl::InvalidArgumentError("GrpcServer::Start needs at least one service");
  }
  for (size_t i = 0; i < services.size(); ++i) {
    if (services[i] == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrFormat("GrpcServer::Start: services[%d] is null", i));
    }
  }
  EnableProcessWideServerFeatures();

  grpc::ServerBuilder builder;
  config.ApplyTo(builder);
  int selected_port = 0;
  // Plaintext: the cluster network is trusted; TLS would be a credentials field of the config.
  builder.AddListeningPort(config.listen_address, grpc::InsecureServerCredentials(),
                           &selected_port);
  for (grpc::Service* service : services) builder.RegisterService(service);

  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr) {
    return absl::UnavailableError(absl::StrFormat(
        "could not start a gRPC server on '%s' (address in use, not local, or not permitted)",
        config.listen_address));
  }
  const bool unix_socket = IsUnixAddress(config.listen_address);
  if (!unix_socket && selected_port == 0) {
    server->Shutdown(std::chrono::system_clock::now());
    return absl::UnavailableError(
        absl::StrFormat("could not bind a gRPC server to '%s'", config.listen_address));
  }
  const int port = unix_socket ? 0 : selected_port;
  return std::unique_ptr<GrpcServer>(
      new GrpcServer(std::move(server), port, BoundAddress(config.listen_address, port)));
}

GrpcServer::GrpcServer(std::unique_ptr<grpc::Server> server, int port, std::string address)
    : server_(std::move(server)), port_(port), address_(std::move(address)) {}

GrpcServer::~GrpcServer() { Shutdown(std::chrono::system_clock::now()); }

void GrpcServer::SetServingStatus(const std::string& service_name, bool serving) {
  if (grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService()) {
    health->SetServingStatus(service_name, serving);
  }
}

void GrpcServer::SetServingStatus(bool serving) {
  if (grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService()) {
    health->SetServingStatus(serving);
  }
}

void GrpcServer::Shutdown(std::chrono::system_clock::time_point deadline) {
  // Health first, so that load balancers stop sending while calls in flight drain.
  if (grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService()) {
    health->Shutdown();
  }
  // grpc::Server::Shutdown is idempotent and safe to call from several threads.
  server_->Shutdown(deadline);
}

void GrpcServer::Wait() { server_->Wait(); }

}  // namespace deltaserve::services
