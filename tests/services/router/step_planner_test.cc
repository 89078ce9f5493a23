#include "services/router/step_planner.h"

#include "gtest/gtest.h"
#include "services/router/request_queue.h"
#include "services/router/router_config.h"

namespace deltaserve::services {
namespace {

TEST(PlanStep, DecodesFirstThenPrefillChunksWithinTheBudget) {
  const std::vector<PlannerSequence> running = {
      {.id = 1, .priority = 0, .arrival = 0, .phase = SequencePhase::kPrefill, .remaining_prefill = 700},
      {.id = 2, .priority = 0, .arrival = 1, .phase = SequencePhase::kDecode},
      {.id = 3, .priority = 0, .arrival = 2, .phase = SequencePhase::kAbsorb},
      {.id = 4, .priority = 0, .arrival = 3, .phase = SequencePhase::kPrefill, .remaining_prefill = 100},
  };
  const std::vector<PlannedRun> plan = PlanStep(running, {.max_step_tokens = 600, .max_prefill_chunk = 512});
  ASSERT_EQ(plan.size(), 4u);
  EXPECT_EQ(plan[0].id, 2u);
  EXPECT_TRUE(plan[0].sample);   // a decode samples
  EXPECT_EQ(plan[1].id, 3u);
  EXPECT_FALSE(plan[1].sample);  // an absorb does not
  // 598 tokens left: sequence 1 gets a 512 chunk (not its last), sequence 4 the remaining 86.
  EXPECT_EQ(plan[2].id, 1u);
  EXPECT_EQ(plan[2].num_tokens, 512);
  EXPECT_FALSE(plan[2].sample);
  EXPECT_EQ(plan[3].id, 4u);
  EXPECT_EQ(plan[3].num_tokens, 86);
  EXPECT_FALSE(plan[3].sample);
}

TEST(PlanStep, LastChunkSamplesAndPriorityOrdersPrefills) {
  const std::vector<PlannerSequence> running = {
      {.id = 1, .priority = 5, .arrival = 0, .phase = SequencePhase::kPrefill, .remaining_prefill = 10},
      {.id = 2, .priority = 0, .arrival = 1, .phase = SequencePhase::kPrefill, .remaining_prefill = 10},
  };
  const std::vector<PlannedRun> plan = PlanStep(running, {.max_step_tokens = 15, .max_prefill_chunk = 512});
  ASSERT_EQ(plan.size(), 2u);
  EXPECT_EQ(plan[0].id, 2u);  // lower priority value first, though it arrived later
  EXPECT_EQ(plan[0].num_tokens, 10);
  EXPECT_TRUE(plan[0].sample);
  EXPECT_EQ(plan[1].id, 1u);
  EXPECT_EQ(plan[1].num_tokens, 5);
  EXPECT_FALSE(plan[1].sample);
}

TEST(PlanStep, ASequenceLimitTakesDecodesFirstThenPrefills) {
  const std::vector<PlannerSequence> running = {
      {.id = 1, .priority = 0, .arrival = 0, .phase = SequencePhase::kPrefill, .remaining_prefill = 10},
      {.id = 2, .priority = 0, .arrival = 1, .phase = SequencePhase::kDecode},
      {.id = 3, .priority = 0, .arrival = 2, .phase = SequencePhase::kPrefill, .remaining_prefill = 10},
      {.id = 4, .priority = 0, .arrival = 3, .phase = SequencePhase::kDecode},
  };
  std::vector<PlannedRun> plan =
      PlanStep(running, {.max_step_tokens = 100, .max_prefill_chunk = 512, .max_sequences = 3});
  ASSERT_EQ(plan.size(), 3u);
  EXPECT_EQ(plan[0].id, 2u);
  EXPECT_EQ(plan[1].id, 4u);
  EXPECT_EQ(plan[2].id, 1u);
  plan = PlanStep(running, {.max_step_tokens = 100, .max_prefill_chunk = 512, .max_sequences = 1});
  ASSERT_EQ(plan.size(), 1u);
  EXPECT_EQ(plan[0].id, 2u);
}

TEST(PlanStep, AFinishedTurnComputedAgainDoesNotSample) {
  const std::vector<PlannerSequence> running = {
      {.id = 1, .priority = 0, .arrival = 0, .phase = SequencePhase::kPrefill, .remaining_prefill = 10,
       .samples_after_prefill = false},
      {.id = 2, .priority = 0, .arrival = 1, .phase = SequencePhase::kPrefill, .remaining_prefill = 10},
  };
  const std::vector<PlannedRun> plan = PlanStep(running, {.max_step_tokens = 20, .max_prefill_chunk = 512});
  ASSERT_EQ(plan.size(), 2u);
  EXPECT_EQ(plan[0].num_tokens, 10);
  EXPECT_FALSE(plan[0].sample);
  EXPECT_TRUE(plan[1].sample);
}

TEST(RequestQueue, PriorityThenArrivalAndABound) {
  RequestQueue queue(3);
  EXPECT_TRUE(queue.Push(10, 1));
  EXPECT_TRUE(queue.Push(11, 0));
  EXPECT_TRUE(queue.Push(12, 1));
  EXPECT_FALSE(queue.Push(13, 0));  // full
  EXPECT_TRUE(queue.Remove(12));
  EXPECT_FALSE(queue.Remove(99));
  EXPECT_EQ(*queue.Pop(), 11u);
  EXPECT_EQ(*queue.Pop(), 10u);
  EXPECT_FALSE(queue.Pop().has_value());
}

TEST(RequestQueue, ARequeuedRequestGoesAheadOfThoseOfItsPriorityThatNeverRan) {
  RequestQueue queue(2);
  EXPECT_TRUE(queue.Push(10, 0));
  EXPECT_TRUE(queue.Push(11, 1));
  queue.Requeue(20, 1);
  queue.Requeue(21, 1);  // past the bound: a requeued request is never refused
  EXPECT_EQ(queue.size(), 4);
  EXPECT_EQ(*queue.Pop(), 10u);  // a lower priority value still comes first
  EXPECT_EQ(*queue.Pop(), 20u);
  EXPECT_EQ(*queue.Pop(), 21u);
  EXPECT_EQ(*queue.Pop(), 11u);
}

TEST(RouterConfig, ValidatesBudgets) {
  RouterConfig config;
  EXPECT_TRUE(config.Validate().ok());
  config.max_running = 4096;
  config.planner.max_step_tokens = 2048;
  EXPECT_NE(config.Validate().message().find("max_step_tokens"), std::string::npos);
  config = RouterConfig();
  config.max_waiting = 0;
  EXPECT_NE(config.Validate().message().find("max_waiting"), std::string::npos);
  for (const int64_t threads : {int64_t{0}, RouterConfig::kMaxSessionTransferThreads + 1}) {
    config = RouterConfig();
    config.session_transfer_threads = threads;
    EXPECT_NE(config.Validate().message().find("session_transfer_threads"), std::string::npos) << threads;
  }
  config = RouterConfig();
  config.max_preemptions = -1;
  EXPECT_NE(config.Validate().message().find("max_preemptions"), std::string::npos);
  for (const int64_t steps : {int64_t{0}, RouterConfig::kMaxPipelineSteps + 1}) {
    config = RouterConfig();
    config.pipeline_steps = steps;
    EXPECT_NE(config.Validate().message().find("pipeline_steps"), std::string::npos) << steps;
  }
}

}  // namespace
}  // namespace deltaserve::services
