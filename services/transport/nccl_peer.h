// The worker an NCCL link is made to (a next stage, or an expert shard), as the side that makes
// the link reaches it over gRPC.
#pragma once

#include <chrono>

#include "absl/status/status.h"
#include "deltaserve/internal/v1/worker.pb.h"

namespace deltaserve::services {

class NcclPeer {
 public:
  virtual ~NcclPeer() = default;
  // OK while the peer answers (its Describe call).
  virtual absl::Status Answer() = 0;
  // The peer's ConnectNccl, with the link's own timeout (joining may take longer than a call).
  virtual absl::Status ConnectNccl(const internal::v1::ConnectNcclRequest& request,
                                   std::chrono::milliseconds timeout) = 0;
};

}  // namespace deltaserve::services
