// The router's limits: continuous-batching budgets and the bounds on what one request may ask.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "services/router/step_planner.h"

namespace deltaserve::services {

struct RouterConfig {
  static constexpr int64_t kMaxSessionTransferThreads = 256;  // session_transfer_threads at most
  static constexpr int64_t kMaxPipelineSteps = 64;            // pipeline_steps at most

  PlannerLimits planner;               // token budget per step, prefill chunk
  int64_t max_running = 64;            // sequences in the running batch
  int64_t max_waiting = 256;           // queued requests; beyond it Generate fails at once
  int64_t max_prompt_tokens = 65536;   // tokens one request may send
  int32_t max_new_tokens_limit = 8192; // the largest max_new_tokens accepted
  int32_t default_max_new_tokens = 16;
  // Session turns saved at once, and continued sessions' turns opened at once (each: a save holds
  // its stage snapshots in memory while they upload, an open fetches them).
  int64_t session_transfer_threads = 4;
  // Steps in flight down the pipeline at once, each over its own share of the running sequences
  // (a sequence is in at most one): with N stages, N keeps every stage busy. 1: one step at a time.
  int64_t pipeline_steps = 1;
  // Times one request may be taken out of the running batch because device memory ran out (its
  // state dropped and computed again later); once more ends it with RESOURCE_EXHAUSTED.
  int64_t max_preemptions = 8;

  // Names the offending field. max_step_tokens must cover one decode token per running sequence.
  absl::Status Validate() const;
};

}  // namespace deltaserve::services
