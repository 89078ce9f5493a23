#include "services/worker/stage_metrics.h"

#include "base/status_macros.h"
#include "services/common/metrics.h"

namespace deltaserve::services {

absl::StatusOr<std::unique_ptr<StageMetrics>> StageMetrics::Create(prometheus::Registry& registry) {
  DS_ASSIGN_OR_RETURN(auto* handoffs,
                      AddCounterFamily(registry, "deltaserve_stage_hidden_handoffs_total",
                                       "Steps whose hidden rows this stage handed to the next stage, by path: "
                                       "nccl (device to device) or bytes (in the gRPC call)"));
  DS_ASSIGN_OR_RETURN(auto* failures,
                      AddCounterFamily(registry, "deltaserve_stage_nccl_link_failures_total",
                                       "Transfers that broke the NCCL link to the next stage (it is made again)"));
  return std::unique_ptr<StageMetrics>(new StageMetrics(handoffs->Add({{"path", "nccl"}}),
                                                        handoffs->Add({{"path", "bytes"}}), failures->Add({})));
}

absl::StatusOr<std::unique_ptr<ExpertCallMetrics>> ExpertCallMetrics::Create(prometheus::Registry& registry) {
  DS_ASSIGN_OR_RETURN(auto* calls,
                      AddCounterFamily(registry, "deltaserve_stage_expert_calls_total",
                                       "Calls to expert shards, by how their rows went: nccl (device to device) or "
                                       "bytes (in the gRPC call)"));
  DS_ASSIGN_OR_RETURN(auto* failures,
                      AddCounterFamily(registry, "deltaserve_stage_expert_nccl_link_failures_total",
                                       "Calls that broke the NCCL link to an expert shard (it is made again)"));
  return std::unique_ptr<ExpertCallMetrics>(
      new ExpertCallMetrics(calls->Add({{"path", "nccl"}}), calls->Add({{"path", "bytes"}}), failures->Add({})));
}

}  // namespace deltaserve::services
