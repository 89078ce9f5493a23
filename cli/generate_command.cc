// `deltaserve generate`: sample a continuation of a prompt.
#include <chrono>
#include <cstdio>
#include <string>

#include "absl/strings/str_format.h"
#include "cli/commands.h"
#include "cli/engine.h"
#include "cli/json_writer.h"
#include "cli/token_list.h"
#include "model/generator.h"

namespace deltaserve::cli {
namespace {

absl::StatusOr<model::SamplingParams> ToSamplingParams(const GenerateArgs& args) {
  model::SamplingParams params;
  params.max_new_tokens = args.max_new_tokens;
  params.temperature = args.temperature;
  params.top_k = args.top_k;
  params.top_p = args.top_p;
  params.min_p = args.min_p;
  params.seed = args.seed;
  params.repetition_penalty = args.repetition_penalty;
  params.frequency_penalty = args.frequency_penalty;
  params.presence_penalty = args.presence_penalty;
  params.ignore_eos = args.ignore_eos;
  absl::StatusOr<std::vector<int32_t>> stops = ParseTokenList(args.stop_token_ids, "--stop-token-ids");
  if (!stops.ok()) return stops.status();
  params.stop_token_ids = *stops;
  return params;
}

class GenerateCommand final : public Subcommand {
 public:
  CLI::App* Register(CLI::App& app) override {
    GenerateArgs& a = args_;
    CLI::App* cmd = app.add_subcommand("generate", "Generate tokens from a prompt; prints JSON");
    AddEngineFlags(*cmd, a.engine);
    cmd->add_option("--tokens", a.tokens, "Prompt token ids, e.g. 5,6,7")->required();
    cmd->add_option("--max-new-tokens", a.max_new_tokens, "Tokens to generate at most");
    cmd->add_option("--temperature", a.temperature, "0 for greedy");
    cmd->add_option("--top-k", a.top_k, "Keep the k most likely tokens (0: off)");
    cmd->add_option("--top-p", a.top_p, "Nucleus mass");
    cmd->add_option("--min-p", a.min_p, "Drop tokens below min_p times the top probability");
    cmd->add_option("--seed", a.seed, "Random seed");
    cmd->add_option("--repetition-penalty", a.repetition_penalty);
    cmd->add_option("--frequency-penalty", a.frequency_penalty);
    cmd->add_option("--presence-penalty", a.presence_penalty);
    cmd->add_option("--stop-token-ids", a.stop_token_ids, "Comma-separated ids that end generation");
    cmd->add_flag("--ignore-eos", a.ignore_eos, "Do not stop at the model's eos ids");
    cmd->add_option("--prefill-chunk", a.prefill_chunk_tokens, "Prompt tokens per forward step")
        ->check(CLI::PositiveNumber);
    return cmd;
  }
  int Run() override;

 private:
  GenerateArgs args_;
};

int GenerateCommand::Run() {
  const GenerateArgs& args = args_;
  absl::StatusOr<std::vector<int32_t>> prompt = ParseTokenList(args.tokens, "--tokens");
  absl::StatusOr<model::SamplingParams> params = ToSamplingParams(args);
  absl::Status bad = !prompt.ok() ? prompt.status() : params.status();
  if (bad.ok() && prompt->empty()) bad = absl::InvalidArgumentError("--tokens needs at least one id");
  if (!bad.ok()) {
    std::fprintf(stderr, "deltaserve generate: %s\n", std::string(bad.message()).c_str());
    return kUsageError;
  }
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<Engine> engine = LoadEngine(args.engine);
  if (!engine.ok()) return ReportError(engine.status());
  model::KimiLinearModel& model = *engine->model;
  if (absl::Status status = params->Validate(model.config().vocab_size); !status.ok()) {
    std::fprintf(stderr, "deltaserve generate: %s\n", std::string(status.message()).c_str());
    return kUsageError;
  }
  const auto loaded = std::chrono::steady_clock::now();

  std::unique_ptr<model::SequenceState> state = model.NewState();
  model::GenerateOptions options;
  options.prefill_chunk_tokens = args.prefill_chunk_tokens;
  options.fallback_seed = std::chrono::steady_clock::now().time_since_epoch().count();
  absl::StatusOr<model::GenerationResult> result =
      model::Generate(model, *state, *prompt, *params, options);
  if (!result.ok()) return ReportError(result.status());
  const auto done = std::chrono::steady_clock::now();

  const double load_seconds = std::chrono::duration<double>(loaded - start).count();
  const double generate_seconds = std::chrono::duration<double>(done - loaded).count();
  std::string out = "{\"tokens\": ";
  AppendIntArray<int32_t>(out, result->tokens);
  out += absl::StrFormat(
      ", \"finish_reason\": \"%s\", \"usage\": {\"prompt_tokens\": %d, \"completion_tokens\": %d}"
      ", \"timing\": {\"load_seconds\": %.3f, \"generate_seconds\": %.3f, \"device\": \"%s\"}}\n",
      model::FinishReasonName(result->finish_reason), prompt->size(), result->tokens.size(),
      load_seconds, generate_seconds, std::string(engine->backend->name()));
  std::fputs(out.c_str(), stdout);
  return 0;
}

}  // namespace

std::unique_ptr<Subcommand> MakeGenerateCommand() { return std::make_unique<GenerateCommand>(); }

}  // namespace deltaserve::cli
