// Calls that block on each other run at once, round after round, on threads kept between rounds
// (the caller's own thread taking the first), also when a call starts calls of its own.
#include "services/worker/call_threads.h"

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <set>
#include <thread>

#include "gtest/gtest.h"

namespace deltaserve::services {
namespace {

// A meeting point for `parties` tasks: each waits (up to 10 s) until all have arrived.
class Meeting {
 public:
  explicit Meeting(int parties) : parties_(parties) {}
  bool Arrive() {
    std::unique_lock<std::mutex> lock(mutex_);
    ++arrived_;
    all_.notify_all();
    return all_.wait_for(lock, std::chrono::seconds(10), [&] { return arrived_ >= parties_; });
  }

 private:
  const int parties_;
  std::mutex mutex_;
  std::condition_variable all_;
  int arrived_ = 0;
};

TEST(CallThreadsTest, RunsEveryTaskAtOnceOnThreadsKeptBetweenRounds) {
  CallThreads threads;
  std::set<std::thread::id> seen;
  std::mutex seen_mutex;
  for (int round = 0; round < 5; ++round) {
    Meeting meeting(4);
    bool met[4] = {};
    std::thread::id first;
    std::vector<std::function<void()>> tasks;
    for (int i = 0; i < 4; ++i) {
      tasks.emplace_back([&, i] {
        if (i == 0) first = std::this_thread::get_id();
        {
          std::lock_guard<std::mutex> lock(seen_mutex);
          seen.insert(std::this_thread::get_id());
        }
        met[i] = meeting.Arrive();
      });
    }
    threads.RunAll(tasks);
    for (bool m : met) EXPECT_TRUE(m) << "round " << round << ": a task ran only after another had ended";
    EXPECT_EQ(first, std::this_thread::get_id()) << "the caller runs the first task";
  }
  EXPECT_EQ(threads.threads(), 3);
  EXPECT_EQ(seen.size(), 4u) << "the same threads every round";
  threads.RunAll({});
}

TEST(CallThreadsTest, ATaskMayRunCallsOfItsOwn) {
  CallThreads threads;
  Meeting outer(2), inner(3);
  bool met[5] = {};
  threads.RunAll({[&] { met[0] = outer.Arrive(); },
                  [&] {
                    threads.RunAll({[&] { met[1] = inner.Arrive(); }, [&] { met[2] = inner.Arrive(); },
                                    [&] { met[3] = inner.Arrive(); }});
                    met[4] = outer.Arrive();
                  }});
  for (bool m : met) EXPECT_TRUE(m);
  EXPECT_EQ(threads.threads(), 3);
}

}  // namespace
}  // namespace deltaserve::services
