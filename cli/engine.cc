#include "cli/engine.h"

#include <cstdio>

#include "base/status_macros.h"

namespace deltaserve::cli {

absl::StatusOr<Engine> LoadEngine(const EngineArgs& args) {
  model::ModelOptions options;
  if (args.kda == "chunked") options.layers.kda_algorithm = model::KdaAlgorithmChoice::kChunked;
  if (args.kda == "recurrent") options.layers.kda_algorithm = model::KdaAlgorithmChoice::kRecurrent;
  if (args.mla == "expanded") options.layers.mla_form = model::MlaFormChoice::kExpanded;
  if (args.mla == "absorbed") options.layers.mla_form = model::MlaFormChoice::kAbsorbed;
  options.layers.biased_routing = args.biased_routing;
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
