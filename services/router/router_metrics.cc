#include "services/router/router_metrics.h"

#include <functional>
#include <map>
#include <string>

#include "base/status_macros.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "services/common/metrics.h"

namespace deltaserve::services {

struct RouterMetrics::Families {
  prometheus::Family<prometheus::Counter>* requests = nullptr;
  prometheus::Histogram* queue = nullptr;
  prometheus::Histogram* first_token = nullptr;
  prometheus::Histogram* inter_token = nullptr;
  prometheus::Histogram* end_to_end = nullptr;
  prometheus::Histogram* step_duration = nullptr;
  prometheus::Histogram* prefill_per_step = nullptr;
  prometheus::Histogram* decode_per_step = nullptr;
  prometheus::Counter* prefill_tokens = nullptr;
  prometheus::Counter* decode_tokens = nullptr;
  prometheus::Gauge* running = nullptr;
  prometheus::Gauge* opening = nullptr;
  prometheus::Gauge* waiting = nullptr;
  prometheus::Gauge* steps_in_flight = nullptr;
  prometheus::Counter* restored_sessions = nullptr;
  prometheus::Counter* recomputed_sessions = nullptr;
  prometheus::Counter* restored_tokens = nullptr;
  prometheus::Counter* recomputed_tokens = nullptr;
  prometheus::Histogram* resume = nullptr;
  prometheus::Histogram* save = nullptr;
  prometheus::Counter* saved_bytes = nullptr;
  std::map<std::string, prometheus::Counter*, std::less<>> preempted;  // by cause
  prometheus::Gauge* running_cap = nullptr;
};

absl::StatusOr<std::unique_ptr<RouterMetrics>> RouterMetrics::Create(prometheus::Registry& registry) {
  auto f = std::make_unique<Families>();
  DS_ASSIGN_OR_RETURN(f->requests, AddCounterFamily(registry, "deltaserve_requests_total",
                                                    "Generate requests by outcome"));
  auto latency = [&](const char* name, const char* help) -> absl::StatusOr<prometheus::Histogram*> {
    DS_ASSIGN_OR_RETURN(HistogramFamily family, AddLatencyHistogram(registry, name, help));
    return family.Add();
  };
  DS_ASSIGN_OR_RETURN(f->queue, latency("deltaserve_request_queue_seconds",
                                        "Time from arrival to admission into the running batch"));
  DS_ASSIGN_OR_RETURN(f->first_token, latency("deltaserve_time_to_first_token_seconds",
                                              "Time from arrival to the first generated token"));
  DS_ASSIGN_OR_RETURN(f->inter_token, latency("deltaserve_inter_token_latency_seconds",
                                              "Time between consecutive generated tokens"));
  DS_ASSIGN_OR_RETURN(f->end_to_end, latency("deltaserve_request_duration_seconds",
                                             "Time from arrival to the end of a request"));
  DS_ASSIGN_OR_RETURN(f->step_duration, latency("deltaserve_step_duration_seconds",
                                                "Time of one scheduling step through the pipeline"));
  DS_ASSIGN_OR_RETURN(f->resume, latency("deltaserve_session_resume_seconds",
                                         "Time from a continued session's admission to its state open on the "
                                         "stages, a wait for a free transfer thread included"));
  DS_ASSIGN_OR_RETURN(f->save, latency("deltaserve_session_save_seconds",
                                       "Time from the end of a turn to its session saved, a wait for a free "
                                       "transfer thread included"));
  DS_ASSIGN_OR_RETURN(HistogramFamily step_tokens,
                      AddHistogramFamily(registry, "deltaserve_step_tokens",
                                         "Tokens per scheduling step, by kind", PowerOfTwoBuckets(16)));
  DS_ASSIGN_OR_RETURN(f->prefill_per_step, step_tokens.Add({{"kind", "prefill"}}));
  DS_ASSIGN_OR_RETURN(f->decode_per_step, step_tokens.Add({{"kind", "decode"}}));
  DS_ASSIGN_OR_RETURN(auto* tokens, AddCounterFamily(registry, "deltaserve_step_tokens_total",
                                                     "Tokens run through the model, by kind"));
  DS_ASSIGN_OR_RETURN(f->prefill_tokens, AddSeries(*tokens, {{"kind", "prefill"}}));
  DS_ASSIGN_OR_RETURN(f->decode_tokens, AddSeries(*tokens, {{"kind", "decode"}}));
  DS_ASSIGN_OR_RETURN(auto* sequences,
                      AddGaugeFamily(registry, "deltaserve_sequences",
                                     "Requests by scheduling state: running (in the step batch), opening (a "
                                     "session's turn opened in the background; holds a place), waiting (queued)"));
  DS_ASSIGN_OR_RETURN(f->running, AddSeries(*sequences, {{"state", "running"}}));
  DS_ASSIGN_OR_RETURN(f->opening, AddSeries(*sequences, {{"state", "opening"}}));
  DS_ASSIGN_OR_RETURN(f->waiting, AddSeries(*sequences, {{"state", "waiting"}}));
  DS_ASSIGN_OR_RETURN(auto* in_flight,
                      AddGaugeFamily(registry, "deltaserve_steps_in_flight",
                                     "Scheduling steps down the stage pipeline at once (at most --pipeline-steps)"));
  DS_ASSIGN_OR_RETURN(f->steps_in_flight, AddSeries(*in_flight, {}));
  DS_ASSIGN_OR_RETURN(auto* resumes, AddCounterFamily(registry, "deltaserve_session_resumes_total",
                                                      "Continued sessions, by how their history came back"));
  DS_ASSIGN_OR_RETURN(f->restored_sessions, AddSeries(*resumes, {{"result", "restored"}}));
  DS_ASSIGN_OR_RETURN(f->recomputed_sessions, AddSeries(*resumes, {{"result", "recomputed"}}));
  DS_ASSIGN_OR_RETURN(auto* history, AddCounterFamily(registry, "deltaserve_session_history_tokens_total",
                                                      "Session history tokens, restored from the store or recomputed"));
  DS_ASSIGN_OR_RETURN(f->restored_tokens, AddSeries(*history, {{"result", "restored"}}));
  DS_ASSIGN_OR_RETURN(f->recomputed_tokens, AddSeries(*history, {{"result", "recomputed"}}));
  DS_ASSIGN_OR_RETURN(auto* saved, AddCounterFamily(registry, "deltaserve_session_snapshot_bytes_total",
                                                    "Bytes of stage state snapshotted at the end of turns"));
  DS_ASSIGN_OR_RETURN(f->saved_bytes, AddSeries(*saved, {}));
  DS_ASSIGN_OR_RETURN(auto* preempted,
                      AddCounterFamily(registry, "deltaserve_preemptions_total",
                                       "Sequences sent back to the queue because device memory ran out, their "
                                       "state to be computed again; cause: before_step, mid_step, open"));
  for (const char* cause : {"before_step", "mid_step", "open"}) {
    DS_ASSIGN_OR_RETURN(f->preempted[cause], AddSeries(*preempted, {{"cause", cause}}));
  }
  DS_ASSIGN_OR_RETURN(auto* cap, AddGaugeFamily(registry, "deltaserve_running_cap",
                                                "The running batch's size limit: --max-running, lower since "
                                                "device memory ran out, rising as turns end"));
  DS_ASSIGN_OR_RETURN(f->running_cap, AddSeries(*cap, {}));
  return std::unique_ptr<RouterMetrics>(new RouterMetrics(std::move(f)));
}

RouterMetrics::RouterMetrics(std::unique_ptr<Families> families) : f_(std::move(families)) {}
RouterMetrics::~RouterMetrics() = default;

void RouterMetrics::RequestFinished(std::string_view outcome, double seconds) {
  f_->requests->Add({{"outcome", std::string(outcome)}}).Increment();
  // Refusals, and turns a drain cut short, say nothing about how long requests take.
  if (outcome != "rejected" && outcome != "draining") f_->end_to_end->Observe(seconds);
}

void RouterMetrics::Queued(double seconds) { f_->queue->Observe(seconds); }
void RouterMetrics::FirstToken(double seconds) { f_->first_token->Observe(seconds); }
void RouterMetrics::InterToken(double seconds) { f_->inter_token->Observe(seconds); }

void RouterMetrics::Step(int64_t prefill_tokens, int64_t decode_tokens, double seconds) {
  f_->step_duration->Observe(seconds);
  f_->prefill_per_step->Observe(static_cast<double>(prefill_tokens));
  f_->decode_per_step->Observe(static_cast<double>(decode_tokens));
  f_->prefill_tokens->Increment(static_cast<double>(prefill_tokens));
  f_->decode_tokens->Increment(static_cast<double>(decode_tokens));
}

void RouterMetrics::Batch(int64_t running, int64_t opening, int64_t waiting) {
  f_->running->Set(static_cast<double>(running));
  f_->opening->Set(static_cast<double>(opening));
  f_->waiting->Set(static_cast<double>(waiting));
}

void RouterMetrics::StepsInFlight(int64_t steps) { f_->steps_in_flight->Set(static_cast<double>(steps)); }

void RouterMetrics::SessionResumed(bool restored, int64_t history_tokens, double seconds) {
  (restored ? f_->restored_sessions : f_->recomputed_sessions)->Increment();
  (restored ? f_->restored_tokens : f_->recomputed_tokens)->Increment(static_cast<double>(history_tokens));
  f_->resume->Observe(seconds);
}

void RouterMetrics::SessionSaved(int64_t bytes, double seconds) {
  f_->saved_bytes->Increment(static_cast<double>(bytes));
  f_->save->Observe(seconds);
}

void RouterMetrics::Preempted(std::string_view cause, int64_t sequences) {
  if (const auto it = f_->preempted.find(cause); it != f_->preempted.end()) {
    it->second->Increment(static_cast<double>(sequences));
  }
}

void RouterMetrics::RunningCap(int64_t cap) { f_->running_cap->Set(static_cast<double>(cap)); }

}  // namespace deltaserve::services
