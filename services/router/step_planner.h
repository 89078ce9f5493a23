// Iteration-level batching: which running sequences run in the next step and with how many
// tokens. Every decode gets its one token; sequences finishing a turn absorb their last token;
// prefills share what is left of the step's token budget in chunks, in priority and arrival
// order. Pure policy over plain data, so it is tested without a model.
#pragma once

#include <cstdint>
#include <vector>

namespace deltaserve::services {

enum class SequencePhase : uint8_t {
  kPrefill,  // prompt (and any recomputed history) tokens left to run
  kDecode,   // runs its last sampled token and samples the next
  kAbsorb,   // runs its last sampled token without sampling, before a snapshot
};

struct PlannerSequence {
  uint64_t id = 0;
  int32_t priority = 0;
  uint64_t arrival = 0;          // admission order
  SequencePhase phase = SequencePhase::kPrefill;
  int64_t remaining_prefill = 0;  // for kPrefill
  // For kPrefill: whether its last prefill run samples a token (not for a finished turn whose
  // state is being computed again before its snapshot).
  bool samples_after_prefill = true;
};

struct PlannedRun {
  uint64_t id = 0;
  int64_t num_tokens = 0;
  bool sample = false;  // a token is sampled after this run
};

struct PlannerLimits {
  int64_t max_step_tokens = 2048;     // token budget of one step
  int64_t max_prefill_chunk = 512;    // largest prefill piece of one sequence per step
  int64_t max_sequences = 0;          // sequences in one step (0: no limit)
};

// Decodes and absorbs first (one token each), then prefill chunks until the budget (or the
// sequence limit) is spent, each kind in priority and arrival order. A prefill run samples when
// it consumes the sequence's last remaining prompt token (and samples_after_prefill).
std::vector<PlannedRun> PlanStep(std::vector<PlannerSequence> running, const PlannerLimits& limits);

}  // namespace deltaserve::services
