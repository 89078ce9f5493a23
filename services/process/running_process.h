// A started deltaserve role (serve, router, stage or expert worker, session store), as the CLI
// and the tests drive it.
#pragma once

#include <chrono>
#include <string>

namespace deltaserve::services {

class RunningProcess {
 public:
  virtual ~RunningProcess() = default;
  // The bound gRPC address ("127.0.0.1:41234" for a configured port 0).
  virtual const std::string& address() const = 0;
  // The bound /metrics port; 0 when the process serves no metrics.
  virtual int metrics_port() const = 0;
  // Stops taking calls, lets calls in flight finish for up to `grace`, then stops. Idempotent.
  virtual void Shutdown(std::chrono::milliseconds grace) = 0;
};

}  // namespace deltaserve::services
