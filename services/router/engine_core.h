// The router's scheduling loop. One thread owns every queued and running request: it admits
// requests, plans each step (continuous batching with chunked prefill under a token budget), runs
// it through the pipeline's first stage, streams tokens to the callers, and ends turns. With
// pipeline_steps above 1 it keeps that many steps in flight, each over its own share of the
// running sequences, on step threads; their results come back to the loop. Resuming
// a session (its Open, restoring the snapshots) and saving one at the end of a turn run on
// background threads, so snapshots in transit never hold up the steps. Handlers only Submit and
// wait.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "model/config/kimi_linear_config.h"
#include "services/router/background_tasks.h"
#include "services/router/request_queue.h"
#include "services/router/request_stream.h"
#include "services/router/router_config.h"
#include "services/router/router_observer.h"
#include "services/router/step_planner.h"
#include "services/router/validation.h"
#include "services/session_store/store_client.h"
#include "services/transport/stage_channel.h"

namespace deltaserve::services {

// The model facts the router needs (it never loads weights).
struct RouterModel {
  model::KimiLinearConfig config;
  uint64_t fingerprint = 0;
  int64_t max_context = 0;
};

// The session part the router writes: the token history (SessionManifest).
inline constexpr char kManifestPart[] = "manifest";

class EngineCore {
 public:
  // `store` may be null (then session requests fail with FAILED_PRECONDITION). Nothing is owned;
  // all must outlive the engine. The loop starts at once.
  EngineCore(const RouterConfig& config, RouterModel model, StageChannel& first_stage,
             StoreClient* store, RouterObserver* observer);
  ~EngineCore();
  EngineCore(const EngineCore&) = delete;
  EngineCore& operator=(const EngineCore&) = delete;

  // Queues a validated request. Fails at once: RESOURCE_EXHAUSTED when the queue is full,
  // ABORTED when its session already has a request in flight, the store's error when the
  // session cannot be created or is not the tenant's, UNAVAILABLE after Shutdown.
  absl::StatusOr<std::shared_ptr<RequestStream>> Submit(RouterRequest request);

  // Claims a session for an operation outside the engine (delete, fork) so no request can start
  // on it meanwhile; false when a request holds it. Release with ReleaseSession.
  bool ReserveSession(const std::string& tenant, const std::string& session_id);
  void ReleaseSession(const std::string& tenant, const std::string& session_id);

  struct DrainResult {
    int64_t in_flight = 0;  // requests queued or running when the drain began
    int64_t cut_short = 0;  // of those, ended by the timeout after saving their sessions
  };
  // Stops admitting (Submit answers UNAVAILABLE from now on) and waits up to `timeout` for the
  // requests in flight to finish; then ends the rest with UNAVAILABLE: a session turn that has
  // streamed tokens first runs its last one and saves its session (the client continues it
  // elsewhere with what it saw); a turn still reading its prompt, and a queued request, leave
  // their session untouched (the client sends the turn again). Returns once none is left.
  // Idempotent; safe from any thread.
  DrainResult Drain(std::chrono::milliseconds timeout);

  // Stops admitting, finishes every request with UNAVAILABLE, joins the loop.
  void Shutdown();

  const RouterModel& model() const { return model_; }
  const RouterConfig& config() const { return config_; }

 private:
  struct Sequence;
  using Clock = std::chrono::steady_clock;
  // An Open's sequences, those of them that must end (with their outcomes), and those a stage
  // had no device memory for (with that failure).
  struct OpenedBatch {
    std::vector<uint64_t> ids;
    std::vector<std::pair<uint64_t, RequestOutcome>> failed;
    std::vector<uint64_t> no_memory;
    absl::Status no_memory_status;
  };
  // A step's plan, request and what the stages answered.
  struct Step {
    std::vector<PlannedRun> plan;
    internal::v1::StepRequest request;
    int64_t prefill_tokens = 0;
    int64_t decode_tokens = 0;
    absl::Status status;
    internal::v1::StepResponse response;
    double seconds = 0;
  };

  void Loop();
  void TakeInbox();
  void ReapCancelled();
  // Ends every request for a drain whose time is up (see Drain).
  void CutShortForDrain();
  // Something for the loop to do besides stepping: a stop, arrivals, a drain's time out.
  bool HasWork() const ABSL_SHARED_LOCKS_REQUIRED(mutex_);
  // Takes queued requests into the running batch while it has room and opens them on the stages:
  // a continued session's turn alone on a background thread (OpenSequences), so the running ones
  // keep stepping while the stages fetch its snapshots, joining the steps at TakeOpened; the
  // others at once, together.
  void Admit();
  // Each continued session's manifest, the context limit, the stages' Open (restoring the
  // snapshots) and, where a restore failed, a fresh Open. Runs on a background thread for a
  // continued session (only it touches that sequence until TakeOpened), on the loop for the
  // others. Fills batch.failed and batch.no_memory.
  void OpenSequences(const std::vector<Sequence*>& admitted, OpenedBatch& batch);
  // Applies the Opens that came back from the background.
  void TakeOpened();
  // An Open's results: its sequences join the steps, the failed ones end, and those the stages
  // had no device memory for go back to the queue (Preempt), the running batch capped at the
  // sequences that hold state (at half of them where none does); one alone ends.
  void ApplyOpened(OpenedBatch& batch);
  // Plans the next step over the sequences neither opening nor in a step (at most their share
  // when steps overlap); empty when there is none.
  std::vector<PlannedRun> PlanNext() const;
  Step BuildStep(std::vector<PlannedRun> plan) const;
  void RunStep(Step& step);  // the call down the pipeline (any thread)
  // With pipeline_steps above 1: runs the step on a step thread; TakeSteps applies it.
  void StartStep(std::vector<PlannedRun> plan);
  void TakeSteps();
  // Applies every step in flight as it comes back (before whatever must not race them).
  void FinishSteps();
  // Streams a step's tokens and ends the turns it finished, or ends its sequences if it failed.
  void ApplyStep(Step& step);
  // A step ran out of device memory: frees some (vLLM's preemption by recomputation). Where no
  // stage changed a state, the running sequence last in line (lowest priority, admitted last)
  // gives its state back and the step's others run again as they are; otherwise each of the
  // step's sequences gives its state back. Those are queued again ahead of the requests that
  // never ran and computed again from their tokens once admitted. The running batch is capped one
  // below the sequences that held state when memory ran out; each turn that ends raises the cap
  // by one. False where the step's sequence held all the state there was: it ends with the failure.
  bool PreemptForMemory(const Step& step);
  // Sequences whose state the stages hold: running (or opening) and saving.
  int64_t HoldingState() const;
  // Drops a running sequence's state on the stages and queues it again, its tokens kept (true);
  // a sequence preempted max_preemptions times ends with `failure` instead (false).
  bool Preempt(Sequence& seq, const absl::Status& failure);
  void OnToken(Sequence& seq, int32_t token);
  void FinishTurn(Sequence& seq);
  // Tells every stage to drop these sequences' state (one call, errors only logged).
  void DropOnStages(const std::vector<uint64_t>& ids);
  // The same call, without marking the loop's sequences (any thread).
  void CloseOnStages(const std::vector<uint64_t>& ids);
  // Ends a request: drops its stage state, tells the caller, forgets it. With `snapshot` the
  // stages snapshot their state and the manifest is written first, on a background thread, so
  // the other sequences keep stepping while the snapshot moves.
  void Retire(uint64_t id, RequestOutcome outcome, bool snapshot);
  // The stages' snapshots and the manifest of a finished session turn (any thread); gives the
  // turn's place in the running batch back once the stages' Close (their uploads) returns. Its
  // time is reported from `ended` (the turn's end), a wait for a free save thread included.
  void SaveSession(const Sequence& seq, RequestOutcome& outcome, Clock::time_point ended);
  // Reports the outcome, frees the session and answers the caller (any thread).
  void Finish(Sequence& seq, RequestOutcome outcome);
  RequestOutcome Outcome(const Sequence& seq, absl::Status status,
                         v1::FinishReason reason) const;
  // The outcome of a turn a drain ended before it streamed anything (UNAVAILABLE, "draining").
  RequestOutcome Drained(const Sequence& seq) const;
  bool IsStop(const Sequence& seq, int32_t token) const;
  std::string SessionKey(const std::string& tenant, const std::string& session_id) const;

  const RouterConfig config_;
  const RouterModel model_;
  StageChannel& first_stage_;
  StoreClient* store_;
  RouterObserver default_observer_;
  RouterObserver* observer_;

  mutable absl::Mutex mutex_;
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  bool draining_ ABSL_GUARDED_BY(mutex_) = false;
  bool cut_short_requested_ ABSL_GUARDED_BY(mutex_) = false;
  int64_t live_ ABSL_GUARDED_BY(mutex_) = 0;  // submitted, not yet retired
  uint64_t next_id_ ABSL_GUARDED_BY(mutex_) = 1;
  int64_t queued_ ABSL_GUARDED_BY(mutex_) = 0;  // submitted, not yet admitted
  std::vector<std::unique_ptr<Sequence>> inbox_ ABSL_GUARDED_BY(mutex_);
  std::set<std::string> busy_sessions_ ABSL_GUARDED_BY(mutex_);
  // Session turns being saved: they take places in the running batch until the stages' Close
  // returns.
  int64_t saving_ ABSL_GUARDED_BY(mutex_) = 0;
  std::vector<OpenedBatch> opened_ ABSL_GUARDED_BY(mutex_);  // back from the background Opens
  std::vector<Step> stepped_ ABSL_GUARDED_BY(mutex_);        // back from the step threads

  // Owned by the loop thread.
  RequestQueue queue_;
  std::map<uint64_t, std::unique_ptr<Sequence>> waiting_;
  std::map<uint64_t, std::unique_ptr<Sequence>> running_;
  uint64_t admissions_ = 0;
  // A drain's time ran out: what opens from now on ends at once (a drain is never undone).
  bool cut_short_ = false;
  // The running batch's size limit since device memory ran out (PreemptForMemory); max_running
  // until then.
  int64_t running_cap_;
  int64_t steps_in_flight_ = 0;

  BackgroundTasks save_threads_;
  BackgroundTasks open_threads_;
  std::unique_ptr<BackgroundTasks> step_threads_;  // with pipeline_steps above 1
  std::thread loop_;
  std::once_flag joined_;
};

}  // namespace deltaserve::services
