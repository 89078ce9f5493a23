#include "cli/engine.h"

#include <cstdint>
#include <cstdio>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace deltaserve::cli {

void AddEngineFlags(CLI::App& command, EngineArgs& engine) {
  command
      .add_option("--model", engine.model_dir,
                  "Checkpoint directory, or random:<preset>[:<seed>] for the weights init-model "
                  "would write, generated in memory")
      ->required();
  command
      .add_option("--device", engine.device,
                  "Where the model runs: cpu, cuda (GPU 0) or cuda:N (GPU N of CUDA_VISIBLE_DEVICES)")
      ->check(CLI::Validator(
          [](const std::string& value) {
            return kernels::ParseBackendChoice(value).has_value() ? std::string()
                                                                  : "expected cpu, cuda or cuda:N";
          },
          "DEVICE"))
      ->capture_default_str();
  command.add_option("--threads", engine.threads, "CPU threads (0: all)")->check(CLI::NonNegativeNumber);
  command
      .add_option("--device-memory-gib", engine.device_memory_gib,
                  "The most memory (GiB) the engine holds: on CUDA its weights, sequence states and step "
                  "buffers (0: what the GPU has); on the CPU its sequence states and step buffers, not the "
                  "memory-mapped weights (0: no limit). Past it a server preempts sequences (computed again "
                  "later) and a request that does not fit alone fails with RESOURCE_EXHAUSTED")
      ->check(CLI::NonNegativeNumber);
  command.add_flag("--cuda-graphs,!--no-cuda-graphs", engine.cuda_graphs,
                   "CUDA: record decode steps as CUDA graphs and replay them (--no-cuda-graphs: launch "
                   "every kernel from the host)")
      ->capture_default_str();
  command.add_option("--kda", engine.kda, "KDA algorithm")
      ->check(CLI::IsMember({"auto", "chunked", "recurrent"}));
  command.add_option("--mla", engine.mla,
                     "MLA attention form (auto: absorbed for a sequence's few new tokens, at most 128 on the "
                     "CPU and 64 on the GPU, or past --mla-expanded-max-keys where the backend expands whole "
                     "histories; expanded otherwise)")
      ->check(CLI::IsMember({"auto", "expanded", "absorbed"}));
  command.add_option("--mla-expanded-max-keys", engine.mla_expanded_max_keys,
                     "--mla auto on a backend that expands whole histories (CPU, or CUDA with "
                     "--mla-expanded-window-keys 0): a sequence with more keys (history and new tokens) than "
                     "this takes the absorbed form, whose step buffers do not grow with the history")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  command
      .add_option("--mla-expanded-window-keys", engine.mla_expanded_window_keys,
                  "CUDA: the expanded MLA form expands at most this many keys of a history at once "
                  "(~17 KB of step buffers per key on the real model on an H100/H200), a longer history "
                  "window by window (0: whole histories, buffers in proportion to them)")
      ->check(CLI::Validator(
          [](const std::string& value) {
            int64_t keys = 0;
            const bool valid = absl::SimpleAtoi(value, &keys) && keys >= 0 && keys % 64 == 0;
            return valid ? std::string() : "expected 0 or a positive multiple of 64";
          },
          "KEYS"))
      ->capture_default_str();
  command.add_flag("--biased-routing", engine.biased_routing,
                   "Routing weights from sigmoid + bias (HF remote code) instead of the unbiased scores");
}

model::LayerOptions LayerOptionsFrom(const EngineArgs& args) {
  model::LayerOptions layers;
  if (args.kda == "chunked") layers.kda_algorithm = model::KdaAlgorithmChoice::kChunked;
  if (args.kda == "recurrent") layers.kda_algorithm = model::KdaAlgorithmChoice::kRecurrent;
  if (args.mla == "expanded") layers.mla_form = model::MlaFormChoice::kExpanded;
  if (args.mla == "absorbed") layers.mla_form = model::MlaFormChoice::kAbsorbed;
  layers.mla_expanded_max_keys = args.mla_expanded_max_keys;
  layers.biased_routing = args.biased_routing;
  return layers;
}

kernels::BackendChoice BackendChoiceFrom(const EngineArgs& args) {
  kernels::BackendChoice choice =
      kernels::ParseBackendChoice(args.device).value_or(kernels::BackendChoice{});
  choice.cpu_threads = args.threads;
  choice.device_memory_limit_bytes = static_cast<int64_t>(args.device_memory_gib * (1 << 30));
  choice.cuda_graphs = args.cuda_graphs;
  choice.mla_expanded_window_keys = args.mla_expanded_window_keys;
  return choice;
}

absl::StatusOr<Engine> LoadEngine(const EngineArgs& args) {
  model::ModelOptions options;
  options.layers = LayerOptionsFrom(args);
  Engine engine;
  std::string error;
  engine.backend = kernels::CreateBackend(BackendChoiceFrom(args), &error);
  if (engine.backend == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat("--device ", args.device, ": ", error));
  }
  DS_ASSIGN_OR_RETURN(engine.model,
                      model::KimiLinearModel::Load(args.model_dir, *engine.backend, options));
  return engine;
}

int ReportError(const absl::Status& status) {
  std::fprintf(stderr, "deltaserve: %s\n", std::string(status.message()).c_str());
  return 1;
}

}  // namespace deltaserve::cli
