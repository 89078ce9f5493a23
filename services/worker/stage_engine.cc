#include "services/worker/stage_engine.h"

#include <algorithm>
#include <cstring>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/cord.h"
#include "absl/strings/string_view.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/status_macros.h"
#include "model/device_failure.h"
#include "model/generator.h"
#include "model/state/state_codec.h"
#include "model/state/state_envelope.h"
#include "services/transport/sampling_proto.h"
#include "spdlog/spdlog.h"

namespace deltaserve::services {

StageEngine::StageEngine(model::KimiLinearModel& model, StoreClient* store, StageChannel* next,
                         const StageEngineOptions& options, NcclStageInput* nccl_input,
                         std::vector<NcclOutputLink*> nccl_outputs, LinkPathMetrics* metrics)
    : model_(model), store_(store), next_(next), options_(options), nccl_input_(nccl_input),
      nccl_outputs_(std::move(nccl_outputs)), metrics_(metrics) {}

std::string StageEngine::PartName() const {
  return absl::StrCat("layers-", model_.layer_begin(), "-", model_.layer_end() - 1);
}

int64_t StageEngine::open_sequences() const {
  absl::MutexLock lock(&mutex_);
  return static_cast<int64_t>(sequences_.size());
}

absl::StatusOr<std::unique_ptr<model::SequenceState>> StageEngine::Restore(
    const absl::StatusOr<Part>& snapshot, int64_t expected_tokens) {
  DS_RETURN_IF_ERROR(snapshot.status());
  DS_ASSIGN_OR_RETURN(std::unique_ptr<model::SequenceState> state,
                      model_.RestoreState(snapshot->payload, /*checksum_verified=*/true));
  if (state->num_tokens() != expected_tokens) {
    return absl::FailedPreconditionError(absl::StrCat("snapshot ", PartName(), " covers ",
                                                      state->num_tokens(), " tokens, the session has ",
                                                      expected_tokens));
  }
  return state;
}

absl::Status StageEngine::Open(const internal::v1::OpenRequest& request,
                               internal::v1::OpenResponse* response) {
  if (request.has_model_fingerprint() && request.model_fingerprint() != model_.fingerprint()) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "stage %s serves model %016x, the caller expects %016x: the pipeline changed since it "
        "started; restart it as a whole", PartName(), model_.fingerprint(), request.model_fingerprint()));
  }
  if (request.has_layer_begin() && request.layer_begin() != model_.layer_begin()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "stage ", PartName(), " starts at layer ", model_.layer_begin(), ", the caller expects layer ",
        request.layer_begin(), ": the pipeline changed since it started; restart it as a whole"));
  }
  // The snapshots to restore are fetched and their checksums verified before the lock, so the
  // other sequences' steps never wait for the store or the CRC over gigabytes.
  std::vector<std::optional<absl::StatusOr<Part>>> snapshots(request.sequences_size());
  for (int i = 0; i < request.sequences_size(); ++i) {
    const internal::v1::OpenSequence& open = request.sequences(i);
    if (!open.has_restore()) continue;
    snapshots[i] = store_ == nullptr
                       ? absl::FailedPreconditionError("this stage has no session store")
                       : store_->GetPart(open.restore().tenant(), open.restore().session_id(), PartName());
    if (snapshots[i]->ok()) {
      if (const absl::Status valid = model::ReadStateEnvelope((*snapshots[i])->payload).status(); !valid.ok()) {
        snapshots[i] = valid;
      }
    }
  }
  absl::ReleasableMutexLock lock(&mutex_);
  const int64_t vocab = model_.config().vocab_size;
  if (static_cast<int64_t>(sequences_.size() + request.sequences_size()) > options_.max_open_sequences) {
    return absl::ResourceExhaustedError(absl::StrCat("stage ", PartName(), " holds ",
                                                     sequences_.size(), " sequences; the limit is ",
                                                     options_.max_open_sequences));
  }
  for (const internal::v1::OpenSequence& open : request.sequences()) {
    if (sequences_.count(open.seq_id()) > 0) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", open.seq_id(), " is already open"));
    }
    if (model_.is_last_stage()) {
      DS_RETURN_IF_ERROR(FromProto(open.sampling()).Validate(vocab));
      for (int32_t token : open.penalty_context()) {
        if (token < 0 || token >= vocab) {
          return absl::InvalidArgumentError(absl::StrCat("penalty context token ", token,
                                                         " is outside the vocabulary"));
        }
      }
    }
  }

  std::vector<uint64_t> opened;
  for (int i = 0; i < request.sequences_size(); ++i) {
    const internal::v1::OpenSequence& open = request.sequences(i);
    Sequence seq;
    internal::v1::OpenResult* result = response->add_results();
    result->set_seq_id(open.seq_id());
    if (open.has_restore()) {
      absl::StatusOr<std::unique_ptr<model::SequenceState>> restored =
          Restore(*snapshots[i], open.restore_tokens());
      snapshots[i].reset();  // its payload is not kept past here
      if (restored.ok()) {
        seq.state = std::move(*restored);
        result->set_restored(true);
      } else {
        result->set_restore_error(absl::StrCat(PartName(), ": ", restored.status().ToString()));
      }
    }
    if (seq.state == nullptr) seq.state = model_.NewState();
    DS_RETURN_IF_ERROR(ForRouter(model_.TakeDeviceFailure(absl::StrCat("opening sequence ", open.seq_id()))));
    if (model_.is_last_stage()) {
      const std::vector<int32_t> context(open.penalty_context().begin(), open.penalty_context().end());
      seq.sampler = std::make_unique<model::SequenceSampler>(FromProto(open.sampling()), context,
                                                             open.fallback_seed());
      for (const int32_t token : open.generated()) seq.sampler->Replay(token);
    }
    sequences_.emplace(open.seq_id(), std::move(seq));
    opened.push_back(open.seq_id());
  }
  lock.Release();  // the later stages may fetch snapshots: steps go on meanwhile
  if (next_ == nullptr) return absl::OkStatus();

  internal::v1::OpenRequest forwarded = request;
  forwarded.set_model_fingerprint(model_.fingerprint());
  forwarded.set_layer_begin(model_.layer_end());
  internal::v1::OpenResponse downstream;
  const absl::Status status = next_->Open(forwarded, &downstream);
  if (!status.ok()) {
    absl::MutexLock relock(&mutex_);
    for (uint64_t id : opened) sequences_.erase(id);
    return status;
  }
  // A sequence counts as restored only when every later stage restored it too.
  std::map<uint64_t, const internal::v1::OpenResult*> theirs;
  for (const internal::v1::OpenResult& result : downstream.results()) theirs[result.seq_id()] = &result;
  for (internal::v1::OpenResult& mine : *response->mutable_results()) {
    const auto it = theirs.find(mine.seq_id());
    if (it != theirs.end() && it->second->restored()) continue;
    mine.set_restored(false);
    if (mine.restore_error().empty()) {
      mine.set_restore_error(it == theirs.end() ? "a later stage did not answer for it"
                                                : it->second->restore_error());
    }
  }
  return absl::OkStatus();
}

absl::Status StageEngine::Step(const internal::v1::StepRequest& request,
                               internal::v1::StepResponse* response) {
  if (request.reserve_only()) return Reserve(request, response);
  if (model_.is_first_stage() && next_ != nullptr && options_.reserve_on_later_stages) {
    DS_RETURN_IF_ERROR(ReserveOnLaterStages(request));
  }
  const int64_t hidden_size = model_.config().hidden_size;
  // Rows announced over NCCL are received before the engine's lock: links are taken in the order
  // input, engine, output.
  std::optional<NcclStageInput::Rows> arrived;
  if (request.hidden_link() != 0) {
    if (nccl_input_ == nullptr) {
      return absl::FailedPreconditionError("hidden rows announced over NCCL; this stage takes no NCCL links");
    }
    if (!request.hidden().empty()) {
      return absl::InvalidArgumentError("the step's hidden rows come both over NCCL and in the request");
    }
    DS_ASSIGN_OR_RETURN(NcclStageInput::Rows rows,
                        nccl_input_->Receive(request.hidden_link(), request.hidden_rows(), hidden_size));
    arrived = std::move(rows);
  }
  const bool received = arrived.has_value();
  bool ran = false;
  absl::Status status = RunStep(request, response, std::move(arrived), ran);
  if (!status.ok()) {
    status.ErasePayload(kHiddenRowsReceivedPayload);  // the next stage's, about its own rows
    if (received) status.SetPayload(kHiddenRowsReceivedPayload, absl::Cord());
    if (ran) status.ErasePayload(kStepStatesUnchangedPayload);  // a later stage's; this one's changed
  }
  return status;
}

namespace {

// OK where `answer` holds the rows of each of the reservation's sequences.
absl::Status AnswersReservation(const internal::v1::StepResponse& answer, const internal::v1::StepRequest& asked) {
  if (answer.reserved_rows_size() == asked.sequences_size()) return absl::OkStatus();
  return absl::InternalError("the next stage answered a page reservation without its rows");
}

}  // namespace

absl::StatusOr<StageEngine::Sequence*> StageEngine::FindOpen(uint64_t seq_id) {
  const auto it = sequences_.find(seq_id);
  if (it == sequences_.end()) return absl::InvalidArgumentError(absl::StrCat("sequence ", seq_id, " is not open"));
  return &it->second;
}

// The most rows past a step's that a reservation may ask pages for where memory allows.
constexpr int64_t kMaxRowsAhead = 16 * model::kDefaultLatentPageRows;

absl::Status StageEngine::Reserve(const internal::v1::StepRequest& request, internal::v1::StepResponse* response) {
  if (!request.hidden().empty() || request.hidden_link() != 0) {
    return absl::InvalidArgumentError("a page reservation carries no hidden rows");
  }
  if (request.reserve_ahead_rows() < 0 || request.reserve_ahead_rows() > kMaxRowsAhead) {
    return absl::InvalidArgumentError(absl::StrCat("a page reservation asks for ", request.reserve_ahead_rows(),
                                                   " rows ahead; at most ", kMaxRowsAhead));
  }
  std::vector<int64_t> held;
  {
    absl::MutexLock lock(&mutex_);
    std::vector<model::SequenceState*> states;
    std::vector<int64_t> rows;
    for (const internal::v1::StepSequence& seq : request.sequences()) {
      DS_ASSIGN_OR_RETURN(Sequence * open, FindOpen(seq.seq_id()));
      if (seq.token_ids_size() > 0 || seq.sample()) {
        return absl::InvalidArgumentError("a page reservation carries no tokens");
      }
      const int64_t cached = open->state->num_tokens();
      if (seq.reserve_rows() < 0 || seq.reserve_rows() > model_.max_context() - cached) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", seq.seq_id(), " asks for pages of ",
                                                       seq.reserve_rows(), " rows past its ", cached,
                                                       "; the model's context is ", model_.max_context()));
      }
      states.push_back(open->state.get());
      rows.push_back(seq.reserve_rows());
    }
    const absl::Status reserved =
        ForRouter(model_.ReserveLatentPages(states, rows, request.reserve_ahead_rows()));
    if (!reserved.ok()) {  // named: the router's warning then says which stage ran short
      absl::Status named(reserved.code(), absl::StrCat("stage ", PartName(), ": ", reserved.message()));
      reserved.ForEachPayload(
          [&](absl::string_view url, const absl::Cord& payload) { named.SetPayload(url, payload); });
      return named;
    }
    for (const model::SequenceState* state : states) held.push_back(model_.LatentRowsHeld(*state));
  }
  if (next_ != nullptr) {
    internal::v1::StepResponse later;
    DS_RETURN_IF_ERROR(next_->Step(request, &later));
    DS_RETURN_IF_ERROR(AnswersReservation(later, request));
    for (size_t i = 0; i < held.size(); ++i) held[i] = std::min(held[i], later.reserved_rows(static_cast<int>(i)));
  }
  response->mutable_reserved_rows()->Assign(held.begin(), held.end());
  return absl::OkStatus();
}

// Each reservation asks, where memory allows, for this many rows past the step's, so that decode
// steps ask about once a page, not once a step.
constexpr int64_t kLaterStagesRowsAhead = model::kDefaultLatentPageRows;

absl::Status StageEngine::ReserveOnLaterStages(const internal::v1::StepRequest& step) {
  internal::v1::StepRequest reservation;
  std::vector<const model::SequenceState*> states;
  {
    absl::MutexLock lock(&mutex_);
    bool needed = false;
    for (const internal::v1::StepSequence& seq : step.sequences()) {
      const auto it = sequences_.find(seq.seq_id());
      const int64_t rows = seq.token_ids_size();
      // The step itself refuses a sequence that is not open or would pass the model's context.
      if (it == sequences_.end() || rows > model_.max_context() - it->second.state->num_tokens()) {
        return absl::OkStatus();
      }
      needed = needed || it->second.state->num_tokens() + rows > it->second.later_stages_rows;
      states.push_back(it->second.state.get());
    }
    if (!needed) return absl::OkStatus();  // most steps: nothing more is built
    reservation.set_reserve_only(true);
    reservation.set_reserve_ahead_rows(kLaterStagesRowsAhead);
    for (const internal::v1::StepSequence& seq : step.sequences()) {
      internal::v1::StepSequence* asked = reservation.add_sequences();
      asked->set_seq_id(seq.seq_id());
      asked->set_reserve_rows(seq.token_ids_size());
    }
  }
  internal::v1::StepResponse answer;
  const absl::Status status = next_->Step(reservation, &answer);
  if (status.code() == absl::StatusCode::kInvalidArgument) {
    // A later stage of an earlier build reads a reservation as a step without tokens; a stage
    // that refuses it for another reason refuses the step too. Either way the step goes on.
    if (!reservation_refused_.exchange(true)) {
      spdlog::warn("a later stage refused a page reservation ({}); steps that need one go on without it",
                   status.ToString());
    }
    return absl::OkStatus();
  }
  DS_RETURN_IF_ERROR(status);
  DS_RETURN_IF_ERROR(AnswersReservation(answer, reservation));
  absl::MutexLock lock(&mutex_);
  for (int i = 0; i < reservation.sequences_size(); ++i) {
    const auto it = sequences_.find(reservation.sequences(i).seq_id());
    // The same state still: not closed and opened again while the lock was free.
    if (it != sequences_.end() && it->second.state.get() == states[static_cast<size_t>(i)]) {
      it->second.later_stages_rows = answer.reserved_rows(i);
    }
  }
  return absl::OkStatus();
}

absl::Status StageEngine::ForRouter(absl::Status status) {
  if (model::DeviceMemoryRanOut(status)) status.SetPayload(kStageDeviceMemoryPayload, absl::Cord());
  if (model::StatesUnchanged(status)) status.SetPayload(kStepStatesUnchangedPayload, absl::Cord());
  status.ErasePayload(model::kDeviceMemoryPayload);
  status.ErasePayload(model::kStatesUnchangedPayload);
  return status;
}

absl::Status StageEngine::RunStep(const internal::v1::StepRequest& request, internal::v1::StepResponse* response,
                                  std::optional<NcclStageInput::Rows> arrived, bool& ran) {
  const int64_t hidden_size = model_.config().hidden_size;
  absl::ReleasableMutexLock lock(&mutex_);
  std::vector<model::SequenceInput> batch;
  std::vector<std::vector<int32_t>> tokens(request.sequences_size());
  std::vector<Sequence*> sampled_seqs;
  for (int i = 0; i < request.sequences_size(); ++i) {
    const internal::v1::StepSequence& step = request.sequences(i);
    DS_ASSIGN_OR_RETURN(Sequence * open, FindOpen(step.seq_id()));
    tokens[i].assign(step.token_ids().begin(), step.token_ids().end());
    model::SequenceInput input{tokens[i], open->state.get(), {}};
    if (step.sample() && model_.is_last_stage()) {
      input.logit_positions = {static_cast<int64_t>(tokens[i].size()) - 1};
      model::RequestDeviceToken(*open->sampler, input);
      sampled_seqs.push_back(open);
    }
    batch.push_back(std::move(input));
  }
  if (request.hidden().size() % sizeof(float) != 0) {
    return absl::InvalidArgumentError("the step's hidden states are not whole float32 values");
  }
  std::vector<float> hidden_in(request.hidden().size() / sizeof(float));
  if (!hidden_in.empty()) std::memcpy(hidden_in.data(), request.hidden().data(), request.hidden().size());
  model::StageDeviceRows device_rows;
  if (arrived.has_value()) device_rows.in = arrived->view;
  // The output over NCCL where a link is free and takes it (held until the next stage's call
  // returns); otherwise as bytes.
  std::unique_lock<std::mutex> output_hold;
  NcclOutputLink* output = nullptr;
  int64_t rows = 0;
  for (const std::vector<int32_t>& t : tokens) rows += static_cast<int64_t>(t.size());
  if (!model_.is_last_stage()) {
    for (NcclOutputLink* candidate : nccl_outputs_) {
      output_hold = candidate->TryHold(rows, hidden_size);
      if (!output_hold.owns_lock()) continue;
      output = candidate;
      device_rows.out = output->Rows(rows, hidden_size);
      break;
    }
  }
  const bool on_device = device_rows.in.data != nullptr || device_rows.out.data != nullptr;
  std::vector<float> out;
  std::vector<int32_t> device_ids;
  absl::Status stepped =
      model_.ForwardStage(batch, hidden_in, out, &device_ids, on_device ? &device_rows : nullptr);
  if (!stepped.ok()) return ForRouter(std::move(stepped));
  ran = true;
  arrived.reset();  // the input link's buffer is free for the next step

  if (!model_.is_last_stage()) {
    // This stage's part is done: its Opens and Closes need not wait for the later stages'. Steps
    // in flight together (several routers, a step left running past its caller's deadline) hold
    // disjoint sequences, so a later stage may take them in either order.
    lock.Release();
    internal::v1::StepRequest downstream = request;
    downstream.clear_hidden_link();
    downstream.clear_hidden_rows();
    if (device_rows.out.data == nullptr) {
      downstream.set_hidden(std::string(reinterpret_cast<const char*>(out.data()), out.size() * sizeof(float)));
      if (metrics_ != nullptr) metrics_->Went(false);
      return next_->Step(downstream, response);
    }
    NcclLink& link = output->link();
    const size_t bytes = static_cast<size_t>(rows * hidden_size) * sizeof(float);
    // The rows in the link's buffer, to the next stage as bytes in the call.
    const auto send_as_bytes = [&]() -> absl::Status {
      std::string* hidden = downstream.mutable_hidden();
      hidden->resize(bytes);
      DS_RETURN_IF_ERROR(link.ReadBuffer(hidden->data(), bytes));
      downstream.clear_hidden_link();
      downstream.clear_hidden_rows();
      if (metrics_ != nullptr) metrics_->Went(false);
      return next_->Step(downstream, response);
    };
    if (const absl::Status queued = link.StartSend(bytes); !queued.ok()) {
      // This stage's part is done: its rows go as bytes after all.
      spdlog::warn("NCCL link to the next stage: {}; this step's rows go as bytes", queued.ToString());
      if (metrics_ != nullptr) metrics_->LinkFailed();
      return send_as_bytes();
    }
    downstream.clear_hidden();
    downstream.set_hidden_link(output->id());
    downstream.set_hidden_rows(rows);
    output->CountSent();
    const absl::Status status = next_->Step(downstream, response);
    const bool taken = status.ok() || status.GetPayload(kHiddenRowsReceivedPayload).has_value();
    if (taken && metrics_ != nullptr) metrics_->Went(true);
    if (!status.ok()) {
      // Rows the next stage did not say it took may sit unread in NCCL's buffers, where its next
      // receive would take them for its own: the link cannot be trusted then.
      if (taken && link.FinishSend().ok()) return status;
      link.AbandonSend();
      if (metrics_ != nullptr) metrics_->LinkFailed();
      if (taken || status.code() != absl::StatusCode::kFailedPrecondition) return status;
      // The next stage refused the rows before it took them (it holds no such link, or none at all,
      // or the link is busy): nothing ran there, so they go again, as bytes.
      spdlog::warn("the next stage refused this step's rows over NCCL ({}); they go as bytes", status.ToString());
      response->Clear();
      return send_as_bytes();
    }
    // The later stages ran the step, so it stands; a link that failed only here is made again.
    if (const absl::Status sent = link.FinishSend(); !sent.ok()) {
      spdlog::warn("NCCL link to the next stage broke after a step: {}", sent.ToString());
      if (metrics_ != nullptr) metrics_->LinkFailed();
    }
    return absl::OkStatus();
  }
  const int64_t vocab = model_.config().vocab_size;
  size_t sampled = 0, row = 0, from_device = 0;
  for (int i = 0; i < request.sequences_size(); ++i) {
    if (!request.sequences(i).sample()) continue;
    Sequence* seq = sampled_seqs[sampled++];
    int32_t token = 0;
    if (batch[i].argmax || batch[i].draw.has_value()) {
      DS_ASSIGN_OR_RETURN(token, model::TokenFromDevice(device_ids[from_device++]));
    } else {
      DS_ASSIGN_OR_RETURN(token, seq->sampler->Sample(std::span<float>(out).subspan(row * vocab, vocab)));
      ++row;
    }
    seq->sampler->Accept(token);
    internal::v1::SampledToken* chosen = response->add_sampled();
    chosen->set_seq_id(request.sequences(i).seq_id());
    chosen->set_token_id(token);
  }
  return absl::OkStatus();
}

absl::Status StageEngine::Close(const internal::v1::CloseRequest& request,
                                internal::v1::CloseResponse* response) {
  // The snapshots are copied off the state under the lock, and checksummed and uploaded after
  // it, so the other sequences' steps never wait for the CRC or the store.
  struct Upload {
    const internal::v1::SessionRef* session;
    std::string payload;
  };
  std::vector<Upload> uploads;
  absl::Status first_error;
  {
    absl::MutexLock lock(&mutex_);
    for (const internal::v1::CloseSequence& close : request.sequences()) {
      const auto it = sequences_.find(close.seq_id());
      if (it == sequences_.end()) continue;
      if (close.has_snapshot() && store_ == nullptr) {
        if (first_error.ok()) {
          first_error = absl::FailedPreconditionError(
              absl::StrCat("snapshot of ", PartName(), ": this stage has no session store"));
        }
      } else if (close.has_snapshot()) {
        std::string payload = model_.SnapshotStateUnsealed(*it->second.state);
        // A failed device copy leaves bytes that would checksum fine: not uploaded.
        if (absl::Status copied = model_.TakeDeviceFailure(absl::StrCat("snapshot of ", PartName()));
            !copied.ok()) {
          if (first_error.ok()) first_error = copied;
        } else {
          uploads.push_back({&close.snapshot(), std::move(payload)});
        }
      }
      sequences_.erase(it);
    }
  }
  // The later stages first: each lets its state go as soon as it has taken its snapshot.
  int64_t bytes = 0;
  if (next_ != nullptr) {
    internal::v1::CloseResponse downstream;
    const absl::Status status = next_->Close(request, &downstream);
    bytes += downstream.snapshot_bytes();
    if (first_error.ok()) first_error = status;
  }
  for (Upload& upload : uploads) {
    model::SealState(upload.payload);
    // The snapshot's own size: it holds every value in fp32, whatever the live state keeps.
    const auto stored = static_cast<int64_t>(upload.payload.size());
    const absl::Status status = store_
                                    ->PutPart(upload.session->tenant(), upload.session->session_id(),
                                              PartName(), PartKind::kState, std::move(upload.payload))
                                    .status();
    if (status.ok()) {
      bytes += stored;
    } else if (first_error.ok()) {
      first_error =
          absl::Status(status.code(), absl::StrCat("snapshot of ", PartName(), ": ", status.message()));
    }
  }
  response->set_snapshot_bytes(bytes);
  return first_error;
}

}  // namespace deltaserve::services
