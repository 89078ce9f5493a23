// One `deltaserve` subcommand: it declares its flags on the parser, then runs with them.
#pragma once

#include <memory>
#include <vector>

#include "CLI/CLI.hpp"

namespace deltaserve::cli {

// Exit status for unusable arguments (main prints the command's usage).
inline constexpr int kUsageError = -1;

class Subcommand {
 public:
  virtual ~Subcommand() = default;
  // Adds the subcommand (and its flags) to `app`; returns it so main can tell which ran.
  virtual CLI::App* Register(CLI::App& app) = 0;
  // Runs after a successful parse; returns the exit status or kUsageError.
  virtual int Run() = 0;
};

// Every subcommand, in the order `deltaserve --help` lists them.
std::vector<std::unique_ptr<Subcommand>> AllSubcommands();

}  // namespace deltaserve::cli
