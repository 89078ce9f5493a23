// `deltaserve`: one binary, one subcommand per job. Flags are parsed here and only here.
#include <cstdio>
#include <string>

#include "CLI/CLI.hpp"
#include "cli/commands.h"
#include "model/config/presets.h"

namespace deltaserve::cli {
namespace {

constexpr int kUsageExitCode = 2;

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

int Main(int argc, char** argv) {
  CLI::App app{"deltaserve: a Kimi Linear inference engine", "deltaserve"};
  app.require_subcommand(1);
  app.failure_message(CLI::FailureMessage::help);

  InitModelArgs init;
  CLI::App* init_cmd = app.add_subcommand("init-model", "Write a random-weight checkpoint in the official layout");
  init_cmd->add_option("--preset", init.preset, "Model shape")
      ->required()
      ->check(CLI::IsMember(model::PresetNames()));
  init_cmd->add_option("--seed", init.seed, "Random seed");
  init_cmd->add_option("--out", init.out_dir, "Output directory")->required();
  init_cmd->add_flag("--allow-large", init.allow_large, "Allow writing a checkpoint over 8 GiB");
  init_cmd->add_option("--max-shard-mib", init.max_shard_mib, "Largest shard size in MiB")
      ->check(CLI::PositiveNumber);
  init_cmd->add_option("--threads", init.threads, "Threads (0: all)")->check(CLI::NonNegativeNumber);

  ScoreArgs score;
  CLI::App* score_cmd = app.add_subcommand("score", "Print the logits of a prompt's positions as JSON");
  AddEngineFlags(*score_cmd, score.engine);
  score_cmd->add_option("--tokens", score.tokens, "Prompt token ids, e.g. 5,6,7")->required();
  score_cmd->add_option("--positions", score.positions, "last, all, or indices such as 0,63,64");

  GenerateArgs gen;
  CLI::App* gen_cmd = app.add_subcommand("generate", "Generate tokens from a prompt; prints JSON");
  AddEngineFlags(*gen_cmd, gen.engine);
  gen_cmd->add_option("--tokens", gen.tokens, "Prompt token ids, e.g. 5,6,7")->required();
  gen_cmd->add_option("--max-new-tokens", gen.max_new_tokens, "Tokens to generate at most");
  gen_cmd->add_option("--temperature", gen.temperature, "0 for greedy");
  gen_cmd->add_option("--top-k", gen.top_k, "Keep the k most likely tokens (0: off)");
  gen_cmd->add_option("--top-p", gen.top_p, "Nucleus mass");
  gen_cmd->add_option("--min-p", gen.min_p, "Drop tokens below min_p times the top probability");
  gen_cmd->add_option("--seed", gen.seed, "Random seed");
  gen_cmd->add_option("--repetition-penalty", gen.repetition_penalty);
  gen_cmd->add_option("--frequency-penalty", gen.frequency_penalty);
  gen_cmd->add_option("--presence-penalty", gen.presence_penalty);
  gen_cmd->add_option("--stop-token-ids", gen.stop_token_ids, "Comma-separated ids that end generation");
  gen_cmd->add_flag("--ignore-eos", gen.ignore_eos, "Do not stop at the model's eos ids");
  gen_cmd->add_option("--prefill-chunk", gen.prefill_chunk_tokens, "Prompt tokens per forward step")
      ->check(CLI::PositiveNumber);

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
  CLI::App* command = init_cmd;
  int status;
  if (init_cmd->parsed()) {
    status = RunInitModel(init);
  } else if (score_cmd->parsed()) {
    command = score_cmd;
    status = RunScore(score);
  } else {
    command = gen_cmd;
    status = RunGenerate(gen);
  }
  if (status == kUsageError) {
    std::fputs(command->help().c_str(), stderr);
    return kUsageExitCode;
  }
  return status;
}

}  // namespace
}  // namespace deltaserve::cli

int main(int argc, char** argv) { return deltaserve::cli::Main(argc, argv); }
