// `deltaserve serve`: router, one pipeline stage holding every layer and expert, and the session
// store in one process, with no network hops between them. The one-machine default.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "kernels/backend_factory.h"
#include "model/layers/step.h"
#include "services/common/server_config.h"
#include "services/process/running_process.h"
#include "services/router/router_config.h"
#include "services/session_store/store_options.h"

namespace deltaserve::services {

struct ServeConfig {
  std::string model_dir;
  kernels::BackendChoice backend;  // where the model runs
  model::LayerOptions layers;
  GrpcServerConfig server;
  std::string metrics_listen;  // empty: no /metrics
  RouterConfig router;
  SnapshotStoreOptions store;

  absl::Status Validate() const;
};

absl::StatusOr<std::unique_ptr<RunningProcess>> StartServe(const ServeConfig& config);

}  // namespace deltaserve::services
