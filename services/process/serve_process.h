// `deltaserve serve`: router, one pipeline stage holding every layer and expert, and the session
// store in one process, with no network hops between them. The one-machine default.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "model/layers/step.h"
#include "services/common/server_config.h"
#include "services/process/running_process.h"
#include "services/router/router_config.h"
#include "services/session_store/store_options.h"

namespace deltaserve::services {

struct ServeConfig {
  std::string model_dir;
  int threads = 0;  // CPU threads for the model (0: all)
  model::LayerOptions layers;
  GrpcServerConfig server;
  std::string metrics_listen;  // empty: no /metrics
  RouterConfig router;
  SnapshotStoreOptions store;

  absl::Status Validate() const;
};

absl::StatusOr<std::unique_ptr<RunningProcess>> StartServe(const ServeConfig& config);

}  // namespace deltaserve::services
