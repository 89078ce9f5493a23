// The base::RequestContext of an incoming gRPC call: its tenant and effective deadline, plus the
// ids and cancellation the handler supplies.
#pragma once

#include <grpcpp/server_context.h>

#include <stop_token>
#include <string>

#include "absl/status/statusor.h"
#include "base/log.h"
#include "services/common/server_config.h"

namespace deltaserve::services {

// INVALID_ARGUMENT when the tenant metadata is invalid (TenantOf). The session id is left empty
// for the handler to fill once the request names one.
absl::StatusOr<base::RequestContext> RequestContextOf(const grpc::ServerContext& context,
                                                      const GrpcServerConfig& config,
                                                      std::string request_id,
                                                      std::stop_token cancellation = {});

}  // namespace deltaserve::services
