#include "services/process/serve_process.h"

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "model/kimi_linear_model.h"
#include "services/common/server_runner.h"
#include "services/process/process_support.h"
#include "services/router/admin_service.h"
#include "services/router/engine_core.h"
#include "services/router/inference_service.h"
#include "services/router/router_metrics.h"
#include "services/session_store/snapshot_store.h"
#include "services/session_store/store_client.h"
#include "services/session_store/store_metrics.h"
#include "services/worker/stage_engine.h"

namespace deltaserve::services {

absl::Status ServeConfig::Validate() const {
  if (model_dir.empty()) return absl::InvalidArgumentError("--model is required");
  if (backend.cpu_threads < 0) {
    return absl::InvalidArgumentError(absl::StrCat("--threads must be >= 0, got ", backend.cpu_threads));
  }
  DS_RETURN_IF_ERROR(server.Validate());
  DS_RETURN_IF_ERROR(router.Validate());
  return store.Validate();
}

namespace {

// Declared in dependency order: destroyed in reverse, the server first.
struct ServeParts {
  std::unique_ptr<MetricsServer> metrics;
  std::shared_ptr<kernels::Backend> backend;  // shared with engine_memory, which a scrape may hold
  std::shared_ptr<void> engine_memory;  // WatchEngineMemory's
  std::unique_ptr<model::KimiLinearModel> model;
  std::unique_ptr<SnapshotStore> store;
  std::shared_ptr<StoreMetrics> store_metrics;
  std::unique_ptr<LocalStoreClient> store_client;
  std::unique_ptr<StageEngine> stage;
  std::unique_ptr<RouterMetrics> router_metrics;
  std::unique_ptr<EngineCore> engine;
  std::unique_ptr<InferenceService> service;
  std::unique_ptr<AdminService> admin;
  std::unique_ptr<GrpcServer> server;
};

class ServeProcess final : public RunningProcess {
 public:
  explicit ServeProcess(std::unique_ptr<ServeParts> parts) : p_(std::move(parts)) {}
  ~ServeProcess() override { Shutdown(std::chrono::milliseconds(0)); }
  const std::string& address() const override { return address_; }
  int metrics_port() const override { return p_->metrics == nullptr ? 0 : p_->metrics->port(); }
  void Shutdown(std::chrono::milliseconds grace) override {
    if (p_->server == nullptr) return;
    // Stop admitting and let the requests in flight finish (or save their sessions), then stop.
    p_->server->SetServingStatus(false);
    p_->engine->Drain(grace);
    p_->server->Shutdown(std::chrono::system_clock::now() + kHandlerReturnGrace);
    p_->engine->Shutdown();
    p_->server.reset();
    p_->metrics.reset();  // no scrape may read the store or the engine's metrics after this
  }

 private:
  static constexpr std::chrono::seconds kHandlerReturnGrace{2};
  std::unique_ptr<ServeParts> p_;
  const std::string address_ = p_->server->address();
};

}  // namespace

absl::StatusOr<std::unique_ptr<RunningProcess>> StartServe(const ServeConfig& config) {
  DS_RETURN_IF_ERROR(config.Validate());
  auto p = std::make_unique<ServeParts>();
  DS_ASSIGN_OR_RETURN(p->metrics, StartMetrics(config.metrics_listen, "serve"));
  DS_ASSIGN_OR_RETURN(p->backend, MakeBackend(config.backend));
  if (p->metrics != nullptr) p->engine_memory = WatchEngineMemory(*p->metrics, p->backend);
  model::ModelOptions model_options;
  model_options.layers = config.layers;
  DS_ASSIGN_OR_RETURN(p->model, model::KimiLinearModel::Load(config.model_dir, *p->backend, model_options));
  DS_ASSIGN_OR_RETURN(p->store, SnapshotStore::Open(config.store));
  p->store_client = std::make_unique<LocalStoreClient>(*p->store);
  p->stage = std::make_unique<StageEngine>(*p->model, p->store_client.get(), nullptr,
                                           StageEngineOptions{.max_open_sequences = config.router.max_running});
  if (p->metrics != nullptr) {
    DS_ASSIGN_OR_RETURN(p->router_metrics, RouterMetrics::Create(p->metrics->registry()));
    p->store_metrics = std::make_shared<StoreMetrics>(*p->store);
    p->metrics->AddCollectable(p->store_metrics);
  }
  RouterModel router_model{p->model->config(), p->model->fingerprint(), p->model->max_context()};
  p->engine = std::make_unique<EngineCore>(config.router, std::move(router_model), *p->stage,
                                           p->store_client.get(), p->router_metrics.get());
  p->service = std::make_unique<InferenceService>(*p->engine, p->store_client.get(), config.server);
  p->admin = std::make_unique<AdminService>(*p->engine);
  grpc::Service* services[] = {p->service.get(), p->admin.get()};
  DS_ASSIGN_OR_RETURN(p->server, GrpcServer::Start(config.server, services));
  p->server->SetServingStatus("deltaserve.v1.Inference", true);
  GrpcServer* server = p->server.get();
  p->admin->SetStopServing([server] { server->SetServingStatus(false); });
  return std::make_unique<ServeProcess>(std::move(p));
}

}  // namespace deltaserve::services
