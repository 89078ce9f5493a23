#include "services/worker/expert_metrics.h"

#include "base/status_macros.h"
#include "services/common/metrics.h"

namespace deltaserve::services {

absl::StatusOr<std::unique_ptr<ExpertMetrics>> ExpertMetrics::Create(prometheus::Registry& registry) {
  DS_ASSIGN_OR_RETURN(auto* calls, AddCounterFamily(registry, "deltaserve_expert_calls_total",
                                                    "Calls this expert shard answered, by how their rows came: nccl "
                                                    "(device to device) or bytes (in the gRPC call)"));
  DS_ASSIGN_OR_RETURN(auto* failures, AddCounterFamily(registry, "deltaserve_expert_call_failures_total",
                                                       "Calls this expert shard failed"));
  DS_ASSIGN_OR_RETURN(auto* links, AddGaugeFamily(registry, "deltaserve_expert_nccl_links",
                                                  "NCCL links from stages this expert shard holds"));
  return std::unique_ptr<ExpertMetrics>(new ExpertMetrics(
      calls->Add({{"path", "nccl"}}), calls->Add({{"path", "bytes"}}), failures->Add({}), links->Add({})));
}

}  // namespace deltaserve::services
