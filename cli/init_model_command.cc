// `deltaserve init-model`: a random-weight checkpoint of a preset shape.
#include <cstdio>

#include "cli/commands.h"
#include "cli/engine.h"
#include "model/checkpoint/random_checkpoint.h"
#include "model/config/presets.h"

namespace deltaserve::cli {

int RunInitModel(const InitModelArgs& args) {
  absl::StatusOr<model::KimiLinearConfig> config = model::PresetConfig(args.preset);
  if (!config.ok()) return ReportError(config.status());
  model::RandomCheckpointOptions options;
  options.allow_large = args.allow_large;
  options.max_shard_bytes = args.max_shard_mib << 20;
  options.threads = args.threads;
  const absl::Status status = model::WriteRandomCheckpoint(*config, args.seed, args.out_dir, options);
  if (!status.ok()) return ReportError(status);
  std::printf("{\"preset\": \"%s\", \"seed\": %llu, \"out\": \"%s\"}\n", args.preset.c_str(),
              static_cast<unsigned long long>(args.seed), args.out_dir.c_str());
  return 0;
}

}  // namespace deltaserve::cli
