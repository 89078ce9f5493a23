// Memory as a limit a server lives with, on the CPU backend's memory limit (the CUDA form of these
// cases runs in cuda_model_test.cc): a step past the limit fails with RESOURCE_EXHAUSTED and the
// model keeps working; a step whose latent pages do not fit fails before it changes any state.
// Either way the next steps give exactly the logits an uncapped backend gives.
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "model/device_failure.h"
#include "model/kimi_linear_model.h"
#include "model/state/synthetic_history.h"

namespace deltaserve::model {
namespace {

const std::string kFixture = std::string(DELTASERVE_TEST_DATA_DIR) + "/kimi-tiny-public";

// The fixture's model on a capped backend and, as the reference, on one without a cap.
struct CappedAndUncapped {
  explicit CappedAndUncapped(int64_t limit_bytes)
      : capped({.num_threads = 2, .memory_limit_bytes = limit_bytes}), uncapped({.num_threads = 2}) {}
  void Load() {
    auto loaded = KimiLinearModel::Load(kFixture, capped);
    auto loaded_reference = KimiLinearModel::Load(kFixture, uncapped);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    ASSERT_TRUE(loaded_reference.ok()) << loaded_reference.status();
    model = *std::move(loaded);
    reference = *std::move(loaded_reference);
  }
  kernels::cpu::CpuBackend capped, uncapped;
  std::unique_ptr<KimiLinearModel> model, reference;
};

std::vector<int32_t> Prompt(size_t length) {
  std::vector<int32_t> tokens(length);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>(3 + i % 500);
  return tokens;
}

TEST(ModelMemoryLimit, AStepPastTheLimitFailsAndTheNextOneWorks) {
  CappedAndUncapped both(int64_t{4} << 20);
  ASSERT_NO_FATAL_FAILURE(both.Load());

  // 2 MB per activation of 4,000 tokens on this model, several at once: past 4 MiB.
  const std::vector<int32_t> long_prompt = Prompt(4000);
  auto long_state = both.model->NewState();
  const SequenceInput long_input{long_prompt, long_state.get(), {3999}};
  std::vector<float> logits;
  const absl::Status failed = both.model->Forward({&long_input, 1}, logits);
  EXPECT_EQ(failed.code(), absl::StatusCode::kResourceExhausted) << failed;
  EXPECT_TRUE(DeviceMemoryRanOut(failed)) << failed;
  EXPECT_NE(failed.message().find("memory limit"), std::string_view::npos) << failed;
  long_state.reset();  // as a server drops a failed step's sequences: its pages go back

  // Latent pages past the limit: the history is not made and the failure is reported.
  auto too_long = both.model->NewState();
  FillSyntheticHistory(*too_long, 4000000, 0, 1);
  const absl::Status pages = both.model->TakeDeviceFailure("a long synthetic history");
  EXPECT_EQ(pages.code(), absl::StatusCode::kResourceExhausted) << pages;
  EXPECT_EQ(too_long->num_tokens(), 0);
  too_long.reset();

  // A prompt, then one decode step on the states it left.
  auto state = both.model->NewState();
  auto reference_state = both.reference->NewState();
  for (const std::vector<int32_t>& tokens : {std::vector<int32_t>{5, 6, 7, 8, 9, 10, 11}, std::vector<int32_t>{12}}) {
    SCOPED_TRACE(::testing::Message() << tokens.size() << " tokens");
    const int64_t last = static_cast<int64_t>(tokens.size()) - 1;
    const SequenceInput input{tokens, state.get(), {last}};
    const SequenceInput reference_input{tokens, reference_state.get(), {last}};
    std::vector<float> got, want;
    const absl::Status capped = both.model->Forward({&input, 1}, got);
    ASSERT_TRUE(capped.ok()) << capped;
    ASSERT_TRUE(both.reference->Forward({&reference_input, 1}, want).ok());
    EXPECT_EQ(got, want);
  }
}

// The router may run such a step again as it is: RESOURCE_EXHAUSTED saying the states are
// unchanged, the history as it was, and once memory is free the same step gives exactly the
// logits an uncapped backend gives.
TEST(ModelMemoryLimit, AStepWhoseLatentPagesDoNotFitChangesNoState) {
  CappedAndUncapped both(int64_t{4} << 20);
  ASSERT_NO_FATAL_FAILURE(both.Load());

  // A prompt that fills the latent caches' first pages: the next token needs a page in each.
  const std::vector<int32_t> prompt = Prompt(static_cast<size_t>(kDefaultLatentPageRows));
  auto state = both.model->NewState();
  auto reference_state = both.reference->NewState();
  const int64_t last = kDefaultLatentPageRows - 1;
  std::vector<float> got, want;
  const SequenceInput input{prompt, state.get(), {last}};
  const SequenceInput reference_input{prompt, reference_state.get(), {last}};
  ASSERT_TRUE(both.model->Forward({&input, 1}, got).ok());
  ASSERT_TRUE(both.reference->Forward({&reference_input, 1}, want).ok());

  // Another sequence's states take all they may (what the prompt's step needed is left to
  // steps), down to less than a page.
  auto other = both.model->NewState();
  std::vector<kernels::Tensor> filler;
  for (int64_t bytes = int64_t{1} << 20; bytes >= 256; bytes /= 16) {
    for (;;) {
      kernels::Tensor block = both.capped.AllocateState(1, bytes / 4, kernels::DType::kF32);
      if (block.empty()) break;
      filler.push_back(std::move(block));
    }
    EXPECT_TRUE(both.capped.TakeFailure().out_of_memory);
  }
  const std::vector<int32_t> next = {7};
  const SequenceInput step{next, state.get(), {0}};
  const SequenceInput reference_step{next, reference_state.get(), {0}};
  const absl::Status failed = both.model->Forward({&step, 1}, got);
  EXPECT_EQ(failed.code(), absl::StatusCode::kResourceExhausted) << failed;
  EXPECT_TRUE(DeviceMemoryRanOut(failed)) << failed;
  EXPECT_TRUE(StatesUnchanged(failed)) << failed;
  EXPECT_EQ(state->num_tokens(), kDefaultLatentPageRows);

  filler.clear();
  ASSERT_TRUE(both.model->Forward({&step, 1}, got).ok());
  ASSERT_TRUE(both.reference->Forward({&reference_step, 1}, want).ok());
  EXPECT_EQ(got, want);
}

}  // namespace
}  // namespace deltaserve::model
