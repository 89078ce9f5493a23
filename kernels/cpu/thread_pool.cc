#include "kernels/cpu/thread_pool.h"

#include <algorithm>

namespace deltaserve::kernels::cpu {
namespace {
thread_local bool inside_pool_task = false;
}  // namespace

int HardwareThreads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

ThreadPool::ThreadPool(int num_threads) {
  for (int i = 1; i < num_threads; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  work_ready_.notify_all();
  for (std::thread& worker : workers_) worker.join();
}

void ThreadPool::ParallelFor(int64_t count, const std::function<void(int64_t)>& fn) {
  if (count <= 0) return;
  if (workers_.empty() || count == 1 || inside_pool_task) {
    for (int64_t i = 0; i < count; ++i) fn(i);
    return;
  }
  // One loop at a time: callers on other threads wait for the pool.
  std::lock_guard<std::mutex> one_loop(loop_mutex_);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    fn_ = &fn;
    count_ = count;
    next_ = 0;
    finished_ = 0;
    ++generation_;
  }
  work_ready_.notify_all();
  RunTasks();
  std::unique_lock<std::mutex> lock(mutex_);
  work_done_.wait(lock, [this] { return finished_ == count_; });
  fn_ = nullptr;
}

void ThreadPool::ParallelForBlocked(int64_t count, int64_t block,
                                    const std::function<void(int64_t)>& fn) {
  const int64_t tasks = (count + block - 1) / block;
  ParallelFor(tasks, [&](int64_t task) {
    const int64_t end = std::min(count, (task + 1) * block);
    for (int64_t i = task * block; i < end; ++i) fn(i);
  });
}

void ThreadPool::RunTasks() {
  inside_pool_task = true;
  for (;;) {
    int64_t index;
    const std::function<void(int64_t)>* fn;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (fn_ == nullptr || next_ >= count_) break;
      index = next_++;
      fn = fn_;
    }
    (*fn)(index);
    std::lock_guard<std::mutex> lock(mutex_);
    if (++finished_ == count_) work_done_.notify_all();
  }
  inside_pool_task = false;
}

void ThreadPool::WorkerLoop() {
  uint64_t seen_generation = 0;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      work_ready_.wait(lock, [&] { return stopping_ || (fn_ != nullptr && generation_ != seen_generation); });
      if (stopping_) return;
      seen_generation = generation_;
    }
    RunTasks();
  }
}

}  // namespace deltaserve::kernels::cpu
