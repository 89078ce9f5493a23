// Per-request sampling and stopping parameters, validated before anything runs.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/status.h"

namespace deltaserve::model {

// Upper bound on max_new_tokens; a request asking for more is rejected rather than clamped.
inline constexpr int32_t kMaxNewTokensLimit = 1 << 20;
// The smallest repetition_penalty: a penalised positive logit is divided by it, and a smaller one
// could take a sane model's logit (|logit| < 1e32) past the largest float, which leaves nothing
// to sample. Above it a logit with no finite maximum comes from the model (an internal error),
// on the host and on the device alike.
inline constexpr float kMinRepetitionPenalty = 1e-6f;

struct SamplingParams {
  float temperature = 1.0f;         // 0 means greedy
  int32_t top_k = 0;                // 0 or -1: off
  float top_p = 1.0f;               // (0, 1]
  float min_p = 0.0f;               // [0, 1]
  std::optional<uint64_t> seed;     // unset: drawn from the engine's seed source
  float repetition_penalty = 1.0f;  // >= kMinRepetitionPenalty; 1 is off (prompt and generated tokens)
  float frequency_penalty = 0.0f;   // [-2, 2] (generated tokens)
  float presence_penalty = 0.0f;    // [-2, 2] (generated tokens)
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;          // when false, the model's eos ids also stop
  int32_t max_new_tokens = 16;      // in [1, kMaxNewTokensLimit]

  // Checks every field against its range; `vocab_size` bounds the stop ids. The message names
  // the field and its value.
  absl::Status Validate(int64_t vocab_size) const;
  bool greedy() const { return temperature == 0.0f; }
  // Any repetition, frequency or presence penalty: the logits change before the draw.
  bool has_penalties() const {
    return repetition_penalty != 1.0f || frequency_penalty != 0.0f || presence_penalty != 0.0f;
  }
};

}  // namespace deltaserve::model
