#include "services/process/cluster_processes.h"

#include <algorithm>
#include <condition_variable>
#include <limits>
#include <mutex>
#include <thread>

#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "base/status_macros.h"
#include "model/config/kimi_linear_config.h"
#include "model/config/model_source.h"
#include "model/kimi_linear_model.h"
#include "services/common/server_runner.h"
#include "services/process/process_support.h"
#include "services/router/admin_service.h"
#include "services/router/engine_core.h"
#include "services/router/inference_service.h"
#include "services/router/router_metrics.h"
#include "services/session_store/session_store_service.h"
#include "services/session_store/snapshot_store.h"
#include "services/session_store/store_client.h"
#include "services/session_store/store_metrics.h"
#include "services/transport/grpc_channels.h"
#include "services/worker/expert_shard.h"
#include "services/worker/nccl_expert_links.h"
#include "services/worker/nccl_output_link.h"
#include "services/worker/nccl_stage_links.h"
#include "services/worker/remote_expert_runner.h"
#include "services/worker/stage_engine.h"
#include "spdlog/spdlog.h"

namespace deltaserve::services {
namespace {

std::string Hex(uint64_t value) { return absl::StrFormat("%016x", value); }

std::string HostName() {
  char name[256] = {};
  return gethostname(name, sizeof(name) - 1) == 0 ? std::string(name) : std::string("unknown-host");
}

// The parts of a role, destroyed in reverse order of declaration after the server stops.
class Process final : public RunningProcess {
 public:
  // `drain` (optional) runs first at shutdown, with the server still up and marked NOT_SERVING,
  // and may use the whole grace period; `stop` runs after the server has stopped (stops engines
  // and threads).
  Process(std::vector<std::shared_ptr<void>> keep_alive, std::unique_ptr<MetricsServer> metrics,
          std::unique_ptr<GrpcServer> server, std::function<void()> stop,
          std::function<void(std::chrono::milliseconds)> drain = nullptr)
      : keep_alive_(std::move(keep_alive)),
        metrics_(std::move(metrics)),
        server_(std::move(server)),
        address_(server_->address()),
        stop_(std::move(stop)),
        drain_(std::move(drain)) {}
  ~Process() override { Shutdown(std::chrono::milliseconds(0)); }

  const std::string& address() const override { return address_; }
  int metrics_port() const override { return metrics_ == nullptr ? 0 : metrics_->port(); }
  void Shutdown(std::chrono::milliseconds grace) override {
    if (server_ == nullptr) return;
    auto deadline = std::chrono::system_clock::now() + grace;
    if (drain_) {
      server_->SetServingStatus(false);
      drain_(grace);
      // The requests are done; their handlers only have to return.
      deadline = std::max(deadline, std::chrono::system_clock::now() + kHandlerReturnGrace);
    }
    server_->Shutdown(deadline);
    if (stop_) stop_();
    server_.reset();
    metrics_.reset();
    // Newest first: a component never outlives what it was built on.
    while (!keep_alive_.empty()) keep_alive_.pop_back();
  }

 private:
  static constexpr std::chrono::seconds kHandlerReturnGrace{2};
  std::vector<std::shared_ptr<void>> keep_alive_;  // components, in construction order
  std::unique_ptr<MetricsServer> metrics_;
  std::unique_ptr<GrpcServer> server_;
  std::string address_;
  std::function<void()> stop_;
  std::function<void(std::chrono::milliseconds)> drain_;
};

// Removes expired sessions every `interval` until stopped.
class Sweeper {
 public:
  Sweeper(SnapshotStore& store, std::chrono::seconds interval)
      : thread_([this, &store, interval] {
          std::unique_lock<std::mutex> lock(mutex_);
          while (!stop_) {
            if (cv_.wait_for(lock, interval, [this] { return stop_; })) break;
            lock.unlock();
            store.SweepExpired();
            lock.lock();
          }
        }) {}
  ~Sweeper() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<RunningProcess>> StartSessionStore(const SessionStoreConfig& config) {
  const GrpcServerConfig& server = config.process.server;
  DS_RETURN_IF_ERROR(server.Validate());
  DS_ASSIGN_OR_RETURN(std::unique_ptr<MetricsServer> metrics,
                      StartMetrics(config.process.metrics_listen, "session_store"));
  DS_ASSIGN_OR_RETURN(std::unique_ptr<SnapshotStore> opened, SnapshotStore::Open(config.store));
  std::shared_ptr<SnapshotStore> store = std::move(opened);
  std::vector<std::shared_ptr<void>> keep = {store};
  if (metrics != nullptr) {
    auto collectable = std::make_shared<StoreMetrics>(*store);
    metrics->AddCollectable(collectable);
    keep.push_back(collectable);
  }
  auto service = std::make_shared<SessionStoreService>(*store);
  keep.push_back(service);
  keep.push_back(std::make_shared<Sweeper>(*store, config.sweep_interval));
  grpc::Service* services[] = {service.get()};
  DS_ASSIGN_OR_RETURN(std::unique_ptr<GrpcServer> grpc_server, GrpcServer::Start(server, services));
  grpc_server->SetServingStatus("deltaserve.internal.v1.SessionStore", true);
  return std::make_unique<Process>(std::move(keep), std::move(metrics), std::move(grpc_server), nullptr);
}

absl::StatusOr<std::unique_ptr<RunningProcess>> StartExpertWorker(const ExpertWorkerConfig& config) {
  DS_RETURN_IF_ERROR(config.process.server.Validate());
  DS_ASSIGN_OR_RETURN(std::unique_ptr<MetricsServer> metrics,
                      StartMetrics(config.process.metrics_listen, "expert_worker"));
  DS_ASSIGN_OR_RETURN(std::shared_ptr<kernels::Backend> backend, MakeBackend(config.backend));
  DS_ASSIGN_OR_RETURN(std::unique_ptr<ExpertShard> loaded,
                      ExpertShard::Load(config.model_dir, *backend, config.expert_begin, config.expert_end));
  std::shared_ptr<ExpertShard> shard = std::move(loaded);
  WorkerDescription description;
  description.model_fingerprint = Hex(shard->fingerprint());
  description.expert_begin = config.expert_begin;
  description.expert_end = config.expert_end;
  std::vector<std::shared_ptr<void>> keep = {backend, shard};
  std::shared_ptr<ExpertMetrics> expert_metrics;
  if (metrics != nullptr) {
    keep.push_back(WatchEngineMemory(*metrics, backend));
    DS_ASSIGN_OR_RETURN(std::unique_ptr<ExpertMetrics> created, ExpertMetrics::Create(metrics->registry()));
    expert_metrics = std::move(created);
    keep.push_back(expert_metrics);
  }
  // The calls go to the shard, through its NCCL links where it takes them, counted where there
  // are metrics.
  ExpertChannel* experts = shard.get();
  ExpertWorkerService::ConnectNcclHandler connect;
  if (config.backend.device == "cuda" && config.nccl_max_rows > 0) {
    NcclExpertLinkLimits limits;
    limits.device = config.backend.cuda_device;
    limits.max_capacity_bytes =
        static_cast<size_t>(config.nccl_max_rows * shard->config().hidden_size) * sizeof(float);
    limits.max_links = config.nccl_max_links;
    limits.timeout = config.nccl_timeout;
    auto links = std::make_shared<NcclExpertLinks>(*shard, *backend, limits, NcclLinkFactory::Nccl(),
                                                   expert_metrics.get());
    keep.push_back(links);
    experts = links.get();
    connect = [links](const internal::v1::ConnectNcclRequest& request, const NcclLink::GiveUp& give_up) {
      return links->Connect(request, give_up);
    };
  }
  if (expert_metrics != nullptr) {
    auto counted = std::make_shared<CountedExperts>(*experts, *expert_metrics);
    keep.push_back(counted);
    experts = counted.get();
  }
  auto service = std::make_shared<ExpertWorkerService>(*experts, description, connect);
  keep.push_back(service);
  grpc::Service* services[] = {service.get()};
  DS_ASSIGN_OR_RETURN(std::unique_ptr<GrpcServer> server, GrpcServer::Start(config.process.server, services));
  server->SetServingStatus("deltaserve.internal.v1.ExpertWorker", true);
  return std::make_unique<Process>(std::move(keep), std::move(metrics), std::move(server), nullptr);
}

absl::StatusOr<std::unique_ptr<RunningProcess>> StartStageWorker(const StageWorkerConfig& config) {
  DS_RETURN_IF_ERROR(config.process.server.Validate());
  DS_ASSIGN_OR_RETURN(std::unique_ptr<MetricsServer> metrics,
                      StartMetrics(config.process.metrics_listen, "stage_worker"));
  std::vector<std::shared_ptr<void>> keep;
  const std::chrono::milliseconds wait = config.process.peer_wait;
  const std::chrono::milliseconds timeout = config.process.call_timeout;

  // Expert shards first: the model loads without routed experts when they live elsewhere.
  DS_ASSIGN_OR_RETURN(model::KimiLinearConfig model_config, model::LoadModelSourceConfig(config.model_dir));
  // The NCCL data plane, on a GPU: a link to each expert worker and to the next stage made here
  // (the rows go over gRPC where one cannot be made), links from the previous stage joined when
  // it asks.
  const bool on_gpu = config.backend.device == "cuda" && config.nccl_max_rows > 0;
  const size_t capacity = static_cast<size_t>(config.nccl_max_rows * model_config.hidden_size) * sizeof(float);
  NcclOutputLinkOptions link_options;
  link_options.device = config.backend.cuda_device;
  link_options.capacity_bytes = capacity;
  link_options.timeout = config.nccl_timeout;
  link_options.retry = config.nccl_retry;
  // How this stage names itself to the expert workers (one link each per owner): stable across
  // restarts, unless its port is picked at start.
  const std::string& listen = config.process.server.listen_address;
  const std::string owner = absl::StrCat(HostName(), " ", listen, " layers ", config.layer_begin, "-",
                                         config.layer_end - 1,
                                         absl::EndsWith(listen, ":0") ? absl::StrCat(" pid ", getpid()) : "");
  if (on_gpu && !config.expert_workers.empty() && config.nccl_max_rows < model_config.num_experts_per_token) {
    spdlog::warn("--nccl-max-rows {} is below a token's {} slots: calls to expert workers go over gRPC",
                 config.nccl_max_rows, model_config.num_experts_per_token);
  }
  std::vector<ExpertShardLink> links;
  std::vector<std::string> shard_fingerprints;
  for (const std::string& address : config.expert_workers) {
    auto channel = InternalChannel(address);
    DS_RETURN_IF_ERROR(WaitForPeer(channel, absl::StrCat("expert worker ", address), wait));
    auto expert_channel = std::make_shared<GrpcExpertChannel>(channel, timeout);
    DS_ASSIGN_OR_RETURN(WorkerDescription d, expert_channel->Describe());
    uint64_t shard_fingerprint = 0;
    if (!absl::SimpleHexAtoi(d.model_fingerprint, &shard_fingerprint)) {
      return absl::FailedPreconditionError(absl::StrCat("expert worker ", address,
                                                        " reports fingerprint '", d.model_fingerprint, "'"));
    }
    std::shared_ptr<NcclOutputLink> nccl;
    if (on_gpu) {
      const std::string name = absl::StrCat("expert worker ", address);
      NcclOutputLinkOptions options = link_options;
      options.owner = owner;
      options.both_ways = true;
      nccl = std::make_shared<NcclOutputLink>(expert_channel, name, options);
      if (const absl::Status status = nccl->status(); status.ok()) {
        spdlog::info("calls of up to {} token rows and slot outputs go to {} over NCCL", config.nccl_max_rows, name);
      } else {
        spdlog::warn("rows go to {} over gRPC for now: no NCCL link ({})", name, status.ToString());
      }
      keep.push_back(nccl);
    }
    links.push_back({d.expert_begin, d.expert_end, expert_channel.get(), shard_fingerprint, nccl.get()});
    shard_fingerprints.push_back(d.model_fingerprint);
    keep.push_back(expert_channel);
  }
  std::shared_ptr<RemoteExpertRunner> runner;
  model::ModelOptions model_options;
  model_options.layers = config.layers;
  model_options.scope.layer_begin = config.layer_begin;
  model_options.scope.layer_end = config.layer_end;
  DS_ASSIGN_OR_RETURN(std::shared_ptr<kernels::Backend> backend, MakeBackend(config.backend));
  keep.push_back(backend);
  if (metrics != nullptr) keep.push_back(WatchEngineMemory(*metrics, backend));
  if (!links.empty()) {
    DS_RETURN_IF_ERROR(CheckShardCoverage(links, model_config.num_experts));
    std::shared_ptr<LinkPathMetrics> call_metrics;
    if (metrics != nullptr) {
      DS_ASSIGN_OR_RETURN(std::unique_ptr<LinkPathMetrics> created,
                          LinkPathMetrics::ForExpertCalls(metrics->registry()));
      call_metrics = std::move(created);
      keep.push_back(call_metrics);
    }
    runner = std::make_shared<RemoteExpertRunner>(*backend, links, model_config.hidden_size, call_metrics.get());
    keep.push_back(runner);
    model_options.scope.load_routed_experts = false;
    model_options.experts = runner.get();
  }
  DS_ASSIGN_OR_RETURN(std::unique_ptr<model::KimiLinearModel> loaded,
                      model::KimiLinearModel::Load(config.model_dir, *backend, model_options));
  std::shared_ptr<model::KimiLinearModel> model = std::move(loaded);
  keep.push_back(model);
  const std::string fingerprint = Hex(model->fingerprint());
  for (size_t i = 0; i < shard_fingerprints.size(); ++i) {
    if (shard_fingerprints[i] != fingerprint) {
      return absl::FailedPreconditionError(absl::StrCat(
          "expert worker ", config.expert_workers[i], " serves model ", shard_fingerprints[i],
          "; this stage serves ", fingerprint));
    }
  }

  std::shared_ptr<GrpcStageChannel> next;
  bool later_stages_take_reservations = true;
  if (!config.next_stage.empty()) {
    auto channel = InternalChannel(config.next_stage);
    DS_RETURN_IF_ERROR(WaitForPeer(channel, absl::StrCat("next stage ", config.next_stage), wait));
    next = std::make_shared<GrpcStageChannel>(channel, timeout);
    DS_ASSIGN_OR_RETURN(WorkerDescription d, next->Describe());
    if (d.model_fingerprint != fingerprint || d.layer_begin != config.layer_end) {
      return absl::FailedPreconditionError(absl::StrCat(
          "next stage ", config.next_stage, " holds layers ", d.layer_begin, "-", d.layer_end - 1,
          " of model ", d.model_fingerprint, "; this stage ends at layer ", config.layer_end - 1,
          " of model ", fingerprint));
    }
    keep.push_back(next);
    later_stages_take_reservations = d.takes_page_reservations;
    if (!later_stages_take_reservations) {
      spdlog::warn("next stage {} takes no page reservations (an earlier build): a later stage's page shortage "
                   "sends a step's every sequence back to the queue",
                   config.next_stage);
    }
  } else if (!model->is_last_stage()) {
    return absl::InvalidArgumentError(absl::StrCat("layers end at ", config.layer_end - 1, " of ",
                                                   model_config.num_layers,
                                                   ": a stage that is not last needs --next"));
  }
  std::shared_ptr<NcclStageInput> nccl_input;
  if (on_gpu) {
    nccl_input = std::make_shared<NcclStageInput>(config.backend.cuda_device, capacity, config.nccl_timeout,
                                                  config.nccl_max_links);
    keep.push_back(nccl_input);
  }
  // Each link is made here, and kept up (or given up for good) by its own keeper.
  std::vector<NcclOutputLink*> nccl_outputs;
  int made = 0;
  absl::Status first_failure;
  for (int i = 0; next != nullptr && on_gpu && i < config.nccl_output_links; ++i) {
    NcclOutputLinkOptions options = link_options;
    options.owner = absl::StrCat(owner, " link ", i);  // a restarted stage's link i replaces its predecessor's
    auto output = std::make_shared<NcclOutputLink>(next, "the next stage", options);
    keep.push_back(output);
    nccl_outputs.push_back(output.get());
    if (const absl::Status status = output->status(); status.ok()) {
      ++made;
    } else if (first_failure.ok()) {
      first_failure = status;
    }
  }
  if (made > 0) {
    spdlog::info("hidden rows of steps up to {} tokens go to the next stage over NCCL ({} of {} links)",
                 config.nccl_max_rows, made, config.nccl_output_links);
  }
  if (!first_failure.ok()) {
    spdlog::warn("{} of {} NCCL links to the next stage not made for now ({}); steps that find none go over gRPC",
                 config.nccl_output_links - made, config.nccl_output_links, first_failure.ToString());
  }
  std::shared_ptr<StoreClient> store;
  if (!config.session_store.empty()) {
    auto channel = InternalChannel(config.session_store);
    DS_RETURN_IF_ERROR(WaitForPeer(channel, absl::StrCat("session store ", config.session_store), wait));
    store = std::make_shared<GrpcStoreClient>(channel, GrpcStoreClientOptions{timeout.count()});
    keep.push_back(store);
  }
  std::shared_ptr<LinkPathMetrics> stage_metrics;
  if (metrics != nullptr && next != nullptr) {
    DS_ASSIGN_OR_RETURN(std::unique_ptr<LinkPathMetrics> created, LinkPathMetrics::ForHandoffs(metrics->registry()));
    stage_metrics = std::move(created);
    keep.push_back(stage_metrics);
  }
  const StageEngineOptions engine_options{.max_open_sequences = config.max_open_sequences,
                                         .reserve_on_later_stages = later_stages_take_reservations};
  auto engine = std::make_shared<StageEngine>(*model, store.get(), next.get(), engine_options, nccl_input.get(),
                                              nccl_outputs, stage_metrics.get());
  keep.push_back(engine);
  WorkerDescription description;
  description.model_fingerprint = fingerprint;
  description.layer_begin = config.layer_begin;
  description.layer_end = config.layer_end;
  description.takes_page_reservations = later_stages_take_reservations;
  StageWorkerService::ConnectNcclHandler connect_nccl;
  if (nccl_input != nullptr) {
    connect_nccl = [input = nccl_input.get()](const internal::v1::ConnectNcclRequest& request,
                                              const NcclLink::GiveUp& give_up) {
      return input->Connect(request, give_up);
    };
  }
  auto service = std::make_shared<StageWorkerService>(*engine, description, std::move(connect_nccl));
  keep.push_back(service);
  grpc::Service* services[] = {service.get()};
  DS_ASSIGN_OR_RETURN(std::unique_ptr<GrpcServer> server, GrpcServer::Start(config.process.server, services));
  server->SetServingStatus("deltaserve.internal.v1.StageWorker", true);
  return std::make_unique<Process>(std::move(keep), std::move(metrics), std::move(server), nullptr);
}

absl::StatusOr<std::unique_ptr<RunningProcess>> StartRouter(const RouterProcessConfig& config) {
  DS_RETURN_IF_ERROR(config.process.server.Validate());
  DS_RETURN_IF_ERROR(config.router.Validate());
  DS_ASSIGN_OR_RETURN(std::unique_ptr<MetricsServer> metrics,
                      StartMetrics(config.process.metrics_listen, "router"));
  std::vector<std::shared_ptr<void>> keep;
  DS_ASSIGN_OR_RETURN(model::KimiLinearConfig model_config,
                      model::LoadModelSourceConfig(config.model_dir));
  auto channel = InternalChannel(config.first_stage);
  DS_RETURN_IF_ERROR(WaitForPeer(channel, absl::StrCat("first stage ", config.first_stage),
                                 config.process.peer_wait));
  auto stage = std::make_shared<GrpcStageChannel>(channel, config.process.call_timeout);
  keep.push_back(stage);
  DS_ASSIGN_OR_RETURN(WorkerDescription first, stage->Describe());
  if (first.layer_begin != 0) {
    return absl::FailedPreconditionError(absl::StrCat("first stage ", config.first_stage,
                                                      " starts at layer ", first.layer_begin));
  }
  uint64_t fingerprint = 0;
  if (absl::SimpleHexAtoi(first.model_fingerprint, &fingerprint) == false) {
    return absl::FailedPreconditionError(absl::StrCat("first stage reports fingerprint '",
                                                      first.model_fingerprint, "'"));
  }
  std::shared_ptr<StoreClient> store;
  if (!config.session_store.empty()) {
    auto store_channel = InternalChannel(config.session_store);
    DS_RETURN_IF_ERROR(WaitForPeer(store_channel, absl::StrCat("session store ", config.session_store),
                                   config.process.peer_wait));
    store = std::make_shared<GrpcStoreClient>(store_channel, GrpcStoreClientOptions{config.process.call_timeout.count()});
    keep.push_back(store);
  }
  std::shared_ptr<RouterMetrics> router_metrics;
  if (metrics != nullptr) {
    DS_ASSIGN_OR_RETURN(std::unique_ptr<RouterMetrics> created, RouterMetrics::Create(metrics->registry()));
    router_metrics = std::move(created);
    keep.push_back(router_metrics);
  }
  const int64_t max_context =
      model_config.max_position_embeddings > 0 ? model_config.max_position_embeddings
                                               : std::numeric_limits<int64_t>::max();
  auto engine = std::make_shared<EngineCore>(config.router,
                                             RouterModel{model_config, fingerprint, max_context},
                                             *stage, store.get(), router_metrics.get());
  keep.push_back(engine);
  auto service = std::make_shared<InferenceService>(*engine, store.get(), config.process.server);
  keep.push_back(service);
  auto admin = std::make_shared<AdminService>(*engine);
  keep.push_back(admin);
  grpc::Service* services[] = {service.get(), admin.get()};
  DS_ASSIGN_OR_RETURN(std::unique_ptr<GrpcServer> server, GrpcServer::Start(config.process.server, services));
  server->SetServingStatus("deltaserve.v1.Inference", true);
  GrpcServer* server_ptr = server.get();
  admin->SetStopServing([server_ptr] { server_ptr->SetServingStatus(false); });
  EngineCore* engine_ptr = engine.get();
  return std::make_unique<Process>(
      std::move(keep), std::move(metrics), std::move(server), [engine_ptr] { engine_ptr->Shutdown(); },
      [engine_ptr](std::chrono::milliseconds grace) { engine_ptr->Drain(grace); });
}

}  // namespace deltaserve::services
