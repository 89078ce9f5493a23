// Whole-engine throughput on any backend through KimiLinearModel::Forward: a prefill of B
// sequences of T new tokens, or decode steps of B sequences at a context of L tokens (a synthetic
// history, model/state/synthetic_history.h). Prints one JSON line per run; asserts nothing.
// Usage and fields: docs/gpu-benchmark.md, "Engine benchmark".
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/backend_factory.h"
#include "model/checkpoint/checkpoint.h"
#include "model/config/model_source.h"
#include "model/config/presets.h"
#include "model/kimi_linear_model.h"
#include "model/state/synthetic_history.h"
#include "nlohmann/json.hpp"

namespace deltaserve::bench {
namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  std::string model = "random:small";
  int64_t layers = 0;  // a random preset's first N layers only (0: all)
  std::string device = "cpu";
  int threads = 0;
  std::string mode = "decode";  // prefill | decode
  int64_t batch = 1;
  int64_t prompt = 128;  // prefill: new tokens per sequence
  int64_t context = 0;   // history each sequence already has
  int64_t steps = 8;     // timed forward passes
  int64_t warmup = 2;    // untimed passes before them
  uint64_t seed = 0;     // prompts and synthetic histories
  bool step_graphs = true;  // decode steps through the backend's step graphs (CUDA graphs)
  int64_t skinny_max_weight_mib = -1;  // CUDA: skinny_matmul_max_weight_bytes in MiB; -1: default
  double device_memory_gib = 0;        // the most memory the engine holds (--device-memory-gib); 0: no limit
  bool argmax = false;       // decode: greedy on the device, ids instead of logits downloaded
  bool sample = false;       // decode: a draw on the device (kSampleDraw), ids instead of logits
  bool mixed = false;        // sequence i's history is context·(i + 1)/batch: unequal, as served
  bool batch_max = false;    // decode: as many sequences as the device holds, at most `batch`
  std::string mla = "auto";  // the MLA form: auto, expanded or absorbed (LayerOptions::mla_form)
  int64_t mla_window_keys = kernels::kMlaExpandedWindowKeysDefault;  // CUDA: the expanded form's window
  // Several runs over one loaded model, each "prefill:B:T" or "decode:B:L" (the 48B shape takes a
  // minute to load); when empty, the one run the flags above describe.
  std::vector<std::string> runs;
};

// The most sequences a decode:max run tries.
constexpr int64_t kMaxBatchTried = 4096;

// Applies a "--run MODE:BATCH:TOKENS[:eager][:argmax|:sample][:mixed]" spec to `o` (TOKENS: the
// prompt of a prefill, PROMPT@CONTEXT for one on top of a history, the context of a decode;
// BATCH `max` in a decode: as many sequences as fit; eager: without step graphs; argmax:
// --argmax; sample: --sample; mixed: --mixed); false when malformed.
bool ApplyRunSpec(std::string spec, Options& o) {
  for (bool trimmed = true; trimmed;) {
    trimmed = false;
    for (const std::string_view suffix :
         {std::string_view(":eager"), std::string_view(":argmax"), std::string_view(":sample"),
          std::string_view(":mixed")}) {
      if (spec.size() > suffix.size() && spec.ends_with(suffix)) {
        spec.resize(spec.size() - suffix.size());
        if (suffix == ":eager") {
          o.step_graphs = false;
        } else if (suffix == ":argmax") {
          o.argmax = true;
        } else if (suffix == ":mixed") {
          o.mixed = true;
        } else {
          o.sample = true;
        }
        trimmed = true;
      }
    }
  }
  const size_t first = spec.find(':'), second = spec.find(':', first + 1);
  if (first == std::string::npos || second == std::string::npos) return false;
  const std::string mode = spec.substr(0, first);
  if (mode != "prefill" && mode != "decode") return false;
  try {
    const std::string batch_spec = spec.substr(first + 1, second - first - 1);
    const bool batch_max = batch_spec == "max";
    const int64_t batch = batch_max ? kMaxBatchTried : std::stoll(batch_spec);
    std::string tokens_spec = spec.substr(second + 1);
    int64_t prefill_context = 0;  // PROMPT@CONTEXT: a prefill on top of a history
    if (const size_t at = tokens_spec.find('@'); at != std::string::npos && mode == "prefill") {
      prefill_context = std::stoll(tokens_spec.substr(at + 1));
      if (prefill_context < 0) return false;
      tokens_spec.resize(at);
    }
    const int64_t tokens = std::stoll(tokens_spec);
    if (batch <= 0 || tokens < 0 || (mode == "prefill" && tokens == 0)) return false;
    if (batch_max && mode != "decode") return false;
    o.mode = mode;
    o.batch = batch;
    o.batch_max = batch_max;
    if (mode == "prefill") {
      o.prompt = tokens;
      o.context = prefill_context;
    } else {
      o.context = tokens;
    }
  } catch (const std::exception&) {
    return false;
  }
  return true;
}

struct Timings {
  double mean_s = 0;
  double min_s = 0;
  int64_t batch = 0;  // sequences per step (decode:max: as many as fitted)
  double fill_s = 0;  // making the states' synthetic histories (a prefill: its last pass's)
  int64_t fewer = 0;  // decode:max: sequences dropped after their states fitted, for the steps
};

struct StateBytes {
  int64_t used = 0;
  int64_t allocated = 0;
};

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

std::vector<int32_t> RandomTokens(int64_t n, uint64_t seed, int64_t vocab) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> tokens(static_cast<size_t>(n));
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % static_cast<uint64_t>(vocab));
  return tokens;
}

// Fresh states for the batch, each with a synthetic history of `context` tokens (with --mixed,
// sequence i's context·(i + 1)/batch) and room for `spare_rows` more latent rows.
// Fails where the device runs out of memory for them (the batch does not fit), unless
// `as_many_as_fit`: then the states made before the first that failed.
absl::StatusOr<std::vector<std::unique_ptr<model::SequenceState>>> NewStates(const model::KimiLinearModel& m,
                                                                             const Options& o,
                                                                             int64_t spare_rows,
                                                                             bool as_many_as_fit = false) {
  std::vector<std::unique_ptr<model::SequenceState>> states;
  for (int64_t i = 0; i < o.batch; ++i) {
    states.push_back(m.NewState());
    const int64_t context = o.mixed ? o.context * (i + 1) / o.batch : o.context;
    model::FillSyntheticHistory(*states.back(), context, spare_rows,
                                o.seed + static_cast<uint64_t>(i));
    if (absl::Status status = m.TakeDeviceFailure(absl::StrCat("making sequence ", i + 1, " of ", o.batch));
        !status.ok()) {
      if (!as_many_as_fit || i == 0 || status.code() != absl::StatusCode::kResourceExhausted) return status;
      states.pop_back();  // its pages go back
      break;
    }
  }
  return states;
}

// The states' mean: one sequence's, unless --mixed made them unequal.
StateBytes MeanBytesOf(const std::vector<std::unique_ptr<model::SequenceState>>& states) {
  StateBytes sum;
  for (const auto& state : states) {
    sum.used += state->ByteSize();
    sum.allocated += state->AllocatedByteSize();
  }
  const auto n = static_cast<int64_t>(states.size());
  return n == 0 ? sum : StateBytes{sum.used / n, sum.allocated / n};
}

// Each pass: fresh states at `context`, then B x T new tokens, logits for the last position.
absl::StatusOr<Timings> RunPrefill(model::KimiLinearModel& m, const Options& o,
                                   StateBytes& state_bytes) {
  std::vector<std::vector<int32_t>> prompts;
  for (int64_t i = 0; i < o.batch; ++i) {
    prompts.push_back(RandomTokens(o.prompt, o.seed + 1000 + static_cast<uint64_t>(i),
                                   m.config().vocab_size));
  }
  Timings timings{0, 1e300, o.batch, 0};
  std::vector<float> logits;
  for (int64_t pass = 0; pass < o.warmup + o.steps; ++pass) {
    const Clock::time_point fill_start = Clock::now();
    absl::StatusOr<std::vector<std::unique_ptr<model::SequenceState>>> made = NewStates(m, o, o.prompt);
    if (!made.ok()) return made.status();
    timings.fill_s = Seconds(Clock::now() - fill_start);
    std::vector<std::unique_ptr<model::SequenceState>> states = std::move(*made);
    std::vector<model::SequenceInput> inputs;
    for (int64_t i = 0; i < o.batch; ++i) {
      inputs.push_back({prompts[static_cast<size_t>(i)], states[static_cast<size_t>(i)].get(),
                        {o.prompt - 1}});
    }
    const Clock::time_point start = Clock::now();
    if (absl::Status status = m.Forward(inputs, logits); !status.ok()) return status;
    const double elapsed = Seconds(Clock::now() - start);
    if (pass >= o.warmup) {
      timings.mean_s += elapsed / static_cast<double>(o.steps);
      timings.min_s = std::min(timings.min_s, elapsed);
    }
    state_bytes = MeanBytesOf(states);
  }
  return timings;
}

// What --sample draws with: a common serving setting (the uniform varies per step).
constexpr kernels::RowSampling kSampleDraw{0.8f, 0, 0.95f, 0.0f, 0.0};

// States at `context` (with --mixed, up to it) once, then one random token per sequence per step
// (different across the batch, so it routes to as many experts as real traffic does), logits for
// it (or their argmax with --argmax, or a token drawn with --sample, taken on the device).
// With `as_many_as_fit`, as many sequences as fit, at most o.batch; *batch: the sequences made
// (0 where they could not be), whether the steps ran or not.
absl::StatusOr<Timings> DecodeSteps(model::KimiLinearModel& m, const Options& o, bool as_many_as_fit,
                                    StateBytes& state_bytes, int64_t* batch) {
  *batch = 0;
  const Clock::time_point fill_start = Clock::now();
  absl::StatusOr<std::vector<std::unique_ptr<model::SequenceState>>> made =
      NewStates(m, o, o.warmup + o.steps, as_many_as_fit);
  if (!made.ok()) return made.status();
  std::vector<std::unique_ptr<model::SequenceState>> states = std::move(*made);
  *batch = static_cast<int64_t>(states.size());
  state_bytes = MeanBytesOf(states);
  const std::vector<int32_t> tokens =
      RandomTokens((o.warmup + o.steps) * o.batch, o.seed + 2000, m.config().vocab_size);
  Timings timings{0, 1e300, *batch, Seconds(Clock::now() - fill_start)};
  std::vector<float> logits;
  std::vector<int32_t> device_ids;
  for (int64_t step = 0; step < o.warmup + o.steps; ++step) {
    std::vector<model::SequenceInput> inputs;
    for (const auto& state : states) {
      const int32_t* token = &tokens[static_cast<size_t>(step * o.batch) + inputs.size()];
      inputs.push_back({{token, 1}, state.get(), {0}, o.argmax});
      if (o.sample && !o.argmax) {
        inputs.back().draw = kSampleDraw;
        inputs.back().draw->uniform = static_cast<double>((step * 7919 + inputs.size() * 104729) % 1000) / 1000.0;
      }
    }
    const Clock::time_point start = Clock::now();
    if (absl::Status status = m.Forward(inputs, logits, &device_ids); !status.ok()) return status;
    const double elapsed = Seconds(Clock::now() - start);
    if (step >= o.warmup) {
      timings.mean_s += elapsed / static_cast<double>(o.steps);
      timings.min_s = std::min(timings.min_s, elapsed);
    }
  }
  return timings;
}

// decode:max: the states are made until the device runs out of memory; where the steps then do
// not fit beside them, the run starts again on fresh states, one sequence fewer.
absl::StatusOr<Timings> RunDecode(model::KimiLinearModel& m, const Options& o, StateBytes& state_bytes) {
  int64_t batch = 0;
  absl::StatusOr<Timings> timings = DecodeSteps(m, o, o.batch_max, state_bytes, &batch);
  Options fewer = o;
  int64_t dropped = 0;
  while (o.batch_max && timings.status().code() == absl::StatusCode::kResourceExhausted && batch > 1) {
    fewer.batch = batch - 1;
    ++dropped;
    timings = DecodeSteps(m, fewer, /*as_many_as_fit=*/false, state_bytes, &batch);
  }
  if (timings.ok()) timings->fewer = dropped;
  return timings;
}

// The checkpoint of --model; with --layers N, a random preset cut to its first N layers (each
// layer's shapes unchanged: a step's kernels can be profiled without loading the whole model).
absl::StatusOr<std::unique_ptr<model::Checkpoint>> OpenCheckpoint(const Options& o) {
  if (o.layers == 0) return model::Checkpoint::Open(o.model);
  absl::StatusOr<std::optional<model::RandomModelSource>> random =
      model::ParseRandomModelSource(o.model);
  if (!random.ok()) return random.status();
  if (!random->has_value()) {
    return absl::InvalidArgumentError("--layers: takes a random:<preset> model only");
  }
  absl::StatusOr<model::KimiLinearConfig> config = model::PresetConfig((*random)->preset);
  if (!config.ok()) return config.status();
  if (o.layers > config->num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("--layers ", o.layers, ": the preset has ",
                                                   config->num_layers));
  }
  config->num_layers = o.layers;
  config->mixer_kinds.resize(static_cast<size_t>(o.layers));
  config->ffn_kinds.resize(static_cast<size_t>(o.layers));
  return model::Checkpoint::OpenRandom(*config, (*random)->seed,
                                       absl::StrCat(o.model, " (first ", o.layers, " layers)"));
}

uint64_t CheckpointBytes(const model::Checkpoint& checkpoint) {
  uint64_t bytes = 0;
  for (const auto& [name, tensor] : checkpoint.tensors()) bytes += tensor.entry->num_bytes;
  return bytes;
}

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "engine_bench: %s\n", std::string(status.message()).c_str());
  return 1;
}

// One run over the loaded model: one JSON line, or the error.
absl::Status RunOnce(model::KimiLinearModel& m, kernels::Backend& backend, const Options& o,
                     uint64_t weights_bytes, double load_s) {
  m.set_step_graphs(o.step_graphs);
  const int64_t new_tokens = o.mode == "prefill" ? o.prompt : o.warmup + o.steps;
  if (o.context > m.max_context() - new_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("--context ", o.context, " plus ", new_tokens,
                     " new tokens exceeds the model's context of ", m.max_context()));
  }
  StateBytes state_bytes;
  absl::StatusOr<Timings> timings =
      o.mode == "prefill" ? RunPrefill(m, o, state_bytes) : RunDecode(m, o, state_bytes);
  if (!timings.ok()) return timings.status();

  const double tokens_per_step =
      static_cast<double>(timings->batch * (o.mode == "prefill" ? o.prompt : 1));
  nlohmann::ordered_json line;
  line["device"] = std::string(backend.name());
  line["device_flag"] = o.device;
  line["model"] = o.model;
  line["layers"] = m.config().num_layers;
  line["mode"] = o.mode;
  line["batch"] = timings->batch;
  line["batch_max"] = o.batch_max;
  line["batch_max_fewer"] = timings->fewer;
  line["prompt"] = o.mode == "prefill" ? o.prompt : 0;
  line["mla"] = o.mla;
  line["mla_window_keys"] = o.mla_window_keys;
  line["context"] = o.context;
  line["mixed"] = o.mixed;
  line["steps"] = o.steps;
  line["warmup"] = o.warmup;
  line["step_graphs"] = o.step_graphs;
  line["skinny_max_weight_mib"] = o.skinny_max_weight_mib;
  line["argmax"] = o.argmax;
  line["sample"] = o.sample;
  line["ms_per_step"] = timings->mean_s * 1e3;
  line["ms_per_step_min"] = timings->min_s * 1e3;
  line["tokens_per_s"] = tokens_per_step / timings->mean_s;
  line["state_bytes_per_seq"] = state_bytes.used;
  line["state_bytes_per_seq_allocated"] = state_bytes.allocated;
  line["weights_bytes"] = weights_bytes;
  line["load_s"] = load_s;
  line["fill_s"] = timings->fill_s;
  std::printf("%s\n", line.dump().c_str());
  std::fflush(stdout);
  return absl::OkStatus();
}

int Run(const Options& options) {
  std::vector<Options> runs;
  for (const std::string& spec : options.runs) {
    Options o = options;
    if (!ApplyRunSpec(spec, o)) {
      return Fail(absl::InvalidArgumentError(
          absl::StrCat("--run ", spec,
                       ": expected prefill:BATCH:PROMPT[@CONTEXT] or decode:BATCH|max:CONTEXT, optionally :eager, "
                       ":argmax, :sample, :mixed")));
    }
    runs.push_back(o);
  }
  if (runs.empty()) runs.push_back(options);
  for (const Options& o : runs) {
    if (o.mixed && o.mode != "decode") {
      return Fail(absl::InvalidArgumentError("--mixed (:mixed) is for decode runs"));
    }
    if (o.mixed && o.batch_max) {
      return Fail(absl::InvalidArgumentError("decode:max takes equal histories, not :mixed"));
    }
    if (o.batch_max && o.device == "cpu" && options.device_memory_gib == 0) {
      return Fail(absl::InvalidArgumentError(
          "decode:max on the CPU needs --device-memory-gib: it makes sequences until an allocation "
          "fails, and without a cap the host's do not fail before the system runs out of memory"));
    }
  }

  kernels::BackendChoice choice = *kernels::ParseBackendChoice(options.device);
  choice.cpu_threads = options.threads;
  choice.device_memory_limit_bytes = static_cast<int64_t>(options.device_memory_gib * (1 << 30));
  choice.mla_expanded_window_keys = options.mla_window_keys;
  if (options.skinny_max_weight_mib >= 0) {
    choice.cuda_skinny_matmul_max_weight_bytes = options.skinny_max_weight_mib << 20;
  }
  std::string error;
  std::unique_ptr<kernels::Backend> backend = kernels::CreateBackend(choice, &error);
  if (backend == nullptr) {
    return Fail(absl::FailedPreconditionError(absl::StrCat("--device ", options.device, ": ", error)));
  }
  const Clock::time_point load_start = Clock::now();
  absl::StatusOr<std::unique_ptr<model::Checkpoint>> checkpoint = OpenCheckpoint(options);
  if (!checkpoint.ok()) return Fail(checkpoint.status());
  const uint64_t weights_bytes = CheckpointBytes(**checkpoint);
  model::ModelOptions model_options;
  if (options.mla == "expanded") model_options.layers.mla_form = model::MlaFormChoice::kExpanded;
  if (options.mla == "absorbed") model_options.layers.mla_form = model::MlaFormChoice::kAbsorbed;
  absl::StatusOr<std::unique_ptr<model::KimiLinearModel>> loaded =
      model::KimiLinearModel::Load(std::move(*checkpoint), *backend, model_options);
  if (!loaded.ok()) return Fail(loaded.status());
  const double load_s = Seconds(Clock::now() - load_start);

  int failures = 0;
  for (const Options& o : runs) {
    if (absl::Status status = RunOnce(**loaded, *backend, o, weights_bytes, load_s); !status.ok()) {
      Fail(status);  // reported; the other runs still go
      ++failures;
    }
  }
  return failures == 0 ? 0 : 1;
}

}  // namespace
}  // namespace deltaserve::bench

int main(int argc, char** argv) {
  deltaserve::bench::Options o;
  CLI::App app("Times prefill or decode steps of the whole engine; prints one JSON line");
  app.add_option("--model", o.model, "Checkpoint directory or random:<preset>[:<seed>]")
      ->capture_default_str();
  app.add_option("--layers", o.layers,
                 "With a random:<preset> model, its first N layers only (0: all; for profiling)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--device", o.device, "cpu, cuda or cuda:N")
      ->check(CLI::Validator(
          [](const std::string& value) {
            return deltaserve::kernels::ParseBackendChoice(value).has_value()
                       ? std::string()
                       : "expected cpu, cuda or cuda:N";
          },
          "DEVICE"))
      ->capture_default_str();
  app.add_option("--threads", o.threads, "CPU threads (0: all)")->check(CLI::NonNegativeNumber);
  app.add_option("--mode", o.mode, "prefill or decode")
      ->check(CLI::IsMember({"prefill", "decode"}))
      ->capture_default_str();
  app.add_option("--batch", o.batch, "Sequences per step")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--prompt", o.prompt, "Prefill: new tokens per sequence")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--context", o.context,
                 "History each sequence already has (synthetic: not prefilled)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--steps", o.steps, "Timed steps")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--warmup", o.warmup, "Untimed steps first")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--run", o.runs,
                 "Repeatable: prefill:BATCH:PROMPT[@CONTEXT] or decode:BATCH:CONTEXT, all over one loaded "
                 "model (overrides --mode/--batch/--prompt/--context); decode:max:CONTEXT takes "
                 "as many sequences as fit; a trailing :eager runs it without step graphs, "
                 ":argmax with --argmax, :sample with --sample, :mixed with --mixed");
  app.add_flag("--argmax", o.argmax,
               "Decode: take each step's greedy token on the device (SequenceInput::argmax) "
               "instead of downloading its logits");
  app.add_flag("--sample", o.sample,
               "Decode: draw each step's token on the device (SequenceInput::draw: temperature "
               "0.8, top-p 0.95) instead of downloading its logits");
  app.add_flag("--mixed", o.mixed,
               "Decode: unequal histories, sequence i's context·(i + 1)/batch (the longest "
               "--context), as continuous batching serves them");
  app.add_flag("--step-graphs,!--no-step-graphs", o.step_graphs,
               "Decode steps through the backend's step graphs (CUDA graphs)")
      ->capture_default_str();
  app.add_option("--skinny-max-weight-mib", o.skinny_max_weight_mib,
                 "CUDA: decode products whose weight is larger take cuBLAS (0: no limit; -1: the "
                 "backend's default)")
      ->check(CLI::Range(int64_t{-1}, int64_t{1} << 40))
      ->capture_default_str();
  app.add_option("--device-memory-gib", o.device_memory_gib,
                 "The most memory (GiB) the engine holds, as serve's flag (CUDA: weights, states and "
                 "step buffers, 0: what the GPU has; CPU: states and step buffers, 0: no limit); bounds "
                 "decode:max")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--mla-window-keys", o.mla_window_keys,
                 "CUDA: keys of a history the expanded MLA form expands at once (0: whole histories)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--mla", o.mla, "MLA attention form: auto, expanded or absorbed")
      ->check(CLI::IsMember({"auto", "expanded", "absorbed"}));
  app.add_option("--seed", o.seed, "Seed of prompts and synthetic histories")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  return deltaserve::bench::Run(o);
}
