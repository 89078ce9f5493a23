// With pipeline_steps above 1 the router keeps that many steps in flight at once, each over its own
// sequences (none in two steps at once): every request gets exactly the tokens it gets one step at
// a time; a failed step ends only its own sequences; a request cancelled while its step is in
// flight ends once the step is back; and shutting down waits for the steps in flight. The engine
// reports its steps in flight as they change (the deltaserve_steps_in_flight gauge).
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "model/kimi_linear_model.h"
#include "services/router/engine_core.h"
#include "services/router/router_observer.h"
#include "services/worker/stage_engine.h"
#include "tests/services/router/router_requests.h"
#include "tests/testing/held_stage.h"

namespace deltaserve::services {
namespace {

const std::string kFixture = std::string(DELTASERVE_TEST_DATA_DIR) + "/kimi-tiny-public";
constexpr auto kPatience = std::chrono::seconds(30);

using testing::Collected;
using testing::Greedy;

Collected Collect(RequestStream& stream) {
  return testing::Collect(stream, std::chrono::steady_clock::now() + kPatience);
}

// In front of the stage: counts the steps in flight at once, notes any sequence in two of them,
// and holds a step (up to `partner_wait`) until `overlap` are in flight, so that steps which can
// overlap do. Fails every step carrying `poison` among its tokens.
class OverlapStage final : public StageChannel {
 public:
  explicit OverlapStage(StageChannel& next) : next_(next) {}

  absl::Status Open(const internal::v1::OpenRequest& request, internal::v1::OpenResponse* response) override {
    return next_.Open(request, response);
  }
  absl::Status Close(const internal::v1::CloseRequest& request, internal::v1::CloseResponse* response) override {
    return next_.Close(request, response);
  }
  absl::Status Step(const internal::v1::StepRequest& request, internal::v1::StepResponse* response) override {
    bool poisoned = false;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      ++in_flight_;
      max_in_flight_ = std::max(max_in_flight_, in_flight_);
      for (const internal::v1::StepSequence& seq : request.sequences()) {
        if (!active_.insert(seq.seq_id()).second) ++sequences_in_two_steps_;
        for (int32_t token : seq.token_ids()) poisoned = poisoned || token == poison;
      }
      changed_.notify_all();
      changed_.wait_for(lock, partner_wait, [&] { return in_flight_ >= overlap; });
    }
    const absl::Status status =
        poisoned ? absl::InternalError("the stage failed this step (injected)") : next_.Step(request, response);
    std::lock_guard<std::mutex> lock(mutex_);
    for (const internal::v1::StepSequence& seq : request.sequences()) active_.erase(seq.seq_id());
    --in_flight_;
    return status;
  }

  int max_in_flight() {
    std::lock_guard<std::mutex> lock(mutex_);
    return max_in_flight_;
  }
  int sequences_in_two_steps() {
    std::lock_guard<std::mutex> lock(mutex_);
    return sequences_in_two_steps_;
  }

  int32_t poison = -1;
  int overlap = 2;  // steps a step waits for (up to partner_wait) to be in flight with it
  std::chrono::milliseconds partner_wait{200};

 private:
  StageChannel& next_;
  std::mutex mutex_;
  std::condition_variable changed_;
  int in_flight_ = 0, max_in_flight_ = 0, sequences_in_two_steps_ = 0;
  std::set<uint64_t> active_;  // the sequences of the steps in flight
};

// What the engine reports of its steps in flight: the most, and the last.
class InFlightObserver final : public RouterObserver {
 public:
  void StepsInFlight(int64_t steps) override {
    std::lock_guard<std::mutex> lock(mutex_);
    most_ = std::max(most_, steps);
    last_ = steps;
  }
  int64_t most() {
    std::lock_guard<std::mutex> lock(mutex_);
    return most_;
  }
  int64_t last() {
    std::lock_guard<std::mutex> lock(mutex_);
    return last_;
  }

 private:
  std::mutex mutex_;
  int64_t most_ = 0, last_ = -1;
};

// The whole model on the CPU as one stage, behind a HeldStage behind an OverlapStage.
struct Pipeline {
  absl::Status Load() {
    auto loaded = model::KimiLinearModel::Load(kFixture, backend);
    if (!loaded.ok()) return loaded.status();
    model = *std::move(loaded);
    stage = std::make_unique<StageEngine>(*model, nullptr, nullptr, StageEngineOptions{.max_open_sequences = 16});
    held = std::make_unique<testing::HeldStage>(*stage);
    overlap = std::make_unique<OverlapStage>(*held);
    return absl::OkStatus();
  }
  RouterModel router_model() const { return {model->config(), model->fingerprint(), model->max_context()}; }

  kernels::cpu::CpuBackend backend{{.num_threads = 1}};
  std::unique_ptr<model::KimiLinearModel> model;
  std::unique_ptr<StageEngine> stage;
  std::unique_ptr<testing::HeldStage> held;  // steps counted in flight by the OverlapStage wait here
  std::unique_ptr<OverlapStage> overlap;
};

RouterConfig Steps(int64_t pipeline_steps) {
  RouterConfig config;
  config.max_running = 8;
  config.planner.max_step_tokens = 64;
  config.pipeline_steps = pipeline_steps;
  return config;
}

const std::vector<std::vector<int32_t>> kPrompts = {{3, 4, 5}, {7, 8}, {9}, {11, 12, 13, 14}, {20, 1}, {42}};

// Each prompt's tokens (and the stage's most steps in flight at once) with `pipeline_steps`.
std::map<size_t, std::vector<int32_t>> RunAll(int64_t pipeline_steps, int* max_in_flight, int* in_two_steps,
                                              InFlightObserver* observer) {
  Pipeline pipeline;
  const absl::Status loaded = pipeline.Load();
  EXPECT_TRUE(loaded.ok()) << loaded;
  if (!loaded.ok()) return {};
  pipeline.overlap->overlap = static_cast<int>(pipeline_steps);
  EngineCore engine(Steps(pipeline_steps), pipeline.router_model(), *pipeline.overlap, nullptr, observer);
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (size_t i = 0; i < kPrompts.size(); ++i) {
    auto stream = engine.Submit(Greedy(kPrompts[i], 6 + static_cast<int32_t>(i % 3)));
    EXPECT_TRUE(stream.ok()) << stream.status();
    if (!stream.ok()) return {};
    streams.push_back(*stream);
  }
  std::map<size_t, std::vector<int32_t>> tokens;
  for (size_t i = 0; i < streams.size(); ++i) {
    const Collected done = Collect(*streams[i]);
    EXPECT_TRUE(done.finished && done.outcome.status.ok()) << i << ": " << done.outcome.status;
    tokens[i] = done.tokens;
  }
  engine.Shutdown();
  *max_in_flight = pipeline.overlap->max_in_flight();
  *in_two_steps = pipeline.overlap->sequences_in_two_steps();
  return tokens;
}

TEST(PipelineStepsTest, StepsOverlapOverTheirOwnSequencesAndGiveTheTokensOfOneStepAtATime) {
  int max_in_flight = 0, in_two_steps = 0;
  InFlightObserver one;
  const std::map<size_t, std::vector<int32_t>> one_at_a_time = RunAll(1, &max_in_flight, &in_two_steps, &one);
  EXPECT_EQ(max_in_flight, 1);
  EXPECT_EQ(one.most(), 1);
  EXPECT_EQ(one.last(), 0);
  ASSERT_EQ(one_at_a_time.size(), kPrompts.size());
  for (const int64_t steps : {2, 3}) {
    InFlightObserver observer;  // the steps_in_flight gauge
    EXPECT_EQ(RunAll(steps, &max_in_flight, &in_two_steps, &observer), one_at_a_time) << steps << " steps in flight";
    EXPECT_EQ(max_in_flight, steps);
    EXPECT_EQ(in_two_steps, 0) << "a sequence was in two steps at once";
    EXPECT_EQ(observer.most(), steps);
    EXPECT_EQ(observer.last(), 0);
  }
}

TEST(PipelineStepsTest, AFailedStepEndsOnlyItsOwnSequences) {
  Pipeline pipeline;
  const absl::Status loaded = pipeline.Load();
  ASSERT_TRUE(loaded.ok()) << loaded;
  pipeline.overlap->poison = 99;
  EngineCore engine(Steps(2), pipeline.router_model(), *pipeline.overlap, nullptr, nullptr);
  auto failing = engine.Submit(Greedy({99, 5}, 4));
  auto healthy = engine.Submit(Greedy({7, 8}, 4));
  ASSERT_TRUE(failing.ok() && healthy.ok());
  const Collected failed = Collect(**failing);
  const Collected done = Collect(**healthy);
  ASSERT_TRUE(failed.finished && done.finished);
  EXPECT_EQ(failed.outcome.status.code(), absl::StatusCode::kUnavailable) << failed.outcome.status;
  EXPECT_TRUE(done.outcome.status.ok()) << done.outcome.status;
  EXPECT_EQ(done.tokens.size(), 4u);
  EXPECT_EQ(pipeline.stage->open_sequences(), 0);
}

TEST(PipelineStepsTest, ARequestCancelledInAStepEndsOnceTheStepIsBackAndShutdownWaitsForSteps) {
  Pipeline pipeline;
  const absl::Status loaded = pipeline.Load();
  ASSERT_TRUE(loaded.ok()) << loaded;
  pipeline.overlap->partner_wait = std::chrono::milliseconds(0);
  pipeline.held->Hold(true);
  auto engine = std::make_unique<EngineCore>(Steps(2), pipeline.router_model(), *pipeline.overlap, nullptr, nullptr);
  auto cancelled = engine->Submit(Greedy({3, 4}, 50));
  auto other = engine->Submit(Greedy({5, 6}, 50));
  ASSERT_TRUE(cancelled.ok() && other.ok());
  ASSERT_TRUE(pipeline.held->WaitForHeld(1, kPatience));
  (*cancelled)->Cancel();
  // A few turns of the loop: the request stays, its step still held.
  const RequestStream::Update early =
      (*cancelled)->Wait(std::chrono::steady_clock::now() + std::chrono::milliseconds(100));
  EXPECT_FALSE(early.finished) << "a request ended while its step was in flight";
  pipeline.held->Hold(false);
  const Collected gone = Collect(**cancelled);
  ASSERT_TRUE(gone.finished);
  EXPECT_EQ(gone.outcome.status.code(), absl::StatusCode::kCancelled) << gone.outcome.status;

  // Shutting down while a step is held: the engine waits for it, then ends the request.
  pipeline.held->Hold(true);
  ASSERT_TRUE(pipeline.held->WaitForHeld(1, kPatience));
  std::thread release([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    pipeline.held->Hold(false);
  });
  const auto shutdown = std::chrono::steady_clock::now();
  engine->Shutdown();
  EXPECT_GE(std::chrono::steady_clock::now() - shutdown, std::chrono::milliseconds(150)) << "shutdown left a step";
  release.join();
  const Collected ended = Collect(**other);
  ASSERT_TRUE(ended.finished);
  EXPECT_EQ(ended.outcome.status.code(), absl::StatusCode::kUnavailable) << ended.outcome.status;
  engine.reset();
  EXPECT_EQ(pipeline.stage->open_sequences(), 0);
}

}  // namespace
}  // namespace deltaserve::services
