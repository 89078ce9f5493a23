// Threads kept for blocking calls that must run at the same time: the expert runner's calls to
// its shards, and beside each call over an NCCL link that link's transfers. A stage makes such a
// round at every MoE layer of every step; starting and joining threads for each cost more than a
// decode layer's own work, so the threads stay and wait for the next round.
#pragma once

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace deltaserve::services {

class CallThreads {
 public:
  CallThreads() = default;
  ~CallThreads();  // joins every thread; no RunAll may be running
  CallThreads(const CallThreads&) = delete;
  CallThreads& operator=(const CallThreads&) = delete;

  // Runs every task at once, each on a thread of its own (the first on the caller's; the rest on
  // kept threads, started where none is free), and returns when all have. Tasks may call RunAll.
  void RunAll(const std::vector<std::function<void()>>& tasks);

  int threads() const;  // kept so far

 private:
  struct Worker {
    std::thread thread;
    std::condition_variable wake;
    const std::function<void()>* task = nullptr;  // guarded by mutex_
    int* left = nullptr;                          // the RunAll's tasks not yet done
  };
  void Serve(Worker& worker);

  mutable std::mutex mutex_;
  std::condition_variable done_;
  bool stopping_ = false;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<Worker*> idle_;
};

}  // namespace deltaserve::services
