// A few threads that run posted tasks, oldest first, each on one of them: the router's session
// saves and opens, which talk to the stages and the store for as long as a snapshot takes to
// move, off the scheduling loop's thread.
#pragma once

#include <deque>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"

namespace deltaserve::services {

class BackgroundTasks {
 public:
  explicit BackgroundTasks(int threads);
  ~BackgroundTasks();  // Stop()
  BackgroundTasks(const BackgroundTasks&) = delete;
  BackgroundTasks& operator=(const BackgroundTasks&) = delete;

  // Queues `task`; after Stop it runs at once on the caller's thread.
  void Post(absl::AnyInvocable<void()> task);
  // Runs every task already posted, then joins the threads. Idempotent.
  void Stop();

 private:
  void Work();

  absl::Mutex mutex_;
  std::deque<absl::AnyInvocable<void()>> tasks_ ABSL_GUARDED_BY(mutex_);
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace deltaserve::services
