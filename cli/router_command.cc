// `deltaserve router`: the public API and continuous batching over a chain of stage workers.
#include "cli/commands.h"
#include "cli/engine.h"
#include "cli/server_flags.h"
#include "services/process/cluster_processes.h"

namespace deltaserve::cli {
namespace {

class RouterCommand final : public Subcommand {
 public:
  CLI::App* Register(CLI::App& app) override {
    CLI::App* cmd = app.add_subcommand("router", "Run the router of a split cluster");
    cmd->add_option("--model", config_.model_dir,
                    "Checkpoint directory or random:<preset>[:<seed>] (only its config is read)")
        ->required();
    cmd->add_option("--first-stage", config_.first_stage, "Address of the stage holding layer 0")
        ->required();
    cmd->add_option("--session-store", config_.session_store, "Session store address; empty: no sessions");
    AddServerFlags(*cmd, flags_, "0.0.0.0:50051");
    AddRouterFlags(*cmd, config_.router);
    return cmd;
  }

  int Run() override {
    return RunServerRole("router", flags_, [this] {
      config_.process = flags_.process;
      return services::StartRouter(config_);
    });
  }

 private:
  ServerFlags flags_;
  services::RouterProcessConfig config_;
};

}  // namespace

std::unique_ptr<Subcommand> MakeRouterCommand() { return std::make_unique<RouterCommand>(); }

}  // namespace deltaserve::cli
