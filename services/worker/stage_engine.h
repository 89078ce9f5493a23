// One pipeline stage: a model slice (a layer range), the live state of every open sequence for
// those layers, and, on the last stage, each sequence's sampler. It implements StageChannel, so
// the router (or the previous stage) calls it in process or through the gRPC service.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "model/kimi_linear_model.h"
#include "model/sampling/sampler.h"
#include "services/session_store/store_client.h"
#include "services/transport/stage_channel.h"
#include "services/worker/nccl_output_link.h"
#include "services/worker/nccl_stage_links.h"
#include "services/worker/stage_metrics.h"

namespace deltaserve::services {

struct StageEngineOptions {
  int64_t max_open_sequences = 1024;
  // A first stage: whether its later stages take page reservations (StepRequest.reserve_only).
  bool reserve_on_later_stages = true;
};

class StageEngine final : public StageChannel {
 public:
  // `store` (snapshots) may be null when no sessions are used; `next` is null on the last stage.
  // `nccl_input` / `nccl_outputs`, where set, carry the hidden rows from the previous stage and to
  // the next one device to device (nccl_stage_links.h; a step takes the first output link that is
  // free); `metrics` counts how they went. None is owned.
  StageEngine(model::KimiLinearModel& model, StoreClient* store, StageChannel* next,
              const StageEngineOptions& options = {}, NcclStageInput* nccl_input = nullptr,
              std::vector<NcclOutputLink*> nccl_outputs = {}, LinkPathMetrics* metrics = nullptr);

  // This stage's part of a session in the store.
  std::string PartName() const;

  absl::Status Open(const internal::v1::OpenRequest& request,
                    internal::v1::OpenResponse* response) override;
  absl::Status Step(const internal::v1::StepRequest& request,
                    internal::v1::StepResponse* response) override;
  absl::Status Close(const internal::v1::CloseRequest& request,
                     internal::v1::CloseResponse* response) override;

  int64_t open_sequences() const;

 private:
  struct Sequence {
    std::unique_ptr<model::SequenceState> state;
    std::unique_ptr<model::SequenceSampler> sampler;  // last stage only
    // A first stage's count of the rows (cached ones included) that the later stages' latent cache
    // pages hold for the sequence, as their last reservation answered.
    int64_t later_stages_rows = 0;
  };

  // The model's failure as the router reads it (kStageDeviceMemoryPayload,
  // kStepStatesUnchangedPayload).
  static absl::Status ForRouter(absl::Status status);
  // Step once its rows announced over NCCL, if any, have arrived. `ran` tells whether this
  // stage's layers ran (their states advanced).
  absl::Status RunStep(const internal::v1::StepRequest& request, internal::v1::StepResponse* response,
                       std::optional<NcclStageInput::Rows> arrived, bool& ran);

  // The open sequence `seq_id`, or INVALID_ARGUMENT.
  absl::StatusOr<Sequence*> FindOpen(uint64_t seq_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // A reservation (StepRequest.reserve_only): this stage's pages, then the later stages'.
  absl::Status Reserve(const internal::v1::StepRequest& request, internal::v1::StepResponse* response);
  // On a first stage, before its step changes any state: the later stages' pages for the step,
  // asked (outside the lock) where its rows pass what they hold.
  absl::Status ReserveOnLaterStages(const internal::v1::StepRequest& step);

  // The state in a fetched snapshot (its checksum verified by Open before its lock), or the
  // reason it cannot be restored.
  absl::StatusOr<std::unique_ptr<model::SequenceState>> Restore(const absl::StatusOr<Part>& snapshot,
                                                               int64_t expected_tokens);

  model::KimiLinearModel& model_;
  StoreClient* store_;
  StageChannel* next_;
  StageEngineOptions options_;
  NcclStageInput* nccl_input_;
  const std::vector<NcclOutputLink*> nccl_outputs_;
  LinkPathMetrics* metrics_;
  mutable absl::Mutex mutex_;
  std::map<uint64_t, Sequence> sequences_ ABSL_GUARDED_BY(mutex_);
  std::atomic<bool> reservation_refused_{false};  // logged once
};

}  // namespace deltaserve::services
