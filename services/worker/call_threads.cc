#include "services/worker/call_threads.h"

namespace deltaserve::services {

CallThreads::~CallThreads() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    for (const std::unique_ptr<Worker>& worker : workers_) worker->wake.notify_one();
  }
  for (const std::unique_ptr<Worker>& worker : workers_) worker->thread.join();
}

void CallThreads::RunAll(const std::vector<std::function<void()>>& tasks) {
  if (tasks.empty()) return;
  int left = static_cast<int>(tasks.size()) - 1;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (size_t i = 1; i < tasks.size(); ++i) {
      Worker* worker = nullptr;
      if (idle_.empty()) {
        workers_.push_back(std::make_unique<Worker>());
        worker = workers_.back().get();
        worker->thread = std::thread([this, worker] { Serve(*worker); });
      } else {
        worker = idle_.back();
        idle_.pop_back();
      }
      worker->task = &tasks[i];
      worker->left = &left;
      worker->wake.notify_one();
    }
  }
  tasks.front()();
  std::unique_lock<std::mutex> lock(mutex_);
  done_.wait(lock, [&] { return left == 0; });
}

int CallThreads::threads() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return static_cast<int>(workers_.size());
}

void CallThreads::Serve(Worker& worker) {
  std::unique_lock<std::mutex> lock(mutex_);
  while (true) {
    worker.wake.wait(lock, [&] { return worker.task != nullptr || stopping_; });
    if (worker.task == nullptr) return;
    const std::function<void()>* task = worker.task;
    lock.unlock();
    (*task)();
    lock.lock();
    worker.task = nullptr;
    --*worker.left;
    idle_.push_back(&worker);
    done_.notify_all();
  }
}

}  // namespace deltaserve::services
