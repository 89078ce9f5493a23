// Requests the stage tests send: a sequence opened, and a step of one sequence's new tokens.
#pragma once

#include <cstdint>
#include <vector>

#include "deltaserve/internal/v1/worker.pb.h"
#include "absl/status/status.h"
#include "model/sampling/sampling_params.h"
#include "services/transport/sampling_proto.h"
#include "services/transport/stage_channel.h"

namespace deltaserve::testing {

inline internal::v1::OpenSequence* AddSequence(internal::v1::OpenRequest& request, uint64_t seq_id,
                                               const model::SamplingParams& sampling = {}) {
  internal::v1::OpenSequence* open = request.add_sequences();
  open->set_seq_id(seq_id);
  services::ToProto(sampling, open->mutable_sampling());
  return open;
}

// Opens sequence `seq_id` afresh (default sampling) on `stage`.
inline absl::Status OpenFresh(services::StageChannel& stage, uint64_t seq_id) {
  internal::v1::OpenRequest request;
  AddSequence(request, seq_id);
  internal::v1::OpenResponse response;
  return stage.Open(request, &response);
}

// One sequence's new tokens, the token after them sampled.
inline internal::v1::StepRequest StepOf(uint64_t seq_id, const std::vector<int32_t>& tokens) {
  internal::v1::StepRequest request;
  internal::v1::StepSequence* step = request.add_sequences();
  step->set_seq_id(seq_id);
  step->mutable_token_ids()->Assign(tokens.begin(), tokens.end());
  step->set_sample(true);
  return request;
}

}  // namespace deltaserve::testing
