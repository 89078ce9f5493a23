// Pieces every deltaserve process assembles the same way: its metrics endpoint (and a model
// process's engine memory on it), waiting for a peer to come up, and parsing of "A-B" ranges.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include <grpcpp/channel.h>

#include "absl/status/statusor.h"
#include "kernels/backend_factory.h"
#include "services/common/metrics_server.h"

namespace deltaserve::services {

// Starts /metrics on `listen` (empty: no endpoint, returns null) and registers the process
// metrics for `role`.
absl::StatusOr<std::unique_ptr<MetricsServer>> StartMetrics(const std::string& listen,
                                                            const std::string& role);

// The backend a role computes on; FAILED_PRECONDITION when the device cannot be used.
absl::StatusOr<std::unique_ptr<kernels::Backend>> MakeBackend(const kernels::BackendChoice& choice);

// Serves the backend's memory books on `metrics` (services/worker/engine_memory_metrics.h); the
// collectable, which shares the backend, to keep alive.
std::shared_ptr<void> WatchEngineMemory(MetricsServer& metrics, std::shared_ptr<const kernels::Backend> backend);

// A channel to `address` for internal calls (large messages allowed).
std::shared_ptr<grpc::Channel> InternalChannel(const std::string& address);

// Waits until `channel` connects; UNAVAILABLE naming `what` after `timeout`.
absl::Status WaitForPeer(const std::shared_ptr<grpc::Channel>& channel, const std::string& what,
                         std::chrono::milliseconds timeout);

// "A-B" (inclusive, as on the command line) to the half-open [A, B+1); "A" alone is [A, A+1).
struct IndexRange {
  int64_t begin = 0;
  int64_t end = 0;
};
absl::StatusOr<IndexRange> ParseInclusiveRange(const std::string& text, const std::string& flag);

}  // namespace deltaserve::services
