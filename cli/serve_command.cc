// `deltaserve serve`: router, all layers and experts, and the session store in one process.
#include "cli/commands.h"
#include "cli/engine.h"
#include "cli/server_flags.h"
#include "services/process/serve_process.h"

namespace deltaserve::cli {
namespace {

class ServeCommand final : public Subcommand {
 public:
  CLI::App* Register(CLI::App& app) override {
    CLI::App* cmd = app.add_subcommand("serve", "Serve the gRPC API with every role in this process");
    AddEngineFlags(*cmd, engine_);
    AddServerFlags(*cmd, flags_, "0.0.0.0:50051");
    AddRouterFlags(*cmd, config_.router);
    cmd->add_option("--store-dir", config_.store.data_dir,
                    "Session store directory (durable sessions); empty: sessions in memory only");
    AddStoreFlags(*cmd, config_.store, "store-");
    return cmd;
  }

  int Run() override {
    return RunServerRole("serve", flags_, [this] {
      config_.model_dir = engine_.model_dir;
      config_.backend = BackendChoiceFrom(engine_);
      config_.layers = LayerOptionsFrom(engine_);
      config_.server = flags_.process.server;
      config_.metrics_listen = flags_.process.metrics_listen;
      return services::StartServe(config_);
    });
  }

 private:
  EngineArgs engine_;
  ServerFlags flags_;
  services::ServeConfig config_;
};

}  // namespace

std::unique_ptr<Subcommand> MakeServeCommand() { return std::make_unique<ServeCommand>(); }

}  // namespace deltaserve::cli
