// Arguments of the model-running subcommands and the factories of every subcommand.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cli/subcommand.h"
#include "model/layers/step.h"

namespace deltaserve::cli {

// Engine flags shared by the commands that load a model.
struct EngineArgs {
  std::string model_dir;
  std::string device = "cpu";     // cpu | cuda
  int threads = 0;                // CPU threads; 0: all hardware threads
  double device_memory_gib = 0;   // the engine's memory cap (CUDA: device; CPU: states, step buffers); 0: none
  bool cuda_graphs = true;        // CUDA: decode steps replayed as CUDA graphs
  std::string kda = "auto";       // auto | chunked | recurrent
  std::string mla = "auto";       // auto | expanded | absorbed
  int64_t mla_expanded_max_keys = model::kMlaExpandedMaxKeysDefault;
  int64_t mla_expanded_window_keys = kernels::kMlaExpandedWindowKeysDefault;  // CUDA
  bool biased_routing = false;    // HF remote-code routing weights
};

struct InitModelArgs {
  std::string preset;
  uint64_t seed = 0;
  std::string out_dir;
  bool allow_large = false;
  uint64_t max_shard_mib = 4096;
  int threads = 0;
};

struct ScoreArgs {
  EngineArgs engine;
  std::string tokens;
  std::string positions = "last";  // last | all | comma-separated indices
};

struct GenerateArgs {
  EngineArgs engine;
  std::string tokens;
  int32_t max_new_tokens = 16;
  float temperature = 1.0f;
  int32_t top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  std::optional<uint64_t> seed;
  float repetition_penalty = 1.0f;
  float frequency_penalty = 0.0f;
  float presence_penalty = 0.0f;
  std::string stop_token_ids;
  bool ignore_eos = false;
  int64_t prefill_chunk_tokens = 512;
};

std::unique_ptr<Subcommand> MakeInitModelCommand();
std::unique_ptr<Subcommand> MakeScoreCommand();
std::unique_ptr<Subcommand> MakeGenerateCommand();
std::unique_ptr<Subcommand> MakeClientCommand();
std::unique_ptr<Subcommand> MakeServeCommand();
std::unique_ptr<Subcommand> MakeRouterCommand();
std::unique_ptr<Subcommand> MakeWorkerCommand();
std::unique_ptr<Subcommand> MakeSessionStoreCommand();

}  // namespace deltaserve::cli
