// A loaded Kimi Linear model over a backend: runs packed batches of sequences, each in prefill or
// decode, each continuing from its own SequenceState. One code path for every backend.
#pragma once

#include <cstdint>
#include <memory>
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
};

// One sequence's share of a step.
struct SequenceInput {
  std::span<const int32_t> tokens;       // the new tokens, at least one
  SequenceState* state = nullptr;        // continued from, and advanced by, this step
  std::vector<int64_t> logit_positions;  // indices into `tokens` whose logits are wanted
};

class KimiLinearModel {
 public:
  // Opens the checkpoint directory and loads every weight through `backend`, which must outlive
  // the model.
  static absl::StatusOr<std::unique_ptr<KimiLinearModel>> Load(const std::string& dir,
                                                              kernels::Backend& backend,
                                                              const ModelOptions& options = {});

  const KimiLinearConfig& config() const { return checkpoint_->config(); }
  kernels::Backend& backend() const { return backend_; }
  // Identifies the weights and configuration; snapshots carry it.
  uint64_t fingerprint() const { return fingerprint_; }
  // The longest history a sequence may reach (model_max_length, or unbounded when absent).
  int64_t max_context() const;

  std::unique_ptr<SequenceState> NewState() const;
  std::string SnapshotState(const SequenceState& state) const;
  absl::StatusOr<std::unique_ptr<SequenceState>> RestoreState(std::string_view snapshot) const;

  // Runs every sequence's new tokens in one packed step and advances the states. `logits`
  // receives [rows, vocab_size] fp32: one row per requested position, sequences in batch order,
  // positions in the order given. Invalid input (token ids, positions, foreign or repeated
  // states, context length) is rejected before any state changes. Several threads may run
  // steps on one model (the backend interleaves them); a state must be in one step at a time.
  absl::Status Forward(std::span<const SequenceInput> batch, std::vector<float>& logits);

 private:
  KimiLinearModel(std::unique_ptr<Checkpoint> checkpoint, kernels::Backend& backend,
                  ModelWeights weights, const ModelOptions& options);

  absl::Status Validate(std::span<const SequenceInput> batch) const;

  std::unique_ptr<Checkpoint> checkpoint_;
  kernels::Backend& backend_;
  ModelWeights weights_;
  ModelOptions options_;
  LocalExpertRunner local_experts_;
  uint64_t fingerprint_ = 0;
};

}  // namespace deltaserve::model
