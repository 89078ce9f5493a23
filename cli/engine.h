// Builds the backend (--device) and loads the model the way every model-running command does.
#pragma once

#include <memory>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "cli/commands.h"
#include "kernels/backend_factory.h"
#include "model/kimi_linear_model.h"

namespace deltaserve::cli {

struct Engine {
  std::unique_ptr<kernels::Backend> backend;
  std::unique_ptr<model::KimiLinearModel> model;
};

// Declares --model, --device, --threads, --device-memory-gib, --cuda-graphs, --kda, --mla,
// --mla-expanded-max-keys, --mla-expanded-window-keys and --biased-routing on `command`.
void AddEngineFlags(CLI::App& command, EngineArgs& engine);

absl::StatusOr<Engine> LoadEngine(const EngineArgs& args);

// The algorithm choices of --kda, --mla, --mla-expanded-max-keys and --biased-routing.
model::LayerOptions LayerOptionsFrom(const EngineArgs& args);
kernels::BackendChoice BackendChoiceFrom(const EngineArgs& args);

// Prints "deltaserve: <message>" to stderr and returns the exit code for a failed command.
int ReportError(const absl::Status& status);

}  // namespace deltaserve::cli
