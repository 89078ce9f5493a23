// The split cluster's processes, each a separate `deltaserve` role wired by flags:
//   session-store: the SnapshotStore behind gRPC;
//   worker --role experts: one range of every MoE layer's routed experts;
//   worker --role stage: a layer range, chained to the next stage, with experts local or remote;
//   router: the public API and the continuous-batching engine, driving the first stage.
// Peers may start in any order: each waits for the peers it needs, then checks they serve the
// same model and fit together (layer ranges chain, expert shards tile the experts).
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend_factory.h"
#include "model/layers/step.h"
#include "services/common/server_config.h"
#include "services/process/running_process.h"
#include "services/router/router_config.h"
#include "services/session_store/store_options.h"

namespace deltaserve::services {

// Common to every role: the gRPC server, /metrics, and how long to wait for peers and calls.
struct ProcessConfig {
  GrpcServerConfig server;
  std::string metrics_listen;  // empty: no /metrics
  std::chrono::milliseconds peer_wait{60'000};     // for peers to come up at start
  std::chrono::milliseconds call_timeout{600'000}; // one internal call (a long prefill step)
};

struct SessionStoreConfig {
  ProcessConfig process;
  SnapshotStoreOptions store;
  std::chrono::seconds sweep_interval{60};  // how often expired sessions are removed
};
absl::StatusOr<std::unique_ptr<RunningProcess>> StartSessionStore(const SessionStoreConfig& config);

struct ExpertWorkerConfig {
  ProcessConfig process;
  std::string model_dir;
  int64_t expert_begin = 0;  // half-open [begin, end)
  int64_t expert_end = 0;
  kernels::BackendChoice backend;
  // On a GPU: stages may link over NCCL (services/worker/nccl_expert_links.h), each link's buffer
  // at most this many hidden rows (0: no links), at most nccl_max_links at once.
  int64_t nccl_max_rows = 8192;
  int nccl_max_links = 16;
  std::chrono::milliseconds nccl_timeout{30'000};  // joining a link, and each transfer
};
absl::StatusOr<std::unique_ptr<RunningProcess>> StartExpertWorker(const ExpertWorkerConfig& config);

struct StageWorkerConfig {
  ProcessConfig process;
  std::string model_dir;
  int64_t layer_begin = 0;  // half-open [begin, end)
  int64_t layer_end = 0;
  std::string next_stage;                  // address; empty on the last stage
  std::vector<std::string> expert_workers; // addresses; empty: this stage holds every expert
  std::string session_store;               // address; empty: no sessions
  kernels::BackendChoice backend;
  model::LayerOptions layers;
  int64_t max_open_sequences = 1024;
  // On a GPU: hidden rows of steps up to this many tokens go to the next stage device to device
  // over an NCCL link (services/worker/nccl_stage_links.h; a buffer of that many rows on each
  // side), larger ones and all of them where the link cannot be made as bytes over gRPC. It also
  // bounds the links the previous stage may make to this one. Each expert worker gets a link of
  // as many rows too, and a layer's rows and slot outputs go over it in calls that fit. 0: none.
  int64_t nccl_max_rows = 8192;
  // Links made to the next stage: one per step that may be in flight below this stage at once (the
  // router's --pipeline-steps), each with its buffer on both GPUs; a step that finds them all busy
  // goes as bytes.
  int nccl_output_links = 2;
  int nccl_max_links = 16;  // links the previous stage may hold to this one at once
  std::chrono::milliseconds nccl_timeout{30'000};  // joining a link, and each transfer
  std::chrono::milliseconds nccl_retry{10'000};    // how often a broken link is made again
};
absl::StatusOr<std::unique_ptr<RunningProcess>> StartStageWorker(const StageWorkerConfig& config);

struct RouterProcessConfig {
  ProcessConfig process;
  std::string model_dir;      // for its config only (model_source.h); the router loads no weights
  std::string first_stage;    // address
  std::string session_store;  // address; empty: no sessions
  RouterConfig router;
};
absl::StatusOr<std::unique_ptr<RunningProcess>> StartRouter(const RouterProcessConfig& config);

}  // namespace deltaserve::services
