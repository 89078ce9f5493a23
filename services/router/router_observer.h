// What the router's engine reports as it works; the Prometheus implementation (router_metrics.h)
// turns it into metrics. The default does nothing.
#pragma once

#include <cstdint>
#include <string_view>

namespace deltaserve::services {

class RouterObserver {
 public:
  virtual ~RouterObserver() = default;
  // outcome: "stop", "length", "cancelled", "deadline", "error", "rejected", "draining".
  virtual void RequestFinished(std::string_view /*outcome*/, double /*seconds*/) {}
  virtual void Queued(double /*seconds*/) {}
  virtual void FirstToken(double /*seconds*/) {}
  virtual void InterToken(double /*seconds*/) {}
  virtual void Step(int64_t /*prefill_tokens*/, int64_t /*decode_tokens*/, double /*seconds*/) {}
  // After admission and after each step: sequences in the step batch (running), admitted but
  // still opening their session in the background (manifest, snapshots; they hold a place in the
  // batch), and queued (waiting).
  virtual void Batch(int64_t /*running*/, int64_t /*opening*/, int64_t /*waiting*/) {}
  // Steps down the pipeline in flight (at most RouterConfig::pipeline_steps), as it changes.
  virtual void StepsInFlight(int64_t /*steps*/) {}
  // A session turn began: its history was restored from the store (hit) or recomputed.
  virtual void SessionResumed(bool /*restored*/, int64_t /*history_tokens*/, double /*seconds*/) {}
  virtual void SessionSaved(int64_t /*bytes*/, double /*seconds*/) {}
  // Device memory ran out and `sequences` went back to the queue, their state to be computed
  // again. cause: "before_step" (a step's, before it changed any state: its others ran on),
  // "mid_step" (a step's, after it advanced states: each of its sequences went back), "open"
  // (their Open's).
  virtual void Preempted(std::string_view /*cause*/, int64_t /*sequences*/) {}
  // With Batch: the running batch's size limit (max_running, lower since device memory ran out).
  virtual void RunningCap(int64_t /*cap*/) {}
};

}  // namespace deltaserve::services
