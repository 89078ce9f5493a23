#include "kernels/step_room.h"

#include <algorithm>

namespace deltaserve::kernels {

void StepRoom::Allocated(void* data, int64_t bytes, bool state) {
  std::lock_guard<std::mutex> lock(mutex_);
  held_[data] = {bytes, state, checks_};
  if (state) {
    state_bytes_ += bytes;
    new_state_bytes_ += bytes;
    return;
  }
  step_bytes_ += bytes;
  since_check_ = std::max(since_check_, step_bytes_);
}

void StepRoom::Freed(void* data) {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto it = held_.find(data);
  if (it == held_.end()) return;
  const Held& held = it->second;
  (held.state ? state_bytes_ : step_bytes_) -= held.bytes;
  if (held.state && held.checks == checks_) new_state_bytes_ -= held.bytes;
  held_.erase(it);
}

void StepRoom::Refused(int64_t bytes, int64_t available) {
  std::lock_guard<std::mutex> lock(mutex_);
  const int64_t older_states = state_bytes_ - new_state_bytes_;
  if (available >= 0 && available + older_states >= bytes) {
    refused_need_ = std::max(refused_need_, step_bytes_ + bytes);
  }
}

void StepRoom::Checked(bool ok) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (ok) need_ = std::max(need_, since_check_);
  need_ = std::max(need_, refused_need_);
  since_check_ = step_bytes_;
  refused_need_ = 0;
  new_state_bytes_ = 0;
  ++checks_;
}

int64_t StepRoom::ToLeave() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return std::max<int64_t>(0, need_ - step_bytes_);
}

int64_t StepRoom::state_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return state_bytes_;
}

int64_t StepRoom::step_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return step_bytes_;
}

int64_t StepRoom::need() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return need_;
}

}  // namespace deltaserve::kernels
