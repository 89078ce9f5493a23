// How the router reaches the first pipeline stage and a stage reaches the next: in process (the
// stage engine itself implements it) or over gRPC. Open, Step and Close travel down the chain;
// each stage adds its own result to the next stage's.
#pragma once

#include "absl/status/status.h"
#include "deltaserve/internal/v1/worker.pb.h"

namespace deltaserve::services {

// Set on an Open's or a Step's RESOURCE_EXHAUSTED where a stage's (or an expert worker's) device
// memory ran out: fewer sequences may fit where these did not.
inline constexpr char kStageDeviceMemoryPayload[] = "type.googleapis.com/deltaserve.internal.v1.StageDeviceMemory";
// Also set where that happened before any stage changed a sequence's state: the step's sequences
// are as they were and may run again. Without it a failed step may have advanced some of their
// states, and they must be dropped.
inline constexpr char kStepStatesUnchangedPayload[] =
    "type.googleapis.com/deltaserve.internal.v1.StepStatesUnchanged";

inline bool StageDeviceMemoryRanOut(const absl::Status& status) {
  return status.GetPayload(kStageDeviceMemoryPayload).has_value();
}
inline bool StepStatesUnchanged(const absl::Status& status) {
  return status.GetPayload(kStepStatesUnchangedPayload).has_value();
}

class StageChannel {
 public:
  virtual ~StageChannel() = default;
  virtual absl::Status Open(const internal::v1::OpenRequest& request,
                            internal::v1::OpenResponse* response) = 0;
  virtual absl::Status Step(const internal::v1::StepRequest& request,
                            internal::v1::StepResponse* response) = 0;
  virtual absl::Status Close(const internal::v1::CloseRequest& request,
                             internal::v1::CloseResponse* response) = 0;
};

}  // namespace deltaserve::services
