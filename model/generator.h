// Generation for one sequence: chunked prefill of the prompt, then decode steps with the
// sampler until a stop token or the token limit.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "model/kimi_linear_model.h"
#include "model/sampling/sampler.h"
#include "model/sampling/sampling_params.h"
#include "model/state/sequence_state.h"

namespace deltaserve::model {

enum class FinishReason : uint8_t { kStop, kLength };

const char* FinishReasonName(FinishReason reason);

struct GenerateOptions {
  int64_t prefill_chunk_tokens = 512;  // prompt tokens per forward step
  uint64_t fallback_seed = 0;          // when the request sets no seed
};

struct GenerationResult {
  std::vector<int32_t> tokens;  // generated ids; a stop token that ended generation is included
  FinishReason finish_reason = FinishReason::kLength;
};

// Asks `input`, a step whose last position is sampled, for that token from the device: the argmax
// for greedy requests, a draw otherwise (SequenceSampler::DeviceDraw, which takes the random
// number), either after the sampler's penalties, also applied there. Whether the step will
// return the token (otherwise the caller samples the downloaded logits).
bool RequestDeviceToken(SequenceSampler& sampler, SequenceInput& input);

// Appends `prompt` to `state` (fresh or carrying history) and generates. The last generated token
// is not fed back, so `state` ends covering the history, the prompt and all but that token.
absl::StatusOr<GenerationResult> Generate(KimiLinearModel& model, SequenceState& state,
                                          std::span<const int32_t> prompt,
                                          const SamplingParams& params,
                                          const GenerateOptions& options = {});

}  // namespace deltaserve::model
