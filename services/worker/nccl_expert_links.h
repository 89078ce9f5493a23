// An expert shard's side of the NCCL data plane (services/transport/nccl_link.h): a link per
// stage process that made one (ExpertWorker.ConnectNccl), up to a limit. A RunExperts call that
// names a link receives its tokens' hidden rows over it, runs them, and sends the held slots'
// outputs back over it before it answers; calls that carry their rows as bytes go to the shard
// as they are.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "services/transport/expert_channel.h"
#include "services/transport/nccl_link.h"
#include "services/worker/expert_metrics.h"
#include "services/worker/expert_shard.h"

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
                  NcclLinkFactory& links = NcclLinkFactory::Nccl(), ExpertMetrics* metrics = nullptr)
      : shard_(shard), backend_(backend), limits_(limits), factory_(links), metrics_(metrics) {}

  // ExpertWorker.ConnectNccl: joins the link as rank 1 and warms it up (several stages' at once;
  // a link not made both ways is refused). It drops the link the request replaces, any earlier
  // link of the same owner (a stage restarted) and any broken one; at the limit, the link unused
  // longest if unused for evict_after, or else it answers RESOURCE_EXHAUSTED. Its waits end early
  // once `give_up` says so (the maker's call has gone).
  absl::Status Connect(const internal::v1::ConnectNcclRequest& request, const NcclLink::GiveUp& give_up = nullptr);
  absl::Status RunExperts(const internal::v1::RunExpertsRequest& request,
                          internal::v1::RunExpertsResponse* response) override;
  int links() const;

 private:
  struct Entry {
    std::mutex busy;  // held by a call from its receive to the end of its send
    std::unique_ptr<NcclLink> link;
    std::string owner;  // the stage that made it (ConnectNcclRequest.owner)
    std::chrono::steady_clock::time_point last_used;  // guarded by mutex_
  };
  void ShowLinks() const;  // under mutex_: the links held, to the metrics
  absl::Status RunOverLink(Entry& entry, const internal::v1::RunExpertsRequest& request,
                           internal::v1::RunExpertsResponse* response);

  ExpertShard& shard_;
  kernels::Backend& backend_;
  const NcclExpertLinkLimits limits_;
  NcclLinkFactory& factory_;
  ExpertMetrics* metrics_;
  mutable std::mutex mutex_;  // guards links_ and joining_
  std::map<uint64_t, std::shared_ptr<Entry>> links_;
  int joining_ = 0;  // links being joined: each holds a buffer and a communicator, as a link does
};

}  // namespace deltaserve::services
