// How a pipeline stage reaches a shard of the routed experts: in process (the shard itself
// implements it) or over gRPC.
#pragma once

#include "absl/status/status.h"
#include "deltaserve/internal/v1/worker.pb.h"

namespace deltaserve::services {

class ExpertChannel {
 public:
  virtual ~ExpertChannel() = default;
  virtual absl::Status RunExperts(const internal::v1::RunExpertsRequest& request,
                                  internal::v1::RunExpertsResponse* response) = 0;
};

}  // namespace deltaserve::services
