// RequestContextOf: tenant and deadline of an incoming call.
#include "services/common/request_context.h"

#include <utility>

#include "base/status_macros.h"
#include "services/common/tenancy.h"

namespace deltaserve::services {

absl::StatusOr<base::RequestContext> RequestContextOf(const grpc::ServerContext& context,
                                                      const GrpcServerConfig& config,
                                                      std::string request_id,
                                                      std::stop_token cancellation) {
  base::RequestContext request;
  DS_ASSIGN_OR_RETURN(request.tenant, TenantOf(context));
  request.request_id = std::move(request_id);
  request.deadline = EffectiveDeadline(context, config);
  request.cancellation = std::move(cancellation);
  return request;
}

}  // namespace deltaserve::services
