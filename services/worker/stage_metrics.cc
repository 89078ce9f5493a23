#include "services/worker/stage_metrics.h"

#include "base/status_macros.h"
#include "services/common/metrics.h"

namespace deltaserve::services {

absl::StatusOr<std::unique_ptr<LinkPathMetrics>> LinkPathMetrics::Create(prometheus::Registry& registry,
                                                                         const std::string& paths,
                                                                         const std::string& paths_help,
                                                                         const std::string& failures,
                                                                         const std::string& failures_help) {
  DS_ASSIGN_OR_RETURN(auto* path_family, AddCounterFamily(registry, paths, paths_help));
  DS_ASSIGN_OR_RETURN(auto* failure_family, AddCounterFamily(registry, failures, failures_help));
  return std::unique_ptr<LinkPathMetrics>(new LinkPathMetrics(
      path_family->Add({{"path", "nccl"}}), path_family->Add({{"path", "bytes"}}), failure_family->Add({})));
}

absl::StatusOr<std::unique_ptr<LinkPathMetrics>> LinkPathMetrics::ForHandoffs(prometheus::Registry& registry) {
  return Create(registry, "deltaserve_stage_hidden_handoffs_total",
                "Steps whose hidden rows this stage handed to the next stage, by path: nccl (device to device) "
                "or bytes (in the gRPC call)",
                "deltaserve_stage_nccl_link_failures_total",
                "Transfers that broke the NCCL link to the next stage (it is made again)");
}

absl::StatusOr<std::unique_ptr<LinkPathMetrics>> LinkPathMetrics::ForExpertCalls(prometheus::Registry& registry) {
  return Create(registry, "deltaserve_stage_expert_calls_total",
                "Calls to expert shards, by how their rows went: nccl (device to device) or bytes (in the gRPC "
                "call)",
                "deltaserve_stage_expert_nccl_link_failures_total",
                "Calls that broke the NCCL link to an expert shard (it is made again)");
}

}  // namespace deltaserve::services
