#include "cli/engine.h"

#include <cstdio>

#include "base/status_macros.h"

namespace deltaserve::cli {

void AddEngineFlags(CLI::App& command, EngineArgs& engine) {
  command.add_option("--model", engine.model_dir, "Checkpoint directory")->required();
  command.add_option("--threads", engine.threads, "CPU threads (0: all)")->check(CLI::NonNegativeNumber);
  command.add_option("--kda", engine.kda, "KDA algorithm")
      ->check(CLI::IsMember({"auto", "chunked", "recurrent"}));
  command.add_option("--mla", engine.mla, "MLA attention form")
      ->check(CLI::IsMember({"auto", "expanded", "absorbed"}));
  command.add_flag("--biased-routing", engine.biased_routing,
                   "Routing weights from sigmoid + bias (HF remote code) instead of the unbiased scores");
}

model::LayerOptions LayerOptionsFrom(const EngineArgs& args) {
  model::LayerOptions layers;
  if (args.kda == "chunked") layers.kda_algorithm = model::KdaAlgorithmChoice::kChunked;
  if (args.kda == "recurrent") layers.kda_algorithm = model::KdaAlgorithmChoice::kRecurrent;
  if (args.mla == "expanded") layers.mla_form = model::MlaFormChoice::kExpanded;
  if (args.mla == "absorbed") layers.mla_form = model::MlaFormChoice::kAbsorbed;
  layers.biased_routing = args.biased_routing;
  return layers;
}

absl::StatusOr<Engine> LoadEngine(const EngineArgs& args) {
  model::ModelOptions options;
  options.layers = LayerOptionsFrom(args);
  Engine engine;
  engine.backend = std::make_unique<kernels::cpu::CpuBackend>(
      kernels::cpu::CpuBackendOptions{.num_threads = args.threads});
  DS_ASSIGN_OR_RETURN(engine.model,
                      model::KimiLinearModel::Load(args.model_dir, *engine.backend, options));
  return engine;
}

int ReportError(const absl::Status& status) {
  std::fprintf(stderr, "deltaserve: %s\n", std::string(status.message()).c_str());
  return 1;
}

}  // namespace deltaserve::cli
