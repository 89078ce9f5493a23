// `deltaserve score`: logits of chosen prompt positions from one full forward pass.
#include <cstdio>
#include <string>

#include "cli/commands.h"
#include "cli/engine.h"
#include "cli/json_writer.h"
#include "cli/token_list.h"

namespace deltaserve::cli {

namespace {

class ScoreCommand final : public Subcommand {
 public:
  CLI::App* Register(CLI::App& app) override {
    CLI::App* cmd = app.add_subcommand("score", "Print the logits of a prompt's positions as JSON");
    AddEngineFlags(*cmd, args_.engine);
    cmd->add_option("--tokens", args_.tokens, "Prompt token ids, e.g. 5,6,7")->required();
    cmd->add_option("--positions", args_.positions, "last, all, or indices such as 0,63,64");
    return cmd;
  }
  int Run() override;

 private:
  ScoreArgs args_;
};

int ScoreCommand::Run() {
  const ScoreArgs& args = args_;
  absl::StatusOr<std::vector<int32_t>> tokens = ParseTokenList(args.tokens, "--tokens");
  if (!tokens.ok() || tokens->empty()) {
    std::fprintf(stderr, "deltaserve score: %s\n",
                 tokens.ok() ? "--tokens needs at least one id" : std::string(tokens.status().message()).c_str());
    return kUsageError;
  }
  absl::StatusOr<std::vector<int64_t>> positions =
      ParsePositions(args.positions, static_cast<int64_t>(tokens->size()));
  if (!positions.ok()) {
    std::fprintf(stderr, "deltaserve score: %s\n", std::string(positions.status().message()).c_str());
    return kUsageError;
  }
  absl::StatusOr<Engine> engine = LoadEngine(args.engine);
  if (!engine.ok()) return ReportError(engine.status());
  model::KimiLinearModel& model = *engine->model;

  std::unique_ptr<model::SequenceState> state = model.NewState();
  const model::SequenceInput input{*tokens, state.get(), *positions};
  std::vector<float> logits;
  if (absl::Status status = model.Forward({&input, 1}, logits); !status.ok()) {
    return ReportError(status);
  }
  const int64_t vocab = model.config().vocab_size;
  std::string out = "{\"positions\": ";
  AppendIntArray<int64_t>(out, *positions);
  out += ", \"logits\": [";
  for (size_t row = 0; row < positions->size(); ++row) {
    if (row > 0) out += ", ";
    AppendFloatArray(out, std::span<const float>(logits).subspan(row * vocab, vocab));
  }
  out += "]}\n";
  std::fputs(out.c_str(), stdout);
  return 0;
}

}  // namespace

std::unique_ptr<Subcommand> MakeScoreCommand() { return std::make_unique<ScoreCommand>(); }

}  // namespace deltaserve::cli
