// The router's Prometheus metrics (names prefixed deltaserve_): requests by outcome, queue time,
// time to first token, inter-token latency, end-to-end latency, batch composition, tokens per
// step (prefill and decode), session restores against recomputes, preemptions when device memory
// ran out and the running batch's limit since.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "prometheus/registry.h"
#include "services/router/router_observer.h"

namespace deltaserve::services {

class RouterMetrics final : public RouterObserver {
 public:
  static absl::StatusOr<std::unique_ptr<RouterMetrics>> Create(prometheus::Registry& registry);
  ~RouterMetrics() override;

  void RequestFinished(std::string_view outcome, double seconds) override;
  void Queued(double seconds) override;
  void FirstToken(double seconds) override;
  void InterToken(double seconds) override;
  void Step(int64_t prefill_tokens, int64_t decode_tokens, double seconds) override;
  void Batch(int64_t running, int64_t opening, int64_t waiting) override;
  void StepsInFlight(int64_t steps) override;
  void SessionResumed(bool restored, int64_t history_tokens, double seconds) override;
  void SessionSaved(int64_t bytes, double seconds) override;
  void Preempted(std::string_view cause, int64_t sequences) override;
  void RunningCap(int64_t cap) override;

 private:
  struct Families;
  explicit RouterMetrics(std::unique_ptr<Families> families);
  std::unique_ptr<Families> f_;
};

}  // namespace deltaserve::services
