// Requests for the router's engine in tests, and what a request's stream delivers.
#pragma once

#include <chrono>
#include <cstdint>
#include <utility>
#include <vector>

#include "services/router/engine_core.h"

namespace deltaserve::testing {

// Greedy, generating exactly `max_new_tokens` (EOS ignored).
inline services::RouterRequest Greedy(std::vector<int32_t> prompt, int32_t max_new_tokens) {
  services::RouterRequest request;
  request.tenant = "tenant";
  request.prompt = std::move(prompt);
  request.sampling.temperature = 0.0f;
  request.sampling.max_new_tokens = max_new_tokens;
  request.sampling.ignore_eos = true;
  return request;
}

// Sampled at a temperature with `seed`, a frequency and a presence penalty on the tokens it
// generates, exactly `max_new_tokens` (EOS ignored): its tokens depend on every random number
// drawn and every token counted before them.
inline services::RouterRequest SeededSampled(std::vector<int32_t> prompt, int32_t max_new_tokens, uint64_t seed) {
  services::RouterRequest request = Greedy(std::move(prompt), max_new_tokens);
  request.sampling.temperature = 1.5f;
  request.sampling.seed = seed;
  request.sampling.frequency_penalty = 1.0f;
  request.sampling.presence_penalty = 0.5f;
  return request;
}

struct Collected {
  std::vector<int32_t> tokens;
  bool finished = false;
  services::RequestOutcome outcome;
};
// Every token the stream delivers until it finishes or `until` passes.
inline Collected Collect(services::RequestStream& stream, std::chrono::steady_clock::time_point until) {
  Collected collected;
  while (!collected.finished && std::chrono::steady_clock::now() < until) {
    services::RequestStream::Update update = stream.Wait(until);
    collected.tokens.insert(collected.tokens.end(), update.tokens.begin(), update.tokens.end());
    collected.finished = update.finished;
    if (update.finished) collected.outcome = update.outcome;
  }
  return collected;
}

}  // namespace deltaserve::testing
