// When a step runs out of device memory the router preempts instead of failing the step's
// requests: where the stages changed no state, the running sequence last in line gives its state
// back and the others run on; where the step had advanced some states, each of its sequences
// does; a sequence whose Open did not fit waits for room. Preempted requests are computed again
// from their tokens and finish with exactly the tokens an unconstrained run gives; a request that
// does not fit alone, or is preempted past max_preemptions, ends with RESOURCE_EXHAUSTED and the
// server serves on. In a pipeline a later stage's page shortage preempts as the first stage's own
// does.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/cord.h"
#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "model/kimi_linear_model.h"
#include "services/router/engine_core.h"
#include "services/transport/stage_channel.h"
#include "services/worker/stage_engine.h"
#include "tests/services/router/router_requests.h"
#include "tests/services/router/whole_model_stage.h"
#include "tests/testing/held_stage.h"

namespace deltaserve::services {
namespace {

constexpr auto kPatience = std::chrono::seconds(60);
// CPU memory limits that hold the fixture's states (and steps' buffers) of some of FourRequests
// but not all; measured: whole-model stages from 96 to 704 KiB preempt and finish all four, the
// layers from 2 from 72 to 104 KiB preempt before steps.
constexpr int64_t kWholeModelMemoryLimit = 128 << 10;
constexpr int64_t kLaterStageMemoryLimit = 88 << 10;

using testing::Collect;
using testing::Collected;
using testing::Greedy;
using testing::SeededSampled;
using testing::WholeModelStage;

// A stage's RESOURCE_EXHAUSTED for device memory, as the router reads it; with
// `states_unchanged` where the stage changed no state.
absl::Status TestOutOfMemory(bool states_unchanged = false) {
  absl::Status status = absl::ResourceExhaustedError("test device memory ran out");
  status.SetPayload(kStageDeviceMemoryPayload, absl::Cord());
  if (states_unchanged) status.SetPayload(kStepStatesUnchangedPayload, absl::Cord());
  return status;
}

// A device that holds `capacity` tokens of sequence state in all, and the states of `max_open`
// sequences, in front of the real stage. An Open past max_open fails with RESOURCE_EXHAUSTED as a
// stage's does, and so does a step past `capacity`: before the stage runs it (kUpFront: the
// stage's latent pages did not fit; its states are unchanged), or after the stage ran it
// (kMidStep: a step buffer did not fit; its states advanced).
class DeviceMemoryStage final : public StageChannel {
 public:
  enum class Failure { kUpFront, kMidStep };
  DeviceMemoryStage(StageChannel& next, int64_t capacity, Failure failure, int64_t max_open = 1000)
      : next_(next), capacity_(capacity), failure_(failure), max_open_(max_open) {}

  int64_t failed_steps() const { return failed_steps_; }

  absl::Status Open(const internal::v1::OpenRequest& request, internal::v1::OpenResponse* response) override {
    {
      absl::MutexLock lock(&mutex_);
      if (static_cast<int64_t>(held_.size()) + request.sequences_size() > max_open_) return TestOutOfMemory();
    }
    const absl::Status status = next_.Open(request, response);
    if (!status.ok()) return status;
    absl::MutexLock lock(&mutex_);
    for (const internal::v1::OpenResult& result : response->results()) {
      int64_t restored = 0;
      for (const internal::v1::OpenSequence& open : request.sequences()) {
        if (open.seq_id() == result.seq_id() && result.restored()) restored = open.restore_tokens();
      }
      held_[result.seq_id()] = restored;
    }
    return status;
  }

  absl::Status Step(const internal::v1::StepRequest& request, internal::v1::StepResponse* response) override {
    int64_t added = 0;
    {
      absl::MutexLock lock(&mutex_);
      int64_t held = 0;
      for (const auto& [id, tokens] : held_) held += tokens;
      for (const internal::v1::StepSequence& seq : request.sequences()) added += seq.token_ids_size();
      if (held + added <= capacity_) {
        for (const internal::v1::StepSequence& seq : request.sequences()) held_[seq.seq_id()] += seq.token_ids_size();
        added = 0;
      }
    }
    if (added == 0) return next_.Step(request, response);
    ++failed_steps_;
    const absl::Status failure = TestOutOfMemory(failure_ == Failure::kUpFront);
    if (failure_ == Failure::kUpFront) return failure;
    const absl::Status ran = next_.Step(request, response);  // the states advance, then it fails
    EXPECT_TRUE(ran.ok()) << ran;
    return failure;
  }

  absl::Status Close(const internal::v1::CloseRequest& request, internal::v1::CloseResponse* response) override {
    {
      absl::MutexLock lock(&mutex_);
      for (const internal::v1::CloseSequence& seq : request.sequences()) held_.erase(seq.seq_id());
    }
    return next_.Close(request, response);
  }

 private:
  StageChannel& next_;
  const int64_t capacity_;
  const Failure failure_;
  const int64_t max_open_;
  std::atomic<int64_t> failed_steps_{0};
  absl::Mutex mutex_;
  std::map<uint64_t, int64_t> held_ ABSL_GUARDED_BY(mutex_);  // tokens of state per open sequence
};

class PreemptionCounter final : public RouterObserver {
 public:
  void Preempted(std::string_view cause, int64_t sequences) override {
    absl::MutexLock lock(&mutex_);
    counts_[std::string(cause)] += sequences;
  }
  int64_t count(const std::string& cause) const {
    absl::MutexLock lock(&mutex_);
    const auto it = counts_.find(cause);
    return it == counts_.end() ? 0 : it->second;
  }

 private:
  mutable absl::Mutex mutex_;
  std::map<std::string, int64_t> counts_ ABSL_GUARDED_BY(mutex_);
};

RouterConfig FourPlaces() {
  RouterConfig config;
  config.max_running = 4;
  config.planner.max_step_tokens = 64;
  return config;
}


enum class Sampling { kGreedy, kSeeded };

// Four requests at once (the first a new turn of `session`): 69 tokens of state when done.
std::vector<RouterRequest> FourRequests(const std::string& session = "agent", Sampling sampling = Sampling::kGreedy) {
  std::vector<RouterRequest> requests = {Greedy({1, 2, 3}, 15), Greedy({4, 5, 6, 7}, 14), Greedy({8, 9}, 16),
                                         Greedy({10, 11, 12, 13, 14}, 13)};
  if (sampling == Sampling::kSeeded) {
    for (size_t i = 0; i < requests.size(); ++i) {
      requests[i] = SeededSampled(requests[i].prompt, requests[i].sampling.max_new_tokens, 1000 + i);
    }
  }
  requests[0].session_mode = v1::SESSION_MODE_CREATE;
  requests[0].session_id = session;
  return requests;
}

// Submits `requests` and collects them. With `held` (the engine's stage channel), steps wait
// until every request is submitted, so that all of them run together whatever the machine's
// load: the cases below need them to, to run out of memory.
std::vector<Collected> RunAll(EngineCore& engine, const std::vector<RouterRequest>& requests,
                              testing::HeldStage* held = nullptr) {
  if (held != nullptr) held->Hold(true);
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (const RouterRequest& request : requests) {
    auto stream = engine.Submit(request);
    EXPECT_TRUE(stream.ok()) << stream.status();
    if (stream.ok()) streams.push_back(*stream);
  }
  if (held != nullptr) held->Hold(false);
  std::vector<Collected> collected;
  const auto until = std::chrono::steady_clock::now() + kPatience;
  for (const auto& stream : streams) collected.push_back(Collect(*stream, until));
  return collected;
}

// The session's next turn, continued from what the first turn saved.
Collected NextTurn(EngineCore& engine, const std::string& session) {
  RouterRequest request = Greedy({20, 21}, 4);
  request.session_mode = v1::SESSION_MODE_CONTINUE;
  request.session_id = session;
  auto stream = engine.Submit(request);
  EXPECT_TRUE(stream.ok()) << stream.status();
  return stream.ok() ? Collect(**stream, std::chrono::steady_clock::now() + kPatience) : Collected{};
}

// FourRequests and the session's next turn straight on `stage` (and `store`), as `session`.
void RunUnconstrained(RouterModel model, StageChannel& stage, StoreClient* store, const std::string& session,
                      std::vector<Collected>& four, Collected& next, Sampling sampling = Sampling::kGreedy) {
  EngineCore engine(FourPlaces(), std::move(model), stage, store, nullptr);
  four = RunAll(engine, FourRequests(session, sampling));
  next = NextTurn(engine, session);
  ASSERT_TRUE(next.outcome.status.ok()) << next.outcome.status;
}

// Each of `got` finished as its counterpart in `want`.
void ExpectSameTokens(const std::vector<Collected>& got, const std::vector<Collected>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    SCOPED_TRACE(::testing::Message() << "request " << i);
    ASSERT_TRUE(got[i].finished);
    EXPECT_TRUE(got[i].outcome.status.ok()) << got[i].outcome.status;
    EXPECT_EQ(got[i].tokens, want[i].tokens);
  }
}

// The session's next turn on `engine` finishes with the tokens of `want`; its outcome.
Collected ExpectNextTurn(EngineCore& engine, const std::string& session, const Collected& want) {
  const Collected next = NextTurn(engine, session);
  EXPECT_TRUE(next.finished);
  EXPECT_TRUE(next.outcome.status.ok()) << next.outcome.status;
  EXPECT_EQ(next.tokens, want.tokens);
  return next;
}

// Where memory runs out, and how the requests pick their tokens: a seeded request preempted
// draws after its state is computed again the random numbers it would have drawn next, and its
// penalties count the tokens it generated before.
struct PreemptionCase {
  DeviceMemoryStage::Failure failure;
  Sampling sampling;
};

class PreemptionTest : public ::testing::TestWithParam<PreemptionCase> {};

TEST_P(PreemptionTest, RequestsPreemptedWhenMemoryRunsOutFinishWithTheTokensOfAnUnconstrainedRun) {
  WholeModelStage whole;
  const absl::Status loaded = whole.Load(/*max_open=*/64);
  ASSERT_TRUE(loaded.ok()) << loaded;
  whole.store.Open();
  const RouterConfig config = FourPlaces();
  std::vector<Collected> want;
  Collected want_next;
  RunUnconstrained(whole.router_model(), *whole.stage, &whole.store, "unconstrained", want, want_next,
                   GetParam().sampling);

  // Room for 56 tokens of state.
  DeviceMemoryStage device(*whole.stage, 56, GetParam().failure);
  testing::HeldStage held(device);
  PreemptionCounter preemptions;
  EngineCore engine(config, whole.router_model(), held, &whole.store, &preemptions);
  ExpectSameTokens(RunAll(engine, FourRequests("agent", GetParam().sampling), &held), want);
  EXPECT_GE(device.failed_steps(), 1);
  if (GetParam().failure == DeviceMemoryStage::Failure::kUpFront) {
    EXPECT_GE(preemptions.count("before_step"), 1);
    EXPECT_EQ(preemptions.count("mid_step"), 0);
  } else {
    EXPECT_EQ(preemptions.count("before_step"), 0);
    EXPECT_GE(preemptions.count("mid_step"), 2);  // a failed step's sequences all go back
  }
  EXPECT_EQ(preemptions.count("open"), 0);
  // The session turn saved every token it streamed, whether or not it was preempted.
  const Collected next = ExpectNextTurn(engine, "agent", want_next);
  EXPECT_EQ(next.outcome.usage.session_tokens(), 18);
}

INSTANTIATE_TEST_SUITE_P(Failures, PreemptionTest,
                         ::testing::Values(PreemptionCase{DeviceMemoryStage::Failure::kUpFront, Sampling::kGreedy},
                                           PreemptionCase{DeviceMemoryStage::Failure::kMidStep, Sampling::kGreedy},
                                           PreemptionCase{DeviceMemoryStage::Failure::kUpFront, Sampling::kSeeded},
                                           PreemptionCase{DeviceMemoryStage::Failure::kMidStep, Sampling::kSeeded}),
                         [](const ::testing::TestParamInfo<PreemptionCase>& param) {
                           return std::string(param.param.failure == DeviceMemoryStage::Failure::kUpFront ? "UpFront"
                                                                                                         : "MidStep") +
                                  (param.param.sampling == Sampling::kGreedy ? "Greedy" : "Seeded");
                         });

TEST(Preemption, RequestsWhoseOpenRanOutOfDeviceMemoryWaitForRoomAndFinish) {
  WholeModelStage whole;
  const absl::Status loaded = whole.Load(/*max_open=*/64);
  ASSERT_TRUE(loaded.ok()) << loaded;
  whole.store.Open();
  std::vector<Collected> want;
  Collected want_next;
  RunUnconstrained(whole.router_model(), *whole.stage, &whole.store, "unconstrained", want, want_next);

  DeviceMemoryStage device(*whole.stage, 1000, DeviceMemoryStage::Failure::kUpFront, /*max_open=*/2);
  testing::HeldStage held(device);
  PreemptionCounter preemptions;
  EngineCore engine(FourPlaces(), whole.router_model(), held, &whole.store, &preemptions);
  ExpectSameTokens(RunAll(engine, FourRequests(), &held), want);
  EXPECT_GE(preemptions.count("open"), 2);
  EXPECT_EQ(preemptions.count("before_step") + preemptions.count("mid_step"), 0);
  ExpectNextTurn(engine, "agent", want_next);
}

TEST(Preemption, ARequestThatDoesNotFitAloneEndsWithResourceExhaustedAndTheServerServesOn) {
  WholeModelStage whole;
  const absl::Status loaded = whole.Load(/*max_open=*/64);
  ASSERT_TRUE(loaded.ok()) << loaded;
  whole.store.Open();
  DeviceMemoryStage device(*whole.stage, 12, DeviceMemoryStage::Failure::kUpFront);
  EngineCore engine(FourPlaces(), whole.router_model(), device, &whole.store, nullptr);
  const std::vector<Collected> too_long = RunAll(engine, {Greedy({1, 2, 3}, 20)});
  ASSERT_EQ(too_long.size(), 1u);
  ASSERT_TRUE(too_long[0].finished);
  EXPECT_EQ(too_long[0].outcome.status.code(), absl::StatusCode::kResourceExhausted) << too_long[0].outcome.status;
  // The prompt and 9 decode steps fill the device (10 tokens streamed); the 10th decode step fails.
  EXPECT_EQ(too_long[0].tokens.size(), 10u);

  const std::vector<Collected> fits = RunAll(engine, {Greedy({1, 2, 3}, 5)});
  ASSERT_EQ(fits.size(), 1u);
  EXPECT_TRUE(fits[0].outcome.status.ok()) << fits[0].outcome.status;
  EXPECT_EQ(fits[0].tokens.size(), 5u);
}

TEST(Preemption, ARequestPreemptedMoreThanMaxPreemptionsEndsAndTheOthersFinish) {
  WholeModelStage whole;
  const absl::Status loaded = whole.Load(/*max_open=*/64);
  ASSERT_TRUE(loaded.ok()) << loaded;
  whole.store.Open();
  RouterConfig config = FourPlaces();
  config.max_preemptions = 0;
  DeviceMemoryStage device(*whole.stage, 56, DeviceMemoryStage::Failure::kUpFront);
  testing::HeldStage held(device);
  PreemptionCounter preemptions;
  EngineCore engine(config, whole.router_model(), held, &whole.store, &preemptions);
  const std::vector<Collected> got = RunAll(engine, FourRequests(), &held);
  ASSERT_EQ(got.size(), 4u);
  int failed = 0;
  for (const Collected& c : got) {
    ASSERT_TRUE(c.finished);
    if (c.outcome.status.ok()) continue;
    ++failed;
    EXPECT_EQ(c.outcome.status.code(), absl::StatusCode::kResourceExhausted) << c.outcome.status;
    EXPECT_NE(c.outcome.status.message().find("max_preemptions"), std::string_view::npos) << c.outcome.status;
  }
  EXPECT_GE(failed, 1);
  EXPECT_LT(failed, 4);
  EXPECT_EQ(got[3].outcome.status.code(), absl::StatusCode::kResourceExhausted);  // the last in line
}

// A later pipeline stage in front of the real one, whose latent pages hold `capacity` rows of the
// sequences' histories in all. A page reservation (the first stage's, ahead of a step) whose
// step rows do not fit fails as a stage whose pages did not fit, its states unchanged; the rows
// ahead it asks for are granted where they fit, and its answer says what is held. A step whose
// rows pass what was reserved for them fails the same way, but after the first stage ran it
// (`late_failures`).
class PagedLaterStage final : public StageChannel {
 public:
  PagedLaterStage(StageChannel& next, int64_t capacity) : next_(next), capacity_(capacity) {}

  int64_t failed_reservations() const { return failed_reservations_; }
  int64_t late_failures() const { return late_failures_; }

  absl::Status Open(const internal::v1::OpenRequest& request, internal::v1::OpenResponse* response) override {
    const absl::Status status = next_.Open(request, response);
    if (!status.ok()) return status;
    absl::MutexLock lock(&mutex_);
    for (int i = 0; i < response->results_size(); ++i) {
      const int64_t restored = response->results(i).restored() ? request.sequences(i).restore_tokens() : 0;
      held_[response->results(i).seq_id()] = {restored, restored};
    }
    return status;
  }

  absl::Status Step(const internal::v1::StepRequest& request, internal::v1::StepResponse* response) override {
    std::vector<int64_t> reserved;
    {
      absl::MutexLock lock(&mutex_);
      if (request.reserve_only()) {
        std::map<uint64_t, Rows> after = held_;
        for (const internal::v1::StepSequence& seq : request.sequences()) {
          Rows& rows = after[seq.seq_id()];
          rows.reserved = std::max(rows.reserved, rows.tokens + seq.reserve_rows());
        }
        if (Total(after) > capacity_) {
          ++failed_reservations_;
          return TestOutOfMemory(/*states_unchanged=*/true);
        }
        for (const internal::v1::StepSequence& seq : request.sequences()) {
          Rows& rows = after[seq.seq_id()];
          const int64_t strict = rows.reserved;
          rows.reserved = std::max(strict, rows.tokens + seq.reserve_rows() + request.reserve_ahead_rows());
          if (Total(after) > capacity_) rows.reserved = strict;
          reserved.push_back(rows.reserved);
        }
        held_ = std::move(after);
      } else {
        for (const internal::v1::StepSequence& seq : request.sequences()) {
          Rows& rows = held_[seq.seq_id()];
          if (rows.tokens + seq.token_ids_size() > rows.reserved) {
            ++late_failures_;
            return TestOutOfMemory(/*states_unchanged=*/true);
          }
        }
        for (const internal::v1::StepSequence& seq : request.sequences()) {
          held_[seq.seq_id()].tokens += seq.token_ids_size();
        }
      }
    }
    const absl::Status status = next_.Step(request, response);
    for (size_t i = 0; status.ok() && i < reserved.size(); ++i) {
      const int index = static_cast<int>(i);
      response->set_reserved_rows(index, std::min(response->reserved_rows(index), reserved[i]));
    }
    return status;
  }

  absl::Status Close(const internal::v1::CloseRequest& request, internal::v1::CloseResponse* response) override {
    {
      absl::MutexLock lock(&mutex_);
      for (const internal::v1::CloseSequence& seq : request.sequences()) held_.erase(seq.seq_id());
    }
    return next_.Close(request, response);
  }

 private:
  struct Rows {
    int64_t tokens = 0, reserved = 0;
  };
  static int64_t Total(const std::map<uint64_t, Rows>& held) {
    int64_t total = 0;
    for (const auto& [id, rows] : held) total += std::max(rows.tokens, rows.reserved);
    return total;
  }

  StageChannel& next_;
  const int64_t capacity_;
  std::atomic<int64_t> failed_reservations_{0}, late_failures_{0};
  absl::Mutex mutex_;
  std::map<uint64_t, Rows> held_ ABSL_GUARDED_BY(mutex_);
};

// The fixture's layers before and from layer 2 as two stages, the later behind a PagedLaterStage
// of `capacity` rows (0: none), on a CPU backend with `later_memory_limit` bytes (0: none).
struct TwoStages {
  explicit TwoStages(int64_t capacity, int64_t later_memory_limit = 0)
      : later_backend({.num_threads = 1, .memory_limit_bytes = later_memory_limit}) {
    model::ModelOptions first_layers, last_layers;
    first_layers.scope.layer_end = 2;
    last_layers.scope.layer_begin = 2;
    auto first = model::KimiLinearModel::Load(testing::kTinyFixture, backend, first_layers);
    auto last = model::KimiLinearModel::Load(testing::kTinyFixture, later_backend, last_layers);
    EXPECT_TRUE(first.ok() && last.ok());
    if (!first.ok() || !last.ok()) return;
    first_model = *std::move(first);
    last_model = *std::move(last);
    last_stage = std::make_unique<StageEngine>(*last_model, &store, nullptr);
    if (capacity > 0) paged = std::make_unique<PagedLaterStage>(*last_stage, capacity);
    first_stage = std::make_unique<StageEngine>(*first_model, &store,
                                                paged != nullptr ? static_cast<StageChannel*>(paged.get())
                                                                 : last_stage.get());
    store.Open();
  }
  RouterModel router_model() const {
    return {first_model->config(), first_model->fingerprint(), first_model->max_context()};
  }

  kernels::cpu::CpuBackend backend{{.num_threads = 1}};
  kernels::cpu::CpuBackend later_backend;
  testing::GatedStoreClient store;
  std::unique_ptr<model::KimiLinearModel> first_model, last_model;
  std::unique_ptr<StageEngine> last_stage;
  std::unique_ptr<PagedLaterStage> paged;
  std::unique_ptr<StageEngine> first_stage;
};

// FourRequests and the session's next turn on the two stages without limits.
void RunUnconstrainedPipeline(std::vector<Collected>& four, Collected& next) {
  TwoStages unconstrained(0);
  ASSERT_NE(unconstrained.first_stage, nullptr);
  RunUnconstrained(unconstrained.router_model(), *unconstrained.first_stage, &unconstrained.store, "unconstrained",
                   four, next);
}

// In a pipeline the first stage asks the later stages for a step's pages before it runs the step,
// so a later stage's shortage preempts as the first stage's own does (before_step: the sequence
// last in line gives its state back, the others run on as they were), not by sending every
// sequence of the step back (mid_step); the requests finish with the tokens of an unconstrained
// run, and so does the session's next turn.
TEST(Preemption, ALaterStagesPageShortagePreemptsBeforeTheStep) {
  std::vector<Collected> want;
  Collected want_next;
  ASSERT_NO_FATAL_FAILURE(RunUnconstrainedPipeline(want, want_next));

  // Room for 56 tokens of state: the requests' steps, not the rows they ask for ahead.
  TwoStages short_of_pages(56);
  ASSERT_NE(short_of_pages.first_stage, nullptr);
  testing::HeldStage held(*short_of_pages.first_stage);
  PreemptionCounter preemptions;
  EngineCore engine(FourPlaces(), short_of_pages.router_model(), held, &short_of_pages.store, &preemptions);
  ExpectSameTokens(RunAll(engine, FourRequests("agent"), &held), want);
  EXPECT_GE(short_of_pages.paged->failed_reservations(), 1);
  EXPECT_EQ(short_of_pages.paged->late_failures(), 0);
  EXPECT_GE(preemptions.count("before_step"), 1);
  EXPECT_EQ(preemptions.count("mid_step"), 0);
  ExpectNextTurn(engine, "agent", want_next);
}

// The same without test doubles: the later stage's CPU backend has a memory limit that holds
// the states of some of the requests but not all, so its pages run out for real and the stage
// refuses the first stage's reservation, its states unchanged.
TEST(Preemption, ALaterStagesMemoryLimitPreemptsBeforeTheStep) {
  std::vector<Collected> want;
  Collected want_next;
  ASSERT_NO_FATAL_FAILURE(RunUnconstrainedPipeline(want, want_next));

  TwoStages capped(0, kLaterStageMemoryLimit);
  ASSERT_NE(capped.first_stage, nullptr);
  testing::HeldStage held(*capped.first_stage);
  PreemptionCounter preemptions;
  EngineCore engine(FourPlaces(), capped.router_model(), held, &capped.store, &preemptions);
  ExpectSameTokens(RunAll(engine, FourRequests("agent"), &held), want);
  EXPECT_GE(preemptions.count("before_step"), 1);
  ExpectNextTurn(engine, "agent", want_next);
}

// A whole-model stage on a CPU backend whose memory limit holds the states of some of the
// requests but not all: memory runs out for real (pages, states or step buffers), the router
// preempts, and every request finishes with the tokens of an unconstrained run.
TEST(Preemption, OnABackendsMemoryLimitRequestsFinishWithTheTokensOfAnUnconstrainedRun) {
  WholeModelStage whole;
  ASSERT_TRUE(whole.Load(/*max_open=*/64).ok());
  whole.store.Open();
  std::vector<Collected> want;
  Collected want_next;
  RunUnconstrained(whole.router_model(), *whole.stage, &whole.store, "agent", want, want_next);

  WholeModelStage capped(testing::GatedStoreClient::Hold::kUploads, kWholeModelMemoryLimit);
  ASSERT_TRUE(capped.Load(/*max_open=*/64).ok());
  capped.store.Open();
  testing::HeldStage held(*capped.stage);
  PreemptionCounter preemptions;
  EngineCore engine(FourPlaces(), capped.router_model(), held, &capped.store, &preemptions);
  ExpectSameTokens(RunAll(engine, FourRequests("agent"), &held), want);
  EXPECT_GE(preemptions.count("open") + preemptions.count("before_step") + preemptions.count("mid_step"), 1);
  ExpectNextTurn(engine, "agent", want_next);

  // A prompt whose step needs more than the limit ends with RESOURCE_EXHAUSTED; the server serves on.
  std::vector<int32_t> long_prompt(3000);
  for (size_t i = 0; i < long_prompt.size(); ++i) long_prompt[i] = static_cast<int32_t>(3 + i % 500);
  const std::vector<Collected> too_long = RunAll(engine, {Greedy(long_prompt, 2)});
  ASSERT_EQ(too_long.size(), 1u);
  ASSERT_TRUE(too_long[0].finished);
  EXPECT_EQ(too_long[0].outcome.status.code(), absl::StatusCode::kResourceExhausted) << too_long[0].outcome.status;
  const std::vector<Collected> fits = RunAll(engine, {Greedy({1, 2, 3}, 5)});
  ASSERT_EQ(fits.size(), 1u);
  EXPECT_TRUE(fits[0].outcome.status.ok()) << fits[0].outcome.status;
  EXPECT_EQ(fits[0].tokens.size(), 5u);
}

}  // namespace
}  // namespace deltaserve::services
