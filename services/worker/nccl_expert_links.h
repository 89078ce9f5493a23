// An expert shard's side of the NCCL data plane (services/transport/nccl_link.h): a link per
// stage process that made one (ExpertWorker.ConnectNccl), up to a limit. A RunExperts call that
// names a link receives its tokens' hidden rows over it, runs them, and sends the held slots'
// outputs back over it before it answers; calls that carry their rows as bytes go to the shard
// as they are.
#pragma once

#include <chrono>
#include <cstdint>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "services/transport/expert_channel.h"
#include "services/transport/nccl_link.h"
#include "services/worker/expert_metrics.h"
#include "services/worker/expert_shard.h"
#include "services/worker/nccl_link_table.h"

namespace deltaserve::services {

struct NcclExpertLinkLimits {
  int device = 0;
  size_t max_capacity_bytes = 0;  // a link's buffer
  int max_links = 16;             // links held at once (a link per stage process)
  std::chrono::milliseconds timeout{30000};
  // At the limit, a link unused for this long makes room for a new one.
  std::chrono::milliseconds evict_after{60000};
};

class NcclExpertLinks final : public ExpertChannel {
 public:
  // `metrics` (may be null) shows the links held.
  NcclExpertLinks(ExpertShard& shard, kernels::Backend& backend, NcclExpertLinkLimits limits,
                  NcclLinkFactory& links = NcclLinkFactory::Nccl(), ExpertMetrics* metrics = nullptr);

  // ExpertWorker.ConnectNccl (NcclLinkTable::Connect): links carry rows and outputs both ways.
  absl::Status Connect(const internal::v1::ConnectNcclRequest& request, const NcclLink::GiveUp& give_up = nullptr) {
    return links_.Connect(request, give_up);
  }
  absl::Status RunExperts(const internal::v1::RunExpertsRequest& request,
                          internal::v1::RunExpertsResponse* response) override;
  int links() const { return links_.links(); }

 private:
  absl::Status RunOverLink(NcclLink& link, const internal::v1::RunExpertsRequest& request,
                           internal::v1::RunExpertsResponse* response);

  ExpertShard& shard_;
  kernels::Backend& backend_;
  NcclLinkTable links_;
};

}  // namespace deltaserve::services
