// `deltaserve init-model`: a random-weight checkpoint of a preset shape.
#include <cstdio>

#include "cli/commands.h"
#include "cli/engine.h"
#include "model/checkpoint/random_checkpoint.h"
#include "model/config/presets.h"

namespace deltaserve::cli {

namespace {

class InitModelCommand final : public Subcommand {
 public:
  CLI::App* Register(CLI::App& app) override {
    CLI::App* cmd = app.add_subcommand("init-model", "Write a random-weight checkpoint in the official layout");
    cmd->add_option("--preset", args_.preset, "Model shape")
        ->required()
        ->check(CLI::IsMember(model::PresetNames()));
    cmd->add_option("--seed", args_.seed, "Random seed");
    cmd->add_option("--out", args_.out_dir, "Output directory")->required();
    cmd->add_flag("--allow-large", args_.allow_large, "Allow writing a checkpoint over 8 GiB");
    cmd->add_option("--max-shard-mib", args_.max_shard_mib, "Largest shard size in MiB")
        ->check(CLI::PositiveNumber);
    cmd->add_option("--threads", args_.threads, "Threads (0: all)")->check(CLI::NonNegativeNumber);
    return cmd;
  }
  int Run() override;

 private:
  InitModelArgs args_;
};

int InitModelCommand::Run() {
  const InitModelArgs& args = args_;
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

}  // namespace

std::unique_ptr<Subcommand> MakeInitModelCommand() { return std::make_unique<InitModelCommand>(); }

}  // namespace deltaserve::cli
