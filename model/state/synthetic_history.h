// A synthetic history for benchmarks: a state as if `length` tokens had been processed, made
// without processing them, so a decode step at a 1M-token context can be timed without a 1M-token
// prefill. Only sizes and memory traffic are realistic; the values are not a model's.
#pragma once

#include <cstdint>

#include "model/state/sequence_state.h"

namespace deltaserve::model {

// Gives a fresh `state` a history of `length` tokens (pseudo-random ids): KDA recurrent states
// of small random values, conv tails and `length` MLA latent rows of unit-scale random values.
// The latent rows repeat a block of kSyntheticBlockRows rows per layer, which keeps filling a
// long cache cheap. Each MLA cache gets the pages for length + spare_rows rows, so that many
// later tokens are appended without allocating. Deterministic in `seed`.
// Preconditions: state.num_tokens() == 0, length >= 0, spare_rows >= 0.
void FillSyntheticHistory(SequenceState& state, int64_t length, int64_t spare_rows, uint64_t seed);

inline constexpr int64_t kSyntheticBlockRows = 1024;

}  // namespace deltaserve::model
