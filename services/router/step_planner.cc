#include "services/router/step_planner.h"

#include <algorithm>

namespace deltaserve::services {

std::vector<PlannedRun> PlanStep(std::vector<PlannerSequence> running, const PlannerLimits& limits) {
  std::sort(running.begin(), running.end(), [](const PlannerSequence& a, const PlannerSequence& b) {
    return a.priority != b.priority ? a.priority < b.priority : a.arrival < b.arrival;
  });
  std::vector<PlannedRun> plan;
  int64_t budget = limits.max_step_tokens;
  const auto full = [&] {
    return budget < 1 || (limits.max_sequences > 0 && static_cast<int64_t>(plan.size()) >= limits.max_sequences);
  };
  for (const PlannerSequence& seq : running) {
    if (seq.phase == SequencePhase::kPrefill || full()) continue;
    plan.push_back({seq.id, 1, seq.phase == SequencePhase::kDecode});
    --budget;
  }
  for (const PlannerSequence& seq : running) {
    if (seq.phase != SequencePhase::kPrefill || full() || seq.remaining_prefill < 1) continue;
    const int64_t chunk = std::min({seq.remaining_prefill, budget, limits.max_prefill_chunk});
    plan.push_back({seq.id, chunk, chunk == seq.remaining_prefill && seq.samples_after_prefill});
    budget -= chunk;
  }
  return plan;
}

}  // namespace deltaserve::services
