// How the router reaches the first pipeline stage and a stage reaches the next: in process (the
// stage engine itself implements it) or over gRPC. Open, Step and Close travel down the chain;
// each stage adds its own result to the next stage's.
#pragma once

#include "absl/status/status.h"
#include "deltaserve/internal/v1/worker.pb.h"

namespace deltaserve::services {

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
