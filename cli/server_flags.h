// Flags shared by the server roles (serve, router, worker, session-store), and running a role
// until SIGINT or SIGTERM.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "base/log.h"
#include "services/common/server_config.h"
#include "services/process/cluster_processes.h"
#include "services/process/running_process.h"
#include "services/router/router_config.h"
#include "services/session_store/store_options.h"

namespace deltaserve::cli {

struct ServerFlags {
  services::ProcessConfig process;
  std::string log_level = "info";
  int64_t drain_seconds = 30;  // how long calls in flight may finish at shutdown
  int64_t peer_wait_ms = 60'000;
  int64_t call_timeout_ms = 600'000;
};

// --listen, --metrics-listen, the gRPC hardening limits, --log-level, --drain-seconds,
// --peer-wait-ms, --call-timeout-ms.
void AddServerFlags(CLI::App& command, ServerFlags& flags, const std::string& default_listen);
// --max-running, --max-waiting, --max-step-tokens, --prefill-chunk, --max-prompt-tokens,
// --max-new-tokens-limit, --default-max-new-tokens, --session-transfer-threads, --pipeline-steps.
void AddRouterFlags(CLI::App& command, services::RouterConfig& router);
// --<prefix>memory-bytes, --<prefix>max-part-bytes, --<prefix>max-sessions,
// --<prefix>ttl-seconds (and --<prefix>dir / --data-dir, declared by the caller).
void AddStoreFlags(CLI::App& command, services::SnapshotStoreOptions& store, const std::string& prefix);

// Configures logging, starts the role with `start`, prints one JSON line
// {"role": ..., "listen": ..., "metrics_port": ...} to stdout, and serves until SIGINT or SIGTERM,
// then drains. Returns the exit status.
int RunServerRole(const std::string& role, ServerFlags& flags,
                  const std::function<absl::StatusOr<std::unique_ptr<services::RunningProcess>>()>& start);

}  // namespace deltaserve::cli
