// An expert worker's compute: one contiguous range of every MoE layer's routed experts. It runs
// the tokens a stage sends and returns the outputs of the slots that chose its experts.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "model/checkpoint/checkpoint.h"
#include "model/layers/layer_weights.h"
#include "services/transport/expert_channel.h"

namespace deltaserve::services {

class ExpertShard final : public ExpertChannel {
 public:
  // Loads experts [expert_begin, expert_end) of every MoE layer from the checkpoint in `dir`.
  static absl::StatusOr<std::unique_ptr<ExpertShard>> Load(const std::string& dir,
                                                           kernels::Backend& backend,
                                                           int64_t expert_begin, int64_t expert_end);
  static absl::StatusOr<std::unique_ptr<ExpertShard>> Load(std::unique_ptr<model::Checkpoint> checkpoint,
                                                           kernels::Backend& backend,
                                                           int64_t expert_begin, int64_t expert_end);

  int64_t expert_begin() const { return expert_begin_; }
  int64_t expert_end() const { return expert_end_; }
  const model::KimiLinearConfig& config() const { return checkpoint_->config(); }
  // The model's fingerprint as KimiLinearModel computes it.
  uint64_t fingerprint() const { return fingerprint_; }

  // Validates the request (layer, sizes, expert ids) before computing; INVALID_ARGUMENT otherwise.
  absl::Status RunExperts(const internal::v1::RunExpertsRequest& request,
                          internal::v1::RunExpertsResponse* response) override;

  // The parts of RunExperts, for callers whose rows are already on the device (NCCL links):
  // Check validates a request (the rows in `hidden`, or none there where it names a link) and
  // counts the slots whose experts this shard holds; Compute runs the request's tokens from `x`
  // (fp32 [num_tokens, hidden] on the backend) and writes those slots' outputs to `out` (fp32
  // [slots, hidden], in (token, slot) order; it may be x's memory).
  absl::StatusOr<int64_t> Check(const internal::v1::RunExpertsRequest& request) const;
  absl::Status Compute(const internal::v1::RunExpertsRequest& request, kernels::TensorView x,
                       kernels::TensorView out);

 private:
  ExpertShard(std::unique_ptr<model::Checkpoint> checkpoint, kernels::Backend& backend,
              model::ModelWeights weights, int64_t expert_begin, int64_t expert_end);

  std::unique_ptr<model::Checkpoint> checkpoint_;
  kernels::Backend& backend_;
  model::ModelWeights weights_;
  int64_t expert_begin_;
  int64_t expert_end_;
  uint64_t fingerprint_;
};

}  // namespace deltaserve::services
