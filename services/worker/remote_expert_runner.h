// A pipeline stage's routed experts when expert workers hold them: at each MoE layer it sends
// every shard the tokens routed to its experts (all shards at once) and puts the returned slot
// outputs back in place. A shard with an NCCL link up (nccl_output_link.h) gets the rows device to
// device, in calls no larger than the link's buffer; the others get them as bytes in the call.
#pragma once

#include <atomic>
#include <cstdint>
#include <vector>

#include "model/layers/expert_runner.h"
#include "services/transport/expert_channel.h"
#include "services/worker/call_threads.h"
#include "services/worker/nccl_output_link.h"
#include "services/worker/stage_metrics.h"

namespace deltaserve::services {

struct ExpertShardLink {
  int64_t expert_begin = 0;
  int64_t expert_end = 0;
  ExpertChannel* channel = nullptr;  // not owned
  // The shard's model as Describe reported it at start; every call asks the shard to confirm it
  // and its expert range (0: no check).
  uint64_t model_fingerprint = 0;
  NcclOutputLink* nccl = nullptr;  // not owned; the shard's link, if any
};

// One call to a shard: the batch rows it carries, and the slots (token · top_k + slot) of those
// rows whose experts the shard holds, in order: the rows the shard returns.
struct ExpertCall {
  std::vector<int64_t> tokens;
  std::vector<int64_t> slots;
};

// The calls that carry the tokens routed to experts [begin, end) (ids: [n, k]), in token order:
// one call, or (max_rows > 0, at least k) calls of at most max_rows tokens and as many slots.
std::vector<ExpertCall> PlanExpertCalls(const int32_t* ids, int64_t n, int64_t k, int64_t begin, int64_t end,
                                        int64_t max_rows);

class RemoteExpertRunner final : public model::ExpertRunner {
 public:
  // `shards` must cover [0, num_experts) without overlap (see CheckShardCoverage). Tensors
  // are `backend`'s (host or device memory): rows sent as bytes are staged through the host.
  RemoteExpertRunner(kernels::Backend& backend, std::vector<ExpertShardLink> shards,
                     int64_t hidden_size, LinkPathMetrics* metrics = nullptr);

  absl::Status RunExperts(int64_t layer, kernels::TensorView x, kernels::TensorView expert_ids,
                          kernels::TensorView slot_out) override;

  // Calls whose rows went over an NCCL link, and as bytes.
  int64_t calls_over_nccl() const { return calls_over_nccl_; }
  int64_t calls_as_bytes() const { return calls_as_bytes_; }

 private:
  internal::v1::RunExpertsRequest Request(const ExpertShardLink& shard, int64_t layer, int64_t k,
                                          const ExpertCall& call, const int32_t* ids) const;
  absl::Status CallOverLink(const ExpertShardLink& shard, internal::v1::RunExpertsRequest request,
                            const ExpertCall& call);
  absl::Status CallWithBytes(const ExpertShardLink& shard, internal::v1::RunExpertsRequest request,
                             const ExpertCall& call, const float* x, internal::v1::RunExpertsResponse& response);

  kernels::Backend& backend_;
  std::vector<ExpertShardLink> shards_;
  int64_t hidden_size_;
  LinkPathMetrics* metrics_;  // may be null
  CallThreads threads_;       // each round's calls and their links' transfers run on these
  std::atomic<int64_t> calls_over_nccl_{0};
  std::atomic<int64_t> calls_as_bytes_{0};
};

// OK when the shards' ranges tile [0, num_experts) exactly; the error names the gap or overlap.
absl::Status CheckShardCoverage(std::vector<ExpertShardLink> shards, int64_t num_experts);

}  // namespace deltaserve::services
