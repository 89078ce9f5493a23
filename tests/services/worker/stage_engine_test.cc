// A stage moves session snapshots to and from the store outside the lock its steps take, so a
// snapshot in transit never holds up the other sequences; a snapshot damaged on its way back is
// refused (its checksum, verified before the lock), and the sequence opens fresh. A stage's lock
// is free while the later stages run its step. Its metrics count how its rows went on. A step a
// later stage failed for device memory is not one whose states are unchanged, but a first stage
// reserves the later stages' pages before its step, so their shortage leaves every state as it was.
#include "services/worker/stage_engine.h"

#include <chrono>
#include <future>
#include <limits>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/cord.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "prometheus/registry.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "model/kimi_linear_model.h"
#include "services/transport/sampling_proto.h"
#include "services/worker/stage_metrics.h"
#include "tests/services/worker/counter_value.h"
#include "tests/services/worker/stage_requests.h"
#include "tests/testing/gated_store_client.h"

namespace deltaserve::services {
namespace {

const std::string kFixture = std::string(DELTASERVE_TEST_DATA_DIR) + "/kimi-tiny-public";
constexpr char kTenant[] = "tenant";
constexpr char kSession[] = "session";

using testing::AddSequence;
using testing::OpenFresh;
using testing::CounterValue;
using testing::StepOf;

// Passes Open, Close and page reservations on to `next`; holds each Step at a gate until the test
// opens it.
class GatedStepChannel final : public StageChannel {
 public:
  explicit GatedStepChannel(StageChannel& next) : next_(next) {}
  bool WaitForHeldStep(std::chrono::milliseconds timeout) {
    absl::MutexLock lock(&mutex_);
    const auto held = [this]() ABSL_SHARED_LOCKS_REQUIRED(mutex_) { return held_; };
    return mutex_.AwaitWithTimeout(absl::Condition(&held), absl::FromChrono(timeout));
  }
  void OpenGate() {
    absl::MutexLock lock(&mutex_);
    open_ = true;
  }
  absl::Status Open(const internal::v1::OpenRequest& request, internal::v1::OpenResponse* response) override {
    return next_.Open(request, response);
  }
  absl::Status Step(const internal::v1::StepRequest& request, internal::v1::StepResponse* response) override {
    if (request.reserve_only()) return next_.Step(request, response);
    {
      absl::MutexLock lock(&mutex_);
      held_ = true;
      mutex_.Await(absl::Condition(&open_));
    }
    return next_.Step(request, response);
  }
  absl::Status Close(const internal::v1::CloseRequest& request, internal::v1::CloseResponse* response) override {
    return next_.Close(request, response);
  }

 private:
  StageChannel& next_;
  absl::Mutex mutex_;
  bool held_ ABSL_GUARDED_BY(mutex_) = false;
  bool open_ ABSL_GUARDED_BY(mutex_) = false;
};

// The fixture's layers before and from layer 2, as two stages' models.
std::pair<std::unique_ptr<model::KimiLinearModel>, std::unique_ptr<model::KimiLinearModel>> Halves(
    kernels::Backend& backend) {
  model::ModelOptions first_layers, last_layers;
  first_layers.scope.layer_end = 2;
  last_layers.scope.layer_begin = 2;
  auto first = model::KimiLinearModel::Load(kFixture, backend, first_layers);
  auto last = model::KimiLinearModel::Load(kFixture, backend, last_layers);
  EXPECT_TRUE(first.ok()) << first.status();
  EXPECT_TRUE(last.ok()) << last.status();
  if (!first.ok() || !last.ok()) return {};
  return {std::move(*first), std::move(*last)};
}

TEST(StageEngineTest, AStagesLockIsFreeWhileLaterStagesRunItsStep) {
  kernels::cpu::CpuBackend backend({.num_threads = 1});
  auto [first, last] = Halves(backend);
  ASSERT_TRUE(first && last);
  StageEngine last_stage(*last, nullptr, nullptr);
  GatedStepChannel gate(last_stage);
  StageEngine first_stage(*first, nullptr, &gate);

  ASSERT_TRUE(OpenFresh(first_stage, 1).ok());
  internal::v1::StepResponse stepped;
  std::future<absl::Status> step =
      std::async(std::launch::async, [&] { return first_stage.Step(StepOf(1, {5, 6, 7}), &stepped); });
  const bool held = gate.WaitForHeldStep(std::chrono::seconds(20));

  // With the step at the later stage, another sequence opens on the first stage.
  std::future<absl::Status> opening = std::async(std::launch::async, [&] { return OpenFresh(first_stage, 2); });
  const bool opened_while_held = opening.wait_for(std::chrono::seconds(20)) == std::future_status::ready;
  gate.OpenGate();  // before any assertion can end the test with the step still held
  ASSERT_TRUE(held) << "the step never reached the later stage";
  EXPECT_TRUE(opened_while_held) << "an Open waited for the later stages' part of a step";
  EXPECT_TRUE(opening.get().ok());
  const absl::Status status = step.get();
  ASSERT_TRUE(status.ok()) << status;
  ASSERT_EQ(stepped.sampled_size(), 1);
  EXPECT_EQ(stepped.sampled(0).seq_id(), 1u);
  EXPECT_EQ(first_stage.open_sequences(), 2);
  EXPECT_EQ(last_stage.open_sequences(), 2);
}

TEST(StageEngineTest, StepsGoOnWhileAnotherSequencesSnapshotUploads) {
  kernels::cpu::CpuBackend backend({.num_threads = 1});
  auto model = model::KimiLinearModel::Load(kFixture, backend);
  ASSERT_TRUE(model.ok()) << model.status();
  testing::GatedStoreClient store;
  ASSERT_TRUE(store.CreateSession(kTenant, kSession, true).ok());
  StageEngine stage(**model, &store, nullptr);

  internal::v1::OpenRequest open;
  AddSequence(open, 1);
  AddSequence(open, 2);
  internal::v1::OpenResponse opened;
  ASSERT_TRUE(stage.Open(open, &opened).ok());
  internal::v1::StepResponse stepped;
  ASSERT_TRUE(stage.Step(StepOf(1, {5, 6, 7}), &stepped).ok());
  ASSERT_TRUE(stage.Step(StepOf(2, {8, 9}), &stepped).ok());

  // Sequence 1 closes with a snapshot, which waits at the store's gate.
  internal::v1::CloseRequest close;
  internal::v1::CloseSequence* entry = close.add_sequences();
  entry->set_seq_id(1);
  entry->mutable_snapshot()->set_tenant(kTenant);
  entry->mutable_snapshot()->set_session_id(kSession);
  internal::v1::CloseResponse closed;
  std::future<absl::Status> closing = std::async(std::launch::async, [&] { return stage.Close(close, &closed); });
  const bool held = store.WaitForHeldTransfer(std::chrono::seconds(20));

  // Sequence 2 steps meanwhile, and sequence 1 is already gone from the stage.
  std::future<absl::Status> step = std::async(std::launch::async, [&] {
    internal::v1::StepResponse response;
    return stage.Step(StepOf(2, {10}), &response);
  });
  const bool stepped_while_held = step.wait_for(std::chrono::seconds(20)) == std::future_status::ready;
  // (Were the step still waiting, the stage's lock would be taken: asking would wait too.)
  const int64_t open_while_held = stepped_while_held ? stage.open_sequences() : -1;
  store.Open();  // before any assertion can end the test with the upload still held
  ASSERT_TRUE(held) << "the snapshot never reached the store";
  EXPECT_TRUE(stepped_while_held) << "a step waited for another sequence's snapshot upload";
  EXPECT_EQ(open_while_held, 1);
  EXPECT_TRUE(step.get().ok());
  const absl::Status close_status = closing.get();
  ASSERT_TRUE(close_status.ok()) << close_status;
  // The bytes reported are the stored snapshot's (fp32 whatever the live state keeps).
  absl::StatusOr<services::Part> stored = store.GetPart(kTenant, kSession, stage.PartName());
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ(closed.snapshot_bytes(), static_cast<int64_t>(stored->payload.size()));
  EXPECT_GT(closed.snapshot_bytes(), 0);

  // The uploaded snapshot restores: a new sequence resumes from its three tokens.
  internal::v1::OpenRequest resume;
  internal::v1::OpenSequence* again = AddSequence(resume, 3);
  again->mutable_restore()->set_tenant(kTenant);
  again->mutable_restore()->set_session_id(kSession);
  again->set_restore_tokens(3);
  internal::v1::OpenResponse resumed;
  ASSERT_TRUE(stage.Open(resume, &resumed).ok());
  ASSERT_EQ(resumed.results_size(), 1);
  EXPECT_TRUE(resumed.results(0).restored()) << resumed.results(0).restore_error();

  // The same snapshot damaged in transit: refused, and the sequence opens with a fresh state.
  store.DamageDownloads();
  internal::v1::OpenRequest damaged;
  internal::v1::OpenSequence* once_more = AddSequence(damaged, 4);
  *once_more->mutable_restore() = again->restore();
  once_more->set_restore_tokens(3);
  internal::v1::OpenResponse refused;
  ASSERT_TRUE(stage.Open(damaged, &refused).ok());
  ASSERT_EQ(refused.results_size(), 1);
  EXPECT_FALSE(refused.results(0).restored());
  EXPECT_NE(refused.results(0).restore_error().find("corrupt"), std::string::npos)
      << refused.results(0).restore_error();
  EXPECT_EQ(stage.open_sequences(), 3);
}

TEST(StageEngineTest, CountsHowItsHiddenRowsWentToTheNextStage) {
  kernels::cpu::CpuBackend backend({.num_threads = 1});
  auto [first, last] = Halves(backend);
  ASSERT_TRUE(first && last);
  prometheus::Registry registry;
  absl::StatusOr<std::unique_ptr<LinkPathMetrics>> metrics = LinkPathMetrics::ForHandoffs(registry);
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  StageEngine last_stage(*last, nullptr, nullptr);
  StageEngine first_stage(*first, nullptr, &last_stage, StageEngineOptions{}, nullptr, {}, metrics->get());

  ASSERT_TRUE(OpenFresh(first_stage, 1).ok());
  internal::v1::StepResponse stepped;
  ASSERT_TRUE(first_stage.Step(StepOf(1, {5, 6, 7}), &stepped).ok());
  ASSERT_TRUE(first_stage.Step(StepOf(1, {stepped.sampled(0).token_id()}), &stepped).ok());
  // No link: both steps' rows went as bytes.
  EXPECT_EQ(CounterValue(registry, "deltaserve_stage_hidden_handoffs_total", "path", "bytes"), 2);
  EXPECT_EQ(CounterValue(registry, "deltaserve_stage_hidden_handoffs_total", "path", "nccl"), 0);
}

// Answers Open, Close and page reservations; fails every Step as a stage whose device memory ran
// out before it changed any state.
class OutOfMemoryStage final : public StageChannel {
 public:
  absl::Status Open(const internal::v1::OpenRequest&, internal::v1::OpenResponse*) override {
    return absl::OkStatus();
  }
  absl::Status Step(const internal::v1::StepRequest& request, internal::v1::StepResponse* response) override {
    if (request.reserve_only()) {  // as if its pages held every row
      for (int i = 0; i < request.sequences_size(); ++i) response->add_reserved_rows(1 << 30);
      return absl::OkStatus();
    }
    absl::Status status = absl::ResourceExhaustedError("device memory ran out (injected)");
    status.SetPayload(kStageDeviceMemoryPayload, absl::Cord());
    status.SetPayload(kStepStatesUnchangedPayload, absl::Cord());
    return status;
  }
  absl::Status Close(const internal::v1::CloseRequest&, internal::v1::CloseResponse*) override {
    return absl::OkStatus();
  }
};

// A later stage that ran out of device memory before changing its states does not make the
// step's states unchanged: this stage's had advanced. The router learns memory ran out, not that
// it may run the step's sequences again as they are.
TEST(StageEngineTest, ALaterStagesUnchangedStatesDoNotMakeTheStepsUnchanged) {
  kernels::cpu::CpuBackend backend({.num_threads = 1});
  auto [first, last] = Halves(backend);
  ASSERT_TRUE(first && last);
  OutOfMemoryStage out_of_memory;
  StageEngine first_stage(*first, nullptr, &out_of_memory);
  ASSERT_TRUE(OpenFresh(first_stage, 1).ok());
  internal::v1::StepResponse stepped;
  const absl::Status status = first_stage.Step(StepOf(1, {5, 6, 7}), &stepped);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted) << status;
  EXPECT_TRUE(StageDeviceMemoryRanOut(status)) << status;
  EXPECT_FALSE(StepStatesUnchanged(status)) << status;
}

// In front of a later stage: counts the page reservations and the steps that pass, with the rows
// each reservation asked for its first sequence and the rows the answer says its pages hold; while
// short, refuses reservations as a stage whose pages did not fit.
class ReservationWatch final : public StageChannel {
 public:
  explicit ReservationWatch(StageChannel& next) : next_(next) {}
  void set_short(bool is_short) { short_ = is_short; }
  // Refuses reservations as a stage of a build from before them does (a step without tokens).
  void set_earlier_build(bool earlier) { earlier_build_ = earlier; }
  int steps() const { return steps_; }
  const std::vector<int64_t>& asked() const { return asked_; }
  const std::vector<int64_t>& held() const { return held_; }

  absl::Status Open(const internal::v1::OpenRequest& request, internal::v1::OpenResponse* response) override {
    return next_.Open(request, response);
  }
  absl::Status Step(const internal::v1::StepRequest& request, internal::v1::StepResponse* response) override {
    if (!request.reserve_only()) {
      ++steps_;
      return next_.Step(request, response);
    }
    asked_.push_back(request.sequences_size() > 0 ? request.sequences(0).reserve_rows() : -1);
    if (earlier_build_) return absl::InvalidArgumentError("sequence 0 has no new tokens");
    if (!short_) {
      const absl::Status status = next_.Step(request, response);
      held_.push_back(response->reserved_rows_size() > 0 ? response->reserved_rows(0) : -1);
      return status;
    }
    absl::Status status = absl::ResourceExhaustedError("device memory ran out reserving pages (injected)");
    status.SetPayload(kStageDeviceMemoryPayload, absl::Cord());
    status.SetPayload(kStepStatesUnchangedPayload, absl::Cord());
    return status;
  }
  absl::Status Close(const internal::v1::CloseRequest& request, internal::v1::CloseResponse* response) override {
    return next_.Close(request, response);
  }

 private:
  StageChannel& next_;
  bool short_ = false, earlier_build_ = false;
  int steps_ = 0;
  std::vector<int64_t> asked_, held_;
};

absl::Status OpenGreedy(StageChannel& stage, uint64_t seq_id) {
  internal::v1::OpenRequest request;
  model::SamplingParams greedy;
  greedy.temperature = 0.0f;
  AddSequence(request, seq_id, greedy);
  internal::v1::OpenResponse response;
  return stage.Open(request, &response);
}

// The token a stage samples for a one-sequence step, or -1.
int32_t Sampled(StageChannel& stage, const internal::v1::StepRequest& request) {
  internal::v1::StepResponse response;
  const absl::Status status = stage.Step(request, &response);
  EXPECT_TRUE(status.ok()) << status;
  return status.ok() && response.sampled_size() == 1 ? response.sampled(0).token_id() : -1;
}

// The fixture's halves as two stages, a ReservationWatch between them; the first stage opened
// sequence 1 (greedy).
struct WatchedPipeline {
  explicit WatchedPipeline(StageEngineOptions options = {}) {
    std::tie(first, last) = Halves(backend);
    if (!first || !last) return;
    last_stage = std::make_unique<StageEngine>(*last, nullptr, nullptr);
    watch = std::make_unique<ReservationWatch>(*last_stage);
    first_stage = std::make_unique<StageEngine>(*first, nullptr, watch.get(), options);
    opened = OpenGreedy(*first_stage, 1);
  }
  bool ok() const { return first_stage != nullptr && opened.ok(); }

  kernels::cpu::CpuBackend backend{{.num_threads = 1}};
  std::unique_ptr<model::KimiLinearModel> first, last;
  std::unique_ptr<StageEngine> last_stage;
  std::unique_ptr<ReservationWatch> watch;
  std::unique_ptr<StageEngine> first_stage;
  absl::Status opened;
};

// A later stage whose pages for a step do not fit refuses the first stage's reservation before the
// first stage runs the step: every state stays as it was, so the router may run the step's other
// sequences again as they are. Sent again once there is room, the step samples what a pipeline
// that never ran short samples.
TEST(StageEngineTest, ALaterStagesPageShortageLeavesEveryStateAsItWas) {
  WatchedPipeline pipeline, plain;
  ASSERT_TRUE(pipeline.ok() && plain.ok());
  StageEngine& first_stage = *pipeline.first_stage;
  ReservationWatch& watch = *pipeline.watch;

  watch.set_short(true);
  internal::v1::StepResponse refused;
  const absl::Status status = first_stage.Step(StepOf(1, {5, 6, 7}), &refused);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted) << status;
  EXPECT_TRUE(StageDeviceMemoryRanOut(status)) << status;
  EXPECT_TRUE(StepStatesUnchanged(status)) << status;
  EXPECT_EQ(watch.steps(), 0);

  watch.set_short(false);
  int32_t token = Sampled(first_stage, StepOf(1, {5, 6, 7}));
  ASSERT_EQ(token, Sampled(*plain.first_stage, StepOf(1, {5, 6, 7})));
  for (int step = 0; step < 3; ++step) {
    const int32_t next = Sampled(first_stage, StepOf(1, {token}));
    ASSERT_EQ(next, Sampled(*plain.first_stage, StepOf(1, {token}))) << "step " << step;
    token = next;
  }
}

// A first stage asks its later stages for a step's rows and, where memory allows, 256 more (a
// page at the default 256 rows), and asks again once the step passes what their answer held, so
// decode steps ask about once a page, not once a step. The rows ahead are taken once the later
// stage has run a step (before, the steps' room is unknown) and where another sequence is alive.
TEST(StageEngineTest, LaterStagesAreAskedForPagesOnceAPageOfRows) {
  WatchedPipeline pipeline;
  ASSERT_TRUE(pipeline.ok());
  StageEngine& first_stage = *pipeline.first_stage;
  ASSERT_TRUE(OpenGreedy(first_stage, 2).ok());
  const ReservationWatch& watch = *pipeline.watch;
  int32_t token = Sampled(first_stage, StepOf(1, {5, 6, 7}));
  constexpr int64_t kPage = model::kDefaultLatentPageRows;
  // Before the later stage's first step: 3 rows, a page, nothing ahead.
  EXPECT_EQ(watch.asked(), std::vector<int64_t>{3});
  EXPECT_EQ(watch.held(), std::vector<int64_t>{kPage});
  for (int step = 0; step < 600; ++step) token = Sampled(first_stage, StepOf(1, {token}));
  // Asked again by the step past those 256 rows (the 254th decode step): its page and 256 rows
  // ahead, three pages.
  EXPECT_EQ(watch.asked(), (std::vector<int64_t>{3, 1}));
  EXPECT_EQ(watch.held(), (std::vector<int64_t>{kPage, 3 * kPage}));
  EXPECT_EQ(watch.steps(), 601);
}

// A sequence alone takes no rows ahead: if a step then needed the room they took, nothing could
// give memory back and the sequence would fail where it fits. It asks once a page.
TEST(StageEngineTest, ASequenceAloneReservesNoRowsAhead) {
  WatchedPipeline pipeline;
  ASSERT_TRUE(pipeline.ok());
  StageEngine& first_stage = *pipeline.first_stage;
  const ReservationWatch& watch = *pipeline.watch;
  int32_t token = Sampled(first_stage, StepOf(1, {5, 6, 7}));
  for (int step = 0; step < 600; ++step) token = Sampled(first_stage, StepOf(1, {token}));
  constexpr int64_t kPage = model::kDefaultLatentPageRows;
  EXPECT_EQ(watch.asked(), (std::vector<int64_t>{3, 1, 1}));
  EXPECT_EQ(watch.held(), (std::vector<int64_t>{kPage, 2 * kPage, 3 * kPage}));
  EXPECT_EQ(watch.steps(), 601);
}

// A first stage whose later stages take no reservations (an earlier build, as their description
// said) asks for none and runs its steps as before.
TEST(StageEngineTest, AFirstStageAsksNoReservationsOfLaterStagesThatTakeNone) {
  WatchedPipeline pipeline(StageEngineOptions{.reserve_on_later_stages = false});
  ASSERT_TRUE(pipeline.ok());
  const int32_t token = Sampled(*pipeline.first_stage, StepOf(1, {5, 6, 7}));
  EXPECT_GE(Sampled(*pipeline.first_stage, StepOf(1, {token})), 0);
  EXPECT_TRUE(pipeline.watch->asked().empty());
  EXPECT_EQ(pipeline.watch->steps(), 2);
}

// A later stage that refuses a reservation as a build from before them does (or for a reason of
// its own, which its step then gives too) leaves the first stage's step to go on without one.
TEST(StageEngineTest, AStepGoesOnWhereALaterStageRefusesItsReservation) {
  WatchedPipeline pipeline, plain(StageEngineOptions{.reserve_on_later_stages = false});
  ASSERT_TRUE(pipeline.ok() && plain.ok());
  pipeline.watch->set_earlier_build(true);
  const int32_t token = Sampled(*pipeline.first_stage, StepOf(1, {5, 6, 7}));
  ASSERT_EQ(token, Sampled(*plain.first_stage, StepOf(1, {5, 6, 7})));
  EXPECT_EQ(Sampled(*pipeline.first_stage, StepOf(1, {token})), Sampled(*plain.first_stage, StepOf(1, {token})));
  EXPECT_EQ(pipeline.watch->asked().size(), 2u) << "asked again: nothing was held";
  EXPECT_EQ(pipeline.watch->steps(), 2);
}

// A page reservation a stage cannot honour is refused with INVALID_ARGUMENT, and the stage
// serves on.
TEST(StageEngineTest, AReservationItCannotHonourIsRefusedAndTheStageServesOn) {
  kernels::cpu::CpuBackend backend({.num_threads = 1});
  auto model = model::KimiLinearModel::Load(kFixture, backend);
  ASSERT_TRUE(model.ok()) << model.status();
  StageEngine stage(**model, nullptr, nullptr);
  ASSERT_TRUE(OpenGreedy(stage, 1).ok());
  const auto reservation = [](uint64_t seq_id, int64_t rows) {
    internal::v1::StepRequest request;
    request.set_reserve_only(true);
    internal::v1::StepSequence* seq = request.add_sequences();
    seq->set_seq_id(seq_id);
    seq->set_reserve_rows(rows);
    return request;
  };
  internal::v1::StepResponse response;
  EXPECT_EQ(stage.Step(reservation(9, 10), &response).code(), absl::StatusCode::kInvalidArgument) << "not open";
  EXPECT_EQ(stage.Step(reservation(1, -1), &response).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_LT((*model)->max_context(), std::numeric_limits<int64_t>::max());
  EXPECT_EQ(stage.Step(reservation(1, (*model)->max_context() + 1), &response).code(),
            absl::StatusCode::kInvalidArgument);
  internal::v1::StepRequest far_ahead = reservation(1, 10);
  far_ahead.set_reserve_ahead_rows(1 << 20);
  EXPECT_EQ(stage.Step(far_ahead, &response).code(), absl::StatusCode::kInvalidArgument);
  internal::v1::StepRequest with_tokens = reservation(1, 10);
  with_tokens.mutable_sequences(0)->add_token_ids(5);
  EXPECT_EQ(stage.Step(with_tokens, &response).code(), absl::StatusCode::kInvalidArgument);
  internal::v1::StepRequest with_rows = reservation(1, 10);
  with_rows.set_hidden(std::string(16, '\0'));
  EXPECT_EQ(stage.Step(with_rows, &response).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(stage.Step(reservation(1, 1000), &response).ok());
  EXPECT_EQ(response.sampled_size(), 0);
  ASSERT_EQ(response.reserved_rows_size(), 1);
  EXPECT_EQ(response.reserved_rows(0), 4 * model::kDefaultLatentPageRows);
  EXPECT_GE(Sampled(stage, StepOf(1, {5, 6, 7})), 0);
}

}  // namespace
}  // namespace deltaserve::services
