// A loaded Kimi Linear model over a backend: runs packed batches of sequences, each in prefill or
// decode, each continuing from its own SequenceState. One code path for every backend.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "model/checkpoint/checkpoint.h"
#include "model/config/kimi_linear_config.h"
#include "model/layers/expert_runner.h"
#include "model/layers/layer_weights.h"
#include "model/layers/step.h"
#include "model/state/sequence_state.h"

namespace deltaserve::model {

struct ModelOptions {
  LayerOptions layers;
  // The part of the model this process holds: a pipeline stage holds a layer range; a stage whose
  // routed experts live on expert workers loads none and passes `experts`.
  WeightScope scope;
  // Runs the routed experts when they are not loaded here (not owned; must outlive the model).
  ExpertRunner* experts = nullptr;
  // Offer decode steps (one token per sequence) to the backend's step graphs
  // (Backend::BeginStepGraph; CUDA graphs), which replay a recorded step in one launch.
  bool step_graphs = true;
};

// One sequence's share of a step.
struct SequenceInput {
  std::span<const int32_t> tokens;       // the new tokens, at least one
  SequenceState* state = nullptr;        // continued from, and advanced by, this step
  std::vector<int64_t> logit_positions;  // indices into `tokens` whose logits are wanted
  // Greedy sampling on the device: for each requested position the step returns the index of
  // the largest logit (Backend::ArgmaxRows: lowest on ties, -1 where a sampler would reject the
  // logits) instead of the logits, which then stay on the device.
  bool argmax = false;
  // Sampling on the device (not with argmax; at most one requested position): the step returns
  // the token Backend::SampleRows draws from that position's logits with these parameters.
  std::optional<kernels::RowSampling> draw = std::nullopt;
  // With argmax or a draw: penalties applied on the device to each requested position's logits
  // before (SequenceSampler::Penalties; `row` is ignored: the step sets it). At most one per token.
  std::vector<kernels::LogitPenalty> penalties = {};
};

// A pipeline stage's hidden rows kept in device memory (views of the model's backend, fp32
// [T, hidden]). A step graph copies from `in` by address, so a given address must hold a step's
// input whenever a step is given it.
struct StageDeviceRows {
  kernels::TensorView in;   // the previous stage's output, for a stage that is not first
  kernels::TensorView out;  // room for the output of a stage that is not last
};

class KimiLinearModel {
 public:
  // Opens the checkpoint directory and loads every weight through `backend`, which must outlive
  // the model.
  static absl::StatusOr<std::unique_ptr<KimiLinearModel>> Load(const std::string& dir,
                                                              kernels::Backend& backend,
                                                              const ModelOptions& options = {});
  // The same over an opened checkpoint (a generated one whose configuration the caller chose).
  static absl::StatusOr<std::unique_ptr<KimiLinearModel>> Load(std::unique_ptr<Checkpoint> checkpoint,
                                                              kernels::Backend& backend,
                                                              const ModelOptions& options = {});

  const KimiLinearConfig& config() const { return checkpoint_->config(); }
  // The layers this model holds: [layer_begin, layer_end).
  int64_t layer_begin() const { return weights_.layer_begin; }
  int64_t layer_end() const { return weights_.layer_end; }
  bool is_first_stage() const { return layer_begin() == 0; }
  bool is_last_stage() const { return layer_end() == config().num_layers; }
  kernels::Backend& backend() const { return backend_; }
  // Identifies the weights and configuration; snapshots carry it.
  uint64_t fingerprint() const { return fingerprint_; }
  // The longest history a sequence may reach (model_max_length, or unbounded when absent).
  int64_t max_context() const;

  // A fresh state for this model's layers. Where the backend failed to allocate it (device
  // memory), TakeDeviceFailure says so; Forward with it fails too.
  std::unique_ptr<SequenceState> NewState() const;
  // OK unless this thread's backend operations failed since the last check (model/device_failure.h).
  absl::Status TakeDeviceFailure(std::string_view during) const;
  // The state's snapshot (model/state/state_codec.h). SnapshotStateUnsealed does the state's
  // reads alone, for a caller that holds a lock over them: SealState finishes it (any thread).
  std::string SnapshotState(const SequenceState& state) const;
  std::string SnapshotStateUnsealed(const SequenceState& state) const;
  // `checksum_verified`: ReadStateEnvelope already checked the snapshot (DecodeState).
  absl::StatusOr<std::unique_ptr<SequenceState>> RestoreState(std::string_view snapshot,
                                                              bool checksum_verified = false) const;

  // Runs every sequence's new tokens in one packed step and advances the states. `logits`
  // receives [rows, vocab_size] fp32: one row per requested position, sequences in batch order,
  // positions in the order given; the positions of sequences with `argmax` or a `draw` give the
  // ids the device took to `device_ids` instead (in the same order), which must then be given.
  // Invalid input (token
  // ids, positions, foreign or repeated states, context length) is rejected before any state
  // changes. Several threads may run steps on one model (the backend interleaves them); a state
  // must be in one step at a time. Needs the whole model (a single stage).
  absl::Status Forward(std::span<const SequenceInput> batch, std::vector<float>& logits,
                       std::vector<int32_t>* device_ids = nullptr);

  // One pipeline stage's share of a step. The first stage embeds the tokens; a later stage takes
  // the previous stage's output `hidden_in` ([T, hidden] rows in batch order). The last stage
  // writes the requested logits to `out` as Forward does; any other stage writes its [T, hidden]
  // output. Every stage receives the token ids (its states record them).
  // With `device_rows` a stage that is not first takes its input from device_rows->in instead of
  // hidden_in, and one that is not last leaves its output in device_rows->out instead of `out`
  // (an NCCL data plane between stages: services/transport/nccl_link.h).
  absl::Status ForwardStage(std::span<const SequenceInput> batch, std::span<const float> hidden_in,
                            std::vector<float>& out, std::vector<int32_t>* device_ids = nullptr,
                            const StageDeviceRows* device_rows = nullptr);

  // Allocates the latent cache pages that rows[i] rows past the cached ones of states[i] need,
  // and, where memory allows (leaving the steps' room), this model has run a step and another
  // state is alive, those of `ahead` rows more, changing nothing else: a pipeline's later
  // stages, asked ahead of a step by the first (services/worker/stage_engine.h). Where the rows
  // do not fit: RESOURCE_EXHAUSTED with kStatesUnchangedPayload. The states must be this
  // model's.
  absl::Status ReserveLatentPages(std::span<SequenceState* const> states, std::span<const int64_t> rows,
                                  int64_t ahead) const;
  // The rows (cached ones included) that every MLA layer's latent cache pages of `state` hold;
  // the largest int64 for a model without MLA layers.
  int64_t LatentRowsHeld(const SequenceState& state) const;

  // ModelOptions::step_graphs, switched between steps (benchmarks compare both in one process).
  void set_step_graphs(bool enabled) { step_graphs_ = enabled; }

 private:
  KimiLinearModel(std::unique_ptr<Checkpoint> checkpoint, kernels::Backend& backend,
                  ModelWeights weights, const ModelOptions& options);

  absl::Status Validate(std::span<const SequenceInput> batch, size_t hidden_in_size,
                        bool has_device_ids) const;
  // The rows of the packed batch whose logits a step computes, and what it returns of them.
  struct LogitRows {
    std::vector<int64_t> rows;      // into the batch, in output order
    std::vector<int64_t> kept;      // indices into `rows` whose logits are returned
    std::vector<bool> argmax;       // per entry of `rows`: its argmax is returned instead
    int64_t num_argmax = 0;
    std::vector<int64_t> drawn;     // indices into `rows` whose drawn token is returned instead
    std::vector<kernels::RowSampling> draws;  // theirs
    // Every penalty of the step, padded with empty entries (token -1) to a power of two of at
    // least 64, so that decode steps whose lists grow a token at a time keep one graph key.
    std::vector<kernels::LogitPenalty> penalties;
  };
  // The step's device results: the hidden rows (not the last stage), or the kept logits, the
  // argmax ids of every logit row and the drawn rows' tokens.
  struct StepResult {
    kernels::Tensor values;
    kernels::Tensor argmax;
    kernels::Tensor drawn;
  };
  // The input rows come from hidden_in, or where device_in has data, from it.
  absl::Status RunStep(const Step& step, std::span<const int32_t> ids, std::span<const float> hidden_in,
                       kernels::TensorView device_in, const LogitRows& logit_rows, StepResult& result);
  // Allocates every latent page the step's new rows need, before the step changes any state (a
  // step graph's recording then holds none of them). Where device memory runs out:
  // RESOURCE_EXHAUSTED with kStatesUnchangedPayload.
  absl::Status ReserveLatentRows(std::span<const StepSequence> seqs) const;
  // Every MLA layer's pages for each sequence's new rows and `ahead` more, until one does not fit
  // (false; the backend holds the failure).
  bool GrowLatentPages(std::span<const StepSequence> seqs, int64_t ahead, bool leave_step_room) const;
  // A graph for a decode step where the backend has one, else null.
  std::unique_ptr<kernels::StepGraph> BeginStepGraph(std::span<const StepSequence> seqs,
                                                     const LogitRows& logit_rows, const void* hidden_source);
  // Every MLA layer's num_cached, to undo a step whose graph did not run.
  std::vector<int64_t> CachedLatentRows(std::span<const StepSequence> seqs) const;
  void RestoreCachedLatentRows(std::span<const StepSequence> seqs, std::span<const int64_t> rows) const;
  // A step's final status, noting a step that ran (stepped_).
  absl::Status Stepped(absl::Status status);

  std::unique_ptr<Checkpoint> checkpoint_;
  kernels::Backend& backend_;
  ModelWeights weights_;
  ModelOptions options_;
  LocalExpertRunner local_experts_;
  ExpertRunner* experts_;  // local_experts_ or ModelOptions::experts
  uint64_t fingerprint_ = 0;
  bool step_graphs_ = true;
  uint64_t instance_ = 0;  // StepGraphKey::caller
  // The states NewState and RestoreState made that are alive (SequenceState::CountIn).
  std::shared_ptr<std::atomic<int64_t>> live_states_ = std::make_shared<std::atomic<int64_t>>(0);
  std::atomic<bool> stepped_{false};  // a step has run to its end (ReserveLatentPages' rows ahead)
};

}  // namespace deltaserve::model
