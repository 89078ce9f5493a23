// A pipeline stage's routed experts when expert workers hold them: at each MoE layer it sends
// every shard the tokens routed to its experts (all shards at once) and puts the returned slot
// outputs back in place.
#pragma once

#include <cstdint>
#include <vector>

#include "model/layers/expert_runner.h"
#include "services/transport/expert_channel.h"

namespace deltaserve::services {

struct ExpertShardLink {
  int64_t expert_begin = 0;
  int64_t expert_end = 0;
  ExpertChannel* channel = nullptr;  // not owned
  // The shard's model as Describe reported it at start; every call asks the shard to confirm it
  // and its expert range (0: no check).
  uint64_t model_fingerprint = 0;
};

class RemoteExpertRunner final : public model::ExpertRunner {
 public:
  // `shards` must cover [0, num_experts) without overlap (see CheckShardCoverage). Tensors
  // are `backend`'s (host or device memory): they are staged through the host for the calls.
  RemoteExpertRunner(kernels::Backend& backend, std::vector<ExpertShardLink> shards,
                     int64_t hidden_size);

  absl::Status RunExperts(int64_t layer, kernels::TensorView x, kernels::TensorView expert_ids,
                          kernels::TensorView slot_out) override;

 private:
  kernels::Backend& backend_;
  std::vector<ExpertShardLink> shards_;
  int64_t hidden_size_;
};

// OK when the shards' ranges tile [0, num_experts) exactly; the error names the gap or overlap.
absl::Status CheckShardCoverage(std::vector<ExpertShardLink> shards, int64_t num_experts);

}  // namespace deltaserve::services
