// A gRPC server for one service on a free loopback port, for tests that call it over gRPC.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "services/common/server_runner.h"

namespace deltaserve::testing {

inline absl::StatusOr<std::unique_ptr<services::GrpcServer>> StartLoopbackServer(grpc::Service* service) {
  services::GrpcServerConfig config;
  config.listen_address = "127.0.0.1:0";
  grpc::Service* services[] = {service};
  return services::GrpcServer::Start(config, services);
}

}  // namespace deltaserve::testing
