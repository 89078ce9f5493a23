#include "cli/commands.h"
#include "cli/subcommand.h"

namespace deltaserve::cli {

std::vector<std::unique_ptr<Subcommand>> AllSubcommands() {
  std::vector<std::unique_ptr<Subcommand>> commands;
  commands.push_back(MakeInitModelCommand());
  commands.push_back(MakeScoreCommand());
  commands.push_back(MakeGenerateCommand());
  commands.push_back(MakeServeCommand());
  commands.push_back(MakeRouterCommand());
  commands.push_back(MakeWorkerCommand());
  commands.push_back(MakeSessionStoreCommand());
  commands.push_back(MakeClientCommand());
  return commands;
}

}  // namespace deltaserve::cli
