// `deltaserve session-store`: the session store of a split cluster.
#include "cli/commands.h"
#include "cli/server_flags.h"
#include "services/process/cluster_processes.h"

namespace deltaserve::cli {
namespace {

class SessionStoreCommand final : public Subcommand {
 public:
  CLI::App* Register(CLI::App& app) override {
    CLI::App* cmd = app.add_subcommand("session-store", "Run the session store of a split cluster");
    cmd->add_option("--data-dir", config_.store.data_dir,
                    "Directory of the durable tier; empty: memory only (sessions die with the process)");
    AddStoreFlags(*cmd, config_.store, "");
    cmd->add_option("--sweep-seconds", sweep_seconds_, "How often expired sessions are removed")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    AddServerFlags(*cmd, flags_, "0.0.0.0:50071");
    return cmd;
  }

  int Run() override {
    return RunServerRole("session_store", flags_, [this] {
      config_.process = flags_.process;
      config_.sweep_interval = std::chrono::seconds(sweep_seconds_);
      return services::StartSessionStore(config_);
    });
  }

 private:
  ServerFlags flags_;
  services::SessionStoreConfig config_;
  int64_t sweep_seconds_ = 60;
};

}  // namespace

std::unique_ptr<Subcommand> MakeSessionStoreCommand() { return std::make_unique<SessionStoreCommand>(); }

}  // namespace deltaserve::cli
