// A stage channel in front of another that, while held, keeps the steps that reach it waiting
// (Open, Close and page reservations pass at once: the stage behind runs no held step, which
// waits here): for tests of steps in flight together.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>

#include "services/transport/stage_channel.h"

namespace deltaserve::testing {

class HeldStage final : public services::StageChannel {
 public:
  explicit HeldStage(services::StageChannel& next) : next_(next) {}

  absl::Status Open(const internal::v1::OpenRequest& request, internal::v1::OpenResponse* response) override {
    return next_.Open(request, response);
  }
  absl::Status Close(const internal::v1::CloseRequest& request, internal::v1::CloseResponse* response) override {
    return next_.Close(request, response);
  }
  absl::Status Step(const internal::v1::StepRequest& request, internal::v1::StepResponse* response) override {
    if (request.reserve_only()) return next_.Step(request, response);
    {
      std::unique_lock<std::mutex> lock(mutex_);
      if (held_) {
        ++waiting_;
        changed_.notify_all();
        changed_.wait(lock, [&] { return !held_; });
        --waiting_;
      }
    }
    return next_.Step(request, response);
  }

  void Hold(bool hold) {
    std::lock_guard<std::mutex> lock(mutex_);
    held_ = hold;
    changed_.notify_all();
  }
  // Until `steps` steps wait here, or `patience` passes (false then).
  bool WaitForHeld(int steps, std::chrono::milliseconds patience) {
    std::unique_lock<std::mutex> lock(mutex_);
    return changed_.wait_for(lock, patience, [&] { return waiting_ >= steps; });
  }

 private:
  services::StageChannel& next_;
  std::mutex mutex_;
  std::condition_variable changed_;
  bool held_ = false;
  int waiting_ = 0;
};

}  // namespace deltaserve::testing
