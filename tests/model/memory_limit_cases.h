// The memory-limit cases each backend's model tests run (device_failure_test.cc on the CPU,
// cuda_model_test.cc on a GPU): `model` is the fixture's on a backend with a memory limit
// (`capped`), `reference` the same on one without. Memory is a limit a server lives with: a step
// past it fails with RESOURCE_EXHAUSTED and the model keeps working; a step whose latent pages do
// not fit fails before it changes any state. Either way later steps give exactly the logits an
// uncapped backend gives.
#pragma once

#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "model/device_failure.h"
#include "model/kimi_linear_model.h"
#include "model/state/synthetic_history.h"

namespace deltaserve::testing {

inline std::vector<int32_t> CountingPrompt(size_t length) {
  std::vector<int32_t> tokens(length);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>(3 + i % 500);
  return tokens;
}

// A prompt of `long_prompt_tokens` needs more than the limit.
inline void ExpectAStepPastTheLimitFailsAndTheNextOneWorks(model::KimiLinearModel& capped,
                                                           model::KimiLinearModel& reference,
                                                           size_t long_prompt_tokens) {
  const std::vector<int32_t> long_prompt = CountingPrompt(long_prompt_tokens);
  auto long_state = capped.NewState();
  const model::SequenceInput long_input{long_prompt, long_state.get(),
                                        {static_cast<int64_t>(long_prompt_tokens) - 1}};
  std::vector<float> logits;
  const absl::Status failed = capped.Forward({&long_input, 1}, logits);
  EXPECT_EQ(failed.code(), absl::StatusCode::kResourceExhausted) << failed;
  EXPECT_TRUE(model::DeviceMemoryRanOut(failed)) << failed;
  EXPECT_NE(failed.message().find("memory limit"), std::string_view::npos) << failed;
  long_state.reset();  // as a server drops a failed step's sequences: its pages go back

  // Latent pages past the limit: the history is not made and the failure is reported.
  auto too_long = capped.NewState();
  model::FillSyntheticHistory(*too_long, 4000000, 0, 1);
  const absl::Status pages = capped.TakeDeviceFailure("a long synthetic history");
  EXPECT_EQ(pages.code(), absl::StatusCode::kResourceExhausted) << pages;
  EXPECT_EQ(too_long->num_tokens(), 0);
  too_long.reset();

  // A prompt, then one decode step on the states it left.
  auto state = capped.NewState();
  auto reference_state = reference.NewState();
  for (const std::vector<int32_t>& tokens : {std::vector<int32_t>{5, 6, 7, 8, 9, 10, 11}, std::vector<int32_t>{12}}) {
    SCOPED_TRACE(::testing::Message() << tokens.size() << " tokens");
    const int64_t last = static_cast<int64_t>(tokens.size()) - 1;
    const model::SequenceInput input{tokens, state.get(), {last}};
    const model::SequenceInput reference_input{tokens, reference_state.get(), {last}};
    std::vector<float> got, want;
    const absl::Status status = capped.Forward({&input, 1}, got);
    ASSERT_TRUE(status.ok()) << status;
    ASSERT_TRUE(reference.Forward({&reference_input, 1}, want).ok());
    EXPECT_EQ(got, want);
  }
}

// The router may run such a step again as it is: RESOURCE_EXHAUSTED saying the states are
// unchanged, the history as it was, and once memory is free the same step gives exactly the
// logits an uncapped backend gives. `backend` is `capped`'s.
inline void ExpectAStepWhoseLatentPagesDoNotFitChangesNoState(kernels::Backend& backend,
                                                              model::KimiLinearModel& capped,
                                                              model::KimiLinearModel& reference) {
  // A prompt that fills the latent caches' first pages: the next token needs a page in each.
  const std::vector<int32_t> prompt = CountingPrompt(static_cast<size_t>(model::kDefaultLatentPageRows));
  auto state = capped.NewState();
  auto reference_state = reference.NewState();
  const int64_t last = model::kDefaultLatentPageRows - 1;
  std::vector<float> got, want;
  const model::SequenceInput input{prompt, state.get(), {last}};
  const model::SequenceInput reference_input{prompt, reference_state.get(), {last}};
  ASSERT_TRUE(capped.Forward({&input, 1}, got).ok());
  ASSERT_TRUE(reference.Forward({&reference_input, 1}, want).ok());

  // Another sequence's states take all they may (what the prompt's step needed is left to
  // steps), down to less than a page.
  auto other = capped.NewState();
  std::vector<kernels::Tensor> filler;
  for (int64_t bytes = int64_t{1} << 20; bytes >= 256; bytes /= 16) {
    for (;;) {
      kernels::Tensor block = backend.AllocateState(1, bytes / 4, kernels::DType::kF32);
      if (block.empty()) break;
      filler.push_back(std::move(block));
    }
    EXPECT_TRUE(backend.TakeFailure().out_of_memory);
  }
  const std::vector<int32_t> next = {7};
  const model::SequenceInput step{next, state.get(), {0}};
  const model::SequenceInput reference_step{next, reference_state.get(), {0}};
  const absl::Status failed = capped.Forward({&step, 1}, got);
  EXPECT_EQ(failed.code(), absl::StatusCode::kResourceExhausted) << failed;
  EXPECT_TRUE(model::DeviceMemoryRanOut(failed)) << failed;
  EXPECT_TRUE(model::StatesUnchanged(failed)) << failed;
  EXPECT_EQ(state->num_tokens(), model::kDefaultLatentPageRows);

  filler.clear();
  ASSERT_TRUE(capped.Forward({&step, 1}, got).ok());
  ASSERT_TRUE(reference.Forward({&reference_step, 1}, want).ok());
  EXPECT_EQ(got, want);
}

}  // namespace deltaserve::testing
