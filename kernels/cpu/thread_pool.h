// A fixed pool of worker threads for data-parallel loops. The calling thread takes part, and a
// loop started from inside a task runs serially on that thread (no nested fan-out).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace deltaserve::kernels::cpu {

class ThreadPool {
 public:
  // `num_threads` counts the caller; 1 means everything runs on the caller.
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls fn(i) once for every i in [0, count) and returns when all calls have returned.
  // Which thread runs which i is unspecified, so fn(i) must not depend on it. Safe to call from
  // several threads: their loops run one after another.
  void ParallelFor(int64_t count, const std::function<void(int64_t)>& fn);
  // Like ParallelFor, one task per `block` consecutive indices (for cheap per-index work).
  void ParallelForBlocked(int64_t count, int64_t block, const std::function<void(int64_t)>& fn);

 private:
  void WorkerLoop();
  void RunTasks();

  std::vector<std::thread> workers_;
  std::mutex loop_mutex_;  // held for a whole loop started from outside the pool
  std::mutex mutex_;
  std::condition_variable work_ready_;
  std::condition_variable work_done_;
  // The loop in flight, guarded by mutex_.
  const std::function<void(int64_t)>* fn_ = nullptr;
  int64_t count_ = 0;
  int64_t next_ = 0;
  int64_t finished_ = 0;
  uint64_t generation_ = 0;
  bool stopping_ = false;
};

// Number of hardware threads, at least 1.
int HardwareThreads();

}  // namespace deltaserve::kernels::cpu
