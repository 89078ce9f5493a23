// Per-sequence token sampler on host fp32 logits: penalties, then greedy or
// temperature / top-k / top-p / min-p and one seeded draw (vLLM's order).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/ops.h"
#include "model/sampling/rng.h"
#include "model/sampling/sampling_params.h"

namespace deltaserve::model {

// The token the device took for a sequence (Backend::ArgmaxRows for plain greedy, SampleRows for
// a DeviceDraw): the id, or Internal where it found logits Sample rejects (-1).
absl::StatusOr<int32_t> TokenFromDevice(int32_t token);

// One per sequence: holds the random stream and the token counts the penalties need.
// Not thread-safe; owned by whoever owns the sequence.
class SequenceSampler {
 public:
  // Precondition: `params.Validate(vocab_size)` returned OK. `prompt` seeds the
  // repetition-penalty set. `fallback_seed` is used when params.seed is unset.
  SequenceSampler(const SamplingParams& params, std::span<const int32_t> prompt,
                  uint64_t fallback_seed);

  // Picks the next token; `logits` (vocab-sized) is scratch and gets modified.
  // -inf entries are allowed (masked tokens). Errors, leaving the random stream untouched:
  //   InvalidArgument: empty logits, or a prompt/generated token id outside [0, logits.size()),
  //                    or penalties that push every logit to -inf (or one to +inf).
  //   Internal:        a NaN or +inf logit, or every logit -inf (the model's output is broken).
  // The draw inverts the CDF in ascending token id order over the surviving tokens; greedy
  // (temperature 0) takes the argmax, lowest id on ties, and consumes no random number.
  absl::StatusOr<int32_t> Sample(std::span<float> logits);

  // The draw for the device to make from this sequence's next logits (Backend::SampleRows) after
  // Penalties, taking the random number Sample would take; nullopt (nothing taken) for greedy,
  // which the device's argmax takes.
  std::optional<kernels::RowSampling> DeviceDraw();
  // The penalties Sample applies to the next logits, one entry per penalised token (empty
  // without penalties), for the device to apply (SequenceInput::penalties); `row` is 0.
  std::vector<kernels::LogitPenalty> Penalties() const;

  // Records a generated token (updates counts for the penalties). The caller calls it for
  // each token it appends.
  void Accept(int32_t token);
  // A token this sequence generated before its state was dropped and computed again (a
  // preemption): counted as Accept counts it, and the random number its draw took skipped, so
  // that the tokens after it are the ones an uninterrupted run picks.
  void Replay(int32_t token);

  // True when `token` ends the sequence: one of params.stop_token_ids, or (unless ignore_eos)
  // one of the model's `eos_ids`.
  bool IsStopToken(int32_t token, std::span<const int64_t> eos_ids) const;

  // The first stage of Sample on its own: repetition penalty over prompt + generated tokens
  // (positive logits divided by it, negative multiplied), then logit -= frequency * count +
  // presence * (count > 0) over generated tokens. Exposed for tests and for callers that
  // report penalised logprobs. Fails with InvalidArgument on a token id outside the logits.
  absl::Status ApplyPenalties(std::span<float> logits) const;

  const SamplingParams& params() const { return params_; }
  uint64_t seed() const { return seed_; }

 private:
  // The sampling parameters with the next random number.
  kernels::RowSampling Draw();

  SamplingParams params_;
  uint64_t seed_;
  Rng rng_;
  // Distinct prompt + generated ids; filled only when repetition_penalty != 1.
  std::unordered_set<int32_t> seen_tokens_;
  // Generated-token counts; filled only when a frequency or presence penalty is set.
  std::unordered_map<int32_t, int32_t> generated_counts_;
  // Reused across calls so a draw does not allocate.
  std::vector<float> scratch_;
};

}  // namespace deltaserve::model
