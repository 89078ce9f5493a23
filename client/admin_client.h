// The internal Admin service of a router or `serve` process (admin.proto), for operators and
// Kubernetes preStop hooks; the server accepts it from its own host only.
#pragma once

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "grpcpp/channel.h"

namespace deltaserve::client {

struct DrainResult {
  int64_t in_flight = 0;  // requests queued or running when the drain began
  int64_t cut_short = 0;  // ended by the timeout (admin.proto says what their sessions keep)
  int64_t elapsed_ms = 0;
};

// Asks the server to stop admitting and finish (or cut short, see admin.proto) its requests
// within `timeout_ms`; returns when it is done. The call's own deadline leaves a margin.
// `admit_grace_ms`: admitting goes on that long after health turns NOT_SERVING (DrainRequest).
absl::StatusOr<DrainResult> Drain(const std::shared_ptr<grpc::Channel>& channel, int64_t timeout_ms,
                                  int64_t admit_grace_ms = 0);

}  // namespace deltaserve::client
