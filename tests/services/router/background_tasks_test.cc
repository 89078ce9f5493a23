#include "services/router/background_tasks.h"

#include <atomic>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace deltaserve::services {
namespace {

TEST(BackgroundTasksTest, OneThreadRunsTasksInTheOrderPostedAndStopRunsWhatIsLeft) {
  BackgroundTasks tasks(1);
  absl::Mutex mutex;
  bool released = false;
  std::vector<int> order;
  // The thread waits on the first task for 50 ms, so the others are all still queued when Stop is
  // called.
  tasks.Post([&] {
    absl::MutexLock lock(&mutex);
    const auto go = [&]() ABSL_SHARED_LOCKS_REQUIRED(mutex) { return released; };
    mutex.Await(absl::Condition(&go));
  });
  for (int i = 0; i < 100; ++i) {
    tasks.Post([&, i] {
      absl::MutexLock lock(&mutex);
      order.push_back(i);
    });
  }
  std::thread release([&] {
    absl::SleepFor(absl::Milliseconds(50));
    absl::MutexLock lock(&mutex);
    released = true;
  });
  tasks.Stop();
  release.join();
  ASSERT_EQ(order.size(), 100u);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(order[i], i);
}

TEST(BackgroundTasksTest, TasksRunBesideEachOtherAndOffTheCallersThread) {
  BackgroundTasks tasks(4);
  absl::Mutex mutex;
  int started = 0, saw_all_four = 0;
  std::atomic<bool> on_caller{false};
  const std::thread::id caller = std::this_thread::get_id();
  // Each task waits (up to 20 s) for all four to start: every one sees them all only when four
  // threads run them at once.
  for (int i = 0; i < 4; ++i) {
    tasks.Post([&] {
      if (std::this_thread::get_id() == caller) on_caller = true;
      absl::MutexLock lock(&mutex);
      ++started;
      const auto all = [&]() ABSL_SHARED_LOCKS_REQUIRED(mutex) { return started == 4; };
      if (mutex.AwaitWithTimeout(absl::Condition(&all), absl::Seconds(20))) ++saw_all_four;
    });
  }
  tasks.Stop();
  EXPECT_EQ(saw_all_four, 4);
  EXPECT_FALSE(on_caller);
}

TEST(BackgroundTasksTest, APostAfterStopRunsAtOnce) {
  BackgroundTasks tasks(2);
  tasks.Stop();
  bool ran = false;
  tasks.Post([&] { ran = true; });
  EXPECT_TRUE(ran);
  tasks.Stop();  // idempotent
}

}  // namespace
}  // namespace deltaserve::services
