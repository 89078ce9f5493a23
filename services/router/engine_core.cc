#include "services/router/engine_core.h"

#include <algorithm>
#include <optional>
#include <random>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "base/log.h"
#include "spdlog/spdlog.h"
#include "deltaserve/internal/v1/session_manifest.pb.h"
#include "services/transport/sampling_proto.h"

namespace deltaserve::services {

struct EngineCore::Sequence {
  uint64_t id = 0;
  RouterRequest request;
  std::shared_ptr<RequestStream> stream;
  bool has_session = false;
  std::string session_id;

  Clock::time_point arrived;
  Clock::time_point admitted;
  Clock::time_point first_token;
  Clock::time_point last_token;

  std::vector<int32_t> history;  // the session's tokens before this turn
  std::vector<int32_t> pending;  // tokens to prefill: recomputed history (if any), then the prompt
  size_t consumed = 0;           // of pending
  std::vector<int32_t> generated;
  SequencePhase phase = SequencePhase::kPrefill;
  uint64_t arrival = 0;  // admission order
  bool opened = false;   // the stages hold its state
  bool opening = false;  // admitted, its Open running in the background: the loop leaves it be
  bool stepping = false;  // in a step still in flight (pipeline_steps above 1): the loop leaves it be
  int64_t session_tokens = 0;
  int64_t recomputed_tokens = 0;
  int64_t preemptions = 0;  // times its state was dropped because device memory ran out
  std::optional<uint64_t> fallback_seed;  // its sampler's seed where the request sets none, from its first Open
  v1::FinishReason finish_reason = v1::FINISH_REASON_UNSPECIFIED;
  bool drain_cut = false;  // a drain ends this turn after its absorb step

  // Its turn has ended (or a drain ends it): where its state is computed again after a
  // preemption, it samples nothing more once that is done, and the turn ends.
  bool TurnEnded() const { return finish_reason != v1::FINISH_REASON_UNSPECIFIED || drain_cut; }
};

namespace {

double Seconds(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

base::RequestContext LogContext(uint64_t id, const std::string& tenant, const std::string& session_id) {
  base::RequestContext context;
  context.request_id = std::to_string(id);
  context.tenant = tenant;
  context.session_id = session_id;
  return context;
}

int64_t Nanos(std::chrono::steady_clock::duration d) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
}

// A failure of the pipeline's workers, as the caller sees it: the service is unavailable (the
// workers' own codes, such as an internal deadline, would mislead the client).
absl::Status WorkerError(const absl::Status& status) {
  // Code and message only: payloads are for the router, not the client.
  const std::string message = absl::StrCat("the model workers failed: ", absl::StatusCodeToString(status.code()),
                                           ": ", status.message());
  // Device memory running out says the request does not fit this server now (a retry later or
  // a smaller request may), not that the workers are down.
  if (status.code() == absl::StatusCode::kResourceExhausted) return absl::ResourceExhaustedError(message);
  return absl::UnavailableError(message);
}

uint64_t FreshSeed() {
  thread_local std::mt19937_64 rng(std::random_device{}());
  return rng();
}

// How often the loop, waiting for a save or an open to finish, still looks for cancellations.
constexpr absl::Duration kReapInterval = absl::Milliseconds(20);

absl::Status DrainingError() {
  return absl::UnavailableError("the server is draining: send the request to another replica");
}

// A session turn a drain ended after its session was saved.
absl::Status DrainCutSessionError() {
  return absl::UnavailableError(
      "the server is draining: the session keeps the tokens streamed so far; continue it on "
      "another replica");
}

}  // namespace

EngineCore::EngineCore(const RouterConfig& config, RouterModel model, StageChannel& first_stage,
                       StoreClient* store, RouterObserver* observer)
    : config_(config),
      model_(std::move(model)),
      first_stage_(first_stage),
      store_(store),
      observer_(observer != nullptr ? observer : &default_observer_),
      queue_(config.max_waiting),
      running_cap_(config.max_running),
      save_threads_(static_cast<int>(config.session_transfer_threads)),
      open_threads_(static_cast<int>(config.session_transfer_threads)) {
  if (config.pipeline_steps > 1) step_threads_ = std::make_unique<BackgroundTasks>(config.pipeline_steps);
  // Sequence ids start at a random epoch, so a restarted router never reuses an id that a stage
  // may still hold from its predecessor.
  next_id_ = (FreshSeed() & 0xffffffff00000000ull) | 1;
  loop_ = std::thread([this] { Loop(); });
}

EngineCore::~EngineCore() { Shutdown(); }

std::string EngineCore::SessionKey(const std::string& tenant, const std::string& session_id) const {
  return absl::StrCat(tenant, "/", session_id);
}

bool EngineCore::ReserveSession(const std::string& tenant, const std::string& session_id) {
  absl::MutexLock lock(&mutex_);
  return busy_sessions_.insert(SessionKey(tenant, session_id)).second;
}

void EngineCore::ReleaseSession(const std::string& tenant, const std::string& session_id) {
  absl::MutexLock lock(&mutex_);
  busy_sessions_.erase(SessionKey(tenant, session_id));
}

absl::StatusOr<std::shared_ptr<RequestStream>> EngineCore::Submit(RouterRequest request) {
  auto seq = std::make_unique<Sequence>();
  seq->arrived = Clock::now();
  seq->has_session = request.session_mode != v1::SESSION_MODE_UNSPECIFIED;
  if (seq->has_session && store_ == nullptr) {
    return absl::FailedPreconditionError("this server keeps no sessions (no session store)");
  }
  seq->session_id = request.session_mode == v1::SESSION_MODE_CREATE && request.session_id.empty()
                        ? NewSessionId()
                        : request.session_id;
  const std::string key = SessionKey(request.tenant, seq->session_id);
  {
    // Reserve a queue place and the session before talking to the store.
    absl::MutexLock lock(&mutex_);
    if (stopping_) return absl::UnavailableError("the router is shutting down");
    if (draining_) {
      observer_->RequestFinished("draining", 0);
      return DrainingError();
    }
    if (queued_ >= config_.max_waiting) {
      observer_->RequestFinished("rejected", 0);
      return absl::ResourceExhaustedError(absl::StrCat(
          "the router's queue is full (", config_.max_waiting, " waiting requests); retry later"));
    }
    if (seq->has_session && !busy_sessions_.insert(key).second) {
      return absl::AbortedError(absl::StrCat("session ", seq->session_id,
                                             " already has a request in flight"));
    }
    ++queued_;
  }
  absl::Status status;
  if (request.session_mode == v1::SESSION_MODE_CREATE) {
    status = store_->CreateSession(request.tenant, seq->session_id, /*must_be_new=*/true).status();
  } else if (request.session_mode == v1::SESSION_MODE_CONTINUE) {
    status = store_->StatSession(request.tenant, seq->session_id).status();
  }
  // The stream is set up before it is shared, so no lock is ever taken inside another.
  seq->request = std::move(request);
  seq->stream = std::make_shared<RequestStream>();
  if (seq->has_session) seq->stream->SetSessionId(seq->session_id);
  std::shared_ptr<RequestStream> stream = seq->stream;
  absl::MutexLock lock(&mutex_);
  if (!status.ok() || stopping_ || draining_) {
    --queued_;
    if (seq->has_session) busy_sessions_.erase(key);
    if (!status.ok()) return status;
    return stopping_ ? absl::UnavailableError("the router is shutting down") : DrainingError();
  }
  seq->id = next_id_++;
  ++live_;
  inbox_.push_back(std::move(seq));
  return stream;
}

EngineCore::DrainResult EngineCore::Drain(std::chrono::milliseconds timeout) {
  const absl::Time deadline = absl::Now() + absl::FromChrono(timeout);
  DrainResult result;
  absl::MutexLock lock(&mutex_);
  draining_ = true;
  result.in_flight = live_;
  const auto idle = [this]() ABSL_SHARED_LOCKS_REQUIRED(mutex_) { return live_ == 0; };
  if (!mutex_.AwaitWithDeadline(absl::Condition(&idle), deadline)) {
    result.cut_short = live_;
    cut_short_requested_ = true;  // the loop ends them at its next turn
    mutex_.Await(absl::Condition(&idle));
  }
  return result;
}

void EngineCore::CutShortForDrain() {
  FinishSteps();  // so that no sequence below is in a step
  TakeInbox();
  std::vector<uint64_t> running, waiting;
  for (const auto& [id, seq] : running_) running.push_back(id);
  for (const auto& [id, seq] : waiting_) waiting.push_back(id);
  cut_short_ = true;
  // A session turn preempted after it streamed tokens, still waiting, ends as a queued one does:
  // its session untouched, the client sends the turn again.
  for (uint64_t id : waiting) Retire(id, Drained(*waiting_.at(id)), false);
  for (uint64_t id : running) {
    Sequence& seq = *running_.at(id);
    if (seq.opening) continue;  // TakeOpened ends it once its Open is back
    if (seq.phase == SequencePhase::kAbsorb) continue;  // its turn ends with the next step
    if (seq.has_session && seq.phase == SequencePhase::kDecode) {
      // One more step runs the last streamed token, so the snapshot covers every token the
      // client saw and the next turn resumes it without recomputing.
      seq.drain_cut = true;
      seq.phase = SequencePhase::kAbsorb;
      continue;
    }
    if (seq.has_session && !seq.generated.empty()) {
      // Computed again after a preemption: once it is, its turn ends as one that absorbs.
      seq.drain_cut = true;
      continue;
    }
    // Still reading its prompt: nothing was streamed, so the turn ends without touching its
    // session (the store keeps the previous turn) and the client sends it again elsewhere.
    Retire(id, Drained(seq), /*snapshot=*/false);
  }
}

RequestOutcome EngineCore::Drained(const Sequence& seq) const {
  RequestOutcome outcome = Outcome(seq, DrainingError(), v1::FINISH_REASON_ERROR);
  outcome.drained = true;
  return outcome;
}

void EngineCore::Shutdown() {
  {
    absl::MutexLock lock(&mutex_);
    stopping_ = true;
  }
  std::call_once(joined_, [this] {
    loop_.join();
    save_threads_.Stop();  // the session turns already ended still save and answer their callers
  });
}

bool EngineCore::HasWork() const { return stopping_ || !inbox_.empty() || cut_short_requested_; }

void EngineCore::TakeInbox() {
  std::vector<std::unique_ptr<Sequence>> arrived;
  {
    absl::MutexLock lock(&mutex_);
    arrived.swap(inbox_);
  }
  for (auto& seq : arrived) {
    queue_.Push(seq->id, seq->request.priority);  // never full: Submit bounds queued_
    waiting_[seq->id] = std::move(seq);
  }
}

RequestOutcome EngineCore::Outcome(const Sequence& seq, absl::Status status,
                                   v1::FinishReason reason) const {
  RequestOutcome outcome;
  outcome.status = std::move(status);
  outcome.finish_reason = reason;
  outcome.usage.set_prompt_tokens(static_cast<int64_t>(seq.request.prompt.size()));
  outcome.usage.set_session_tokens(seq.session_tokens);
  outcome.usage.set_recomputed_tokens(seq.recomputed_tokens);
  outcome.usage.set_completion_tokens(static_cast<int64_t>(seq.generated.size()));
  const Clock::time_point now = Clock::now();
  if (seq.admitted != Clock::time_point()) outcome.timings.set_queue_ns(Nanos(seq.admitted - seq.arrived));
  if (seq.first_token != Clock::time_point()) {
    outcome.timings.set_first_token_ns(Nanos(seq.first_token - seq.arrived));
  }
  outcome.timings.set_total_ns(Nanos(now - seq.arrived));
  return outcome;
}

void EngineCore::DropOnStages(const std::vector<uint64_t>& ids) {
  for (uint64_t id : ids) {
    auto it = running_.find(id);
    if (it != running_.end()) it->second->opened = false;
  }
  CloseOnStages(ids);
}

void EngineCore::CloseOnStages(const std::vector<uint64_t>& ids) {
  internal::v1::CloseRequest close;
  for (uint64_t id : ids) close.add_sequences()->set_seq_id(id);  // stages ignore unknown ids
  if (close.sequences_size() == 0) return;
  internal::v1::CloseResponse closed;
  const absl::Status status = first_stage_.Close(close, &closed);
  if (!status.ok()) spdlog::warn("dropping {} sequences on the stages: {}", ids.size(), status.ToString());
}

void EngineCore::Retire(uint64_t id, RequestOutcome outcome, bool snapshot) {
  std::unique_ptr<Sequence> seq;
  if (auto it = running_.find(id); it != running_.end()) {
    seq = std::move(it->second);
    running_.erase(it);
  } else if (auto wit = waiting_.find(id); wit != waiting_.end()) {
    seq = std::move(wit->second);
    waiting_.erase(wit);
    queue_.Remove(id);
    absl::MutexLock lock(&mutex_);
    --queued_;
  }
  if (seq == nullptr) return;
  if (outcome.status.ok()) running_cap_ = std::min(running_cap_ + 1, config_.max_running);
  if (seq->opened && snapshot) {
    {
      absl::MutexLock lock(&mutex_);
      ++saving_;
    }
    save_threads_.Post([this, saved = std::move(seq), outcome = std::move(outcome), ended = Clock::now()]() mutable {
      SaveSession(*saved, outcome, ended);
      Finish(*saved, std::move(outcome));
    });
    return;
  }
  if (seq->opened) DropOnStages({seq->id});
  Finish(*seq, std::move(outcome));
}

void EngineCore::SaveSession(const Sequence& seq, RequestOutcome& outcome, Clock::time_point ended) {
  internal::v1::CloseRequest close;
  internal::v1::CloseSequence* entry = close.add_sequences();
  entry->set_seq_id(seq.id);
  entry->mutable_snapshot()->set_tenant(seq.request.tenant);
  entry->mutable_snapshot()->set_session_id(seq.session_id);
  internal::v1::CloseResponse closed;
  const absl::Status status = first_stage_.Close(close, &closed);
  {
    absl::MutexLock lock(&mutex_);
    --saving_;  // the stages are done with it
  }
  // A failed stage snapshot is not fatal: the manifest below still records the history, and the
  // next turn recomputes the stage whose snapshot is missing or stale.
  internal::v1::SessionManifest manifest;
  std::vector<int32_t> history = seq.history;
  history.insert(history.end(), seq.request.prompt.begin(), seq.request.prompt.end());
  history.insert(history.end(), seq.generated.begin(), seq.generated.end());
  manifest.mutable_token_ids()->Assign(history.begin(), history.end());
  manifest.set_model_fingerprint(model_.fingerprint);
  manifest.set_updated_unix_ms(absl::ToUnixMillis(absl::Now()));
  const absl::Status saved = store_->PutPart(seq.request.tenant, seq.session_id, kManifestPart,
                                             PartKind::kBlob, manifest.SerializeAsString())
                                 .status();
  const base::RequestContext context = LogContext(seq.id, seq.request.tenant, seq.session_id);
  if (!saved.ok()) base::LogWarn(context, "saving the session manifest failed: {}", saved.ToString());
  if (!saved.ok() && outcome.status.ok()) {
    outcome.status = absl::Status(saved.code(), absl::StrCat("saving session ", seq.session_id, ": ",
                                                             saved.message()));
    outcome.finish_reason = v1::FINISH_REASON_ERROR;
  }
  if (!status.ok()) {
    base::LogWarn(context, "stage snapshot failed, the next turn recomputes it: {}", status.ToString());
  }
  observer_->SessionSaved(closed.snapshot_bytes(), Seconds(Clock::now() - ended));
}

void EngineCore::Finish(Sequence& seq, RequestOutcome outcome) {
  const char* name = "error";
  if (outcome.status.ok()) {
    name = outcome.finish_reason == v1::FINISH_REASON_STOP ? "stop" : "length";
  } else if (outcome.status.code() == absl::StatusCode::kCancelled) {
    name = "cancelled";
  } else if (outcome.status.code() == absl::StatusCode::kDeadlineExceeded) {
    name = "deadline";
  }
  if (outcome.drained) name = "draining";
  observer_->RequestFinished(name, Seconds(Clock::now() - seq.arrived));
  const base::RequestContext context = LogContext(seq.id, seq.request.tenant, seq.session_id);
  if (outcome.status.ok()) {
    base::LogInfo(context, "{}: prompt {} restored {} recomputed {} generated {} in {:.1f} ms", name,
                  outcome.usage.prompt_tokens(), outcome.usage.session_tokens(),
                  outcome.usage.recomputed_tokens(), outcome.usage.completion_tokens(),
                  outcome.timings.total_ns() / 1e6);
  } else {
    base::LogWarn(context, "{}: {}", name, outcome.status.ToString());
  }
  // Free the session before telling the caller, whose next turn may arrive at once.
  {
    absl::MutexLock lock(&mutex_);
    if (seq.has_session) busy_sessions_.erase(SessionKey(seq.request.tenant, seq.session_id));
    --live_;
  }
  seq.stream->Finish(std::move(outcome));
}

void EngineCore::ReapCancelled() {
  const Clock::time_point now = Clock::now();
  std::vector<std::pair<uint64_t, absl::Status>> gone;
  for (auto* table : {&waiting_, &running_}) {
    for (const auto& [id, seq] : *table) {
      if (seq->opening || seq->stepping) continue;  // reaped once its Open or step is back
      if (seq->stream->cancelled()) {
        gone.emplace_back(id, absl::CancelledError("the client cancelled the request"));
      } else if (now >= seq->request.deadline) {
        gone.emplace_back(id, absl::DeadlineExceededError("the request's deadline passed"));
      }
    }
  }
  std::vector<uint64_t> ids;
  for (const auto& [id, status] : gone) ids.push_back(id);
  DropOnStages(ids);
  for (auto& [id, status] : gone) {
    Sequence& seq = running_.count(id) ? *running_[id] : *waiting_[id];
    Retire(id, Outcome(seq, status, v1::FINISH_REASON_CANCELLED), /*snapshot=*/false);
  }
}

void EngineCore::Admit() {
  std::vector<Sequence*> admitted;
  int64_t saving = 0;
  {
    absl::MutexLock lock(&mutex_);
    saving = saving_;
  }
  while (static_cast<int64_t>(running_.size() + admitted.size()) + saving < running_cap_ && !queue_.empty()) {
    const uint64_t id = *queue_.Pop();
    auto node = waiting_.extract(id);
    {
      absl::MutexLock lock(&mutex_);
      --queued_;
    }
    Sequence* seq = node.mapped().get();
    running_.insert(std::move(node));
    admitted.push_back(seq);
  }
  if (admitted.empty()) return;
  // A continued session's turn opens on its own background thread (its snapshots may take a
  // while to arrive); the rest open here at once, together, with nothing to fetch.
  std::vector<Sequence*> fresh;
  for (Sequence* seq : admitted) {
    if (seq->preemptions == 0) {  // a preempted one keeps its place in line
      seq->admitted = Clock::now();
      seq->arrival = admissions_++;
      observer_->Queued(Seconds(seq->admitted - seq->arrived));
    }
    if (seq->request.session_mode != v1::SESSION_MODE_CONTINUE) {
      fresh.push_back(seq);
      continue;
    }
    seq->opening = true;
    open_threads_.Post([this, seq] {
      OpenedBatch batch;
      batch.ids = {seq->id};
      OpenSequences({seq}, batch);
      absl::MutexLock lock(&mutex_);
      opened_.push_back(std::move(batch));
    });
  }
  if (fresh.empty()) return;
  OpenedBatch batch;
  for (Sequence* seq : fresh) batch.ids.push_back(seq->id);
  OpenSequences(fresh, batch);
  ApplyOpened(batch);
}

void EngineCore::TakeOpened() {
  std::vector<OpenedBatch> batches;
  {
    absl::MutexLock lock(&mutex_);
    batches.swap(opened_);
  }
  for (OpenedBatch& batch : batches) ApplyOpened(batch);
}

void EngineCore::ApplyOpened(OpenedBatch& batch) {
  for (uint64_t id : batch.ids) running_.at(id)->opening = false;
  for (auto& [id, outcome] : batch.failed) Retire(id, std::move(outcome), /*snapshot=*/false);
  if (!batch.no_memory.empty()) {
    // They wait for the sequences that hold state to finish; where none does, half of them try
    // again at once. One alone that does not fit ends.
    const int64_t holding = HoldingState();
    const int64_t waiting = static_cast<int64_t>(batch.no_memory.size());
    running_cap_ = holding > 0 ? holding : std::max<int64_t>(1, waiting / 2);
    const absl::Status failure = WorkerError(batch.no_memory_status);
    int64_t requeued = 0;
    for (uint64_t id : batch.no_memory) {
      Sequence& seq = *running_.at(id);
      if (holding == 0 && waiting == 1) {
        Retire(id, Outcome(seq, failure, v1::FINISH_REASON_ERROR), /*snapshot=*/false);
      } else {
        requeued += Preempt(seq, failure) ? 1 : 0;
      }
    }
    observer_->Preempted("open", requeued);
  }
  if (!cut_short_) return;
  // A drain's time ran out while these opened: they end as CutShortForDrain ends a turn still
  // reading its prompt.
  for (uint64_t id : batch.ids) {
    auto it = running_.find(id);
    if (it == running_.end()) continue;
    DropOnStages({id});
    Retire(id, Drained(*it->second), /*snapshot=*/false);
  }
}

void EngineCore::OpenSequences(const std::vector<Sequence*>& admitted, OpenedBatch& batch) {
  std::vector<std::pair<uint64_t, RequestOutcome>>& failed = batch.failed;
  // Each continued session's history comes from its manifest.
  std::vector<Sequence*> opening;
  std::vector<bool> restore;
  for (Sequence* seq : admitted) {
    bool fresh_model_state = true;
    if (seq->request.session_mode == v1::SESSION_MODE_CONTINUE) {
      absl::StatusOr<Part> manifest_part =
          store_->GetPart(seq->request.tenant, seq->session_id, kManifestPart);
      if (manifest_part.ok()) {
        internal::v1::SessionManifest manifest;
        if (!manifest.ParseFromString(manifest_part->payload)) {
          failed.emplace_back(seq->id, Outcome(*seq,
                                               absl::DataLossError(absl::StrCat(
                                                   "session ", seq->session_id, " has a damaged manifest")),
                                               v1::FINISH_REASON_ERROR));
          continue;
        }
        seq->history.assign(manifest.token_ids().begin(), manifest.token_ids().end());
        fresh_model_state = manifest.model_fingerprint() != model_.fingerprint;
      } else if (manifest_part.status().code() != absl::StatusCode::kNotFound) {
        failed.emplace_back(seq->id, Outcome(*seq, manifest_part.status(), v1::FINISH_REASON_ERROR));
        continue;
      }
    }
    const int64_t total = static_cast<int64_t>(seq->history.size() + seq->request.prompt.size());
    if (total >= model_.max_context) {
      failed.emplace_back(seq->id,
                          Outcome(*seq,
                                  absl::InvalidArgumentError(absl::StrCat(
                                      "session ", seq->session_id, " holds ", seq->history.size(),
                                      " tokens; with the prompt's ", seq->request.prompt.size(),
                                      " it leaves no room in the model's context of ", model_.max_context)),
                                  v1::FINISH_REASON_ERROR));
      continue;
    }
    opening.push_back(seq);
    restore.push_back(!seq->history.empty() && !fresh_model_state);
  }

  auto open_request = [&](const std::vector<Sequence*>& seqs, const std::vector<bool>& with_restore) {
    internal::v1::OpenRequest request;
    request.set_model_fingerprint(model_.fingerprint);
    request.set_layer_begin(0);
    for (size_t i = 0; i < seqs.size(); ++i) {
      Sequence* seq = seqs[i];
      internal::v1::OpenSequence* open = request.add_sequences();
      open->set_seq_id(seq->id);
      if (with_restore[i]) {
        open->mutable_restore()->set_tenant(seq->request.tenant);
        open->mutable_restore()->set_session_id(seq->session_id);
        open->set_restore_tokens(static_cast<int64_t>(seq->history.size()));
      }
      ToProto(seq->request.sampling, open->mutable_sampling());
      open->mutable_penalty_context()->Assign(seq->history.begin(), seq->history.end());
      open->mutable_penalty_context()->Add(seq->request.prompt.begin(), seq->request.prompt.end());
      open->mutable_generated()->Assign(seq->generated.begin(), seq->generated.end());
      if (!seq->fallback_seed.has_value()) seq->fallback_seed = FreshSeed();
      open->set_fallback_seed(*seq->fallback_seed);
    }
    return request;
  };
  if (opening.empty()) return;
  // The sequences of an Open that ran out of device memory wait for memory (ApplyOpened).
  const auto no_memory = [&](const absl::Status& status, Sequence* seq) {
    if (!StageDeviceMemoryRanOut(status)) return false;
    batch.no_memory.push_back(seq->id);
    batch.no_memory_status = status;
    return true;
  };
  internal::v1::OpenResponse opened;
  absl::Status status = first_stage_.Open(open_request(opening, restore), &opened);
  if (!status.ok()) {
    // A stage may have opened some of them before the failure reached us.
    std::vector<uint64_t> ids;
    for (Sequence* seq : opening) ids.push_back(seq->id);
    CloseOnStages(ids);
    for (Sequence* seq : opening) {
      if (no_memory(status, seq)) continue;
      failed.emplace_back(seq->id, Outcome(*seq, WorkerError(status), v1::FINISH_REASON_ERROR));
    }
    return;
  }
  std::map<uint64_t, bool> restored_on_every_stage;
  for (const internal::v1::OpenResult& result : opened.results()) {
    restored_on_every_stage[result.seq_id()] = result.restored();
  }
  // Sequences whose restore failed on some stage start over from the history on every stage.
  std::vector<Sequence*> reopen;
  std::vector<std::pair<Sequence*, bool>> resumed;  // continued sessions, and whether restored
  for (size_t i = 0; i < opening.size(); ++i) {
    Sequence* seq = opening[i];
    seq->opened = true;
    const bool restored = restore[i] && restored_on_every_stage[seq->id];
    if (restore[i] && !restored) {
      std::string reason = "no result";
      for (const internal::v1::OpenResult& result : opened.results()) {
        if (result.seq_id() == seq->id) reason = result.restore_error();
      }
      base::LogWarn(LogContext(seq->id, seq->request.tenant, seq->session_id),
                    "recomputing {} history tokens: {}", seq->history.size(), reason);
    }
    if (restored) {
      seq->session_tokens = static_cast<int64_t>(seq->history.size());
      seq->pending = seq->request.prompt;
    } else {
      seq->recomputed_tokens = static_cast<int64_t>(seq->history.size());
      seq->pending = seq->history;
      seq->pending.insert(seq->pending.end(), seq->request.prompt.begin(), seq->request.prompt.end());
      if (restore[i]) reopen.push_back(seq);
    }
    // After a preemption, what it generated is computed again too.
    seq->pending.insert(seq->pending.end(), seq->generated.begin(), seq->generated.end());
    if (seq->request.session_mode == v1::SESSION_MODE_CONTINUE && seq->preemptions == 0) {
      resumed.emplace_back(seq, restored);
    }
  }
  if (!reopen.empty()) {
    std::vector<uint64_t> ids;
    for (Sequence* seq : reopen) ids.push_back(seq->id);
    CloseOnStages(ids);
    internal::v1::OpenResponse fresh;
    status = first_stage_.Open(open_request(reopen, std::vector<bool>(reopen.size(), false)), &fresh);
    if (!status.ok()) {
      CloseOnStages(ids);
      for (Sequence* seq : reopen) {
        seq->opened = false;
        seq->recomputed_tokens = 0;
        if (no_memory(status, seq)) continue;
        failed.emplace_back(seq->id, Outcome(*seq, WorkerError(status), v1::FINISH_REASON_ERROR));
      }
    }
  }
  // Counted once open: a session whose fresh reopen failed was neither restored nor recomputed.
  // Timed from admission, so a wait for a free transfer thread counts too.
  const Clock::time_point now = Clock::now();
  for (const auto& [seq, restored] : resumed) {
    if (seq->opened) {
      observer_->SessionResumed(restored, static_cast<int64_t>(seq->history.size()), Seconds(now - seq->admitted));
    }
  }
}

bool EngineCore::IsStop(const Sequence& seq, int32_t token) const {
  const model::SamplingParams& p = seq.request.sampling;
  if (std::find(p.stop_token_ids.begin(), p.stop_token_ids.end(), token) != p.stop_token_ids.end()) {
    return true;
  }
  if (p.ignore_eos) return false;
  const std::vector<int64_t>& eos = model_.config.eos_token_ids;
  return std::find(eos.begin(), eos.end(), token) != eos.end();
}

void EngineCore::OnToken(Sequence& seq, int32_t token) {
  const Clock::time_point now = Clock::now();
  if (seq.generated.empty()) {
    seq.first_token = now;
    observer_->FirstToken(Seconds(now - seq.arrived));
  } else {
    observer_->InterToken(Seconds(now - seq.last_token));
  }
  seq.last_token = now;
  seq.generated.push_back(token);
  seq.stream->PushToken(token);

  const int64_t in_context =
      static_cast<int64_t>(seq.history.size() + seq.request.prompt.size() + seq.generated.size());
  if (IsStop(seq, token)) {
    seq.finish_reason = v1::FINISH_REASON_STOP;
  } else if (static_cast<int64_t>(seq.generated.size()) >= seq.request.sampling.max_new_tokens ||
             in_context >= model_.max_context) {
    seq.finish_reason = v1::FINISH_REASON_LENGTH;
  } else {
    seq.phase = SequencePhase::kDecode;
    return;
  }
  if (seq.has_session) {
    seq.phase = SequencePhase::kAbsorb;  // the snapshot must include the last generated token
  } else {
    Retire(seq.id, Outcome(seq, absl::OkStatus(), seq.finish_reason), false);
  }
}

void EngineCore::FinishTurn(Sequence& seq) {
  if (seq.drain_cut) {
    RequestOutcome outcome = Outcome(seq, DrainCutSessionError(), v1::FINISH_REASON_ERROR);
    outcome.drained = true;
    Retire(seq.id, std::move(outcome), /*snapshot=*/true);
    return;
  }
  Retire(seq.id, Outcome(seq, absl::OkStatus(), seq.finish_reason), /*snapshot=*/true);
}

EngineCore::Step EngineCore::BuildStep(std::vector<PlannedRun> plan) const {
  Step step;
  step.plan = std::move(plan);
  for (const PlannedRun& run : step.plan) {
    const Sequence& seq = *running_.at(run.id);
    internal::v1::StepSequence* sequence = step.request.add_sequences();
    sequence->set_seq_id(run.id);
    sequence->set_sample(run.sample);
    if (seq.phase == SequencePhase::kPrefill) {
      sequence->mutable_token_ids()->Add(seq.pending.begin() + static_cast<int64_t>(seq.consumed),
                                         seq.pending.begin() + static_cast<int64_t>(seq.consumed) + run.num_tokens);
      step.prefill_tokens += run.num_tokens;
    } else {
      sequence->add_token_ids(seq.generated.back());
      ++step.decode_tokens;
    }
  }
  return step;
}

void EngineCore::RunStep(Step& step) {
  const Clock::time_point start = Clock::now();
  step.status = first_stage_.Step(step.request, &step.response);
  step.seconds = Seconds(Clock::now() - start);
}

void EngineCore::StartStep(std::vector<PlannedRun> plan) {
  auto step = std::make_unique<Step>(BuildStep(std::move(plan)));
  for (const PlannedRun& run : step->plan) running_.at(run.id)->stepping = true;
  observer_->StepsInFlight(++steps_in_flight_);
  step_threads_->Post([this, step = std::move(step)]() mutable {
    RunStep(*step);
    absl::MutexLock lock(&mutex_);
    stepped_.push_back(std::move(*step));
  });
}

void EngineCore::TakeSteps() {
  std::vector<Step> steps;
  {
    absl::MutexLock lock(&mutex_);
    steps.swap(stepped_);
  }
  if (!steps.empty()) observer_->StepsInFlight(steps_in_flight_ -= static_cast<int64_t>(steps.size()));
  for (Step& step : steps) {
    for (const PlannedRun& run : step.plan) {
      if (auto it = running_.find(run.id); it != running_.end()) it->second->stepping = false;
    }
  }
  for (Step& step : steps) ApplyStep(step);
}

void EngineCore::FinishSteps() {
  while (steps_in_flight_ > 0) {
    {
      absl::MutexLock lock(&mutex_);
      const auto back = [this]() ABSL_SHARED_LOCKS_REQUIRED(mutex_) { return !stepped_.empty(); };
      mutex_.Await(absl::Condition(&back));
    }
    TakeSteps();
  }
}

void EngineCore::ApplyStep(Step& step) {
  const std::vector<PlannedRun>& plan = step.plan;
  observer_->Step(step.prefill_tokens, step.decode_tokens, step.seconds);
  if (!step.status.ok()) {
    if (PreemptForMemory(step)) return;
    // The stages may now disagree about these sequences' states: end them all.
    std::vector<uint64_t> ids;
    for (const PlannedRun& run : plan) ids.push_back(run.id);
    DropOnStages(ids);
    for (const PlannedRun& run : plan) {
      auto it = running_.find(run.id);
      if (it == running_.end()) continue;
      Retire(run.id, Outcome(*it->second, WorkerError(step.status), v1::FINISH_REASON_ERROR), false);
    }
    return;
  }
  std::map<uint64_t, int32_t> sampled;
  for (const internal::v1::SampledToken& token : step.response.sampled()) sampled[token.seq_id()] = token.token_id();
  for (const PlannedRun& run : plan) {
    auto it = running_.find(run.id);
    if (it == running_.end()) continue;
    Sequence& seq = *it->second;
    if (seq.phase == SequencePhase::kPrefill) seq.consumed += static_cast<size_t>(run.num_tokens);
    const bool computed_again = seq.phase == SequencePhase::kPrefill && seq.TurnEnded() &&
                                seq.consumed == seq.pending.size();
    if (seq.phase == SequencePhase::kAbsorb || computed_again) {
      FinishTurn(seq);
      continue;
    }
    if (!run.sample) continue;
    const auto token = sampled.find(run.id);
    if (token == sampled.end()) {
      Retire(run.id, Outcome(seq, absl::InternalError("the last stage returned no token"),
                             v1::FINISH_REASON_ERROR),
             false);
      continue;
    }
    OnToken(seq, token->second);
  }
}

int64_t EngineCore::HoldingState() const {
  int64_t holding = 0;
  {
    absl::MutexLock lock(&mutex_);
    holding = saving_;
  }
  for (const auto& [id, seq] : running_) holding += seq->opened || seq->opening ? 1 : 0;
  return holding;
}

bool EngineCore::PreemptForMemory(const Step& step) {
  if (step.status.code() != absl::StatusCode::kResourceExhausted || !StageDeviceMemoryRanOut(step.status)) {
    return false;
  }
  const int64_t holding = HoldingState();
  if (holding <= 1) return false;
  running_cap_ = std::max<int64_t>(1, holding - 1);
  const absl::Status failure = WorkerError(step.status);
  if (StepStatesUnchanged(step.status)) {
    Sequence* last = nullptr;
    for (const auto& [id, seq] : running_) {
      if (!seq->opened || seq->opening || seq->stepping) continue;
      const auto place = [](const Sequence& s) { return std::tie(s.request.priority, s.arrival); };
      if (last == nullptr || place(*seq) > place(*last)) last = seq.get();
    }
    if (last != nullptr && Preempt(*last, failure)) observer_->Preempted("before_step", 1);
    return true;
  }
  int64_t preempted = 0;
  for (const PlannedRun& run : step.plan) {
    auto it = running_.find(run.id);
    if (it == running_.end()) continue;
    preempted += Preempt(*it->second, failure) ? 1 : 0;
  }
  observer_->Preempted("mid_step", preempted);
  return true;
}

bool EngineCore::Preempt(Sequence& seq, const absl::Status& failure) {
  const base::RequestContext context = LogContext(seq.id, seq.request.tenant, seq.session_id);
  if (seq.opened) DropOnStages({seq.id});
  if (seq.preemptions >= config_.max_preemptions) {
    Retire(seq.id,
           Outcome(seq,
                   absl::ResourceExhaustedError(absl::StrCat(failure.message(), "; given back its state ",
                                                             seq.preemptions, " times (max_preemptions)")),
                   v1::FINISH_REASON_ERROR),
           false);
    return false;
  }
  base::LogWarn(context, "device memory ran out ({}): back in the queue, {} tokens to compute",
                std::string(failure.message()), seq.history.size() + seq.request.prompt.size() + seq.generated.size());
  ++seq.preemptions;
  seq.pending.clear();
  seq.consumed = 0;
  seq.phase = SequencePhase::kPrefill;
  auto node = running_.extract(seq.id);
  queue_.Requeue(seq.id, seq.request.priority);
  waiting_.insert(std::move(node));
  absl::MutexLock lock(&mutex_);
  ++queued_;
  return true;
}

std::vector<PlannedRun> EngineCore::PlanNext() const {
  std::vector<PlannerSequence> planner;
  int64_t steppable = 0;  // not opening, whether in a step or not
  for (const auto& [id, seq] : running_) {
    if (seq->opening) continue;
    ++steppable;
    if (seq->stepping) continue;
    planner.push_back({id, seq->request.priority, seq->arrival, seq->phase,
                       static_cast<int64_t>(seq->pending.size() - seq->consumed), !seq->TurnEnded()});
  }
  if (planner.empty()) return {};
  PlannerLimits limits = config_.planner;
  // Overlapping steps share the sequences, so that each step has some while the others run.
  const int64_t steps = config_.pipeline_steps;
  if (steps > 1) limits.max_sequences = (steppable + steps - 1) / steps;
  return PlanStep(std::move(planner), limits);
}

void EngineCore::Loop() {
  // After admission and after each step (whose retirements would otherwise show only once new
  // work wakes an idle loop).
  const auto report_batch = [this] {
    int64_t opening = 0;
    for (const auto& [id, seq] : running_) opening += seq->opening ? 1 : 0;
    observer_->Batch(static_cast<int64_t>(running_.size()) - opening, opening,
                     static_cast<int64_t>(waiting_.size()));
    observer_->RunningCap(running_cap_);
  };
  for (;;) {
    {
      absl::MutexLock lock(&mutex_);
      if (running_.empty() && waiting_.empty()) {
        // Idle: sleep until a request arrives (no polling).
        mutex_.Await(absl::Condition(this, &EngineCore::HasWork));
      } else if (running_.empty() && saving_ >= config_.max_running) {
        // Every place is taken by a session save: wait for one to finish, still reaping the
        // queue's cancellations and deadlines now and then.
        const auto place_or_work = [this]() ABSL_SHARED_LOCKS_REQUIRED(mutex_) {
          return HasWork() || saving_ < config_.max_running;
        };
        mutex_.AwaitWithTimeout(absl::Condition(&place_or_work), kReapInterval);
      }
      if (stopping_) break;
    }
    TakeInbox();
    TakeSteps();
    TakeOpened();  // before the reaping: a restore may have outlasted its request's deadline
    ReapCancelled();
    bool cut_short = false;
    {
      absl::MutexLock lock(&mutex_);
      std::swap(cut_short, cut_short_requested_);
    }
    if (cut_short) CutShortForDrain();
    Admit();
    report_batch();
    if (running_.empty()) continue;

    std::vector<PlannedRun> plan;
    if (steps_in_flight_ < config_.pipeline_steps) plan = PlanNext();
    if (plan.empty()) {
      // Only sequences still opening or in a step (or none left to step): wait for an Open or a
      // step to come back (or new work).
      absl::MutexLock lock(&mutex_);
      const auto back_or_work = [this]() ABSL_SHARED_LOCKS_REQUIRED(mutex_) {
        return HasWork() || !opened_.empty() || !stepped_.empty();
      };
      mutex_.AwaitWithTimeout(absl::Condition(&back_or_work), kReapInterval);
      continue;
    }
    if (step_threads_ != nullptr) {
      StartStep(std::move(plan));
      continue;
    }
    Step step = BuildStep(std::move(plan));
    observer_->StepsInFlight(1);
    RunStep(step);
    observer_->StepsInFlight(0);
    ApplyStep(step);
    report_batch();
  }
  FinishSteps();
  open_threads_.Stop();  // every Open in flight comes back, so the stages' state is dropped below
  TakeOpened();
  TakeInbox();
  std::vector<uint64_t> ids;
  for (const auto& [id, seq] : running_) ids.push_back(id);
  DropOnStages(ids);
  for (const auto& [id, seq] : waiting_) ids.push_back(id);
  for (uint64_t id : ids) {
    Sequence& seq = running_.count(id) ? *running_[id] : *waiting_[id];
    Retire(id, Outcome(seq, absl::UnavailableError("the router is shutting down"),
                       v1::FINISH_REASON_ERROR),
           false);
  }
}

}  // namespace deltaserve::services
