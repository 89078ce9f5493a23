// `deltaserve`: one binary, one subcommand per job. Flags are parsed here (through each
// subcommand's Register) and only here.
#include <cstdio>
#include <memory>
#include <vector>

#include "CLI/CLI.hpp"
#include "cli/subcommand.h"

namespace deltaserve::cli {
namespace {

constexpr int kUsageExitCode = 2;

int Main(int argc, char** argv) {
  CLI::App app{"deltaserve: a Kimi Linear inference server", "deltaserve"};
  app.require_subcommand(1);
  app.failure_message(CLI::FailureMessage::help);

  std::vector<std::unique_ptr<Subcommand>> commands = AllSubcommands();
  std::vector<CLI::App*> parsers;
  for (const auto& command : commands) parsers.push_back(command->Register(app));

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return kUsageExitCode;
  }
  for (size_t i = 0; i < commands.size(); ++i) {
    if (!parsers[i]->parsed()) continue;
    const int status = commands[i]->Run();
    if (status == kUsageError) {
      // The deepest parsed subcommand's usage (e.g. `client generate`).
      CLI::App* shown = parsers[i];
      for (CLI::App* sub = shown; sub != nullptr;) {
        shown = sub;
        CLI::App* next = nullptr;
        for (CLI::App* child : sub->get_subcommands()) next = child;
        sub = next;
      }
      std::fputs(shown->help().c_str(), stderr);
      return kUsageExitCode;
    }
    return status;
  }
  return kUsageExitCode;
}

}  // namespace
}  // namespace deltaserve::cli

int main(int argc, char** argv) { return deltaserve::cli::Main(argc, argv); }
