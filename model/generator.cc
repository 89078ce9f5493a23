#include "model/generator.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "model/sampling/sampler.h"

namespace deltaserve::model {

const char* FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
  }
  return "?";
}

bool RequestDeviceToken(SequenceSampler& sampler, SequenceInput& input) {
  input.argmax = sampler.params().greedy();
  if (!input.argmax) input.draw = sampler.DeviceDraw();
  const bool from_device = input.argmax || input.draw.has_value();
  if (from_device) input.penalties = sampler.Penalties();
  return from_device;
}

absl::StatusOr<GenerationResult> Generate(KimiLinearModel& model, SequenceState& state,
                                          std::span<const int32_t> prompt,
                                          const SamplingParams& params,
                                          const GenerateOptions& options) {
  const KimiLinearConfig& config = model.config();
  DS_RETURN_IF_ERROR(params.Validate(config.vocab_size));
  if (prompt.empty()) return absl::InvalidArgumentError("the prompt has no tokens");
  if (options.prefill_chunk_tokens < 1) {
    return absl::InvalidArgumentError("prefill_chunk_tokens must be at least 1");
  }
  std::vector<int32_t> context = state.tokens();
  context.insert(context.end(), prompt.begin(), prompt.end());
  SequenceSampler sampler(params, context, options.fallback_seed);
  std::vector<float> logits;
  std::vector<int32_t> device_ids;
  bool from_device = false;
  for (size_t begin = 0; begin < prompt.size(); begin += options.prefill_chunk_tokens) {
    const size_t length = std::min<size_t>(options.prefill_chunk_tokens, prompt.size() - begin);
    SequenceInput input{prompt.subspan(begin, length), &state, {}};
    if (begin + length == prompt.size()) {
      input.logit_positions = {static_cast<int64_t>(length) - 1};
      from_device = RequestDeviceToken(sampler, input);
    }
    DS_RETURN_IF_ERROR(model.Forward({&input, 1}, logits, &device_ids));
  }

  GenerationResult result;
  // A sequence may grow to max_context tokens; the last sampled token need not be fed back.
  const int64_t room = model.max_context() - state.num_tokens() + 1;
  const int64_t limit = std::min<int64_t>(params.max_new_tokens, room);
  while (true) {
    DS_ASSIGN_OR_RETURN(const int32_t token,
                        from_device ? TokenFromDevice(device_ids.front()) : sampler.Sample(logits));
    sampler.Accept(token);
    result.tokens.push_back(token);
    if (sampler.IsStopToken(token, config.eos_token_ids)) {
      result.finish_reason = FinishReason::kStop;
      break;
    }
    if (static_cast<int64_t>(result.tokens.size()) >= limit) {
      result.finish_reason = FinishReason::kLength;
      break;
    }
    SequenceInput input{std::span<const int32_t>(&result.tokens.back(), 1), &state, {0}};
    from_device = RequestDeviceToken(sampler, input);
    DS_RETURN_IF_ERROR(model.Forward({&input, 1}, logits, &device_ids));
  }
  return result;
}

}  // namespace deltaserve::model
