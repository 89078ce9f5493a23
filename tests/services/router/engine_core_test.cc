// The router moves session snapshots off its scheduling loop: while one session's snapshot is in
// transit (saved at the end of a turn, or restored at the start of the next), other requests are
// admitted, step and finish; a saving turn answers its caller only once its session is saved, and
// the next turn resumes from it. A continued session counts as resumed (restored or recomputed)
// only once it is open. A save's time counts from the turn's end and a resume's from its
// admission, a wait for a transfer thread included.
#include "services/router/engine_core.h"

#include <array>
#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "model/kimi_linear_model.h"
#include "services/worker/stage_engine.h"
#include "tests/services/router/router_requests.h"
#include "tests/services/router/whole_model_stage.h"
#include "tests/testing/gated_store_client.h"

namespace deltaserve::services {
namespace {

constexpr auto kPatience = std::chrono::seconds(20);

using testing::Collect;
using testing::WholeModelStage;
using testing::Collected;
using testing::Greedy;

// A turn of the session `session` ("agent" unless named).
RouterRequest Turn(v1::SessionMode mode, std::vector<int32_t> prompt, int32_t max_new_tokens,
                   std::string session = "agent") {
  RouterRequest request = Greedy(std::move(prompt), max_new_tokens);
  request.session_mode = mode;
  request.session_id = std::move(session);
  return request;
}

// Two places in the running batch.
RouterConfig TwoPlaces() {
  RouterConfig config;
  config.max_running = 2;
  config.planner.max_step_tokens = 64;
  return config;
}

// Takes a stream's updates until it finishes or `until` passes.
// Opens the gate before the engine's destructor waits for the saves, however a test ends.
struct OpenAtExit {
  testing::GatedStoreClient& store;
  ~OpenAtExit() { store.Open(); }
};


TEST(EngineCoreTest, OtherRequestsRunWhileASessionSaves) {
  const RouterConfig config = TwoPlaces();
  WholeModelStage whole;
  const absl::Status loaded = whole.Load(config.max_running);
  ASSERT_TRUE(loaded.ok()) << loaded;
  testing::GatedStoreClient& store = whole.store;
  EngineCore engine(config, whole.router_model(), *whole.stage, &store, nullptr);

  OpenAtExit open_at_exit{store};

  auto saving = engine.Submit(Turn(v1::SESSION_MODE_CREATE, {3, 4, 5}, 2));
  ASSERT_TRUE(saving.ok()) << saving.status();
  ASSERT_TRUE(store.WaitForHeldTransfer(kPatience)) << "the turn never reached its save";

  // Two more requests run, one at a time (the saving turn keeps one of the two places until the
  // stages' uploads are done), and finish while the snapshot is held.
  auto other = engine.Submit(Greedy({7, 8}, 3));
  auto another = engine.Submit(Greedy({9}, 2));
  ASSERT_TRUE(other.ok() && another.ok());
  const auto until = std::chrono::steady_clock::now() + kPatience;
  const Collected done = Collect(**other, until);
  const Collected also_done = Collect(**another, until);
  const Collected early = Collect(**saving, std::chrono::steady_clock::now() + std::chrono::milliseconds(100));
  store.Open();
  ASSERT_TRUE(done.finished) << "a request waited for another session's save";
  ASSERT_TRUE(also_done.finished);
  EXPECT_TRUE(done.outcome.status.ok()) << done.outcome.status;
  EXPECT_TRUE(also_done.outcome.status.ok()) << also_done.outcome.status;
  EXPECT_EQ(done.tokens.size(), 3u);
  EXPECT_EQ(also_done.tokens.size(), 2u);
  EXPECT_FALSE(early.finished) << "the turn answered before its session was saved";

  const Collected saved = Collect(**saving, std::chrono::steady_clock::now() + kPatience);
  ASSERT_TRUE(saved.finished);
  EXPECT_TRUE(saved.outcome.status.ok()) << saved.outcome.status;

  // The next turn restores the saved state instead of recomputing the history.
  auto resumed = engine.Submit(Turn(v1::SESSION_MODE_CONTINUE, {6}, 1));
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  const Collected turn = Collect(**resumed, std::chrono::steady_clock::now() + kPatience);
  ASSERT_TRUE(turn.finished);
  EXPECT_TRUE(turn.outcome.status.ok()) << turn.outcome.status;
  EXPECT_EQ(turn.outcome.usage.session_tokens(), 5);  // 3 prompt + 2 generated tokens
  EXPECT_EQ(turn.outcome.usage.recomputed_tokens(), 0);
  engine.Shutdown();
}

// Keeps the engine's latest Batch report, and lets a test wait for a given one.
class BatchWatcher final : public RouterObserver {
 public:
  void Batch(int64_t running, int64_t opening, int64_t waiting) override {
    absl::MutexLock lock(&mutex_);
    latest_ = {running, opening, waiting};
  }
  bool WaitFor(std::array<int64_t, 3> report, std::chrono::milliseconds timeout) {
    absl::MutexLock lock(&mutex_);
    const auto seen = [&]() ABSL_SHARED_LOCKS_REQUIRED(mutex_) { return latest_ == report; };
    return mutex_.AwaitWithTimeout(absl::Condition(&seen), absl::FromChrono(timeout));
  }

 private:
  absl::Mutex mutex_;
  std::array<int64_t, 3> latest_ ABSL_GUARDED_BY(mutex_) = {-1, -1, -1};
};

// A two-stage pipeline: the second stage's snapshot download must not hold up the first stage's
// steps either; meanwhile the restoring turn is reported as opening.
TEST(EngineCoreTest, OtherRequestsRunWhileASessionRestores) {
  kernels::cpu::CpuBackend backend({.num_threads = 1});
  auto whole = model::KimiLinearModel::Load(testing::kTinyFixture, backend);
  ASSERT_TRUE(whole.ok()) << whole.status();
  const int64_t layers = (*whole)->config().num_layers;
  model::ModelOptions first_half, second_half;
  first_half.scope = {.layer_begin = 0, .layer_end = layers / 2};
  second_half.scope = {.layer_begin = layers / 2, .layer_end = layers};
  auto front = model::KimiLinearModel::Load(testing::kTinyFixture, backend, first_half);
  auto back = model::KimiLinearModel::Load(testing::kTinyFixture, backend, second_half);
  ASSERT_TRUE(front.ok() && back.ok());
  const RouterConfig config = TwoPlaces();
  // Only the second stage's download is held, while the first stage waits on its Open.
  testing::GatedStoreClient store(testing::GatedStoreClient::Hold::kDownloads,
                                  absl::StrCat("layers-", layers / 2, "-"));
  StageEngine last(**back, &store, nullptr, {.max_open_sequences = config.max_running});
  StageEngine stage(**front, &store, &last, {.max_open_sequences = config.max_running});
  BatchWatcher batches;
  EngineCore engine(config, {(*whole)->config(), (*whole)->fingerprint(), (*whole)->max_context()}, stage,
                    &store, &batches);
  OpenAtExit open_at_exit{store};

  auto created = engine.Submit(Turn(v1::SESSION_MODE_CREATE, {3, 4, 5}, 2));
  ASSERT_TRUE(created.ok()) << created.status();
  ASSERT_TRUE(Collect(**created, std::chrono::steady_clock::now() + kPatience).outcome.status.ok());

  // The next turn's snapshot download waits at the gate; another request runs meanwhile.
  auto resuming = engine.Submit(Turn(v1::SESSION_MODE_CONTINUE, {6}, 1));
  ASSERT_TRUE(resuming.ok()) << resuming.status();
  ASSERT_TRUE(store.WaitForHeldTransfer(kPatience)) << "the turn never fetched its snapshot";
  auto other = engine.Submit(Greedy({7, 8}, 3));
  ASSERT_TRUE(other.ok());
  const Collected done = Collect(**other, std::chrono::steady_clock::now() + kPatience);
  // With the other request done, the engine reports the restoring turn as opening, not running.
  const bool opening_reported = batches.WaitFor({0, 1, 0}, kPatience);
  store.Open();
  ASSERT_TRUE(done.finished) << "a request waited for another session's restore";
  EXPECT_TRUE(opening_reported) << "no Batch report of 0 running, 1 opening, 0 waiting";
  EXPECT_TRUE(done.outcome.status.ok()) << done.outcome.status;
  EXPECT_EQ(done.tokens.size(), 3u);

  const Collected turn = Collect(**resuming, std::chrono::steady_clock::now() + kPatience);
  ASSERT_TRUE(turn.finished);
  EXPECT_TRUE(turn.outcome.status.ok()) << turn.outcome.status;
  EXPECT_EQ(turn.outcome.usage.session_tokens(), 5);
  EXPECT_EQ(turn.outcome.usage.recomputed_tokens(), 0);
  engine.Shutdown();
}

// When the last request finishes, the engine reports an empty batch at once, not only when new
// work wakes it.
TEST(EngineCoreTest, TheBatchReportEmptiesWhenTheLastRequestFinishes) {
  const RouterConfig config = TwoPlaces();
  WholeModelStage whole;
  const absl::Status loaded = whole.Load(config.max_running);
  ASSERT_TRUE(loaded.ok()) << loaded;
  whole.store.Open();
  BatchWatcher batches;
  EngineCore engine(config, whole.router_model(), *whole.stage, &whole.store, &batches);
  auto request = engine.Submit(Greedy({7, 8}, 3));
  ASSERT_TRUE(request.ok()) << request.status();
  const Collected done = Collect(**request, std::chrono::steady_clock::now() + kPatience);
  ASSERT_TRUE(done.finished);
  EXPECT_TRUE(done.outcome.status.ok()) << done.outcome.status;
  EXPECT_TRUE(batches.WaitFor({0, 0, 0}, kPatience)) << "the last report still counts the finished request";
  engine.Shutdown();
}

// Counts the engine's SessionResumed reports.
class ResumeCounter final : public RouterObserver {
 public:
  void SessionResumed(bool restored, int64_t /*history_tokens*/, double /*seconds*/) override {
    ++(restored ? restored_ : recomputed_);
  }
  int restored() const { return restored_.load(); }
  int recomputed() const { return recomputed_.load(); }

 private:
  std::atomic<int> restored_{0}, recomputed_{0};  // reported from the engine's Open threads
};

// Passes everything to the stage, but reports every restore as failed (the stage did restore:
// the engine then closes the sequence and opens it afresh from its history), and while
// `fail_fresh_opens` is set fails every Open that restores nothing.
class RestoreFailingStage final : public StageChannel {
 public:
  explicit RestoreFailingStage(StageChannel& next) : next_(next) {}
  std::atomic<bool> fail_fresh_opens{false};

  absl::Status Open(const internal::v1::OpenRequest& request, internal::v1::OpenResponse* response) override {
    bool restores = false;
    for (const internal::v1::OpenSequence& open : request.sequences()) restores = restores || open.has_restore();
    if (!restores && fail_fresh_opens) return absl::UnavailableError("the stage is down");
    const absl::Status status = next_.Open(request, response);
    if (restores) {
      for (internal::v1::OpenResult& result : *response->mutable_results()) {
        result.set_restored(false);
        result.set_restore_error("damaged snapshot (injected)");
      }
    }
    return status;
  }
  absl::Status Step(const internal::v1::StepRequest& request, internal::v1::StepResponse* response) override {
    return next_.Step(request, response);
  }
  absl::Status Close(const internal::v1::CloseRequest& request, internal::v1::CloseResponse* response) override {
    return next_.Close(request, response);
  }

 private:
  StageChannel& next_;
};

TEST(EngineCoreTest, ASessionCountsAsResumedOnlyOnceOpen) {
  const RouterConfig config = TwoPlaces();
  WholeModelStage whole;
  const absl::Status loaded = whole.Load(config.max_running);
  ASSERT_TRUE(loaded.ok()) << loaded;
  whole.store.Open();
  RestoreFailingStage failing(*whole.stage);
  ResumeCounter counter;
  EngineCore engine(config, whole.router_model(), failing, &whole.store, &counter);
  const auto turn = [&](v1::SessionMode mode) {
    auto stream = engine.Submit(Turn(mode, {3, 4, 5}, 2));
    EXPECT_TRUE(stream.ok()) << stream.status();
    return stream.ok() ? Collect(**stream, std::chrono::steady_clock::now() + kPatience) : Collected{};
  };
  const Collected created = turn(v1::SESSION_MODE_CREATE);
  ASSERT_TRUE(created.finished);
  ASSERT_TRUE(created.outcome.status.ok()) << created.outcome.status;

  // The restore fails and so does the fresh Open: the turn fails, and nothing was resumed.
  failing.fail_fresh_opens = true;
  const Collected failed = turn(v1::SESSION_MODE_CONTINUE);
  ASSERT_TRUE(failed.finished);
  EXPECT_EQ(failed.outcome.status.code(), absl::StatusCode::kUnavailable) << failed.outcome.status;
  EXPECT_EQ(counter.restored(), 0);
  EXPECT_EQ(counter.recomputed(), 0);

  // The restore fails, the fresh Open works: the history is recomputed, and counted so.
  failing.fail_fresh_opens = false;
  const Collected recomputed = turn(v1::SESSION_MODE_CONTINUE);
  ASSERT_TRUE(recomputed.finished);
  EXPECT_TRUE(recomputed.outcome.status.ok()) << recomputed.outcome.status;
  EXPECT_EQ(recomputed.outcome.usage.recomputed_tokens(), 5);
  EXPECT_EQ(counter.restored(), 0);
  EXPECT_EQ(counter.recomputed(), 1);
  engine.Shutdown();
}

// Records the engine's SessionSaved and SessionResumed times.
class TransferTimes final : public RouterObserver {
 public:
  void SessionSaved(int64_t /*bytes*/, double seconds) override {
    absl::MutexLock lock(&mutex_);
    saves_.push_back(seconds);
  }
  void SessionResumed(bool /*restored*/, int64_t /*history_tokens*/, double seconds) override {
    absl::MutexLock lock(&mutex_);
    resumes_.push_back(seconds);
  }
  std::vector<double> saves() const {
    absl::MutexLock lock(&mutex_);
    return saves_;
  }
  std::vector<double> resumes() const {
    absl::MutexLock lock(&mutex_);
    return resumes_;
  }

 private:
  mutable absl::Mutex mutex_;
  // Reported from the engine's save and open threads.
  std::vector<double> saves_ ABSL_GUARDED_BY(mutex_), resumes_ ABSL_GUARDED_BY(mutex_);
};

// How long the tests below hold a transfer at the gate, and the least a time that includes it may
// read: a step's margin, for a turn that ends (or is admitted) a step after the held one.
constexpr auto kHeld = std::chrono::milliseconds(500);
constexpr double kHeldAtLeast = 0.4;

// Two sessions' turns, submitted together, each to its end.
void RunTwoTurns(EngineCore& engine, v1::SessionMode mode) {
  auto first = engine.Submit(Turn(mode, {3, 4, 5}, 2, "first"));
  auto second = engine.Submit(Turn(mode, {6, 7, 8}, 2, "second"));
  ASSERT_TRUE(first.ok() && second.ok());
  const auto until = std::chrono::steady_clock::now() + kPatience;
  for (RequestStream* stream : {first->get(), second->get()}) {
    const Collected done = Collect(*stream, until);
    ASSERT_TRUE(done.finished);
    EXPECT_TRUE(done.outcome.status.ok()) << done.outcome.status;
  }
}

// Two sessions' turns with one transfer thread, while the first transfer to reach the gate (an
// upload: the turns create their sessions and save; a download: they continue them, created
// first) waits there kHeld. Returns the save and resume times the engine reported.
struct TransferRun {
  std::vector<double> saves, resumes;
};
TransferRun RunWithOneHeldTransfer(testing::GatedStoreClient::Hold hold) {
  RouterConfig config = TwoPlaces();
  config.session_transfer_threads = 1;
  WholeModelStage whole(hold);
  const absl::Status loaded = whole.Load(config.max_running);
  EXPECT_TRUE(loaded.ok()) << loaded;
  if (!loaded.ok()) return {};
  testing::GatedStoreClient& store = whole.store;
  TransferTimes times;
  EngineCore engine(config, whole.router_model(), *whole.stage, &store, &times);
  OpenAtExit open_at_exit{store};
  const bool uploads = hold == testing::GatedStoreClient::Hold::kUploads;
  if (!uploads) RunTwoTurns(engine, v1::SESSION_MODE_CREATE);  // saves only: nothing downloads yet

  std::thread turns([&] { RunTwoTurns(engine, uploads ? v1::SESSION_MODE_CREATE : v1::SESSION_MODE_CONTINUE); });
  EXPECT_TRUE(store.WaitForHeldTransfer(kPatience)) << "no turn reached the gate";
  std::this_thread::sleep_for(kHeld);
  store.Open();
  turns.join();
  engine.Shutdown();
  return {times.saves(), times.resumes()};
}

// A turn that ends while another session saves waits for the thread; its save time counts from
// the turn's end, the wait included.
TEST(EngineCoreTest, ASaveTimeIncludesItsWaitForATransferThread) {
  const TransferRun run = RunWithOneHeldTransfer(testing::GatedStoreClient::Hold::kUploads);
  ASSERT_EQ(run.saves.size(), 2u);
  for (const double s : run.saves) EXPECT_GE(s, kHeldAtLeast) << "a save's time left out the gate or the wait";
}

// A continued turn admitted while another one's snapshot is held waits for the open thread; its
// resume time counts from its admission.
TEST(EngineCoreTest, AResumeTimeIncludesItsWaitForATransferThread) {
  const TransferRun run = RunWithOneHeldTransfer(testing::GatedStoreClient::Hold::kDownloads);
  ASSERT_EQ(run.resumes.size(), 2u);
  for (const double s : run.resumes) EXPECT_GE(s, kHeldAtLeast) << "a resume's time left out the gate or the wait";
}

}  // namespace
}  // namespace deltaserve::services
