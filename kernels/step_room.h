// How much memory the steps' own buffers need, so that sequence states leave it to them
// (Backend::AllocateState): states then run out before a step that changes them does, and the
// model reports that with the states unchanged (model/device_failure.h). Pure bookkeeping.
#pragma once

#include <cstdint>
#include <mutex>
#include <unordered_map>

namespace deltaserve::kernels {

class StepRoom {
 public:
  // A step buffer or a state now holds `bytes` at `data`.
  void Allocated(void* data, int64_t bytes, bool state);
  void Freed(void* data);
  // A step buffer of `bytes` was refused with `available` bytes left to allocate (-1: unknown).
  // Its need (the step buffers held with it) counts once the failure is checked, where it would
  // have fit had the states made before this work (since the last check) been given back: a step
  // too large for the device whatever the other states, its own included, is not one to leave
  // room for.
  void Refused(int64_t bytes, int64_t available);
  // The caller took a thread's failure (or none: `ok`). The most step-buffer bytes held at once
  // since the last check count from now on if the work ran; a refused need counts either way.
  void Checked(bool ok);

  // Bytes a new state must leave free: the steps' buffers' largest need that counts, less what
  // they hold now.
  int64_t ToLeave() const;
  int64_t state_bytes() const;
  int64_t step_bytes() const;
  // The steps' buffers' largest need that counts.
  int64_t need() const;

 private:
  mutable std::mutex mutex_;
  struct Held {
    int64_t bytes = 0;
    bool state = false;
    uint64_t checks = 0;  // checks before it was made: a state made since the last check is new
  };
  std::unordered_map<void*, Held> held_;
  uint64_t checks_ = 0;
  int64_t step_bytes_ = 0;
  int64_t state_bytes_ = 0;
  int64_t new_state_bytes_ = 0;  // of them, made since the last check and held now
  int64_t since_check_ = 0;  // the most step-buffer bytes held at once since the last check
  int64_t refused_need_ = 0;  // a refused buffer's need that fits without states, since then
  int64_t need_ = 0;          // the largest that counts
};

}  // namespace deltaserve::kernels
