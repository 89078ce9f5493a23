#include "cli/commands.h"
#include "cli/subcommand.h"

namespace deltaserve::cli {

std::vector<std::unique_ptr<Subcommand>> AllSubcommands() {
  std::vector<std::unique_ptr<Subcommand>> commands;
  commands.push_back(MakeInitModelCommand());
  commands.push_back(MakeScoreCommand());
  commands.push_back(MakeGenerateCommand());
  return commands;
}

}  // namespace deltaserve::cli
